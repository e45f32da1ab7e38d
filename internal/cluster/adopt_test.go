package cluster

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

// testClock is a clock that stands still until a test moves it: no
// time passes for it while a slow test waits for the cluster.
type testClock struct {
	base   time.Time
	offset atomic.Int64
}

func newTestClock() *testClock { return &testClock{base: time.Now()} }

func (c *testClock) Now() time.Time          { return c.base.Add(time.Duration(c.offset.Load())) }
func (c *testClock) Advance(d time.Duration) { c.offset.Add(int64(d)) }
func (c *testClock) hook() func(int, *Node)  { return func(_ int, nd *Node) { c.set(nd) } }
func (c *testClock) set(nd *Node)            { nd.cfg.Now, nd.adopt.start = c.Now, c.Now() }

func adoptAfter(d time.Duration) func(int, *Node) {
	return func(_ int, nd *Node) { nd.cfg.AdoptAfter = d }
}

// dialWill connects a persistent MQTT 5 session (expiry seconds) with a
// will of delay seconds on topic.
func dialWill(t *testing.T, addr, id, topic string, delay, expiry uint32) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := &client.Will{Topic: topic, Payload: []byte(id + " gone"), QoS: 1}
	w.Properties.SetWillDelay(delay)
	c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + addr}, ClientID: id, SessionExpiry: expiry, Will: w})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// restartWithListener starts node i of routes again on its store in dir,
// with a broker serving MQTT on a new loopback port; both stop when the
// test ends.
func restartWithListener(t *testing.T, dir string, routes []string, i int, before func(*Node)) *testNode {
	t.Helper()
	return restartSeeded(t, dir, routes, i, before, nil)
}

// restartSeeded is restartWithListener whose broker is given to seed
// before the node is attached to it (as a broker's store is loaded
// before that).
func restartSeeded(t *testing.T, dir string, routes []string, i int, before func(*Node), seed func(*broker.Server)) *testNode {
	t.Helper()
	name := "n" + string(rune('1'+i))
	log := slog.New(testLog(t))
	nd := startAgain(t, Config{Name: "test", Node: name, Listen: routes[i], Peers: routes, StoreDir: filepath.Join(dir, name),
		Logger: log.With("node", name), RetainedSpill: testSpill(dir, name), RetainedSpillKey: testSpillKey,
		HeartbeatInterval: testHeartbeat, MarkerTTL: testMarkerTTL, setupAttempt: testSetupAttempt})
	srv, err := broker.New(broker.Config{Cluster: nd, Authorizer: broker.AllowAll, AllowAnonymous: true, Logger: log})
	if err != nil {
		nd.Close()
		t.Fatal(err)
	}
	if before != nil {
		before(nd)
	}
	if seed != nil {
		seed(srv)
	}
	nd.Attach(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
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
		nd.Close()
	})
	return &testNode{node: nd, srv: srv, addr: ln.Addr().String()}
}

// startAgain starts a stopped node of a test's cluster with cfg. Its
// route port may have been taken while it was stopped (a node of a test
// running beside it picked it as free): it then starts on a free one,
// which the other nodes learn from the routes it opens to them. Its old
// address leaves its own peers, so that it does not route to whatever
// holds that port now.
func startAgain(t *testing.T, cfg Config) *Node {
	t.Helper()
	for attempt := 0; ; attempt++ {
		nd, err := Start(cfg)
		if err == nil {
			return nd
		}
		if attempt >= 2 || !strings.Contains(err.Error(), "did not start within") {
			t.Fatal(err)
		}
		old := cfg.Listen
		cfg.Listen = freePorts(t, 1)[0]
		cfg.Peers = slices.DeleteFunc(slices.Clone(cfg.Peers), func(a string) bool { return a == old })
		t.Logf("%s: route port %s taken (%v); starting on %s", cfg.Node, old, err, cfg.Listen)
	}
}

// crashNode makes tn vanish as in a crash: its NATS server goes away
// under it (nothing more of it reaches the cluster), then its broker and
// node stop.
func crashNode(t *testing.T, tn *testNode) {
	t.Helper()
	tn.node.srv.Shutdown()
	tn.node.srv.WaitForShutdown()
	stopNode(t, tn)
}

// sinceHeard advances clk, if need be, until it is d past the moment
// each of watchers last heard gone's heartbeat. Call it again while
// waiting for what d brings: a heartbeat of gone's still on its way to a
// watcher when the clock moved is dated by the moved clock, and gone
// would never look silent for d (TestAdoptionOwnMessagesDuringImport
// timed out so once under the full suite's load).
func sinceHeard(clk *testClock, gone string, d time.Duration, watchers ...*testNode) {
	var target time.Time
	for _, w := range watchers {
		if pb, ok := w.node.beats.snapshot()[gone]; ok && pb.seen.Add(d).After(target) {
			target = pb.seen.Add(d)
		}
	}
	if now := clk.Now(); target.After(now) {
		clk.Advance(target.Sub(now))
	}
}

// sessionNode reads which node the session record of id names.
func sessionNode(t *testing.T, via *Node, id string) string {
	t.Helper()
	// A read may time out while the stream's leader is one via has no
	// route to (a partial cut) or changes: read again, for up to 60 s.
	var r *storedRecord
	var err error
	for end := time.Now().Add(60 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err = via.getRecord(ctx, sessSubject(id, "s"))
		cancel()
		if err == nil || time.Now().After(end) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if r == nil || len(r.data) == 0 {
		return ""
	}
	rec, err := decodeSession(r.data)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Node
}

// TestAdoptSessionsOfDeadNode: a node holding three persistent sessions
// (one offline with a delayed will, one offline with a short expiry, one
// connected) crashes. Nothing moves during the grace period; once the
// survivors' clock passes cluster.adopt_after, exactly one of them
// adopts each session: the will fires once, the short session expires
// and is removed from the cluster, the dead node's claims are removed.
// The dead node comes back and takes nothing back (no second will); the
// client connecting later resumes on a survivor with Session Present 1
// and the QoS 1 messages published while its node was dead.
func TestAdoptSessionsOfDeadNode(t *testing.T) {
	t.Parallel()
	clk := newTestClock()
	nodes, dir, routes := startOwn(t, 3, clk.hook(), adoptAfter(time.Minute))
	watch := dial(t, nodes[0].addr, "adwatch", client.V5)
	subscribe(t, watch, 1, "adw/#")
	probe := dial(t, nodes[2].addr, "adprobe", client.V5)
	awaitRoute(t, probe, watch, "adw/probe")
	probe.Close()

	dying := dialWill(t, nodes[2].addr, "dying", "adw/dying", 3, 600)
	subscribe(t, dying, 1, "adq/#")
	pub := dial(t, nodes[0].addr, "adpub", client.V5)
	awaitRoute(t, pub, dying, "adq/probe")
	dying.Close() // without DISCONNECT: the will waits for its delay on n3
	brief := dialWill(t, nodes[2].addr, "brief", "adw/brief", 3600, 4)
	disconnect(t, brief) // no will; the session expires 4 s after this
	online := dialWill(t, nodes[2].addr, "online", "adw/online", 3600, 600)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// A readiness wait, not a measure: on a loaded machine the fresh
	// cluster's first elections have taken over 30 s.
	testutil.WaitFor(t, "the pending will and the claims in the cluster", 90*time.Second, func() bool {
		r, err := nodes[0].node.getRecord(ctx, sessSubject("dying", "w"))
		keys, ok := claimKeys(t, nodes[0])
		return ok && err == nil && r != nil && len(r.data) > 0 && slices.Contains(keys, "online") && slices.Contains(keys, "dying")
	})

	crashNode(t, nodes[2])
	online.Close()
	publishQoS1(t, pub, "adq/x", 0, 5) // for dying's session, whose node is dead

	// Within the grace period nothing is adopted.
	sinceHeard(clk, "n3", 30*time.Second, nodes[:2]...)
	for range 3 {
		for _, tn := range nodes[:2] {
			tn.node.adoptDue()
		}
	}
	if a, b := nodes[0].node.Status().SessionsAdopted, nodes[1].node.Status().SessionsAdopted; a+b != 0 {
		t.Fatalf("%d sessions adopted within the grace period", a+b)
	}
	if got := sessionNode(t, nodes[0].node, "dying"); got != "n3" {
		t.Fatalf("the session's node is %q within the grace period", got)
	}

	testutil.WaitFor(t, "the three sessions adopted", 60*time.Second, func() bool {
		sinceHeard(clk, "n3", 90*time.Second, nodes[:2]...)
		return nodes[0].node.Status().SessionsAdopted+nodes[1].node.Status().SessionsAdopted == 3
	})
	for _, id := range []string{"dying", "online"} {
		if got := sessionNode(t, nodes[0].node, id); got != "n1" && got != "n2" {
			t.Fatalf("the session of %s names node %q after the adoption", id, got)
		}
	}
	for will := false; !will; {
		select {
		case m := <-watch.Messages():
			if m.Topic == "adw/probe" {
				continue // a later probe of awaitRoute
			}
			if m.Topic != "adw/dying" {
				t.Fatalf("got %s %q; want the will of dying", m.Topic, m.Payload)
			}
			will = true
		case <-ctx.Done():
			t.Fatal("the adopted session's will did not fire")
		}
	}
	testutil.WaitFor(t, "the short session expired and removed from the cluster", 30*time.Second, func() bool {
		return sessionNode(t, nodes[0].node, "brief") == ""
	})
	testutil.WaitFor(t, "the dead node's claims removed", 30*time.Second, func() bool {
		keys, ok := claimKeys(t, nodes[0])
		return ok && !slices.Contains(keys, "online") && !slices.Contains(keys, "dying") && !slices.Contains(keys, "brief")
	})

	// The dead node comes back: it imports none of them, fires no will.
	back := restartWithListener(t, dir, routes, 2, clk.set)
	select {
	case <-back.node.sess.ready:
	case <-ctx.Done():
		t.Fatal("the returning node's sessions not ready")
	}
	if st := back.node.Status(); st.SessionsIn != 0 {
		t.Fatalf("the returning node imported %d sessions", st.SessionsIn)
	}
	expectNone(t, watch, 2*time.Second)
	for _, id := range []string{"dying", "online"} {
		if got := sessionNode(t, nodes[0].node, id); got != "n1" && got != "n2" {
			t.Fatalf("the session of %s names node %q after its old node returned", id, got)
		}
	}

	// The client comes back: its session, queue and subscription are
	// there, on whichever node it connects to.
	c, present := dialSession(t, back.addr, "dying", client.V5)
	if !present {
		t.Fatal("Session Present 0 for an adopted session")
	}
	receiveInOrder(t, c, 0, 5)
	expectNone(t, c, 500*time.Millisecond)
}

// TestReconcileHomesAfterCut: a node cut off from the majority for longer
// than the grace period finds, once back, that a session it held was
// adopted meanwhile (here the adoption's compare-and-set is made by hand,
// as the majority's adopter makes it): it gives the session up, taking
// its connection over, and writes nothing more of it. The connection's
// will went with the session (the adopter publishes or holds it): the
// takeover publishes none here.
func TestReconcileHomesAfterCut(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, adoptAfter(-1))
	watch := dial(t, nodes[2].addr, "splitwatch", client.V5)
	subscribe(t, watch, 1, "splitwill/#")
	c := dialWill(t, nodes[2].addr, "split", "splitwill/x", 0, 600)
	subscribe(t, c, 1, "split/#")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cur := awaitSessionOn(t, ctx, nodes[0].node, "split", "n3")
	if n, err := nodes[2].node.reconcileHomes(); n != 0 || err != nil {
		t.Fatalf("%d sessions given up while their records name this node (%v)", n, err)
	}
	adoptByHand(t, ctx, nodes[0].node, "split", cur)
	if n, err := nodes[2].node.reconcileHomes(); n != 1 || err != nil {
		t.Fatalf("%d sessions given up (%v); want the adopted one", n, err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the connection to the adopted session stayed")
	}
	expectNone(t, watch, time.Second)
	for _, si := range nodes[2].srv.Sessions() {
		if si.ClientID == "split" {
			t.Fatal("the node still holds the adopted session")
		}
	}
	// Whatever the node had to write is written once an empty commit
	// after it is.
	done := make(chan error, 1)
	nodes[2].node.persistence().Persist(nil, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := sessionNode(t, nodes[0].node, "split"); got != "n1" {
		t.Fatalf("the session's record names %q after the node gave it up", got)
	}
}

// awaitSessionOn waits until the record of id's session, as n reads it,
// has its one subscription and names node, and returns it.
func awaitSessionOn(t *testing.T, ctx context.Context, n *Node, id, node string) *storedRecord {
	t.Helper()
	var cur *storedRecord
	testutil.WaitFor(t, "the session's record with its subscription", 30*time.Second, func() bool {
		r, err := n.getRecord(ctx, sessSubject(id, "s"))
		if err != nil || r == nil || len(r.data) == 0 {
			return false
		}
		rec, err := decodeSession(r.data)
		cur = r
		return err == nil && len(rec.Subs) == 1 && rec.Node == node
	})
	return cur
}

// adoptByHand makes, through n, the compare-and-set an adopter on n1
// makes on the record cur of id's session.
func adoptByHand(t *testing.T, ctx context.Context, n *Node, id string, cur *storedRecord) {
	t.Helper()
	rec, _ := decodeSession(cur.data)
	rec.Home, rec.Node = "n1/adopter", "n1"
	if _, err := n.putRecord(ctx, sessSubject(id, "s"), mustRecord(rec), cur.seq); err != nil {
		t.Fatal(err)
	}
}

// TestNoticeCheckedAgain: a node that hears another adopted its sessions
// checks them more than once. Its first check can read the records
// before they show the adoption: from a replica of moat_sessions that
// led the stream before the cut and has not heard yet that it was
// replaced (seen in the tests: the read 0.2 s before that replica
// stepped down), or while the adoption is under way. Here the first
// check runs before the adopter's compare-and-set (made by hand); the
// one after it gives the session up. With a single check, the node
// kept the connection of a session another node held.
func TestNoticeCheckedAgain(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, adoptAfter(-1))
	n3 := nodes[2].node
	c, _ := dialSession(t, nodes[2].addr, "stale", client.V5)
	subscribe(t, c, 1, "stale/#")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cur := awaitSessionOn(t, ctx, nodes[0].node, "stale", "n3")

	written := make(chan struct{})
	var calls atomic.Int32
	hook := func() {
		if calls.Add(1) == 2 {
			<-written // the second check reads after the adoption
		}
	}
	n3.adopt.beforeCheck.Store(&hook)
	defer n3.adopt.beforeCheck.Store(nil)
	before := n3.adopt.checks.Load()
	n3.heardNotices(heartbeat{Node: "n1", Origin: "n1/adopter",
		Adopted: []adoptNotice{{Origin: n3.origin, K: 1}}})
	testutil.WaitFor(t, "n3's first check", 30*time.Second, func() bool {
		return n3.adopt.checks.Load() > before
	})
	select {
	case <-c.Done():
		t.Fatal("the session given up before anything adopted it")
	default:
	}

	adoptByHand(t, ctx, nodes[0].node, "stale", cur)
	close(written)
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the session adopted after the notice's first check was kept")
	}
	testutil.WaitFor(t, "the checks the notice asked for", 30*time.Second, func() bool {
		return !n3.checksOwed()
	})
	if got := n3.adopt.checks.Load() - before; got < homeChecks {
		t.Fatalf("%d checks after the notice; want at least %d", got, homeChecks)
	}
	// The same notice heard again asks for nothing more.
	n3.heardNotices(heartbeat{Node: "n1", Origin: "n1/adopter",
		Adopted: []adoptNotice{{Origin: n3.origin, K: 1}}})
	if n3.checksOwed() {
		t.Fatal("checks owed for a notice heard before")
	}
}

// TestAdoptionCountsSilenceFromReturn: a node back from being cut off
// from most of the cluster (the minority side of a partition longer than
// cluster.adopt_after, whose routes heal one after the other) heard no
// heartbeats while cut off. It counts the other nodes' silence from its
// return: a node whose route is not back yet is not adopted until the
// grace period has run from then.
func TestAdoptionCountsSilenceFromReturn(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	n := &Node{cfg: Config{Node: "n3", AdoptAfter: time.Minute, HeartbeatInterval: time.Second}}
	n.adopt.start = t0
	for _, name := range []string{"n1", "n2"} {
		n.beats.record(heartbeat{Node: name, IntervalMS: 1000}, t0)
	}
	meta := []string{"n1", "n2", "n3", "n4"} // n4: a JetStream peer never heard from
	names := func(gs []goneNode) []string {
		var out []string
		for _, g := range gs {
			out = append(out, g.name)
		}
		return out
	}
	if got := names(n.dueForAdoption(t0.Add(30*time.Second), meta)); got != nil {
		t.Fatalf("due within the grace period: %v", got)
	}
	if got := names(n.dueForAdoption(t0.Add(90*time.Second), meta)); !slices.Equal(got, []string{"n1", "n2", "n4"}) {
		t.Fatalf("due after 90 s of silence: %v; want n1, n2 and n4", got)
	}
	// Cut off until 90 s: nothing is due until a minute after that.
	back := t0.Add(90 * time.Second)
	n.adopt.back = back
	for _, d := range []time.Duration{0, 30 * time.Second, time.Minute - time.Millisecond} {
		if got := names(n.dueForAdoption(back.Add(d), meta)); got != nil {
			t.Fatalf("due %v after the return: %v", d, got)
		}
	}
	if got := names(n.dueForAdoption(back.Add(time.Minute), meta)); !slices.Equal(got, []string{"n1", "n2", "n4"}) {
		t.Fatalf("due a minute after the return: %v; want n1, n2 and n4", got)
	}
}

// TestAdoptionsOfOneNodeOneAtATime: two adoptions of the same node gone,
// started at once on one node (its adoption loop and a removal of the
// node, or a test's call), import each of its sessions once. Overlapping,
// the one that lost a session's compare-and-set read the record the other
// had just written, took it for a write of its own whose answer was lost
// and imported the session a second time.
func TestAdoptionsOfOneNodeOneAtATime(t *testing.T) {
	t.Parallel()
	const sessions = 16
	nodes := startCluster(t, 3, adoptAfter(-1))
	for i := range sessions {
		c, _ := dialSession(t, nodes[2].addr, "one"+strconv.Itoa(i), client.V5)
		disconnect(t, c)
	}
	crashNode(t, nodes[2])
	n2 := nodes[1].node
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Rounds until both adoptions of a round end without an error (a
	// stream's leader may have died with n3): whatever the rounds, each
	// session is adopted once.
	for round := 1; ; round++ {
		var wg sync.WaitGroup
		var errs [2]error
		for i := range errs {
			wg.Go(func() { _, _, errs[i] = n2.adoptNode(ctx, "n3") })
		}
		wg.Wait()
		if errs[0] == nil && errs[1] == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("adoptions failed until round %d: %v", round, errors.Join(errs[:]...))
		}
	}
	if got := n2.Status().SessionsAdopted; got != sessions {
		t.Errorf("%d sessions adopted, want %d (each once)", got, sessions)
	}
}

// TestAdoptDueSkipsWhileAdoptionRuns: while an adoption holds the node's
// turn (a removal's), adoptDue adopts nothing and returns at once rather
// than wait for the turn, which held up the adoption loop's checks for
// up to two minutes; once the turn is free, the next call adopts.
func TestAdoptDueSkipsWhileAdoptionRuns(t *testing.T) {
	t.Parallel()
	clk := newTestClock()
	nodes, _, _ := startOwn(t, 3, func(i int, nd *Node) {
		nd.cfg.AdoptAfter = -1 // only n2 adopts
		if i == 1 {
			clk.set(nd)
			nd.cfg.AdoptAfter = time.Minute
		}
	})
	c, _ := dialSession(t, nodes[2].addr, "busyturn", client.V5)
	disconnect(t, c)
	n2 := nodes[1].node
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	release, err := n2.adoptTurn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	crashNode(t, nodes[2])
	// n3 due for adoption, and a meta leader (without one adoptDue
	// returns at once for that reason).
	testutil.WaitFor(t, "a meta leader after n3's death", 60*time.Second, n2.hasQuorum)
	sinceHeard(clk, "n3", 2*time.Minute, nodes[1])
	// (n1 is due by the clock too, but has a route: left alone.)
	if due := n2.dueForAdoption(n2.now(), nil); !slices.ContainsFunc(due, func(g goneNode) bool { return g.name == "n3" }) {
		t.Fatalf("n3 not due for adoption: %v", due)
	}
	returned := make(chan int, 1)
	go func() { returned <- n2.adoptDue() }()
	select {
	case got := <-returned:
		if got != 0 || n2.Status().SessionsAdopted != 0 {
			t.Fatalf("adopted %d sessions (status %d) while another adoption held the turn", got, n2.Status().SessionsAdopted)
		}
	case <-ctx.Done():
		release()
		<-returned
		t.Fatal("adoptDue waited for the turn")
	}
	release()
	testutil.WaitFor(t, "the session adopted by n2", 60*time.Second, func() bool {
		sinceHeard(clk, "n3", 2*time.Minute, nodes[1])
		n2.adoptDue()
		return n2.Status().SessionsAdopted == 1
	})
}

// TestAdoptionLostAnswerWaitsForClaim: an adoption's write takes the
// session's home but its answer is lost. Meanwhile the session's client
// connects to the adopting node; its claim waits for the adoption's take,
// then takes the session from the record the adoption wrote. The
// adoption reads the record back, finds it naming its node, and waits
// for the claim under way rather than import the session beside it: the
// session is imported once, by the claim, with its subscription. Before,
// the adoption imported it a second time while the claim was importing
// it (the claim is held after its write here so that both overlap).
func TestAdoptionLostAnswerWaitsForClaim(t *testing.T) {
	t.Parallel()
	const id = "lostanswer"
	nodes := startCluster(t, 3, adoptAfter(-1))
	c, _ := dialSession(t, nodes[2].addr, id, client.V5)
	subscribe(t, c, 1, "la/#")
	disconnect(t, c)
	crashNode(t, nodes[2])
	n2 := nodes[1].node
	var imports atomic.Int32
	countImport := func(cid string) {
		if cid == id {
			imports.Add(1)
		}
	}
	n2.sess.beforeImport.Store(&countImport)
	type dialed struct {
		c   *client.Client
		err error
	}
	claimed := make(chan dialed, 1)
	var lost, held atomic.Bool
	loseAnswer := func(cid string) error {
		if cid != id || !lost.CompareAndSwap(false, true) {
			return nil
		}
		// The client connects to n2 now; its claim waits for this take
		// to end.
		waits := n2.sess.takeWaits.Load()
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: id, SessionExpiry: 600})
			claimed <- dialed{c, err}
		}()
		for deadline := time.Now().Add(20 * time.Second); n2.sess.takeWaits.Load() == waits; {
			if time.Now().After(deadline) {
				return errors.New("the claim did not come")
			}
			time.Sleep(5 * time.Millisecond)
		}
		return errors.New("the answer was lost")
	}
	n2.sess.takeAnswerLost.Store(&loseAnswer)
	adopted := make(chan struct{})
	holdClaim := func(cid string) {
		// The first take after the lost answer is the claim's: held
		// until the adoption has ended, 2 s at most.
		if cid == id && lost.Load() && held.CompareAndSwap(false, true) {
			select {
			case <-adopted:
			case <-time.After(2 * time.Second):
			}
		}
	}
	n2.sess.afterTake.Store(&holdClaim)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		_, _, err := n2.adoptNode(ctx, "n3")
		if err == nil || !lost.Load() {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
	}
	close(adopted)
	if !lost.Load() {
		t.Fatal("the adoption took no session")
	}
	d := <-claimed
	if d.err != nil {
		t.Fatalf("the client's claim: %v", d.err)
	}
	defer d.c.Close()
	if !d.c.ConnectInfo().SessionPresent {
		t.Error("the client's session was not present")
	}
	if got := imports.Load(); got != 1 {
		t.Errorf("the session was imported %d times, want once", got)
	}
	if got := n2.Status().SessionsAdopted; got != 0 {
		t.Errorf("%d sessions adopted, want none (the claim took it)", got)
	}
	pub := dial(t, nodes[0].addr, "lostanswer-pub", client.V5)
	awaitRoute(t, pub, d.c, "la/probe")
	publishQoS1(t, pub, "la/x", 0, 5)
	receiveInOrder(t, d.c, 0, 5)
}
