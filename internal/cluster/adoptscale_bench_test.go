package cluster

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// BenchmarkAdoptNode: the adoption of the persistent sessions of a node
// gone (adoptNode), each with one subscription and nothing queued, by
// a survivor of three nodes. The records are written by hand for a run
// of n3 that never existed (n3 itself stays up and holds none of them),
// so each iteration adopts fresh ones. MOAT_ADOPT_SCALE sets how many
// sessions (1,000 by default). ns/op is one whole adoption; the
// per-session figure is reported as ns/session.
func BenchmarkAdoptNode(b *testing.B) {
	count, n1, ctx := scaleCluster(b)
	round := 0
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		round++
		writeSessions(b, ctx, n1, fmt.Sprintf("ab%d-", round), "n3", count)
		b.StartTimer()
		start := time.Now()
		adopted, _, err := n1.adoptNode(ctx, "n3")
		total += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if adopted != count {
			b.Fatalf("%d sessions adopted; want %d", adopted, count)
		}
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(round*count), "ns/session")
}

// BenchmarkImportHome: a node's import of the persistent sessions its
// previous run held (importHomeOnce, as at start), each with one
// subscription and nothing queued. The records are written by hand for
// a previous run of n1 that never existed, so each iteration imports
// fresh ones. MOAT_ADOPT_SCALE sets how many sessions (1,000 by
// default). ns/op is one whole import; the per-session figures are
// reported as ns/session and heap-B/session (the Go heap the import
// added, after a collection: the broker's session, the node's state
// for it and the three embedded servers' share of its subscription).
func BenchmarkImportHome(b *testing.B) {
	count, n1, ctx := scaleCluster(b)
	round := 0
	var total time.Duration
	var before, after runtime.MemStats
	var grown int64 // the heap's growth over the imports
	for b.Loop() {
		b.StopTimer()
		round++
		writeSessions(b, ctx, n1, fmt.Sprintf("ih%d-", round), "n1", count)
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		start := time.Now()
		failed, ok := n1.importHomeOnce(ctx, nil)
		total += time.Since(start)
		if !ok || len(failed) != 0 {
			b.Fatalf("the import failed: %v, %d sessions", ok, len(failed))
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		grown += int64(after.HeapAlloc) - int64(before.HeapAlloc)
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(round*count), "ns/session")
	b.ReportMetric(float64(grown)/float64(round*count), "heap-B/session")
}

// scaleCluster starts the three nodes of a scale benchmark and waits
// until each has its sessions stream. It returns how many sessions to
// use (adoptScale), node 1 and a context that ends with the benchmark.
func scaleCluster(b *testing.B) (int, *Node, context.Context) {
	count := adoptScale(b)
	nodes := startBenchCluster(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	b.Cleanup(cancel)
	for _, tn := range nodes {
		if err := tn.node.awaitSessions(ctx); err != nil {
			b.Fatal(err)
		}
	}
	return count, nodes[0].node, ctx
}

// adoptScale is MOAT_ADOPT_SCALE, 1,000 when unset.
func adoptScale(b *testing.B) int {
	v := os.Getenv("MOAT_ADOPT_SCALE")
	if v == "" {
		return 1000
	}
	c, err := strconv.Atoi(v)
	if err != nil || c <= 0 {
		b.Fatalf("MOAT_ADOPT_SCALE=%q: a positive number expected", v)
	}
	return c
}

// writeSessions writes, through n, the records of count persistent
// sessions homed on a run of the node named node that never existed
// (its name and the prefix), with client IDs prefix0, prefix1, ..., each
// subscribed at QoS 1 to a topic named after it.
func writeSessions(b *testing.B, ctx context.Context, n *Node, prefix, node string, count int) {
	b.Helper()
	for i := range count {
		id := prefix + strconv.Itoa(i)
		rec := &sessionRecord{Home: node + "/" + prefix, Node: node, Expiry: -1,
			Subs: []subRecord{{Filter: "bench/" + id, QoS: 1}}}
		if _, err := n.putRecord(ctx, sessSubject(id, "s"), mustRecord(rec), 0); err != nil {
			b.Fatal(err)
		}
	}
}
