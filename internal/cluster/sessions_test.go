package cluster

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
	"github.com/nats-io/nats.go/jetstream"
)

// dialResult is the end of a connection attempt made on another
// goroutine (dialAsync).
type dialResult struct {
	c   *client.Client
	err error
}

// dialAsync connects an MQTT 5 client with a persistent session of id
// to addr on another goroutine, which gives up after d, and sends the
// result on the channel returned.
func dialAsync(addr, id string, d time.Duration) <-chan dialResult {
	got := make(chan dialResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + addr}, ClientID: id,
			Version: client.V5, SessionExpiry: 600})
		got <- dialResult{c, err}
	}()
	return got
}

// dialSession connects a client with a persistent session (MQTT 5:
// expiry 600 s; 3.1.1: clean session 0) and returns it with its CONNACK's Session Present.
func dialSession(t *testing.T, addr, id string, v client.Version) (*client.Client, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := client.Config{Servers: []string{"tcp://" + addr}, ClientID: id, Version: v}
	if v == client.V5 {
		cfg.SessionExpiry = 600
	}
	var c *client.Client
	for {
		var err error
		c, err = client.Dial(ctx, cfg)
		var re *client.ReasonError
		if errors.As(err, &re) && (re.Code == packet.ServerUnavailable || re.Code == packet.V3ServerUnavailable) && ctx.Err() == nil {
			// The session could not be handed over yet (a slow cluster):
			// a client tries again, as the refusal asks.
			t.Logf("connect %s: %v; again", id, err)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	t.Cleanup(func() { c.Close() })
	return c, c.ConnectInfo().SessionPresent
}

func disconnect(t *testing.T, c *client.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
}

// expectNone fails if c receives a message within d.
func expectNone(t *testing.T, c *client.Client, d time.Duration) {
	t.Helper()
	select {
	case m := <-c.Messages():
		t.Fatalf("unexpected message %q on %s (a duplicate?)", m.Payload, m.Topic)
	case <-time.After(d):
	}
}

// TestSessionMovesAcrossNodes: a persistent session subscribes on n1 and
// goes offline; QoS 1 messages published on n3 are queued for it; the
// client resumes on n2 with Session Present 1 and receives each message
// once, in order, and its subscription goes on working there. Then it
// moves back to n1 while connected: the connection on n2 is taken over.
func TestSessionMovesAcrossNodes(t *testing.T) {
	nodes := commonCluster(t)
	imported := nodes[1].node.Status().SessionsIn
	sub, present := dialSession(t, nodes[0].addr, "mover", client.V5)
	if present {
		t.Fatal("a new session was present")
	}
	subscribe(t, sub, 1, "mv/#")
	pub := dial(t, nodes[2].addr, "mvpub", client.V5)
	awaitRoute(t, pub, sub, "mv/probe")
	disconnect(t, sub)

	const n = 20
	publishQoS1(t, pub, "mv/x", 0, n)

	sub2, present := dialSession(t, nodes[1].addr, "mover", client.V5)
	if !present {
		t.Fatal("Session Present 0 on the second node")
	}
	receiveInOrder(t, sub2, 0, n)
	expectNone(t, sub2, 500*time.Millisecond)
	if got := nodes[1].node.Status(); got.SessionsIn == imported {
		t.Fatalf("n2 imported no session: %+v", got)
	}
	// The subscription came along: new messages reach the client on n2.
	publishQoS1(t, pub, "mv/x", n, n+5)
	receiveInOrder(t, sub2, n, n+5)

	// Back to n1 while connected on n2: n2's connection is taken over.
	sub3, present := dialSession(t, nodes[0].addr, "mover", client.V5)
	if !present {
		t.Fatal("Session Present 0 back on the first node")
	}
	select {
	case <-sub2.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the connection on n2 was not taken over")
	}
	publishQoS1(t, pub, "mv/x", n+5, n+10)
	receiveInOrder(t, sub3, n+5, n+10)
	expectNone(t, sub3, 500*time.Millisecond)
}

// TestSessionMessagesWhileHomeDown: the node holding an offline
// persistent session with queued messages goes away; the client resumes
// on a survivor with its queue and the messages published while its
// session had no node (the durable stream from its old node's position).
func TestSessionMessagesWhileHomeDown(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	sub, _ := dialSession(t, nodes[0].addr, "orphan", client.V311)
	subscribe(t, sub, 1, "or/#")
	pub := dial(t, nodes[2].addr, "orpub", client.V5)
	awaitRoute(t, pub, sub, "or/probe")
	publishQoS1(t, pub, "or/x", 0, 10)
	receiveInOrder(t, sub, 0, 10)
	disconnect(t, sub)
	publishQoS1(t, pub, "or/x", 10, 20) // queued on n1
	testutil.WaitFor(t, "n1 to route the queued messages", 30*time.Second, func() bool {
		return nodes[0].node.Status().StreamIn >= 20
	})

	// n1 goes away; the session's client comes back on n2.
	stopNode(t, nodes[0])
	testutil.WaitFor(t, "n2 and n3 to see n1 gone", 30*time.Second, func() bool {
		return nodes[1].node.srv.NumRemotes() == 1 && nodes[2].node.srv.NumRemotes() == 1
	})
	publishQoS1(t, pub, "or/x", 20, 30) // published while the session has no node
	sub2, present := dialSession(t, nodes[1].addr, "orphan", client.V311)
	if !present {
		t.Fatal("Session Present 0 on a survivor")
	}
	receiveInOrder(t, sub2, 10, 30)
	expectNone(t, sub2, 500*time.Millisecond)
	publishQoS1(t, pub, "or/x", 30, 35)
	receiveInOrder(t, sub2, 30, 35)
}

// TestFullClusterRestart stops every node and starts them again on their
// data: the retained message and the persistent session with its queue
// are back, the session resumed on another node than the one it was on.
func TestFullClusterRestart(t *testing.T) {
	t.Parallel()
	nodes, dir, routes := startOwn(t, 3)
	sub, _ := dialSession(t, nodes[0].addr, "sleeper", client.V5)
	subscribe(t, sub, 1, "fr/#")
	pub := dial(t, nodes[2].addr, "frpub", client.V5)
	awaitRoute(t, pub, sub, "fr/probe")
	disconnect(t, sub)
	publishQoS1(t, pub, "fr/x", 0, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rp := dial(t, nodes[1].addr, "frret", client.V5)
	if err := rp.Publish(ctx, &client.Message{Topic: "frs/state", QoS: 1, Retain: true, Payload: []byte("on")}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the retained message on n3", 30*time.Second, func() bool {
		m, _ := nodes[2].srv.RetainedMatch("frs/#", 10)
		return len(m) == 1
	})
	pub.Close()
	rp.Close()
	for _, tn := range nodes {
		stopNode(t, tn)
	}

	nodes = restartNodes(t, dir, routes)
	sub2, present := dialSession(t, nodes[1].addr, "sleeper", client.V5)
	if !present {
		t.Fatal("Session Present 0 after the restart")
	}
	receiveInOrder(t, sub2, 0, 10)
	expectNone(t, sub2, 500*time.Millisecond)
	rs := dial(t, nodes[2].addr, "frsub", client.V5)
	subscribe(t, rs, 1, "frs/#")
	select {
	case m := <-rs.Messages():
		if m.Topic != "frs/state" || string(m.Payload) != "on" || !m.Retain {
			t.Fatalf("retained after the restart: %+v", m)
		}
	case <-ctx.Done():
		t.Fatal("no retained message after the restart")
	}
}

// TestWillsClusterWide: a delayed will fires once, on the node holding
// the session; a will whose client comes back on another node within the
// delay is cancelled everywhere.
func TestWillsClusterWide(t *testing.T) {
	nodes := commonCluster(t)
	watch := dial(t, nodes[2].addr, "watcher", client.V5)
	subscribe(t, watch, 1, "will/#")
	probe := dial(t, nodes[0].addr, "wprobe", client.V5)
	awaitRoute(t, probe, watch, "will/probe")

	dialWill := func(addr, id, topic string, delay uint32) *client.Client {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		w := &client.Will{Topic: topic, Payload: []byte("gone"), QoS: 1}
		w.Properties.SetWillDelay(delay)
		c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + addr}, ClientID: id, SessionExpiry: 600, Will: w})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c := dialWill(nodes[0].addr, "dying", "will/a", 1)
	c.Close() // without DISCONNECT: the will is owed
	select {
	case m := <-watch.Messages():
		if m.Topic != "will/a" || string(m.Payload) != "gone" {
			t.Fatalf("got %s %q", m.Topic, m.Payload)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the will did not fire")
	}
	expectNone(t, watch, 2*time.Second)

	c = dialWill(nodes[0].addr, "returning", "will/b", 3600)
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	willSubj := sessSubject("returning", "w")
	testutil.WaitFor(t, "the pending will in the cluster", 30*time.Second, func() bool {
		r, err := nodes[1].node.getRecord(ctx, willSubj)
		return err == nil && r != nil && len(r.data) > 0
	})
	back, present := dialSession(t, nodes[1].addr, "returning", client.V5)
	if !present {
		t.Fatal("Session Present 0")
	}
	testutil.WaitFor(t, "the will removed from the cluster", 30*time.Second, func() bool {
		r, err := nodes[1].node.getRecord(ctx, willSubj)
		return err == nil && (r == nil || len(r.data) == 0)
	})
	for _, si := range nodes[0].srv.Sessions() {
		if si.ClientID == "returning" {
			t.Fatal("n1 still holds the session")
		}
	}
	disconnect(t, back)
	expectNone(t, watch, time.Second)
}

// TestSessionExpiryClusterWide: a session that expires on its node is
// gone from the cluster: resuming it on another node finds no session.
func TestSessionExpiryClusterWide(t *testing.T) {
	nodes := commonCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[0].addr}, ClientID: "brief", SessionExpiry: 1})
	if err != nil {
		t.Fatal(err)
	}
	subscribe(t, c, 1, "ex/#")
	disconnect(t, c)
	subj := sessSubject("brief", "s")
	testutil.WaitFor(t, "the expired session removed from the cluster", 30*time.Second, func() bool {
		r, err := nodes[1].node.getRecord(ctx, subj)
		return err == nil && (r == nil || len(r.data) == 0)
	})
	again, present := dialSession(t, nodes[1].addr, "brief", client.V5)
	if present {
		t.Fatal("an expired session was resumed on another node")
	}
	disconnect(t, again)
}

// TestSecurityClusterSessionOwner: a client of another identity that
// connects with a device's client ID on another node is refused there, as
// on one node; the device's connection and session stay where they are.
func TestSecurityClusterSessionOwner(t *testing.T) {
	t.Parallel()
	users := map[string]string{"alice": "a-secret", "mallory": "m-secret"}
	auth := broker.AuthenticatorFunc(func(_ context.Context, r *broker.ConnectRequest) broker.AuthResult {
		if p, ok := users[r.Connect.Username]; ok && r.Connect.PasswordFlag && string(r.Connect.Password) == p {
			return broker.AuthResult{Allow: true}
		}
		return broker.AuthResult{Allow: false}
	})
	var nodes []*testNode
	for attempt := 0; ; attempt++ {
		var err error
		nodes, err = startNodes(t, t.TempDir(), freePorts(t, 3), func(c *broker.Config) {
			c.Authenticator, c.AllowAnonymous = auth, false
		})
		if err == nil {
			break
		}
		if attempt == 2 {
			t.Fatal(err)
		}
	}
	dialID := func(addr, user, id string, expiry uint32) (*client.Client, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + addr}, ClientID: id, SessionExpiry: expiry,
			CleanStart: expiry == 0, Username: user, Password: client.NewSecret([]byte(users[user]))})
		if c != nil {
			t.Cleanup(func() { c.Close() })
		}
		return c, err
	}
	dialAs := func(addr, user string) (*client.Client, error) { return dialID(addr, user, "dev-1", 600) }
	alice, err := dialAs(nodes[0].addr, "alice")
	if err != nil {
		t.Fatal(err)
	}
	subscribe(t, alice, 1, "dev-1/cmd")
	// The attack: another identity takes the client ID on another node.
	if _, err := dialAs(nodes[1].addr, "mallory"); err == nil {
		t.Fatal("another identity resumed the session on another node")
	} else if re := (*client.ReasonError)(nil); !errors.As(err, &re) || re.Code != packet.ClientIDNotValid {
		t.Fatalf("refused with %v, want 0x85", err)
	}
	if !alice.IsConnected() {
		t.Fatal("the owner's connection was taken over")
	}
	found := false
	for _, si := range nodes[0].srv.Sessions() {
		found = found || si.ClientID == "dev-1" && si.Online
	}
	if !found {
		t.Fatal("the owner's session left its node")
	}

	// Clean sessions keep no session record: mallory's connection with
	// a clean-session client ID of alice's on another node is refused
	// only by the node where alice is connected, which keeps alice's
	// connection (Server.TakeoverRemote). That connection's claim stays
	// in force: alice's later connection elsewhere ends it, and one
	// written late still ends alice's earlier one on a third node.
	t.Run("a kept connection is still taken over", func(t *testing.T) {
		a1, err := dialID(nodes[0].addr, "alice", "dev-2", 0)
		if err != nil {
			t.Fatal(err)
		}
		awaitClaimHeard(t, nodes[0], "dev-2", nodes[1], nodes[2])
		if _, err := dialID(nodes[1].addr, "mallory", "dev-2", 0); err != nil {
			t.Fatal(err)
		}
		awaitClaimHeard(t, nodes[1], "dev-2", nodes[0], nodes[2])
		if !a1.IsConnected() {
			t.Fatal("mallory's claim ended alice's connection")
		}
		if _, err := dialID(nodes[2].addr, "alice", "dev-2", 0); err != nil {
			t.Fatal(err)
		}
		expectTakenOver(t, a1, "alice's earlier connection on n1")
	})
	t.Run("a kept claim is still written", func(t *testing.T) {
		a3, err := dialID(nodes[2].addr, "alice", "dev-3", 0)
		if err != nil {
			t.Fatal(err)
		}
		awaitClaimHeard(t, nodes[2], "dev-3", nodes[0], nodes[1])
		a1, unreachable := waitingClaimOf(t, nodes[0], "dev-3", func() *client.Client {
			c, err := dialID(nodes[0].addr, "alice", "dev-3", 0)
			if err != nil {
				t.Fatal(err)
			}
			return c
		})
		if _, err := dialID(nodes[1].addr, "mallory", "dev-3", 0); err != nil {
			t.Fatal(err)
		}
		awaitClaimHeard(t, nodes[1], "dev-3", nodes[0])
		if _, late := claimState(nodes[0], "dev-3"); !late || !a1.IsConnected() {
			t.Fatal("mallory's claim ended alice's connection on n1, or its claim")
		}
		unreachable.Store(false)
		expectTakenOver(t, a3, "alice's earlier connection on n3")
		testutil.WaitFor(t, "n1's claim stored", 30*time.Second, func() bool {
			stored, late := claimState(nodes[0], "dev-3")
			return stored && !late
		})
		if !a1.IsConnected() {
			t.Fatal("alice's connection on n1 ended")
		}
	})
	t.Run("a kept claim set aside is written", func(t *testing.T) {
		// n1's writer tries its waiting claim again after mallory's
		// claim is stored and before n1's watch delivers it (the two
		// share a goroutine): the writer finds a later claim and sets
		// its own aside; the watch then finds the claim another
		// identity's, which did not end the connection, and queues the
		// claim again.
		a3, err := dialID(nodes[2].addr, "alice", "dev-4", 0)
		if err != nil {
			t.Fatal(err)
		}
		awaitClaimHeard(t, nodes[2], "dev-4", nodes[0], nodes[1])
		var phase atomic.Int32
		entered, release := make(chan struct{}), make(chan struct{})
		f := func(id string) error {
			if id != "dev-4" {
				return nil
			}
			switch phase.Load() {
			case 0:
				return jetstream.ErrNoStreamResponse
			case 1:
				phase.Store(2)
				close(entered)
				<-release
			}
			return nil
		}
		kv := nodes[0].node.kvs()
		kv.failClaim.Store(&f)
		t.Cleanup(func() { kv.failClaim.Store(nil) })
		a1, err := dialID(nodes[0].addr, "alice", "dev-4", 0)
		if err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, "n1's claim to wait", 30*time.Second, func() bool {
			_, late := claimState(nodes[0], "dev-4")
			return late
		})
		phase.Store(1)
		select {
		case <-entered:
		case <-time.After(30 * time.Second):
			t.Fatal("n1's writer did not try the claim again")
		}
		if _, err := dialID(nodes[1].addr, "mallory", "dev-4", 0); err != nil {
			close(release)
			t.Fatal(err)
		}
		awaitClaimHeard(t, nodes[1], "dev-4")
		close(release)
		expectTakenOver(t, a3, "alice's earlier connection on n3")
		testutil.WaitFor(t, "n1's claim stored", 30*time.Second, func() bool {
			stored, _ := claimState(nodes[0], "dev-4")
			return stored && !claimNoted(nodes[0], "dev-4")
		})
		if !a1.IsConnected() {
			t.Fatal("alice's connection on n1 ended")
		}
	})
}

// awaitClaimHeard waits until tn's claim of clientID is stored and every
// node of others has heard of it.
func awaitClaimHeard(t *testing.T, tn *testNode, clientID string, others ...*testNode) {
	t.Helper()
	testutil.WaitFor(t, tn.node.cfg.Node+"'s claim of "+clientID+", heard", 30*time.Second, func() bool {
		kv := tn.node.kvs()
		kv.mu.Lock()
		rev, ok := kv.claims[clientID]
		kv.mu.Unlock()
		if !ok {
			return false
		}
		for _, o := range others {
			if o.node.kvs().seen.Load() < rev {
				return false
			}
		}
		return true
	})
}

// TestSessionMoveGapOnNewHome: a persistent session moves from n1 to n2;
// a QoS 1 message is published on n2 after n1 gave the session up and
// before n2 imports it (the hook runs there, with n2's routing of the
// stream held, so that n2 reads its own record back only after the
// import, and skips it as a message it delivered when it was published).
// The session gets it once, from n2's record of recent messages.
func TestSessionMoveGapOnNewHome(t *testing.T) {
	nodes := commonCluster(t)
	sub, _ := dialSession(t, nodes[0].addr, "gapper", client.V5)
	subscribe(t, sub, 1, "gap/#")
	pub := dial(t, nodes[1].addr, "gappub", client.V5)
	awaitRoute(t, pub, sub, "gap/probe")
	disconnect(t, sub)

	published := make(chan error, 1)
	var once sync.Once
	hook := func(id string) {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			published <- pub.Publish(ctx, &client.Message{Topic: "gap/x", QoS: 1, Payload: []byte("in the gap")})
		})
	}
	nodes[1].node.sess.beforeImport.Store(&hook)
	defer nodes[1].node.sess.beforeImport.Store(nil)
	sub2, present := dialSession(t, nodes[1].addr, "gapper", client.V5)
	if !present {
		t.Fatal("Session Present 0 on n2")
	}
	select {
	case err := <-published:
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("the hook did not run")
	}
	select {
	case m := <-sub2.Messages():
		if string(m.Payload) != "in the gap" {
			t.Fatalf("got %q on %s", m.Payload, m.Topic)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the message published on the new home during the move was missed")
	}
	expectNone(t, sub2, time.Second)
}

// TestSessionSecondClaimDuringImport: a client whose claim on n2 wrote
// the session record naming n2 but has not imported the session yet (the
// hook holds the take there) gives up and connects again on n2. The
// second claim waits for the first one's take and resumes the session
// (Session Present 1, with the message queued for it). Before, it took
// the session a second time beside the first, or, once the first had made
// n2 the home, answered at once and the broker started an empty session.
func TestSessionSecondClaimDuringImport(t *testing.T) {
	nodes := commonCluster(t)
	waits := nodes[1].node.sess.takeWaits.Load()
	sub, _ := dialSession(t, nodes[0].addr, "twice", client.V5)
	subscribe(t, sub, 1, "twice/#")
	pub := dial(t, nodes[2].addr, "twicepub", client.V5)
	awaitRoute(t, pub, sub, "twice/probe")
	disconnect(t, sub)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, &client.Message{Topic: "twice/x", QoS: 1, Payload: []byte("queued")}); err != nil {
		t.Fatal(err)
	}

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(id string) {
		if id == "twice" {
			once.Do(func() { close(entered); <-release })
		}
	}
	nodes[1].node.sess.afterTake.Store(&hook)
	defer nodes[1].node.sess.afterTake.Store(nil)
	var released sync.Once
	defer released.Do(func() { close(release) })
	cfg := client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "twice", Version: client.V5, SessionExpiry: 600}

	// The first client gives up while its claim's import is held.
	firstCtx, firstCancel := context.WithCancel(context.Background())
	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		if c, err := client.Dial(firstCtx, cfg); err == nil {
			c.Close()
		}
	}()
	select {
	case <-entered:
	case <-time.After(60 * time.Second):
		t.Fatal("the first claim did not write the session record")
	}
	firstCancel()
	<-firstDone

	type result struct {
		c   *client.Client
		err error
	}
	second := make(chan result, 1)
	go func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer dcancel()
		c, err := client.Dial(dctx, cfg)
		second <- result{c, err}
	}()
	// The second claim waits for the first one's take; the first is then
	// let go.
	for nodes[1].node.sess.takeWaits.Load() == waits {
		select {
		case r := <-second:
			if r.err == nil {
				r.c.Close()
			}
			t.Fatalf("the second claim ended while the first one's take was held (present %v, err %v)",
				r.err == nil && r.c.ConnectInfo().SessionPresent, r.err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	released.Do(func() { close(release) })
	r := <-second
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	if !r.c.ConnectInfo().SessionPresent {
		t.Fatal("Session Present 0 after the first claim's import")
	}
	select {
	case m := <-r.c.Messages():
		if string(m.Payload) != "queued" {
			t.Fatalf("got %q on %s", m.Payload, m.Topic)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the queued message did not come with the session")
	}
}
