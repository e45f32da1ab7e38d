package cluster

import (
	"log/slog"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

// boundedReplayMsg is the warning of a replay stopped at its bound.
const boundedReplayMsg = "cluster: a moved session's queue is full; durable messages for it past the bound were not replayed"

// TestSessionMoveReplayBounded: the node of an offline persistent session
// dies, and four times as many messages for it as its queue holds are
// published before its client connects to another node: the claim
// replays the first 50, in order, and stops reading the stream at the
// first message past the room of the queue (far fewer records read than
// published), counts it and warns once, naming the client. The queue
// holds 50 messages by max_queued_messages, or by max_queued_bytes (the
// topic bd/x and the payloads "0" to "49": 290 bytes).
func TestSessionMoveReplayBounded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		set  func(*broker.Config)
	}{
		{"messages", func(bc *broker.Config) { bc.MaxQueued = 50 }},
		{"bytes", func(bc *broker.Config) { bc.MaxQueuedBytes = 10*5 + 40*6 }},
	} {
		t.Run(tc.name, func(t *testing.T) { testSessionMoveReplayBounded(t, tc.set) })
	}
}

func testSessionMoveReplayBounded(t *testing.T, set func(*broker.Config)) {
	const limit, published = 50, 200
	rec := &logRecorder{}
	// The bound of a claim that does not catch up (as an adoption's).
	noCatchUp := func(_ int, nd *Node) { nd.sess.noCatchUp = true }
	nodes := startFresh(t, 3, []func(int, *Node){noCatchUp}, rec, set)
	sub, _ := dialSession(t, nodes[0].addr, "bounded", client.V311)
	subscribe(t, sub, 1, "bd/#")
	pub := dial(t, nodes[2].addr, "bdpub", client.V5)
	awaitRoute(t, pub, sub, "bd/probe")
	disconnect(t, sub)

	stopNode(t, nodes[0])
	testutil.WaitFor(t, "n2 and n3 to see n1 gone", 30*time.Second, func() bool {
		return nodes[1].node.srv.NumRemotes() == 1 && nodes[2].node.srv.NumRemotes() == 1
	})
	publishQoS1(t, pub, "bd/x", 0, published) // one record each
	before := nodes[1].node.Status().ReplayRecords
	sub2, present := dialSession(t, nodes[1].addr, "bounded", client.V311)
	if !present {
		t.Fatal("Session Present 0 on a survivor")
	}
	receiveInOrder(t, sub2, 0, limit)
	expectNone(t, sub2, 500*time.Millisecond)

	st := nodes[1].node.Status()
	if st.ReplaysBounded != 1 || st.ReplayDropped < 1 {
		t.Fatalf("replays bounded %d, messages not replayed %d; want 1 and at least 1", st.ReplaysBounded, st.ReplayDropped)
	}
	// The first message past the room is in record limit+1 after the
	// position; a few more are read ahead, one per subject.
	read := st.ReplayRecords - before
	t.Logf("%d records read, %d messages found past the bound", read, st.ReplayDropped)
	if read > published/2 {
		t.Fatalf("%d records read for a replay bounded at %d messages of %d", read, limit, published)
	}
	warns := rec.find(slog.LevelWarn, boundedReplayMsg)
	if len(warns) != 1 {
		t.Fatalf("%d warnings of a bounded replay, want 1", len(warns))
	}
	w := warns[0]
	if got := attrOf(w, "client").String(); got != "bounded" {
		t.Fatalf("warning names client %q", got)
	}
	if got := attrOf(w, "replayed").Int64(); got != limit {
		t.Fatalf("warning says %d replayed, want %d", got, limit)
	}
	if got := attrOf(w, "not_replayed").Int64(); got < 1 {
		t.Fatalf("warning says %d not replayed", got)
	}
	// The session goes on: a new message, past the queue's drops, arrives.
	publishQoS1(t, pub, "bd/y", 0, 1)
	receiveInOrder(t, sub2, 0, 1)
}

// TestAdoptReplayBounded: the node of an offline persistent session
// dies and three times as many messages for it as its queue holds
// (max_queued_messages 20) are published; the survivor that adopts the
// session replays the first 20 and stops reading there, with one
// warning; the client, back later, receives those 20 in order.
func TestAdoptReplayBounded(t *testing.T) {
	t.Parallel()
	const limit, published = 20, 60
	clk := newTestClock()
	rec := &logRecorder{}
	nodes := startFresh(t, 3, []func(int, *Node){clk.hook(), adoptAfter(time.Minute)},
		rec, func(bc *broker.Config) { bc.MaxQueued = limit })
	sub, _ := dialSession(t, nodes[2].addr, "adbound", client.V5)
	subscribe(t, sub, 1, "ab/#")
	pub := dial(t, nodes[0].addr, "abpub", client.V5)
	awaitRoute(t, pub, sub, "ab/probe")
	disconnect(t, sub)

	crashNode(t, nodes[2])
	publishQoS1(t, pub, "ab/x", 0, published) // one record each
	testutil.WaitFor(t, "the session adopted", 60*time.Second, func() bool {
		sinceHeard(clk, "n3", 2*time.Minute, nodes[:2]...)
		return nodes[0].node.Status().SessionsAdopted+nodes[1].node.Status().SessionsAdopted == 1
	})
	var bounded, dropped, read uint64
	for _, tn := range nodes[:2] {
		st := tn.node.Status()
		bounded, dropped, read = bounded+st.ReplaysBounded, dropped+st.ReplayDropped, read+st.ReplayRecords
	}
	t.Logf("%d records read, %d messages found past the bound", read, dropped)
	if bounded != 1 || dropped < 1 || read > published/2 {
		t.Fatalf("replays bounded %d, messages past the bound %d, records read %d (of %d)", bounded, dropped, read, published)
	}
	warns := rec.find(slog.LevelWarn, boundedReplayMsg)
	if len(warns) != 1 || attrOf(warns[0], "client").String() != "adbound" || attrOf(warns[0], "replayed").Int64() != limit {
		t.Fatalf("warnings of a bounded replay: %v", warns)
	}

	c, present := dialSession(t, nodes[0].addr, "adbound", client.V5)
	if !present {
		t.Fatal("Session Present 0 for an adopted session")
	}
	receiveInOrder(t, c, 0, limit)
	expectNone(t, c, 500*time.Millisecond)
}

// TestQueueRoom: the room a session's queue has for a replay is the
// queue limits less its queued deliveries (those not in flight).
func TestQueueRoom(t *testing.T) {
	t.Parallel()
	msg := &broker.Message{Topic: "a/b", Payload: []byte("12345")} // 8 bytes
	cs := &broker.ClusterSession{Messages: map[uint64]*broker.Message{1: msg}}
	cs.Session.Deliveries = []*broker.StoredDelivery{
		{Seq: 1, MsgID: 1, State: broker.DeliveryQueued},
		{Seq: 2, MsgID: 1, State: broker.DeliverySent, PacketID: 7}, // in flight
		{Seq: 3, MsgID: 1, State: broker.DeliverySent},              // no packet ID: queued again
	}
	for _, tc := range []struct {
		name      string
		lim       broker.Limits
		room      int
		roomBytes int64
	}{
		{"messages", broker.Limits{MaxQueued: 10}, 8, -1},
		{"bytes", broker.Limits{MaxQueued: 10, MaxQueuedBytes: 100}, 8, 84},
		{"full", broker.Limits{MaxQueued: 2, MaxQueuedBytes: 16}, 0, 0},
		{"over", broker.Limits{MaxQueued: 1, MaxQueuedBytes: 4}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			room, roomBytes := queueRoom(tc.lim, cs)
			if room != tc.room || roomBytes != tc.roomBytes {
				t.Fatalf("room %d, %d bytes; want %d, %d", room, roomBytes, tc.room, tc.roomBytes)
			}
		})
	}
}
