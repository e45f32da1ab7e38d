package cluster

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
)

// leaveSessionOn leaves the persistent session id, subscribed at QoS 1
// to prefix/#, offline on nodes[0] of the common cluster, once a client
// of nodes[1] (returned) reaches it.
func leaveSessionOn(t *testing.T, nodes []*testNode, id, prefix string) (pub *client.Client) {
	t.Helper()
	sub, _ := dialSession(t, nodes[0].addr, id, client.V5)
	subscribe(t, sub, 1, prefix+"/#")
	pub = dial(t, nodes[1].addr, id+"-pub", client.V5)
	t.Cleanup(func() { _ = pub.Close() })
	awaitRoute(t, pub, sub, prefix+"/probe")
	disconnect(t, sub)
	return pub
}

// holdOn installs at hook a function that holds the reader handing on
// the message whose payload is payload until release runs (or ctx ends),
// and returns a channel closed once it holds it. Removed at the test's
// end.
func holdOn(t *testing.T, ctx context.Context, hook *atomic.Pointer[func(*broker.Message)], payload int) (held <-chan struct{}, release func()) {
	entered, gate := make(chan struct{}), make(chan struct{})
	var enterOnce, releaseOnce sync.Once
	release = func() { releaseOnce.Do(func() { close(gate) }) }
	f := func(m *broker.Message) {
		if string(m.Payload) != strconv.Itoa(payload) {
			return
		}
		enterOnce.Do(func() { close(entered) })
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
	hook.Store(&f)
	t.Cleanup(func() {
		hook.Store(nil)
		release()
	})
	return entered, release
}

// publishHeld publishes payload on topic through pub at QoS 1, with hook
// holding the reader handing it on (holdOn), and returns the message's
// token and the release once the reader holds it.
func publishHeld(t *testing.T, ctx context.Context, pub *client.Client, hook *atomic.Pointer[func(*broker.Message)], topic string,
	payload int) (*client.Token, func()) {
	t.Helper()
	held, release := holdOn(t, ctx, hook, payload)
	tok := pub.PublishAsync(ctx, &client.Message{Topic: topic, QoS: 1, Payload: []byte(strconv.Itoa(payload))})
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatalf("message %d was never handed on", payload)
	}
	return tok, release
}

// catchUpOnN2 starts three fresh nodes whose sessions' queues take 8
// messages (connect timeout connect), leaves the session id on n1
// (leaveSessionOn; pub is its client on n2), pauses n1's routing, and
// has a client of n3 publish prefix/y 0..others-1, routed by n2 and
// none by n1: a claim of the session on n2 reads them from the stream,
// more than its queue takes, and catches up.
func catchUpOnN2(t *testing.T, ctx context.Context, id, prefix string, connect time.Duration, others int) (
	nodes []*testNode, pub *client.Client, rec *logRecorder) {
	t.Helper()
	rec = &logRecorder{}
	nodes = startFresh(t, 3, nil, rec,
		func(c *broker.Config) { c.ConnectTimeout, c.MaxQueued = connect, 8 })
	n1, n2 := nodes[0].node, nodes[1].node
	pub = leaveSessionOn(t, nodes, id, prefix)
	pub3 := dial(t, nodes[2].addr, id+"-pub3", client.V5)
	t.Cleanup(func() { _ = pub3.Close() })
	n1.pauseRouting()
	t.Cleanup(n1.resumeRouting)
	if err := publishQoS(ctx, pub3, prefix+"/y", 0, others, 1); err != nil {
		t.Fatal(err)
	}
	if err := awaitAllRouted(ctx, n2); err != nil {
		t.Fatal(err)
	}
	return nodes, pub, rec
}

// claimOnN2 claims the session id on nodes[1], with imported run as the
// session is imported there, and returns the client once it has
// Session Present 1.
func claimOnN2(t *testing.T, nodes []*testNode, id string, imported func()) *client.Client {
	t.Helper()
	n2 := nodes[1].node
	hook := func(cid string) {
		if cid == id {
			imported()
		}
	}
	n2.sess.afterImport.Store(&hook)
	t.Cleanup(func() { n2.sess.afterImport.Store(nil) })
	moved, present := dialSession(t, nodes[1].addr, id, client.V5)
	t.Cleanup(func() { _ = moved.Close() })
	if !present {
		t.Fatal("Session Present 0 on n2")
	}
	return moved
}

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
	const id, prefix = "matched-before", "mbi"
	nodes := commonCluster(t)
	n2 := nodes[1].node
	pub := leaveSessionOn(t, nodes, id, prefix)
	other := dial(t, nodes[1].addr, id+"-other", client.V5)
	t.Cleanup(func() { _ = other.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// The reader of pub matches the message (the session is on n1) and
	// is held before n2 forwards it, until the session is imported.
	beforeTok, release := publishHeld(t, ctx, pub, &n2.dur.beforeForward, prefix+"/x", before)

	var afterTok *client.Token
	moved := claimOnN2(t, nodes, id, func() {
		// Matched once the session is here: held back by it, and
		// forwarded before the held reader goes on.
		fwd := n2.dur.seq.Load()
		afterTok = other.PublishAsync(ctx, &client.Message{Topic: prefix + "/y", QoS: 1, Payload: []byte(strconv.Itoa(after))})
		for n2.dur.seq.Load() == fwd && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		release()
	})
	if err := beforeTok.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if afterTok == nil {
		t.Fatal("the session was imported without the hook")
	}
	if err := afterTok.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	receiveWanted(t, moved, []int{before, after}, false)
}

// TestClaimFirstWaitRunsOut: a claim on n2 whose first wait for n2's
// commits runs out (a QoS 1 message's commit held through it, as while
// the stream elects a leader for longer than the client waits for
// CONNACK) reads only up to n2's routing position before the import,
// and says so; that message, matched before the claim and its commit
// done after the import, reaches the moved session from the reading
// after it (replayOwnLate). Before, it was missing.
func TestClaimFirstWaitRunsOut(t *testing.T) {
	t.Parallel()
	const msg = 2000
	const id, prefix = "first-wait", "fwo"
	rec := &logRecorder{}
	// The first wait lasts the connect timeout less a second, 5 s at
	// least: 6 s makes it the shortest.
	nodes := startFresh(t, 3, nil, rec,
		func(c *broker.Config) { c.ConnectTimeout = 6 * time.Second })
	n2 := nodes[1].node
	pub := leaveSessionOn(t, nodes, id, prefix)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tok, release := publishHeld(t, ctx, pub, &n2.dur.forwarding, prefix+"/x", msg)
	moved := claimOnN2(t, nodes, id, release)
	if err := tok.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	receiveWanted(t, moved, []int{msg}, false)
	const note = "cluster: this node's messages forwarded before a session moved here could not be waited for; " +
		"those past its routing position are read after the import"
	found := false
	for _, r := range rec.find(slog.LevelInfo, note) {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "client" && a.Value.String() == id {
				found = true
			}
			return true
		})
	}
	if !found {
		t.Fatalf("no %q for %s", note, id)
	}
	// The slow claim is logged with its parts: the wait is in its take.
	const slow = "cluster: a session claim took long"
	var take time.Duration
	for _, r := range rec.find(slog.LevelInfo, slow) {
		mine := false
		var d time.Duration
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "client":
				mine = a.Value.String() == id
			case "take":
				d = a.Value.Duration()
			}
			return true
		})
		if mine {
			take = d
		}
	}
	if take < 5*time.Second {
		t.Fatalf("no %q for %s with a take of 5 s or more (take %v)", slow, id, take)
	}
}

// TestClaimFirstWaitRunsOutCatchingUp: as TestClaimFirstWaitRunsOut,
// but the session catches up: n1, the old home, routed none of n3's 20
// messages for it (its routing paused), so the claim on n2 reads them
// from the stream, more than its queue takes (max_queued_messages 8).
// n2's held message is let go as the first reading ends (its wait run
// out), before the catch-up's position is written (which waits for the
// commits before it), and its record lands past the reading's end: it
// reaches the session from the catch-up (its late own messages,
// lateOwn), and n3's messages arrive in order. Before, the catch-up
// replayed none of the node's own messages past the routing position
// when the first wait had run out, and the held message was missing
// (logged at Warn).
func TestClaimFirstWaitRunsOutCatchingUp(t *testing.T) {
	t.Parallel()
	const msg, others = 2000, 20
	const id, prefix = "first-wait-cu", "fwc"
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	nodes, pub, rec := catchUpOnN2(t, ctx, id, prefix, 6*time.Second, others)
	n2 := nodes[1].node
	tok, release := publishHeld(t, ctx, pub, &n2.dur.forwarding, prefix+"/x", msg)
	// Let go once the claim's first reading ended, its wait run out:
	// the commit is done before the catch-up's position is written,
	// and the message is forwarded before the import.
	readHook := func(cid string) {
		if cid == id {
			release()
		}
	}
	n2.sess.afterReplayRead.Store(&readHook)
	t.Cleanup(func() { n2.sess.afterReplayRead.Store(nil) })
	moved := claimOnN2(t, nodes, id, func() {})
	if err := tok.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	next := 0
	gotOwn := false
	deadline := time.After(30 * time.Second)
	for next < others || !gotOwn {
		select {
		case m := <-moved.Messages():
			switch m.Topic {
			case prefix + "/x":
				if string(m.Payload) != strconv.Itoa(msg) {
					t.Fatalf("%s: %q", m.Topic, m.Payload)
				}
				gotOwn = true
			case prefix + "/y":
				if string(m.Payload) != strconv.Itoa(next) {
					t.Fatalf("%s: got %q, want %d", m.Topic, m.Payload, next)
				}
				next++
			}
		case <-deadline:
			t.Fatalf("received %d of n3's %d messages; n2's held message: %v", next, others, gotOwn)
		}
	}
	st := n2.Status()
	if st.CatchUps == 0 {
		t.Fatal("the claim did not catch up")
	}
	const note = "cluster: this node's messages forwarded before a session moved here could not be waited for; " +
		"those past its routing position are read after the import"
	if len(rec.find(slog.LevelInfo, note)) == 0 {
		t.Fatalf("no %q", note)
	}
}

// TestClaimCatchUpPositionWaitsLonger: a claim on n2 that catches up
// (n1, the old home, routed none of n3's 20 messages for the session, and
// its queue takes 8) stores its catch-up position first, and that write
// is reported after n2's commits before it: here one that takes 6.5 s,
// as after the death of the stream's leader, whose election takes 4 to
// 9 s. With a connect timeout of 20 s the claim waits for it, and
// every message arrives, in order. Before, the claim waited 5 s, gave up
// the catch-up (Warn, "catch-up position was not stored in time") and
// replayed only what its queue took: 13 of the 20 were missing.
func TestClaimCatchUpPositionWaitsLonger(t *testing.T) {
	t.Parallel()
	rec := claimBehindSlowCommit(t, "mark-wait", "mkw", 20*time.Second, 6500*time.Millisecond)
	if len(rec.find(slog.LevelWarn, positionLate)) != 0 {
		t.Fatalf("%q", positionLate)
	}
}

// claimBehindSlowCommit claims the session id on n2, which catches up
// with n3's 20 messages (catchUpOnN2, connect timeout connect), while a
// commit of n2's that begins once the claim's first reading is done
// takes hold: the catch-up position's write, reported in order after
// it, waits for it. It fails t unless every message arrives, in order,
// and the claim caught up, and returns the nodes' log.
func claimBehindSlowCommit(t *testing.T, id, prefix string, connect, hold time.Duration) *logRecorder {
	t.Helper()
	const others = 20
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	nodes, _, rec := catchUpOnN2(t, ctx, id, prefix, connect, others)
	n2 := nodes[1].node
	p := n2.persistence()
	var released sync.WaitGroup
	t.Cleanup(released.Wait)
	readHook := func(cid string) {
		if cid != id {
			return
		}
		c := p.begin(func(error) {})
		released.Add(1)
		time.AfterFunc(hold, func() { defer released.Done(); p.finish(c, nil) })
	}
	n2.sess.afterReplayRead.Store(&readHook)
	t.Cleanup(func() { n2.sess.afterReplayRead.Store(nil) })
	moved := claimOnN2(t, nodes, id, func() {})
	next := 0
	deadline := time.After(60 * time.Second)
	for next < others {
		select {
		case m := <-moved.Messages():
			if m.Topic != prefix+"/y" {
				continue
			}
			if string(m.Payload) != strconv.Itoa(next) {
				t.Fatalf("%s: got %q, want %d", m.Topic, m.Payload, next)
			}
			next++
		case <-deadline:
			t.Fatalf("received %d of n3's %d messages", next, others)
		}
	}
	if st := n2.Status(); st.CatchUps == 0 {
		t.Fatal("the claim did not catch up")
	}
	return rec
}

// positionLate is the warning of a claim whose catch-up position was not
// stored within its client's wait.
const positionLate = "cluster: a moved session's catch-up position was not stored within its client's wait; the catch-up goes on, " +
	"and if this node dies before the position is stored, the messages it skipped are not replayed"

// TestClaimCatchUpPositionLateCatchesUp: as TestClaimCatchUpPositionWaitsLonger,
// but n2's commit before the position's write takes 9 s, longer than the
// claim waits for it (connect timeout 6 s: requestAttempt, 5 s). The
// claim goes on catching up, warning that the position is not stored
// yet, and every message arrives, in order. Before, it gave the catch-up
// up and replayed only what its queue took.
func TestClaimCatchUpPositionLateCatchesUp(t *testing.T) {
	t.Parallel()
	rec := claimBehindSlowCommit(t, "mark-late", "mkl", 6*time.Second, 9*time.Second)
	if len(rec.find(slog.LevelWarn, positionLate)) != 1 {
		t.Fatalf("no warning %q", positionLate)
	}
}
