package cluster

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// streamState returns the durable stream's state as n sees it.
func streamState(t *testing.T, n *Node) jetstream.StreamState {
	t.Helper()
	return streamInfo(t, n, streamMsgs).State
}

// streamInfo returns the information on stream as n's request reads it
// (its leader answers).
func streamInfo(t *testing.T, n *Node, stream string) *jetstream.StreamInfo {
	t.Helper()
	js, err := jetstream.New(n.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// consumerInfo returns the durable consumer of node.
func consumerInfo(t *testing.T, via, node *Node) *jetstream.ConsumerInfo {
	t.Helper()
	js, err := jetstream.New(via.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, streamMsgs, node.consumerName())
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// stopNode shuts one node's broker down and closes its cluster node, as
// a node that leaves the cluster.
func stopNode(t *testing.T, tn *testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = tn.srv.Shutdown(ctx)
	tn.node.Close()
}

func publishQoS1(t *testing.T, c *client.Client, topic string, from, to int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := from; i < to; i++ {
		if err := c.Publish(ctx, &client.Message{Topic: topic, QoS: 1, Payload: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
}

// receiveInOrder reads the messages from..to-1 of topic from c in order,
// skipping probes.
func receiveInOrder(t *testing.T, c *client.Client, from, to int) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for i := from; i < to; {
		select {
		case m := <-c.Messages():
			if isProbe(m) {
				continue
			}
			if string(m.Payload) != strconv.Itoa(i) {
				t.Fatalf("message %d: got %q", i, m.Payload)
			}
			i++
		case <-deadline:
			t.Fatalf("received %d of %d..%d", i-from, from, to)
		}
	}
}

// TestDurableForwarding checks the durable stream of QoS 1/2 messages:
// a cross-node QoS 1 message is in the replicated stream once its
// publisher has the PUBACK, the receiving node's consumer acknowledges
// it once delivered, a message without interest on another node stays
// off the stream, a filter's marker outlives its last subscription for a
// while, and while a node is missing every QoS 1 message goes into it.
func TestDurableForwarding(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	sub := dial(t, nodes[1].addr, "dsub", client.V5)
	subscribe(t, sub, 1, "d/#")
	pub := dial(t, nodes[0].addr, "dpub", client.V5)
	awaitRoute(t, pub, sub, "d/probe")

	before := streamState(t, nodes[0].node)
	const n = 100
	publishQoS1(t, pub, "d/x", 0, n)
	// Every acknowledged message is in the stream already: published one
	// after the other's PUBACK, each went alone into a record.
	after := streamState(t, nodes[0].node)
	if after.LastSeq-before.LastSeq < n {
		t.Fatalf("stream grew by %d records after %d acknowledged messages", after.LastSeq-before.LastSeq, n)
	}
	receiveInOrder(t, sub, 0, n)
	testutil.WaitFor(t, "the receiving node's acknowledgements", 30*time.Second, func() bool {
		ci := consumerInfo(t, nodes[0].node, nodes[1].node)
		return ci.NumAckPending == 0 && ci.AckFloor.Stream >= after.LastSeq
	})

	// Interest on the publishing node only: no stream publication.
	local := dial(t, nodes[0].addr, "dlocal", client.V5)
	subscribe(t, local, 1, "only-here/+")
	out := nodes[0].node.Status().StreamOut
	publishQoS1(t, pub, "only-here/x", 0, 10)
	receiveInOrder(t, local, 0, 10)
	if got := nodes[0].node.Status().StreamOut - out; got != 0 {
		t.Fatalf("%d messages without remote interest went into the stream", got)
	}

	// Every node is present: its presence marker is seen.
	acc := nodes[0].node.srv.GlobalAccount()
	for _, nd := range nodes[1:] {
		if acc.Interest(markerPrefix+keyOf(nd.node.cfg.Node)+"."+presenceToken) == 0 {
			t.Fatalf("no presence marker of %s", nd.node.cfg.Node)
		}
	}

	// The last subscription of a filter leaves: once the other nodes
	// no longer route the filter's messages there, its marker still
	// sends them into the stream for a while (a session moving to
	// another node misses none).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := sub.Unsubscribe(ctx, "d/#"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "n1 to see n2's subscription gone", 30*time.Second, func() bool {
		return acc.Interest(topicSubject("d/x")) == 0
	})
	out = nodes[0].node.Status().StreamOut
	publishQoS1(t, pub, "d/x", 0, 1)
	if got := nodes[0].node.Status().StreamOut - out; got != 1 {
		t.Fatalf("%d messages went into the stream right after the filter's last subscription left, want 1", got)
	}

	// A node is missing: every QoS 1 message goes into the stream, for
	// the persistent sessions that node may hold.
	stopNode(t, nodes[2])
	testutil.WaitFor(t, "n1 to see n3 gone", 30*time.Second, func() bool { return nodes[0].node.srv.NumRemotes() == 1 })
	st := nodes[0].node.Status()
	publishQoS1(t, pub, "only-here/x", 10, 20)
	receiveInOrder(t, local, 10, 20)
	if got := nodes[0].node.Status(); got.StreamOut-st.StreamOut != 10 || got.StreamDegraded == st.StreamDegraded {
		t.Fatalf("with a node missing: %d published to the stream (want 10), degraded %d→%d", got.StreamOut-st.StreamOut,
			st.StreamDegraded, got.StreamDegraded)
	}
}

// TestSessionMoveReplayKeepsOrder: a session moving to n2 gets replayed
// from the stream the messages n2 routed before it arrived (published
// on n3 after the old home gave it up), while n2's routing delivers the
// later ones to it: the replayed ones come first, in publication order
// [MQTT-4.6.0-6].
func TestSessionMoveReplayKeepsOrder(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, slowClaims)
	sub, _ := dialSession(t, nodes[0].addr, "ordmover", client.V5)
	subscribe(t, sub, 1, "ord/#")
	pub := dial(t, nodes[2].addr, "ordpub", client.V5)
	awaitRoute(t, pub, sub, "ord/probe")
	disconnect(t, sub)

	n2 := nodes[1].node
	// routedAll waits until n2 has routed everything in the stream.
	routedAll := func(ctx context.Context) error {
		for {
			info, err := n2.msgStream().Info(ctx)
			if err != nil {
				return err
			}
			n2.dur.routeMu.Lock()
			routed := n2.dur.routed
			n2.dur.routeMu.Unlock()
			if routed >= info.State.LastSeq {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	publish := func(from, to int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for i := from; i < to; i++ {
			if err := pub.Publish(ctx, &client.Message{Topic: "ord/x", QoS: 1, Payload: []byte(strconv.Itoa(i))}); err != nil {
				return err
			}
		}
		return routedAll(ctx)
	}
	errs := make(chan error, 2)
	var once1, once2 sync.Once
	// Given up by n1, not yet on n2: 0..4 are routed by n2 without it,
	// and replayed to it from the stream.
	released := func(string) error {
		once1.Do(func() { errs <- publish(0, 5) })
		return nil
	}
	// Imported on n2: 5..9 are routed to it.
	imported := func(string) { once2.Do(func() { errs <- publish(5, 10) }) }
	n2.sess.afterRelease.Store(&released)
	n2.sess.afterImport.Store(&imported)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	moved, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "ordmover",
		Version: client.V5, SessionExpiry: 600, ConnectTimeout: 2 * time.Minute})
	n2.sess.afterRelease.Store(nil)
	n2.sess.afterImport.Store(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { moved.Close() })
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	receiveAtLeastOnce(t, moved, 0, 10)
}

// TestSessionMoveOwnMessageBehindConsumers: a QoS 1 message published on
// n2 just before its session moves there from n1, while neither node's
// consumer has reached its record yet, still reaches the session.
func TestSessionMoveOwnMessageBehindConsumers(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, slowClaims)
	sub, _ := dialSession(t, nodes[0].addr, "ownmover", client.V5)
	subscribe(t, sub, 1, "own/#")
	pub := dial(t, nodes[1].addr, "ownpub", client.V5)
	awaitRoute(t, pub, sub, "own/probe")
	disconnect(t, sub)

	n1, n2 := nodes[0].node, nodes[1].node
	n1.pauseRouting()
	n2.pauseRouting()
	publishQoS1(t, pub, "own/x", 0, 3)
	moved, present := dialSession(t, nodes[1].addr, "ownmover", client.V5)
	if !present {
		t.Fatal("Session Present 0")
	}
	n1.resumeRouting()
	n2.resumeRouting()
	receiveAtLeastOnce(t, moved, 0, 3)
}

// TestPeerName: a JetStream peer whose server name nats-server has not
// learned yet (after a restart, the meta group read back from disk)
// carries a placeholder that must never count as a node.
func TestPeerName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		p    *server.PeerInfo
		name string
		ok   bool
	}{
		{nil, "", false},
		{&server.PeerInfo{}, "", false},
		{&server.PeerInfo{Name: "node2", Peer: "LrEq5buP"}, "node2", true},
		{&server.PeerInfo{Name: "Server name unknown at this time (peerID: LrEq5buP)", Peer: "LrEq5buP", Offline: true}, "", false},
	} {
		if name, ok := peerName(tc.p); name != tc.name || ok != tc.ok {
			t.Errorf("peerName(%+v) = %q, %v; want %q, %v", tc.p, name, ok, tc.name, tc.ok)
		}
	}
}
