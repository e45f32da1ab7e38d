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

	"github.com/moatmq/moat/internal/testutil"
)

// The seed's PyCryptodome device code is testutil.SeedAESGCMPython; this is
// the same format with Debian's python3-cryptography.
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
import sys, json
out = []
for req in json.load(sys.stdin):
    key = bytes.fromhex(req["key"])
    r = {"sealed": encrypt_payload(bytes.fromhex(req["pt"]), key).hex()}
    try:
        r["opened"] = decrypt_payload(bytes.fromhex(req["ct"]), key).hex()
    except Exception as e:
        r["error"] = type(e).__name__
    out.append(r)
json.dump(out, sys.stdout)
`

func TestRawInteropPython(t *testing.T) {
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("Debian python3 not installed")
	}
	impls := []struct{ name, module, code string }{
		{"cryptography", "cryptography.hazmat.primitives.ciphers.aead", seedCryptography},
		{"pycryptodome", "Cryptodome.Cipher.AES", testutil.SeedAESGCMPython},
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
			type pyCase struct {
				Key, Pt, Ct string
				wantErr     bool
				pt          []byte
			}
			var cases []pyCase
			for _, pt := range [][]byte{[]byte(`{"temp": 21.5}`), {}, bytes.Repeat([]byte{0}, 1000)} {
				goSealed, _ := rk.Seal("ignored", pt)
				tampered := bytes.Clone(goSealed)
				tampered[len(tampered)-1] ^= 1
				for _, tc := range []struct {
					ct      []byte
					wantErr bool
				}{{goSealed, false}, {tampered, true}} {
					cases = append(cases, pyCase{Key: hex.EncodeToString(key), Pt: hex.EncodeToString(pt), Ct: hex.EncodeToString(tc.ct), wantErr: tc.wantErr, pt: pt})
				}
			}
			var reqs []map[string]string
			for _, c := range cases {
				reqs = append(reqs, map[string]string{"key": c.Key, "pt": c.Pt, "ct": c.Ct})
			}
			req, _ := json.Marshal(reqs)
			cmd := exec.Command(py, "-c", impl.code+pyDriver)
			cmd.Stdin = bytes.NewReader(req)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("python: %v\n%s", err, stderr.String())
			}
			var resps []struct{ Sealed, Opened, Error string }
			if err := json.Unmarshal(out, &resps); err != nil || len(resps) != len(cases) {
				t.Fatalf("python output %q: %v", out, err)
			}
			for i, resp := range resps {
				tc := cases[i]
				if tc.wantErr {
					if resp.Error == "" {
						t.Fatalf("case %d: python accepted a tampered message", i)
					}
				} else if got, _ := hex.DecodeString(resp.Opened); resp.Error != "" || !bytes.Equal(got, tc.pt) {
					t.Fatalf("case %d: python opened %q (error %q)", i, got, resp.Error)
				}
				// Python → Go.
				sealed, _ := hex.DecodeString(resp.Sealed)
				if len(sealed) != len(tc.pt)+RawOverhead {
					t.Fatalf("python message is %d bytes, want %d", len(sealed), len(tc.pt)+RawOverhead)
				}
				m, err := rk.Open("t", sealed)
				if err != nil || !bytes.Equal(m.Plaintext, tc.pt) {
					t.Fatalf("Go could not open python's message: %v", err)
				}
				sealed[13] ^= 0x80
				if _, err := rk.Open("t", sealed); !errors.Is(err, ErrTampered) {
					t.Fatalf("tampered python message: %v", err)
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
