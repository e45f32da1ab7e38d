package cli

import (
	"bytes"
	"context"
	"crypto/fips140"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestFIPSVersion checks that `moat version` and the start-up log report
// FIPS 140-3 mode. Outside that mode they say off; `make fips-test` runs
// it with GODEBUG=fips140=on.
func TestFIPSVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"version"}, Stdio{In: strings.NewReader(""), Out: &out, Err: &errb}); code != 0 {
		t.Fatalf("moat version: exit %d: %s", code, errb.String())
	}
	want := "fips140=off"
	if fips140.Enabled() {
		want = "fips140=on (Go Cryptographic Module "
	}
	if !strings.Contains(out.String(), want) {
		t.Fatalf("moat version printed %q, want %q", out.String(), want)
	}
	var logs bytes.Buffer
	logFIPS(slog.New(slog.NewTextHandler(&logs, nil)))
	if !strings.Contains(logs.String(), "fips140="+map[bool]string{true: "on", false: "off"}[fips140.Enabled()]) {
		t.Fatalf("start-up log %q lacks the FIPS state", logs.String())
	}
}

// TestFIPSBuild builds moat as `make build-fips` does (GOFIPS140=v1.0.0,
// the module snapshot shipped with the toolchain, offline) and checks that
// the binary runs in FIPS 140-3 mode without any GODEBUG setting. It runs
// in FIPS mode only (make fips-test), as it compiles the whole program.
func TestFIPSBuild(t *testing.T) {
	if !fips140.Enabled() {
		t.Skip("not in FIPS 140-3 mode; make fips-test runs this build test")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	goroot, err := exec.Command(gobin, "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	zips, _ := filepath.Glob(filepath.Join(strings.TrimSpace(string(goroot)), "lib", "fips140", "v1.0.0*.zip"))
	if len(zips) == 0 {
		t.Skipf("this toolchain (%s) ships no Go Cryptographic Module v1.0.0 snapshot in GOROOT/lib/fips140; cannot build it offline", runtime.Version())
	}
	bin := filepath.Join(t.TempDir(), "moat-fips")
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, gobin, "build", "-o", bin, "github.com/moatmq/moat/cmd/moat")
	build.Env = append(withoutGODEBUG(), "GOFIPS140=v1.0.0", "GOPROXY=off", "GOFLAGS=-mod=readonly")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("GOFIPS140=v1.0.0 go build: %v\n%s", err, out)
	}
	run := exec.CommandContext(ctx, bin, "version")
	run.Env = withoutGODEBUG()
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("moat-fips version: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "fips140=on (Go Cryptographic Module v1.0.0)") {
		t.Fatalf("moat-fips version printed %q, want FIPS on with module v1.0.0", out)
	}
}

// withoutGODEBUG is the environment without GODEBUG, so that only the
// build setting turns FIPS mode on.
func withoutGODEBUG() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	return env
}

// TestFIPSServeRefusesChaCha checks that `moat serve --check` refuses a
// mosquitto.conf naming a ChaCha20 suite in FIPS 140-3 mode, at the line
// that names it, and accepts it otherwise.
func TestFIPSServeRefusesChaCha(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(conf, []byte("listener 8883 127.0.0.1\ncertfile s.pem\nkeyfile s.key\ncafile ca.pem\nciphers ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	Main(context.Background(), []string{"serve", "-c", conf, "--check"}, Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	const want = `moat.conf:5: listener "tls-8883": ciphers: cipher ECDHE-RSA-CHACHA20-POLY1305 is not approved in FIPS 140-3 mode`
	if got := strings.Contains(errb.String(), want); got != fips140.Enabled() {
		t.Fatalf("fips140=%v: refusal reported=%v, want %v; stderr:\n%s", fips140.Enabled(), got, fips140.Enabled(), errb.String())
	}
}
