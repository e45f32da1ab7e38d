//go:build linux

package bench

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFloodOffersItsRate: 1,000 attempts at 2,000 per second from two
// source addresses all reach a listener that accepts and closes them, and
// the listener sees each source in turn.
func TestFloodOffersItsRate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	var mu sync.Mutex
	from := map[string]int{}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			mu.Lock()
			from[host]++
			mu.Unlock()
			c.Close()
		}
	})
	defer func() {
		ln.Close()
		wg.Wait()
	}()
	res, err := Flood(context.Background(), FloodConfig{
		Addr:     ln.Addr().String(),
		Sources:  []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")},
		Rate:     2000,
		Duration: 500 * time.Millisecond,
		// The test's own process: its CPU is read like a broker's.
		BrokerPID: os.Getpid(),
		Settle:    10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Offered != 1000 {
		t.Errorf("offered %d attempts, want 1000", res.Offered)
	}
	if n := res.Established + res.Reset; n+res.TimedOut != 1000 || res.Errors != 0 || res.Refused != 0 {
		t.Errorf("result %+v: want every attempt to reach the listener", res)
	}
	// Open loop on the wall clock: the attempts span the duration (a
	// loaded machine may stretch it, never shorten it).
	if res.OfferSeconds < 0.45 {
		t.Errorf("1,000 attempts at 2,000/s offered in %.3f s", res.OfferSeconds)
	}
	if res.BrokerSeconds <= 0 {
		t.Errorf("no CPU reading: %+v", res)
	}
	deadline := time.Now().Add(5 * time.Second)
	for accepted.Load() < res.Established+res.Reset && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if from["127.0.0.2"] == 0 || from["127.0.0.3"] == 0 || len(from) != 2 {
		t.Errorf("sources seen by the listener: %v", from)
	}
	var b strings.Builder
	res.WriteTable(&b)
	if !strings.Contains(b.String(), "offered       1000 attempts") {
		t.Errorf("table:\n%s", b.String())
	}
}

// TestFloodRefused: attempts at a port nothing listens on are
// refused.
func TestFloodRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res, err := Flood(context.Background(), FloodConfig{Addr: addr, Rate: 1000, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Offered != 100 || res.Refused != 100 {
		t.Errorf("result %+v: want 100 refused", res)
	}
}

// TestFloodLoopbackOnly: the flood refuses to reach other hosts, and a
// configuration's every problem is reported at once.
func TestFloodLoopbackOnly(t *testing.T) {
	_, err := Flood(context.Background(), FloodConfig{
		Addr:    "192.0.2.1:1883",
		Sources: []netip.Addr{netip.MustParseAddr("10.0.0.1")},
	})
	if err == nil {
		t.Fatal("flood of a non-loopback address accepted")
	}
	for _, want := range []string{"not a loopback address", "source 10.0.0.1", "rate must be"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}
