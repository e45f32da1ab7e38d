package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// fwdOf encodes a QoS 1 message on topic for the stream, as sequence seq
// of its origin.
func fwdOf(t testing.TB, seq uint64, topic, payload, from string) *fwdMsg {
	t.Helper()
	now := time.Now()
	msg := broker.NewMessage(&packet.Publish{Topic: topic, Payload: []byte(payload), QoS: 1, PacketID: 1}, from, now)
	pkt, err := encodeMessage(msg, now)
	if err != nil {
		t.Fatal(err)
	}
	return &fwdMsg{topic: topic, seq: seq, sent: now.UnixNano(), from: from, pkt: pkt}
}

// TestBatchRoundTrip: a batch record decodes to its messages, in order,
// with their sequence numbers, times and publishers; framing errors and
// unknown versions are refused.
func TestBatchRoundTrip(t *testing.T) {
	t.Parallel()
	var in []*fwdMsg
	for i := range 5 {
		in = append(in, fwdOf(t, uint64(100+i), "a/"+strconv.Itoa(i), "p"+strconv.Itoa(i), map[bool]string{true: "pub"}[i%2 == 0]))
	}
	data := encodeBatch(in)
	out, err := decodeBatch(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("%d entries, want %d", len(out), len(in))
	}
	for i, e := range out {
		if e.seq != in[i].seq || e.sent != in[i].sent || string(e.from) != in[i].from || !bytes.Equal(e.pkt, in[i].pkt) {
			t.Fatalf("entry %d: %+v, want %+v", i, e, *in[i])
		}
		msg, err := e.message()
		if err != nil {
			t.Fatal(err)
		}
		if msg.Topic != "a/"+strconv.Itoa(i) || string(msg.Payload) != "p"+strconv.Itoa(i) || msg.QoS != 1 || msg.From != in[i].from {
			t.Fatalf("entry %d: message %s %q QoS %d from %q", i, msg.Topic, msg.Payload, msg.QoS, msg.From)
		}
	}
	rec := batchRecord("n1/ab", in)
	if rec.Subject != batchSubject || rec.Header.Get(hdrOrigin) != "n1/ab" || rec.Header.Get(nats.MsgIdHdr) != "n1/ab/b100" {
		t.Fatalf("record %s %v", rec.Subject, rec.Header)
	}

	for name, bad := range map[string][]byte{
		"empty":          nil,
		"version 2":      append([]byte{2}, data[1:]...),
		"no entries":     {batchVersion, 0},
		"count too high": append([]byte{batchVersion, 6}, data[2:]...),
		"truncated":      data[:len(data)-1],
		"trailing bytes": append(bytes.Clone(data), 0),
	} {
		if _, err := decodeBatch(bad); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// FuzzDecodeBatch: the batch decoder never panics, and what it accepts
// encodes to a record that decodes to the same entries.
func FuzzDecodeBatch(f *testing.F) {
	f.Add(encodeBatch([]*fwdMsg{fwdOf(f, 1, "a/b", "x", "c")}))
	f.Add(encodeBatch([]*fwdMsg{fwdOf(f, 1<<40, "a", "", ""), fwdOf(f, 2, "a//b/", "y", "pub")}))
	f.Add([]byte{batchVersion, 1, 1, 2, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := decodeBatch(b)
		if err != nil {
			return
		}
		in := make([]*fwdMsg, len(entries))
		for i, e := range entries {
			in[i] = &fwdMsg{seq: e.seq, sent: e.sent, from: string(e.from), pkt: e.pkt}
			_, _ = e.message() // must not panic
		}
		again, err := decodeBatch(encodeBatch(in))
		if err != nil || len(again) != len(entries) {
			t.Fatalf("decode → encode → decode: %v, %d entries of %d", err, len(again), len(entries))
		}
		for i := range again {
			a, e := again[i], entries[i]
			if a.seq != e.seq || a.sent != e.sent || string(a.from) != string(e.from) || !bytes.Equal(a.pkt, e.pkt) {
				t.Fatalf("entry %d changed: %+v → %+v", i, e, a)
			}
		}
	})
}

// TestBatchedForwardingOrder: publishers on one node pipeline QoS 1
// messages on their own topics to a subscriber on another; the stream
// holds fewer records than messages (they were grouped), and every
// message arrives once, in its publisher's order.
func TestBatchedForwardingOrder(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	sub := dial(t, nodes[1].addr, "bsub", client.V5)
	subscribe(t, sub, 1, "bo/#")
	// Fewer messages than a session queues (1,000): a subscriber slower
	// than the burst loses none to its queue's limit.
	const pubs, per = 4, 200
	var clients []*client.Client
	for i := range pubs {
		clients = append(clients, dial(t, nodes[0].addr, "bpub"+strconv.Itoa(i), client.V5))
	}
	awaitRoute(t, clients[0], sub, "bo/probe")
	before := streamState(t, nodes[0].node)
	out := nodes[0].node.Status().StreamOut

	var wg sync.WaitGroup
	errs := make(chan error, pubs)
	for i, c := range clients {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			toks := make([]*client.Token, 0, per)
			for j := range per {
				toks = append(toks, c.PublishAsync(ctx, &client.Message{Topic: fmt.Sprintf("bo/%d", i), QoS: 1, Payload: []byte(strconv.Itoa(j))}))
			}
			for _, tk := range toks {
				if err := tk.Wait(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	next := make([]int, pubs)
	deadline := time.After(60 * time.Second)
	for got := 0; got < pubs*per; {
		select {
		case m := <-sub.Messages():
			if isProbe(m) {
				continue
			}
			var i int
			if _, err := fmt.Sscanf(m.Topic, "bo/%d", &i); err != nil || i < 0 || i >= pubs {
				t.Fatalf("message on %q", m.Topic)
			}
			if string(m.Payload) != strconv.Itoa(next[i]) {
				t.Fatalf("publisher %d: got %q, want %d (out of order, or again)", i, m.Payload, next[i])
			}
			next[i]++
			got++
		case <-deadline:
			t.Fatalf("received %v of %d per publisher", next, per)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	expectNone(t, sub, 300*time.Millisecond)
	msgs := nodes[0].node.Status().StreamOut - out
	records := streamState(t, nodes[0].node).LastSeq - before.LastSeq
	if msgs != pubs*per {
		t.Fatalf("%d messages went into the stream, want %d", msgs, pubs*per)
	}
	if records >= msgs {
		t.Fatalf("%d messages took %d stream records: not grouped", msgs, records)
	}
	t.Logf("%d messages in %d stream records", msgs, records)
	testutil.WaitFor(t, "the receiving node's acknowledgements", 30*time.Second, func() bool {
		ci := consumerInfo(t, nodes[0].node, nodes[1].node)
		return ci.NumAckPending == 0 && ci.AckFloor.Stream >= before.LastSeq+records
	})
}

// publishRecord writes a record into the durable stream through tn, as
// another node (or an earlier build) would, and returns its sequence.
func publishRecord(t *testing.T, tn *testNode, m *nats.Msg) uint64 {
	t.Helper()
	js, err := jetstream.New(tn.node.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// awaitRouted waits until tn's consumer acknowledged the stream up to
// seq: tn routed those records before what follows (a session arriving
// there is replayed them).
func awaitRouted(t *testing.T, tn *testNode, seq uint64) {
	t.Helper()
	testutil.WaitFor(t, tn.node.cfg.Node+" to route the stream", 30*time.Second, func() bool {
		return consumerInfo(t, tn.node, tn.node).AckFloor.Stream >= seq
	})
}

// TestOldFormatRecords: records of one message each, as earlier builds
// wrote them, are delivered by the nodes' consumers and replayed to a
// moved session, in stream order with the batches around them.
func TestOldFormatRecords(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	sub, _ := dialSession(t, nodes[0].addr, "oldsub", client.V5)
	subscribe(t, sub, 1, "old/#")
	pub := dial(t, nodes[2].addr, "oldpub", client.V5)
	awaitRoute(t, pub, sub, "old/probe")
	const origin = "n0/earlier-build"
	old := func(seq uint64, topic, payload string) {
		publishRecord(t, nodes[2], singleRecord(origin, fwdOf(t, seq, topic, payload, "old-client")))
	}

	old(1, "old/x", "0")
	old(2, "old/x", "1")
	receiveInOrder(t, sub, 0, 2)
	publishQoS1(t, pub, "old/x", 2, 4)
	old(3, "old/x", "4")
	receiveInOrder(t, sub, 2, 5)

	// Published while the session's node is down: replayed on its new
	// home from the single records and the batches alike.
	disconnect(t, sub)
	stopNode(t, nodes[0])
	testutil.WaitFor(t, "n2 and n3 to see n1 gone", 30*time.Second, func() bool {
		return nodes[1].node.srv.NumRemotes() == 1 && nodes[2].node.srv.NumRemotes() == 1
	})
	old(4, "old/x", "5")
	publishQoS1(t, pub, "old/x", 6, 8)
	old(5, "elsewhere/x", "not for it")
	old(6, "old/y", "8")
	awaitRouted(t, nodes[1], streamState(t, nodes[1].node).LastSeq)
	sub2, present := dialSession(t, nodes[1].addr, "oldsub", client.V5)
	if !present {
		t.Fatal("Session Present 0 on a survivor")
	}
	receiveInOrder(t, sub2, 5, 9)
	expectNone(t, sub2, 500*time.Millisecond)
}

// TestBatchSplitAcrossNodeLoss: a node dies while routing a batch
// record, with part of its messages already in an offline session's
// queue there; the session resumes on another node and gets each
// message of the record once, in order (the part it holds from its
// queue, the rest replayed from the record).
func TestBatchSplitAcrossNodeLoss(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	sub, _ := dialSession(t, nodes[0].addr, "splitsub", client.V5)
	subscribe(t, sub, 1, "sp/#")
	pub := dial(t, nodes[2].addr, "splitpub", client.V5)
	awaitRoute(t, pub, sub, "sp/probe")
	disconnect(t, sub)

	const origin = "n9/gone"
	var all []*fwdMsg
	for i := range 10 {
		all = append(all, fwdOf(t, uint64(i+1), "sp/x", strconv.Itoa(i), "p"))
	}
	// What n1 had routed into the session when it died: the first four
	// messages of the record, committed with their stream IDs.
	in := nodes[0].node.Status().StreamIn
	publishRecord(t, nodes[2], batchRecord(origin, all[:4]))
	testutil.WaitFor(t, "n1 to route the first part", 30*time.Second, func() bool {
		return nodes[0].node.Status().StreamIn >= in+4 && consumerInfo(t, nodes[2].node, nodes[0].node).NumAckPending == 0
	})
	stopNode(t, nodes[0])
	testutil.WaitFor(t, "n2 and n3 to see n1 gone", 30*time.Second, func() bool {
		return nodes[1].node.srv.NumRemotes() == 1 && nodes[2].node.srv.NumRemotes() == 1
	})
	// The whole record, which n1 never acknowledged, is in the stream
	// after its position.
	rec := batchRecord(origin, all)
	rec.Header.Set(nats.MsgIdHdr, origin+"/whole")
	awaitRouted(t, nodes[1], publishRecord(t, nodes[2], rec))

	sub2, present := dialSession(t, nodes[1].addr, "splitsub", client.V5)
	if !present {
		t.Fatal("Session Present 0 on a survivor")
	}
	receiveInOrder(t, sub2, 0, 10)
	expectNone(t, sub2, 500*time.Millisecond)
	// And the batches of the nodes go on reaching it there.
	publishQoS1(t, pub, "sp/x", 10, 20)
	receiveInOrder(t, sub2, 10, 20)
}

// TestSingleRecordsForEarlierBuilds: while a node of the cluster is seen
// without the batch marker (a node of an earlier build, during a rolling
// upgrade: here n3 drops its marker), messages go into the stream one
// record each, in the format every build reads; once it has the marker,
// they are grouped again.
func TestSingleRecordsForEarlierBuilds(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	sub := dial(t, nodes[1].addr, "gsub", client.V5)
	subscribe(t, sub, 1, "g/#")
	pub := dial(t, nodes[0].addr, "gpub", client.V5)
	awaitRoute(t, pub, sub, "g/probe")
	capSubject := capPrefix + keyOf(nodes[2].node.cfg.Node) + capBatch
	acc := nodes[0].node.srv.GlobalAccount()
	setMarker := func(on bool) {
		nd := nodes[2].node
		nd.subMu.Lock()
		defer nd.subMu.Unlock()
		if on {
			s, err := nd.nc.SubscribeSync(capSubject)
			if err != nil {
				t.Fatal(err)
			}
			nd.dur.batchMarker = s
			return
		}
		if err := nd.dur.batchMarker.Unsubscribe(); err != nil {
			t.Fatal(err)
		}
	}
	// records publishes n pipelined messages from next on and returns
	// how many stream records they took.
	next := 0
	records := func(n int) uint64 {
		before := streamState(t, nodes[0].node).LastSeq
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		toks := make([]*client.Token, 0, n)
		for i := range n {
			toks = append(toks, pub.PublishAsync(ctx, &client.Message{Topic: "g/x", QoS: 1, Payload: []byte(strconv.Itoa(next + i))}))
		}
		for _, tk := range toks {
			if err := tk.Wait(ctx); err != nil {
				t.Fatal(err)
			}
		}
		receiveInOrder(t, sub, next, next+n)
		next += n
		return streamState(t, nodes[0].node).LastSeq - before
	}

	setMarker(false)
	testutil.WaitFor(t, "n1 to see n3 without the batch marker", 30*time.Second, func() bool { return acc.Interest(capSubject) == 0 })
	if got := records(200); got != 200 {
		t.Fatalf("with a node of an earlier build: 200 messages took %d records, want one each", got)
	}
	setMarker(true)
	testutil.WaitFor(t, "n1 to see n3's batch marker", 30*time.Second, func() bool { return acc.Interest(capSubject) > 0 })
	if got := records(200); got >= 200 {
		t.Fatalf("every node reads batches: 200 messages took %d records", got)
	}
	expectNone(t, sub, 300*time.Millisecond)
}

// TestBatchRecordOneCommit: the messages of a batch record go into the
// receiving node's sessions as one commit of its broker, and the record
// is acknowledged only once that commit is durable; a record whose
// commit failed is not acknowledged, comes again and is committed then,
// and the session gets each of its messages (at least once), in order.
func TestBatchRecordOneCommit(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	sub, _ := dialSession(t, nodes[0].addr, "onecommit", client.V5)
	subscribe(t, sub, 1, "oc/#")
	disconnect(t, sub)
	p := nodes[0].node.persistence()

	const origin = "n9/one-commit"
	record := func(from, to int) *nats.Msg {
		var msgs []*fwdMsg
		for i := from; i < to; i++ {
			msgs = append(msgs, fwdOf(t, uint64(i+1), "oc/x", strconv.Itoa(i), "p"))
		}
		return batchRecord(origin, msgs)
	}

	before := p.deliveryCommits.Load()
	awaitRouted(t, nodes[0], publishRecord(t, nodes[2], record(0, 8)))
	if n := p.deliveryCommits.Load() - before; n != 1 {
		t.Fatalf("a record of 8 messages for one session took %d commits, want 1", n)
	}

	// The commit of the next record fails once.
	p.failCommits.Store(1)
	before = p.deliveryCommits.Load()
	seq := publishRecord(t, nodes[2], record(8, 16))
	testutil.WaitFor(t, "the commit to fail", 30*time.Second, func() bool { return p.failCommits.Load() == 0 })
	if floor := consumerInfo(t, nodes[0].node, nodes[0].node).AckFloor.Stream; floor >= seq {
		t.Fatalf("record %d acknowledged (floor %d) though its commit failed", seq, floor)
	}
	awaitRouted(t, nodes[0], seq)
	if n := p.deliveryCommits.Load() - before; n != 2 {
		t.Fatalf("a record whose commit failed once took %d commits, want 2", n)
	}

	sub2, present := dialSession(t, nodes[0].addr, "onecommit", client.V5)
	if !present {
		t.Fatal("Session Present 0")
	}
	// Each message in order; those of the failed commit may come twice
	// (delivered again: at least once).
	next := 0
	deadline := time.After(60 * time.Second)
	for next < 16 {
		select {
		case m := <-sub2.Messages():
			i, err := strconv.Atoi(string(m.Payload))
			switch {
			case err != nil:
				t.Fatalf("unexpected message %q", m.Payload)
			case i == next:
				next++
			case i >= 8 && i < next:
				// a copy from the failed commit
			default:
				t.Fatalf("message %d after %d", i, next-1)
			}
		case <-deadline:
			t.Fatalf("received %d of 16", next)
		}
	}
}

// TestBatchesWhileANodeIsAway: a node that read batch records when it was
// last seen still counts as one that does while it is away, also when
// the node forwarding messages sent none before it went: n2 notes the
// other nodes' markers as they are seen, not as it forwards, and its
// messages go into the stream grouped while n3 is gone. Before, noted
// only as it forwarded, n2 sent every message as a record of its own
// for as long as n3 stayed away.
func TestBatchesWhileANodeIsAway(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	n2 := nodes[1].node
	n3key := markerPrefix + keyOf(nodes[2].node.cfg.Node) + "."
	testutil.WaitFor(t, "n2 to note n3's batch marker", 30*time.Second, func() bool {
		n2.dur.capMu.Lock()
		defer n2.dur.capMu.Unlock()
		return n2.dur.capable[n3key]
	})
	if out := n2.Status().StreamOut; out != 0 {
		t.Fatalf("n2 forwarded %d messages before n3 went", out)
	}
	stopNode(t, nodes[2])
	testutil.WaitFor(t, "n1 and n2 to see n3 gone", 30*time.Second, func() bool {
		return nodes[0].node.srv.NumRemotes() == 1 && n2.srv.NumRemotes() == 1
	})
	sub := dial(t, nodes[0].addr, "awaysub", client.V5)
	subscribe(t, sub, 1, "aw/#")
	pub := dial(t, nodes[1].addr, "awaypub", client.V5)
	awaitRoute(t, pub, sub, "aw/probe")

	const n = 200
	before := streamState(t, nodes[0].node).LastSeq
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	toks := make([]*client.Token, 0, n)
	for i := range n {
		toks = append(toks, pub.PublishAsync(ctx, &client.Message{Topic: "aw/x", QoS: 1, Payload: []byte(strconv.Itoa(i))}))
	}
	for _, tk := range toks {
		if err := tk.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	receiveInOrder(t, sub, 0, n)
	if got := streamState(t, nodes[0].node).LastSeq - before; got >= n {
		t.Fatalf("with n3 away: %d messages took %d records, want them grouped", n, got)
	}
}

// TestBatchesWithANodeNeverSeen: a node started again while another is
// away never sees that one present; the away node's durable consumer,
// with cumulative acknowledgements (made only by builds that read
// batches), tells instead. n1, restarted with n3 stopped, sends its
// messages grouped; once n3's consumer is replaced by one of an earlier
// build's kind (AckExplicit), n1 sends one message per record again,
// which every build reads. Before the consumers were read, n1 sent every
// message as a record of its own until n3 came back.
func TestBatchesWithANodeNeverSeen(t *testing.T) {
	t.Parallel()
	testBatchesNeverSeen(t, 3)
}

// TestBatchesWithANodeNeverSeenOnFourNodes is TestBatchesWithANodeNeverSeen
// in a cluster of four, restarting the one node without a copy of
// moat_msgs, so of no consumer: it reads the away node's consumer
// through the JetStream API. Before 2026-12-07 it counted that node as
// one that may not read batches and sent one message per record.
func TestBatchesWithANodeNeverSeenOnFourNodes(t *testing.T) {
	t.Parallel()
	testBatchesNeverSeen(t, 4)
}

// testBatchesNeverSeen runs TestBatchesWithANodeNeverSeen on size nodes:
// with three, n1 is restarted while n3 is away; with four, the node
// without a copy of moat_msgs while one with a copy is away.
func testBatchesNeverSeen(t *testing.T, size int) {
	nodes, dir, routes := startOwn(t, size)
	restarted, away := 0, 2
	if size > 3 {
		byName := map[string]int{}
		for i, tn := range nodes {
			byName[tn.node.cfg.Node] = i
		}
		peers := streamPeers(t, nodes[0].node, streamMsgs)
		away = byName[peers[len(peers)-1]]
		restarted = -1
		for i, tn := range nodes {
			if !slices.Contains(peers, tn.node.cfg.Node) {
				restarted = i
			}
		}
		if restarted < 0 {
			t.Fatalf("every node holds a copy of %s: %v", streamMsgs, peers)
		}
	}
	other := 0
	for other == restarted || other == away {
		other++
	}
	stopNode(t, nodes[away])
	stopNode(t, nodes[restarted])
	rn := restartWithListener(t, dir, routes, restarted, nil)
	testutil.WaitFor(t, "the restarted node to reach the others and import its sessions", 30*time.Second, func() bool {
		return rn.node.srv.NumRemotes() == size-2 && rn.node.sessionsReady() && rn.node.dur.expected.Load() == int64(size-1)
	})
	sub := dial(t, nodes[other].addr, "neversub", client.V5)
	subscribe(t, sub, 1, "nv/#")
	pub := dial(t, rn.addr, "neverpub", client.V5)
	awaitRoute(t, pub, sub, "nv/probe")
	awayKey := markerPrefix + keyOf(nodes[away].node.cfg.Node) + "."
	rn.node.dur.capMu.Lock()
	_, noted := rn.node.dur.capable[awayKey]
	rn.node.dur.capMu.Unlock()
	if noted {
		t.Fatal("the restarted node noted the away one, which it never saw")
	}

	const n = 200
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	records := func(from int) uint64 {
		t.Helper()
		before := streamState(t, rn.node).LastSeq
		toks := make([]*client.Token, 0, n)
		for i := from; i < from+n; i++ {
			toks = append(toks, pub.PublishAsync(ctx, &client.Message{Topic: "nv/x", QoS: 1, Payload: []byte(strconv.Itoa(i))}))
		}
		for _, tk := range toks {
			if err := tk.Wait(ctx); err != nil {
				t.Fatal(err)
			}
		}
		receiveInOrder(t, sub, from, from+n)
		return streamState(t, rn.node).LastSeq - before
	}
	testutil.WaitFor(t, "the restarted node to count the away one by its consumer", 30*time.Second, func() bool { return rn.node.batchOK() })
	if got := records(0); got >= n {
		t.Fatalf("with a node never seen: %d messages took %d records, want them grouped", n, got)
	}

	// The away node's consumer as an earlier build made it. Each request
	// is tried again until answered: one made as the consumer's group
	// elects a leader (the away node may have led it) can go unanswered.
	name := "node" + keyOf(nodes[away].node.cfg.Node)
	st := nodes[other].node.msgStream()
	try := func(what string, f func(context.Context) error) {
		t.Helper()
		testutil.WaitFor(t, what, 60*time.Second, func() bool {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			err := f(rctx)
			if err != nil {
				t.Logf("%s: %v", what, err)
			}
			return err == nil
		})
	}
	try("the away node's consumer deleted", func(ctx context.Context) error {
		if err := st.DeleteConsumer(ctx, name); !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return err
		}
		return nil
	})
	try("the away node's consumer made again", func(ctx context.Context) error {
		_, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: name, AckPolicy: jetstream.AckExplicitPolicy,
			FilterSubject: durablePrefix + ">"})
		return err
	})
	testutil.WaitFor(t, "the restarted node to doubt the away one", 30*time.Second, func() bool { return !rn.node.batchOK() })
	if got := records(n); got != n {
		t.Fatalf("with the away node's consumer of an earlier build: %d messages took %d records, want one each", n, got)
	}
}

// TestNoBatchesBeforePeersKnown: before a node first reads which other
// nodes there are, it writes single records, which every build reads:
// nothing tells yet that the others read batches.
func TestNoBatchesBeforePeersKnown(t *testing.T) {
	t.Parallel()
	n := &Node{srv: new(server.Server)}
	n.dur.init()
	if n.batchOK() {
		t.Fatal("batch records written before any other node is known")
	}
}
