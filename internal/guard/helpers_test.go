package guard

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// newGuard starts a Guard on clk with a manual ticker (nil: never ticks);
// its log goes to the returned buffer.
func newGuard(t testing.TB, cfg Config, clk *testutil.Clock, tick chan time.Time) (*Guard, *testutil.Buffer) {
	t.Helper()
	logs := &testutil.Buffer{}
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

// newClock returns a manual clock at the tests' epoch.
func newClock() *testutil.Clock {
	return testutil.NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}
