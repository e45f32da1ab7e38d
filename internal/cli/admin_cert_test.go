package cli

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// curlAdmin calls the admin API with curl and a client certificate
// (PREFIX.pem and PREFIX.key in the test directory; "" for none) and
// returns the HTTP status ("000" when the TLS handshake failed) and body.
func (e *adminEnv) curlAdmin(t *testing.T, method, path, prefix string) (string, string) {
	t.Helper()
	args := []string{"-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method,
		"--cacert", filepath.Join(e.data, "ca", "ca.pem"), e.base + path}
	if prefix != "" {
		args = append(args, "--cert", filepath.Join(e.dir, prefix+".pem"), "--key", filepath.Join(e.dir, prefix+".key"))
	}
	if method == "POST" {
		args = append(args, "-H", "Content-Type: application/json", "-d", "{}")
	}
	var out bytes.Buffer
	cmd := exec.Command("curl", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Run() // a failed handshake is a status of 000
	s := out.String()
	i := strings.LastIndexByte(s, '\n')
	return s[i+1:], s[:max(i, 0)]
}

// TestSecurityAdminClientCertificates runs curl --cert against the admin
// listener of a real moat serve: certificates of the built-in CA with the
// URI SAN urn:moat:admin:operator or urn:moat:admin:viewer authenticate
// with that role; a device certificate without it, one from another CA
// and a revoked one do not.
func TestSecurityAdminClientCertificates(t *testing.T) {
	t.Parallel()
	needTool(t, "curl", "openssl")
	e := startAdminEnv(t)
	ca := filepath.Join(e.data, "ca")
	moatCmd(t, e.dir, "ca", "issue", "device", "alice", "--dir", ca, "--uri", "urn:moat:admin:operator", "--out", "alice")
	moatCmd(t, e.dir, "ca", "issue", "device", "bob", "--dir", ca, "--uri", "urn:moat:admin:viewer", "--out", "bob")
	moatCmd(t, e.dir, "ca", "issue", "device", "sensor-1", "--dir", ca, "--out", "sensor-1")
	// The same role marker in a certificate of another CA.
	if out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", filepath.Join(e.dir, "mallory.key"), "-out", filepath.Join(e.dir, "mallory.pem"), "-days", "1",
		"-subj", "/CN=mallory", "-addext", "subjectAltName=URI:urn:moat:admin:operator",
		"-addext", "extendedKeyUsage=clientAuth").CombinedOutput(); err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}

	if code, body := e.curlAdmin(t, "GET", "/api/v1/whoami", "alice"); code != "200" || !strings.Contains(body, `"role": "operator"`) ||
		!strings.Contains(body, `"cert:alice/`) {
		t.Fatalf("operator certificate: %s %s", code, body)
	}
	if code, body := e.curlAdmin(t, "GET", "/metrics", "bob"); code != "200" || !strings.Contains(body, "moat_connections ") {
		t.Fatalf("viewer certificate reading /metrics: %s", code)
	}
	if code, body := e.curlAdmin(t, "POST", "/api/v1/config/reload", "bob"); code != "403" {
		t.Errorf("viewer certificate reloading: %s %s; want 403", code, body)
	}
	if code, body := e.curlAdmin(t, "POST", "/api/v1/config/reload", "alice"); code != "200" {
		t.Errorf("operator certificate reloading: %s %s", code, body)
	}
	if code, body := e.curlAdmin(t, "GET", "/api/v1/whoami", "sensor-1"); code != "401" || !strings.Contains(body, "no admin role") {
		t.Errorf("device certificate: %s %s; want 401", code, body)
	}
	if code, body := e.curlAdmin(t, "GET", "/api/v1/whoami", "mallory"); code != "000" {
		t.Errorf("certificate of another CA: %s %s; want the handshake refused", code, body)
	}
	if code, _ := e.curlAdmin(t, "GET", "/api/v1/whoami", ""); code != "401" {
		t.Errorf("no certificate, no token: %s; want 401", code)
	}
	if !e.proc.waitLog(t, "admin: change", "token=cert:alice/", "action=reload") {
		t.Error("the change is not logged with the certificate's name")
	}

	// Revoked: refused, on a new connection and on every request.
	moatCmd(t, e.dir, "ca", "revoke", "alice.pem", "--dir", ca, "--reason", "keyCompromise")
	testutil.WaitFor(t, "the revoked certificate to be refused", 10*time.Second, func() bool {
		code, _ := e.curlAdmin(t, "GET", "/api/v1/whoami", "alice")
		return code == "401" || code == "000"
	})
	if code, _ := e.curlAdmin(t, "GET", "/api/v1/whoami", "bob"); code != "200" {
		t.Errorf("viewer certificate after another was revoked: %s", code)
	}
}
