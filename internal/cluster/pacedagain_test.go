package cluster

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
)

// TestPacedCatchUpFollowedByAnother: a connected session's catch-up
// reaches the routing position while another node goes on publishing
// for it faster than its client takes messages. The routing passes
// right after the end find its queue full again: each must start the
// next catch-up, not drop the message as if no catch-up could be had
// (the ended one, still listed until its goroutine returned, made
// them). The first catch-up lets the session go (its Deliver) after
// those passes started the second, and the other node publishes more
// once it has: the second catch-up must still be under way, routing
// skipping those messages for it (the first one's Deliver used to end
// it, and routing then delivered them live, ahead of older ones the
// second catch-up brought, and again from the stream: an outside kill
// series saw 427 acknowledged messages out of order and 843 copies).
// Every message arrives, in order, once, and the node drops none for
// a full queue.
func TestPacedCatchUpFollowedByAnother(t *testing.T) {
	t.Parallel()
	const limit, published, more, late = 20, 100, 200, 100
	nodes, sub, pubs := pacedCluster(t, "pacedagain", limit, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n1 := nodes[0].node
	hookErr, lateErr := make(chan error, 1), make(chan error, 1)
	var once sync.Once
	hook := func(string) {
		once.Do(func() { hookErr <- publishRouted(ctx, n1, pubs[0], "pc/0", published, published+more) })
	}
	n1.sess.afterCatchUpEnd.Store(&hook)
	go func() {
		select {
		case err := <-hookErr:
			if err != nil {
				lateErr <- err
				return
			}
			lateErr <- publishRouted(ctx, n1, pubs[0], "pc/0", published+more, published+more+late)
		case <-ctx.Done():
			lateErr <- ctx.Err()
		}
	}()
	if err := publishQoS(ctx, pubs[0], "pc/0", 0, published, 1); err != nil {
		t.Fatal(err)
	}
	o := newInOrder(map[string]int{"pc/0": published + more + late})
	receiveUntil(t, sub, o, -1, queueBound(t, nodes[0], limit))
	if err := <-lateErr; err != nil {
		t.Fatal(err)
	}
	expectNone(t, sub, 300*time.Millisecond)
	st := n1.Status()
	t.Logf("n1: catch-ups %d (paced %d), done %d, given up %d", st.CatchUps, st.CatchUpsPaced, st.CatchUpsDone, st.CatchUpsGaveUp)
	if st.CatchUpsPaced < 2 || st.CatchUpsGaveUp != 0 {
		t.Fatalf("want a second paced catch-up and none given up: %d paced, %d given up", st.CatchUpsPaced, st.CatchUpsGaveUp)
	}
}

// publishRouted publishes from..to-1 on topic through pub at QoS 1,
// pipelined (they reach the stream in a few records), and waits until n
// routed every record of the stream.
func publishRouted(ctx context.Context, n *Node, pub *client.Client, topic string, from, to int) error {
	var toks []*client.Token
	for i := from; i < to; i++ {
		toks = append(toks, pub.PublishAsync(ctx, &client.Message{Topic: topic, QoS: 1, Payload: []byte(strconv.Itoa(i))}))
	}
	for _, tk := range toks {
		if err := tk.Wait(ctx); err != nil {
			return err
		}
	}
	return awaitAllRouted(ctx, n)
}

// TestPacedCatchUpLeavesTheNextPosition: when a routing pass starts a
// session's next paced catch-up before the ended one has let the
// session go, the position record of the new one (c) stays: the ended
// one removes its own before routing is let go, not after. It used to
// remove it after, and so the new one's, written meanwhile: had the node
// died then, the next claim would have replayed from the node's
// acknowledgement floor, past messages routing had skipped for the
// session. The client takes nothing once the second catch-up is under
// way, so that it stays; then it takes the rest, which arrives in order.
func TestPacedCatchUpLeavesTheNextPosition(t *testing.T) {
	t.Parallel()
	const limit, published, more = 20, 100, 200
	const id = "pacedmark"
	nodes, sub, pubs := pacedCluster(t, id, limit, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	n1 := nodes[0].node
	hookErr := make(chan error, 1)
	var once sync.Once
	hook := func(string) {
		once.Do(func() { hookErr <- publishRouted(ctx, n1, pubs[0], "pc/0", published, published+more) })
	}
	n1.sess.afterCatchUpEnd.Store(&hook)
	if err := publishQoS(ctx, pubs[0], "pc/0", 0, published, 1); err != nil {
		t.Fatal(err)
	}
	o := newInOrder(map[string]int{"pc/0": published + more})
	running := func() uint64 {
		st := n1.Status()
		return st.CatchUps - st.CatchUpsDone - st.CatchUpsGaveUp - st.CatchUpsHandedOver
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for st := n1.Status(); st.CatchUpsDone == 0 || running() == 0; st = n1.Status() {
		select {
		case m := <-sub.Messages():
			o.take(t, m)
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("no second catch-up under way after the first ended: %+v", st)
		}
	}
	if err := <-hookErr; err != nil {
		t.Fatal(err)
	}
	// Every write submitted so far is stored once this one is.
	flushed := make(chan error, 1)
	n1.persistence().Persist(nil, func(err error) { flushed <- err })
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	r, err := n1.getRecord(ctx, markSubject(id))
	if err != nil {
		t.Fatal(err)
	}
	if running() == 0 {
		t.Fatal("the second catch-up ended while the client took nothing")
	}
	if r == nil || len(r.data) == 0 {
		t.Fatal("no position record of the catch-up under way: the one that ended removed it")
	}
	t.Logf("the catch-up under way is at %s", r.data)
	receiveUntil(t, sub, o, -1, queueBound(t, nodes[0], limit))
	expectNone(t, sub, 300*time.Millisecond)
}
