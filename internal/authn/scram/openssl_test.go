package scram

import (
	"bytes"
	"encoding/hex"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestCredentialMatchesOpenSSL derives the stored keys of both mechanisms
// with the openssl command (PBKDF2, HMAC and the digest, RFC 5802 §3) and
// compares them with NewCredential's; SCRAM-SHA-512 has no published
// vector, so this is its independent check.
func TestCredentialMatchesOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	run := func(stdin []byte, args ...string) []byte {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Stdin = bytes.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl %s: %v", strings.Join(args, " "), err)
		}
		// "AB:CD:…" (kdf), "abcd…" (mac), "SHA2-256(stdin)= abcd…" (dgst).
		s := strings.TrimSpace(string(out))
		if i := strings.LastIndexByte(s, ' '); i >= 0 {
			s = s[i+1:]
		}
		b, err := hex.DecodeString(strings.ReplaceAll(s, ":", ""))
		if err != nil {
			t.Fatalf("openssl output %q: %v", out, err)
		}
		return b
	}
	salt := mustB64(t, rfcSalt)
	for _, m := range Mechanisms {
		t.Run(m.String(), func(t *testing.T) {
			digest := strings.TrimPrefix(m.String(), "SCRAM-SHA-")
			c, err := NewCredential(m, []byte("pencil"), 4096, bytes.NewReader(salt))
			if err != nil {
				t.Fatal(err)
			}
			sp := run(nil, "kdf", "-keylen", strconv.Itoa(m.size()), "-kdfopt", "digest:SHA"+digest,
				"-kdfopt", "pass:pencil", "-kdfopt", "hexsalt:"+hex.EncodeToString(salt), "-kdfopt", "iter:4096", "PBKDF2")
			hmacOf := func(msg string) []byte {
				return run([]byte(msg), "mac", "-digest", "SHA"+digest, "-macopt", "hexkey:"+hex.EncodeToString(sp), "HMAC")
			}
			stored := run(hmacOf("Client Key"), "dgst", "-sha"+digest)
			if !bytes.Equal(stored, c.StoredKey) || !bytes.Equal(hmacOf("Server Key"), c.ServerKey) {
				t.Fatalf("keys differ from openssl's")
			}
		})
	}
}
