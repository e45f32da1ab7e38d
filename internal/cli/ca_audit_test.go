package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/audit"
)

// TestCAIssueRevokeAudited: in a data directory whose broker keeps an
// audit log, `moat ca issue` and `moat ca revoke` are recorded in
// DATA_DIR/ca-audit.log, which verifies against the broker's audit.pub;
// without an audit key nothing is written.
func TestCAIssueRevokeAudited(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	data := t.TempDir()
	dir := filepath.Join(data, "ca")
	work := t.TempDir()
	mustMoat(t, "ca", "init", "--dir", dir, "--algorithm", "ecdsa-p256")
	mustMoat(t, "ca", "issue", "device", "before", "--dir", dir, "--out", filepath.Join(work, "before"))
	if _, err := os.Stat(filepath.Join(data, caAuditFile)); err == nil {
		t.Fatal("ca-audit.log written without a broker audit key")
	}
	// A broker ran here: its audit log made audit.key and audit.pub.
	l, err := audit.Open(audit.Config{Dir: data})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	mustMoat(t, "ca", "issue", "device", "sensor-9", "--dir", dir, "--out", filepath.Join(work, "s9"))
	mustMoat(t, "ca", "revoke", filepath.Join(work, "s9.pem"), "--dir", dir, "--reason", "keyCompromise")
	path := filepath.Join(data, caAuditFile)
	n := auditTypes(t, path)
	if n[audit.TypeCAIssue] != 1 || n[audit.TypeCARevoke] != 1 {
		t.Fatalf("ca-audit.log entries: %v", n)
	}
	if code, out, errOut := runAudit(t, path); code != 0 {
		t.Fatalf("verify: %d %s %s", code, out, errOut)
	}
	data2, _ := os.ReadFile(path)
	if !strings.Contains(string(data2), "sensor-9") || !strings.Contains(string(data2), "keyCompromise") {
		t.Errorf("ca-audit.log:\n%s", data2)
	}
}
