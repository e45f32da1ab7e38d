package cluster

import (
	"fmt"
	"runtime"
	"testing"
)

// BenchmarkInterestFilters: a node of three told of new subscription
// filters (Interest), each a filter of its own ("bf/<n>/#": two subjects,
// so two subscriptions for the other nodes' QoS 0 messages and two
// interest markers) as a fleet of devices subscribing to their own
// topics makes. ns/op is one filter added; heap-B/filter is the Go heap
// the node holds per filter after a collection, over all the filters
// the run added.
func BenchmarkInterestFilters(b *testing.B) {
	nodes := startBenchCluster(b)
	n := nodes[0].node
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	i := 0
	for b.Loop() {
		n.Interest(fmt.Sprintf("bf/%d/#", i), true)
		i++
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(i), "heap-B/filter")
}
