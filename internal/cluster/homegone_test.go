package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// TestClaimStopsWaitingForHomeGone: a session's claim on n1 asks n3, the
// session's home, to give it up; the request reaches n3, which dies
// before it answers (the hook leaves it unanswered, then n3's routes
// are cut as in a SIGKILL). The claim would wait a minute for the answer
// (releaseWait, and a CONNACK wait of two): it stops waiting once n3 has
// had no route to n1 for two seconds (homes_gone), reads n3's position
// as for a node gone, and resumes the session with Session Present 1.
// Every message published before and after n3 went arrives once, in
// order. On the earlier code the claim waits out its minute for n3.
func TestClaimStopsWaitingForHomeGone(t *testing.T) {
	t.Parallel()
	nodes, relays := startRelayedCluster(t, func(i int, nd *Node) { nd.sess.releaseWait = time.Minute })
	for _, tn := range nodes {
		l := tn.srv.Limits()
		l.ConnectTimeout = 2 * time.Minute
		if _, err := tn.srv.SetLimits(l); err != nil {
			t.Fatal(err)
		}
	}
	takeLead(t, nodes[0].node, "n1", streamMsgs, streamSessions)
	want := map[string]byte{"hg/q1": 1, "hg/q2": 2}
	sub, _ := dialSession(t, nodes[2].addr, "homegone", client.V5)
	subscribe(t, sub, 2, "hg/#")
	pub := dial(t, nodes[0].addr, "hgpub", client.V5)
	awaitRoute(t, pub, sub, "hg/probe")
	for topic, qos := range want {
		mustPublishQoS(t, pub, topic, 0, 3, qos)
	}
	receiveEach(t, sub, want, 0, 3)
	disconnect(t, sub)
	// Queued for the offline session on n3.
	for topic, qos := range want {
		mustPublishQoS(t, pub, topic, 3, 6, qos)
	}

	arrived := make(chan struct{}, 1)
	hold := func(ctx context.Context, id string) {
		if id != "homegone" {
			return
		}
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-ctx.Done() // never answered: n3 "dies" with the request
	}
	nodes[2].node.sess.releaseHeld.Store(&hold)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	type dialed struct {
		c   *client.Client
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[0].addr}, ClientID: "homegone",
			SessionExpiry: 600, ConnectTimeout: 80 * time.Second})
		done <- dialed{c, err}
	}()
	select {
	case <-arrived:
	case d := <-done:
		t.Fatalf("the claim answered before n3 had the request: %v", d.err)
	case <-ctx.Done():
		t.Fatal("the release request never reached n3")
	}
	cutNode(relays, 2, true)
	cut := time.Now()
	testutil.WaitFor(t, "n1 and n2 to see n3 gone", 30*time.Second, func() bool {
		return !nodes[0].node.peerConnected("n3") && !nodes[1].node.peerConnected("n3")
	})
	// Published on n1 while the claim waits.
	for topic, qos := range want {
		mustPublishQoS(t, pub, topic, 6, 9, qos)
	}
	var d dialed
	select {
	case d = <-done:
	case <-ctx.Done():
		t.Fatal("the claim did not answer")
	}
	t.Logf("the claim answered %v after the cut", time.Since(cut).Round(time.Millisecond))
	if d.err != nil {
		t.Fatalf("the claim on n1 with its old home gone: %v", d.err)
	}
	c := d.c
	t.Cleanup(func() { c.Close() })
	if !c.ConnectInfo().SessionPresent {
		t.Fatal("Session Present 0 on n1")
	}
	if got := nodes[0].node.Status().HomesGone; got != 1 {
		t.Fatalf("n1 stopped waiting for a home gone %d times, want 1", got)
	}
	receiveEach(t, c, want, 3, 9)
	for topic, qos := range want {
		mustPublishQoS(t, pub, topic, 9, 11, qos)
	}
	receiveEach(t, c, want, 9, 11)
}
