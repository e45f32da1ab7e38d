package pki

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestParseOpenSSLEncryptedKeys decrypts keys that openssl encrypted with
// the PBES2 variants it offers.
func TestParseOpenSSLEncryptedKeys(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.key")
	run(t, true, openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", plain)
	want, err := LoadKeyFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	pass := []byte("openssl pass 123")
	passFile := writeFile(t, filepath.Join(dir, "pass"), pass)
	for _, v := range [][]string{
		{"-v2", "aes-256-cbc"},
		{"-v2", "aes-128-cbc", "-v2prf", "hmacWithSHA512"},
		{"-v2", "aes-192-cbc", "-v2prf", "hmacWithSHA1"},
		{"-v2", "des3"},
	} {
		t.Run(v[1], func(t *testing.T) {
			out := filepath.Join(dir, v[1]+".key")
			run(t, true, openssl, append([]string{"pkcs8", "-topk8", "-in", plain, "-out", out, "-passout", "file:" + passFile}, v...)...)
			b, _ := os.ReadFile(out)
			if !IsEncryptedKeyPEM(b) {
				t.Fatal("not recognized as encrypted")
			}
			if _, err := ParseKeyPEM(b); !errors.Is(err, ErrKeyEncrypted) {
				t.Fatalf("ParseKeyPEM: %v", err)
			}
			k, err := ParseKeyPEMWithPassphrase(b, pass)
			if err != nil || !publicKeysEqual(k.Public(), want.Public()) {
				t.Fatalf("decrypt: %v", err)
			}
			if _, err := ParseKeyPEMWithPassphrase(b, []byte("wrong")); !errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("wrong passphrase: %v", err)
			}
		})
	}
}
