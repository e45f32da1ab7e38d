package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The seed's snippet, verbatim in substance: PyCryptodome AES-GCM with a
// 12-byte random nonce, returning nonce + ciphertext + tag.
// Debian packages PyCryptodome under the name Cryptodome; the alias keeps
// the seed's import line unchanged.
const seedPyCryptodome = `
import sys, json, os
try:
    import Crypto.Cipher.AES
except ImportError:
    import Cryptodome, Cryptodome.Cipher, Cryptodome.Cipher.AES
    sys.modules["Crypto"] = Cryptodome
    sys.modules["Crypto.Cipher"] = Cryptodome.Cipher
from Crypto.Cipher import AES
def encrypt_payload(plaintext, key):
    nonce = os.urandom(12)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return nonce + ciphertext + tag
def decrypt_payload(ciphertext, key):
    nonce = ciphertext[:12]
    tag = ciphertext[-16:]
    ciphertext = ciphertext[12:-16]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    return cipher.decrypt_and_verify(ciphertext, tag)
`

// The same format with Debian's python3-cryptography.
const seedCryptography = `
import sys, json, os
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
def encrypt_payload(plaintext, key):
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, None)
def decrypt_payload(ciphertext, key):
    return AESGCM(key).decrypt(ciphertext[:12], ciphertext[12:], None)
`

// The driver reads the key and messages from stdin (never argv: secrets
// stay off command lines), encrypts pt and decrypts ct.
const pyDriver = `
req = json.load(sys.stdin)
key = bytes.fromhex(req["key"])
out = {"sealed": encrypt_payload(bytes.fromhex(req["pt"]), key).hex()}
try:
    out["opened"] = decrypt_payload(bytes.fromhex(req["ct"]), key).hex()
except Exception as e:
    out["error"] = type(e).__name__
json.dump(out, sys.stdout)
`

func TestRawInteropPython(t *testing.T) {
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("Debian python3 not installed")
	}
	impls := []struct{ name, module, code string }{
		{"cryptography", "cryptography.hazmat.primitives.ciphers.aead", seedCryptography},
		{"pycryptodome", "Cryptodome.Cipher.AES", seedPyCryptodome},
	}
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			if err := exec.Command(py, "-c", "import "+impl.module).Run(); err != nil {
				t.Skipf("%s: python module %s not installed (Debian package python3-%s)", py, impl.module, impl.name)
			}
			key := make([]byte, KeySize)
			rand.Read(key)
			rk, err := NewRawKey(key)
			if err != nil {
				t.Fatal(err)
			}
			for _, pt := range [][]byte{[]byte(`{"temp": 21.5}`), {}, bytes.Repeat([]byte{0}, 1000)} {
				goSealed, _ := rk.Seal("ignored", pt)
				tampered := bytes.Clone(goSealed)
				tampered[len(tampered)-1] ^= 1
				for _, tc := range []struct {
					name    string
					ct      []byte
					wantErr bool
				}{{"go-to-python", goSealed, false}, {"tampered", tampered, true}} {
					req, _ := json.Marshal(map[string]string{"key": hex.EncodeToString(key), "pt": hex.EncodeToString(pt), "ct": hex.EncodeToString(tc.ct)})
					cmd := exec.Command(py, "-c", impl.code+pyDriver)
					cmd.Stdin = bytes.NewReader(req)
					var stderr strings.Builder
					cmd.Stderr = &stderr
					out, err := cmd.Output()
					if err != nil {
						t.Fatalf("python: %v\n%s", err, stderr.String())
					}
					var resp struct{ Sealed, Opened, Error string }
					if err := json.Unmarshal(out, &resp); err != nil {
						t.Fatalf("python output %q: %v", out, err)
					}
					if tc.wantErr {
						if resp.Error == "" {
							t.Fatalf("%s: python accepted a tampered message", tc.name)
						}
					} else if got, _ := hex.DecodeString(resp.Opened); resp.Error != "" || !bytes.Equal(got, pt) {
						t.Fatalf("%s: python opened %q (error %q)", tc.name, got, resp.Error)
					}
					// Python → Go.
					sealed, _ := hex.DecodeString(resp.Sealed)
					if len(sealed) != len(pt)+RawOverhead {
						t.Fatalf("python message is %d bytes, want %d", len(sealed), len(pt)+RawOverhead)
					}
					m, err := rk.Open("t", sealed)
					if err != nil || !bytes.Equal(m.Plaintext, pt) {
						t.Fatalf("Go could not open python's message: %v", err)
					}
					sealed[13] ^= 0x80
					if _, err := rk.Open("t", sealed); !errors.Is(err, ErrTampered) {
						t.Fatalf("tampered python message: %v", err)
					}
				}
			}
		})
	}
}

func TestParseRawKey(t *testing.T) {
	bin := bytes.Repeat([]byte{0xab}, 32)
	tests := []struct {
		name string
		data []byte
		ok   bool
	}{
		{"binary", bin, true},
		{"hex", []byte(strings.Repeat("ab", 32)), true},
		{"hex newline", []byte(strings.Repeat("AB", 32) + "\n"), true},
		{"short", bin[:16], false},
		{"bad hex", []byte(strings.Repeat("zz", 32)), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParseRawKey(tt.data)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v", err)
			}
			if k != nil {
				msg, _ := k.Seal("", []byte("x"))
				ref, _ := NewRawKey(bin)
				if _, err := ref.Open("", msg); err != nil {
					t.Fatal("parsed key differs from the binary key")
				}
			}
		})
	}
	if _, err := (&RawKey{}).Open("", nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("got %v", err)
	}
}
