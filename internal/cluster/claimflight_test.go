package cluster

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// flightClaim is when, in TestClaimOwnMessagesInFlight, the session is
// claimed relative to the election of the durable stream's new leader.
type flightClaim int

const (
	// claimBeforeElection: the claim starts (and waits in ownEnd)
	// while the stream has no leader.
	claimBeforeElection flightClaim = iota
	// claimTakeAtElection: the claim starts before the election and
	// its take (the session record written) waits for the election's
	// advisory, so that ownEnd begins as the records go again.
	claimTakeAtElection
	// claimOnElection: the claim starts when the election's advisory
	// reaches the test.
	claimOnElection
	// claimAfterAcks: the claim starts once every publication was
	// acknowledged to its publisher.
	claimAfterAcks
)

func (c flightClaim) String() string {
	return [...]string{"before the election", "take at the election", "on the election", "after the acks"}[c]
}

// TestClaimOwnMessagesInFlight: n1 leads the durable stream and holds
// an offline persistent session; its routes are cut (as a SIGKILL: it
// steps nothing down), and a client of n2 publishes QoS 1 messages for
// the session at once, whose records wait for the stream's new leader.
// The session is then claimed on n2 before, during or after that
// election: every message acknowledged to its publisher reaches the
// moved session (n2's routing skips its own records, so only the
// claim's replay of its own messages brings them).
func TestClaimOwnMessagesInFlight(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		at flightClaim
		// ownLed: n2's own consumer is led by n1 (its routing stalls
		// until that consumer elects a leader too); sessLed: so is
		// moat_sessions.
		ownLed, sessLed bool
		// backlog: an MQTT 3.1.1 publisher, which knows no Receive
		// Maximum, sends three times the broker's (100) at once: the
		// connection's reader waits for a commit slot with the rest
		// read or in the socket, arrived before the claim began.
		// window: the claim's first reading waits until the whole
		// backlog is forwarded (before the import), and n2's routing
		// is held until CONNACK (as while n2's consumer, led by n1,
		// elects a leader): the import's last reading, up to the
		// routing position, does not find them either.
		backlog, window bool
		// catchUp: the session's queue on n2 (max_queued_messages 50)
		// takes fewer than the claim finds: its first reading fills the
		// room, and the rest, the late messages among them, follow in
		// the catch-up.
		catchUp bool
		// full: the session's queue on n2 is full once the import's
		// replay is delivered (its limit lowered to 1 then, as for a
		// queue the replay filled): the late messages, which no reading
		// before the import left room for, pass the limit rather than
		// be dropped there.
		full bool
	}{
		// Also passed when written, and left out for the suite's time:
		// before the election with n2's consumer on n1 or with
		// moat_sessions on n1, the take at the election, on the
		// election without n2's consumer on n1, after the
		// acknowledgements.
		{at: claimBeforeElection},
		{at: claimOnElection, ownLed: true},
		{at: claimTakeAtElection, backlog: true, window: true, full: true},
		{at: claimTakeAtElection, backlog: true, window: true, catchUp: true},
	} {
		name := tc.at.String()
		if tc.ownLed {
			name += ", own consumer on n1"
		}
		if tc.sessLed {
			name += ", sessions on n1"
		}
		if tc.backlog {
			name += ", backlog"
		}
		if tc.window {
			name += " forwarded during the reading"
		}
		if tc.catchUp {
			name += ", catching up"
		}
		if tc.full {
			name += ", queue full"
		}
		t.Run(name, func(t *testing.T) {
			testClaimOwnMessagesInFlight(t, tc.at, tc.ownLed, tc.sessLed, tc.backlog, tc.window, tc.catchUp, tc.full)
		})
	}
}

func testClaimOwnMessagesInFlight(t *testing.T, at flightClaim, ownLed, sessLed, backlog, window, catchUp, full bool) {
	const id, slots = "flight", 100 // slots: broker.DefaultReceiveMaximum
	count, version := slots, client.V5
	if backlog {
		count, version = 3*slots, client.V311
	}
	nodes, relays := startRelayedCluster(t)
	n1, n2, n3 := nodes[0].node, nodes[1].node, nodes[2].node
	sub, _ := dialSession(t, nodes[0].addr, id, client.V5)
	subscribe(t, sub, 1, "fl/#")
	pub := dial(t, nodes[1].addr, "flightpub", version)
	awaitRoute(t, pub, sub, "fl/probe")
	disconnect(t, sub)

	// n1 leads moat_msgs (and moat_sessions if sessLed); n3 the meta
	// group, n1's consumer (its floor is read at once), and the rest.
	takeLead(t, n3, "n1", streamMsgs)
	if sessLed {
		takeLead(t, n3, "n1", streamSessions)
	} else {
		takeLead(t, n3, "n3", streamSessions)
	}
	takeLead(t, n3, "n3")
	leadConsumer(t, n3, n1.consumerName(), "n3")
	if ownLed {
		leadConsumer(t, n3, n2.consumerName(), "n1")
	} else {
		leadConsumer(t, n3, n2.consumerName(), "n3")
	}
	last := streamState(t, n3).LastSeq
	testutil.WaitFor(t, "n2's and n3's copies of n1's consumer at the stream's end", 30*time.Second, func() bool {
		f2, why2 := n2.replicaFloor("n1")
		f3, why3 := n3.replicaFloor("n1")
		return why2 == "" && why3 == "" && f2 == last && f3 == last
	})

	// The election of moat_msgs' new leader, as n2 hears of it.
	elected := make(chan struct{})
	var electOnce sync.Once
	var electedAt time.Time
	es, err := n2.nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED."+streamMsgs, func(*nats.Msg) {
		electOnce.Do(func() { electedAt = time.Now(); close(elected) })
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = es.Unsubscribe() })
	if err := n2.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	if window {
		n2.pauseRouting()
		t.Cleanup(n2.resumeRouting)
	}
	cutNode(relays, 0, true)
	cut := time.Now()
	testutil.WaitFor(t, "n2 and n3 to see n1 gone", 30*time.Second, func() bool {
		return !n2.peerConnected("n1") && !n3.peerConnected("n1")
	})

	// The messages go into commits that wait for the stream's leader.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	fwd := n2.dur.seq.Load()
	toks := make([]*client.Token, count)
	for i := range toks {
		toks[i] = pub.PublishAsync(ctx, &client.Message{Topic: "fl/x", QoS: 1, Payload: []byte(strconv.Itoa(i))})
	}
	testutil.WaitFor(t, "n2 to forward the messages", 30*time.Second, func() bool {
		return n2.dur.seq.Load()-fwd >= uint64(min(count, slots))
	})
	select {
	case <-elected:
		t.Logf("the stream elected its leader %v after the cut, before the messages were forwarded", electedAt.Sub(cut))
	default:
	}
	acked := func() []bool {
		ok := make([]bool, count)
		for i, tok := range toks {
			ok[i] = tok.Wait(ctx) == nil
		}
		return ok
	}

	var takeAt atomic.Int64 // Unix ns: when the take waited for the election
	switch at {
	case claimTakeAtElection:
		hook := func(cid string) {
			if cid != id {
				return
			}
			takeAt.Store(time.Now().UnixNano())
			select {
			case <-elected:
			case <-ctx.Done():
			}
		}
		n2.sess.afterTake.Store(&hook)
	case claimOnElection:
		select {
		case <-elected:
		case <-ctx.Done():
			t.Fatal("no election of the stream's leader")
		}
	case claimAfterAcks:
		acked()
	}
	// How many of the messages n2 had forwarded when the claim's first
	// reading ended, and when the session was imported.
	var atRead, atImport atomic.Uint64
	readHook := func(cid string) {
		if cid != id {
			return
		}
		atRead.Store(n2.dur.seq.Load() - fwd)
		// window: the reader of the publisher's connection, whose
		// commit slots the election freed, goes on meanwhile.
		for window && n2.dur.seq.Load()-fwd < uint64(count) && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
	}
	n2.sess.afterReplayRead.Store(&readHook)
	importHook := func(cid string) {
		if cid == id {
			atImport.Store(n2.dur.seq.Load() - fwd)
		}
	}
	n2.sess.beforeImport.Store(&importHook)
	if catchUp {
		lim := nodes[1].srv.Limits()
		lim.MaxQueued = 50
		if _, err := nodes[1].srv.SetLimits(lim); err != nil {
			t.Fatal(err)
		}
	}
	if full {
		hook := func(cid string) {
			if cid != id {
				return
			}
			lim := nodes[1].srv.Limits()
			lim.MaxQueued = 1
			if _, err := nodes[1].srv.SetLimits(lim); err != nil {
				t.Error(err)
			}
		}
		n2.sess.afterImport.Store(&hook)
		t.Cleanup(func() { n2.sess.afterImport.Store(nil) })
	}
	claimAt := time.Now()
	read := n2.Status().ReplayRecords
	moved, present := dialSession(t, nodes[1].addr, id, client.V5)
	connack := time.Now()
	n2.resumeRouting()
	if !present {
		t.Fatal("Session Present 0 on n2")
	}
	ok := acked()
	select {
	case <-elected:
	default:
		t.Fatal("no election heard of")
	}
	t.Logf("after the cut: election %v, claim %v, take %v, CONNACK %v; replay records %d; forwarded %d at the reading, %d at the import",
		electedAt.Sub(cut), claimAt.Sub(cut), sinceCut(takeAt.Load(), cut), connack.Sub(cut), n2.Status().ReplayRecords-read,
		atRead.Load(), atImport.Load())
	t.Logf("n2's publisher: %d records published again alone, %d after a probe, %d elections, %d overtaken",
		n2.pub.retries.Load(), n2.pub.republished.Load(), n2.pub.elections.Load(), n2.pub.overtakes.Load())
	var want []int
	for i, o := range ok {
		if o {
			want = append(want, i)
		}
	}
	if len(want) < count {
		t.Logf("%d of %d messages acknowledged", len(want), count)
	}
	receiveAll(t, moved, want)
	if st := n2.Status(); catchUp && st.CatchUps == 0 {
		t.Fatal("the claim did not catch up")
	}
	if full {
		if d := nodes[1].srv.Stats().DroppedQueueFull; d != 0 {
			t.Fatalf("%d messages dropped at the moved session's full queue", d)
		}
	}
}

// sinceCut returns at (Unix ns) less cut, 0 for none.
func sinceCut(at int64, cut time.Time) time.Duration {
	if at == 0 {
		return 0
	}
	return time.Unix(0, at).Sub(cut)
}

// receiveAll reads messages from c until each payload of want (numbers)
// came at least once, or fails listing those that never came.
func receiveAll(t *testing.T, c *client.Client, want []int) {
	t.Helper()
	receiveWanted(t, c, want, true)
}

// receiveWanted reads messages from c until each payload of want
// (numbers) came, or fails listing those that never came. With dupsOK a
// payload may come more than once (at least once); without, one that
// comes twice, even within half a second of the last, fails.
func receiveWanted(t *testing.T, c *client.Client, want []int, dupsOK bool) {
	t.Helper()
	left := make(map[int]bool, len(want))
	for _, v := range want {
		left[v] = true
	}
	dups := 0
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
				if !dupsOK {
					t.Fatalf("message %d came twice", v)
				}
				dups++
			}
			seen[v] = true
			delete(left, v)
		case <-deadline:
			var missing []int
			for _, v := range want {
				if left[v] {
					missing = append(missing, v)
				}
			}
			t.Fatalf("%d of %d acknowledged messages never reached the moved session: %v", len(missing), len(want), missing)
		}
	}
	if dupsOK {
		if dups > 0 {
			t.Logf("%d duplicates (at least once)", dups)
		}
		return
	}
	// A copy of one of them would follow at once: it is in the queue.
	expectNone(t, c, 500*time.Millisecond)
}
