package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
	"github.com/nats-io/nats.go/jetstream"
)

// pacedCluster starts three nodes whose sessions queue at most limit
// messages, with a connected persistent session of id on n1 that takes
// one message at a time (dialPaced), subscribed at QoS 1 to pc/#, and a
// publisher on n2 and on n3 whose messages reach it.
func pacedCluster(t *testing.T, id string, limit int, rec *logRecorder, before ...func(int, *Node)) (nodes []*testNode, sub *client.Client, pubs []*client.Client) {
	t.Helper()
	nodes, _, _ = startLimited(t, limit, rec, before...)
	sub, _ = dialPaced(t, nodes[0].addr, id)
	subscribe(t, sub, 1, "pc/#")
	for i := 1; i < 3; i++ {
		p := dial(t, nodes[i].addr, id+"pub"+strconv.Itoa(i), client.V5)
		awaitRoute(t, p, sub, "pc/probe")
		pubs = append(pubs, p)
	}
	// Probes that come later are ignored (inOrder.take).
	return nodes, sub, pubs
}

// TestPacedCatchUp: the other nodes publish 15 times what a connected
// session's queue takes (max_queued_messages 20) while its client takes
// nothing, and then (stay) a publisher on the session's own node sends
// a quarter of that, which the other nodes' messages left free (before,
// they filled the queue, and those were dropped there); as the client
// then takes one message at a time, every message
// arrives, in order per publisher, once: the routing pass that found the
// queue full switched the session to a catch-up, which reads what
// routing skipped from the stream as the queue drains. Its node never
// queues more than 20 messages and drops none; the catch-up ends, and
// a new message then arrives live. With a client that moves to another
// node in the middle, the catch-up is handed over: still none is lost
// (those in flight when it left may come again).
func TestPacedCatchUp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		move bool
	}{
		{"stay", false},
		{"move", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const limit, published = 20, 150
			id := "paced" + tc.name
			nodes, sub, pubs := pacedCluster(t, id, limit, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			errs := make(chan error, 2)
			for i, p := range pubs {
				go func() { errs <- publishQoS(ctx, p, "pc/"+strconv.Itoa(i), 0, published, 1) }()
			}
			for range pubs {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			want := map[string]int{"pc/0": published, "pc/1": published}
			if !tc.move {
				// The other nodes' messages leave the queue's last
				// quarter free: a publisher on n1 queues 5 there.
				testutil.WaitFor(t, "a paced catch-up on n1", 30*time.Second, func() bool {
					return nodes[0].node.Status().CatchUpsPaced > 0
				})
				local := dial(t, nodes[0].addr, id+"local", client.V5)
				if err := publishQoS(ctx, local, "pc/local", 0, limit/4, 1); err != nil {
					t.Fatal(err)
				}
				want["pc/local"] = limit / 4
			}
			o := newInOrder(want)
			check := queueBound(t, nodes[0], limit)
			if tc.move {
				receiveUntil(t, sub, o, 3*limit, check)
				if st := nodes[0].node.Status(); st.CatchUpsPaced == 0 {
					t.Fatal("no paced catch-up under way")
				}
				disconnect(t, sub)
				drainReceived(t, sub, o)
				o.left()
				var present bool
				sub, present = dialPaced(t, nodes[1].addr, id)
				if !present {
					t.Fatal("Session Present 0")
				}
				check = queueBound(t, nodes[1], limit)
			}
			receiveUntil(t, sub, o, -1, check)
			expectNone(t, sub, 500*time.Millisecond)
			st := nodes[0].node.Status()
			t.Logf("n1: catch-ups %d (paced %d), done %d, handed over %d, given up %d, messages %d; %d again",
				st.CatchUps, st.CatchUpsPaced, st.CatchUpsDone, st.CatchUpsHandedOver, st.CatchUpsGaveUp, st.CatchUpMessages, o.dups)
			if st.CatchUpsPaced == 0 || st.CatchUpsGaveUp != 0 {
				t.Fatal("want a paced catch-up, none given up")
			}
			if tc.move {
				if st.CatchUpsHandedOver == 0 {
					t.Fatal("the catch-up was not handed over")
				}
			} else if o.dups != 0 {
				t.Fatalf("%d duplicates", o.dups)
			}
			// Live again: a new message arrives at once.
			if err := publishQoS(ctx, pubs[0], "pc/z", 0, 1, 1); err != nil {
				t.Fatal(err)
			}
			receiveInOrder(t, sub, 0, 1)
			if !tc.move {
				testutil.WaitFor(t, "the catch-ups to end", 30*time.Second, func() bool {
					st := nodes[0].node.Status()
					return st.CatchUps == st.CatchUpsDone+st.CatchUpsGaveUp+st.CatchUpsHandedOver
				})
			}
		})
	}
}

// TestClaimCatchUpLate: the first reading of what a moving session
// missed fits its queue (max_queued_messages 20, 10 queued), but before
// the import the claiming node routes 100 more messages for it; the
// reading under the routing lock then reaches the room, and the claim
// catches up instead of leaving the rest out: every message arrives, in
// order, once, and the new home never queues more than 20.
func TestClaimCatchUpLate(t *testing.T) {
	t.Parallel()
	const limit, queued, more = 20, 10, 100
	nodes, _, _ := startLimited(t, limit, nil)
	sub, _ := dialSession(t, nodes[0].addr, "late", client.V5)
	subscribe(t, sub, 1, "lt/#")
	pub := dial(t, nodes[2].addr, "latepub", client.V5)
	awaitRoute(t, pub, sub, "lt/probe")
	disconnect(t, sub)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := publishQoS(ctx, pub, "lt/x", 0, queued, 1); err != nil {
		t.Fatal(err)
	}
	n2 := nodes[1].node
	hookErr := make(chan error, 1)
	var once sync.Once
	hook := func(string) {
		once.Do(func() { hookErr <- routeMore(ctx, n2, pub, queued, queued+more) })
	}
	n2.sess.afterReplayRead.Store(&hook)
	c, present := dialPaced(t, nodes[1].addr, "late")
	if !present {
		t.Fatal("Session Present 0")
	}
	select {
	case err := <-hookErr:
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("the claim did not read a replay")
	}
	o := newInOrder(map[string]int{"lt/x": queued + more})
	receiveUntil(t, c, o, -1, queueBound(t, nodes[1], limit))
	expectNone(t, c, 500*time.Millisecond)
	st := n2.Status()
	t.Logf("n2: catch-ups %d (late %d), done %d, given up %d, messages %d", st.CatchUps, st.CatchUpsLate, st.CatchUpsDone,
		st.CatchUpsGaveUp, st.CatchUpMessages)
	if st.CatchUpsLate != 1 || st.CatchUpsGaveUp != 0 || o.dups != 0 {
		t.Fatalf("late catch-ups %d, given up %d, %d duplicates", st.CatchUpsLate, st.CatchUpsGaveUp, o.dups)
	}
}

// routeMore publishes lt/x from..to-1 through pub and waits until n
// routed every record of the stream.
func routeMore(ctx context.Context, n *Node, pub *client.Client, from, to int) error {
	if err := publishQoS(ctx, pub, "lt/x", from, to, 1); err != nil {
		return err
	}
	return awaitAllRouted(ctx, n)
}

// awaitAllRouted waits until n routed every record the stream has now.
func awaitAllRouted(ctx context.Context, n *Node) error {
	js, err := jetstream.New(n.nc)
	if err != nil {
		return err
	}
	st, err := js.Stream(ctx, streamMsgs)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		n.dur.routeMu.Lock()
		routed := n.dur.routed
		n.dur.routeMu.Unlock()
		if routed >= info.State.LastSeq {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("routed %d of %d: %w", routed, info.State.LastSeq, ctx.Err())
		case <-tick.C:
		}
	}
}

// TestPacedCatchUpGivesUp: a connected client that takes nothing while
// its session catches up (idle bound 300 ms here, 30 s by default) ends
// the catch-up: it is counted and logged as given up, the messages read
// are delivered as far as the queue takes them, and routing delivers to
// the session again: a later message arrives live, after what the
// queue held, in order.
func TestPacedCatchUpGivesUp(t *testing.T) {
	t.Parallel()
	const limit, published = 20, 100
	rec := &logRecorder{}
	idle := func(i int, nd *Node) {
		if i == 0 {
			nd.cfg.CatchUpIdle = 300 * time.Millisecond
		}
	}
	nodes, sub, pubs := pacedCluster(t, "pacedidle", limit, rec, idle)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := publishQoS(ctx, pubs[0], "pc/0", 0, published, 1); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the catch-up to give up", 30*time.Second, func() bool {
		return nodes[0].node.Status().CatchUpsGaveUp > 0
	})
	st := nodes[0].node.Status()
	if st.CatchUpsPaced == 0 || len(rec.find(slog.LevelWarn, "cluster: a session's catch-up gave up; durable messages for it after read_to were not replayed")) == 0 {
		t.Fatalf("paced %d; no warning of the catch-up given up", st.CatchUpsPaced)
	}
	if err := publishQoS(ctx, pubs[1], "pc/1", 0, 1, 1); err != nil {
		t.Fatal(err)
	}
	// What arrives of pc/0 comes in order, with the messages not
	// replayed missing; pc/1's message arrives.
	last, got1 := -1, false
	deadline := time.After(30 * time.Second)
	for !got1 {
		select {
		case m := <-sub.Messages():
			if isProbe(m) {
				continue
			}
			i, err := strconv.Atoi(string(m.Payload))
			if err != nil {
				t.Fatalf("payload %q", m.Payload)
			}
			switch m.Topic {
			case "pc/0":
				if i <= last {
					t.Fatalf("pc/0: %d after %d", i, last)
				}
				last = i
			case "pc/1":
				got1 = true
			}
		case <-deadline:
			t.Fatalf("pc/1 did not arrive (pc/0 up to %d)", last)
		}
	}
	if last < limit {
		t.Fatalf("pc/0 up to %d only; want at least the queue's %d", last, limit)
	}
	t.Logf("pc/0 up to %d of %d; given up %d", last, published-1, nodes[0].node.Status().CatchUpsGaveUp)
}

// TestPacedCatchUpMovedPublisher: a publisher on n2 sends a connected
// session on n1 seven times what its queue takes while its client takes
// nothing, so that the session catches up from the stream; the publisher
// then moves to n1, the session's own node, and sends more. Its first
// message there waits until the catch-up delivered what the stream held
// (the publisher's earlier messages): every message arrives in its
// publisher's order. Before, the first messages on n1 went to the
// session at once and came ahead of the earlier ones still in the
// catch-up's part of the stream.
func TestPacedCatchUpMovedPublisher(t *testing.T) {
	t.Parallel()
	const limit, before, after = 20, 140, 20
	id := "pacedmoved"
	// The catch-up holds the moved publisher only while younger than
	// gateCatchUpAge (10 s): more than the 140 messages take here, but
	// not always on a loaded machine with the race detector.
	nodes, sub, pubs := pacedCluster(t, id, limit, nil, func(_ int, nd *Node) { nd.sess.gateAgeFor.Store(int64(5 * time.Minute)) })
	n1 := nodes[0].node
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := publishQoS(ctx, pubs[0], "pc/m", 0, before, 1); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "a paced catch-up on n1", 30*time.Second, func() bool {
		return n1.Status().CatchUpsPaced > 0
	})
	disconnect(t, pubs[0])
	st := n1.Status()
	waited, waitedCU, notCaught := st.PublishersWaited, st.PublishersWaitedCatchUp, st.PublishersNotCaughtUp
	moved := dial(t, nodes[0].addr, id+"pub1", client.V5)
	published := make(chan error, 1)
	go func() { published <- publishQoS(ctx, moved, "pc/m", before, before+after, 1) }()
	testutil.WaitFor(t, "the moved publisher's first message to wait for the catch-up", 30*time.Second, func() bool {
		st := n1.Status()
		return st.PublishersWaited > waited && st.PublishersWaitedCatchUp > waitedCU
	})
	o := newInOrder(map[string]int{"pc/m": before + after})
	receiveUntil(t, sub, o, -1, queueBound(t, nodes[0], limit))
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	if got := n1.Status().PublishersNotCaughtUp; got != notCaught {
		t.Fatalf("%d first messages went on before n1 caught up, want none", got-notCaught)
	}
	if o.dups != 0 {
		t.Fatalf("%d duplicates", o.dups)
	}
}

// TestCatchUpBehind: a connection's first message waits for the paced
// catch-ups of sessions its topic reaches that have not got the stream
// up to its end, and not for those past it, of other topics, of claims,
// not started yet, under way for longer than gateCatchUpAge, or of the
// publisher's own session; a
// catch-up that moves on wakes it.
func TestCatchUpBehind(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_000_000, 0)
	n := &Node{cfg: Config{Now: func() time.Time { return now }}}
	add := func(id string, paced bool, filters []string, through uint64, age time.Duration) *catchUp {
		c := &catchUp{n: n, id: id, paced: paced, filters: filters, started: now.Add(-age)}
		c.through.Store(through)
		if n.sess.catchUps == nil {
			n.sess.catchUps = make(map[string]*catchUp)
		}
		n.sess.catchUps[id] = c
		return c
	}
	add("past", true, []string{"a/#"}, 100, time.Second)
	add("other", true, []string{"b/#"}, 10, time.Second)
	add("claim", false, []string{"a/#"}, 10, time.Second)
	add("reserved", true, nil, 0, time.Second)
	add("slow", true, []string{"a/+"}, 10, gateCatchUpAge+time.Second)
	if ch := n.catchUpBehind("a/x", "pub", 100); ch != nil {
		t.Fatal("waits though no catch-up it should wait for lags")
	}
	lag := add("lag", true, []string{"a/x"}, 50, gateCatchUpAge-time.Second)
	lag.rs = &replaySet{to: 100}
	ch := n.catchUpBehind("a/x", "pub", 100)
	if ch == nil {
		t.Fatal("does not wait for a catch-up of its topic behind the stream's end")
	}
	if n.catchUpBehind("a/y", "pub", 100) != nil {
		t.Fatal("waits for a catch-up of another topic")
	}
	if n.catchUpBehind("a/x", "lag", 100) != nil {
		t.Fatal("waits for the publisher's own session's catch-up")
	}
	lag.progressed()
	select {
	case <-ch:
	default:
		t.Fatal("a catch-up that moved on woke nobody")
	}
	if n.catchUpBehind("a/x", "pub", 100) != nil {
		t.Fatal("still waits once the catch-up got to the stream's end")
	}
}
