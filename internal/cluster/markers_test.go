package cluster

import (
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
	"github.com/nats-io/nats.go"
)

// TestInterestSubscriptionsShareSink: the subscriptions a node makes for
// their interest alone (a filter's markers, the interest version, the
// presence and capability markers) deliver into the node's one sink.
// Each used to be a synchronous subscription with a channel of its own
// of 65,536 entries: about 1 MiB per subscription filter of a node.
func TestInterestSubscriptionsShareSink(t *testing.T) {
	nodes := commonCluster(t)
	n := nodes[0].node
	filter := fmt.Sprintf("sink/%d/#", n.started.UnixNano())
	n.Interest(filter, true)
	defer n.Interest(filter, false)
	n.subMu.Lock()
	defer n.subMu.Unlock()
	subs := append([]*nats.Subscription{n.ic.verSub, n.dur.presence, n.dur.batchMarker, n.dur.directMarker}, n.dur.markers[filter]...)
	if len(n.dur.markers[filter]) != 2 {
		t.Fatalf("%d markers for %s; want 2", len(n.dur.markers[filter]), filter)
	}
	for i, s := range subs {
		if s == nil {
			t.Fatalf("subscription %d missing", i)
		}
		if s.Type() != nats.ChanSubscription {
			t.Fatalf("subscription %d (%s) is of type %v, not on the shared sink", i, s.Subject, s.Type())
		}
	}
}

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

// TestClientErrorsLogged: the NATS client's asynchronous errors go to the
// node's log, not to standard error. Here messages published on the
// node's presence marker (on which nothing is ever published) fill the
// shared sink, and the client reports the next as a slow consumer.
func TestClientErrorsLogged(t *testing.T) {
	t.Parallel()
	rec := &logRecorder{}
	nodes := startFresh(t, 3, nil, rec)
	n := nodes[0].node
	testutil.WaitFor(t, "the presence marker", 30*time.Second, func() bool {
		n.subMu.Lock()
		defer n.subMu.Unlock()
		return n.dur.presence != nil
	})
	// The marker's SUBSCRIBE is on the server before the messages: set
	// in the node as soon as it is sent, it could otherwise come after
	// them, and nothing would be delivered.
	if err := n.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	subj := markerPrefix + keyOf(n.cfg.Node) + "." + presenceToken
	for range 3 {
		if err := n.gc.Publish(subj, []byte("stray")); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.gc.Flush(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the slow consumer in the node's log", 10*time.Second, func() bool {
		for _, r := range rec.find(slog.LevelWarn, "cluster: NATS client error") {
			found := false
			r.Attrs(func(a slog.Attr) bool {
				found = found || a.Key == "subject" && a.Value.String() == subj
				return true
			})
			if found {
				return true
			}
		}
		return false
	})
}
