package cli

import (
	"bytes"
	"context"
	"log/slog"
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
