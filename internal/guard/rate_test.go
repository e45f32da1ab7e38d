package guard

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// A flood from one address is cut at the burst (100) and refilled at 20
// per second; other addresses are unaffected.
func TestAllowAcceptFloodFromOneAddress(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{}, clk, nil)
	flood := ip("127.0.0.2")
	for i := range 100 {
		if !g.AllowAccept(flood) {
			t.Fatalf("connection %d of the burst refused", i+1)
		}
	}
	if g.AllowAccept(flood) {
		t.Fatal("connection 101 at the same instant allowed")
	}
	for _, other := range []string{"127.0.0.3", "127.0.0.4", "::1"} {
		if !g.AllowAccept(ip(other)) {
			t.Errorf("%s refused during the flood", other)
		}
	}
	clk.Advance(50 * time.Millisecond) // one token at 20/s
	if !g.AllowAccept(flood) || g.AllowAccept(flood) {
		t.Error("refill is not one connection per 50ms")
	}
	clk.Advance(time.Second)
	n := 0
	for g.AllowAccept(flood) {
		n++
	}
	if n != 20 {
		t.Errorf("after 1s, %d connections allowed, want 20", n)
	}
	if st := g.Stats(); st.ConnRateRefused != 3 {
		t.Errorf("ConnRateRefused %d, want 3", st.ConnRateRefused)
	}
}

// IPv6 addresses of one /64 share a bucket.
func TestAllowAcceptIPv6Prefix(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{ConnBurst: 2}, clk, nil)
	if !g.AllowAccept(ip("2001:db8:1:2::1")) || !g.AllowAccept(ip("2001:db8:1:2::ffff")) {
		t.Fatal("burst refused")
	}
	if g.AllowAccept(ip("2001:db8:1:2:abcd::9")) {
		t.Error("a third address of the same /64 allowed")
	}
	if !g.AllowAccept(ip("2001:db8:1:3::1")) {
		t.Error("another /64 refused")
	}
}

// TestSecurityConnTableBounded: an attacker with many source addresses
// (spoofed, rented, an IPv6 range) makes one connection from each, to grow
// the per-address table without bound or to evict the entry of a flooding
// address and reset its bucket. The table keeps its fixed size and the
// limited address stays limited.
func TestSecurityConnTableBounded(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{ConnTableSize: 1024, IPv6Prefix: 128}, clk, nil)
	flood := ip("127.0.0.2")
	for g.AllowAccept(flood) {
	}
	base := netip.MustParseAddr("2001:db8::").As16()
	for i := range 200000 {
		a := base
		a[12], a[13], a[14], a[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		g.AllowAccept(netip.AddrFrom16(a))
		if i%1000 == 0 {
			clk.Advance(time.Microsecond)
		}
	}
	st := g.Stats()
	if st.ConnTableEntries > int64(st.ConnTableSize) || st.ConnTableSize != 1024 {
		t.Fatalf("table holds %d entries, capacity %d (want 1024)", st.ConnTableEntries, st.ConnTableSize)
	}
	if g.AllowAccept(flood) {
		t.Error("the flooding address was evicted and allowed again")
	}
}

func TestAllowAcceptDoesNotAllocate(t *testing.T) {
	g, _ := newGuard(t, Config{}, nil, nil)
	l := g.Listener("l")
	addrs := []netip.Addr{ip("127.0.0.2"), ip("2001:db8::1"), ip("::ffff:10.1.2.3")}
	g.AddBan(Ban{Kind: KindIP, Value: "10.0.0.0/8"})
	n := testing.AllocsPerRun(1000, func() {
		for _, a := range addrs {
			g.AllowAccept(a)
			l.AllowAccept(a)
			g.BannedAddr(a)
		}
	})
	if n != 0 {
		t.Errorf("%v allocations per run, want 0", n)
	}
}

func TestListenerRate(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{ListenerConnRate: 10, ListenerConnBurst: 3}, clk, nil)
	l := g.Listener("mqtts")
	for i := range 3 {
		if d := l.AllowAccept(ip(fmt.Sprintf("127.0.0.%d", 10+i))); !d.Allow {
			t.Fatalf("connection %d refused: %s", i+1, d.Reason)
		}
	}
	if d := l.AllowAccept(ip("127.0.0.20")); d.Allow || d.Reason != ReasonListenerConnRate {
		t.Errorf("decision %+v", d)
	}
	clk.Advance(100 * time.Millisecond)
	if d := l.AllowAccept(ip("127.0.0.21")); !d.Allow {
		t.Error("refill")
	}
}

func TestMaxConnsPerAddr(t *testing.T) {
	g, _ := newGuard(t, Config{MaxConnsPerAddr: 2}, newClock(), nil)
	a := ip("127.0.0.2")
	for i := range 2 {
		if !g.Acquire(a).Allow {
			t.Fatalf("connection %d refused under the cap", i+1)
		}
	}
	if d := g.Acquire(a); d.Allow || d.Reason != ReasonConnsPerAddr {
		t.Fatalf("third connection: %+v", d)
	}
	if !g.Acquire(ip("127.0.0.3")).Allow {
		t.Error("another address refused")
	}
	g.Release(a)
	if !g.Acquire(a).Allow {
		t.Error("release did not free a slot")
	}
	g.Release(a)
	g.Release(a)
	g.Release(ip("127.0.0.3"))
	if n := len(g.perAddr.n); n != 0 {
		t.Errorf("%d addresses still counted", n)
	}
}

// Reserve pauses a client beyond its burst, and disconnects one that stays
// over its rate for ThrottleLimit.
func TestReserve(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{MessageRate: 100, MessageBurst: 10, ByteRate: 1000, ByteBurst: 1000}, clk, nil)
	l := g.NewClientLimiter()
	for i := range 10 {
		if w, d := l.Reserve(10); w != 0 || !d.Allow {
			t.Fatalf("message %d of the burst: wait %v", i+1, w)
		}
	}
	if w, _ := l.Reserve(10); w != 10*time.Millisecond {
		t.Errorf("message 11 waits %v, want 10ms (100/s)", w)
	}
	clk.Advance(time.Second)
	if w, _ := l.Reserve(1000); w != 0 {
		t.Errorf("1000 bytes after a second: wait %v", w)
	}
	if w, _ := l.Reserve(500); w != 500*time.Millisecond {
		t.Errorf("500 more bytes wait %v, want 500ms (1000 B/s)", w)
	}
	// A client that ignores the pauses stays throttled and is cut off.
	var d Decision
	for range 200 {
		clk.Advance(500 * time.Millisecond)
		if _, d = l.Reserve(1000); !d.Allow {
			break
		}
	}
	if d.Allow || d.Reason != ReasonThrottleLimit {
		t.Errorf("never disconnected: %+v", d)
	}
	if st := g.Stats(); st.Throttled == 0 || st.ThrottleDisconnects != 1 {
		t.Errorf("stats %+v", st)
	}
}

// With NewRead, the packets of one read are charged at the time the first
// of them was: each is still charged and paused on its own, a pause makes
// the next packet read the clock again, and a new read does too.
func TestReserveOneReadingPerRead(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{MessageRate: 100, MessageBurst: 10}, clk, nil)
	l := g.NewClientLimiter()
	l.NewRead()
	for i := range 10 {
		if w, d := l.Reserve(10); w != 0 || !d.Allow {
			t.Fatalf("message %d of the burst: wait %v", i+1, w)
		}
		// Time the read's handling takes is not given back: the
		// packets still count at the read's time.
		clk.Advance(5 * time.Millisecond)
	}
	if w, _ := l.Reserve(10); w != 10*time.Millisecond {
		t.Errorf("message 11 of one read waits %v, want 10ms (charged at the read's time)", w)
	}
	// After the pause the clock is read again: 50 ms of handling and
	// the 10 ms paused have refilled six messages of the burst.
	clk.Advance(10 * time.Millisecond)
	if w, _ := l.Reserve(10); w != 0 {
		t.Errorf("after the pause: wait %v, want 0", w)
	}
	// A new read reads the clock again too.
	clk.Advance(time.Second)
	l.NewRead()
	for i := range 10 {
		if w, _ := l.Reserve(10); w != 0 {
			t.Fatalf("message %d after a second: wait %v", i+1, w)
		}
	}
	if w, _ := l.Reserve(10); w != 10*time.Millisecond {
		t.Errorf("message 11 of the new read waits %v, want 10ms", w)
	}
}

// AllowAccept in front of a real listener: a flood from 127.0.0.2 is
// closed at accept once past its burst, while 127.0.0.3 is served.
func TestAllowAcceptRealListener(t *testing.T) {
	clk := newClock() // frozen: no refill during the test
	g, _ := newGuard(t, Config{}, clk, nil)
	gate := g.Listener("test")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !gate.AllowAccept(AddrOf(c.RemoteAddr())).Allow {
				c.Close()
				continue
			}
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	dial := func(src string) bool {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial from %s: %v", src, err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b) == "ok"
	}
	served := 0
	for range 150 {
		if dial("127.0.0.2") {
			served++
		}
	}
	if served != 100 {
		t.Errorf("flood: %d of 150 served, want the burst of 100", served)
	}
	for i := range 5 {
		if !dial("127.0.0.3") {
			t.Errorf("127.0.0.3 connection %d not served during the flood", i+1)
		}
	}
	if st := g.Stats(); st.ConnRateRefused != 50 {
		t.Errorf("ConnRateRefused %d, want 50", st.ConnRateRefused)
	}
}
