package guard

import (
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
