package cluster

import (
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// TestHomeImportRetried: a node back from a crash whose import of one of
// its previous run's sessions fails (as when a stream has no leader yet)
// tries it again: the session is its own again and the will its
// connection left is published, once, without its client coming back.
func TestHomeImportRetried(t *testing.T) {
	t.Parallel()
	clk := newTestClock()
	nodes, dir, routes := startOwn(t, 3, clk.hook(), adoptAfter(time.Minute))
	watch := dial(t, nodes[0].addr, "hiwatch", client.V5)
	subscribe(t, watch, 1, "hi/#")
	probe := dial(t, nodes[2].addr, "hiprobe", client.V5)
	awaitRoute(t, probe, watch, "hi/probe")
	probe.Close()
	dialLiveWill(t, nodes[2].addr, "hinow", "hi/now", 0, 600)
	n1 := nodes[0].node
	testutil.WaitFor(t, "the live will in the cluster", 30*time.Second, func() bool {
		return len(recordData(t, n1, sessSubject("hinow", "w"))) > 0
	})
	crashNode(t, nodes[2])

	var failures atomic.Int32
	fail := func(id string) error {
		if id == "hinow" && failures.Add(1) <= 2 {
			return errors.New("no leader yet")
		}
		return nil
	}
	again := restartWithListener(t, dir, routes, 2, func(nd *Node) {
		clk.set(nd)
		nd.sess.homeImportErr.Store(&fail)
	})
	if got := receiveWills(t, watch, 1, 60*time.Second); !slices.Equal(got, []string{"hi/now"}) {
		t.Fatalf("wills %v; want hi/now", got)
	}
	if f := failures.Load(); f < 3 {
		t.Fatalf("the import was tried %d times; want 3 (two failures, then the import)", f)
	}
	if node := sessionNode(t, n1, "hinow"); node != again.node.cfg.Node {
		t.Fatalf("the session's record names %q; want the restarted node", node)
	}
	expectNone(t, watch, time.Second)
}
