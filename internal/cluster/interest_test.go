package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// freshInterest is the look-up of another node's markers for topic as
// it was made for every message before the cache: what the QoS 1/2 path
// sees at this moment.
func freshInterest(n *Node, topic string) bool {
	acc := n.srv.GlobalAccount()
	toks := topicTokens(topic)
	for _, p := range *n.dur.peers.Load() {
		if acc.Interest(p+toks) > 0 {
			return true
		}
	}
	return false
}

// TestQoS0StaysLocalWithoutRemoteInterest checks that a QoS 0 message
// nobody on another node subscribes to is not handed to NATS, while a
// local subscriber gets it, and that it is once a remote subscriber is
// there.
func TestQoS0StaysLocalWithoutRemoteInterest(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	local := dial(t, nodes[0].addr, "local-sub", client.V5)
	subscribe(t, local, 0, "plant/#")
	pub := dial(t, nodes[0].addr, "pub", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := nodes[0].node.stats.forwarded.Load()
	for i := range 50 {
		if err := pub.Publish(ctx, &client.Message{Topic: "plant/line1", Payload: fmt.Appendf(nil, "%d", i)}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-local.Messages():
		case <-ctx.Done():
			t.Fatal("the local subscriber did not get message", i)
		}
	}
	if d := nodes[0].node.stats.forwarded.Load() - before; d != 0 {
		t.Fatalf("%d messages without interest on another node were handed to NATS", d)
	}
	remote := dial(t, nodes[2].addr, "remote-sub", client.V5)
	subscribe(t, remote, 0, "plant/+")
	awaitRoute(t, pub, remote, "plant/line1")
	if nodes[0].node.stats.forwarded.Load() == before {
		t.Fatal("no message was forwarded to the remote subscriber")
	}
}

// TestQoS0SubscribeThenPublishRace subscribes on one node and publishes a
// QoS 0 message on another the moment the publishing node's fresh look-up
// (what QoS 1/2 messages go by) sees the subscription: the cached answer,
// "nobody" until then, must never hold it back. Each round uses a new
// filter, on a topic whose "nobody" was cached just before.
func TestQoS0SubscribeThenPublishRace(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	n1 := nodes[0].node
	pub := dial(t, nodes[0].addr, "pub", client.V5)
	sub := dial(t, nodes[1].addr, "sub", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	testutil.WaitFor(t, "n1's peers and their versions known", 30*time.Second, func() bool {
		s := n1.ic.snap.Load()
		if s == nil || len(s.versions) != 2 || s.peers != n1.dur.peers.Load() {
			return false
		}
		for _, v := range s.versions {
			if v == "" {
				return false
			}
		}
		return true
	})
	hits := 0
	for round := range 20 {
		topic := fmt.Sprintf("race/%d/x", round)
		// Cached: nobody on another node.
		for range 3 {
			if err := pub.Publish(ctx, &client.Message{Topic: topic, Payload: []byte("before")}); err != nil {
				t.Fatal(err)
			}
		}
		// QoS 0 publications return once sent: wait (briefly) for n1 to
		// have cached the answer.
		for wait := time.Now().Add(time.Second); time.Now().Before(wait); time.Sleep(time.Millisecond) {
			if s := n1.ic.snap.Load(); s != nil {
				if a, ok := n1.ic.cache.get(topic, s.epoch, n1.share.ownGen.Load()); ok && !a.yes {
					hits++
					break
				}
			}
		}
		subscribe(t, sub, 0, fmt.Sprintf("race/%d/#", round))
		for !freshInterest(n1, topic) {
			if ctx.Err() != nil {
				t.Fatalf("round %d: n1 never saw the subscription", round)
			}
			time.Sleep(time.Millisecond)
		}
		if err := pub.Publish(ctx, &client.Message{Topic: topic, Payload: []byte("after")}); err != nil {
			t.Fatal(err)
		}
		// A "before" still on its way through n1 when the subscription
		// arrived may come too.
		for got := false; !got; {
			select {
			case m := <-sub.Messages():
				if m.Topic != topic {
					t.Fatalf("round %d: got %q on %q", round, m.Payload, m.Topic)
				}
				got = string(m.Payload) == "after"
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: the message published once the subscription was seen did not arrive", round)
			}
		}
	}
	if hits == 0 {
		t.Error("no round had its topic's answer cached before the subscription: the race was not tested")
	}
}

// BenchmarkInterestLookup measures the per-message look-up of other
// nodes' interest on a node of three, for a topic nobody on another node
// wants (the local traffic case): afresh, as every message did before
// the cache, and from the cache.
func BenchmarkInterestLookup(b *testing.B) {
	nodes := benchNodes(b, 3)
	n1 := nodes[0]
	nodes[1].Interest("remote/#", true)
	nodes[2].Interest("other/+/x", true)
	for i, n := range nodes {
		n.startVersions()
		if i > 0 {
			n.markPresent()
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		n1.refreshPeers(true)
		n1.refreshVersions()
		s := n1.ic.snap.Load()
		if s != nil && len(s.versions) == 2 && s.versions[0] != "" && s.versions[1] != "" && freshInterest(n1, "remote/a") &&
			!n1.peerMissing(n1.srv.GlobalAccount(), *n1.dur.peers.Load()) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("peers not known within 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	const topic = "plant/line1/cell7/temperature"
	acc := n1.srv.GlobalAccount()
	b.Run("qos0-fresh", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if freshInterest(n1, topic) || acc.Interest(sharedPrefix+topicTokens(topic)) > 0 {
					b.Fatal("interest found")
				}
			}
		})
	})
	// QoS 1/2: needsStream before the cache (presence, interest afresh,
	// presence) and now.
	b.Run("qos12-fresh", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				peers := *n1.dur.peers.Load()
				if n1.peerMissing(acc, peers) || freshInterest(n1, topic) || n1.peerMissing(acc, peers) {
					b.Fatal("stream needed")
				}
			}
		})
	})
	b.Run("qos12-cached", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if n1.needsStream(topic) {
					b.Fatal("stream needed")
				}
			}
		})
	})
	b.Run("qos0-cached", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if n1.wantsQoS0(topic) {
					b.Fatal("interest found")
				}
			}
		})
	})
}

// benchNodes starts n Nodes without brokers joined in one cluster and
// waits for their routes.
func benchNodes(b *testing.B, n int) []*Node {
	b.Helper()
	var routes []string
	for range n {
		routes = append(routes, fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(b)))
	}
	dir := b.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var nodes []*Node
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		nd, err := Start(Config{Name: "bench", Node: name, Listen: routes[i], Peers: routes, StoreDir: filepath.Join(dir, name), Logger: log})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nd.Close)
		nodes = append(nodes, nd)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, nd := range nodes {
		for nd.srv.NumRoutes() < n-1 {
			if time.Now().After(deadline) {
				b.Fatal("routes not up within 30 s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nodes
}
