package cli

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	for _, tc := range []struct {
		live, headroom uint64
		want           int
	}{
		{live: 4 << 20, headroom: 32 << 20, want: 800},
		{live: 32 << 20, headroom: 32 << 20, want: 100},
		{live: 500 << 20, headroom: 32 << 20, want: 100}, // large heaps keep Go's default
		{live: 0, headroom: 32 << 20, want: 100_000},     // capped
		{live: 1 << 10, headroom: 32 << 20, want: 100_000},
	} {
		if got := gcPercentFor(tc.live, tc.headroom); got != tc.want {
			t.Errorf("gcPercentFor(%d, %d) = %d, want %d", tc.live, tc.headroom, got, tc.want)
		}
	}
}

// gcPercent reads the current GC percentage.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

func TestTuneGCRaisesPercentAfterCollection(t *testing.T) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		t.Skip("GOGC or GOMEMLIMIT set: the tuner stays off by design")
	}
	defer debug.SetGCPercent(100)
	ctx, cancel := context.WithCancel(context.Background())
	tuneGC(ctx, 1<<40) // far more headroom than any live heap: the cap
	deadline := time.Now().Add(10 * time.Second)
	for gcPercent() != 100_000 {
		if time.Now().After(deadline) {
			t.Fatalf("GC percent still %d after collections", gcPercent())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	// Once ctx ends, the next collection restores Go's default.
	cancel()
	deadline = time.Now().Add(10 * time.Second)
	for gcPercent() != 100 {
		if time.Now().After(deadline) {
			t.Fatalf("GC percent still %d after the tuner stopped", gcPercent())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}
