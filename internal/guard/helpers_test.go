package guard

import (
	"bytes"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// clock is an injected clock that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newGuard starts a Guard on clk with a manual ticker (nil: never ticks);
// its log goes to the returned buffer.
func newGuard(t testing.TB, cfg Config, clk *clock, tick chan time.Time) (*Guard, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	if clk != nil {
		cfg.Now = clk.Now
	}
	if tick == nil {
		tick = make(chan time.Time)
	}
	cfg.Tick = tick
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g, logs
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
