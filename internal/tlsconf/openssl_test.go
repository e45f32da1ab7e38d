package tlsconf

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

// TestOpenSSLClientInterop drives real handshakes from openssl s_client,
// the TLS stack of Mosquitto and most device SDKs.
func TestOpenSSLClientInterop(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	e := newEnv(t, testpki.RSA2048)
	good := e.ca.Issue(t, testpki.Options{CN: "openssl-device", Key: testpki.RSA2048, KeyIndex: 2})
	revoked := e.ca.Issue(t, testpki.Options{CN: "openssl-revoked", Key: testpki.RSA2048, KeyIndex: 2})
	expired := e.ca.Issue(t, testpki.Options{CN: "openssl-expired", Key: testpki.RSA2048, KeyIndex: 2, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	e.cfg.CRLFiles = []string{e.writeCRL(t, "ca.crl", 24*time.Hour, revoked)}
	srv := serve(t, e.manager(t))

	tests := []struct {
		name   string
		cert   *testpki.Cert
		args   []string
		wantOK bool
		log    string
	}{
		{"valid TLS 1.3", good, nil, true, ""},
		{"valid TLS 1.2", good, []string{"-tls1_2"}, true, ""},
		{"TLS 1.2 CBC only", good, []string{"-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"}, false, ""},
		{"TLS 1.1", good, []string{"-tls1_1"}, false, ""},
		{"revoked", revoked, nil, false, "reason=revoked"},
		{"expired", expired, []string{"-tls1_2"}, false, "reason=expired"},
		{"no certificate", nil, []string{"-tls1_2"}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"s_client", "-connect", srv.addr, "-CAfile", e.cfg.CAFile, "-verify_return_error", "-servername", "localhost"}
			if tt.cert != nil {
				cf, kf := tt.cert.WriteFiles(t, t.TempDir(), "client")
				args = append(args, "-cert", cf, "-key", kf)
			}
			args = append(args, tt.args...)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, openssl, args...)
			cmd.Stdin = strings.NewReader("ping\n")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			cmd.Run()
			res := srv.nextResultOrNone(2 * time.Second)
			ok := res != nil && res.err == nil
			if ok != tt.wantOK {
				t.Fatalf("server accepted=%v, want %v; openssl output:\n%s", ok, tt.wantOK, out.String())
			}
			if tt.log != "" && !contains(e.logs.String(), tt.log) {
				t.Errorf("log lacks %q", tt.log)
			}
		})
	}
}
