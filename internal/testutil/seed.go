package testutil

import _ "embed"

// SeedAESGCMPython is the seed's Python AES-GCM device code (PyCryptodome,
// 12-byte random nonce, tag appended) defining encrypt_payload(plaintext,
// key) and decrypt_payload(ciphertext, key). Interop tests append their
// own driver and run it with python3 -c; it is kept once, here.
//
//go:embed testdata/seed_aesgcm.py
var SeedAESGCMPython string
