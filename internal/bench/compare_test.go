package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCompare(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, r *Result) {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := r.WriteJSON(f); err != nil {
			t.Fatal(err)
		}
	}
	msg := func(rate, p99 float64) *Result {
		return &Result{Scenario: "p2p", Messages: MessageStats{DeliveredPerSecond: rate, Expected: 10},
			Latency: LatencySummary{Count: 10, P99Us: p99}, Connect: ConnectStats{Attempted: 2, Succeeded: 2, SuccessRate: 1},
			Broker: &BrokerStats{CPUPercent: 50, RSSPeakMiB: 20, CPUPerMessageUs: 3}}
	}
	write("c-p2p.moat.json", msg(3000, 900))
	write("c-p2p.mosquitto.json", msg(1000, 1000))
	write("b-storm.moat.json", &Result{Scenario: "conn", Connect: ConnectStats{Attempted: 10, Succeeded: 10, SuccessRate: 1, PerSecond: 100},
		Broker: &BrokerStats{CPUPerConnectMs: 1, RSSPerConnKiB: 30}})
	write("b-storm.mosquitto.json", &Result{Scenario: "conn", Connect: ConnectStats{Attempted: 10, Succeeded: 10, SuccessRate: 1, PerSecond: 80},
		Broker: &BrokerStats{CPUPerConnectMs: 1, RSSPerConnKiB: 20}})
	res, err := LoadResults(dir)
	if err != nil {
		t.Fatal(err)
	}
	var targets []Target
	for _, s := range []string{"c-p2p:delivered_per_s>=2", "c-p2p:latency_p99_ms<=1", "b-storm:conn_per_s>=2"} {
		tg, err := ParseTarget(s)
		if err != nil {
			t.Fatal(err)
		}
		targets = append(targets, tg)
	}
	var sb strings.Builder
	missed := Compare(&sb, res, "moat", []string{"mosquitto"}, []string{"nullfwd"}, targets)
	out := sb.String()
	t.Log("\n" + out)
	if missed != 1 {
		t.Errorf("missed %d targets, want 1 (b-storm connections/s)", missed)
	}
	for _, want := range []string{"| c-p2p | delivered msgs/s | 3000 | 1000 | 3.00× | >= 2× met |", "1.25×", "**missed**", "rss"} {
		if !strings.Contains(strings.ToLower(out), strings.ToLower(want)) {
			t.Errorf("table lacks %q", want)
		}
	}
	for _, bad := range []string{"c-p2p:nope>=2", "x", "c:delivered_per_s=2"} {
		if _, err := ParseTarget(bad); err == nil {
			t.Errorf("ParseTarget(%q) accepted", bad)
		}
	}
}

func TestHistogram(t *testing.T) {
	var h Histogram
	for i := 1; i <= 10000; i++ {
		h.Record(timeUs(i))
	}
	s := h.Summary()
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"p50", s.P50Us, 5000}, {"p99", s.P99Us, 9900}, {"p99.9", s.P999Us, 9990}, {"max", s.MaxUs, 10000}, {"min", s.MinUs, 1}} {
		if c.got < c.want*0.98 || c.got > c.want*1.02 {
			t.Errorf("%s = %v, want %v ± 2%%", c.name, c.got, c.want)
		}
	}
	var m Histogram
	m.Merge(&h)
	if m.Count() != h.Count() || m.Quantile(0.5) != h.Quantile(0.5) || m.Max() != h.Max() {
		t.Error("Merge lost data")
	}
	if bs := h.Buckets(20); len(bs) > 21 || len(bs) < 5 {
		t.Errorf("Buckets(20) gave %d buckets", len(bs))
	}
	for i := range histBuckets - 1 {
		if histIndex(histUpper(i)) != i || histIndex(histUpper(i)+1) != i+1 {
			t.Fatalf("bucket %d bounds inconsistent", i)
		}
	}
}

func timeUs(i int) time.Duration { return time.Duration(i) * time.Microsecond }
