package cluster

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/client"
)

// TestSessionMoveOwnMessagesKeepOrder: a persistent session moves from
// n1 to n2 while n2's own client publishes at QoS 1. Messages 0..4 are
// acknowledged after n1 gave the session up (n2 reads them back from the
// stream before the import: its consumer skips them), 5..9 while n2
// imports it (found in its record of recent messages). The session gets
// them in their publisher's order [MQTT-4.6.0-6]. Before, the messages
// read from the stream were held back with what routing delivered
// during the import and released after 5..9.
func TestSessionMoveOwnMessagesKeepOrder(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	sub, _ := dialSession(t, nodes[0].addr, "kmover", client.V5)
	subscribe(t, sub, 1, "keep/#")
	pub := dial(t, nodes[1].addr, "kpub", client.V5)
	awaitRoute(t, pub, sub, "keep/probe")
	disconnect(t, sub)

	n2 := nodes[1].node
	publish := func(from, to int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i := from; i < to; i++ {
			if err := pub.Publish(ctx, &client.Message{Topic: "keep/x", QoS: 1, Payload: []byte(strconv.Itoa(i))}); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make(chan error, 2)
	var once1, once2 sync.Once
	released := func(string) error {
		once1.Do(func() { errs <- publish(0, 5) })
		return nil
	}
	importing := func(string) { once2.Do(func() { errs <- publish(5, 10) }) }
	n2.sess.afterRelease.Store(&released)
	n2.sess.beforeImport.Store(&importing)
	moved, present := dialSession(t, nodes[1].addr, "kmover", client.V5)
	n2.sess.afterRelease.Store(nil)
	n2.sess.beforeImport.Store(nil)
	if !present {
		t.Fatal("Session Present 0 on n2")
	}
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatal("a hook did not run")
		}
	}
	receiveInOrder(t, moved, 0, 10)
	expectNone(t, moved, time.Second)
}

// TestLostRecordKeepsOrder: a record of the durable stream that n2's
// consumer sent but that never reached n2 (lost with the consumer's
// leader, or a connection) is read from the stream as soon as the next
// record arrives, and routed before it: the subscriber on n2 gets n1's
// messages in order, without waiting for the consumer to deliver the
// lost one again after its AckWait. Before, that one came 10 s late,
// after the later ones [MQTT-4.6.0-6].
func TestLostRecordKeepsOrder(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	sub := dial(t, nodes[1].addr, "lsub", client.V5)
	subscribe(t, sub, 1, "lost/#")
	pub := dial(t, nodes[0].addr, "lpub", client.V5)
	awaitRoute(t, pub, sub, "lost/probe")
	publishQoS1(t, pub, "lost/x", 0, 3)
	receiveInOrder(t, sub, 0, 3)

	n2 := nodes[1].node
	var once sync.Once
	lost := uint64(0)
	lose := func(seq uint64) (drop bool) {
		once.Do(func() { lost, drop = seq, true })
		return drop
	}
	n2.dur.lose.Store(&lose)
	publishQoS1(t, pub, "lost/x", 3, 10)
	start := time.Now()
	receiveInOrder(t, sub, 3, 10)
	n2.dur.lose.Store(nil)
	if lost == 0 {
		t.Fatal("no record was lost")
	}
	if n2.dur.gapsRead.Load() == 0 {
		t.Fatal("the lost record was not read from the stream")
	}
	if d := time.Since(start); d >= consumerAckWait {
		t.Fatalf("the messages took %v: the lost record waited for the consumer", d)
	}
	// The consumer's delivery again of the lost record is ignored.
	expectNone(t, sub, consumerAckWait+2*time.Second)
}

// countedMsg is a record the consumer delivered, counting its
// acknowledgements.
type countedMsg struct {
	*fetchedRecord
	acks int
}

func (m *countedMsg) Ack() error { m.acks++; return nil }

// TestAckQueueMissing: the sequences a record arrives past are found
// once (missing), within the bound; a record read from the stream is
// routed like a delivered one but never stands for the acknowledgement,
// and one the stream no longer holds is passed over (gone).
func TestAckQueueMissing(t *testing.T) {
	q := newAckQueue()
	rec := func(seq uint64) *fetchedRecord {
		return &fetchedRecord{raw: &jetstream.RawStreamMsg{Sequence: seq}}
	}
	if got := q.missing(1, gapFill); got != nil {
		t.Fatalf("missing before record 1: %v", got)
	}
	m1 := &countedMsg{fetchedRecord: rec(1)}
	q.admit(m1, 1)
	if got := q.missing(5, gapFill); !slices.Equal(got, []seqRange{{2, 4}}) {
		t.Fatalf("missing before record 5: %v", got)
	}
	if got := q.missing(2+gapFill+1, gapFill); got != nil {
		t.Fatalf("a gap past the bound: %v", got)
	}
	q.admit(rec(2), 2)
	q.gone(3, 3)
	q.admit(rec(4), 4)
	m5 := &countedMsg{fetchedRecord: rec(5)}
	q.admit(m5, 5)
	if got := q.missing(6, gapFill); got != nil {
		t.Fatalf("missing before record 6: %v", got)
	}
	q.finish(1, true)
	q.finish(2, true)
	q.finish(4, true)
	q.flush()
	if q.floor != 4 || m1.acks != 1 {
		t.Fatalf("floor %d, record 1 acknowledged %d times; want 4, 1", q.floor, m1.acks)
	}
	if q.admit(rec(2), 2) {
		t.Fatal("record 2, covered, admitted again")
	}
	q.finish(5, true)
	q.flush()
	if q.floor != 5 || m5.acks != 1 {
		t.Fatalf("floor %d, record 5 acknowledged %d times; want 5, 1", q.floor, m5.acks)
	}
}

// TestAckQueueUnrouted: the sequences after the floor up to a
// consumer's floor that were never delivered here are found, in runs,
// once bind ran, within the bound; none before bind (an earlier run's
// floor) or at a floor not past this one.
func TestAckQueueUnrouted(t *testing.T) {
	t.Parallel()
	q := newAckQueue()
	rec := func(seq uint64) *fetchedRecord {
		return &fetchedRecord{raw: &jetstream.RawStreamMsg{Sequence: seq}}
	}
	if got := q.unrouted(10, gapFill); got != nil {
		t.Fatalf("before bind: %v", got)
	}
	q.bind(&jetstream.ConsumerInfo{AckFloor: jetstream.SequenceInfo{Stream: 2}})
	q.admit(rec(3), 3)
	q.admit(rec(6), 6)
	if got := q.unrouted(7, gapFill); !slices.Equal(got, []seqRange{{4, 5}, {7, 7}}) {
		t.Fatalf("up to 7: %v", got)
	}
	if got := q.unrouted(2, gapFill); got != nil {
		t.Fatalf("at the floor: %v", got)
	}
	if got := q.unrouted(2+gapFill+1, gapFill); got != nil {
		t.Fatalf("past the bound: %v", got)
	}
}
