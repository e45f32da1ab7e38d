package cluster

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestFewerCopiesWarnedOnce: a node refused more copies both when it
// creates a stream and when it raises it afterwards logs the shortfall
// once per stream and numbers, and again when the numbers change.
func TestFewerCopiesWarnedOnce(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	n := &Node{log: slog.New(slog.NewTextHandler(&buf, nil))}
	n.warnFewerCopies("moat_msgs", 1, 3)
	n.warnFewerCopies("moat_msgs", 1, 3)
	n.warnFewerCopies("moat_msgs", 1, 3)
	if got := strings.Count(buf.String(), "fewer copies"); got != 1 {
		t.Fatalf("%d warnings for one shortfall, want 1:\n%s", got, buf.String())
	}
	n.warnFewerCopies("KV_moat_sessions", 1, 3)
	n.warnFewerCopies("moat_msgs", 2, 3)
	if got := strings.Count(buf.String(), "fewer copies"); got != 3 {
		t.Fatalf("%d warnings for three shortfalls, want 3:\n%s", got, buf.String())
	}
}
