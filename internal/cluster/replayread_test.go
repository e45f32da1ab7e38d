package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

// replayOrigin writes the records of these tests: no node's run, so
// every node routes them (to no session) and a replay counts them.
const replayOrigin = "elsewhere/1"

// writeReplayRecords writes count records to moat_msgs through tn, each
// a batch of one message on rr/<i>, except every tenth: a single record
// of an earlier build, on rr/s/<i>, and every 25th, on the topic
// other/<i> that the tests' session does not subscribe to. It returns
// the stream sequences of the first and last records, and the topics a
// replay of rr/# finds, in stream order.
func writeReplayRecords(t testing.TB, tn *testNode, count int) (first, last uint64, want []string) {
	t.Helper()
	js, err := jetstream.New(tn.node.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var acks []jetstream.PubAckFuture
	for i := range count {
		var m *nats.Msg
		topic := "rr/" + strconv.Itoa(i)
		switch {
		case i%25 == 0:
			topic = "other/" + strconv.Itoa(i)
			m = batchRecord(replayOrigin, []*fwdMsg{fwdOf(t, uint64(i+1), topic, "p", "pub")})
		case i%10 == 0:
			topic = "rr/s/" + strconv.Itoa(i)
			m = singleRecord(replayOrigin, fwdOf(t, uint64(i+1), topic, "p", "pub"))
		default:
			m = batchRecord(replayOrigin, []*fwdMsg{fwdOf(t, uint64(i+1), topic, "p", "pub")})
		}
		if !strings.HasPrefix(topic, "other/") {
			want = append(want, topic)
		}
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
	if last-first+1 != uint64(count) {
		t.Fatalf("records at %d to %d, want %d in a row", first, last, count)
	}
	return first, last, want
}

// newTestReplay returns a replay on tn of a session subscribed to rr/#
// whose queue has room for everything, after stream sequence from-1.
func newTestReplay(tn *testNode, from uint64) *replaySet {
	rs := &replaySet{id: "replay", pos: position{seq: from - 1}, self: tn.node.origin, have: map[string]bool{},
		reached: map[string]bool{}, room: 1 << 30, roomBytes: -1}
	rs.setFilters([]string{"rr/#"})
	rs.to = from - 1
	return rs
}

// topicsOf returns the topics of the messages rs found, in order.
func topicsOf(rs *replaySet) []string {
	var out []string
	for _, m := range rs.msgs {
		out = append(out, m.msg.Topic)
	}
	return out
}

func sameTopics(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d messages replayed, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("message %d is %s, want %s", i, got[i], want[i])
		}
	}
}

// TestReplayReadsInBatches: a replay of 2,000 records (batches of one
// message, single records of an earlier build among them, and records
// of a topic the session does not subscribe to) reads them with a few
// dozen batches of direct gets, not one get per record per subject as
// before, and finds every message of the session, in stream order.
// Read from each node (each answered by its own replica), and in
// chunks as a catch-up reads them.
func TestReplayReadsInBatches(t *testing.T) {
	t.Parallel()
	const count = 2000
	nodes := startCluster(t, 3)
	first, last, want := writeReplayRecords(t, nodes[0], count)
	awaitDirect(t, nodes)
	for i, tn := range nodes {
		t.Run(fmt.Sprintf("n%d", i+1), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			rs := newTestReplay(tn, first)
			if err := rs.read(ctx, tn.node, last, last); err != nil {
				t.Fatal(err)
			}
			sameTopics(t, topicsOf(rs), want)
			t.Logf("%d records: %d batches, %d gets of the leader", count, rs.batches, rs.gets)
			// 32, 64, 128, then 256 at a time: 11 batches; the last
			// sequence is an existing record, so no leader get.
			if rs.batches > 16 || rs.gets != 0 {
				t.Fatalf("%d batches and %d gets for %d records", rs.batches, rs.gets, count)
			}
			// Batches of replayBatchMax records came through the
			// connection's short channels for synchronous
			// subscriptions without a loss (a loss falls back to the
			// leader: gets above).
			if got := tn.node.nc.Opts.SubChanLen; got != syncQueueLen {
				t.Fatalf("synchronous subscriptions' channels of %d, want %d", got, syncQueueLen)
			}
		})
	}
	t.Run("chunks", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		tn := nodes[1]
		rs := newTestReplay(tn, first)
		rs.paced = true
		var got []string
		reads := 0
		for rs.to < last {
			rs.next(50, -1)
			if err := rs.read(ctx, tn.node, last, last); err != nil {
				t.Fatal(err)
			}
			got = append(got, topicsOf(rs)...)
			rs.msgs = nil
			reads++
		}
		sameTopics(t, got, want)
		t.Logf("%d readings of 50: %d batches, %d gets", reads, rs.batches, rs.gets)
		if rs.batches > 2*reads || rs.gets != 0 {
			t.Fatalf("%d batches and %d gets for %d readings", rs.batches, rs.gets, reads)
		}
	})
}

// awaitDirect has a reading on the first node find that the stream does
// not answer direct gets and set AllowDirect (every node runs this
// build), and waits until each node's direct gets are answered.
func awaitDirect(t *testing.T, nodes []*testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rs := newTestReplay(nodes[0], 1)
	if err := rs.read(ctx, nodes[0].node, 1, 1); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "a reading to set AllowDirect", 30*time.Second, func() bool { return allowsDirect(t, nodes[0]) })
	for _, tn := range nodes {
		testutil.WaitFor(t, tn.node.cfg.Node+"'s direct gets to be answered", 30*time.Second, func() bool {
			_, err := tn.node.nc.Request("$JS.API.DIRECT.GET."+streamMsgs, nil, time.Second)
			return err == nil
		})
	}
}

// quietDirect waits until every node has seen AllowDirect on moat_msgs
// (each node's monitor sets it or finds it set once every node is
// present), then keeps every node from setting it again: the test may
// turn it off.
func quietDirect(tb testing.TB, nodes []*testNode) {
	tb.Helper()
	for _, tn := range nodes {
		testutil.WaitFor(tb, tn.node.cfg.Node+" to see AllowDirect", 30*time.Second, tn.node.dur.directSeen.Load)
		tn.node.dur.directNext.Store(math.MaxInt64)
	}
}

// disallowDirect turns AllowDirect off on moat_msgs, as a node of an
// earlier build does as it starts, and waits until n's direct gets find
// no replica answering.
func disallowDirect(tb testing.TB, n *Node) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(n.nc)
	if err != nil {
		tb.Fatal(err)
	}
	info, err := n.msgStream().Info(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	if info.Config.AllowDirect {
		cfg := info.Config
		cfg.AllowDirect = false
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			tb.Fatal(err)
		}
	}
	testutil.WaitFor(tb, "direct gets not to be answered", 10*time.Second, func() bool {
		_, err := n.nc.Request("$JS.API.DIRECT.GET."+streamMsgs, nil, time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	})
}

// allowsDirect tells whether moat_msgs has AllowDirect, as tn reads it.
func allowsDirect(t *testing.T, tn *testNode) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := tn.node.msgStream().Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.Config.AllowDirect
}

// TestReplayReadStaleReplica: direct gets answered by a replica behind
// the leader are not taken as the end. The stream's own direct gets are
// off (and the node reading does not turn them on) and the test answers
// them instead, as a replica that has
// applied the records only up to the middle of the range would
// (stale), or as one with none of them (empty); without any answer
// (none), direct gets are not served, as on a stream of an earlier
// build. Each time the replay finds every message, in order: what the
// replica lacks is read from the leader.
func TestReplayReadStaleReplica(t *testing.T) {
	t.Parallel()
	const count = 300
	nodes := startCluster(t, 3)
	first, last, want := writeReplayRecords(t, nodes[0], count)
	tn := nodes[1]
	// The readings do not set AllowDirect again.
	quietDirect(t, nodes)
	disallowDirect(t, tn.node)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mid := first + count/2
	for _, tc := range []struct {
		name    string
		answers bool   // the test answers direct gets
		applied uint64 // as a replica that has the records up to here
	}{
		{"stale", true, mid},
		{"empty", true, first - 1},
		{"none", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.answers {
				sub := staleReplica(t, tn, tc.applied)
				defer func() { _ = sub.Unsubscribe() }()
				testutil.WaitFor(t, "the test replica to answer", 10*time.Second, func() bool { return directGetsAnswered(tn, true) })
			}
			rs := newTestReplay(tn, first)
			if err := rs.read(ctx, tn.node, last, last); err != nil {
				t.Fatal(err)
			}
			sameTopics(t, topicsOf(rs), want)
			t.Logf("%d batches, %d gets of the leader", rs.batches, rs.gets)
			if rs.gets == 0 {
				t.Fatal("nothing read from the leader")
			}
		})
	}
}

// staleReplica answers, on tn's connection, the direct gets of
// moat_msgs (batches from a sequence, every subject) as a replica that has applied the records up
// to applied would: the records it has (read from the leader), each with
// the number it has after it, and the end of the batch; "not found" when
// it has none.
func staleReplica(t *testing.T, tn *testNode, applied uint64) *nats.Subscription {
	t.Helper()
	nc := tn.node.gc // not NoEcho, unlike nc
	sub, err := nc.Subscribe("$JS.API.DIRECT.GET."+streamMsgs, func(req *nats.Msg) {
		var r server.JSApiMsgGetRequest
		if err := json.Unmarshal(req.Data, &r); err != nil || r.Batch == 0 {
			bad := nats.NewMsg(req.Reply)
			bad.Header.Set("Status", "408")
			bad.Header.Set("Description", "test replica")
			_ = nc.PublishMsg(bad)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var lseq uint64
		sent := 0
		for seq := r.Seq; seq <= applied && sent < r.Batch; seq++ {
			m, err := tn.node.msgRecord(ctx, seq)
			if err != nil {
				return
			}
			out := nats.NewMsg(req.Reply)
			for k, v := range m.Header {
				out.Header[k] = v
			}
			out.Header.Set(jetstream.StreamHeader, streamMsgs)
			out.Header.Set(jetstream.SubjectHeader, m.Subject)
			out.Header.Set(jetstream.SequenceHeader, strconv.FormatUint(seq, 10))
			out.Header.Set("Nats-Time-Stamp", m.Time.UTC().Format(time.RFC3339Nano))
			out.Header.Set(server.JSNumPending, strconv.FormatUint(applied-seq, 10))
			out.Header.Set(server.JSLastSequence, strconv.FormatUint(lseq, 10))
			out.Data = m.Data
			_ = nc.PublishMsg(out)
			lseq = seq
			sent++
		}
		end := nats.NewMsg(req.Reply)
		if sent == 0 {
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

// directGetsAnswered tells whether tn's direct gets of moat_msgs are
// answered, by a test replica (staleReplica) if test.
func directGetsAnswered(tn *testNode, test bool) bool {
	m, err := tn.node.nc.Request("$JS.API.DIRECT.GET."+streamMsgs, nil, time.Second)
	return err == nil && (m.Header.Get("Description") == "test replica") == test
}

// BenchmarkReplayRead reads a replay of 2,000 records (as in
// TestReplayReadsInBatches) from a node of a cluster of three: in
// batches of direct gets (batch), and with gets of the leader only, one
// record per get per subject, as before batches (leader).
func BenchmarkReplayRead(b *testing.B) {
	const count = 2000
	nodes := startBenchCluster(b)
	first, last, _ := writeReplayRecords(b, nodes[1], count)
	nodes[1].node.allowDirect()
	testutil.WaitFor(b, "direct gets to be answered", 30*time.Second, func() bool {
		_, err := nodes[1].node.nc.Request("$JS.API.DIRECT.GET."+streamMsgs, nil, time.Second)
		return err == nil
	})
	for _, leader := range []bool{false, true} {
		name := map[bool]string{false: "batch", true: "leader"}[leader]
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			requests := 0
			for b.Loop() {
				r, err := newRecordReader(nodes[1].node, newTestReplay(nodes[1], first).subjects, first, last)
				if err != nil {
					b.Fatal(err)
				}
				r.leader = leader
				found := 0
				for {
					m, err := r.read(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if m == nil {
						break
					}
					found++
				}
				// Every record is on a subject of rr/#: batch
				// records are matched message by message later.
				if found != count {
					b.Fatalf("%d records read, want %d", found, count)
				}
				requests += r.batches + r.gets
			}
			b.ReportMetric(float64(requests)/float64(b.N), "requests/op")
		})
	}
}

// startBenchCluster starts three nodes as startCluster does, for a
// benchmark (startCluster takes a *testing.T), without MQTT listeners.
func startBenchCluster(b *testing.B) []*testNode {
	b.Helper()
	var routes []string
	var lns []net.Listener
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		lns = append(lns, ln)
		routes = append(routes, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := b.TempDir()
	var nodes []*testNode
	for i := range routes {
		name := fmt.Sprintf("n%d", i+1)
		nd, err := Start(Config{Name: "bench", Node: name, Listen: routes[i], Peers: routes, StoreDir: filepath.Join(dir, name),
			Logger: log, HeartbeatInterval: testHeartbeat, MarkerTTL: testMarkerTTL, setupAttempt: testSetupAttempt})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nd.Close)
		nodes = append(nodes, &testNode{node: nd})
	}
	for _, tn := range nodes {
		srv, err := broker.New(broker.Config{Cluster: tn.node, Authorizer: broker.AllowAll, AllowAnonymous: true, Logger: log})
		if err != nil {
			b.Fatal(err)
		}
		tn.srv = srv
		tn.node.Attach(srv)
		// Before the nodes close (cleanups run last-in first-out).
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
		})
	}
	for _, tn := range nodes {
		select {
		case <-tn.node.Ready():
		case <-time.After(60 * time.Second):
			b.Fatal("key-value store not ready within 60 s")
		}
	}
	js, err := jetstream.New(nodes[0].node.nc)
	if err != nil {
		b.Fatal(err)
	}
	testutil.WaitFor(b, "the durable stream", 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.Stream(ctx, streamMsgs)
		return err == nil
	})
	return nodes
}

// TestAllowDirectWaitsForEveryNode: a node without the direct marker
// (as one of an earlier build, which reads the stream with GetMsg)
// keeps the stream without AllowDirect: neither a reading on another
// node that finds no direct gets answered (it reads from the leader)
// nor that node's monitor sets it, and no attempt is counted. Once the
// marker is back, the node's monitor sets it within a second or so,
// without any reading: the first replay of a fresh cluster no longer
// reads one record per request.
func TestAllowDirectWaitsForEveryNode(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Set by the monitors of a fresh cluster, before any reading.
	testutil.WaitFor(t, "the monitors to set AllowDirect", 30*time.Second, func() bool { return allowsDirect(t, nodes[0]) })
	quietDirect(t, nodes)
	old := nodes[2].node
	marker := capPrefix + keyOf(old.cfg.Node) + capDirect
	old.subMu.Lock()
	err := old.dur.directMarker.Unsubscribe()
	old.subMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	n := nodes[0].node
	testutil.WaitFor(t, "the marker to be gone", 10*time.Second, func() bool {
		return n.srv.GlobalAccount().Interest(marker) == 0
	})
	disallowDirect(t, n)
	// n tries again, from its readings and its monitor.
	n.dur.directSeen.Store(false)
	n.dur.directNext.Store(0)
	rs := newTestReplay(nodes[0], 1)
	if err := rs.read(ctx, n, 1, 1); err != nil {
		t.Fatal(err)
	}
	if rs.batches != 1 || n.dur.directNext.Load() != 0 || allowsDirect(t, nodes[0]) {
		t.Fatalf("%d batches, next attempt at %d, AllowDirect %v; want 1 batch, no attempt and no AllowDirect",
			rs.batches, n.dur.directNext.Load(), allowsDirect(t, nodes[0]))
	}
	sub, err := old.nc.SubscribeSync(marker)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	testutil.WaitFor(t, "AllowDirect set by n's monitor once every node has the marker", 10*time.Second, func() bool {
		return allowsDirect(t, nodes[0])
	})
	if !n.dur.directSeen.Load() {
		t.Fatal("n set AllowDirect but does not know it")
	}
}
