package jwt

import (
	"encoding/base64"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/authn"
)

// TestOpenSSLTokens: keys generated and tokens signed by openssl (a peer
// that shares no code with the verifier) are accepted with the public key
// files openssl wrote, and refused with a flipped signature bit.
func TestOpenSSLTokens(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	run := func(args ...string) []byte {
		t.Helper()
		out, err := exec.Command(openssl, args...).Output()
		if err != nil {
			t.Fatalf("openssl %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	clk := newClock()
	enc := base64.RawURLEncoding.EncodeToString
	payload := enc([]byte(`{"sub":"plant-7","exp":` + strconv.FormatInt(clk.Now().Unix()+600, 10) + `}`))
	for _, tc := range []struct {
		alg    string
		keygen []string
		sign   func(key, in string) []string
	}{
		{"RS256", []string{"genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"},
			func(key, in string) []string { return []string{"dgst", "-sha256", "-sign", key, in} }},
		{"EdDSA", []string{"genpkey", "-algorithm", "ed25519"},
			func(key, in string) []string { return []string{"pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", in} }},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			key := filepath.Join(dir, tc.alg+".key")
			pub := filepath.Join(dir, tc.alg+".pub")
			run(append(tc.keygen, "-out", key)...)
			run("pkey", "-in", key, "-pubout", "-out", pub)
			input := enc([]byte(`{"alg":"`+tc.alg+`","typ":"JWT"}`)) + "." + payload
			in := writeFile(t, "in", []byte(input))
			sig := run(tc.sign(key, in)...)
			b := mustNew(t, Config{PublicKeyFiles: []string{pub}, Now: clk.Now, Logger: quietLogger()})
			res := decide(t, b, req("", "c", input+"."+enc(sig)))
			wantVerdict(t, res, authn.Allow)
			if res.Username != "plant-7" {
				t.Errorf("username %q", res.Username)
			}
			sig[len(sig)/2] ^= 1
			wantVerdict(t, decide(t, b, req("", "c", input+"."+enc(sig))), authn.Deny)
		})
	}
}
