package cli

import (
	"os"
	"path/filepath"
	"strings"
)

// moatInvocation returns how the operator can run this binary again, for
// the commands printed as next steps: "go run ./cmd/moat" when it was
// started by `go run` (a binary in a go-build temporary directory, gone
// once it exits), "moat" when that name on $PATH is this binary, and its
// absolute path otherwise. arg0 is os.Args[0]; lookPath is exec.LookPath.
func moatInvocation(arg0 string, lookPath func(string) (string, error)) string {
	abs, err := filepath.Abs(arg0)
	if err != nil {
		abs = arg0
	}
	if isGoRunBinary(abs) {
		return "go run ./cmd/moat"
	}
	if !strings.ContainsRune(arg0, os.PathSeparator) {
		return "moat" // found by the shell on $PATH
	}
	if p, err := lookPath("moat"); err == nil {
		if a, errA := os.Stat(p); errA == nil {
			if b, errB := os.Stat(abs); errB == nil && os.SameFile(a, b) {
				return "moat"
			}
		}
	}
	if strings.ContainsAny(abs, " \t'\"$`\\") {
		return "'" + strings.ReplaceAll(abs, "'", `'\''`) + "'"
	}
	return abs
}

// isGoRunBinary reports whether path is where `go run` puts the binary it
// builds: $GOTMPDIR or $TMPDIR/go-build…/b001/exe/NAME.
func isGoRunBinary(path string) bool {
	dir := filepath.Dir(path)
	if filepath.Base(dir) != "exe" {
		return false
	}
	for d := filepath.Dir(dir); d != filepath.Dir(d); d = filepath.Dir(d) {
		if strings.HasPrefix(filepath.Base(d), "go-build") {
			return true
		}
	}
	return false
}
