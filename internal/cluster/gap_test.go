package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// TestAckQueueMissingRuns: the sequences missing before a record come
// as runs, without the ones between them that are being routed or
// known gone, so that no record is routed twice.
func TestAckQueueMissingRuns(t *testing.T) {
	t.Parallel()
	q := newAckQueue()
	q.admit(&fetchedRecord{raw: &jetstream.RawStreamMsg{Sequence: 1}}, 1)
	q.gone(3, 3)
	q.gone(6, 7)
	want := []seqRange{{2, 2}, {4, 5}, {8, 9}}
	if got := q.missing(10, gapFill); !slices.Equal(got, want) {
		t.Fatalf("missing before record 10: %v, want %v", got, want)
	}
	// Gone records below the floor are not kept.
	q.finish(1, true)
	q.gone(1, 2)
	if q.floor != 3 || len(q.entries) != 2 {
		t.Fatalf("floor %d with %d entries; want 3 with 2 (6 and 7)", q.floor, len(q.entries))
	}
}

// gapCounts are the counters of a node's readings of gaps.
type gapCounts struct{ read, batches, gets uint64 }

func gapCountsOf(n *Node) gapCounts {
	return gapCounts{n.dur.gapsRead.Load(), n.dur.acks.gapBatches.Load(), n.dur.acks.gapGets.Load()}
}

func (c gapCounts) since(before gapCounts) gapCounts {
	return gapCounts{c.read - before.read, c.batches - before.batches, c.gets - before.gets}
}

// writeGap has reader's consumer lose the next count records of
// moat_msgs on their way (loseNext), then writes count+1 records
// through writer, each a batch of one message on topic with the
// payloads 0 to count, from origin (no node's run): the last one
// arrives past count records never delivered. It returns the stream
// sequences of the first and the last record.
func writeGap(t testing.TB, writer, reader *Node, origin, topic string, count int) (first, last uint64) {
	t.Helper()
	base := loseNext(t, writer, reader, count)
	first, last = writeRecords(t, writer, origin, topic, 0, count+1)
	if first != base || last != base+uint64(count) {
		t.Fatalf("records at %d to %d, want %d to %d: another record went between", first, last, base, base+uint64(count))
	}
	return first, last
}

// loseNext has reader's consumer lose the next count records of
// moat_msgs on their way (dur.lose), every time they are delivered,
// until the test ends. It returns the sequence of the first.
func loseNext(t testing.TB, writer, reader *Node, count int) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := writer.msgStream().Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	base := info.State.LastSeq
	lose := func(seq uint64) bool { return seq > base && seq <= base+uint64(count) }
	reader.dur.lose.Store(&lose)
	t.Cleanup(func() { reader.dur.lose.Store(nil) })
	return base + 1
}

// writeRecords writes, through writer, the records of the payloads from
// to to-1, each a batch of one message on topic from origin (no node's
// run), with the sequence number of its payload plus one. It returns
// the stream sequences of the first and the last record.
func writeRecords(t testing.TB, writer *Node, origin, topic string, from, to int) (first, last uint64) {
	t.Helper()
	// Every record outstanding at once: no stall past the default 4,000.
	js, err := jetstream.New(writer.nc, jetstream.WithPublishAsyncMaxPending(to-from+1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var acks []jetstream.PubAckFuture
	for i := from; i < to; i++ {
		m := batchRecord(origin, []*fwdMsg{fwdOf(t, uint64(i+1), topic, strconv.Itoa(i), "pub")})
		a, err := js.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, a)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("records not acknowledged within 60 s")
	}
	for i, a := range acks {
		select {
		case ack := <-a.Ok():
			if i == 0 {
				first = ack.Sequence
			}
			last = ack.Sequence
		case err := <-a.Err():
			t.Fatal(err)
		}
	}
	return first, last
}

// TestGapReadInBatches: n2's consumer loses 600 records on their way
// (more than the 512 read one by one before) and delivers the next
// one: n2 reads the 600 from the stream in a few batches of direct
// gets, not one get of the leader per record, and its subscriber gets
// all 601 messages in their order, without waiting for the consumer to
// deliver the lost ones again [MQTT-4.6.0-6].
func TestGapReadInBatches(t *testing.T) {
	t.Parallel()
	const count = 600
	nodes := startCluster(t, 3)
	// The reading of awaitDirect tries to set AllowDirect once a
	// minute: not before every node's marker is seen.
	testutil.WaitFor(t, "every node's direct marker", 30*time.Second, nodes[0].node.directOK)
	awaitDirect(t, nodes)
	n2 := nodes[1].node
	// What is checked is the number of requests, not the time: 600
	// records took from 0.3 to more than 2 s (gapWait) under the race
	// detector beside other builds.
	n2.dur.acks.gapWait.Store(int64(time.Minute))
	sub := dial(t, nodes[1].addr, "gsub", client.V5)
	subscribe(t, sub, 1, "gap/#")
	before := gapCountsOf(n2)
	writeGap(t, nodes[0].node, n2, "elsewhere/gap", "gap/x", count)
	// The lost records are never delivered again (writeGap): each one
	// the subscriber gets was read from the stream.
	receiveInOrder(t, sub, 0, count+1)
	got := gapCountsOf(n2).since(before)
	t.Logf("%d records read from the stream: %d batches, %d gets of the leader", got.read, got.batches, got.gets)
	if got.read != count {
		t.Fatalf("%d records read from the stream, want %d", got.read, count)
	}
	// 32, 64, 128, 256, then the 120 left: 5 batches. A replica that
	// lags by a few records has them read from the leader, one get
	// each: far fewer than one per record all the same.
	if got.batches > 8 || got.batches+got.gets > count/20 {
		t.Fatalf("%d batches and %d gets for %d records", got.batches, got.gets, count)
	}
}

// TestGapStaleReplica: the records of a gap that the replica answering
// direct gets lacks are read from the stream's leader, never taken for
// gone. As in TestReplayReadStaleReplica, the stream's own direct gets
// are off and the test answers them (fakeReplica): as a replica that
// has applied the gap's records up to its middle (stale), none of them
// (empty), all but the one in the middle (hole: a record a replica
// passes over in a batch, which the leader still has), or not at all
// (none). Each time, n2's subscriber gets every message in order, and
// n2 asked the leader for what the replica lacked.
func TestGapStaleReplica(t *testing.T) {
	t.Parallel()
	const count = 100
	nodes := startCluster(t, 3)
	tn := nodes[1]
	// The readings do not set AllowDirect; the time they take is not
	// checked (TestGapReadInBatches).
	quietDirect(t, nodes)
	tn.node.dur.acks.gapWait.Store(int64(time.Minute))
	disallowDirect(t, tn.node)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub := dial(t, tn.addr, "gstale", client.V5)
	subscribe(t, sub, 1, "gap/#")
	for i, tc := range []struct {
		name    string
		answers bool
		// has tells whether the test replica holds the lost record
		// at offset k (0 to count-1).
		has func(k uint64) bool
		// leader: the most records read from the leader.
		leader uint64
	}{
		{"stale", true, func(k uint64) bool { return k < count/2 }, count / 2},
		{"empty", true, func(uint64) bool { return false }, count},
		{"hole", true, func(k uint64) bool { return k != count/2 }, 1},
		{"none", false, nil, count},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, origin, topic := nodes[0].node, "elsewhere/stale"+strconv.Itoa(i), "gap/"+tc.name
			before := gapCountsOf(tn.node)
			base := loseNext(t, w, tn.node, count)
			first, last := writeRecords(t, w, origin, topic, 0, count)
			if first != base || last != base+count-1 {
				t.Fatalf("records at %d to %d, want %d to %d: another record went between", first, last, base, base+count-1)
			}
			if !tc.answers {
				testutil.WaitFor(t, "direct gets not to be answered", 10*time.Second, func() bool {
					_, err := tn.node.nc.Request("$JS.API.DIRECT.GET."+streamMsgs, nil, time.Second)
					return errors.Is(err, nats.ErrNoResponders)
				})
			} else {
				// The test replica holds what it has of the lost
				// records, as the leader has them.
				var held []*jetstream.RawStreamMsg
				for k := range uint64(count) {
					if !tc.has(k) {
						continue
					}
					m, err := tn.node.msgRecord(ctx, base+k)
					if err != nil {
						t.Fatal(err)
					}
					held = append(held, m)
				}
				rsub := fakeReplica(t, tn, held)
				defer func() { _ = rsub.Unsubscribe() }()
				testutil.WaitFor(t, "the test replica to answer", 10*time.Second, func() bool { return directGetsAnswered(tn, true) })
			}
			// The record after them: tn reads the lost ones.
			writeRecords(t, w, origin, topic, count, count+1)
			receiveInOrder(t, sub, 0, count+1)
			got := gapCountsOf(tn.node).since(before)
			t.Logf("%d records read: %d batches, %d gets of the leader", got.read, got.batches, got.gets)
			if got.read != count {
				t.Fatalf("%d records read from the stream, want %d", got.read, count)
			}
			if got.gets == 0 {
				t.Fatal("nothing read from the leader")
			}
			// A get per record the replica lacks, and one more for a
			// batch that went past one (hole), or to look for records
			// after the last.
			if got.gets > tc.leader+2 {
				t.Fatalf("%d gets of the leader, want at most %d", got.gets, tc.leader+2)
			}
		})
	}
}

// fakeReplica answers, on tn's connection, the direct gets of moat_msgs
// in batches (from a sequence, every subject) as a replica that holds
// the records held (in stream order) and no others would: those from
// the sequence asked, each with the number it holds after it, then the
// end of the batch; "not found" when it holds none from there. Requests
// without a batch size are refused.
func fakeReplica(t *testing.T, tn *testNode, held []*jetstream.RawStreamMsg) *nats.Subscription {
	t.Helper()
	nc := tn.node.gc // not NoEcho, unlike nc
	sub, err := nc.Subscribe("$JS.API.DIRECT.GET."+streamMsgs, func(req *nats.Msg) {
		var r server.JSApiMsgGetRequest
		if err := json.Unmarshal(req.Data, &r); err != nil || r.Batch == 0 {
			refused := nats.NewMsg(req.Reply)
			refused.Header.Set("Status", "408")
			refused.Header.Set("Description", "test replica")
			_ = nc.PublishMsg(refused)
			return
		}
		from, _ := slices.BinarySearchFunc(held, r.Seq, func(m *jetstream.RawStreamMsg, seq uint64) int {
			return cmp.Compare(m.Sequence, seq)
		})
		rest := held[from:]
		var prev uint64
		for i, m := range rest[:min(len(rest), r.Batch)] {
			out := nats.NewMsg(req.Reply)
			for k, v := range m.Header {
				out.Header[k] = v
			}
			out.Header.Set(jetstream.StreamHeader, streamMsgs)
			out.Header.Set(jetstream.SubjectHeader, m.Subject)
			out.Header.Set(jetstream.SequenceHeader, strconv.FormatUint(m.Sequence, 10))
			out.Header.Set("Nats-Time-Stamp", m.Time.UTC().Format(time.RFC3339Nano))
			out.Header.Set(server.JSNumPending, strconv.Itoa(len(rest)-i-1))
			out.Header.Set(server.JSLastSequence, strconv.FormatUint(prev, 10))
			out.Data = m.Data
			_ = nc.PublishMsg(out)
			prev = m.Sequence
		}
		end := nats.NewMsg(req.Reply)
		if len(rest) == 0 {
			end.Header.Set("Status", "404")
			end.Header.Set("Description", "Message Not Found")
		} else {
			end.Header.Set("Status", "204")
			end.Header.Set("Description", "EOB")
		}
		_ = nc.PublishMsg(end)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

// BenchmarkGapFill: n2's consumer loses a gap of records (their
// delivery dropped), then the next record is written; an operation is
// that write and n2's routing of it, the gap read from the stream
// first, to no session (the records' topic has no subscriber). In
// batches of direct gets (direct), and as the gap was read before, one
// get of the stream's leader per record (leader, AllowDirect off; the
// old bound of 512).
func BenchmarkGapFill(b *testing.B) {
	nodes := startBenchCluster(b)
	w, n2 := nodes[0].node, nodes[1].node
	testutil.WaitFor(b, "every node's direct marker", 30*time.Second, n2.directOK)
	n2.allowDirect()
	testutil.WaitFor(b, "direct gets to be answered", 30*time.Second, func() bool {
		_, err := n2.nc.Request("$JS.API.DIRECT.GET."+streamMsgs, nil, time.Second)
		return err == nil
	})
	run := 0
	fill := func(b *testing.B, size int) {
		start := gapCountsOf(n2)
		for range b.N {
			b.StopTimer()
			run++
			origin := "elsewhere/bench" + strconv.Itoa(run)
			loseNext(b, w, n2, size)
			received := n2.dur.received.Load()
			writeRecords(b, w, origin, "bench/x", 0, size)
			testutil.WaitFor(b, "the gap's records to be delivered (and lost)", 60*time.Second, func() bool {
				return n2.dur.received.Load() >= received+uint64(size)
			})
			before := n2.dur.gapsRead.Load()
			b.StartTimer()
			_, last := writeRecords(b, w, origin, "bench/x", size, size+1)
			deadline := time.Now().Add(gapWait + 5*time.Second)
			for n2.dur.acks.floorOf() < last && time.Now().Before(deadline) {
				time.Sleep(100 * time.Microsecond)
			}
			b.StopTimer()
			n2.dur.lose.Store(nil)
			if got := n2.dur.gapsRead.Load() - before; got != uint64(size) {
				c := gapCountsOf(n2).since(start)
				b.Fatalf("%d records of a gap of %d read from the stream (%d batches, %d gets of the leader)", got, size, c.batches, c.gets)
			}
		}
		got := gapCountsOf(n2).since(start)
		b.ReportMetric(float64(got.batches+got.gets)/float64(b.N), "requests/op")
	}
	for _, size := range []int{512, 2048, gapFill} {
		b.Run("direct/"+strconv.Itoa(size), func(b *testing.B) { fill(b, size) })
	}
	quietDirect(b, nodes)
	disallowDirect(b, n2)
	b.Run("leader/512", func(b *testing.B) { fill(b, 512) })
}

// floorOf returns q's acknowledgement floor.
func (q *ackQueue) floorOf() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.floor
}

// TestConsumerFloorPastUnroutedRecord: n2's consumer counts as
// acknowledged a record n2 never routed (as when its leader died
// delivering it and the new leader's state had it neither pending nor
// unacknowledged: an outside kill series lost 2 acknowledged messages
// so). n2 reads such records from the stream and routes them before it
// takes that floor (routeUnrouted, run where n2's consumer loop reads
// the floor again), and its subscriber gets the message. The record is
// lost on its way to n2 every time, so that only that reading brings it.
func TestConsumerFloorPastUnroutedRecord(t *testing.T) {
	const topic = "unrouted/x"
	// A run of its own: the nodes of the common cluster keep the IDs of
	// the messages they delivered.
	origin := "unrouted/" + strconv.FormatInt(time.Now().UnixNano(), 10)
	nodes := commonCluster(t)
	writer, reader := nodes[0].node, nodes[1].node
	sub := dial(t, nodes[1].addr, "unrouted-sub", client.V5)
	subscribe(t, sub, 1, "unrouted/#")
	pub := dial(t, nodes[0].addr, "unrouted-pub", client.V5)
	awaitRoute(t, pub, sub, "unrouted/probe")
	writeRecords(t, writer, origin, topic, 0, 1)
	receiveInOrder(t, sub, 0, 1)
	loseNext(t, writer, reader, 1)
	_, last := writeRecords(t, writer, origin, topic, 1, 2)
	expectNone(t, sub, 300*time.Millisecond)
	before := reader.Status().StreamUnrouted
	reader.routeUnrouted(last)
	receiveInOrder(t, sub, 1, 2)
	if got := reader.Status().StreamUnrouted - before; got != 1 {
		t.Fatalf("records read as never routed: %d, want 1", got)
	}

	// A reading that fails is tried again, not passed over: the record
	// would be lost for good.
	loseNext(t, writer, reader, 1)
	_, last = writeRecords(t, writer, origin, topic, 2, 3)
	var fails atomic.Int32
	fails.Store(1)
	fail := func() error {
		if fails.Add(-1) >= 0 {
			return errors.New("the stream cannot be read (test)")
		}
		return nil
	}
	reader.dur.acks.gapFail.Store(&fail)
	t.Cleanup(func() { reader.dur.acks.gapFail.Store(nil) })
	retried := reader.dur.acks.gapRetries.Load()
	reader.routeUnrouted(last)
	receiveInOrder(t, sub, 2, 3)
	if got := reader.dur.acks.gapRetries.Load() - retried; got != 1 {
		t.Fatalf("%d readings tried again, want 1", got)
	}
}

// TestGapUnreadableHoldsLater: n2's consumer loses 5 records on their
// way and delivers the next one while the stream cannot be read (its
// readings fail, as when the stream has no leader): n2 holds the record
// that arrived and tries the reading again until it works, so its
// subscriber gets all 6 messages in their order [MQTT-4.6.0-6]; before,
// the record that arrived was routed at once and the 5 were left to the
// consumer's delivery again, 10 s later, after it. A node whose routing
// is paused as a reading fails (cut off) routes neither the gap nor the
// record until it resumes. Past gapHold (here 300 ms) the reader gives
// up as before: the record that arrived is routed, and the lost ones are
// left to the consumer.
func TestGapUnreadableHoldsLater(t *testing.T) {
	t.Parallel()
	const count = 5
	nodes := startCluster(t, 3)
	n2 := nodes[1].node
	n2.dur.acks.gapWait.Store(int64(time.Minute))
	sub := dial(t, nodes[1].addr, "gunread", client.V5)
	subscribe(t, sub, 1, "gap/#")
	unreadable := errors.New("the stream cannot be read (test)")
	fails := 3
	fail := func() error {
		if fails > 0 { // the consumer's reader only
			fails--
			return unreadable
		}
		return nil
	}
	n2.dur.acks.gapFail.Store(&fail)
	t.Cleanup(func() { n2.dur.acks.gapFail.Store(nil) })
	retried := n2.dur.acks.gapRetries.Load()
	writeGap(t, nodes[0].node, n2, "elsewhere/unread", "gap/held", count)
	receiveInOrder(t, sub, 0, count+1)
	if got := n2.dur.acks.gapRetries.Load() - retried; got != 3 {
		t.Fatalf("%d readings tried again, want 3", got)
	}

	// The node cut off (its routing paused) as a reading fails: the
	// gap and the record that arrived wait until it is back.
	pausing := func() error {
		n2.pauseRouting()
		n2.dur.acks.gapFail.Store(nil)
		return unreadable
	}
	n2.dur.acks.gapFail.Store(&pausing)
	t.Cleanup(n2.resumeRouting)
	writeGap(t, nodes[0].node, n2, "elsewhere/paused", "gap/paused", count)
	testutil.WaitFor(t, "the reading to fail", 30*time.Second, func() bool { return n2.dur.acks.gapFail.Load() == nil })
	expectNone(t, sub, time.Second)
	n2.resumeRouting()
	receiveInOrder(t, sub, 0, count+1)

	// Never readable, and held for 300 ms only.
	n2.dur.acks.gapHold.Store(int64(300 * time.Millisecond))
	never := func() error { return unreadable }
	n2.dur.acks.gapFail.Store(&never)
	writeGap(t, nodes[0].node, n2, "elsewhere/never", "gap/never", count)
	select {
	case m := <-sub.Messages():
		if string(m.Payload) != strconv.Itoa(count) {
			t.Fatalf("got %q on %s, want the record that arrived (%d)", m.Payload, m.Topic, count)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the record that arrived past an unreadable gap was never routed")
	}
}
