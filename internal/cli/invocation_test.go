package cli

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestMoatInvocation(t *testing.T) {
	dir := t.TempDir()
	installed := filepath.Join(dir, "bin", "moat")
	other := filepath.Join(dir, "build", "moat")
	spaced := filepath.Join(dir, "my tools", "moat")
	for _, p := range []string{installed, other, spaced} {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	onPath := func(string) (string, error) { return installed, nil }
	notOnPath := func(string) (string, error) { return "", errors.New("not found") }
	for _, tc := range []struct {
		name, arg0 string
		lookPath   func(string) (string, error)
		want       string
	}{
		{"go run", filepath.Join(os.TempDir(), "go-build2741839/b001/exe/moat"), onPath, "go run ./cmd/moat"},
		{"go run with GOTMPDIR", "/var/cache/gotmp/go-build99/b001/exe/moat", notOnPath, "go run ./cmd/moat"},
		{"by name from PATH", "moat", onPath, "moat"},
		{"the binary on PATH by its path", installed, onPath, "moat"},
		{"another binary than the one on PATH", other, onPath, other},
		{"make build, not on PATH", other, notOnPath, other},
		{"path with a space is quoted", spaced, notOnPath, "'" + spaced + "'"},
		{"exe directory outside go-build", filepath.Join(dir, "exe", "moat"), notOnPath, filepath.Join(dir, "exe", "moat")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := moatInvocation(tc.arg0, tc.lookPath); got != tc.want {
				t.Fatalf("moatInvocation(%q) = %q, want %q", tc.arg0, got, tc.want)
			}
		})
	}
}
