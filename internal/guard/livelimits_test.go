package guard

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestSetLimitsConnectionRates: a lowered per-address rate and burst
// apply to the next socket of an address that already has a bucket, a
// rate turned off lets a flood through, a listener's rate changes for
// the gate made at start, and invalid limits change nothing.
func TestSetLimitsConnectionRates(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{}, clk, nil)
	a := ip("192.0.2.1")
	for i := range 10 {
		if !g.AllowAccept(a) {
			t.Fatalf("connection %d refused under the default burst", i+1)
		}
	}
	before := g.Limits()
	if _, err := g.SetLimits(Limits{ConnRate: 5, ConnBurst: -1, TrackedKeys: -3}); err == nil ||
		!strings.Contains(err.Error(), "conn_rate") || !strings.Contains(err.Error(), "tracked_keys") {
		t.Fatalf("invalid limits: %v; want both problems", err)
	}
	if g.Limits() != before {
		t.Fatal("invalid limits changed those in force")
	}
	got, err := g.SetLimits(Limits{ConnRate: 10, ConnBurst: 12, ListenerConnRate: 1, ListenerConnBurst: 3})
	if err != nil {
		t.Fatal(err)
	}
	if got.ConnRate != 10 || got.ConnBurst != 12 || got.MaxConnsPerAddr != DefaultMaxConnsPerAddr || got.MaxBans != DefaultMaxBans || g.Limits() != got {
		t.Fatalf("in force %+v, returned %+v", g.Limits(), got)
	}
	// The address keeps the time it owes: 10 connections at 20 per
	// second, 500 ms. At 10 per second with a burst of 12 (1.2 s of
	// tolerance) 7 more fit now, where the old burst (100) had room for
	// 90.
	n := 0
	for g.AllowAccept(a) {
		n++
	}
	if n != 7 {
		t.Fatalf("%d connections allowed after the change, want 7", n)
	}
	clk.Advance(100 * time.Millisecond) // one connection at 10 per second
	if !g.AllowAccept(a) || g.AllowAccept(a) {
		t.Fatal("the lowered rate does not refill one connection per 100ms")
	}

	l := g.Listener("tcp")
	for i := range 3 {
		if d := l.AllowAccept(ip(fmt.Sprintf("198.51.100.%d", i+1))); !d.Allow {
			t.Fatalf("listener burst: connection %d refused: %s", i+1, d.Reason)
		}
	}
	if d := l.AllowAccept(ip("198.51.100.9")); d.Allow || d.Reason != ReasonListenerConnRate {
		t.Fatalf("fourth connection to the listener: %+v", d)
	}
	if _, err := g.SetLimits(Limits{ConnRate: -1, ListenerConnRate: -1}); err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		if d := l.AllowAccept(a); !d.Allow {
			t.Fatalf("with both rates off, connection %d refused: %s", i+1, d.Reason)
		}
	}
}

// TestSetLimitsConnsPerAddr: connections open while the limit is off
// count once it is turned on; a lowered limit refuses the next
// connection and disconnects nobody; every Release balances.
func TestSetLimitsConnsPerAddr(t *testing.T) {
	g, _ := newGuard(t, Config{MaxConnsPerAddr: -1}, newClock(), nil)
	a := ip("192.0.2.2")
	for i := range 3 {
		if d := g.Acquire(a); !d.Allow {
			t.Fatalf("connection %d refused with the limit off", i+1)
		}
	}
	if _, err := g.SetLimits(Limits{MaxConnsPerAddr: 3}); err != nil {
		t.Fatal(err)
	}
	if d := g.Acquire(a); d.Allow || d.Reason != ReasonConnsPerAddr {
		t.Fatalf("fourth connection after the limit of 3 was turned on: %+v", d)
	}
	g.Release(a)
	if d := g.Acquire(a); !d.Allow {
		t.Fatalf("a connection after one closed: %+v", d)
	}
	if _, err := g.SetLimits(Limits{MaxConnsPerAddr: 1}); err != nil {
		t.Fatal(err)
	}
	if d := g.Acquire(a); d.Allow {
		t.Fatal("a connection over the lowered limit allowed")
	}
	for range 3 {
		g.Release(a)
	}
	if d := g.Acquire(a); !d.Allow {
		t.Fatalf("after every connection closed, the first under the lowered limit: %+v", d)
	}
	g.Release(a)
	g.perAddr.mu.Lock()
	n := len(g.perAddr.n)
	g.perAddr.mu.Unlock()
	if n != 0 {
		t.Errorf("%d addresses still counted after every connection closed", n)
	}
}

// TestSetLimitsMaxBans: max_bans applies to the next ban; it cannot be
// lowered below the bans in force.
func TestSetLimitsMaxBans(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{}, clk, nil)
	for i := range 3 {
		if _, err := g.AddBan(Ban{Kind: KindClientID, Value: fmt.Sprintf("c%d", i), Reason: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := g.SetLimits(Limits{MaxBans: 2}); err == nil || !strings.Contains(err.Error(), "below the 3 bans in force") {
		t.Fatalf("max_bans below the bans in force: %v", err)
	}
	if g.Limits().MaxBans != DefaultMaxBans {
		t.Fatal("a refused max_bans changed the limit")
	}
	if _, err := g.SetLimits(Limits{MaxBans: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.AddBan(Ban{Kind: KindClientID, Value: "c3", Reason: "test"}); err == nil || !strings.Contains(err.Error(), "max_bans") {
		t.Fatalf("a ban over the new maximum: %v", err)
	}
}

// TestSetLimitsTrackedKeysAndRepeatMemory: a detector table makes room
// under a lowered tracked_keys; a shorter repeat_memory forgets earlier
// bans sooner, so the next one is not doubled.
func TestSetLimitsTrackedKeysAndRepeatMemory(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{AuthFailures: Detector{Threshold: 2, BanFor: time.Minute, Keys: KeyUsername}}, clk, nil)
	for i := range 5 {
		g.AuthFailed(Identity{Username: fmt.Sprintf("u%d", i)}, "bad password")
	}
	if _, err := g.SetLimits(Limits{TrackedKeys: 2, RepeatMemory: time.Hour}); err != nil {
		t.Fatal(err)
	}
	d := g.det[DetectAuthFailures]
	for i := 5; i < 10; i++ {
		g.AuthFailed(Identity{Username: fmt.Sprintf("u%d", i)}, "bad password")
	}
	d.mu.Lock()
	n := len(d.keys)
	d.mu.Unlock()
	if n > 5 {
		t.Errorf("the table grew to %d identities under tracked_keys 2 (5 were counted before the change)", n)
	}

	id := Identity{Username: "mallory"}
	ban := func() time.Duration {
		t.Helper()
		g.AuthFailed(id, "bad password")
		if v := g.AuthFailed(id, "bad password"); v.Detected == "" {
			t.Fatal("two failures not detected")
		}
		b, ok := g.BannedIdentity(id)
		if !ok {
			t.Fatal("no ban")
		}
		return b.Expires.Sub(b.Created)
	}
	if d := ban(); d != time.Minute {
		t.Fatalf("first ban %v", d)
	}
	clk.Advance(2 * time.Minute) // past the ban
	g.Poll()
	if d := ban(); d != 2*time.Minute {
		t.Fatalf("second ban within repeat_memory %v, want doubled", d)
	}
	if _, err := g.SetLimits(Limits{TrackedKeys: 2, RepeatMemory: time.Minute}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(3 * time.Minute)
	g.Poll()
	if d := ban(); d != time.Minute {
		t.Fatalf("a ban after the shortened repeat_memory passed: %v, want not doubled", d)
	}
}
