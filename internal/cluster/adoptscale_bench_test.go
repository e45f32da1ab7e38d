package cluster

import (
	"context"
	"fmt"
	"os"
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
	count := 1000
	if v := os.Getenv("MOAT_ADOPT_SCALE"); v != "" {
		c, err := strconv.Atoi(v)
		if err != nil || c <= 0 {
			b.Fatalf("MOAT_ADOPT_SCALE=%q: a positive number expected", v)
		}
		count = c
	}
	nodes := startBenchCluster(b)
	n1 := nodes[0].node
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	for _, tn := range nodes {
		if err := tn.node.awaitSessions(ctx); err != nil {
			b.Fatal(err)
		}
	}
	round := 0
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		round++
		for i := range count {
			id := fmt.Sprintf("ab%d-%d", round, i)
			rec := &sessionRecord{Home: fmt.Sprintf("n3/bench%d", round), Node: "n3", Expiry: -1,
				Subs: []subRecord{{Filter: "ab/" + id, QoS: 1}}}
			if _, err := n1.putRecord(ctx, sessSubject(id, "s"), mustRecord(rec), 0); err != nil {
				b.Fatal(err)
			}
		}
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
