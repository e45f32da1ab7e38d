package cluster

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// TestHeldDeliveryAcknowledgedAfterWrite: a persistent session moves
// from n1 to n2. While n2's import holds back what routing delivers to
// the session (the hook runs then), a QoS 1 message published on n3
// reaches n2 through the durable stream. n2 routes the record, but the
// delivery is held back and written to moat_sessions only when the
// session releases it: the record must not be acknowledged before that,
// or a crash of n2 in between would lose an acknowledged message. So
// once every commit submitted on n2 until then is reported, the record
// is still unfinished; after the release the session gets the message
// once, and the record is acknowledged.
func TestHeldDeliveryAcknowledgedAfterWrite(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	sub, _ := dialSession(t, nodes[0].addr, "holder", client.V5)
	subscribe(t, sub, 1, "hold/#")
	pub := dial(t, nodes[2].addr, "holdpub", client.V5)
	awaitRoute(t, pub, sub, "hold/probe")
	disconnect(t, sub)

	n2 := nodes[1].node
	routed := func() uint64 {
		n2.dur.routeMu.Lock()
		defer n2.dur.routeMu.Unlock()
		return n2.dur.routed
	}
	floor := func() uint64 {
		q := n2.dur.acks
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.floor
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var enterOnce, releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo)
	hook := func(id string) {
		if id != "holder" {
			return
		}
		enterOnce.Do(func() {
			close(entered)
			<-release
		})
	}
	n2.sess.afterImport.Store(&hook)

	got := dialAsync(nodes[1].addr, "holder", 60*time.Second)
	select {
	case <-entered:
	case d := <-got:
		t.Fatalf("connected without the hook running: %v", d.err)
	case <-time.After(60 * time.Second):
		t.Fatal("n2 did not import the session")
	}

	// n3 sees n2's interest (the imported subscription's marker) before
	// it publishes, so the message goes into the stream for n2.
	marker := markerPrefix + keyOf("n2") + "." + topicTokens("hold/x")
	testutil.WaitFor(t, "n3 to see n2's subscription", 30*time.Second, func() bool {
		return nodes[2].node.srv.GlobalAccount().Interest(marker) > 0
	})
	before := routed()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, &client.Message{Topic: "hold/x", QoS: 1, Payload: []byte("held")}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "n2 to route the record", 30*time.Second, func() bool { return routed() > before })
	seq := routed()
	// Commits are reported in submission order: once this one is, the
	// record's own commit (a routing pass that only held the message
	// back) has been reported too.
	barrier := make(chan struct{})
	n2.persistence().Persist(nil, func(error) { close(barrier) })
	select {
	case <-barrier:
	case <-time.After(30 * time.Second):
		t.Fatal("n2's commits are not reported")
	}
	if f := floor(); f >= seq {
		t.Fatalf("record %d finished (floor %d) while its delivery was held back, not yet written", seq, f)
	}

	letGo()
	var d dialResult
	select {
	case d = <-got:
	case <-time.After(60 * time.Second):
		t.Fatal("the connection on n2 did not complete")
	}
	if d.err != nil {
		t.Fatal(d.err)
	}
	t.Cleanup(func() { d.c.Close() })
	if !d.c.ConnectInfo().SessionPresent {
		t.Fatal("Session Present 0 on n2")
	}
	select {
	case m := <-d.c.Messages():
		if string(m.Payload) != "held" {
			t.Fatalf("got %q on %s", m.Payload, m.Topic)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the held message did not arrive")
	}
	testutil.WaitFor(t, "the record to be finished", 30*time.Second, func() bool { return floor() >= seq })
	expectNone(t, d.c, 500*time.Millisecond)
}
