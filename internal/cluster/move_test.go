package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
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
	t.Parallel()
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
	nodes := startFresh(t, 3, []func(int, *Node){slowClaims}, nil, func(bc *broker.Config) {
		bc.MaxQueued, bc.QueueQoS0, bc.ConnectTimeout = 20000, true, 3*time.Minute
	})
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
		case m, ok := <-sub2.Messages():
			if !ok {
				t.Fatalf("the connection to n2 ended after %v of %d per publisher: %v", next, each, sub2.Err())
			}
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
	t.Parallel()
	nodes := startFresh(t, 3, []func(int, *Node){slowClaims}, nil, func(bc *broker.Config) {
		bc.ConnectTimeout = 3 * time.Minute
	})
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
	_, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "overrun",
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

// TestSessionMoveFailedClaimLossless: a claim fails after the old home
// gave the session up (the write of the session record fails), and the
// session is claimed again, on the same node or on another: it receives
// once each message published meanwhile, on the new node (QoS 0 with
// queue_qos0, and QoS 1) and, at QoS 1, on the third node, while the old
// home gave the session up, while the failing claim went on and between
// the two claims. The old home answers the second claim with the
// position it gave the session up at; the new node's second claim
// resumes the first from its start, pin included; a second claim on the
// third node, or on the old home itself, replays the QoS 1 messages from
// that position. In the late variants (markers linger a second) more
// messages are published once the old home's markers of the session
// would have gone: it keeps them while it remembers the position, so
// those messages reach the stream and the session (all 40 were missing
// without that).
func TestSessionMoveFailedClaimLossless(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		qos   byte
		again int  // the node of the second claim
		late  bool // messages also published once the old home's markers would have gone
	}{{"qos0", 0, 1, false}, {"qos1", 1, 1, false}, {"qos1-elsewhere", 1, 2, false}, {"qos1-oldhome", 1, 0, false},
		{"qos1-elsewhere-late", 1, 2, true}, {"qos1-oldhome-late", 1, 0, true}} {
		t.Run(tc.name, func(t *testing.T) { testSessionMoveFailedClaim(t, tc.qos, tc.again, tc.late) })
	}
}

func testSessionMoveFailedClaim(t *testing.T, qos byte, again int, late bool) {
	var hooks []func(int, *Node)
	if late {
		// A marker lingers a second rather than 10 s.
		hooks = append(hooks, func(i int, nd *Node) { nd.dur.linger = time.Second })
	}
	nodes := startFresh(t, 3, hooks, nil, func(bc *broker.Config) {
		bc.MaxQueued, bc.QueueQoS0 = 10000, true
	})
	sub, _ := dialSession(t, nodes[0].addr, "failmover", client.V5)
	subscribe(t, sub, 1, "gap/#")
	disconnect(t, sub)
	// QoS 0 messages of other nodes are not in the durable stream: a
	// moving session is promised those of its new node only.
	pubs := []*client.Client{dial(t, nodes[1].addr, "gappub1", client.V5)}
	if qos > 0 {
		pubs = append(pubs, dial(t, nodes[2].addr, "gappub2", client.V5))
	}
	const each = 20
	want := make(map[string]bool)
	publish := func(phase string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for p := range pubs {
			for i := range each {
				want[fmt.Sprintf("gap/%s %d %d", phase, p, i)] = true
			}
		}
		return publishBurst(ctx, pubs, "gap/"+phase, each, 0, qos)
	}

	// The old home gives the session up, and messages are published
	// before it answers; then the claim fails after the answer, with
	// more published meanwhile.
	var errs []error
	var errMu sync.Mutex
	note := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
	}
	var released, failed sync.Once
	beforeReply := func(id string) { released.Do(func() { note(publish("released")) }) }
	afterRelease := func(id string) (err error) {
		failed.Do(func() {
			note(publish("failing"))
			err = errors.New("storing the session failed (test)")
		})
		return err
	}
	nodes[0].node.sess.beforeReply.Store(&beforeReply)
	nodes[1].node.sess.afterRelease.Store(&afterRelease)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "failmover",
		Version: client.V5, SessionExpiry: 600})
	nodes[0].node.sess.beforeReply.Store(nil)
	nodes[1].node.sess.afterRelease.Store(nil)
	var re *client.ReasonError
	if !errors.As(err, &re) || re.Code != packet.ServerUnavailable {
		t.Fatalf("connect during the failing claim: %v, want CONNACK 0x88", err)
	}
	note(publish("between"))
	phases := 3
	if late {
		// The old home's markers of the session outlive their linger
		// while it remembers the position it gave the session up at:
		// the messages published now still go into the stream.
		testutil.WaitFor(t, "n1 to keep its markers past their linger", 30*time.Second, func() bool {
			return nodes[0].node.dstats.markersHeld.Load() > 0
		})
		note(publish("late"))
		phases++
	}
	for _, err := range errs {
		t.Fatal(err)
	}
	if len(want) != phases*each*len(pubs) {
		t.Fatalf("%d messages published, want %d (a hook did not run)", len(want), phases*each*len(pubs))
	}

	sub2, present := dialSession(t, nodes[again].addr, "failmover", client.V5)
	if !present {
		t.Fatal("Session Present 0 after the failed claim")
	}
	receiveBursts(t, sub2, want)
}

// receiveBursts reads from c each message of want, named "TOPIC P I" by
// its topic and the publisher and index that begin its payload (as
// publishBurst writes them), once, until none is left; then nothing more
// for a second. It empties want.
func receiveBursts(t *testing.T, c *client.Client, want map[string]bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for len(want) > 0 {
		select {
		case m := <-c.Messages():
			var p, i int
			if _, err := fmt.Sscanf(string(m.Payload), "%d %d", &p, &i); err != nil {
				t.Fatalf("unexpected message %q on %s", m.Payload, m.Topic)
			}
			key := fmt.Sprintf("%s %d %d", m.Topic, p, i)
			if !want[key] {
				t.Fatalf("message %s unexpected or received twice", key)
			}
			delete(want, key)
		case <-deadline:
			t.Fatalf("%d messages never received: %v", len(want), slices.Sorted(maps.Keys(want)))
		}
	}
	expectNone(t, c, time.Second)
}

// TestSessionMoveFailedClaimBounds: a node that remembers as many
// sessions given up as it may (maxReleased), none of them given up more
// than failedFor ago, keeps the session rather than give it up, and a
// node that keeps as many failed claims as it may (maxFailedClaims) asks
// nothing: either way the claim is refused with CONNACK 0x89 (Server
// busy), and the session stays whole on its home. When the entries are
// older, the node reads their session records and forgets those that no
// longer name it (here: none exists), but not one whose record still
// does (a claim failed): the claim succeeds.
func TestSessionMoveFailedClaimBounds(t *testing.T) {
	t.Parallel()
	for _, full := range []string{"released", "failed", "released-stale"} {
		t.Run(full, func(t *testing.T) {
			nodes := startFresh(t, 3, nil, nil)
			sub, _ := dialSession(t, nodes[0].addr, "bounded", client.V5)
			subscribe(t, sub, 1, "bound/#")
			disconnect(t, sub)
			s := &nodes[0].node.sess
			switch full {
			case "released", "released-stale":
				at := time.Now()
				if full == "released-stale" {
					at = at.Add(-time.Minute)
					// Its record names n1: a claim that failed.
					kept, _ := dialSession(t, nodes[0].addr, "keptpos", client.V5)
					disconnect(t, kept)
				}
				s.mu.Lock()
				for i := range maxReleased - 1 {
					s.releaseTokens++
					s.released[fmt.Sprintf("other%d", i)] = releasedAt{at: at, first: s.releaseTokens}
				}
				s.released["keptpos"] = releasedAt{at: at.Add(-time.Second), first: 1}
				s.mu.Unlock()
			case "failed":
				for i := range maxFailedClaims {
					nodes[1].node.keepFailed(fmt.Sprintf("other%d", i), &failedClaim{at: time.Now()})
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if full == "released-stale" {
				// On a busy machine the look-up may run out of time before
				// it read a record: the claim is refused (0x89), and the
				// client tries again, as the refusal asks.
				var sub2 *client.Client
				for sub2 == nil {
					c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "bounded",
						Version: client.V5, SessionExpiry: 600})
					var re *client.ReasonError
					if errors.As(err, &re) && (re.Code == packet.ServerBusy || re.Code == packet.ServerUnavailable) && ctx.Err() == nil {
						t.Logf("connect: %v; again", err)
						continue
					}
					if err != nil {
						t.Fatal(err)
					}
					sub2 = c
				}
				t.Cleanup(func() { sub2.Close() })
				if !sub2.ConnectInfo().SessionPresent {
					t.Fatal("Session Present 0 after the stale entries were looked up")
				}
				s.mu.Lock()
				_, kept := s.released["keptpos"]
				left := len(s.released)
				s.mu.Unlock()
				if !kept {
					t.Error("the position of a session whose record still names n1 was forgotten")
				}
				if left >= maxReleased {
					t.Errorf("%d positions remembered after the look-up, want fewer than %d", left, maxReleased)
				}
				pub := dial(t, nodes[2].addr, "boundpub", client.V5)
				if err := pub.Publish(ctx, &client.Message{Topic: "bound/x", QoS: 1, Payload: []byte("1 1")}); err != nil {
					t.Fatal(err)
				}
				select {
				case <-sub2.Messages():
				case <-ctx.Done():
					t.Fatal("the moved session's subscription delivered nothing")
				}
				return
			}
			_, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "bounded",
				Version: client.V5, SessionExpiry: 600})
			var re *client.ReasonError
			if !errors.As(err, &re) || re.Code != packet.ServerBusy {
				t.Fatalf("connect: %v, want CONNACK 0x89", err)
			}
			sub2, present := dialSession(t, nodes[0].addr, "bounded", client.V5)
			if !present {
				t.Fatal("Session Present 0 on the home after the refused claim")
			}
			pub := dial(t, nodes[0].addr, "boundpub", client.V5)
			if err := pub.Publish(ctx, &client.Message{Topic: "bound/x", QoS: 1, Payload: []byte("1 1")}); err != nil {
				t.Fatal(err)
			}
			select {
			case <-sub2.Messages():
			case <-ctx.Done():
				t.Fatal("the session's subscription delivered nothing")
			}
		})
	}
}

// TestSessionMoveQoS0NotTwice: a session connected on its home, with
// queue_qos0, moves to the node whose client publishes QoS 0 messages
// during the claim. Those the old home sent to the connection before it
// gave the session up are not replayed to it on the new node; those
// published after are, once each.
func TestSessionMoveQoS0NotTwice(t *testing.T) {
	t.Parallel()
	nodes := startFresh(t, 3, nil, nil, func(bc *broker.Config) {
		bc.QueueQoS0 = true
	})
	old, _ := dialSession(t, nodes[0].addr, "q0mover", client.V5)
	subscribe(t, old, 0, "q0/#")
	pubs := []*client.Client{dial(t, nodes[1].addr, "q0pub", client.V5)}
	const each = 20
	publish := func(phase string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return publishBurst(ctx, pubs, "q0/"+phase, each, 0, 0)
	}
	// The node's interest in q0/# must have reached the publishing node.
	testutil.WaitFor(t, "n2 to see n1's interest", 30*time.Second, func() bool { return nodes[1].node.wantsQoS0("q0/x") })

	var errs []error
	var errMu sync.Mutex
	note := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
	}
	var before, after sync.Once
	beforeRelease := func(id string) {
		before.Do(func() {
			// Published after the claim began, and sent by the old home
			// to the connection, which receives them.
			if err := publish("before"); err != nil {
				note(err)
				return
			}
			deadline := time.After(30 * time.Second)
			for got := 0; got < each; got++ {
				select {
				case m := <-old.Messages():
					if m.Topic != "q0/before" {
						note(fmt.Errorf("unexpected message %q on %s on the old home", m.Payload, m.Topic))
						return
					}
				case <-deadline:
					note(fmt.Errorf("the old home's connection received %d of %d", got, each))
					return
				}
			}
		})
	}
	beforeReply := func(id string) { after.Do(func() { note(publish("after")) }) }
	nodes[1].node.sess.beforeRelease.Store(&beforeRelease)
	nodes[0].node.sess.beforeReply.Store(&beforeReply)
	sub, present := dialSession(t, nodes[1].addr, "q0mover", client.V5)
	nodes[1].node.sess.beforeRelease.Store(nil)
	nodes[0].node.sess.beforeReply.Store(nil)
	for _, err := range errs {
		t.Fatal(err)
	}
	if !present {
		t.Fatal("Session Present 0 on n2")
	}
	deadline := time.After(30 * time.Second)
	for i := range each {
		select {
		case m := <-sub.Messages():
			var p, j int
			if _, err := fmt.Sscanf(string(m.Payload), "%d %d", &p, &j); err != nil || m.Topic != "q0/after" || j != i {
				t.Fatalf("message %q on %s, want %d on q0/after (a duplicate of what the old home sent?)", m.Payload, m.Topic, i)
			}
		case <-deadline:
			t.Fatalf("received %d of %d messages published after the old home gave the session up", i, each)
		}
	}
	expectNone(t, sub, time.Second)
}

// TestSessionMoveManyReleased: with the bound of given-up sessions a
// node remembers set to 4, 12 sessions move one after the other from n1
// to n2 (half of them connected on n1, taken over): none is refused, as
// n1 forgets each position once n2 tells it that its claim took the
// session record, and each moved session's subscription works on n2.
func TestSessionMoveManyReleased(t *testing.T) {
	t.Parallel()
	const bound, moves = 4, 12
	nodes := startFresh(t, 3, []func(int, *Node){func(_ int, nd *Node) { nd.sess.releasedCap = bound }}, nil)
	for i := range moves {
		id := fmt.Sprintf("many%d", i)
		c, _ := dialSession(t, nodes[0].addr, id, client.V5)
		subscribe(t, c, 1, "many/"+id)
		if i%2 == 0 {
			disconnect(t, c)
		}
	}
	s := &nodes[0].node.sess
	moved := make([]*client.Client, moves)
	for i := range moves {
		id := fmt.Sprintf("many%d", i)
		c, present := dialSession(t, nodes[1].addr, id, client.V5)
		if !present {
			t.Fatalf("%s: Session Present 0 on n2", id)
		}
		moved[i] = c
		testutil.WaitFor(t, "n1 to forget the position of "+id, 30*time.Second, func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			_, ok := s.released[id]
			return !ok
		})
	}
	pub := dial(t, nodes[2].addr, "manypub", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, c := range moved {
		id := fmt.Sprintf("many%d", i)
		if err := pub.Publish(ctx, &client.Message{Topic: "many/" + id, QoS: 1, Payload: []byte(id)}); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-c.Messages():
			if string(m.Payload) != id {
				t.Fatalf("%s received %q", id, m.Payload)
			}
		case <-ctx.Done():
			t.Fatalf("%s: the moved session's subscription delivered nothing", id)
		}
	}
}

// TestSessionClaimsSameInstant: a client connects on n2 and on n3 at the
// same instant, its session's home being n1 with QoS 1 messages queued.
// n3's claim asks n2 to give the session up after n2 wrote the session
// record and before it imported the session: n2 answers "busy, try
// again" and gives nothing up; once n2 attached its client, n3's claim
// asks again and takes the session over as from any home. Exactly one
// connection survives (n3's), one node is the session's home, and the
// session is whole: n3's client receives every queued message (n2's did
// not acknowledge them) and the subscription works there.
func TestSessionClaimsSameInstant(t *testing.T) {
	t.Parallel()
	nodes := startFresh(t, 3, nil, nil, func(bc *broker.Config) {
		bc.ConnectTimeout = time.Minute // n3's claim asks again until n2's client is attached
	})
	sub, _ := dialSession(t, nodes[0].addr, "twin", client.V5)
	subscribe(t, sub, 1, "twin/#")
	disconnect(t, sub)
	pub := dial(t, nodes[0].addr, "twinpub", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const queued = 5
	for i := range queued {
		if err := pub.Publish(ctx, &client.Message{Topic: "twin/q", QoS: 1, Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}

	type dialed struct {
		c   *client.Client
		err error
	}
	second := make(chan dialed, 1)
	secondDone := make(chan struct{})
	busy := make(chan struct{})
	var busyOnce, takeOnce sync.Once
	onBusy := func(id string) { busyOnce.Do(func() { close(busy) }) }
	nodes[1].node.sess.busyAnswer.Store(&onBusy)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	afterTake := func(id string) {
		takeOnce.Do(func() {
			// n2 has written the record; n3's client connects now.
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[2].addr}, ClientID: "twin",
					Version: client.V5, SessionExpiry: 600, ConnectTimeout: time.Minute})
				second <- dialed{c, err}
				close(secondDone)
			}()
			select {
			case <-busy:
			case <-secondDone: // given up at once: the bug this test is about
			case <-time.After(30 * time.Second):
			}
		})
	}
	nodes[1].node.sess.afterTake.Store(&afterTake)
	first, ferr := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "twin",
		Version: client.V5, SessionExpiry: 600, ManualAck: true, ConnectTimeout: time.Minute})
	nodes[1].node.sess.afterTake.Store(nil)
	if ferr == nil {
		t.Cleanup(func() { first.Close() })
	}
	var d dialed
	select {
	case d = <-second:
	case <-ctx.Done():
		t.Fatal("n3's connect did not end")
	}
	nodes[1].node.sess.busyAnswer.Store(nil)
	if d.err != nil {
		t.Fatalf("n3's connect: %v", d.err)
	}
	t.Cleanup(func() { d.c.Close() })
	if !d.c.ConnectInfo().SessionPresent {
		t.Fatal("Session Present 0 on n3")
	}
	if ferr == nil {
		// Connected first, then taken over.
		select {
		case <-first.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("both connections are up: n2's was not taken over")
		}
		var re *client.ReasonError
		if err := first.Err(); !errors.As(err, &re) || re.Code != packet.SessionTakenOver {
			t.Logf("n2's connection ended with %v", err)
		}
	}
	if !d.c.IsConnected() {
		t.Fatal("n3's connection was closed too")
	}
	homes := 0
	for _, tn := range nodes {
		tn.node.sess.mu.Lock()
		_, ok := tn.node.sess.homed["twin"]
		tn.node.sess.mu.Unlock()
		if ok {
			homes++
		}
	}
	if got := sessionNode(t, nodes[0].node, "twin"); got != "n3" || homes != 1 {
		t.Fatalf("the session's record names %s, %d nodes are its home; want n3 alone", got, homes)
	}
	select {
	case <-busy:
	default:
		t.Fatal("n2 did not answer n3's claim busy")
	}
	got := make(map[string]bool)
	deadline := time.After(30 * time.Second)
	for len(got) < queued {
		select {
		case m := <-d.c.Messages():
			got[string(m.Payload)] = true
		case <-deadline:
			t.Fatalf("n3's client received %d of the %d queued messages", len(got), queued)
		}
	}
	if err := pub.Publish(ctx, &client.Message{Topic: "twin/after", QoS: 1, Payload: []byte("after")}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case m := <-d.c.Messages():
			if m.Topic == "twin/after" {
				expectNone(t, d.c, time.Second)
				return
			}
			// A queued message sent again (n2's in flight, DUP).
		case <-deadline:
			t.Fatal("the subscription did not deliver on n3")
		}
	}
}

// leaveOwnSession leaves the offline persistent session id, subscribed
// at QoS 1 to id+"/x", on nodes[home], and returns a publisher on n1
// whose messages n1 forwards to the stream (a subscriber to id+"/#" on
// n3 wants them) and whose first QoS 1 message, which waits for n1's
// routing (the publish gate), has gone.
func leaveOwnSession(t *testing.T, nodes []*testNode, home int, id string) *client.Client {
	t.Helper()
	sub, _ := dialSession(t, nodes[home].addr, id, client.V5)
	subscribe(t, sub, 1, id+"/x")
	other := dial(t, nodes[2].addr, id+"-other", client.V5)
	subscribe(t, other, 1, id+"/#")
	pub := dial(t, nodes[0].addr, id+"-pub", client.V5)
	awaitRoute(t, pub, other, id+"/probe")
	publishQoS1(t, pub, id+"/gate", 0, 1)
	disconnect(t, sub)
	return pub
}

// TestSessionMoveOwnQueuedNotTwice: QoS 1 messages of n1's own client are
// queued for an offline persistent session on n1 while n1's routing is
// held (a node behind on its stream: their records lie past the
// position it gives the session up at). The client resumes on n2 and
// receives each message once: the records of the deliveries name the
// messages by their stream IDs, so n2's replay from n1's position skips
// those the session holds.
func TestSessionMoveOwnQueuedNotTwice(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	pub := leaveOwnSession(t, nodes, 0, "ownq")
	n1 := nodes[0].node
	n1.pauseRouting()
	t.Cleanup(n1.resumeRouting)
	const n = 20
	publishQoS1(t, pub, "ownq/x", 0, n)
	sub2, present := dialSession(t, nodes[1].addr, "ownq", client.V5)
	if !present {
		t.Fatal("Session Present 0 on n2")
	}
	receiveInOrder(t, sub2, 0, n)
	expectNone(t, sub2, time.Second)
}

// TestSessionMoveFoundOwnNotTwice: QoS 1 messages of n1's own client
// published while an offline persistent session moves from n2 to n1,
// after the claim read the stream, are found by the claim and delivered
// to it from n1's record of recent messages, with n1's routing held, so
// that their records lie past the position n1 then gives the session up
// at. The client, having left n1
// again, resumes on n3 and receives each message once: the records of
// those deliveries name the messages too.
func TestSessionMoveFoundOwnNotTwice(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	pub := leaveOwnSession(t, nodes, 1, "ownf")
	n1 := nodes[0].node
	const n = 20
	var once sync.Once
	var pubErr error
	hook := func(id string) {
		once.Do(func() {
			n1.pauseRouting()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i := range n {
				if err := pub.Publish(ctx, &client.Message{Topic: "ownf/x", QoS: 1, Payload: []byte(strconv.Itoa(i))}); err != nil {
					pubErr = err
					return
				}
			}
		})
	}
	n1.sess.afterReplayRead.Store(&hook)
	t.Cleanup(n1.resumeRouting)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Not acknowledged on n1 (ManualAck): the messages stay in the
	// session as it moves on.
	sub1, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[0].addr}, ClientID: "ownf",
		Version: client.V5, SessionExpiry: 600, ManualAck: true})
	n1.sess.afterReplayRead.Store(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub1.Close() })
	present := sub1.ConnectInfo().SessionPresent
	if pubErr != nil {
		t.Fatal(pubErr)
	}
	if !present {
		t.Fatal("Session Present 0 on n1")
	}
	disconnect(t, sub1)
	sub3, present := dialSession(t, nodes[2].addr, "ownf", client.V5)
	if !present {
		t.Fatal("Session Present 0 on n3")
	}
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	receiveWanted(t, sub3, want, false)
}
