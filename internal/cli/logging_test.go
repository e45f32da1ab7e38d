package cli

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/config"
)

// TestLogTimestampFormat: log.timestamp_format (Mosquitto
// log_timestamp_format) sets the time of each record, in text and JSON.
func TestLogTimestampFormat(t *testing.T) {
	at := time.Date(2026, 3, 5, 14, 7, 9, 0, time.UTC)
	for _, tc := range []struct{ format, want string }{
		{"text", `time="2026-03-05 14:07:09" level=INFO msg=hello`},
		{"json", `{"time":"2026-03-05 14:07:09","level":"INFO","msg":"hello"}`},
	} {
		var buf bytes.Buffer
		lc := config.Default().Log
		lc.Format = tc.format
		lc.TimestampFormat = "%F %T"
		log, closeLog, err := newLogger(lc, &buf)
		if err != nil {
			t.Fatal(err)
		}
		defer closeLog()
		if err := log.Handler().Handle(context.Background(), slog.NewRecord(at, slog.LevelInfo, "hello", 0)); err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(buf.String()); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.format, got, tc.want)
		}
	}
	lc := config.Default().Log
	lc.TimestampFormat = "%c"
	if _, _, err := newLogger(lc, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "%c is not supported") {
		t.Errorf("unsupported format: %v", err)
	}
}

// TestOversizePublishLogged: a 2 MB file sent with mosquitto_pub -f
// exceeds the 1 MiB default max_packet_size. The broker's log names the
// client, the declared size, the limit and the setting to raise; an
// MQTT 5 client learns the limit from CONNACK and does not send it.
func TestOversizePublishLogged(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - {address: "127.0.0.1:0", transport: tcp, allow_anonymous: true}
persistence: {enabled: false}
`)
	big := filepath.Join(dir, "firmware.bin")
	if err := os.WriteFile(big, bytes.Repeat([]byte("x"), 2_000_000), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startMoat(t, dir, "-c", "moat.yaml")
	out, err := run(t, 20*time.Second, "mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(p.port(0)), "-V", "mqttv311",
		"-i", "uploader", "-q", "1", "-t", "fw", "-f", big)
	if err == nil {
		t.Fatalf("mosquitto_pub succeeded: %s", out)
	}
	line := p.waitLine(t, "level=WARN", "packet larger than max_packet_size", "client=uploader")
	for _, s := range []string{"packet of 200001", "limit=1048576", "limits.max_packet_size in YAML"} {
		if !strings.Contains(line, s) {
			t.Errorf("log line lacks %q: %s", s, line)
		}
	}
	p.waitLine(t, "broker: client disconnected", "client=uploader", `code="0x95 packet too large"`)
}

// TestZeroConfigSaysWhereRootPassIs: the built-in CA's generated root key
// passphrase is named at its creation, with the advice to move it offline
// (docs/pki.md), in the log and in the start-up instructions.
func TestZeroConfigSaysWhereRootPassIs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - {address: "127.0.0.1:0", transport: tls}
data_dir: data
persistence: {enabled: false}
`)
	p := startMoat(t, dir, "-c", "moat.yaml")
	pass := filepath.Join("data", "ca", "root.pass")
	line := p.waitLine(t, "created a local certificate authority", "root_passphrase="+pass)
	if !strings.Contains(line, "level=WARN") || !strings.Contains(line, "offline") {
		t.Errorf("creation line: %s", line)
	}
	p.waitLine(t, "The CA's root key passphrase was generated into "+pass)
	if _, err := os.Stat(filepath.Join(dir, pass)); err != nil {
		t.Fatalf("the named file does not exist: %v", err)
	}
}
