package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// TestRemoveNode: a node that is alive is not removed without force; once
// it is dead, removing it takes it out of the JetStream meta group and
// the streams, the other nodes stop counting it (QoS 1/2 messages no
// longer go into the stream for it), its session is adopted at once
// (adoption by time is off here) with the messages published since it
// died, and its claims are removed.
func TestRemoveNode(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, func(_ int, nd *Node) { nd.cfg.AdoptAfter = -1 })
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	leaver, _ := dialSession(t, nodes[2].addr, "leaver", client.V5)
	subscribe(t, leaver, 1, "rm/#")
	pub := dial(t, nodes[0].addr, "rmpub", client.V5)
	awaitRoute(t, pub, leaver, "rm/probe")
	disconnect(t, leaver)
	testutil.WaitFor(t, "the claim of leaver", 30*time.Second, func() bool {
		keys, ok := claimKeys(t, nodes[0])
		return ok && slices.Contains(keys, "leaver")
	})
	testutil.WaitFor(t, "three nodes up", 30*time.Second, func() bool { return nodes[0].node.Status().NodesUp == 3 })

	if _, err := nodes[0].node.RemoveNode(ctx, "n3", false); !errors.Is(err, ErrNodeAlive) || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("removing a live node: %v", err)
	}
	if _, err := nodes[0].node.RemoveNode(ctx, "n1", false); err == nil {
		t.Fatal("a node removed itself")
	}
	if _, err := nodes[0].node.RemoveNode(ctx, "n9", false); err == nil || !strings.Contains(err.Error(), "no node") {
		t.Fatalf("removing an unknown node: %v", err)
	}

	crashNode(t, nodes[2])
	publishQoS1(t, pub, "rm/x", 0, 5)
	testutil.WaitFor(t, "n3 down", 30*time.Second, func() bool {
		n3, _ := nodeByName(nodes[0].node.Status(), "n3")
		return n3.State == StateDown
	})
	var res RemoveResult
	testutil.CheckFor(t, 60*time.Second, func() error {
		var err error
		res, err = nodes[0].node.RemoveNode(ctx, "n3", false)
		if err != nil {
			t.Logf("remove: %v", err)
		}
		return err
	})
	if !res.MetaRemoved || res.SessionsAdopted != 1 || res.ClaimsRemoved < 1 || res.Forced {
		t.Fatalf("removal: %+v", res)
	}
	testutil.CheckFor(t, 60*time.Second, func() error {
		for _, tn := range nodes[:2] {
			st := tn.node.Status()
			if st.MetaSize != 2 {
				return fmt.Errorf("%s: JetStream cluster size %d", st.Node, st.MetaSize)
			}
			if _, ok := nodeByName(st, "n3"); ok || !slices.Contains(st.Removed, "n3") {
				return fmt.Errorf("%s: nodes %+v, removed %q", st.Node, st.Nodes, st.Removed)
			}
			for _, p := range st.Problems {
				if strings.Contains(p, "n3") {
					return fmt.Errorf("%s: problem %q", st.Node, p)
				}
			}
			for _, s := range st.Streams {
				if slices.ContainsFunc(s.Peers, func(r ReplicaState) bool { return r.Node == "n3" }) {
					return fmt.Errorf("%s: stream %s still has a copy on n3", st.Node, s.Name)
				}
			}
		}
		return nil
	})
	testutil.WaitFor(t, "the claims listed without the removed node's", 30*time.Second, func() bool {
		keys, ok := claimKeys(t, nodes[0])
		return ok && !slices.Contains(keys, "leaver")
	})
	if got := sessionNode(t, nodes[0].node, "leaver"); got != "n1" {
		t.Fatalf("the removed node's session names %q", got)
	}
	// Nobody is missing any more: a QoS 1 message no other node wants
	// stays on its node.
	testutil.CheckFor(t, 30*time.Second, func() error {
		before := nodes[0].node.Status().StreamOut
		publishQoS1(t, pub, "nobody/x", 0, 1)
		if after := nodes[0].node.Status().StreamOut; after != before {
			return fmt.Errorf("a message without interest elsewhere went into the stream (%d → %d)", before, after)
		}
		return nil
	})

	back, present := dialSession(t, nodes[1].addr, "leaver", client.V5)
	if !present {
		t.Fatal("Session Present 0 for the removed node's session")
	}
	receiveInOrder(t, back, 0, 5)
	expectNone(t, back, 500*time.Millisecond)
	back.Close()

	// Two servers are left: the streams were lowered to two copies, and
	// the status reports no missing one.
	if len(res.StreamsShrunk) == 0 {
		t.Fatalf("no stream lowered to the servers left: %+v", res)
	}
	twoCopies := func(nd *Node) error {
		st := nd.Status()
		if len(st.Streams) == 0 {
			return errors.New("no streams listed yet")
		}
		for _, s := range st.Streams {
			if s.Replicas != 2 {
				return fmt.Errorf("%s: stream %s has %d copies configured", st.Node, s.Name, s.Replicas)
			}
		}
		for _, p := range st.Problems {
			if strings.Contains(p, "copies") {
				return fmt.Errorf("%s: problem %q", st.Node, p)
			}
		}
		return nil
	}
	testutil.CheckFor(t, 60*time.Second, func() error { return twoCopies(nodes[0].node) })

	// n2 restarted with its peers list still naming n3 asks for three
	// copies, which JetStream has no servers for: it keeps two, and
	// starts.
	cfg := nodes[1].node.cfg
	stopNode(t, nodes[1])
	restarted, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	withBroker(t, restarted, nil, cfg.Logger)
	select {
	case <-restarted.Ready():
	case <-time.After(60 * time.Second):
		t.Fatal("n2, restarted with n3 still among its peers, not ready within 60 s")
	}
	testutil.CheckFor(t, 60*time.Second, func() error { return twoCopies(restarted) })

	// A node added afterwards, its peers list naming three servers,
	// raises every stream to three copies again, the bucket of removed
	// nodes (made by the removal, with two) too.
	r4 := freePorts(t, 1)[0]
	cfg4 := cfg
	dir4 := t.TempDir()
	cfg4.Node, cfg4.Listen, cfg4.StoreDir, cfg4.RetainedSpill = "n4", r4, filepath.Join(dir4, "n4"), testSpill(dir4, "n4")
	cfg4.Peers = []string{nodes[0].node.cfg.Listen, cfg.Listen, r4}
	cfg4.Logger = slog.New(testLog(t)).With("node", "n4")
	added, err := Start(cfg4)
	if err != nil {
		t.Fatal(err)
	}
	withBroker(t, added, nil, cfg4.Logger)
	select {
	case <-added.Ready():
	case <-time.After(120 * time.Second):
		t.Fatal("n4, added after the removal, not ready within 120 s")
	}
	testutil.CheckFor(t, 90*time.Second, func() error {
		st := nodes[0].node.Status()
		if !slices.ContainsFunc(st.Streams, func(s StreamState) bool { return s.Name == "KV_"+bucketRemoved }) {
			return fmt.Errorf("%s not listed: %+v", bucketRemoved, st.Streams)
		}
		for _, s := range st.Streams {
			if s.Replicas != 3 {
				return fmt.Errorf("stream %s has %d copies configured", s.Name, s.Replicas)
			}
			// The new copies in place before the servers stop: one
			// being made as its server shuts down is left running.
			if len(s.Peers) != 3 || slices.ContainsFunc(s.Peers, func(r ReplicaState) bool { return !r.Current }) {
				return fmt.Errorf("stream %s: copies %+v", s.Name, s.Peers)
			}
		}
		return nil
	})
}

// TestSecurityClusterSystemToken: the system account's token, which can
// change the JetStream meta group, is accepted over the in-process pipe
// only: a connection to the embedded server's loopback client port
// presenting it (as a local process that learned it would) is refused,
// and so is a wrong token.
func TestSecurityClusterSystemToken(t *testing.T) {
	t.Parallel()
	routes := freePorts(t, 2) // the second node never comes: the server runs all the same
	nd, err := Start(Config{Name: "test", Node: "n1", Listen: routes[0], Peers: routes, StoreDir: t.TempDir(),
		Logger: slog.New(testLog(t)), setupAttempt: testSetupAttempt})
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Close()
	url := nd.srv.ClientURL()
	for name, tok := range map[string]string{"system token over TCP": nd.sysToken, "wrong token": "0123"} {
		if nc, err := nats.Connect(url, nats.Token(tok), nats.MaxReconnects(0), nats.Timeout(5*time.Second)); err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
		}
	}
	// In process, the same token reaches the system account.
	sc, err := nats.Connect("", nats.InProcessServer(nd.srv), nats.Token(nd.sysToken))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	m, err := sc.Request("$SYS.REQ.SERVER.PING", nil, 5*time.Second)
	if err != nil || len(m.Data) == 0 {
		t.Fatalf("the system account over the pipe: %v", err)
	}
}

// TestRemoveNodeForcedAndRestarted: a live node removed by force learns
// of it and sends its clients away: an MQTT 5 client gets DISCONNECT 0x9C
// (Use another server), an MQTT 3.1.1 client's connection is closed, and
// new connections are refused with CONNACK 0x9C (0x03 for 3.1.1). The
// removal is stored: the node stopped and started again on its data
// refuses to rejoin (ErrRejoinRefused, and every client), before it
// takes any session. A node started under the same name on an empty
// store is a new node: it joins, and forgets the stored removal.
func TestRemoveNodeForcedAndRestarted(t *testing.T) {
	t.Parallel()
	nodes, _, _ := startOwn(t, 3, func(_ int, nd *Node) { nd.cfg.AdoptAfter = -1 })
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	v5 := dial(t, nodes[2].addr, "on-n3-v5", client.V5)
	v3 := dial(t, nodes[2].addr, "on-n3-v3", client.V311)
	testutil.WaitFor(t, "three nodes up", 30*time.Second, func() bool { return nodes[0].node.Status().NodesUp == 3 })
	// The worst case: the node removed leads the JetStream meta group
	// and the sessions stream, which every claim reads.
	takeLead(t, nodes[0].node, "n3", streamSessions)

	// The removal is stored and announced before its slower steps (the
	// meta group, the streams, the adoption), which a loaded machine may
	// time out: only a refusal, made before anything changed, is asked
	// again; what this test checks follows from the announcement.
	forceRemove(ctx, t, nodes[0].node, "n3")
	select {
	case <-nodes[2].node.Removed():
	case <-time.After(30 * time.Second):
		t.Fatal("the removed node did not learn of its removal within 30 s")
	}
	if err := nodes[2].node.RemovedErr(); !errors.Is(err, ErrRemoved) || errors.Is(err, ErrRejoinRefused) ||
		!strings.Contains(err.Error(), "by node n1") {
		t.Fatalf("the removed node's error: %v", err)
	}
	expectSentAway(t, v5, v3)
	expectWithdrawn(t, nodes[2].addr)
	// The nodes left serve (once their streams have leaders again: a
	// client may be told 0x88 meanwhile, and tries again). On a loaded
	// machine that takes more than a minute after a removal whose meta
	// group step timed out; each attempt gets its own time, not what is
	// left of ctx, which the removal's attempts may have used up.
	testutil.CheckFor(t, 150*time.Second, func() error {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		c, err := client.Dial(dctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "on-n2", Version: client.V5, CleanStart: true})
		if err == nil {
			c.Close()
		} else {
			t.Logf("a client of n2 after the removal: %v", err)
		}
		return err
	})

	// Started again on its data: it finds the stored removal and
	// refuses to rejoin.
	cfg := nodes[2].node.cfg
	stopNode(t, nodes[2])
	again, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	withBroker(t, again, nil, cfg.Logger)
	select {
	case <-again.Removed():
	case <-again.Ready():
		t.Fatal("the removed node, started again on its data, joined the cluster")
	case <-time.After(60 * time.Second):
		t.Fatal("the removed node, started again on its data, did not find its removal within 60 s")
	}
	if err := again.RemovedErr(); !errors.Is(err, ErrRejoinRefused) || !strings.Contains(err.Error(), cfg.StoreDir) {
		t.Fatalf("the restarted node's error: %v", err)
	}
	stopped := make(chan struct{})
	go func() { again.Close(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("the node refusing to rejoin did not close")
	}

	// Under the same name on an empty store: a new node, which joins.
	cfg.StoreDir = filepath.Join(t.TempDir(), "n3-new")
	fresh, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	withBroker(t, fresh, nil, cfg.Logger)
	select {
	case <-fresh.Ready():
	case <-fresh.Removed():
		t.Fatalf("a new node under a removed node's name refused: %v", fresh.RemovedErr())
	case <-time.After(120 * time.Second):
		t.Fatal("a new node under a removed node's name not ready within 120 s")
	}
	// It watches for its own stored removal like every node, and finds
	// none: the record it deleted does not send it away.
	polled := fresh.rmSelf.polls.Load()
	testutil.WaitFor(t, "three reads of the stored removals by the new n3", 60*time.Second, func() bool {
		return fresh.rmSelf.polls.Load() >= polled+3
	})
	if err := fresh.RemovedErr(); err != nil {
		t.Fatalf("the new n3 withdrew: %v", err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	js, err := jetstream.New(nodes[0].node.nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(rctx, bucketRemoved)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(rctx, keyOf("n3")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the stored removal of n3 after a new n3 joined: %v", err)
	}
}

// expectSentAway waits for the MQTT 5 client v5 and the MQTT 3.1.1
// client v3 of a removed node to be disconnected, v5 with DISCONNECT
// 0x9C (Use another server).
func expectSentAway(t *testing.T, v5, v3 *client.Client) {
	t.Helper()
	for _, c := range []*client.Client{v5, v3} {
		select {
		case <-c.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("a client of the removed node is still connected")
		}
	}
	var re *client.ReasonError
	if err := v5.Err(); !errors.As(err, &re) || re.Code != 0x9C {
		t.Errorf("the MQTT 5 client ended with %v, want DISCONNECT 0x9C", err)
	}
}

// expectWithdrawn checks that the broker at addr, on a removed node,
// refuses a new connection with CONNACK 0x9C (0x03 for MQTT 3.1.1).
func expectWithdrawn(t *testing.T, addr string) {
	t.Helper()
	refused := func(v client.Version) *client.ReasonError {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + addr}, ClientID: "late", Version: v, CleanStart: true})
		if err == nil {
			c.Close()
			t.Fatalf("version %v: a client connected to the removed node", v)
		}
		var re *client.ReasonError
		if !errors.As(err, &re) {
			t.Fatalf("version %v: %v, want a CONNACK refusal", v, err)
		}
		return re
	}
	if re := refused(client.V5); re.Code != 0x9C || !strings.Contains(re.Reason, "another node") {
		t.Errorf("MQTT 5 CONNACK to the removed node: %+v, want 0x9C", re)
	}
	if re := refused(client.V311); re.V3Code != 0x03 {
		t.Errorf("MQTT 3.1.1 CONNACK to the removed node: %+v, want 0x03", re)
	}
}

// TestRemoveNodeMissedAnnouncement: a live node removed by force that
// misses the announcement of its removal (deaf to it here, as a node
// whose connection was down at that instant) finds the stored removal by
// itself within a few heartbeats, and withdraws as an announced removal
// does: its MQTT 5 client gets DISCONNECT 0x9C, its MQTT 3.1.1 client is
// closed, new connections are refused with CONNACK 0x9C and 0x03, and its
// error says how it learned it. Before the removal it reads the
// (missing) record without withdrawing.
func TestRemoveNodeMissedAnnouncement(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, func(i int, nd *Node) {
		nd.cfg.AdoptAfter = -1
		nd.rmSelf.deaf = i == 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	v5 := dial(t, nodes[2].addr, "missed-v5", client.V5)
	v3 := dial(t, nodes[2].addr, "missed-v3", client.V311)
	testutil.WaitFor(t, "three nodes up", 30*time.Second, func() bool { return nodes[0].node.Status().NodesUp == 3 })
	testutil.WaitFor(t, "n3 reads the stored removals", 30*time.Second, func() bool { return nodes[2].node.rmSelf.polls.Load() >= 2 })
	if err := nodes[2].node.RemovedErr(); err != nil {
		t.Fatalf("n3 withdrew before its removal: %v", err)
	}

	forceRemove(ctx, t, nodes[0].node, "n3")
	select {
	case <-nodes[2].node.Removed():
	case <-time.After(30 * time.Second):
		t.Fatal("the removed node, deaf to the announcement, did not find its stored removal within 30 s")
	}
	if err := nodes[2].node.RemovedErr(); !errors.Is(err, ErrRemoved) || errors.Is(err, ErrRejoinRefused) ||
		!strings.Contains(err.Error(), "by node n1") || !strings.Contains(err.Error(), "announcement did not reach") {
		t.Fatalf("the removed node's error: %v", err)
	}
	expectSentAway(t, v5, v3)
	expectWithdrawn(t, nodes[2].addr)
}

// forceRemove removes the live node named name by force through via,
// asking again while the removal is refused (a refusal comes before
// anything changed); a later step that fails is only logged, since the
// removal is stored and announced before those steps.
func forceRemove(ctx context.Context, t *testing.T, via *Node, name string) {
	t.Helper()
	testutil.CheckFor(t, 90*time.Second, func() error {
		res, err := via.RemoveNode(ctx, name, true)
		switch {
		case errors.Is(err, ErrRemoveRefused):
			t.Logf("forced removal refused: %v", err)
			return err
		case err != nil:
			t.Logf("forced removal, a later step failed: %v", err)
		case !res.Forced:
			t.Errorf("forced removal of a live node: %+v", res)
		}
		return nil
	})
}

// takeLead makes the node named name lead the JetStream meta group and
// the streams named, asking through via (the meta group through its
// system account).
func takeLead(t *testing.T, via *Node, name string, streams ...string) {
	t.Helper()
	sc, err := nats.Connect("", nats.InProcessServer(via.srv), nats.Token(via.sysToken))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	req, _ := json.Marshal(server.JSApiLeaderStepdownRequest{Placement: &server.Placement{Preferred: name}})
	testutil.CheckFor(t, 60*time.Second, func() error {
		if leader := via.metaLeaderOf(); leader != name {
			_, _ = sc.Request(server.JSApiLeaderStepDown, req, 5*time.Second)
			return fmt.Errorf("the meta leader is %q", leader)
		}
		return nil
	})
	js, err := jetstream.New(via.nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, stream := range streams {
		testutil.CheckFor(t, 60*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := js.Stream(ctx, stream)
			if err != nil {
				return err
			}
			if ci := s.CachedInfo().Cluster; ci != nil && ci.Leader == name {
				return nil
			}
			_, _ = via.nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, req, 5*time.Second)
			return fmt.Errorf("stream %s has another leader", stream)
		})
	}
}
