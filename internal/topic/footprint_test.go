package topic

import (
	"fmt"
	"runtime"
	"testing"
)

// BenchmarkFootprint reports the heap retained per subscription and per
// retained message for 100k entries of the benchmark workload (run it with
// -benchtime=1x; the figures are not per iteration).
func BenchmarkFootprint(b *testing.B) {
	for b.Loop() {
		footprint(b)
	}
}

func footprint(b *testing.B) {
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	const n = 100_000
	filters := make([]string, n)
	ids := make([]string, n)
	for i := range n {
		filters[i] = benchFilter(i)
		ids[i] = fmt.Sprint("dev", i)
	}
	before := heap()
	x := benchIndex(0)
	for i := range n {
		x.Subscribe(Subscription{ClientID: ids[i], Filter: filters[i]})
	}
	after := heap()
	b.ReportMetric(float64(after-before)/n, "B/subscription")
	before = heap()
	r := NewRetained[int]()
	for i := range n {
		r.Set(filters[i], i) // filters used as topic strings: same shape
	}
	after = heap()
	b.ReportMetric(float64(after-before)/n, "B/retained")
	runtime.KeepAlive(x)
	runtime.KeepAlive(r)
}
