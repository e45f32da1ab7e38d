package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
)

// TestSessionMoveOldHomeOwnMessages: a persistent session on n1 moves to
// n2 while a publisher on n1 publishes QoS 1 messages for it, 20 of them
// after n1 gave the session up and before it answered the claim (no
// other node wants the topic yet). Each reaches the session on n2 once,
// with the 20 queued before the move and 20 published on n1 after it:
// n1 puts its own messages for a session it gave up into the stream,
// from which n2 replays them. Before, the 20 were acknowledged and
// reached nobody (delivered on n1 to no session, and not in the stream).
// The claim of the second case fails after n1 gave the session up, and
// the client comes back to n1 itself: the 20 are replayed there too.
func TestSessionMoveOldHomeOwnMessages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fail  bool // the claim on n2 fails after the release; the client returns to n1
		again int
	}{{"moved", false, 1}, {"failed-claim-back-home", true, 0}} {
		t.Run(tc.name, func(t *testing.T) { testSessionMoveOldHomeOwn(t, tc.fail, tc.again) })
	}
}

func testSessionMoveOldHomeOwn(t *testing.T, fail bool, again int) {
	nodes := startFresh(t, 3, nil, nil, func(bc *broker.Config) { bc.MaxQueued = 10000 })
	sub, _ := dialSession(t, nodes[0].addr, "ohsub", client.V5)
	subscribe(t, sub, 1, "oh/#")
	disconnect(t, sub)
	pub := dial(t, nodes[0].addr, "ohpub", client.V5)
	const each = 20
	want := make(map[string]bool)
	publish := func(phase string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i := range each {
			want[fmt.Sprintf("oh/%s 0 %d", phase, i)] = true
		}
		return publishBurst(ctx, []*client.Client{pub}, "oh/"+phase, each, 0, 1)
	}
	if err := publish("before"); err != nil {
		t.Fatal(err)
	}

	var errs []error
	var mu sync.Mutex
	var released, failed sync.Once
	beforeReply := func(id string) {
		released.Do(func() {
			if err := publish("released"); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	nodes[0].node.sess.beforeReply.Store(&beforeReply)
	if fail {
		afterRelease := func(id string) (err error) {
			failed.Do(func() { err = errors.New("storing the session failed (test)") })
			return err
		}
		nodes[1].node.sess.afterRelease.Store(&afterRelease)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "ohsub",
			Version: client.V5, SessionExpiry: 600})
		cancel()
		if err == nil {
			t.Fatal("the claim on n2 succeeded; its failure was wanted")
		}
	}
	sub2, present := dialSession(t, nodes[again].addr, "ohsub", client.V5)
	nodes[0].node.sess.beforeReply.Store(nil)
	nodes[1].node.sess.afterRelease.Store(nil)
	if !present {
		t.Fatal("Session Present 0")
	}
	for _, err := range errs {
		t.Fatal(err)
	}
	if err := publish("after"); err != nil {
		t.Fatal(err)
	}
	if len(want) != 3*each {
		t.Fatalf("%d messages published, want %d (a hook did not run)", len(want), 3*each)
	}
	receiveBursts(t, sub2, want)
}

// TestGivenUpMarksAtOnce: the marks of a session given up are on this
// node's server when holdGivenUp returns, so that the node's very next
// message for the session goes into the stream. The marks are
// subscriptions sent over the node's connection; without waiting for
// its server to confirm them, the message published right after a
// release found no interest yet and reached nobody (one acknowledged
// message lost in a move run, published 4 ms after the release).
func TestGivenUpMarksAtOnce(t *testing.T) {
	nodes := commonCluster(t)
	n := nodes[0].node
	acc := n.srv.GlobalAccount()
	for i := range 20 {
		filter := fmt.Sprintf("gmark/%d/#", i)
		topic := fmt.Sprintf("gmark/%d/x", i)
		if n.givenUpWants(acc, topic) {
			t.Fatalf("%s wanted before its session was given up", topic)
		}
		n.holdGivenUp([]string{filter})
		if !n.givenUpWants(acc, topic) {
			t.Fatalf("%s not wanted right after its session (%s) was given up", topic, filter)
		}
	}
}
