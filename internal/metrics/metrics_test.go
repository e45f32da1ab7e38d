package metrics

import (
	"bytes"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func fullSnapshot() Snapshot {
	now := time.Now()
	return Snapshot{
		StartTime: now.Add(-time.Hour), Connections: 3, ConnectionsMaximum: 5, ConnectionsAccepted: 9,
		ConnectionsRefused: map[string]int64{"connect_refused": 2, "over_cap": 1},
		TLSFailures:        1, ProtocolErrors: 1, RevokedDisconnects: 1, Panics: 0,
		MessagesReceived: 100, MessagesSent: 200, BytesReceived: 1000, BytesSent: 2000, Queued: 4,
		Dropped: map[string]int64{"queue_full": 1, "expired": 2}, PublishersHeld: 2, Pushbacks: 7, SlowSubscribers: 1,
		Sessions: 4, Subscriptions: 6, SubscriptionsRefused: 1, Retained: 2, RetainedBytes: 300, RetainedRefused: 0,
		TLSConnections:     []TLSConnections{{"TLS 1.3", "X25519MLKEM768", 2}, {"TLS 1.2", "CurveP256", 1}},
		ServerCertNotAfter: now.Add(90 * 24 * time.Hour), ClientCertNotAfter: now.Add(24 * time.Hour),
		CRLs: map[string]time.Time{"ca/crl.pem": now.Add(-time.Minute)}, Bans: 1,
		Detections: map[string]int64{"auth_failures": 3}, FIPS: true,
	}
}

func scrape(t *testing.T, s Snapshot) []byte {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler(SourceFunc(func() Snapshot { return s })).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.Bytes()
}

// TestPromtoolCheckMetrics lints every metric with Prometheus's own
// checker.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (make test installs prometheus)")
	}
	body := scrape(t, fullSnapshot())
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestEveryMetricExposed: each described metric appears in a scrape of a
// full snapshot, with the values of the snapshot.
func TestEveryMetricExposed(t *testing.T) {
	body := string(scrape(t, fullSnapshot()))
	for _, want := range []string{
		"moat_connections 3", "moat_connections_refused_total{reason=\"over_cap\"} 1",
		"moat_tls_connections{group=\"X25519MLKEM768\",version=\"TLS 1.3\"} 2", "moat_fips_mode 1",
		"moat_messages_dropped_total{reason=\"expired\"} 2", "moat_bans 1", "go_goroutines", "process_open_fds",
		"moat_publishers_held 2", "moat_pushbacks_total 7", "moat_slow_subscribers_total 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	for _, d := range allDescs {
		name := descName(d.String())
		if !strings.Contains(body, "# HELP "+name+" ") {
			t.Errorf("metric %s described but not exposed", name)
		}
	}
	// No guard: no bans series.
	s := fullSnapshot()
	s.Bans = -1
	if strings.Contains(string(scrape(t, s)), "moat_bans ") {
		t.Error("moat_bans exposed without a guard")
	}
}

// descName extracts fqName from a Desc's String form.
func descName(s string) string {
	_, rest, _ := strings.Cut(s, `fqName: "`)
	name, _, _ := strings.Cut(rest, `"`)
	return name
}
