package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

// relay forwards TCP connections from its own loopback port to target
// until it is cut: then it closes the connections it carries and those
// that arrive, until it is restored. A network cut between two nodes'
// routes, which the test makes and heals.
type relay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(r.close)
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) serve() {
	defer r.wg.Done()
	for {
		in, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.cut {
			r.mu.Unlock()
			in.Close()
			continue
		}
		out, err := net.DialTimeout("tcp", r.target, 5*time.Second)
		if err != nil {
			r.mu.Unlock()
			in.Close()
			continue
		}
		r.conns[in], r.conns[out] = struct{}{}, struct{}{}
		r.wg.Add(2)
		r.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			defer r.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			r.mu.Lock()
			delete(r.conns, dst)
			delete(r.conns, src)
			r.mu.Unlock()
		}
		go pipe(out, in)
		go pipe(in, out)
	}
}

// setCut cuts (true) or restores (false) the relay.
func (r *relay) setCut(cut bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cut = cut
	if cut {
		for c := range r.conns {
			c.Close()
		}
	}
}

func (r *relay) close() {
	r.ln.Close()
	r.setCut(true)
	r.wg.Wait()
}

// startRelayedCluster starts three nodes whose routes pass through
// relays: node i reaches node j through relays[i][j] only (the servers
// advertise an address nobody listens on, so that none dials another's
// route port directly). before runs on each node before its broker is
// attached (a clock, cluster.adopt_after: adoption is off otherwise).
func startRelayedCluster(t *testing.T, before ...func(i int, nd *Node)) ([]*testNode, [][]*relay) {
	t.Helper()
	return startRelayedNodes(t, 3, before...)
}

// startRelayedNodes is startRelayedCluster with count nodes.
func startRelayedNodes(t *testing.T, count int, before ...func(i int, nd *Node)) ([]*testNode, [][]*relay) {
	t.Helper()
	relays := make([][]*relay, count)
	for attempt := 0; ; attempt++ {
		routes := freePorts(t, count)
		for i := range count {
			relays[i] = make([]*relay, count)
			for j := range count {
				if i != j {
					relays[i][j] = newRelay(t, routes[j])
				}
			}
		}
		nodes, err := tryRelayedCluster(t, routes, relays, before)
		if err == nil {
			return nodes, relays
		}
		if attempt == 2 {
			t.Fatal(err)
		}
		t.Logf("retrying the cluster start: %v", err)
	}
}

func tryRelayedCluster(t *testing.T, routes []string, relays [][]*relay, before []func(int, *Node)) ([]*testNode, error) {
	log := slog.New(testLog(t))
	dir := t.TempDir()
	dead := freePorts(t, 1)[0] // advertised: nothing listens there
	var started []*Node
	fail := func(err error) ([]*testNode, error) {
		for _, s := range started {
			s.Close()
		}
		return nil, err
	}
	for i := range routes {
		name := fmt.Sprintf("n%d", i+1)
		var peers []string
		for j := range routes {
			if j != i {
				peers = append(peers, relays[i][j].addr())
			}
		}
		nd, err := Start(Config{Name: "test", Node: name, Listen: routes[i], Peers: peers, StoreDir: filepath.Join(dir, name),
			Logger: log.With("node", name), HeartbeatInterval: testHeartbeat, MarkerTTL: testMarkerTTL, AdoptAfter: -1,
			CommitTimeout: partitionCommitTimeout, advertise: dead, setupAttempt: testSetupAttempt})
		if err != nil {
			return fail(err)
		}
		started = append(started, nd)
	}
	var nodes []*testNode
	for i, nd := range started {
		srv, err := broker.New(broker.Config{Cluster: nd, Authorizer: broker.AllowAll, AllowAnonymous: true,
			Logger: log.With("node", fmt.Sprintf("n%d", i+1))})
		if err != nil {
			return fail(err)
		}
		for _, f := range before {
			f(i, nd)
		}
		nd.Attach(srv)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fail(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); _ = srv.Serve(ctx, ln, broker.ListenerConfig{Name: "plain"}) }()
		t.Cleanup(func() {
			cancel()
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = srv.Shutdown(sctx)
			scancel()
			wg.Wait()
		})
		nodes = append(nodes, &testNode{node: nd, srv: srv, addr: ln.Addr().String()})
	}
	t.Cleanup(func() {
		for _, nd := range started {
			nd.Close()
		}
	})
	for _, tn := range nodes {
		select {
		case <-tn.node.Ready():
		case <-time.After(60 * time.Second):
			return nil, errors.New("key-value store not ready within 60 s")
		}
	}
	return nodes, nil
}

// partitionCommitTimeout is the relayed nodes' commit timeout: long
// enough for the majority's stream to elect a new leader after the cut
// (a few seconds), shorter than the default 20 s the minority's refusal
// would otherwise wait for.
const partitionCommitTimeout = 10 * time.Second

// TestNetworkPartition cuts the routes of n3 from the other two (2 | 1):
// the majority keeps acknowledging QoS 1 messages, the minority refuses
// them (PUBACK 0x80 once its wait for the stream ends, the commit
// timeout); when the
// cut heals, the persistent session connected to the minority node gets
// every message published on the majority side meanwhile, once, in
// order, without reconnecting. A client ID connected on the minority
// node before the cut and again on the majority during it is taken over
// on the minority node when the cut heals: the majority's claim, written
// during the cut, reaches the minority's watch then.
func TestNetworkPartition(t *testing.T) {
	t.Parallel()
	nodes, relays := startRelayedCluster(t)
	sub, _ := dialSession(t, nodes[2].addr, "minority", client.V5)
	subscribe(t, sub, 1, "pt/#")
	pub := dial(t, nodes[0].addr, "ptpub", client.V5)
	awaitRoute(t, pub, sub, "pt/probe")
	publishQoS1(t, pub, "pt/x", 0, 5)
	receiveInOrder(t, sub, 0, 5)

	lone := dial(t, nodes[2].addr, "ptlone", client.V5) // connected before the cut (a new connection is refused there)
	both := dial(t, nodes[2].addr, "ptboth", client.V5)
	testutil.WaitFor(t, "n3's claim of ptboth", 30*time.Second, func() bool {
		stored, _ := claimState(nodes[2], "ptboth")
		return stored
	})
	cut := func(on bool) {
		for _, p := range [][2]int{{0, 2}, {2, 0}, {1, 2}, {2, 1}} {
			relays[p[0]][p[1]].setCut(on)
		}
	}
	cut(true)
	testutil.WaitFor(t, "n3 cut off", 30*time.Second, func() bool {
		return nodes[2].node.srv.NumRoutes() == 0 && nodes[0].node.srv.NumRemotes() == 1 && nodes[1].node.srv.NumRemotes() == 1
	})

	// The majority acknowledges.
	publishQoS1(t, pub, "pt/x", 5, 25)
	// The minority refuses: its QoS 1 message needs the stream (nodes
	// are missing), which has no quorum on its side.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := lone.Publish(ctx, &client.Message{Topic: "elsewhere/y", QoS: 1, Payload: []byte("cut")})
	if err == nil {
		t.Fatal("the minority node acknowledged a QoS 1 message")
	}
	t.Logf("the minority refused: %v", err)
	// The status follows the meta group as the node's replication loop
	// reads it: a minority node that led the meta group before the cut
	// names itself until its Raft notices the lost quorum and steps down.
	testutil.CheckFor(t, 60*time.Second, func() error {
		if st := nodes[2].node.Status(); st.MetaLeader != "" || st.Healthy {
			return fmt.Errorf("the minority's status: meta leader %q, healthy %v", st.MetaLeader, st.Healthy)
		}
		return nil
	})
	if st := nodes[0].node.Status(); st.MetaLeader == "" {
		t.Error("the majority has no meta leader")
	}
	dial(t, nodes[0].addr, "ptboth", client.V5)
	testutil.WaitFor(t, "n1's claim of ptboth", 30*time.Second, func() bool {
		stored, _ := claimState(nodes[0], "ptboth")
		return stored
	})
	if !both.IsConnected() {
		t.Fatal("ptboth's connection on n3 ended during the cut")
	}

	cut(false)
	testutil.WaitFor(t, "the cut healed", 60*time.Second, func() bool {
		return nodes[0].node.srv.NumRemotes() == 2 && nodes[2].node.srv.NumRemotes() == 2
	})
	receiveAtLeastOnce(t, sub, 5, 25)
	expectTakenOver(t, both, "ptboth's connection on n3")
	// And the cluster works on as one.
	publishQoS1(t, pub, "pt/x", 25, 30)
	receiveInOrder(t, sub, 25, 30)
}

// receiveAtLeastOnce reads messages from..to-1 from c: each at least
// once, the first delivery of each in order. A message before the next
// one expected is a redelivery (QoS 1 is at least once: a record whose
// acknowledgement the cut lost is read again), logged; a first delivery
// after it breaks the order or follows a gap, which fails. To tell a
// message lost from one late, the helper then reads on for a few seconds
// (or until every message came) and reports everything received.
func receiveAtLeastOnce(t *testing.T, c *client.Client, from, to int) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	var got []int          // every message received, in order
	seen := map[int]bool{} // first deliveries of from..to-1
	next := from           // the first delivery expected next
	var outOfOrder string  // the first violation of the order
	var linger <-chan time.Time
	report := func(why string) {
		t.Helper()
		var missing []int
		for i := from; i < to; i++ {
			if !seen[i] {
				missing = append(missing, i)
			}
		}
		t.Fatalf("%s; received %v, never %v", why, got, missing)
	}
	for len(seen) < to-from || linger != nil {
		select {
		case m := <-c.Messages():
			v, err := strconv.Atoi(string(m.Payload))
			if err != nil {
				continue // a probe
			}
			got = append(got, v)
			if v < from || v >= to || seen[v] {
				t.Logf("message %d again (at least once)", v)
				continue
			}
			seen[v] = true
			if v != next && outOfOrder == "" {
				outOfOrder = fmt.Sprintf("message %d missing or late: got %d first", next, v)
				linger = time.After(5 * time.Second)
			}
			for seen[next] {
				next++
			}
		case <-linger:
			report(outOfOrder)
		case <-deadline:
			if outOfOrder != "" {
				report(outOfOrder)
			}
			report(fmt.Sprintf("received up to %d of %d..%d", next, from, to))
		}
		if outOfOrder != "" && len(seen) == to-from {
			report(outOfOrder + " (every message came, out of order)")
		}
	}
	if len(got) > to-from {
		t.Logf("received %v (at least once)", got)
	}
}

// cutNode cuts (true) or restores (false) the routes between node k and
// the two others.
func cutNode(relays [][]*relay, k int, on bool) {
	for j := range relays {
		if j != k {
			relays[k][j].setCut(on)
			relays[j][k].setCut(on)
		}
	}
}

// TestPartitionLongerThanAdoptAfter cuts n3 off (2 | 1) twice. First
// for less than cluster.adopt_after (the test's clock): a clean
// session's connection that ends abnormally on n3 during the cut has its
// will held there (no quorum to remove its record) and published once,
// by n3, when the cut heals. Then for longer: the majority adopts n3 as
// if it had died. The will of a clean session's connection still open on
// n3 is published once, by the majority; when that connection then ends
// abnormally on n3, n3 publishes nothing (its removal of the will's
// record finds it removed). A clean session's connection that ended on
// n3 before the adoption has its will held there, published once by the
// majority's adoption, and not by n3 when the cut heals. When it heals,
// n3 marks the will of a connection still open there as published
// elsewhere, and that connection's abnormal end publishes nothing; n3
// also gives up the persistent session the majority adopted (its
// connection taken over); the client resumes on the majority with every
// QoS 1 message acknowledged during the cut. Subscribers on both sides
// get each will at most once, the majority's exactly once.
func TestPartitionLongerThanAdoptAfter(t *testing.T) {
	t.Parallel()
	clk := newTestClock()
	nodes, relays := startRelayedCluster(t, clk.hook(), adoptAfter(time.Minute))
	n3 := nodes[2]
	watch := dial(t, nodes[0].addr, "plwatch", client.V5)
	subscribe(t, watch, 1, "plw/#")
	probe := dial(t, n3.addr, "plprobe", client.V5)
	awaitRoute(t, probe, watch, "plw/probe")
	probe.Close()

	watch3 := dial(t, n3.addr, "plwatch3", client.V5)
	subscribe(t, watch3, 1, "plw/#")
	probe = dial(t, nodes[0].addr, "plprobe", client.V5)
	awaitRoute(t, probe, watch3, "plw/probe")
	probe.Close()
	n1 := nodes[0].node
	awaitWillRecords := func(ids ...string) {
		t.Helper()
		testutil.WaitFor(t, fmt.Sprintf("the wills of %v in the cluster", ids), 30*time.Second, func() bool {
			for _, id := range ids {
				if len(recordData(t, n1, cleanWillSubject(id, n3.node.origin))) == 0 {
					return false
				}
			}
			return true
		})
	}
	awaitMinority := func() {
		t.Helper()
		testutil.WaitFor(t, "n3 cut off", 30*time.Second, func() bool {
			return n3.node.srv.NumRoutes() == 0 && nodes[0].node.srv.NumRemotes() == 1 && nodes[1].node.srv.NumRemotes() == 1
		})
		testutil.CheckFor(t, 60*time.Second, func() error {
			if st := n3.node.Status(); st.MetaLeader != "" {
				return fmt.Errorf("the minority still names meta leader %q", st.MetaLeader)
			}
			return nil
		})
	}
	awaitHealed := func() {
		t.Helper()
		testutil.WaitFor(t, "the cut healed", 60*time.Second, func() bool {
			return nodes[0].node.srv.NumRemotes() == 2 && n3.node.srv.NumRemotes() == 2
		})
	}

	// Connected before the cuts (a new connection right after a cut
	// heals may be refused while the streams elect their leaders).
	sess, _ := dialSession(t, n3.addr, "plsess", client.V5)
	subscribe(t, sess, 1, "plq/#")
	pub := dial(t, nodes[0].addr, "plpub", client.V5)
	awaitRoute(t, pub, sess, "plq/probe")
	open := dialLiveWill(t, n3.addr, "plopen", "plw/open", 0, 0)
	early := dialLiveWill(t, n3.addr, "plearly", "plw/early", 0, 0)
	stay := dialLiveWill(t, n3.addr, "plstay", "plw/stay", 0, 0)
	awaitWillRecords("plopen", "plearly", "plstay")

	// A cut shorter than the grace period: n3 publishes the will of a
	// connection that ended there once the cut heals.
	short := dialLiveWill(t, n3.addr, "plshort", "plw/short", 0, 0)
	awaitWillRecords("plshort")
	cutNode(relays, 2, true)
	awaitMinority()
	short.Close()
	testutil.WaitFor(t, "n3 holding the will of plshort", 30*time.Second, func() bool {
		return n3.node.cw.held.Load() == 1
	})
	expectNoWill(t, watch3, 500*time.Millisecond)
	cutNode(relays, 2, false)
	awaitHealed()
	for _, w := range []*client.Client{watch3, watch} {
		if got := receiveWills(t, w, 1, 60*time.Second); !slices.Equal(got, []string{"plw/short"}) {
			t.Fatalf("wills %v; want plw/short", got)
		}
	}
	if s, w := adopted(nodes); s != 0 || w != 0 {
		t.Fatalf("%d sessions and %d wills adopted after a short cut", s, w)
	}

	// A cut longer than the grace period.
	cutNode(relays, 2, true)
	awaitMinority()
	// Acknowledged on the majority during the cut, before the adoption.
	publishQoS1(t, pub, "plq/x", 0, 5)

	// plearly's connection ends abnormally on n3 before the adoption:
	// its will waits for the session store, which has no quorum there.
	early.Close()
	testutil.WaitFor(t, "n3 holding the will of plearly", 30*time.Second, func() bool {
		return n3.node.cw.held.Load() == 1
	})
	expectNoWill(t, watch, 500*time.Millisecond)

	// Past the grace period: the majority adopts n3.
	testutil.WaitFor(t, "n3's session and clean sessions' wills adopted", 60*time.Second, func() bool {
		sinceHeard(clk, "n3", 70*time.Second, nodes[:2]...)
		s, w := adopted(nodes)
		return s == 1 && w == 3
	})
	if got := sessionNode(t, n1, "plsess"); got != "n1" && got != "n2" {
		t.Fatalf("the adopted session names node %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	adoptedAt, err := n1.getRecord(ctx, sessSubject("plsess", "s"))
	if err != nil || adoptedAt == nil {
		t.Fatalf("the adopted session's record: %v", err)
	}
	// Each will once, plopen's and plstay's while their connections
	// are open on n3.
	if got := receiveWills(t, watch, 3, 30*time.Second); !slices.Equal(got, []string{"plw/early", "plw/open", "plw/stay"}) {
		t.Fatalf("wills %v; want plw/early, plw/open and plw/stay", got)
	}
	select {
	case <-open.Done():
		t.Fatal("plopen's connection on n3 ended with the adoption")
	default:
	}
	// Acknowledged on the majority after the adoption: for the adopter.
	publishQoS1(t, pub, "plq/x", 5, 10)

	// plopen's connection now ends abnormally on n3: its will was
	// published already.
	open.Close()
	testutil.WaitFor(t, "n3 holding the will of plopen too", 30*time.Second, func() bool {
		return n3.node.cw.held.Load() == 2
	})

	// When the cut heals, n3 checks its sessions only once its consumer
	// has delivered it a record of those published during the cut: the
	// record waits for the check, and is not routed into the session
	// the majority adopted.
	received := n3.node.dur.received.Load()
	checked := make(chan bool, 1) // whether a record came first
	var once sync.Once
	beforeCheck := func() {
		once.Do(func() {
			deadline := time.Now().Add(30 * time.Second)
			for n3.node.dur.received.Load() == received && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			checked <- n3.node.dur.received.Load() != received
		})
	}
	n3.node.adopt.beforeCheck.Store(&beforeCheck)
	cutNode(relays, 2, false)
	awaitHealed()
	select {
	case came := <-checked:
		if !came {
			// The check then ran with nothing routed before it: what
			// follows still holds, but does not show the pause.
			t.Log("n3's consumer delivered nothing within 30 s of the cut's end; its check ran first")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("n3 did not check its sessions after the cut")
	}
	n3.node.adopt.beforeCheck.Store(nil)
	// Both held wills found published by the majority, and plstay's,
	// whose connection is still open, marked so.
	testutil.WaitFor(t, "n3's held wills decided", 60*time.Second, func() bool {
		return n3.node.cw.held.Load() == 0 && n3.node.cw.elsewhere.Load() == 3
	})
	select {
	case <-sess.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("n3 kept the connection of the session the majority adopted")
	}
	for _, si := range n3.srv.Sessions() {
		if si.ClientID == "plsess" {
			t.Fatal("n3 still holds the adopted session")
		}
	}
	// n3 wrote nothing into the adopted session when the cut healed:
	// the records of the durable stream it read then (the messages
	// published during the cut) are routed once it has given the
	// session up. Written, they reached the session's next home as
	// deliveries in flight, sent before the adopter's queue.
	records, err := n1.listRecords(ctx, sessPrefix+keyOf("plsess")+".>")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range records {
		if r.origin == n3.node.origin && r.seq > adoptedAt.seq {
			t.Errorf("n3 wrote %s (%d bytes) into the session the majority adopted", r.subject, len(r.data))
		}
	}
	// plstay's connection ends abnormally after the cut: no will, and
	// nothing held.
	stay.Close()
	testutil.WaitFor(t, "plstay's record removed", 30*time.Second, func() bool {
		r, err := n1.getRecord(context.Background(), cleanWillSubject("plstay", n3.node.origin))
		return err == nil && (r == nil || r.origin == n3.node.origin)
	})
	if h := n3.node.cw.held.Load(); h != 0 {
		t.Fatalf("n3 holds %d wills after plstay's end", h)
	}

	// No second will from any clean session. The majority's
	// publications may reach n3's subscriber through the durable stream
	// once the cut heals: at most once each.
	expectNoWill(t, watch, 2*time.Second)
	seen := map[string]int{}
	for quiet := time.After(3 * time.Second); quiet != nil; {
		select {
		case m := <-watch3.Messages():
			if isProbe(m) {
				continue
			}
			if seen[m.Topic]++; seen[m.Topic] > 1 || !slices.Contains([]string{"plw/open", "plw/early", "plw/stay"}, m.Topic) {
				t.Fatalf("n3's subscriber got %s (%d times)", m.Topic, seen[m.Topic])
			}
		case <-quiet:
			quiet = nil
		}
	}
	for _, id := range []string{"plopen", "plearly", "plstay"} {
		if d := recordData(t, n1, cleanWillSubject(id, n3.node.origin)); len(d) != 0 {
			t.Fatalf("the will record of %s is still in the cluster", id)
		}
	}

	// The session resumes on the majority with every acknowledged
	// message.
	again, present := dialSession(t, nodes[0].addr, "plsess", client.V5)
	if !present {
		t.Fatal("Session Present 0 for the adopted session")
	}
	receiveAtLeastOnce(t, again, 0, 10)
	if got := sessionNode(t, n1, "plsess"); got != "n1" {
		t.Fatalf("the resumed session names node %q", got)
	}
	if s, w := adopted(nodes); s != 1 || w != 3 {
		t.Fatalf("%d sessions and %d wills adopted in all; want 1 and 3", s, w)
	}
	// Back from the cut, n3 heard the others again: it adopted nothing
	// of theirs, whichever route came back first.
	if s, w := n3.node.adopt.sessions.Load(), n3.node.adopt.wills.Load(); s != 0 || w != 0 {
		t.Fatalf("n3 adopted %d sessions and %d wills of the majority's nodes", s, w)
	}
}

// adopted counts the sessions and clean sessions' wills n1 and n2
// adopted.
func adopted(nodes []*testNode) (sessions, wills uint64) {
	for _, tn := range nodes[:2] {
		sessions += tn.node.adopt.sessions.Load()
		wills += tn.node.adopt.wills.Load()
	}
	return
}

// expectNoWill fails if c receives a message other than a late probe
// within d.
func expectNoWill(t *testing.T, c *client.Client, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m := <-c.Messages():
			if !isProbe(m) {
				t.Fatalf("unexpected message %q on %s (a second will?)", m.Payload, m.Topic)
			}
		case <-deadline:
			return
		}
	}
}

// TestAdoptedWithoutSeeingCut cuts the routes between n1 and n3 only:
// n3 keeps a route to n2, and so routes to a majority and a JetStream
// quorum, and never sees a cut; n1 hears nothing of n3 and, past
// cluster.adopt_after (the test's clock), adopts n3's persistent
// session. When the routes between them heal, n3 hears in n1's
// heartbeat that n1 adopted its sessions, checks them and gives the
// session up (its connection taken over), as a node back from a cut
// does. Without the notice n3 keeps serving the session whose record
// names n1. (n3 adopts nothing here: it would otherwise take n1, which
// it hears nothing of either, for dead too, and adopt the session back.)
func TestAdoptedWithoutSeeingCut(t *testing.T) {
	t.Parallel()
	clk := newTestClock()
	nodes, relays := startRelayedCluster(t, clk.hook(), adoptAfter(time.Minute), func(i int, nd *Node) {
		if i == 2 {
			nd.cfg.AdoptAfter = -1
		}
	})
	n1, n3 := nodes[0], nodes[2]
	sess, _ := dialSession(t, n3.addr, "pcsess", client.V5)
	subscribe(t, sess, 1, "pcq/#")
	pub := dial(t, n1.addr, "pcpub", client.V5)
	awaitRoute(t, pub, sess, "pcq/probe")
	// The meta leader on n2, which both keep hearing: led by n1 (or
	// n3), the other lost it at the cut and had no quorum until an
	// election, which the check below took for a cut seen.
	takeLead(t, nodes[1].node, "n2")

	relays[0][2].setCut(true)
	relays[2][0].setCut(true)
	testutil.WaitFor(t, "n1 and n3 cut from each other only", 30*time.Second, func() bool {
		return !n1.node.peerConnected("n3") && !n3.node.peerConnected("n1") &&
			n3.node.peerConnected("n2") && n1.node.peerConnected("n2")
	})
	testutil.WaitFor(t, "n3's session adopted by n1", 60*time.Second, func() bool {
		sinceHeard(clk, "n3", 70*time.Second, n1)
		return n1.node.adopt.sessions.Load() == 1
	})
	if got := sessionNode(t, n1.node, "pcsess"); got != "n1" {
		t.Fatalf("the adopted session names node %q", got)
	}
	if !n3.node.routedToMajority() || !n3.node.hasQuorum() {
		t.Fatal("n3 saw itself cut off: the test needs a node that does not")
	}
	select {
	case <-sess.Done():
		t.Fatal("n3 gave the session up while it could not hear n1")
	default:
	}

	relays[0][2].setCut(false)
	relays[2][0].setCut(false)
	select {
	case <-sess.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("n3 kept the connection of the session n1 adopted")
	}
	testutil.WaitFor(t, "n3 no longer holding the session", 30*time.Second, func() bool {
		for _, si := range n3.srv.Sessions() {
			if si.ClientID == "pcsess" {
				return false
			}
		}
		return true
	})
}
