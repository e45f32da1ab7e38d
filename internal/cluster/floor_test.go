package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// leadConsumer makes the node named name lead the consumer cons of the
// durable stream, asking through via.
func leadConsumer(t *testing.T, via *Node, cons, name string) {
	t.Helper()
	js, err := jetstream.New(via.nc)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := json.Marshal(server.JSApiLeaderStepdownRequest{Placement: &server.Placement{Preferred: name}})
	testutil.CheckFor(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, streamMsgs, cons)
		if err != nil {
			return err
		}
		if ci := c.CachedInfo().Cluster; ci != nil && ci.Leader == name {
			return nil
		}
		_, _ = via.nc.Request(fmt.Sprintf(server.JSApiConsumerLeaderStepDownT, streamMsgs, cons), req, 5*time.Second)
		return fmt.Errorf("consumer %s has another leader", cons)
	})
}

// mustPublishQoS publishes the payloads from..to-1 on topic at qos,
// each after the previous one's acknowledgement, or fails t.
func mustPublishQoS(t *testing.T, c *client.Client, topic string, from, to int, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := publishQoS(ctx, c, topic, from, to, qos); err != nil {
		t.Fatalf("publish %s %d..%d: %v", topic, from, to, err)
	}
}

// receiveEach reads from c the payloads from..to-1 of each topic of
// want (topic → its QoS), each exactly once and in order per topic,
// whatever the order between topics, then nothing more for a moment.
func receiveEach(t *testing.T, c *client.Client, want map[string]byte, from, to int) {
	t.Helper()
	next := make(map[string]int, len(want))
	for topic := range want {
		next[topic] = from
	}
	left := len(want) * (to - from)
	deadline := time.After(60 * time.Second)
	for left > 0 {
		select {
		case m := <-c.Messages():
			qos, ok := want[m.Topic]
			if !ok {
				t.Fatalf("unexpected message %q on %s", m.Payload, m.Topic)
			}
			if string(m.Payload) != strconv.Itoa(next[m.Topic]) {
				t.Fatalf("%s: got %q, want %d (a duplicate, a loss or out of order)", m.Topic, m.Payload, next[m.Topic])
			}
			if m.QoS != qos {
				t.Fatalf("%s %q arrived at QoS %d, want %d", m.Topic, m.Payload, m.QoS, qos)
			}
			next[m.Topic]++
			left--
		case <-deadline:
			t.Fatalf("received up to %v of %d..%d", next, from, to)
		}
	}
	expectNone(t, c, time.Second)
}

// TestClaimDeadNodeLeadingOwnConsumer: n3 leads its own consumer of the
// durable stream (n1 leads the JetStream meta group and the streams of
// messages and sessions) and holds an offline persistent session
// subscribed at QoS 2, which has received every message so far. n3
// vanishes as in a SIGKILL (its routes cut: it steps nothing down), and
// QoS 1 and QoS 2 messages for the session are published on n1. The
// session's claim on n1 right after n1 sees n3 gone succeeds at its
// first CONNACK, with Session Present 1: n1 reads the position from its
// own copy of the consumer (replica_floors), without waiting for a new
// leader, and without asking n3 first, which its copy names the leader;
// so does an adoption's reading of the position on n2, which gets the
// floor n3 had reached. Every message arrives once, in order
// per topic, at the QoS it was published with.
func TestClaimDeadNodeLeadingOwnConsumer(t *testing.T) {
	t.Parallel()
	nodes, relays := startRelayedCluster(t)
	sub, _ := dialSession(t, nodes[2].addr, "resumer", client.V5)
	subscribe(t, sub, 2, "rs/#")
	pub := dial(t, nodes[0].addr, "rspub", client.V5)
	awaitRoute(t, pub, sub, "rs/probe")
	want := map[string]byte{"rs/q1": 1, "rs/q2": 2}
	for topic, qos := range want {
		mustPublishQoS(t, pub, topic, 0, 3, qos)
	}
	receiveEach(t, sub, want, 0, 3)
	disconnect(t, sub)

	takeLead(t, nodes[0].node, "n1", streamMsgs, streamSessions)
	cons := nodes[2].node.consumerName()
	leadConsumer(t, nodes[0].node, cons, "n3")
	// Both survivors' copies have every acknowledgement of n3.
	last := streamState(t, nodes[0].node).LastSeq
	testutil.WaitFor(t, "the survivors' copies of n3's consumer at the stream's end", 30*time.Second, func() bool {
		f1, why1 := nodes[0].node.replicaFloor("n3")
		f2, why2 := nodes[1].node.replicaFloor("n3")
		return why1 == "" && why2 == "" && f1 == last && f2 == last
	})
	if ci := consumerInfo(t, nodes[0].node, nodes[2].node); ci.Cluster == nil || ci.Cluster.Leader != "n3" {
		t.Fatalf("n3's consumer is led by %+v before the cut", ci.Cluster)
	}

	cutNode(relays, 2, true)
	cut := time.Now()
	testutil.WaitFor(t, "n1 and n2 to see n3 gone", 30*time.Second, func() bool {
		return !nodes[0].node.peerConnected("n3") && !nodes[1].node.peerConnected("n3")
	})
	for topic, qos := range want {
		mustPublishQoS(t, pub, topic, 3, 8, qos)
	}

	// An adoption's reading of the position, on n2, as the claim runs.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var adoptPos position
	var adoptErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		adoptPos, adoptErr = nodes[1].node.ackFloorOf(ctx, "n3")
	}()
	// One connection: a refusal (CONNACK 0x88, the position unknown)
	// fails the test.
	c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[0].addr}, ClientID: "resumer", SessionExpiry: 600})
	wg.Wait()
	// A new leader of the consumer is elected 4 to 9 s after the cut.
	t.Logf("the claim answered %v after the cut", time.Since(cut).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("the claim on n1 right after n3 vanished: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if !c.ConnectInfo().SessionPresent {
		t.Fatal("Session Present 0 on n1")
	}
	if adoptErr != nil || !adoptPos.replay || adoptPos.seq != last {
		t.Fatalf("an adoption's position on n2: %+v, %v; want the floor %d", adoptPos, adoptErr, last)
	}
	for i, tn := range nodes[:2] {
		if got := tn.node.Status().ReplicaFloors; got != 1 {
			t.Fatalf("n%d read %d positions from its copy of the consumer, want 1", i+1, got)
		}
		// The copy named n3 its leader: n3 was not asked first.
		if got := tn.node.dstats.floorsUnasked.Load(); got != 1 {
			t.Fatalf("n%d read %d positions without asking the consumer's leader first, want 1", i+1, got)
		}
	}
	receiveEach(t, c, want, 3, 8)
	// The session goes on on n1.
	for topic, qos := range want {
		mustPublishQoS(t, pub, topic, 8, 10, qos)
	}
	receiveEach(t, c, want, 8, 10)
}
