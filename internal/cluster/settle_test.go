package cluster

import (
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// TestRestartedNodeForwardsWhileClaimImports: a persistent session's home
// n1 crashes; its client claims the session on n2, which takes n1 for
// dead and takes the session record, and stops there (before the
// import, which brings the session's markers) while n1 starts again. n1
// imports nothing (the record names n2) and a publisher on n1 sends five
// QoS 1 messages for the session: no node shows interest in them yet.
// A node that ran before puts its clients' messages into the stream
// until it settled (settleStart), so the claim, let go, delivers all
// five, in order. Before, they reached no session and were not in the
// stream (an outside series that killed all three nodes under load lost
// 100 acknowledged messages so).
func TestRestartedNodeForwardsWhileClaimImports(t *testing.T) {
	t.Parallel()
	taken, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hold := func(id string) {
		if id != "rsub" {
			return
		}
		once.Do(func() { close(taken) })
		select {
		case <-release:
		case <-time.After(90 * time.Second):
		}
	}
	nodes, dir, routes := startOwn(t, 3, func(i int, nd *Node) {
		if i == 1 {
			nd.sess.afterTake.Store(&hold)
		}
	})
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	sub, _ := dialSession(t, nodes[0].addr, "rsub", client.V5)
	subscribe(t, sub, 1, "rs/#")
	probe := dial(t, nodes[2].addr, "rsprobe", client.V5)
	awaitRoute(t, probe, sub, "rs/probe")
	disconnect(t, sub)
	crashNode(t, nodes[0])

	got := dialAsync(nodes[1].addr, "rsub", 120*time.Second)
	select {
	case <-taken:
	case r := <-got:
		t.Fatalf("the claim on n2 ended before it took the session: %v", r.err)
	case <-time.After(90 * time.Second):
		t.Fatal("the claim on n2 did not take the session")
	}

	again := restartWithListener(t, dir, routes, 0, nil)
	testutil.WaitFor(t, "n1 to import its sessions", 60*time.Second, func() bool {
		select {
		case <-again.node.sess.ready:
			return true
		default:
			return false
		}
	})
	if again.node.dur.settled.Load() {
		t.Fatal("n1 settled at once after a restart")
	}
	pub := dial(t, again.addr, "rspub", client.V5)
	publishQoS1(t, pub, "rs/x", 0, 5)

	close(release)
	released = true
	r := <-got
	if r.err != nil {
		t.Fatalf("the claim on n2: %v", r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	if !r.c.ConnectInfo().SessionPresent {
		t.Fatal("Session Present 0")
	}
	receiveInOrder(t, r.c, 0, 5)
}
