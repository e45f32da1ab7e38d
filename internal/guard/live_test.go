package guard

import (
	"strings"
	"testing"
	"time"
)

// TestSetClientRates: new rates apply to a client's next packet; invalid
// ones change nothing.
func TestSetClientRates(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{MessageRate: 1000, MessageBurst: 10, ByteRate: -1}, clk, nil)
	l := g.NewClientLimiter()
	for i := range 10 {
		if wait, _ := l.Reserve(1); wait != 0 {
			t.Fatalf("message %d of the burst waits %v", i+1, wait)
		}
	}
	if wait, _ := l.Reserve(1); wait <= 0 {
		t.Fatal("message 11 at the same instant does not wait")
	}
	before := g.ClientRates()
	if _, err := g.SetClientRates(ClientRates{MessageRate: 2e9, ThrottleLimit: -time.Second}); err == nil {
		t.Fatal("a rate above 1e9 and a negative throttle limit were accepted")
	}
	if g.ClientRates() != before {
		t.Fatal("invalid rates changed the rates in force")
	}
	got, err := g.SetClientRates(ClientRates{MessageRate: 1e6, MessageBurst: 1000, ByteRate: -1})
	if err != nil {
		t.Fatal(err)
	}
	if got.ThrottleLimit != DefaultThrottleLimit || g.ClientRates() != got {
		t.Fatalf("rates in force %+v, returned %+v", g.ClientRates(), got)
	}
	clk.Advance(12 * time.Millisecond) // past what the old rate owed (11 ms)
	for i := range 500 {
		if wait, _ := l.Reserve(1); wait != 0 {
			t.Fatalf("at the new rate, message %d waits %v", i+1, wait)
		}
	}
}

// TestSetDetectors: a detector's new settings judge its next event (a
// lowered threshold detects sooner, a changed action applies, a disabled
// detector counts nothing); invalid settings change nothing.
func TestSetDetectors(t *testing.T) {
	clk := newClock()
	g, logs := newGuard(t, Config{}, clk, nil)
	id := Identity{Addr: ip("192.0.2.7"), ClientID: "c1", Username: "mallory"}
	for i := range 3 {
		if v := g.AuthFailed(id, "bad password"); v.Detected != "" {
			t.Fatalf("failure %d detected under the default threshold: %+v", i+1, v)
		}
	}
	before := g.Detectors()
	if before.AuthFailures.Threshold != 10 || before.AuthFailures.Action != ActionBan {
		t.Fatalf("defaults: %+v", before.AuthFailures)
	}
	if _, err := g.SetDetectors(Detectors{TopicScan: Detector{Threshold: maxThreshold + 1}, Flapping: Detector{Window: -time.Second}}); err == nil ||
		!strings.Contains(err.Error(), "topic_scan") || !strings.Contains(err.Error(), "flapping") {
		t.Fatalf("invalid detectors: %v; want both problems", err)
	}
	if g.Detectors() != before {
		t.Fatal("invalid detectors changed those in force")
	}
	got, err := g.SetDetectors(Detectors{AuthFailures: Detector{Threshold: 2, Action: ActionLog}, Silence: Detector{Disabled: true}})
	if err != nil {
		t.Fatal(err)
	}
	if got.AuthFailures.Threshold != 2 || got.AuthFailures.Window != time.Minute || got.TopicScan != before.TopicScan || g.Detectors() != got {
		t.Fatalf("in force %+v, returned %+v", g.Detectors(), got)
	}
	// The count restarts at the new threshold: the next two failures
	// detect, and the action is the new one (log: no disconnect, no ban).
	if v := g.AuthFailed(id, "bad password"); v.Detected != "" {
		t.Fatalf("first failure after the change detected: %+v", v)
	}
	v := g.AuthFailed(id, "bad password")
	if v.Detected != DetectAuthFailures || v.Disconnect || !strings.Contains(v.Reason, "2 failed authentications") {
		t.Fatalf("second failure after the change: %+v", v)
	}
	if _, banned := g.BannedIdentity(id); banned || g.Stats().AutoBans != 0 {
		t.Fatal("the detection banned under action log")
	}
	if g.SilenceAfter() != 0 {
		t.Fatal("the disabled silence detector still reports a period")
	}
	if !strings.Contains(logs.String(), "action=log") {
		t.Errorf("the detection is not logged with its new action:\n%s", logs.String())
	}
}
