package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/audit"
)

// auditLog writes a closed audit log of n events (a checkpoint every 5
// entries) in a new data directory and returns the log's path.
func auditLog(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	l, err := audit.Open(audit.Config{Dir: dir, CheckpointEvery: 5, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		l.Record(audit.Event{Type: audit.TypeAuthFailure, Fields: []audit.Field{
			audit.String("username", fmt.Sprintf("user%d", i)), audit.String("reason", "bad password")}})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, audit.DefaultFile)
}

func runAudit(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), append([]string{"audit", "verify"}, args...), Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	return code, out.String(), errb.String()
}

// TestSecurityAuditVerifyCLI: the edits an attacker would make to hide an
// event (change, remove, reorder, cut) make `moat audit verify` fail and
// name the first bad entry; a trusted key kept elsewhere is honoured.
func TestSecurityAuditVerifyCLI(t *testing.T) {
	path := auditLog(t, 12) // 16 lines: checkpoints at lines 6, 12, 16
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runAudit(t, path)
	if code != 0 || !strings.Contains(out, "verified 16 entries (seq 1-16) in 1 file(s), 3 checkpoints") {
		t.Fatalf("intact log: %d %q %q", code, out, stderr)
	}
	lines := strings.SplitAfter(string(orig), "\n")
	lines = lines[:len(lines)-1]
	cases := []struct {
		name  string
		edit  func([]string) []string
		code  int
		where string
	}{
		{"flipped byte", func(l []string) []string { l[7] = strings.Replace(l[7], "user5", "user6", 1); return l }, 1, "audit.log:8: seq 8: the entry was changed"},
		{"removed line", func(l []string) []string { return append(l[:7:7], l[8:]...) }, 1, "audit.log:8: seq 9: seq jumps from 7 to 9"},
		{"swapped lines", func(l []string) []string { l[7], l[8] = l[8], l[7]; return l }, 1, "audit.log:8: seq 9:"},
		{"truncated tail", func(l []string) []string { return l[:14] }, 2, "audit.log:14: seq 14: 2 entries after the last checkpoint (seq 12)"},
		{"torn tail", func(l []string) []string { l[15] = l[15][:20]; return l }, 2, "audit.log:16: seq 16: torn last line"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad := filepath.Join(t.TempDir(), "audit.log")
			if err := os.WriteFile(bad, []byte(strings.Join(tc.edit(append([]string(nil), lines...)), "")), 0o600); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := runAudit(t, bad, "--key", filepath.Join(filepath.Dir(path), audit.PubFile))
			if code != tc.code || !strings.Contains(stderr, tc.where) {
				t.Fatalf("exit %d, %q; want %d and %q", code, stderr, tc.code, tc.where)
			}
			if tc.code == 2 {
				code, _, stderr := runAudit(t, bad, "--live", "--key", filepath.Join(filepath.Dir(path), audit.PubFile))
				if code != 0 || !strings.Contains(stderr, "warning") {
					t.Fatalf("--live: exit %d, %q", code, stderr)
				}
			}
		})
	}
	// Another data directory's key does not verify this log.
	other := filepath.Join(filepath.Dir(auditLog(t, 1)), audit.PubFile)
	code, _, stderr = runAudit(t, path, "--key", other)
	if code != 1 || !strings.Contains(stderr, "audit.log:6: seq 6: checkpoint names a key of epoch 1 that is not the trusted one") {
		t.Fatalf("other key: %d %q", code, stderr)
	}
	code, _, stderr = runAudit(t, path, "--key", filepath.Join(t.TempDir(), "missing.pub"))
	if code != 1 || !strings.Contains(stderr, "--key") {
		t.Fatalf("missing key: %d %q", code, stderr)
	}
}
