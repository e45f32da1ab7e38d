package cluster

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
)

// TestClaimOwnMessageMatchedBeforeImport: a QoS 1 message of a client of
// n2 that n2's reader matched before a claim of the session on n2
// imported it (so to no session there), and handed on to be forwarded
// only after the import (its reader held, as while it waits for a commit
// slot), reaches the moved session; a message of another client of n2
// matched once the session was imported (held back by it) and forwarded
// before the claim replays the late ones reaches it once, not twice.
// (The catch-up's side of it, lateOwn, needs an old home that cannot
// hand its queue over: TestClaimOwnMessagesInFlight covers it.)
func TestClaimOwnMessageMatchedBeforeImport(t *testing.T) {
	const before, after = 1000, 1001 // the payloads of n2's two messages
	nodes := commonCluster(t)
	n2 := nodes[1].node
	const id = "matched-before"
	sub, _ := dialSession(t, nodes[0].addr, id, client.V5)
	subscribe(t, sub, 1, "mbi/"+id+"/#")
	pub := dial(t, nodes[1].addr, id+"-pub", client.V5)
	other := dial(t, nodes[1].addr, id+"-other", client.V5)
	t.Cleanup(func() {
		for _, c := range []*client.Client{pub, other} {
			_ = c.Close()
		}
	})
	awaitRoute(t, pub, sub, "mbi/"+id+"/probe")
	disconnect(t, sub)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The reader of pub matches the message (the session is on n1) and
	// is held before n2 forwards it, until the session is imported.
	entered, release := make(chan struct{}), make(chan struct{})
	var enterOnce, releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	hold := func(m *broker.Message) {
		if string(m.Payload) != strconv.Itoa(before) {
			return
		}
		enterOnce.Do(func() { close(entered) })
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	n2.dur.beforeForward.Store(&hold)
	t.Cleanup(func() { n2.dur.beforeForward.Store(nil) })
	beforeTok := pub.PublishAsync(ctx, &client.Message{Topic: "mbi/" + id + "/x", QoS: 1, Payload: []byte(strconv.Itoa(before))})
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("n2 never forwarded the first message")
	}

	var afterTok *client.Token
	imported := func(cid string) {
		if cid != id {
			return
		}
		// Matched once the session is here: held back by it, and
		// forwarded before the held reader goes on.
		fwd := n2.dur.seq.Load()
		afterTok = other.PublishAsync(ctx, &client.Message{Topic: "mbi/" + id + "/y", QoS: 1, Payload: []byte(strconv.Itoa(after))})
		for n2.dur.seq.Load() == fwd && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		releaseOnce.Do(func() { close(release) })
	}
	n2.sess.afterImport.Store(&imported)
	t.Cleanup(func() { n2.sess.afterImport.Store(nil) })

	moved, present := dialSession(t, nodes[1].addr, id, client.V5)
	t.Cleanup(func() { _ = moved.Close() })
	if !present {
		t.Fatal("Session Present 0 on n2")
	}
	if err := beforeTok.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if afterTok == nil {
		t.Fatal("the session was imported without the hook")
	}
	if err := afterTok.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	receiveOnce(t, moved, []int{before, after})
}

// receiveOnce reads messages from c until each payload of want (numbers)
// came, and fails on one that never came or came twice.
func receiveOnce(t *testing.T, c *client.Client, want []int) {
	t.Helper()
	left := make(map[int]bool, len(want))
	for _, v := range want {
		left[v] = true
	}
	seen := make(map[int]bool)
	deadline := time.After(20 * time.Second)
	for len(left) > 0 {
		select {
		case m := <-c.Messages():
			v, err := strconv.Atoi(string(m.Payload))
			if err != nil {
				continue // a probe
			}
			if seen[v] {
				t.Fatalf("message %d came twice", v)
			}
			seen[v] = true
			delete(left, v)
		case <-deadline:
			t.Fatalf("never reached the moved session: %v", left)
		}
	}
	// A copy of one of them would follow at once: it is in the queue.
	expectNone(t, c, 500*time.Millisecond)
}

// TestClaimOwnMessageCommitOutlastsFirstWait: a QoS 1 message of a client
// of n2 whose commit is still under way through a claim's first wait for
// n2's commits (as while the stream elects a leader for longer than the
// client waits for CONNACK), and done only after the import, reaches the
// moved session: the claim, whose reading stopped at n2's routing
// position, reads n2's records past it after the import.
func TestClaimOwnMessageCommitOutlastsFirstWait(t *testing.T) {
	const msg = 2000
	nodes := commonCluster(t)
	n2 := nodes[1].node
	const id = "first-wait"
	sub, _ := dialSession(t, nodes[0].addr, id, client.V5)
	subscribe(t, sub, 1, "fwo/"+id+"/#")
	pub := dial(t, nodes[1].addr, id+"-pub", client.V5)
	t.Cleanup(func() { _ = pub.Close() })
	awaitRoute(t, pub, sub, "fwo/"+id+"/probe")
	disconnect(t, sub)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	entered, release := make(chan struct{}), make(chan struct{})
	var enterOnce, releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	hold := func(m *broker.Message) {
		if string(m.Payload) != strconv.Itoa(msg) {
			return
		}
		enterOnce.Do(func() { close(entered) })
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	n2.dur.forwarding.Store(&hold)
	t.Cleanup(func() { n2.dur.forwarding.Store(nil) })
	tok := pub.PublishAsync(ctx, &client.Message{Topic: "fwo/" + id + "/x", QoS: 1, Payload: []byte(strconv.Itoa(msg))})
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("n2 never forwarded the message")
	}
	imported := func(cid string) {
		if cid == id {
			releaseOnce.Do(func() { close(release) })
		}
	}
	n2.sess.afterImport.Store(&imported)
	t.Cleanup(func() { n2.sess.afterImport.Store(nil) })

	moved, present := dialSession(t, nodes[1].addr, id, client.V5)
	t.Cleanup(func() { _ = moved.Close() })
	if !present {
		t.Fatal("Session Present 0 on n2")
	}
	if err := tok.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	receiveOnce(t, moved, []int{msg})
}
