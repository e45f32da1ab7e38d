package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// TestPacedCatchUpsInARow: a paced catch-up ends its catch-up
// (EndCatchUp) under the cluster's routing lock and calls Deliver after
// it has let that lock go, so a routing pass in between can start the
// session's next paced catch-up on the same fence. The first one's
// Deliver must leave the second one's catch-up standing: it used to end
// it, and routing then delivered the other nodes' messages live while
// the second catch-up delivered the same ones from the stream, older
// ones behind newer ones and each twice (an outside kill series: 427
// acknowledged messages out of order, 843 copies).
func TestPacedCatchUpsInARow(t *testing.T) {
	const limit = 4
	srv, addr := testServer(t, Config{Cluster: &localCluster{}, MaxQueued: limit})
	c := dialRaw(t, addr, packet.V5)
	c.connect(connectV5("sub", true, func(p *packet.Properties) {
		p.ReceiveMaximum = 1
		p.Mark(packet.PropReceiveMaximum)
	}))
	subscribe(t, c, 1, packet.Subscription{Filter: "t/#", QoS: 1})
	seq := 0
	route := func() []PacedSession {
		t.Helper()
		seq++
		m := newMessage(&packet.Publish{Topic: "t/r", QoS: 1, Payload: []byte(fmt.Sprint(seq))}, "elsewhere", time.Now())
		done := make(chan error, 1)
		_, started := srv.DeliverRemoteBatchPaced([]*Message{m}, func(string, bool) bool { return true }, func(err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return started
	}
	var first []PacedSession
	for range 2 * limit {
		if first = route(); len(first) > 0 {
			break
		}
	}
	if len(first) != 1 {
		t.Fatalf("no paced catch-up started after %d messages to a full queue", seq)
	}
	first[0].Replay.EndCatchUp()
	second := route()
	if len(second) != 1 {
		t.Fatalf("after the first catch-up ended, %d catch-ups started for a full queue; want 1", len(second))
	}
	first[0].Replay.Deliver(nil)

	sess := srv.lookup("sub")
	sess.mu.Lock()
	on := sess.fence != nil && sess.fence.catchUp != nil
	sess.mu.Unlock()
	if !on {
		t.Fatal("the first catch-up's Deliver ended the second one")
	}
	if again := route(); len(again) != 0 {
		t.Fatalf("a message during the second catch-up started %d more", len(again))
	}
	if d := srv.Stats().DroppedQueueFull; d != 0 {
		t.Fatalf("%d messages dropped at the full queue; want none (the second catch-up brings them)", d)
	}
	second[0].Replay.EndCatchUp()
	second[0].Replay.Deliver(nil)
}

// TestPacedAwayOncePerAbsence: another node's durable message to a
// session whose client is away and whose queue is full switches it to a
// catch-up (PacedSession.Away) when the Cluster grants one, as for a
// connected session; once that catch-up ended (its client stayed away
// past the Cluster's idle bound), later messages are dropped at the full
// queue, as on one node, with no second catch-up until a client has been
// attached again. The next absence may have one again.
func TestPacedAwayOncePerAbsence(t *testing.T) {
	const limit = 4
	srv, addr := testServer(t, Config{Cluster: &localCluster{}, MaxQueued: limit})
	leaveSubscribed(t, srv, addr)
	seq := 0
	var asked []bool
	route := func() []PacedSession {
		t.Helper()
		seq++
		m := newMessage(&packet.Publish{Topic: "t/r", QoS: 1, Payload: []byte(fmt.Sprint(seq))}, "elsewhere", time.Now())
		done := make(chan error, 1)
		reserve := func(_ string, away bool) bool {
			asked = append(asked, away)
			return true
		}
		_, started := srv.DeliverRemoteBatchPaced([]*Message{m}, reserve, func(err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return started
	}
	awayCatchUp := func() {
		t.Helper()
		drops := srv.Stats().DroppedQueueFull
		var started []PacedSession
		for range 2 * limit {
			if started = route(); len(started) > 0 {
				break
			}
		}
		if len(started) != 1 || !started[0].Away || len(asked) == 0 || !asked[len(asked)-1] {
			t.Fatalf("started %+v after %d messages (asked with away %v); want one catch-up of the session away", started, seq, asked)
		}
		if d := srv.Stats().DroppedQueueFull - drops; d != 0 {
			t.Fatalf("%d dropped before the catch-up", d)
		}
		// It gives up: the session takes what routing delivers again.
		started[0].Replay.EndCatchUp()
		started[0].Replay.Deliver(nil)
	}
	awayCatchUp()
	asked = nil
	for range limit {
		if again := route(); len(again) != 0 {
			t.Fatalf("a second catch-up in the same absence: %+v", again)
		}
	}
	if len(asked) != 0 || srv.Stats().DroppedQueueFull == 0 {
		t.Fatalf("asked %d times, dropped %d; want no second catch-up asked for and the messages dropped", len(asked),
			srv.Stats().DroppedQueueFull)
	}

	// The client comes back and leaves again: a new absence.
	m := dialRaw(t, addr, packet.V5)
	if ack := m.connect(connectV5("mover", false, withExpiry(300))); ack.ReasonCode != packet.Success || !ack.SessionPresent {
		t.Fatalf("CONNACK %+v", ack)
	}
	m.send(&packet.Disconnect{})
	waitOffline(t, srv, "mover")
	asked = nil
	awayCatchUp()
}
