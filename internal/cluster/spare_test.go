package cluster

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
)

// TestCatchUpLeavesRoomForLive: a connected session's queue
// (max_queued_messages 20) fills with another node's messages and
// catches up from the stream; as the catch-up ends its client stops
// taking messages, and a client of the session's own node publishes 5
// QoS 1 messages for it. Those come live (they are not in what the
// catch-up reads) and find room: the catch-up left a quarter of the
// queue free, where before it filled the queue to its limit and the
// default drop policy dropped them. Every message arrives, in order per
// publisher, once; the node never queues more than 20 and drops none.
func TestCatchUpLeavesRoomForLive(t *testing.T) {
	t.Parallel()
	const limit, published, own = 20, 150, 5 // own: the quarter of the queue left free
	// Publishers are not held back by the subscriber's backlog: the own
	// node's messages go straight to its queue, as those of a publisher
	// the session counts as slow for do (broker.Config.PushbackWait).
	nodes := startFresh(t, 3, nil, nil, func(bc *broker.Config) {
		bc.MaxQueued, bc.PushbackMessages = limit, -1
	})
	sub, _ := dialPaced(t, nodes[0].addr, "spare")
	subscribe(t, sub, 1, "pc/#")
	pub := dial(t, nodes[1].addr, "sparepub", client.V5)
	awaitRoute(t, pub, sub, "pc/probe")
	n1 := nodes[0].node
	local := dial(t, nodes[0].addr, "spareown", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The hook runs on the catch-up's goroutine once it ended: it stops
	// the reader below, publishes, and lets the reader go on.
	pause := make(chan chan struct{})
	hookErr := make(chan error, 1)
	var once sync.Once
	hook := func(string) {
		once.Do(func() {
			resume := make(chan struct{})
			defer close(resume)
			select {
			case pause <- resume:
			case <-ctx.Done():
				hookErr <- ctx.Err()
				return
			}
			hookErr <- publishQoS(ctx, local, "pc/own", 0, own, 1)
		})
	}
	n1.sess.afterCatchUpEnd.Store(&hook)
	if err := publishQoS(ctx, pub, "pc/0", 0, published, 1); err != nil {
		t.Fatal(err)
	}

	o := newInOrder(map[string]int{"pc/0": published, "pc/own": own})
	check := queueBound(t, nodes[0], limit)
	// Until the hook ran, the reader takes a message only while a
	// catch-up is under way and filled the queue as far as it does: the
	// queue is then as full as the catch-up leaves it when it ends.
	fill := int64(limit - limit/catchUpSpare)
	hooked := false
	ready := func() bool {
		n1.sess.cuMu.Lock()
		catching := len(n1.sess.catchUps) > 0
		n1.sess.cuMu.Unlock()
		return hooked || catching && nodes[0].srv.Stats().Queued >= fill
	}
	deadline := time.After(90 * time.Second)
	for !o.done() {
		var msgs <-chan *client.Message
		var poll <-chan time.Time
		if ready() {
			msgs = sub.Messages()
		} else {
			poll = time.After(time.Millisecond)
		}
		select {
		case m := <-msgs:
			o.take(t, m)
			check()
		case <-poll:
		case resume := <-pause:
			<-resume
			hooked = true
			if err := <-hookErr; err != nil {
				t.Fatal(err)
			}
			check()
		case <-deadline:
			t.Fatalf("timed out: received %v of %v, %d queued", o.next, o.want, nodes[0].srv.Stats().Queued)
		}
	}
	expectNone(t, sub, 300*time.Millisecond)
	check()
	st := n1.Status()
	t.Logf("n1: catch-ups %d (paced %d), done %d, given up %d", st.CatchUps, st.CatchUpsPaced, st.CatchUpsDone, st.CatchUpsGaveUp)
	if st.CatchUpsPaced == 0 || st.CatchUpsDone == 0 || st.CatchUpsGaveUp != 0 {
		t.Fatal("want a paced catch-up done, none given up")
	}
	if o.dups != 0 {
		t.Fatalf("%d duplicates", o.dups)
	}
}

// TestLeaveRoom: a catch-up fills three quarters of each limit of a
// session's queue; below four messages it leaves nothing free.
func TestLeaveRoom(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		lim       broker.Limits
		room      int
		roomBytes int64
		want      int
		wantBytes int64
	}{
		{broker.Limits{MaxQueued: 1000}, 1000, -1, 750, -1},
		{broker.Limits{MaxQueued: 1000}, 300, -1, 50, -1},
		{broker.Limits{MaxQueued: 1000}, 200, -1, 0, -1},
		{broker.Limits{MaxQueued: 1000, MaxQueuedBytes: 4000}, 1000, 4000, 750, 3000},
		{broker.Limits{MaxQueued: 1000, MaxQueuedBytes: 4000}, 1000, 500, 750, 0},
		{broker.Limits{MaxQueued: 3}, 3, -1, 3, -1},
	} {
		room, roomBytes := leaveRoom(tc.lim, tc.room, tc.roomBytes)
		if room != tc.want || roomBytes != tc.wantBytes {
			t.Errorf("leaveRoom(%+v, %d, %d) = %d, %d; want %d, %d", tc.lim, tc.room, tc.roomBytes, room, roomBytes, tc.want, tc.wantBytes)
		}
	}
}

// TestCatchUpKeepsUp: a catch-up's client is idle only when the
// catch-up may fill nothing and the client took nothing since the last
// look; live messages that keep the queue full while the client takes
// messages do not make it idle.
func TestCatchUpKeepsUp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		room      int
		roomBytes int64
		raw, last int
		want      bool
	}{
		{5, -1, 255, 250, true},  // room to fill
		{5, 0, 255, 255, false},  // the bytes are full, nothing taken
		{0, -1, 200, 100, true},  // took 100 since the last look
		{0, -1, 100, 200, false}, // live messages filled it, nothing taken
		{0, -1, 100, 100, false}, // nothing moved
		{0, -1, 100, -1, false},  // first look
	} {
		if got := keepsUp(tc.room, tc.roomBytes, tc.raw, tc.last); got != tc.want {
			t.Errorf("keepsUp(%d, %d, %d, %d) = %v, want %v", tc.room, tc.roomBytes, tc.raw, tc.last, got, tc.want)
		}
	}
}
