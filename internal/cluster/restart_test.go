package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// streamLastSeq returns the last sequence of the durable stream as tn
// sees it.
func streamLastSeq(t *testing.T, tn *testNode) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	si, err := tn.node.msgStream().Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return si.State.LastSeq
}

// ackFloor returns the acknowledgement floor of tn's durable consumer.
func ackFloor(t *testing.T, tn *testNode) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tn.node.msgStream().Consumer(ctx, tn.node.consumerName())
	if err != nil {
		t.Fatal(err)
	}
	return ackInfo(t, c).AckFloor.Stream
}

// TestRestartClaimBeforeOldHomeRoutes: the whole cluster stops while
// the home of an offline session (n1) has not yet routed the record of
// the last acknowledged message for it, which every other node had
// routed and acknowledged. After the restart the client resumes on n2
// before n1 routes that record (n1 loses it on its way, where under
// load it merely comes late). n1 gives the session up at the position
// it routed to, its consumer's floor, and n2 replays what follows up to
// its own position, the floor of its consumer: no routing of this run
// brings the message to the session, only the replay does.
//
// While a node's routing position started at 0 in each run, n1 answered
// 0, n2 replayed nothing past its position 0 and left the record to a
// routing that had passed it in the run before, and the message was
// lost (TestFullClusterRestart's "received 9 of 0..10" under load).
func TestRestartClaimBeforeOldHomeRoutes(t *testing.T) {
	t.Parallel()
	nodes, dir, routes := startOwn(t, 3)
	sub, _ := dialSession(t, nodes[0].addr, "late", client.V5)
	subscribe(t, sub, 1, "lt/#")
	pub := dial(t, nodes[2].addr, "ltpub", client.V5)
	awaitRoute(t, pub, sub, "lt/probe")
	disconnect(t, sub)
	publishQoS1(t, pub, "lt/x", 0, 9)
	kept := streamLastSeq(t, nodes[0])
	lose := func(seq uint64) bool { return seq > kept }
	nodes[0].node.dur.lose.Store(&lose)
	publishQoS1(t, pub, "lt/x", 9, 10)
	last := streamLastSeq(t, nodes[0])
	if last <= kept {
		t.Fatalf("message 9 not in the stream: last %d, before it %d", last, kept)
	}
	// n1 acknowledged all but the lost record, n2 everything: n2's
	// consumer does not deliver the last record again after the restart.
	testutil.WaitFor(t, "n1's floor before the lost record", 30*time.Second, func() bool {
		return ackFloor(t, nodes[0]) == kept
	})
	testutil.WaitFor(t, "n2's floor past the last record", 30*time.Second, func() bool {
		return ackFloor(t, nodes[1]) >= last
	})
	pub.Close()
	for _, tn := range nodes {
		stopNode(t, tn)
	}

	// n1 loses the record again until the client is back.
	nodes = restartNodes(t, dir, routes, func(i int, nd *Node) {
		if i == 0 {
			nd.dur.lose.Store(&lose)
		}
	})
	sub2, present := dialSession(t, nodes[1].addr, "late", client.V5)
	if !present {
		t.Fatal("Session Present 0 after the restart")
	}
	receiveInOrder(t, sub2, 0, 10)
	expectNone(t, sub2, 500*time.Millisecond)
}

// TestRestartClaimReplaysFromOldHomesFloor: after a restart, the old
// home of a session answers a claim with the position its consumer
// reached, not 0: the messages the client received and acknowledged in
// the run before are not read from the stream and replayed again.
func TestRestartClaimReplaysFromOldHomesFloor(t *testing.T) {
	t.Parallel()
	nodes, dir, routes := startOwn(t, 3)
	sub, _ := dialSession(t, nodes[0].addr, "awake", client.V5)
	subscribe(t, sub, 1, "aw/#")
	pub := dial(t, nodes[2].addr, "awpub", client.V5)
	awaitRoute(t, pub, sub, "aw/probe")
	publishQoS1(t, pub, "aw/x", 0, 5)
	receiveInOrder(t, sub, 0, 5)
	disconnect(t, sub)
	publishQoS1(t, pub, "aw/x", 5, 10)
	last := streamLastSeq(t, nodes[0])
	testutil.WaitFor(t, "every node's floor at the last record", 30*time.Second, func() bool {
		return ackFloor(t, nodes[0]) >= last && ackFloor(t, nodes[1]) >= last
	})
	// The session holds 5..9 only: 0..4 were acknowledged.
	testutil.WaitFor(t, "the session's records", 30*time.Second, func() bool {
		return len(deliveryRecords(t, nodes[0], "awake")) == 5
	})
	pub.Close()
	for _, tn := range nodes {
		stopNode(t, tn)
	}

	nodes = restartNodes(t, dir, routes)
	sub2, present := dialSession(t, nodes[1].addr, "awake", client.V5)
	if !present {
		t.Fatal("Session Present 0 after the restart")
	}
	receiveInOrder(t, sub2, 5, 10)
	expectNone(t, sub2, 500*time.Millisecond)
}

// deliveryRecords returns the delivery records (not removed) of the
// session of id.
func deliveryRecords(t *testing.T, tn *testNode, id string) []storedRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	records, err := tn.node.listRecords(ctx, sessSubject(id, "d.*"))
	if err != nil {
		t.Fatal(err)
	}
	var out []storedRecord
	for _, r := range records {
		if len(r.data) > 0 {
			out = append(out, r)
		}
	}
	return out
}
