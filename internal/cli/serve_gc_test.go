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

func TestTrimDue(t *testing.T) {
	const mib = 1 << 20
	idle := memSample{allocs: 1000 * mib, live: 100 * mib, objects: 110 * mib, free: 60 * mib}
	for _, tc := range []struct {
		name        string
		quietBefore bool
		prev, cur   memSample
		want        bool
	}{
		{"after a burst, quiet twice", true, idle, idle, true},
		{"quiet once only", false, idle, idle, false},
		{"still allocating", true, idle, memSample{allocs: idle.allocs + 10*mib, live: 100 * mib, objects: 110 * mib, free: 60 * mib}, false},
		{"a little allocation is quiet", true, idle, memSample{allocs: idle.allocs + mib/2, live: 100 * mib, objects: 110 * mib, free: 60 * mib}, true},
		{"excess below a quarter of the live heap", true, idle, memSample{allocs: idle.allocs, live: 100 * mib, objects: 105 * mib, free: 15 * mib}, false},
		{"excess below the minimum", true, idle, memSample{allocs: idle.allocs, live: 8 * mib, objects: 10 * mib, free: 10 * mib}, false},
		{"small heap, large excess", true, idle, memSample{allocs: idle.allocs, live: 8 * mib, objects: 20 * mib, free: 10 * mib}, true},
	} {
		if got := trimDue(tc.quietBefore, tc.prev, tc.cur); got != tc.want {
			t.Errorf("%s: trimDue = %v, want %v (excess %d MiB)", tc.name, got, tc.want, tc.cur.excess()/mib)
		}
	}
}

// kept and sink keep the test's allocations from being optimised away.
var kept, sink [][]byte

func TestTrimmerReturnsBurstMemory(t *testing.T) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		t.Skip("GOGC or GOMEMLIMIT set: the trimmer stays off by design")
	}
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	// A broker's state (64 MiB that stays live, so that Go's collector
	// lets the heap grow to twice that), then a burst: 64 MiB allocated
	// and dropped as it goes, like a storm of handshakes.
	for range 1024 {
		kept = append(kept, make([]byte, 64<<10))
	}
	defer func() { kept = nil }()
	runtime.GC()
	tr := startTrimmer(20 * time.Millisecond)
	defer tr.close()
	for range 2048 {
		sink = [][]byte{make([]byte, 32<<10)}
	}
	sink = nil
	deadline := time.Now().Add(10 * time.Second)
	for tr.trims.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no trim within 10 s of the burst")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if free := ms.HeapIdle - ms.HeapReleased; free > trimMinExcess {
		t.Errorf("after the trim %d MiB of free heap is still kept from the system", free>>20)
	}
	tr.close()
	tr.close() // idempotent
}
