package broker

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
)

// TestRouteWatch: a wait covers the publications whose routing began
// before it, on any shard, also after an earlier wait gave up, and not
// those that began after it.
func TestRouteWatch(t *testing.T) {
	var w routeWatch
	ctx := context.Background()
	if err := w.wait(ctx); err != nil {
		t.Fatalf("nothing in flight: %v", err)
	}
	gaveUp, cancel := context.WithCancel(ctx)
	cancel()

	a := w.begin(3)
	b := w.begin(7)
	if err := w.wait(gaveUp); !errors.Is(err, context.Canceled) {
		t.Fatalf("two in flight: %v", err)
	}
	w.end(3, a)
	// The wait that gave up left b's parity undrained.
	if err := w.wait(gaveUp); !errors.Is(err, context.Canceled) {
		t.Fatalf("one in flight: %v", err)
	}
	w.end(7, b)
	if err := w.wait(ctx); err != nil {
		t.Fatalf("all ended: %v", err)
	}

	// Begun while a waiter waits for d: not waited for.
	d := w.begin(5)
	e := w.epoch.Load()
	waited := make(chan error, 1)
	go func() { waited <- w.wait(ctx) }()
	for w.epoch.Load() == e {
		runtime.Gosched()
	}
	c := w.begin(5)
	w.end(5, d)
	if err := <-waited; err != nil {
		t.Fatalf("after the last one ended: %v", err)
	}
	if err := w.wait(gaveUp); !errors.Is(err, context.Canceled) {
		t.Fatalf("the later one in flight: %v", err)
	}
	w.end(5, c)
	if err := w.wait(ctx); err != nil {
		t.Fatalf("all ended: %v", err)
	}
}

// BenchmarkRouteWatch: what counting a publication costs a reader (begin
// and end), with readers on all shards at once.
func BenchmarkRouteWatch(b *testing.B) {
	var w routeWatch
	var next atomic.Uint32
	b.RunParallel(func(pb *testing.PB) {
		shard := uint8(next.Add(1))
		for pb.Next() {
			w.end(shard, w.begin(shard))
		}
	})
}

// TestRouteWatchWaitersShareRounds: waiters that come while a round
// drains are served together by the next, and each returns once what
// began before it ended.
func TestRouteWatchWaitersShareRounds(t *testing.T) {
	var w routeWatch
	ctx := context.Background()
	a := w.begin(1)
	first := make(chan error, 1)
	e := w.epoch.Load()
	go func() { first <- w.wait(ctx) }()
	for w.epoch.Load() == e {
		runtime.Gosched()
	}
	// The first waiter's round drains a's parity; these come meanwhile.
	b := w.begin(2)
	const n = 8
	rest := make(chan error, n)
	for range n {
		go func() { rest <- w.wait(ctx) }()
	}
	for w.waiters.Load() < n+1 {
		runtime.Gosched()
	}
	w.end(1, a)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	gaveUp, cancel := context.WithCancel(ctx)
	cancel()
	select {
	case err := <-rest:
		t.Fatalf("a later waiter returned (%v) before b ended", err)
	default:
	}
	w.end(2, b)
	for range n {
		if err := <-rest; err != nil {
			t.Fatal(err)
		}
	}
	if err := w.wait(gaveUp); err != nil {
		t.Fatalf("nothing in flight: %v", err)
	}
	// Shared, the first waiter's round, the next one for the 8 and
	// the last check's make 3; a waiter counted in waiters but not yet
	// past its reading of the epoch when the second round began (the
	// race detector on a loaded machine) needs one more, and one more
	// for a second such straggler. One round per waiter would make 10.
	if got := w.epoch.Load(); got > e+5 {
		t.Fatalf("%d rounds for %d waiters; want them shared", got-e, n+1)
	}
}
