package bench

import (
	"bytes"
	"math"
	"testing"
	"time"
)

// round builds the Result of one round whose latencies are lat.
func round(label string, lat []time.Duration, window float64, cpuPct float64) *Result {
	var h Histogram
	for _, d := range lat {
		h.Record(d)
	}
	n := int64(len(lat))
	return &Result{
		Label: label, Scenario: string(FanIn), Params: Params{DurationSeconds: window},
		Elapsed: window + 1,
		Connect: ConnectStats{Attempted: 10, Succeeded: 10, Seconds: 1, PerSecond: 20},
		Messages: MessageStats{Sent: n, Acked: n, Delivered: n, DeliveredInWindow: n, Expected: n,
			WindowSeconds: window, DeliveredPerSecond: float64(n) / window},
		Latency: h.Summary(), LatencyHist: h.Data(),
		Broker: &BrokerStats{CPUPercent: cpuPct, PhaseCPUSeconds: cpuPct / 100 * window, RSSPeakMiB: cpuPct},
	}
}

func TestMergeResults(t *testing.T) {
	var a, b []time.Duration
	for i := range 900 {
		a = append(a, time.Duration(100+i)*time.Microsecond)
	}
	for i := range 100 {
		b = append(b, time.Duration(50+i)*time.Millisecond) // a slow round
	}
	ra, rb := round("e moat", a, 10, 50), round("e moat", b, 5, 20)

	// Through JSON, as `moat bench merge` reads them.
	var rs []*Result
	for _, r := range []*Result{ra, rb} {
		var buf bytes.Buffer
		if err := r.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		back, err := ReadResult(&buf)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, back)
	}
	m, err := MergeResults(rs)
	if err != nil {
		t.Fatal(err)
	}
	var all Histogram
	for _, d := range append(a, b...) {
		all.Record(d)
	}
	if got, want := m.Latency, all.Summary(); got != want {
		t.Errorf("merged latency %+v, want %+v", got, want)
	}
	if m.Messages.Delivered != 1000 || m.Messages.WindowSeconds != 15 || m.Params.DurationSeconds != 15 {
		t.Errorf("merged counts %+v", m.Messages)
	}
	if got := m.Messages.DeliveredPerSecond; math.Abs(got-1000.0/15) > 1e-9 {
		t.Errorf("delivered/s %v, want %v", got, 1000.0/15)
	}
	if m.Connect.Succeeded != 20 || m.Connect.PerSecond != 20 || m.Connect.SuccessRate != 1 {
		t.Errorf("merged connect %+v", m.Connect)
	}
	// CPU weighted by phase time: (50·10 + 20·5) / 15 = 40 %.
	if got := m.Broker.CPUPercent; math.Abs(got-40) > 1e-9 {
		t.Errorf("CPU %v %%, want 40", got)
	}
	if m.Broker.RSSPeakMiB != 50 {
		t.Errorf("RSS peak %v, want the highest (50)", m.Broker.RSSPeakMiB)
	}
	if got, want := m.Broker.CPUPerMessageUs, 1e6*(5+1)/1000.0; math.Abs(got-want) > 1e-6 {
		t.Errorf("CPU per message %v µs, want %v", got, want)
	}

	for name, bad := range map[string][]*Result{
		"nothing":          nil,
		"other label":      {ra, round("e mosquitto", a, 10, 1)},
		"no histogram":     {ra, func() *Result { r := round("e moat", a, 1, 1); r.LatencyHist = nil; return r }()},
		"bucket off range": {ra, func() *Result { r := round("e moat", a, 1, 1); r.LatencyHist.Buckets[0][0] = 1 << 40; return r }()},
	} {
		if _, err := MergeResults(bad); err == nil {
			t.Errorf("%s: merged without error", name)
		}
	}
}

func TestHostStats(t *testing.T) {
	a, err := ReadHostCPU()
	if err != nil {
		t.Skipf("no /proc/stat: %v", err)
	}
	if a.Total == 0 || a.Idle > a.Total || a.Steal > a.Total {
		t.Fatalf("implausible counters %+v", a)
	}
	h := hostStats(HostCPU{Total: 1000, Idle: 500, Steal: 10}, HostCPU{Total: 2000, Idle: 800, Steal: 110}, nil, nil)
	if h == nil || h.IdlePct != 30 || h.StealPct != 10 {
		t.Fatalf("hostStats = %+v, want 30 %% idle, 10 %% steal", h)
	}
	if hostStats(a, a, nil, nil) != nil {
		t.Fatal("no time passed: want nil")
	}

	// Merged: weighted by each round's window (10 s and 5 s).
	ra, rb := round("x", []time.Duration{time.Millisecond}, 10, 1), round("x", []time.Duration{time.Millisecond}, 5, 1)
	ra.Host, rb.Host = &HostStats{StealPct: 0, IdlePct: 90}, &HostStats{StealPct: 30, IdlePct: 60}
	m, err := MergeResults([]*Result{ra, rb})
	if err != nil {
		t.Fatal(err)
	}
	if m.Host == nil || math.Abs(m.Host.StealPct-10) > 1e-9 || math.Abs(m.Host.IdlePct-80) > 1e-9 {
		t.Fatalf("merged host %+v, want 10 %% steal, 80 %% idle", m.Host)
	}
}
