package cli

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"time"
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

// What a burst leaves behind. Go's collector lets the heap grow to about
// twice what is live before it collects (GOGC=100 once the live heap is
// past gcHeadroom), and the runtime keeps the pages it grew to: its
// scavenger returns memory to the system only beyond 110 % of the next
// collection's goal. A reconnect storm — thousands of mutual-TLS
// handshakes, each leaving tens of KiB of garbage — therefore leaves an
// idle broker holding up to twice the memory its connections need, for
// as long as it stays idle: 19,000 idle mutual-TLS connections measured
// 1.8 times their live heap and stacks in RSS. The trimmer watches for the
// end of such a burst (the heap holds much more than the last collection
// found live, and almost nothing was allocated for two intervals in a
// row), then runs one collection and returns the free pages to the system
// (debug.FreeOSMemory). A busy broker allocates steadily and is never
// trimmed; an idle one is trimmed once per burst, at the cost of one
// collection.
const (
	trimInterval = time.Second
	// trimMinExcess and trimExcessShare: the garbage and free pages a
	// trim must be able to give back, at least this many bytes and this
	// share of the live heap, so that small heaps and the collector's
	// ordinary headroom are left alone.
	trimMinExcess   = 16 << 20
	trimExcessShare = 4 // a quarter of the live heap
	// trimQuietShare: an interval is quiet when it allocated less than
	// this share of the live heap (and less than trimQuietMin).
	trimQuietShare = 64
	trimQuietMin   = 1 << 20
)

// memSample is what the trimmer reads from runtime/metrics.
type memSample struct {
	allocs  uint64 // bytes allocated since the process started
	live    uint64 // heap marked live by the last collection
	objects uint64 // heap occupied by objects, live or not yet found dead
	free    uint64 // free heap pages not yet returned to the system
}

// excess is what a collection and a scavenge would give back: the dead
// objects and the free pages. Fragmentation inside spans is not counted,
// since a collection does not return it.
func (s memSample) excess() uint64 {
	garbage := uint64(0)
	if s.objects > s.live {
		garbage = s.objects - s.live
	}
	return garbage + s.free
}

// quietSince reports whether the interval from prev to s allocated little.
func (s memSample) quietSince(prev memSample) bool {
	return s.allocs-prev.allocs < max(trimQuietMin, s.live/trimQuietShare)
}

// trimDue reports whether a trim is worth its collection: two quiet
// intervals in a row (prev→cur and the one before, quietBefore) and an
// excess of at least trimMinExcess and a quarter of the live heap.
func trimDue(quietBefore bool, prev, cur memSample) bool {
	return quietBefore && cur.quietSince(prev) && cur.excess() >= max(trimMinExcess, cur.live/trimExcessShare)
}

// memTrimmer runs the check every interval until stopped.
type memTrimmer struct {
	every  time.Duration
	sample []metrics.Sample
	trims  atomic.Int64 // trims done (tests)
	stop   chan struct{}
	done   chan struct{}
}

// startTrimmer starts the trimmer's goroutine and returns it; the caller
// must call close. It does nothing (and close returns at once) when GOGC
// or GOMEMLIMIT is set in the environment: the operator's choice wins.
func startTrimmer(every time.Duration) *memTrimmer {
	t := &memTrimmer{every: every, stop: make(chan struct{}), done: make(chan struct{}),
		sample: []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"},
			{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/free:bytes"}}}
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		close(t.done)
		return t
	}
	go t.run()
	return t
}

func (t *memTrimmer) read() memSample {
	metrics.Read(t.sample)
	u := func(i int) uint64 {
		if t.sample[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return t.sample[i].Value.Uint64()
	}
	return memSample{allocs: u(0), live: u(1), objects: u(2), free: u(3)}
}

func (t *memTrimmer) run() {
	defer close(t.done)
	tick := time.NewTicker(t.every)
	defer tick.Stop()
	prev := t.read()
	quiet := false
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		cur := t.read()
		if trimDue(quiet, prev, cur) {
			debug.FreeOSMemory()
			t.trims.Add(1)
			cur = t.read()
		}
		quiet = cur.quietSince(prev)
		prev = cur
	}
}

// close stops the trimmer and waits for its goroutine. It may be called
// more than once.
func (t *memTrimmer) close() {
	select {
	case <-t.stop:
	default:
		close(t.stop)
	}
	<-t.done
}
