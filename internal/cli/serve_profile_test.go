package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// serve --check lists every violation of the profile at its line, and
// serve refuses to start with them.
func TestServeCheckProfileViolations(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "m.yaml")
	writeFile(t, file, `profile: secure-transport
sessions:
  ignore_owner: true
listeners:
  - address: ":1883"
    transport: tcp
    allow_anonymous: true
`)
	for _, args := range [][]string{{"serve", "--check", "-c", file}, {"serve", "-c", file, "--data", filepath.Join(dir, "data")}} {
		out, err := exec.Command(moatBin, args...).CombinedOutput()
		if err == nil {
			t.Fatalf("%v accepted a configuration that breaks its profile:\n%s", args, out)
		}
		for _, w := range []string{
			"serve: 4 problems:",
			file + ":3: profile secure-transport: sessions.ignore_owner",
			file + `:5: profile secure-transport: listener "tcp-1883": no way to authenticate`,
			file + `:6: profile secure-transport: listener "tcp-1883": plain MQTT on :1883`,
			file + `:7: profile secure-transport: listener "tcp-1883": anonymous access is refused`,
		} {
			if !strings.Contains(string(out), w) {
				t.Errorf("%v: missing %q in:\n%s", args, w, out)
			}
		}
	}
	// --profile overrides the file: open accepts it with a warning.
	out, err := exec.Command(moatBin, "serve", "--check", "-c", file, "--profile", "open").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "warning: profile open: no requirement is enforced") {
		t.Errorf("--profile open: %v\n%s", err, out)
	}
	out, err = exec.Command(moatBin, "serve", "--check", "-c", file, "--profile", "strict").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `--profile "strict" must be one of`) {
		t.Errorf("--profile strict: %v\n%s", err, out)
	}
}

// The zero configuration under industry: in FIPS mode it complies;
// without FIPS mode, FIPS and the TLS 1.2 suites are missing.
func TestServeCheckZeroConfigIndustry(t *testing.T) {
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	for _, tc := range []struct {
		godebug string
		want    []string
	}{
		{"fips140=on", nil},
		{"fips140=off", []string{"serve: 2 problems:", "FIPS 140-3 mode is off", "TLS 1.2 with suites NIST SP 800-52r2 does not approve"}},
	} {
		cmd := exec.Command(moatBin, "serve", "--check", "--profile", "industry", "--data", data)
		cmd.Env = append(os.Environ(), "GODEBUG="+tc.godebug)
		out, err := cmd.CombinedOutput()
		if tc.want == nil {
			if err != nil {
				t.Fatalf("%s: refused: %v\n%s", tc.godebug, err, out)
			}
			continue
		}
		if err == nil {
			t.Fatalf("%s: accepted:\n%s", tc.godebug, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%s: missing %q in:\n%s", tc.godebug, w, out)
			}
		}
	}
}
