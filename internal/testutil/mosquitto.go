package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// userLine finds a configuration's own "user" line.
var userLine = regexp.MustCompile(`(?m)^\s*user\s`)

// StartMosquitto starts Debian's mosquitto broker with the configuration
// conf returns for the given ports (listeners on 127.0.0.1), through
// StartPeer: a port taken before mosquitto binds it is retried. It skips
// the test when mosquitto is not installed. Run as root, mosquitto is told
// to stay root (unless conf has a user line of its own): it would
// otherwise switch to a user that cannot read the test's temporary files.
// The broker is stopped when the test ends.
func StartMosquitto(t testing.TB, ports int, conf func(ports []int) string) *RunningPeer {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/mosquitto"); err != nil {
			t.Skip("mosquitto not installed (Debian: apt-get install mosquitto)")
		}
	}
	file := filepath.Join(t.TempDir(), "mosquitto.conf")
	return StartPeer(t, Peer{
		Name:  "mosquitto",
		Ports: ports,
		Command: func(ports []int) *exec.Cmd {
			text := conf(ports)
			if os.Geteuid() == 0 && !userLine.MatchString(text) {
				text = "user root\n" + text // mosquitto refuses a second user line
			}
			if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
				t.Fatalf("testutil: %v", err)
			}
			return exec.Command(bin, "-c", file)
		},
	})
}
