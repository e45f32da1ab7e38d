package cli

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// gcHeadroom is the least heap growth the garbage collector allows
// between cycles. Go's default (GOGC=100) lets the heap grow by the live
// heap's own size, so a broker whose live heap is a few MiB (routing
// tables, sessions, a few thousand connections) collects every few tens
// of milliseconds under load, and each cycle scans every connection
// goroutine's stack: at 40,000 msgs/s that was a third of the time with
// one of two cores given to marking. With a floor of headroom the cycles
// become a few hundred times rarer at a cost of at most this much memory,
// and large heaps (tens of thousands of connections) keep GOGC=100.
const gcHeadroom = 32 << 20

// tuneGC keeps at least headroom bytes between the live heap and the next
// collection's goal by raising the GC percentage while the live heap is
// small, re-evaluated after every collection. It does nothing when GOGC
// or GOMEMLIMIT is set in the environment: the operator's choice wins.
// It stops when ctx ends.
func tuneGC(ctx context.Context, headroom uint64) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" || headroom == 0 {
		return
	}
	t := &gcTuner{ctx: ctx, headroom: headroom, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}, last: 100}
	t.arm()
}

type gcTuner struct {
	ctx      context.Context
	headroom uint64
	sample   []metrics.Sample
	last     int
}

// arm schedules adjust to run after the next collection: the cleanup of
// an object that nothing references runs once a cycle has found it
// unreachable.
func (t *gcTuner) arm() {
	sentinel := new([16]byte)
	runtime.AddCleanup(sentinel, func(t *gcTuner) { t.adjust() }, t)
}

func (t *gcTuner) adjust() {
	if t.ctx.Err() != nil {
		debug.SetGCPercent(100)
		return
	}
	metrics.Read(t.sample)
	pct := gcPercentFor(t.sample[0].Value.Uint64(), t.headroom)
	if pct != t.last {
		debug.SetGCPercent(pct)
		t.last = pct
	}
	t.arm()
}

// gcPercentFor returns the GC percentage that lets a heap of live bytes
// grow by at least headroom bytes, and never less than Go's default 100.
func gcPercentFor(live, headroom uint64) int {
	if live == 0 {
		live = 1
	}
	pct := headroom * 100 / live
	switch {
	case pct < 100:
		return 100
	case pct > 100_000:
		return 100_000
	}
	return int(pct)
}
