package config

import (
	"strings"
	"testing"
	"time"
)

func TestTimeFormat(t *testing.T) {
	at := time.Date(2026, 3, 5, 14, 7, 9, 0, time.FixedZone("CET", 3600))
	for _, tc := range []struct{ in, want string }{
		{"%Y-%m-%dT%H:%M:%S", "2026-03-05T14:07:09"},
		{"%F %T %z %Z", "2026-03-05 14:07:09 +0100 CET"},
		{"%s", "1772716029"},
		{"[%e|%j|%b|%a|%p|%y]", "[ 5|064|Mar|Thu|PM|26]"},
		{"100%% at %H", "100% at 14"},
		{"%%Y Mon 2006", "%Y Mon 2006"}, // literals are never read as layouts
	} {
		tf, err := ParseTimeFormat(tc.in)
		if err != nil {
			t.Errorf("ParseTimeFormat(%q): %v", tc.in, err)
			continue
		}
		if got := tf.Format(at); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"%c", "%Y-%k", "%", "at %H%", "%E", ""} {
		if _, err := ParseTimeFormat(bad); err == nil {
			t.Errorf("ParseTimeFormat(%q) accepted", bad)
		}
	}
}

// TestLogTimestampFormat: mosquitto.conf's log_timestamp_format is
// honoured (it was ignored with a note), and a format Moat cannot honour
// is a configuration error at its line, not silently replaced.
func TestLogTimestampFormat(t *testing.T) {
	c, err := Parse("m.conf", []byte("listener 1883 127.0.0.1\nallow_anonymous true\nlog_timestamp_format %Y-%m-%dT%H:%M:%S\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Log.TimestampFormat != "%Y-%m-%dT%H:%M:%S" {
		t.Errorf("TimestampFormat = %q", c.Log.TimestampFormat)
	}
	for _, n := range c.Notes {
		if strings.Contains(n, "log_timestamp_format") {
			t.Errorf("note %q", n)
		}
	}
	_, err = Parse("m.conf", []byte("listener 1883 127.0.0.1\nallow_anonymous true\nlog_timestamp_format %c\n"))
	if err == nil || !strings.Contains(err.Error(), "m.conf:3:") || !strings.Contains(err.Error(), "%c is not supported") {
		t.Errorf("unsupported specifier: %v", err)
	}
	c, err = Parse("m.yaml", []byte("log:\n  timestamp_format: \"%T\"\n"))
	if err != nil || c.Log.TimestampFormat != "%T" {
		t.Errorf("yaml: %v %q", err, c.Log.TimestampFormat)
	}
	if _, err = Parse("m.yaml", []byte("log:\n  timestamp_format: \"%Q\"\n")); err == nil || !strings.Contains(err.Error(), "log.timestamp_format") {
		t.Errorf("yaml unsupported: %v", err)
	}
}
