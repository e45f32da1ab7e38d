package topic

import (
	"fmt"
	"runtime"
	"testing"
)

func TestMemoryFootprint(t *testing.T) {
	if testing.Short() {
		t.Skip("memory report only")
	}
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
	t.Logf("index: %d subscriptions, %d nodes, %d bytes/subscription", x.Count(), x.nodes, (after-before)/n)
	before = heap()
	r := NewRetained[int]()
	for i := range n {
		r.Set(filters[i], i) // filters used as topic strings: same shape
	}
	after = heap()
	t.Logf("retained: %d messages, %d nodes, %d bytes/message", r.Len(), r.nodes, (after-before)/n)
	runtime.KeepAlive(x)
	runtime.KeepAlive(r)
}
