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
// them). Every message arrives, in order, once, and the node drops
// none for a full queue.
func TestPacedCatchUpFollowedByAnother(t *testing.T) {
	const limit, published, more = 20, 100, 200
	nodes, sub, pubs := pacedCluster(t, "pacedagain", limit, nil)
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
	receiveUntil(t, sub, o, -1, queueBound(t, nodes[0], limit))
	select {
	case err := <-hookErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no catch-up ended")
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
