package cluster

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// BenchmarkOwnScan reads, in batches, as many records as a claim reads
// at most past its node's routing position for the node's own messages
// (maxOwnScan), and a quarter of that: what the bound costs a claim's
// client, which waits for the reading before its CONNACK.
func BenchmarkOwnScan(b *testing.B) {
	nodes := startBenchCluster(b)
	first, last, _ := writeReplayRecords(b, nodes[1], maxOwnScan)
	nodes[1].node.allowDirect()
	testutil.WaitFor(b, "direct gets to be answered", 30*time.Second, func() bool {
		_, err := nodes[1].node.nc.Request("$JS.API.DIRECT.GET."+streamMsgs, nil, time.Second)
		return err == nil
	})
	for _, count := range []uint64{maxOwnScan / 4, maxOwnScan} {
		b.Run(strconv.FormatUint(count, 10), func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				rs := newTestReplay(nodes[1], first)
				if err := rs.read(ctx, nodes[1].node, min(last, first+count-1), 0); err != nil {
					b.Fatal(err)
				}
				if rs.to != first+count-1 {
					b.Fatalf("read to %d, want %d", rs.to, first+count-1)
				}
			}
		})
	}
}
