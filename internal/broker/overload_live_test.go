package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// TestOverloadMarksFollowSetLimits: the pushback marks follow SetLimits
// while a publisher floods a subscriber whose window holds one message.
// Each step changes the limits and then acknowledges messages one at a
// time until the subscriber's queue settles: the publisher is held with
// the queue exactly at the new mark (each PUBLISH is larger than the read
// buffer, so a publisher let go routes one message before it waits
// again). A raised mark lets the held publisher go at once (nothing is
// acknowledged meanwhile); a lowered one holds it until the queue is below
// it. MaxQueued bounds the message mark; the byte mark counts topic and
// payload. With the mark turned off the publisher runs free, and in the
// end every message arrives, in order, none dropped.
func TestOverloadMarksFollowSetLimits(t *testing.T) {
	const n = 400
	const msgBytes = bigPacket + 1 // payload and the topic "t"
	srv, addr := testServer(t, Config{Clock: newFakeClock(), PushbackMessages: 10, MaxQueued: 100000})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(connectV5("sub", true, func(p *packet.Properties) { p.SetReceiveMaximum(1) }))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 1})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))
	defer flood(t, pub, "t", "p", 1, n, bigPacket)()

	next := 0 // the sequence number the subscriber receives next
	ack := func() {
		t.Helper()
		if _, seq := seqOf(t, recvAck(t, sub)); seq != next {
			t.Fatalf("message %d arrived as number %d", seq, next)
		}
		next++
	}
	// settle acknowledges messages while the queue is over want, and
	// waits until the publisher is held with want queued.
	settle := func(want int) {
		t.Helper()
		testutil.CheckFor(t, 10*time.Second, func() error {
			q, _, _ := backlog(srv, "sub")
			if q > want {
				ack()
				return fmt.Errorf("queue %d, over %d", q, want)
			}
			sess := srv.lookup("sub")
			sess.mu.Lock()
			waiting := len(sess.gate.waiters)
			sess.mu.Unlock()
			if q != want || waiting != 1 || srv.Stats().PublishersHeld != 1 {
				return fmt.Errorf("queue %d, %d in line", q, waiting)
			}
			return nil
		})
	}
	set := func(change func(l *Limits)) {
		t.Helper()
		l := srv.Limits()
		change(&l)
		if _, err := srv.SetLimits(l); err != nil {
			t.Fatal(err)
		}
	}

	settle(10)
	acked := next
	set(func(l *Limits) { l.PushbackMessages = 40 }) // raised: let go at once
	settle(40)
	if next != acked {
		t.Fatalf("%d acknowledged before the raised mark let the publisher go", next-acked)
	}
	set(func(l *Limits) { l.PushbackMessages = 15 }) // lowered: held until under it
	settle(15)
	set(func(l *Limits) { l.PushbackMessages = 40; l.MaxQueued = 25 }) // MaxQueued bounds the mark
	settle(25)
	set(func(l *Limits) { l.PushbackMessages = 1000; l.PushbackBytes = 8 * msgBytes; l.MaxQueued = 100000 })
	settle(8)
	set(func(l *Limits) { l.PushbackBytes = 20 * msgBytes })
	settle(20)

	set(func(l *Limits) { l.PushbackMessages = -1 }) // off: the publisher runs free
	testutil.CheckFor(t, 10*time.Second, func() error {
		if st := srv.Stats(); st.MessagesReceived != n || st.PublishersHeld != 0 {
			return fmt.Errorf("%d routed, %d held", st.MessagesReceived, st.PublishersHeld)
		}
		return nil
	})
	for next < n {
		ack()
	}
	expectNone(t, sub)
	if st := srv.Stats(); st.DroppedQueueFull != 0 || st.SlowSubscribers != 0 {
		t.Fatalf("dropped %d, slow %d", st.DroppedQueueFull, st.SlowSubscribers)
	}
}

// TestSetLimitsPushbackChecked: SetLimits checks the overload settings
// and applies their defaults as New does.
func TestSetLimitsPushbackChecked(t *testing.T) {
	srv, _ := testServer(t, Config{})
	l := srv.Limits()
	if l.PushbackMessages != DefaultPushbackMessages || l.PushbackBytes != DefaultPushbackBytes ||
		l.PushbackWait != DefaultPushbackWait || l.QueueFullPolicy != QueueDrop {
		t.Fatalf("defaults %+v", l)
	}
	bad := l
	bad.PushbackWait = -time.Second
	bad.QueueFullPolicy = QueueBlock + 1
	if _, err := srv.SetLimits(bad); err == nil {
		t.Fatal("a negative PushbackWait and an unknown policy were accepted")
	} else if srv.Limits() != l {
		t.Fatalf("limits changed by a refused SetLimits: %+v", srv.Limits())
	}
	got, err := srv.SetLimits(Limits{PushbackMessages: -1, QueueFullPolicy: QueueBlock})
	if err != nil {
		t.Fatal(err)
	}
	if got.PushbackMessages != -1 || got.PushbackBytes != DefaultPushbackBytes || got.QueueFullPolicy != QueueBlock {
		t.Fatalf("SetLimits returned %+v", got)
	}
	if m := srv.limits().markMsgs; m != 0 {
		t.Fatalf("message mark %d with holding back off", m)
	}
}
