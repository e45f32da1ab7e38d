package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// The test clusters' heartbeat and marker lifetimes: short, so that a
// node's loss and a marker's expiry show within a test.
const (
	testHeartbeat = 100 * time.Millisecond
	testMarkerTTL = 2 * time.Second
	// testSetupAttempt bounds each attempt to create the streams and
	// buckets: a test cluster's nodes start together, and an attempt
	// made before the meta leader was elected waits this long for
	// nothing (5 s by default).
	testSetupAttempt = 2 * time.Second
)

// nodeByName returns the entry of name in st.Nodes.
func nodeByName(st Status, name string) (NodeInfo, bool) {
	i := slices.IndexFunc(st.Nodes, func(ni NodeInfo) bool { return ni.Node == name })
	if i < 0 {
		return NodeInfo{}, false
	}
	return st.Nodes[i], true
}

func TestStatusNodesConnectionsAndReplication(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	dial(t, nodes[1].addr, "on-n2", client.V5)
	// Every node hears every other's heartbeat: n1 sees n2's client.
	testutil.CheckFor(t, 30*time.Second, func() error {
		st := nodes[0].node.Status()
		n2, ok := nodeByName(st, "n2")
		if !ok || n2.State != StateUp || n2.Connections != 1 || n2.Sessions != 1 {
			return fmt.Errorf("n2 as n1 sees it: %+v", n2)
		}
		if st.NodesUp != 3 || st.NodesExpected != 3 || !st.Healthy {
			return fmt.Errorf("n1: %d of %d nodes up, problems %q", st.NodesUp, st.NodesExpected, st.Problems)
		}
		if n2.Route == "" {
			return fmt.Errorf("no route shown for n2: %+v", n2)
		}
		return nil
	})
	st := nodes[0].node.Status()
	self, _ := nodeByName(st, "n1")
	if !self.Self || self.Connections != 0 {
		t.Errorf("n1 itself: %+v", self)
	}
	// The client's claim is the claims bucket's one message.
	testutil.CheckFor(t, 30*time.Second, func() error {
		for _, s := range nodes[0].node.Status().Streams {
			if s.Name == "KV_"+bucketClients && s.Messages != 1 {
				return fmt.Errorf("claims bucket: %+v", s)
			}
		}
		return nil
	})
	// Both buckets are streams of three current copies (a copy that has
	// not applied the claim's write yet, lag 1, catches up in a moment:
	// a full test run on a busy machine saw one).
	testutil.CheckFor(t, 30*time.Second, func() error {
		st = nodes[0].node.Status()
		for _, name := range []string{"KV_" + bucketRetained, "KV_" + bucketClients} {
			i := slices.IndexFunc(st.Streams, func(s StreamState) bool { return s.Name == name })
			if i < 0 {
				return fmt.Errorf("stream %s missing from %+v", name, st.Streams)
			}
			s := st.Streams[i]
			if s.Replicas != 3 || len(s.Peers) != 3 || s.Leader == "" {
				return fmt.Errorf("stream %s: %+v", name, s)
			}
			for _, p := range s.Peers {
				if !p.Current || p.Offline {
					return fmt.Errorf("stream %s: copy %+v not current", name, p)
				}
			}
		}
		return nil
	})
	if len(st.MetaPeers) != 2 {
		t.Errorf("meta peers of n1: %+v", st.MetaPeers)
	}
	// The status is JSON for the admin API.
	b, err := json.Marshal(st)
	if err != nil || !strings.Contains(string(b), `"nodes_up":3`) || !strings.Contains(string(b), `"healthy":true`) {
		t.Errorf("JSON: %v %s", err, b)
	}
}

// TestStatusNodeLoss stops one node cleanly and crashes another: the
// survivor reports the first stopped at once (its last heartbeat said
// so) and the second down after three heartbeat intervals.
func TestStatusNodeLoss(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	testutil.WaitFor(t, "three nodes up", 30*time.Second, func() bool { return nodes[0].node.Status().NodesUp == 3 })
	nodes[2].node.Close()
	testutil.CheckFor(t, 30*time.Second, func() error {
		st := nodes[0].node.Status()
		if n3, _ := nodeByName(st, "n3"); n3.State != StateStopped {
			return fmt.Errorf("n3: %+v", n3)
		}
		if st.Healthy || !slices.ContainsFunc(st.Problems, func(p string) bool { return strings.Contains(p, "node n3 stopped") }) {
			return fmt.Errorf("problems: %q", st.Problems)
		}
		return nil
	})
	// A crash says nothing: the NATS server of n2 goes away under it.
	nodes[1].node.srv.Shutdown()
	testutil.CheckFor(t, 30*time.Second, func() error {
		st := nodes[0].node.Status()
		n2, _ := nodeByName(st, "n2")
		if n2.State != StateDown || n2.LastSeen.IsZero() {
			return fmt.Errorf("n2: %+v", n2)
		}
		if st.NodesUp != 1 || !slices.ContainsFunc(st.Problems, func(p string) bool { return strings.Contains(p, "node n2 is down") }) {
			return fmt.Errorf("%d up, problems %q", st.NodesUp, st.Problems)
		}
		return nil
	})
}

func TestNodeListStates(t *testing.T) {
	t.Parallel()
	n := &Node{cfg: Config{Node: "a", Version: "v1"}, origin: "a/01", started: time.Unix(100, 0)}
	now := time.Unix(1000, 0)
	beat := func(name string, seen time.Duration, leaving bool) {
		n.beats.record(heartbeat{V: 1, Node: name, Origin: name + "/02", IntervalMS: 1000, Connections: 5, Sessions: 6,
			Leaving: leaving}, now.Add(-seen))
	}
	beat("b", 2*time.Second, false) // within three intervals
	beat("c", 4*time.Second, false) // over
	beat("d", time.Second, true)    // stopped
	list := n.nodeList(now, []RouteInfo{{Node: "b", Addr: "10.0.0.2:7422", RTT: "1ms"}}, []string{"b", "e"})
	var got []string
	for _, ni := range list {
		got = append(got, fmt.Sprintf("%s:%s:%d:%s", ni.Node, ni.State, ni.Connections, ni.Route))
	}
	want := []string{"a:up:0:", "b:up:5:10.0.0.2:7422", "c:down:0:", "d:stopped:0:", "e:down:0:"}
	if !slices.Equal(got, want) {
		t.Fatalf("nodes:\n got %v\nwant %v", got, want)
	}
	if !list[0].Self || list[0].Version != "v1" || !list[4].LastSeen.IsZero() {
		t.Errorf("self or never-seen peer: %+v %+v", list[0], list[4])
	}
}

func TestDecodeHeartbeat(t *testing.T) {
	t.Parallel()
	good := `{"v":1,"node":"n1","origin":"n1/ab","interval_ms":2000,"connections":3,"sessions":4}`
	if h, err := decodeHeartbeat([]byte(good)); err != nil || h.Connections != 3 {
		t.Fatalf("good heartbeat: %+v %v", h, err)
	}
	for name, bad := range map[string]string{
		"version":        `{"v":2,"node":"n1","origin":"n1/ab","interval_ms":2000}`,
		"no node":        `{"v":1,"origin":"/ab","interval_ms":2000}`,
		"foreign origin": `{"v":1,"node":"n1","origin":"n2/ab","interval_ms":2000}`,
		"no interval":    `{"v":1,"node":"n1","origin":"n1/ab"}`,
		"negative count": `{"v":1,"node":"n1","origin":"n1/ab","interval_ms":2000,"connections":-1}`,
		"not JSON":       `n1`,
		"too long":       `{"v":1,"node":"` + strings.Repeat("x", maxHeartbeat) + `"}`,
	} {
		if _, err := decodeHeartbeat([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzDecodeHeartbeat(f *testing.F) {
	f.Add([]byte(`{"v":1,"node":"n1","origin":"n1/ab","interval_ms":2000,"connections":3,"sessions":4,"leaving":true}`))
	f.Add([]byte(`{"v":1,"node":"\u00e9","origin":"\u00e9/","interval_ms":1}`))
	f.Add([]byte(`{"v":1,"node":"n2","origin":"n2/cd","interval_ms":100,"adopted":[{"o":"n1/ab","k":2}]}`))
	f.Add([]byte(`{"v":1,"node":"n2","origin":"n2/cd","interval_ms":100,"adopted":[]}`))
	f.Add([]byte(`{"v":1,"node":"n3","origin":"n3/ef","interval_ms":100,"started":"0001-01-01T00:00:00+00:00","sent":"0001-01-01T00:00:00+00:00"}`))
	f.Add([]byte(`{"v":1,"node":"n3","origin":"n3/ef","interval_ms":100,"started":"2026-12-07T08:00:00+01:00","sent":"2026-12-07T09:00:00.5-02:30"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHeartbeat(b)
		if err != nil {
			return
		}
		again, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		h2, err := decodeHeartbeat(again)
		if err != nil || !reflect.DeepEqual(h2, h) {
			t.Fatalf("decode → encode → decode changed the heartbeat: %v\n%+v\n%+v", err, h, h2)
		}
	})
}

// claim returns the claims bucket's entry of id on tn (nil: none).
func claim(t *testing.T, tn *testNode, id string) jetstream.KeyValueEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := tn.node.kvs().clients.Get(ctx, keyOf(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestClaimsPruned: a clean session's claim is removed when it ends; a
// persistent session's stays; takeover across nodes works on after a
// claim was removed; the markers expire.
func TestClaimsPruned(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	clean := dial(t, nodes[0].addr, "clean-1", client.V5)
	testutil.WaitFor(t, "the claim of clean-1", 30*time.Second, func() bool { return claim(t, nodes[1], "clean-1") != nil })
	if err := clean.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the claim of clean-1 removed", 30*time.Second, func() bool { return claim(t, nodes[1], "clean-1") == nil })
	// The counter moves just after the purge is acknowledged.
	testutil.WaitFor(t, "n1 to count the claim pruned", 10*time.Second, func() bool { return nodes[0].node.Status().ClaimsPruned == 1 })

	persistent, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[0].addr}, ClientID: "kept-1",
		CleanStart: true, SessionExpiry: 3600})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { persistent.Close() })
	testutil.WaitFor(t, "the claim of kept-1", 30*time.Second, func() bool { return claim(t, nodes[1], "kept-1") != nil })
	if err := persistent.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	// A clean client disconnecting after kept-1 on the same node: once
	// its claim is gone, the queue has passed kept-1's disconnection.
	probe := dial(t, nodes[0].addr, "clean-2", client.V5)
	testutil.WaitFor(t, "the claim of clean-2", 30*time.Second, func() bool { return claim(t, nodes[1], "clean-2") != nil })
	if err := probe.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the claim of clean-2 removed", 30*time.Second, func() bool { return claim(t, nodes[1], "clean-2") == nil })
	if claim(t, nodes[1], "kept-1") == nil {
		t.Fatal("the claim of a persistent session was removed")
	}

	// Takeover still works for a client ID whose claim was removed.
	first := dial(t, nodes[0].addr, "clean-1", client.V5)
	testutil.WaitFor(t, "the new claim of clean-1", 30*time.Second, func() bool {
		e := claim(t, nodes[1], "clean-1")
		return e != nil && strings.Contains(string(e.Value()), nodes[0].node.origin)
	})
	second := dial(t, nodes[1].addr, "clean-1", client.V5)
	select {
	case <-first.Done():
	case <-ctx.Done():
		t.Fatal("the connection on n1 was not taken over")
	}
	if !second.IsConnected() {
		t.Fatal("the new connection was closed")
	}

	// The markers left by the purges expire: only live claims remain.
	js, err := jetstream.New(nodes[0].node.nc)
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 30*time.Second, func() error {
		s, err := js.Stream(ctx, "KV_"+bucketClients)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(">"))
		if err != nil {
			return err
		}
		var keys []string
		for subj := range info.State.Subjects {
			keys = append(keys, subj)
		}
		slices.Sort(keys)
		want := []string{"$KV." + bucketClients + "." + keyOf("clean-1"), "$KV." + bucketClients + "." + keyOf("kept-1")}
		if !slices.Equal(keys, want) {
			return fmt.Errorf("claims bucket holds %v, want %v", keys, want)
		}
		return nil
	})
}

// TestRetainedClearPurges: clearing a retained topic removes it from the
// bucket (no empty record stays), every node's copy is cleared, a node
// that sets the topic again right after its own clear keeps the new value
// (whether its clear reached the bucket before the new value or was
// replaced by it in the queue), and the purge marker expires.
func TestRetainedClearPurges(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pub1 := dial(t, nodes[0].addr, "p1", client.V5)
	pub2 := dial(t, nodes[1].addr, "p2", client.V5)
	retained := func(tn *testNode, topic string) string {
		m, _ := tn.srv.RetainedMatch(topic, 10)
		if len(m) == 0 {
			return ""
		}
		return string(m[0].Preview)
	}
	publish := func(c *client.Client, topic, payload string) {
		t.Helper()
		if err := c.Publish(ctx, &client.Message{Topic: topic, QoS: 1, Retain: true, Payload: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	publish(pub1, "plant/a", "v1")
	publish(pub1, "plant/b", "w1")
	for _, tn := range nodes {
		testutil.WaitFor(t, "the retained messages everywhere", 30*time.Second, func() bool {
			return retained(tn, "plant/a") == "v1" && retained(tn, "plant/b") == "w1"
		})
	}
	// n2 clears plant/a; n2 clears plant/b and sets it again at once.
	publish(pub2, "plant/a", "")
	publish(pub2, "plant/b", "")
	publish(pub2, "plant/b", "w2")
	for _, tn := range nodes {
		testutil.CheckFor(t, 30*time.Second, func() error {
			if a, b := retained(tn, "plant/a"), retained(tn, "plant/b"); a != "" || b != "w2" {
				return fmt.Errorf("%s: plant/a %q, plant/b %q; want cleared and w2", tn.node.cfg.Node, a, b)
			}
			return nil
		})
	}
	kv := nodes[2].node.kvs().retained
	if _, err := kv.Get(ctx, topicTokens("plant/a")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("plant/a in the bucket: %v", err)
	}
	// plant/a's clear is purged; plant/b's clear is purged too unless
	// its new value replaced it in n2's queue of writes (the bucket keeps
	// the last value of a topic, so only the latest change of one waits).
	testutil.WaitFor(t, "n2 to count its purges", 10*time.Second, func() bool {
		p := nodes[1].node.Status().RetainedPurged
		return p == 1 || p == 2
	})
	js, err := jetstream.New(nodes[0].node.nc)
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 30*time.Second, func() error {
		s, err := js.Stream(ctx, "KV_"+bucketRetained)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(">"))
		if err != nil {
			return err
		}
		if len(info.State.Subjects) != 1 || info.State.Msgs != 1 {
			return fmt.Errorf("retained bucket: %d messages on %v; want plant/b's value only", info.State.Msgs, info.State.Subjects)
		}
		return nil
	})
	// A node that starts watching after the marker expired has nothing
	// to clear; one that was watching kept the value of plant/b.
	for _, tn := range nodes {
		if a, b := retained(tn, "plant/a"), retained(tn, "plant/b"); a != "" || b != "w2" {
			t.Errorf("%s after the markers expired: plant/a %q, plant/b %q", tn.node.cfg.Node, a, b)
		}
	}
}

// TestSweepClaims: the claims a node's previous run left are removed at
// start, unless the client ID has a session on the node; other nodes'
// claims stay.
func TestSweepClaims(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alive, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[0].addr}, ClientID: "alive",
		CleanStart: true, SessionExpiry: 3600})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alive.Close() })
	testutil.WaitFor(t, "the claim of alive", 30*time.Second, func() bool { return claim(t, nodes[1], "alive") != nil })
	kv := nodes[0].node.kvs().clients
	for id, node := range map[string]string{"ghost": "n1/0ld", "alive": "n1/0ld", "elsewhere": "n2/0ld"} {
		val, _ := json.Marshal(claimRecord{Node: node, Owner: "anon:"})
		if _, err := kv.Put(ctx, keyOf(id), val); err != nil {
			t.Fatal(err)
		}
	}
	if n := nodes[0].node.sweepClaims(); n != 1 {
		t.Errorf("the sweep removed %d claims; want the ghost's only", n)
	}
	// A read of one key (a direct get) may be answered by any replica of
	// the bucket, one that has not applied the latest writes yet, and
	// two reads by two replicas: the keys are listed instead, by a
	// consumer of the stream's leader, which has every acknowledged
	// write; an earlier state is waited out.
	want := []string{"alive", "elsewhere"}
	testutil.CheckFor(t, 30*time.Second, func() error {
		got, ok := claimKeys(t, nodes[1])
		if !ok {
			return fmt.Errorf("the claims could not be listed")
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("claims %q; want %q: the ghost's removed, the claims of a live session and of another node kept", got, want)
		}
		return nil
	})
}

// claimKeys lists the client IDs with a claim in the bucket, sorted. A
// listing that fails (its consumer is created on the stream's leader,
// which may be moving after a node's death) is logged and reported as not
// ok, for the caller's wait to try again.
func claimKeys(t *testing.T, tn *testNode) ([]string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lister, err := tn.node.kvs().clients.ListKeys(ctx)
	if err != nil {
		t.Logf("listing the claims: %v", err)
		return nil, false
	}
	var ids []string
	for k := range lister.Keys() {
		id, err := keyString(k)
		if err != nil {
			t.Fatalf("claim key %q: %v", k, err)
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, true
}

// A peers list naming the node itself (the same list on every node) asks
// for copies and routes of the other nodes only.
func TestOwnAddressDroppedFromPeers(t *testing.T) {
	t.Parallel()
	routes := freePorts(t, 2)
	nd, err := Start(Config{Name: "test", Node: "n1", Listen: routes[0], Peers: []string{routes[0], routes[1]},
		StoreDir: t.TempDir(), Logger: slog.New(testLog(t)), setupAttempt: testSetupAttempt})
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Close()
	if !slices.Equal(nd.cfg.Peers, routes[1:]) || nd.replicas != 2 {
		t.Fatalf("peers %v, %d copies; want %v, 2 (a two-node cluster)", nd.cfg.Peers, nd.replicas, routes[1:])
	}
}

// testSpillKey seals the test nodes' retained spills.
var testSpillKey = bytes.Repeat([]byte{0x5a}, 32)

// testSpill is the retained spill of the test node name in dir.
func testSpill(dir, name string) string { return filepath.Join(dir, name+"-retained.db") }

// TestClockOffsetEstimate: the offset of another node's clock is the
// largest of its heartbeats' Sent less their arrival, over the last
// eight, known from the third; a delayed heartbeat only lowers its own
// sample. A new run of the node starts over.
func TestClockOffsetEstimate(t *testing.T) {
	var b beats
	t0 := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	beat := func(origin string, sent time.Time, delay time.Duration) (time.Duration, bool) {
		t.Helper()
		if ok, _, _ := b.record(heartbeat{V: 1, Node: "n2", Origin: origin, IntervalMS: 1000, Sent: sent}, sent.Add(-3*time.Second).Add(delay)); !ok {
			t.Fatal("not recorded")
		}
		pb := b.snapshot()["n2"]
		return pb.clockOffset()
	}
	// n2's clock is 3 s ahead: arrival = sent - 3 s + delay.
	if _, known := beat("n2/a", t0, 2*time.Millisecond); known {
		t.Fatal("known after one heartbeat")
	}
	beat("n2/a", t0.Add(time.Second), 1500*time.Millisecond) // held up
	o, known := beat("n2/a", t0.Add(2*time.Second), time.Millisecond)
	if !known || o != 3*time.Second-time.Millisecond {
		t.Fatalf("offset %v (known %v), want 2.999s", o, known)
	}
	for i := range 8 { // the quickest heartbeat leaves the window
		o, _ = beat("n2/a", t0.Add(time.Duration(3+i)*time.Second), 5*time.Millisecond)
	}
	if o != 3*time.Second-5*time.Millisecond {
		t.Fatalf("offset %v after eight more, want 2.995s", o)
	}
	if _, known := beat("n2/b", t0.Add(20*time.Second), 0); known {
		t.Fatal("a new run's offset known after one heartbeat")
	}
	// Without Sent (an earlier build): unknown.
	var old beats
	for range 4 {
		old.record(heartbeat{V: 1, Node: "n9", Origin: "n9/x", IntervalMS: 1000}, t0)
	}
	pb := old.snapshot()["n9"]
	if _, known := pb.clockOffset(); known {
		t.Fatal("an offset known without Sent")
	}
}

// TestClockOffsetLoggedAtMostOncePerMinute: an offset that swings about
// the bound (or made-up send times) is reported beyond it at once, and
// back within it no sooner than a minute later; the estimate itself is
// always the present one.
func TestClockOffsetLoggedAtMostOncePerMinute(t *testing.T) {
	t.Parallel()
	var b beats
	t0 := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	var reports []bool // true: beyond
	at := t0
	beat := func(offset time.Duration) time.Duration {
		t.Helper()
		at = at.Add(2 * time.Second)
		ok, o, changed := b.record(heartbeat{V: 1, Node: "n2", Origin: "n2/a", IntervalMS: 2000, Sent: at.Add(offset)}, at)
		if !ok {
			t.Fatal("not recorded")
		}
		if changed {
			reports = append(reports, o.Abs() > maxClockOffset)
		}
		return o
	}
	for range 3 {
		beat(0)
	}
	if len(reports) != 0 {
		t.Fatalf("reports %v for a clock in step", reports)
	}
	beat(5 * time.Second) // beyond: reported at once
	if len(reports) != 1 || !reports[0] {
		t.Fatalf("reports %v, want one beyond", reports)
	}
	// Back within after eight more heartbeats (the window forgets the
	// 5 s sample), 18 s later: not reported yet, though the estimate is
	// small again.
	var o time.Duration
	for range 8 {
		o = beat(0)
	}
	if o.Abs() > maxClockOffset || len(reports) != 1 {
		t.Fatalf("estimate %v, reports %v; want a small estimate, one report", o, reports)
	}
	for at.Sub(t0) < 70*time.Second {
		beat(0)
	}
	if len(reports) != 2 || reports[1] {
		t.Fatalf("reports %v, want beyond then within", reports)
	}
}

// TestClockOffset: n3's clock runs 5 s ahead. n1 estimates the offset
// from n3's heartbeats, lists it in its status with a problem, and says
// so once at Warn; n2's offset is known and small.
func TestClockOffset(t *testing.T) {
	t.Parallel()
	rec := &logRecorder{}
	nodes := startFresh(t, 3, []func(int, *Node){func(i int, nd *Node) {
		if i == 2 {
			nd.cfg.Now = func() time.Time { return time.Now().Add(5 * time.Second) }
		}
	}}, rec)
	n1 := nodes[0].node
	testutil.CheckFor(t, 60*time.Second, func() error {
		st := n1.Status()
		offsets := map[string]int64{}
		for _, ni := range st.Nodes {
			if ni.ClockOffsetMS != nil {
				offsets[ni.Node] = *ni.ClockOffsetMS
			}
		}
		o2, ok2 := offsets["n2"]
		o3, ok3 := offsets["n3"]
		if !ok2 || !ok3 || o3 < 4500 || o3 > 5100 || o2 < -500 || o2 > 100 {
			return fmt.Errorf("offsets %v, want n3 about +5000 ms and n2 about 0", offsets)
		}
		var probs []string
		for _, p := range st.Problems {
			if strings.Contains(p, "clock") {
				probs = append(probs, p)
			}
		}
		if len(probs) != 1 || !strings.HasPrefix(probs[0], "node n3's clock differs from this node's by ") {
			return fmt.Errorf("clock problems %q", probs)
		}
		return nil
	})
	msg := "cluster: another node's clock differs from this node's by more than 1s; the later of two changes of a retained topic, " +
		"ban or shared file is chosen by the nodes' clocks, and bans expire by them: synchronise the clocks (NTP)"
	testutil.WaitFor(t, "the offsets logged", 30*time.Second, func() bool { return len(rec.find(slog.LevelWarn, msg)) >= 4 })
	var heard []string
	for _, r := range rec.find(slog.LevelWarn, msg) {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "node" { // the line's own; the logger's comes after
				heard = append(heard, a.Value.String())
				return false
			}
			return true
		})
	}
	slices.Sort(heard)
	if want := []string{"n1", "n2", "n3", "n3"}; !slices.Equal(heard, want) {
		t.Errorf("Warn lines name %v, want %v (n1 and n2 each of n3, n3 of each)", heard, want)
	}
}
