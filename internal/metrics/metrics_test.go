package metrics

import (
	"bytes"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

func fullSnapshot() Snapshot {
	now := time.Now()
	return Snapshot{
		StartTime: now.Add(-time.Hour), Connections: 3, ConnectionsMaximum: 5, ConnectionsAccepted: 9,
		ConnectionsRefused: map[string]int64{"connect_refused": 2, "over_cap": 1},
		ProtocolErrors:     1, RevokedDisconnects: 1, Panics: 0,
		MessagesReceived: [3]int64{100, 20, 3}, MessagesSent: [3]int64{200, 40, 6},
		PayloadReceived: [3]int64{1000, 200, 30}, PayloadSent: [3]int64{2000, 400, 60},
		BytesReceived: 1500, BytesSent: 3000, PacketsReceived: 150, PacketsSent: 250, SocketsAccepted: 12, Queued: 4,
		Dropped: map[string]int64{"queue_full": 1, "expired": 2}, PublishersHeld: 2, Pushbacks: 7, SlowSubscribers: 1, HoldCycles: 3,
		Sessions: 4, SessionsExpired: 1, Subscriptions: 6, SharedSubscriptions: 2, SubscriptionsRefused: 1, SubscriptionsRevoked: 1, Retained: 2, RetainedBytes: 300,
		Authentications:      []Count{{"success", "credentials", 7}, {"failure", "bad_credentials", 2}},
		AuthzDecisions:       []Count{{"publish", "allowed", 5}, {"publish", "denied", 1}},
		AuthzDenials:         []Count{{"publish", "rule", 3}},
		TLSHandshakes:        []TLSCount{{"TLS 1.3", "X25519MLKEM768", 8}, {"TLS 1.2", "CurveP256", 1}},
		TLSHandshakeFailures: map[string]int64{"certificate_revoked": 1, "timeout": 2},
		TLSConnections:       []TLSCount{{"TLS 1.3", "X25519MLKEM768", 2}, {"TLS 1.2", "CurveP256", 1}},
		ServerCertNotAfter:   now.Add(90 * 24 * time.Hour), ClientCertNotAfter: now.Add(24 * time.Hour),
		CRLs:               map[string]time.Time{"ca/crl.pem": now.Add(-time.Minute)},
		OCSPResponses:      map[string]uint64{"good": 4, "revoked": 1, "unknown": 0, "error": 2},
		OCSPStaples:        []Staple{{"mqtts", "server.pem", true, now.Add(time.Hour)}, {"ws", "ws.pem", false, time.Time{}}},
		StoreEnabled:       true,
		StoreCommitLatency: Histogram{Bounds: []float64{0.001, 0.01, 0.1}, Counts: []uint64{5, 3, 1, 1}, Sum: 0.5},
		StoreTransactions:  10, StoreFsyncs: 10, StoreFailures: 0, StoreQuarantined: 0, PersistenceFailures: 0,
		Bans: 1, Detections: map[string]int64{"auth_failures": 3}, Throttled: 2, ThrottleKicks: 1, LimitHits: map[string]int64{"topic_length": 4, "rate": 1}, FIPS: true,
		ReadBudgetInUse: 10, ReadBudgetPeak: 100, ReadBudgetWaits: 1,
		Cluster: fullCluster(),
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
		"moat_messages_received_total{qos=\"1\"} 20", "moat_payload_sent_bytes_total{qos=\"2\"} 60",
		"moat_authentications_total{reason=\"bad_credentials\",result=\"failure\"} 2",
		"moat_authorization_decisions_total{action=\"publish\",result=\"denied\"} 1",
		"moat_authorization_denials_total{reason=\"rule\",request=\"publish\"} 3",
		"moat_tls_handshakes_total{group=\"X25519MLKEM768\",version=\"TLS 1.3\"} 8",
		"moat_tls_handshake_failures_total{reason=\"certificate_revoked\"} 1",
		"moat_ocsp_responses_total{status=\"error\"} 2",
		"moat_ocsp_staple_good{certificate=\"ws.pem\",listener=\"ws\"} 0",
		// Cumulative buckets.
		"moat_store_commit_duration_seconds_bucket{le=\"0.01\"} 8",
		"moat_store_commit_duration_seconds_bucket{le=\"+Inf\"} 10",
		"moat_store_commit_duration_seconds_count 10",
		"moat_publishers_held 2", "moat_pushbacks_total 7", "moat_slow_subscribers_total 1", "moat_hold_cycles_total 3",
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
	// No guard: no bans series; no store: no store series.
	s := fullSnapshot()
	s.Bans = -1
	s.StoreEnabled = false
	body = string(scrape(t, s))
	if strings.Contains(body, "moat_bans ") || strings.Contains(body, "moat_store_commit_duration_seconds_count") {
		t.Error("moat_bans or store series exposed without a guard or a store")
	}
}

// descName extracts fqName from a Desc's String form.
func descName(s string) string {
	_, rest, _ := strings.Cut(s, `fqName: "`)
	name, _, _ := strings.Cut(rest, `"`)
	return name
}

// TestEveryMetricDocumented: docs/operations.md's table names every
// metric, and names none that does not exist.
func TestEveryMetricDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, d := range allDescs {
		name := descName(d.String())
		known[name] = true
		if !strings.Contains(string(doc), "| `"+name+"` |") {
			t.Errorf("metric %s is not in the table of docs/operations.md", name)
		}
	}
	for _, m := range regexp.MustCompile("(?m)^\\| `(moat_[a-z_]+)` \\|").FindAllStringSubmatch(string(doc), -1) {
		if !known[m[1]] {
			t.Errorf("docs/operations.md lists %s, which the broker does not expose", m[1])
		}
	}
}

// BenchmarkScrape is the metrics package's share of one scrape: a full
// snapshot collected, formatted and written, with the Go runtime and
// process collectors.
func BenchmarkScrape(b *testing.B) {
	s := fullSnapshot()
	h := Handler(SourceFunc(func() Snapshot { return s }))
	req := httptest.NewRequest("GET", "/metrics", nil)
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}
