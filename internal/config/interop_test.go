package config

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestMosquittoRejectsTheSame runs the real Mosquitto broker on files it
// must refuse at startup and checks that Moat refuses them too, at the same
// line. Mosquitto stops before opening any socket when its configuration is
// invalid, so nothing listens.
func TestMosquittoRejectsTheSame(t *testing.T) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/mosquitto"); err != nil {
			t.Skip("mosquitto not installed")
		}
	}
	found := regexp.MustCompile(`Error found at (.+):(\d+)\.`)
	for _, tc := range []struct{ name, conf string }{
		{"unknown key", "listener 18999 127.0.0.1\nfoo bar\n"},
		{"bool yes", "listener 18999 127.0.0.1\nallow_anonymous yes\n"},
		{"bool upper case", "listener 18999 127.0.0.1\nallow_anonymous TRUE\n"},
		{"empty value", "listener 18999 127.0.0.1\nallow_anonymous\n"},
		{"tab separator", "listener 18999 127.0.0.1\nmax_keepalive\t60\n"},
		{"indented comment", "listener 18999 127.0.0.1\n  # comment\n"},
		{"max_keepalive too low", "listener 18999 127.0.0.1\nmax_keepalive 5\n"},
		{"max_keepalive too high", "listener 18999 127.0.0.1\nmax_keepalive 70000\n"},
		{"max_packet_size 0", "listener 18999 127.0.0.1\nmax_packet_size 0\n"},
		{"max_packet_size below 20", "listener 18999 127.0.0.1\nmax_packet_size 19\n"},
		{"message_size_limit too big", "listener 18999 127.0.0.1\nmessage_size_limit 300000000\n"},
		{"max_inflight_messages too big", "listener 18999 127.0.0.1\nmax_inflight_messages 70000\n"},
		{"expiration without unit", "listener 18999 127.0.0.1\npersistent_client_expiration 10\n"},
		{"expiration zero", "listener 18999 127.0.0.1\npersistent_client_expiration 0d\n"},
		{"expiration bad unit", "listener 18999 127.0.0.1\npersistent_client_expiration 2x\n"},
		{"sys_interval too big", "listener 18999 127.0.0.1\nsys_interval 70000\n"},
		{"sys_interval negative", "listener 18999 127.0.0.1\nsys_interval -1\n"},
		{"bad protocol", "listener 18999 127.0.0.1\nprotocol mqtt-sn\n"},
		{"bad socket_domain", "listener 18999 127.0.0.1\nsocket_domain ipv5\n"},
		{"bad log_dest", "listener 18999 127.0.0.1\nlog_dest syslogd\n"},
		{"log_dest file without path", "listener 18999 127.0.0.1\nlog_dest file\n"},
		{"bad log_type", "listener 18999 127.0.0.1\nlog_type verbose\n"},
		{"max_qos 3", "listener 18999 127.0.0.1\nmax_qos 3\n"},
		{"max_topic_alias too big", "listener 18999 127.0.0.1\nmax_topic_alias 70000\n"},
		{"duplicate cafile", "listener 18999 127.0.0.1\ncafile /a.pem\ncafile /b.pem\n"},
		{"duplicate pid_file", "pid_file /a.pid\npid_file /b.pid\nlistener 18999 127.0.0.1\n"},
		{"listener port too big", "listener 70000\n"},
		{"per_listener_settings late", "allow_anonymous true\nper_listener_settings true\nlistener 18999 127.0.0.1\n"},
		{"mount_point before listener", "mount_point a/\nlistener 18999 127.0.0.1\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.conf")
			if err := os.WriteFile(path, []byte(tc.conf), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, "-c", path).CombinedOutput()
			if err == nil || ctx.Err() != nil {
				t.Fatalf("mosquitto accepted the file (err=%v):\n%s", err, out)
			}
			m := found.FindStringSubmatch(string(out))
			if m == nil {
				t.Fatalf("mosquitto output has no error position:\n%s", out)
			}
			wantLine, _ := strconv.Atoi(m[2])

			_, perr := Load(path)
			var e *Error
			if !errors.As(perr, &e) {
				t.Fatalf("Moat accepted a file Mosquitto refuses (%s)", out)
			}
			if e.Line != wantLine {
				t.Errorf("Moat reports line %d, Mosquitto line %d\nmoat: %v\nmosquitto: %s", e.Line, wantLine, perr, out)
			}
		})
	}
}
