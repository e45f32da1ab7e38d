package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImports keeps the public e2e package free of Moat's internals and of
// third-party modules: devices embed it, so it must stay the standard
// library plus its own wire format.
func TestImports(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	out, err := exec.Command(gobin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		switch p {
		case "github.com/moatmq/moat/e2e", "github.com/moatmq/moat/e2e/internal/format":
		default:
			t.Errorf("e2e imports %s; it must depend only on the standard library", p)
		}
	}
}
