package cluster

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ackTestStream creates, on the common cluster of three nodes, a
// stream of the test's own (ackTestName), removed when the test ends,
// and a consumer with cumulative acknowledgements as the nodes'
// consumers have, with a short AckWait.
func ackTestStream(t *testing.T) (jetstream.JetStream, jetstream.Stream, jetstream.Consumer) {
	t.Helper()
	nodes := commonCluster(t)
	js, err := jetstream.New(nodes[0].node.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	name := ackTestName(t)
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	removeStreamAtEnd(t, js, name)
	c, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckAllPolicy,
		AckWait: time.Second, MaxDeliver: -1})
	if err != nil {
		t.Fatal(err)
	}
	return js, st, c
}

// removeStreamAtEnd removes the stream name when t ends: the common
// cluster keeps no test's stream.
func removeStreamAtEnd(t *testing.T, js jetstream.JetStream, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := js.DeleteStream(ctx, name); err != nil {
			t.Logf("removing the stream %s: %v", name, err)
		}
	})
}

// ackTestName names the stream of ackTestStream, and the first token of
// its subjects, after the test: each test on the common cluster has its
// own.
func ackTestName(t *testing.T) string {
	return "acktest_" + strings.ReplaceAll(t.Name(), "/", "_")
}

func publishAckTest(t *testing.T, js jetstream.JetStream, from, to int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := from; i < to; i++ {
		if _, err := js.Publish(ctx, ackTestName(t)+".x", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
}

func ackInfo(t *testing.T, c jetstream.Consumer) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ci, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ci
}

// fetch reads up to n records of c, waiting at most wait.
func fetch(t *testing.T, c jetstream.Consumer, n int, wait time.Duration) []jetstream.Msg {
	t.Helper()
	var out []jetstream.Msg
	deadline := time.Now().Add(wait)
	for len(out) < n && time.Now().Before(deadline) {
		b, err := c.Fetch(n-len(out), jetstream.FetchMaxWait(time.Until(deadline)))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			out = append(out, m)
		}
	}
	return out
}

func streamSeq(t *testing.T, m jetstream.Msg) uint64 {
	t.Helper()
	meta, err := m.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	return meta.Sequence.Stream
}

// TestCumulativeAcksRedeliveredAfterCrash: records finished out of order
// are covered only up to the first unfinished one; a node that dies with
// records delivered and not all finished gets every uncovered one again
// when it comes back, before it covers anything past them, and a
// sequence missing from the stream does not hold the floor.
func TestCumulativeAcksRedeliveredAfterCrash(t *testing.T) {
	js, st, c := ackTestStream(t)
	publishAckTest(t, js, 1, 11)

	// First run: records 2..10 finished, record 1 still being delivered
	// when the node dies.
	q := newAckQueue()
	q.bind(ackInfo(t, c))
	ms := fetch(t, c, 10, 10*time.Second)
	if len(ms) != 10 {
		t.Fatalf("fetched %d of 10", len(ms))
	}
	for _, m := range ms {
		if !q.admit(m, streamSeq(t, m)) {
			t.Fatal("first delivery not admitted")
		}
	}
	for _, m := range ms[1:] {
		q.finish(streamSeq(t, m), true)
	}
	q.flush()
	time.Sleep(200 * time.Millisecond) // acknowledgements are not answered; give one time to arrive
	if ci := ackInfo(t, c); ci.AckFloor.Stream != 0 || ci.NumAckPending != 10 {
		t.Fatalf("covered past an unfinished record: floor %d, pending %d", ci.AckFloor.Stream, ci.NumAckPending)
	}

	// The node comes back; meanwhile 11..15 were published, and 13 is
	// gone from the stream.
	publishAckTest(t, js, 11, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.DeleteMsg(ctx, 13); err != nil {
		t.Fatal(err)
	}
	q = newAckQueue()
	q.bind(ackInfo(t, c))
	runAcks(t, q, c, st) // passes over 13 once the stream reports it gone
	got := map[uint64]int{}
	var order []uint64
	for len(got) < 14 {
		ms := fetch(t, c, 15, 10*time.Second)
		if len(ms) == 0 {
			t.Fatalf("records delivered: %v", order)
		}
		for _, m := range ms {
			seq := streamSeq(t, m)
			order = append(order, seq)
			if q.admit(m, seq) {
				got[seq]++
				q.finish(seq, true)
			}
		}
		q.flush()
		if len(got) == 4 {
			// Only the new ones so far: nothing before them is covered.
			time.Sleep(200 * time.Millisecond)
			if ci := ackInfo(t, c); ci.AckFloor.Stream != 0 {
				t.Fatalf("covered %d before the records of the first run came again", ci.AckFloor.Stream)
			}
		}
	}
	for seq := uint64(1); seq <= 15; seq++ {
		if seq != 13 && got[seq] != 1 {
			t.Fatalf("record %d routed %d times (deliveries %v)", seq, got[seq], order)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ci := ackInfo(t, c)
		if ci.AckFloor.Stream == 15 && ci.NumAckPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("floor %d, pending %d after everything was finished", ci.AckFloor.Stream, ci.NumAckPending)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCumulativeAcksFailedRecordHoldsFloor: a record whose delivery
// failed is asked again, and nothing past it is covered until it is
// finished.
func TestCumulativeAcksFailedRecordHoldsFloor(t *testing.T) {
	js, _, c := ackTestStream(t)
	publishAckTest(t, js, 1, 4)
	q := newAckQueue()
	q.bind(ackInfo(t, c))
	ms := fetch(t, c, 3, 10*time.Second)
	if len(ms) != 3 {
		t.Fatalf("fetched %d of 3", len(ms))
	}
	for _, m := range ms {
		q.admit(m, streamSeq(t, m))
	}
	q.finish(2, false)
	q.finish(1, true)
	q.finish(3, true)
	q.flush()
	// Record 3, finished and not covered, may come again too (AckWait):
	// it is not routed again.
	var again jetstream.Msg
	for again == nil {
		ms := fetch(t, c, 1, 10*time.Second)
		if len(ms) != 1 {
			t.Fatal("failed record not delivered again")
		}
		switch seq := streamSeq(t, ms[0]); seq {
		case 2:
			again = ms[0]
		case 3:
			if q.admit(ms[0], 3) {
				t.Fatal("a finished record was routed again")
			}
		default:
			t.Fatalf("record %d delivered again", seq)
		}
	}
	if ci := ackInfo(t, c); ci.AckFloor.Stream != 1 {
		t.Fatalf("floor %d with record 2 unfinished, want 1", ci.AckFloor.Stream)
	}
	if !q.admit(again, 2) {
		t.Fatal("delivery again of a failed record not admitted")
	}
	q.finish(2, true)
	q.flush()
	deadline := time.Now().Add(10 * time.Second)
	for ackInfo(t, c).AckFloor.Stream != 3 {
		if time.Now().After(deadline) {
			t.Fatal("floor did not reach 3")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestConsumerUpgradeFromExplicitAcks: a node's consumer created by an
// earlier build (AckExplicit) is replaced by one with cumulative
// acknowledgements starting right after its acknowledgement floor, also
// when the node stopped in the middle of the replacement; a consumer
// already replaced is kept as it is.
func TestConsumerUpgradeFromExplicitAcks(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	js, err := jetstream.New(nodes[0].node.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, streamMsgs)
	if err != nil {
		t.Fatal(err)
	}
	// Records the running node reads as malformed: only their positions
	// matter here.
	var seqs []uint64
	for i := range 6 {
		ack, err := js.Publish(ctx, durablePrefix+"upgrade-test", []byte(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, ack.Sequence)
	}
	old := &Node{cfg: Config{Node: "old"}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), started: time.Now()}
	oldConfig := jetstream.ConsumerConfig{Durable: old.consumerName(), DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq: seqs[0], AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, MaxDeliver: -1,
		FilterSubject: durablePrefix + ">"}
	oc, err := st.CreateConsumer(ctx, oldConfig)
	if err != nil {
		t.Fatal(err)
	}
	// The earlier build acknowledged the first three records and the
	// fifth.
	ms := fetch(t, oc, 6, 10*time.Second)
	if len(ms) != 6 {
		t.Fatalf("fetched %d of 6", len(ms))
	}
	for _, i := range []int{0, 1, 2, 4} {
		if err := ms[i].DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if ci := ackInfo(t, oc); ci.AckFloor.Stream != seqs[2] {
		t.Fatalf("old consumer's floor %d, want %d", ci.AckFloor.Stream, seqs[2])
	}

	check := func(stage string, c jetstream.Consumer) {
		t.Helper()
		ci := c.CachedInfo()
		if ci.Config.AckPolicy != jetstream.AckAllPolicy {
			t.Fatalf("%s: ack policy %v", stage, ci.Config.AckPolicy)
		}
		if _, err := st.Consumer(ctx, old.upgradeName()); err != jetstream.ErrConsumerNotFound {
			t.Fatalf("%s: upgrade consumer left: %v", stage, err)
		}
		ms := fetch(t, c, 1, 10*time.Second)
		if len(ms) != 1 || streamSeq(t, ms[0]) != seqs[3] {
			t.Fatalf("%s: first record after the upgrade is not the one after the floor (%d)", stage, seqs[3])
		}
	}
	c, err := old.bindConsumer(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	check("upgrade", c)
	// Started again: the consumer stays (its position with it).
	c2, err := old.bindConsumer(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if c2.CachedInfo().Created != c.CachedInfo().Created {
		t.Fatal("an upgraded consumer was created again")
	}

	// Stopped after the upgrade consumer took the position, with the
	// old consumer still there, and after it was deleted.
	for _, deleteOld := range []bool{false, true} {
		if err := st.DeleteConsumer(ctx, old.consumerName()); err != nil {
			t.Fatal(err)
		}
		if !deleteOld {
			oldConfig.DeliverPolicy, oldConfig.OptStartSeq = jetstream.DeliverAllPolicy, 0 // a different position: the upgrade consumer's wins
			if _, err := st.CreateConsumer(ctx, oldConfig); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.CreateConsumer(ctx, old.consumerConfig(old.upgradeName(),
			jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: seqs[3]})); err != nil {
			t.Fatal(err)
		}
		c, err := old.bindConsumer(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		check("resumed upgrade", c)
	}
}

// ackLimitStream creates, on the common cluster of three nodes, a
// stream of the test's own (ackTestName), removed when the test ends,
// replicated on all three that keeps at most maxMsgs records (as the
// durable stream's MaxAge and MaxBytes keep the newest), and a consumer
// configured as the nodes' consumers are, with a short AckWait.
func ackLimitStream(t *testing.T, maxMsgs int64) (jetstream.JetStream, jetstream.Stream, jetstream.Consumer) {
	t.Helper()
	nodes := commonCluster(t)
	js, err := jetstream.New(nodes[0].node.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	name := ackTestName(t)
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}, Storage: jetstream.FileStorage,
		Replicas: 3, MaxMsgs: maxMsgs, Discard: jetstream.DiscardOld, Retention: jetstream.LimitsPolicy})
	if err != nil {
		t.Fatal(err)
	}
	removeStreamAtEnd(t, js, name)
	c, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckAllPolicy,
		AckWait: time.Second, MaxDeliver: -1, MaxAckPending: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	return js, st, c
}

// runAcks runs q.run as the node does, until the test ends.
func runAcks(t *testing.T, q *ackQueue, c jetstream.Consumer, st jetstream.Stream) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); q.run(ctx, c, st) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitFloor waits until the consumer's acknowledgement floor is floor
// with nothing pending.
func waitFloor(t *testing.T, c jetstream.Consumer, floor uint64, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ci := ackInfo(t, c)
		if ci.AckFloor.Stream == floor && ci.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: floor %d, pending %d; want floor %d, nothing pending", what, ci.AckFloor.Stream, ci.NumAckPending, floor)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// routeAll fetches the records want, in any order, admitting and
// finishing each; a record outside want, or one routed twice, fails the
// test.
func routeAll(t *testing.T, q *ackQueue, c jetstream.Consumer, want ...uint64) {
	t.Helper()
	left := map[uint64]bool{}
	for _, seq := range want {
		left[seq] = true
	}
	for len(left) > 0 {
		ms := fetch(t, c, len(left), 10*time.Second)
		if len(ms) == 0 {
			t.Fatalf("records %v not delivered", left)
		}
		for _, m := range ms {
			seq := streamSeq(t, m)
			if !q.admit(m, seq) {
				continue
			}
			if !left[seq] {
				t.Fatalf("record %d routed, want %v", seq, want)
			}
			delete(left, seq)
			q.finish(seq, true)
		}
	}
}

// TestCumulativeAcksRecordsLeavingStream: records removed from the
// stream by its limits or a purge while this node had them pending (a
// node that died before acknowledging them, a record whose delivery
// failed) do not stall the consumer: the server takes them out of the
// consumer's pending records and raises its acknowledgement floor, and
// the node moves on to the records after them without skipping one.
func TestCumulativeAcksRecordsLeavingStream(t *testing.T) {
	js, st, c := ackLimitStream(t, 5)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A node reads records 1..5 and dies before finishing any.
	publishAckTest(t, js, 1, 6)
	q := newAckQueue()
	q.bind(ackInfo(t, c))
	if ms := fetch(t, c, 5, 10*time.Second); len(ms) != 5 {
		t.Fatalf("fetched %d of 5", len(ms))
	} else {
		for _, m := range ms {
			q.admit(m, streamSeq(t, m))
		}
	}
	// 6..10 push 1..5 out of the stream while they are pending.
	publishAckTest(t, js, 6, 11)
	// The server counts them as acknowledged by itself.
	waitFloor(t, c, 5, "records pending at a node that died, pushed out by the limits (server)")
	q = newAckQueue()
	q.bind(ackInfo(t, c))
	runAcks(t, q, c, st)
	routeAll(t, q, c, 6, 7, 8, 9, 10)
	waitFloor(t, c, 10, "records pending at a node that died, pushed out by the limits")

	// The delivery of record 11 fails; 11..15 are pushed out before it
	// is delivered again.
	publishAckTest(t, js, 11, 16)
	ms := fetch(t, c, 5, 10*time.Second)
	if len(ms) != 5 {
		t.Fatalf("fetched %d of 5", len(ms))
	}
	for _, m := range ms {
		seq := streamSeq(t, m)
		q.admit(m, seq)
		q.finish(seq, seq != 11)
	}
	publishAckTest(t, js, 16, 21)
	waitFloor(t, c, 15, "a failed record pushed out by the limits (server)")
	routeAll(t, q, c, 16, 17, 18, 19, 20)
	waitFloor(t, c, 20, "a failed record pushed out by the limits")

	// Record 21 is being delivered and 22 failed when the stream is
	// purged.
	publishAckTest(t, js, 21, 24)
	ms = fetch(t, c, 3, 10*time.Second)
	if len(ms) != 3 {
		t.Fatalf("fetched %d of 3", len(ms))
	}
	for _, m := range ms {
		q.admit(m, streamSeq(t, m))
	}
	q.finish(22, false)
	q.finish(23, true)
	if err := st.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	waitFloor(t, c, 23, "records pending when the stream was purged (server)")
	publishAckTest(t, js, 24, 27)
	routeAll(t, q, c, 24, 25, 26)
	q.finish(21, true) // after the purge: covered already
	waitFloor(t, c, 26, "records pending when the stream was purged")
}

// TestCumulativeAcksRecordLostInTransit: a record the consumer delivered
// that never reached the node (a pull request of a reader that was
// stopped, a connection cut) and that is still in the stream is not
// skipped when a later one arrives: it is delivered again after the
// AckWait, and only then covered.
func TestCumulativeAcksRecordLostInTransit(t *testing.T) {
	js, st, c := ackLimitStream(t, 100)
	publishAckTest(t, js, 1, 4)
	q := newAckQueue()
	q.bind(ackInfo(t, c))
	runAcks(t, q, c, st)
	ms := fetch(t, c, 3, 10*time.Second)
	if len(ms) != 3 {
		t.Fatalf("fetched %d of 3", len(ms))
	}
	// Records 1 and 2 are lost on their way; 3 arrives.
	if !q.admit(ms[2], 3) {
		t.Fatal("record 3 not admitted")
	}
	q.finish(3, true)
	q.flush()
	time.Sleep(3 * ackCheck) // the checks of a stalled floor run meanwhile
	if ci := ackInfo(t, c); ci.AckFloor.Stream != 0 {
		t.Fatalf("floor %d: records 1 and 2, never routed, were covered", ci.AckFloor.Stream)
	}
	routeAll(t, q, c, 1, 2)
	waitFloor(t, c, 3, "records lost in transit delivered again")
}

// TestSlowNodeRedeliveriesBounded: a node slower than its consumer's
// AckWait (its commits slow) gets the records it has not acknowledged
// delivered again, while it is still routing them. Each is ignored
// (admit) without being routed twice; the consumer delivers again at
// most the records outstanding, once per AckWait, and nothing new while
// MaxAckPending are outstanding. Here the node's consumer configuration
// is scaled down (AckWait 1 s, MaxAckPending 8, of 10 s and 65,536).
func TestSlowNodeRedeliveriesBounded(t *testing.T) {
	js, st, _ := ackTestStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := (&Node{}).consumerConfig("slow", jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	cfg.FilterSubject, cfg.AckWait, cfg.MaxAckPending = ackTestName(t)+".>", time.Second, 8
	c, err := st.CreateConsumer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	publishAckTest(t, js, 1, 41)

	q := newAckQueue()
	q.bind(ackInfo(t, c))
	routed := map[uint64]int{}
	deliveries := 0
	var held []uint64 // admitted, not finished: the slow node's commits
	read := func(wait time.Duration) {
		b, err := c.Fetch(16, jetstream.FetchMaxWait(wait))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			deliveries++
			seq := streamSeq(t, m)
			if q.admit(m, seq) {
				routed[seq]++
				held = append(held, seq)
			}
		}
	}
	// For 3.5 AckWaits nothing is finished.
	for start := time.Now(); time.Since(start) < 3500*time.Millisecond; {
		read(500 * time.Millisecond)
	}
	if len(routed) != 8 {
		t.Fatalf("%d records routed while 8 were outstanding; want 8", len(routed))
	}
	// 8 first deliveries, and at most 8 again per AckWait (4 of them).
	if deliveries <= 8 || deliveries > 8+4*8 {
		t.Fatalf("%d deliveries of 8 records outstanding for 3.5 AckWaits; want 9..40", deliveries)
	}
	// The commits end: everything is routed once.
	for len(routed) < 40 {
		for _, seq := range held {
			q.finish(seq, true)
		}
		held = held[:0]
		q.flush()
		read(200 * time.Millisecond)
		if ctx.Err() != nil {
			t.Fatalf("%d of 40 records routed", len(routed))
		}
	}
	for seq, k := range routed {
		if k != 1 {
			t.Fatalf("record %d routed %d times", seq, k)
		}
	}
}
