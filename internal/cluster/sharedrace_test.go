package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

// TestSharedSubscribeThenPublishRace: a shared subscription's group is
// made on n2 and, the moment n1's server has its queue subscription, a
// QoS 1 message is published on n1. NATS then chooses the group for it,
// and n1 must wait for the group's confirmation (at least once), though
// n2 never announces its groups on the directory subject here: n1 learns
// of the group with n2's group version, and until it has, it settles the
// message's groups later instead of leaving the group out. Each round's
// topic had its answer ("no group") cached on n1 before, which the group
// version must invalidate. Without the versions n1 does not know the
// group when it publishes and does not wait for it.
func TestSharedSubscribeThenPublishRace(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	n1, n2 := nodes[0].node, nodes[1].node
	n2.share.ack.quiet.Store(true)
	pub := dial(t, nodes[0].addr, "srpub", client.V5)
	member := dial(t, nodes[1].addr, "srmember", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	testutil.WaitFor(t, "n1's peers and their versions known", 30*time.Second, func() bool {
		s := n1.ic.snap.Load()
		if s == nil || len(s.versions) != 2 || s.peers != n1.dur.peers.Load() {
			return false
		}
		for i, v := range s.versions {
			if v == "" || s.gversions[i] == "" {
				return false
			}
		}
		return true
	})
	acc := n1.srv.GlobalAccount()
	hits := 0
	for round := range 8 {
		topic := fmt.Sprintf("srace/%d/x", round)
		if err := pub.Publish(ctx, &client.Message{Topic: topic, QoS: 1, Payload: []byte("before")}); err != nil {
			t.Fatal(err)
		}
		if s := n1.ic.snap.Load(); s != nil {
			if a, ok := n1.ic.cache.get(topic, s.epoch, n1.share.ownGen.Load()); ok && a.groupsKnown && len(a.groups) == 0 {
				hits++
			}
		}
		subscribe(t, member, 1, fmt.Sprintf("$share/g%d/srace/%d/#", round, round))
		subj := sharedPrefix + topicTokens(topic)
		for acc.Interest(subj) == 0 {
			if ctx.Err() != nil {
				t.Fatalf("round %d: n1 never saw the group", round)
			}
			time.Sleep(time.Millisecond)
		}
		confirmed := n1.share.ack.confirmed.Load()
		if err := pub.Publish(ctx, &client.Message{Topic: topic, QoS: 1, Payload: []byte("after")}); err != nil {
			t.Fatal(err)
		}
		if n1.share.ack.confirmed.Load() == confirmed {
			t.Fatalf("round %d: PUBACK without the group's confirmation: the group got the message at most once", round)
		}
		select {
		case m := <-member.Messages():
			if m.Topic != topic || string(m.Payload) != "after" {
				t.Fatalf("round %d: got %q on %q", round, m.Payload, m.Topic)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: the group did not receive the message", round)
		}
	}
	if hits == 0 {
		t.Error("no round had its topic's answer cached before the group: the cache was not tested")
	}
	expectNone(t, member, 200*time.Millisecond)
}

// TestSharedGroupOfNewNode: a fourth node that was never in the cluster
// joins it and makes a shared subscription's group at once; a QoS 1
// message published on n1 the moment n1's server has the group's queue
// subscription must wait for the group's confirmation. n1's
// once-a-second check of the routes is held, so n4 stays a node n1 has
// not checked (as in its first second); its version loop refreshes only
// when a look-up wakes it; and n4 never announces its groups on the
// directory subject. n1 must see, when it looks the topic up, that a
// node it does not know is on its server (the node count), learn it
// from its routes and ask it for its groups. Without the count n1 takes
// its directory for complete, finds no group for the topic, and the
// message never reaches the group.
func TestSharedGroupOfNewNode(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3, func(i int, nd *Node) {
		if i == 0 {
			nd.ic.every = time.Hour
		}
	})
	n1 := nodes[0].node
	pub := dial(t, nodes[0].addr, "nnpub", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	acc := n1.srv.GlobalAccount()
	testutil.WaitFor(t, "n1's peers and their versions known", 30*time.Second, func() bool {
		n1.interest(acc, "setup/x") // wakes the version loop while they are not
		s := n1.ic.snap.Load()
		if s == nil || len(s.versions) != 2 || s.peers != n1.dur.peers.Load() {
			return false
		}
		for i, v := range s.versions {
			if v == "" || s.gversions[i] == "" {
				return false
			}
		}
		return true
	})
	// The check held (after one under way).
	n1.dur.peerMu.Lock()
	n1.dur.holdPeers.Store(true)
	n1.dur.peerMu.Unlock()
	const topic = "newnode/a/x"
	// The count matches the nodes n1 knows: the directory is complete.
	testutil.WaitFor(t, "n1's directory complete", 30*time.Second, func() bool {
		return n1.interest(acc, topic).groupsKnown
	})
	if a := n1.interest(acc, topic); len(a.groups) > 0 {
		t.Fatalf("a group for %s before any: %v", topic, a.groups)
	}
	if got, want := acc.Interest(countSubject), 3; got != want {
		t.Fatalf("n1's server counts %d nodes; want %d", got, want)
	}

	n4 := startJoiningNode(t, nodes, "n4", func(nd *Node) { nd.share.ack.quiet.Store(true) })
	member := dial(t, n4.addr, "nnmember", client.V5)
	subscribe(t, member, 1, "$share/late/newnode/#")
	subj := sharedPrefix + topicTokens(topic)
	for acc.Interest(subj) == 0 {
		if ctx.Err() != nil {
			t.Fatal("n1 never saw n4's group")
		}
		time.Sleep(time.Millisecond)
	}
	n4Marker := markerPrefix + keyOf("n4") + "."
	knownBefore := slices.Contains(*n1.dur.peers.Load(), n4Marker)
	// What a publication looks up now: the directory is either known to
	// be incomplete or holds n4's group.
	a := n1.interest(acc, topic)
	if a.groupsKnown && !slices.Contains(a.groups, queueName("late", "newnode/#")) {
		t.Fatalf("n1 takes its directory for complete without n4's group (n4 known: %v): %v", knownBefore, a.groups)
	}
	confirmed := n1.share.ack.confirmed.Load()
	if err := pub.Publish(ctx, &client.Message{Topic: topic, QoS: 1, Payload: []byte("first")}); err != nil {
		t.Fatal(err)
	}
	if n1.share.ack.confirmed.Load() == confirmed {
		t.Fatalf("PUBACK without the group's confirmation (n4 known before: %v): the group got the message at most once", knownBefore)
	}
	select {
	case m := <-member.Messages():
		if m.Topic != topic || string(m.Payload) != "first" {
			t.Fatalf("got %q on %q", m.Payload, m.Topic)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the group did not receive the message")
	}
	if !slices.Contains(*n1.dur.peers.Load(), n4Marker) {
		t.Error("n1 confirmed the message without knowing n4")
	}
	t.Logf("n4 known to n1 before the look-up: %v; directory known complete at the look-up: %v", knownBefore, a.groupsKnown)
	// Complete again, with n4 counted, its check of the routes still held.
	testutil.WaitFor(t, "n1's directory complete with n4", 30*time.Second, func() bool {
		a := n1.interest(acc, topic)
		return a.groupsKnown && slices.Contains(a.groups, queueName("late", "newnode/#"))
	})
	if got, want := acc.Interest(countSubject), 4; got != want {
		t.Fatalf("n1's server counts %d nodes; want %d", got, want)
	}
	expectNone(t, member, 200*time.Millisecond)
}

// startJoiningNode starts a node named name that joins the cluster of
// nodes, with a broker and a plain MQTT listener, and waits until it is
// ready. before runs before the node is attached to its broker.
func startJoiningNode(t *testing.T, nodes []*testNode, name string, before func(*Node)) *testNode {
	t.Helper()
	var peers []string
	for _, tn := range nodes {
		peers = append(peers, tn.node.RouteAddr())
	}
	log := slog.New(testLog(t)).With("node", name)
	nd, err := Start(Config{Name: "test", Node: name, Listen: "127.0.0.1:0", Peers: peers, Replicas: 3,
		StoreDir: filepath.Join(t.TempDir(), name), Logger: log,
		HeartbeatInterval: testHeartbeat, MarkerTTL: testMarkerTTL, setupAttempt: testSetupAttempt})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := broker.New(broker.Config{Cluster: nd, Authorizer: broker.AllowAll, AllowAnonymous: true, Logger: log})
	if err != nil {
		nd.Close()
		t.Fatal(err)
	}
	if before != nil {
		before(nd)
	}
	nd.Attach(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		nd.Close()
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = srv.Serve(sctx, ln, broker.ListenerConfig{Name: "plain"}) }()
	t.Cleanup(func() {
		scancel()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = srv.Shutdown(ctx)
		cancel()
		wg.Wait()
		nd.Close()
	})
	select {
	case <-nd.Ready():
	case <-time.After(120 * time.Second):
		t.Fatalf("%s not ready within 120 s", name)
	}
	return &testNode{node: nd, srv: srv, addr: ln.Addr().String()}
}
