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
// dies, and four times as many messages for it as its queue holds
// (max_queued_messages 50) are published before its client connects to
// another node: the claim replays the first 50, in order, and stops
// reading the stream at the first message past the room of the queue
// (far fewer records read than published), counts it and warns once,
// naming the client.
func TestSessionMoveReplayBounded(t *testing.T) {
	const limit, published = 50, 200
	rec := &logRecorder{}
	nodes, err := startNodesLogged(t, t.TempDir(), freePorts(t, 3), nil, rec, func(bc *broker.Config) {
		bc.MaxQueued = limit
	})
	if err != nil {
		t.Fatal(err)
	}
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

// TestQueueRoom: the room a session's queue has for a replay is the
// queue limits less its queued deliveries (those not in flight).
func TestQueueRoom(t *testing.T) {
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
