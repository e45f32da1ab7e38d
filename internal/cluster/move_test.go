package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// publishBurst publishes n messages per publisher at qos on topic,
// payloads "<publisher> <i>" and pad bytes, the publishers at once, and
// returns once the server has handled them all: every PUBACK has come,
// and after QoS 0 messages that of a QoS 1 message on a topic nobody
// subscribed to (a connection's messages are handled in order).
func publishBurst(ctx context.Context, pubs []*client.Client, topic string, n, pad int, qos byte) error {
	errs := make(chan error, len(pubs))
	for p, c := range pubs {
		go func() {
			toks := make([]*client.Token, 0, n)
			for i := range n {
				payload := append([]byte(fmt.Sprintf("%d %d ", p, i)), bytes.Repeat([]byte{'x'}, pad)...)
				toks = append(toks, c.PublishAsync(ctx, &client.Message{Topic: topic, QoS: qos, Payload: payload}))
			}
			if qos == 0 {
				toks = append(toks, c.PublishAsync(ctx, &client.Message{Topic: "burst-end", QoS: 1}))
			}
			for _, tok := range toks {
				if err := tok.Wait(ctx); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range pubs {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// TestSessionMoveSlowOldHome: the old home of a persistent session
// answers the claim of the new node only after more than the record of
// recent messages kept before pins (one second, 4,096 messages), while
// 4,500 messages are published on the new node: the moved session
// receives every one of them once, in each publisher's order. QoS 0
// messages are found in the record alone; QoS 1 ones may reach the
// durable stream as well (the old home's interest lingers), and are
// replayed from there once, not again from the record.
func TestSessionMoveSlowOldHome(t *testing.T) {
	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) { testSessionMoveSlowOldHome(t, qos) })
	}
}

// slowClaims lets a claim wait a minute for the old home's answer (5 s
// otherwise), and a client as long for its CONNACK: under the race
// detector, on a busy machine, the bursts the old home waits for take
// longer than 5 s.
func slowClaims(i int, nd *Node) { nd.sess.releaseWait = time.Minute }

func testSessionMoveSlowOldHome(t *testing.T, qos byte) {
	nodes, err := startNodesHooked(t, t.TempDir(), freePorts(t, 3), []func(int, *Node){slowClaims}, func(bc *broker.Config) {
		bc.MaxQueued, bc.QueueQoS0, bc.ConnectTimeout = 20000, true, 3*time.Minute
	})
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := dialSession(t, nodes[0].addr, "slowmover", client.V5)
	subscribe(t, sub, 1, "slow/#")
	disconnect(t, sub)
	const npub, each = 3, 1500
	var pubs []*client.Client
	for i := range npub {
		pubs = append(pubs, dial(t, nodes[1].addr, fmt.Sprintf("slowpub%d", i), client.V5))
	}

	published := make(chan error, 1)
	var once sync.Once
	hook := func(id string) {
		once.Do(func() {
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
			defer cancel()
			err := publishBurst(ctx, pubs, "slow/x", each, 0, qos)
			// Longer than the window the record kept before pins: the
			// old home is slow to answer.
			for err == nil && time.Since(start) < 1200*time.Millisecond {
				time.Sleep(20 * time.Millisecond)
			}
			published <- err
		})
	}
	nodes[0].node.sess.beforeReply.Store(&hook)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sub2, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "slowmover",
		Version: client.V5, SessionExpiry: 600, ConnectTimeout: 2 * time.Minute})
	nodes[0].node.sess.beforeReply.Store(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub2.Close() })
	if !sub2.ConnectInfo().SessionPresent {
		t.Fatal("Session Present 0 on n2")
	}
	select {
	case err := <-published:
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("the old home's hook did not run")
	}
	next := make([]int, npub)
	deadline := time.After(60 * time.Second)
	for got := 0; got < npub*each; got++ {
		select {
		case m := <-sub2.Messages():
			var p, i int
			if _, err := fmt.Sscanf(string(m.Payload), "%d %d", &p, &i); err != nil || p < 0 || p >= npub {
				t.Fatalf("unexpected message %q on %s", m.Payload, m.Topic)
			}
			if i != next[p] {
				t.Fatalf("publisher %d: message %d after %d (lost, duplicated or out of order)", p, i, next[p]-1)
			}
			next[p]++
		case <-deadline:
			t.Fatalf("received %v of %d per publisher", next, each)
		}
	}
	expectNone(t, sub2, time.Second)
}

// TestSessionMoveOverrunBusy: more than the pinned record's bound (64 MiB)
// published on the new node while the old home is slow to answer makes
// the claim fail with CONNACK 0x89 (Server busy) before it takes the
// session; the session stays whole: the next attempt resumes it (Session
// Present 1) with its subscription.
func TestSessionMoveOverrunBusy(t *testing.T) {
	nodes, err := startNodesHooked(t, t.TempDir(), freePorts(t, 3), []func(int, *Node){slowClaims}, func(bc *broker.Config) {
		bc.ConnectTimeout = 3 * time.Minute
	})
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := dialSession(t, nodes[0].addr, "overrun", client.V5)
	subscribe(t, sub, 1, "big/#")
	disconnect(t, sub)
	var pubs []*client.Client
	for i := range 4 {
		pubs = append(pubs, dial(t, nodes[1].addr, fmt.Sprintf("bigpub%d", i), client.V5))
	}
	pub := pubs[0]

	published := make(chan error, 1)
	var once sync.Once
	hook := func(id string) {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			// 72 messages of nearly 1 MiB: beyond 64 MiB.
			published <- publishBurst(ctx, pubs, "big/x", 18, 1<<20-100, 0)
		})
	}
	nodes[0].node.sess.beforeReply.Store(&hook)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err = client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "overrun",
		Version: client.V5, SessionExpiry: 600, ConnectTimeout: 2 * time.Minute})
	nodes[0].node.sess.beforeReply.Store(nil)
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	var re *client.ReasonError
	if !errors.As(err, &re) || re.Code != packet.ServerBusy {
		t.Fatalf("connect during the overrun: %v, want CONNACK 0x89", err)
	}

	sub2, present := dialSession(t, nodes[1].addr, "overrun", client.V5)
	if !present {
		t.Fatal("Session Present 0 after the failed claim")
	}
	if err := pub.Publish(ctx, &client.Message{Topic: "big/after", QoS: 1, Payload: []byte("after")}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case m := <-sub2.Messages():
			if string(m.Payload) == "after" {
				return
			}
			// One of the large messages, if the new claim's replay
			// still found it.
		case <-ctx.Done():
			t.Fatal("the resumed session's subscription delivered nothing")
		}
	}
}
