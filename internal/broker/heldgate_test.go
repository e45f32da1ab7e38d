package broker

import (
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// holdDeliveries makes the session of id hold back what routing delivers
// to it, as an import from another node does (restoreSession with hold).
func holdDeliveries(t *testing.T, srv *Server, id string) {
	t.Helper()
	sess := srv.lookup(id)
	if sess == nil {
		t.Fatalf("no session %s", id)
	}
	sess.mu.Lock()
	sess.fence = &subFence{holding: true, until: time.Now().UnixNano() + recentWindow}
	sess.mu.Unlock()
}

// TestHeldDeliveryGatesPuback checks that the PUBACK of a QoS 1 message
// whose delivery to a stored session a fence held back (a session being
// imported from another node) is sent only once that delivery, released,
// is stored: acknowledged before, a crash in between would lose a message
// owed to the session. A session that ends while holding owes nothing:
// the PUBACK follows at once.
func TestHeldDeliveryGatesPuback(t *testing.T) {
	model := newModel()
	srv, addr := testServer(t, Config{Persistence: model})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(persistentConnect("durable-sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t/#", QoS: 1})
	sub.nc.Close()
	waitOffline(t, srv, "durable-sub")

	holdDeliveries(t, srv, "durable-sub")
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))
	pub.send(&packet.Publish{Topic: "t/1", QoS: 1, PacketID: 1, Payload: []byte("m1")})
	pub.send(&packet.Pingreq{})
	if p := pub.recv(); p.Type() != packet.PINGRESP {
		t.Fatalf("got %s while the delivery is held, want PINGRESP only", p.Type())
	}
	if p, err := pub.recvErr(200 * time.Millisecond); err == nil {
		t.Fatalf("got %s while the delivery is held", p.Type())
	}
	model.mu.Lock()
	n := len(model.dlv["durable-sub"])
	model.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d deliveries stored while held, want 0", n)
	}
	srv.ReplayLocal("durable-sub", time.Now().UnixNano(), nil)
	if ack, ok := pub.recv().(*packet.Puback); !ok || ack.PacketID != 1 || ack.ReasonCode != packet.Success {
		t.Fatalf("want PUBACK 1, got %#v", ack)
	}
	model.mu.Lock()
	n = len(model.dlv["durable-sub"])
	model.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d deliveries stored when the PUBACK came, want 1", n)
	}

	// The session ends (a clean start) while a delivery is held.
	holdDeliveries(t, srv, "durable-sub")
	pub.send(&packet.Publish{Topic: "t/2", QoS: 1, PacketID: 2, Payload: []byte("m2")})
	pub.send(&packet.Pingreq{})
	if p := pub.recv(); p.Type() != packet.PINGRESP {
		t.Fatalf("got %s while the delivery is held, want PINGRESP only", p.Type())
	}
	clean := dialRaw(t, addr, packet.V5)
	clean.connect(v5connect("durable-sub"))
	if ack, ok := pub.recv().(*packet.Puback); !ok || ack.PacketID != 2 {
		t.Fatalf("want PUBACK 2 once the session ended, got %#v", ack)
	}
}

// TestHeldDeliveriesPassFullQueue: messages held back for a session
// being imported (a session moving to this node) are owed to it: its
// publishers were acknowledged, or wait for these very deliveries. When
// the hold ends with the session's queue full (a replay filled it),
// they are queued past the limit instead of dropped.
func TestHeldDeliveriesPassFullQueue(t *testing.T) {
	model := newModel()
	srv, addr := testServer(t, Config{Persistence: model, MaxQueued: 2})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(persistentConnect("owed-sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t/#", QoS: 1})
	sub.nc.Close()
	waitOffline(t, srv, "owed-sub")

	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("owed-pub"))
	for i := range uint16(2) {
		pub.send(&packet.Publish{Topic: "t/full", QoS: 1, PacketID: i + 1, Payload: []byte("q")})
		if ack, ok := pub.recv().(*packet.Puback); !ok || ack.PacketID != i+1 {
			t.Fatalf("want PUBACK %d, got %#v", i+1, ack)
		}
	}
	holdDeliveries(t, srv, "owed-sub")
	for i := range uint16(3) {
		pub.send(&packet.Publish{Topic: "t/held", QoS: 1, PacketID: 10 + i, Payload: []byte("h")})
	}
	pub.send(&packet.Pingreq{})
	if p := pub.recv(); p.Type() != packet.PINGRESP {
		t.Fatalf("got %s while the deliveries are held, want PINGRESP only", p.Type())
	}
	dropped := srv.Stats().DroppedQueueFull
	srv.ReplayLocal("owed-sub", time.Now().UnixNano(), nil)
	for i := range uint16(3) {
		if ack, ok := pub.recv().(*packet.Puback); !ok || ack.PacketID != 10+i || ack.ReasonCode != packet.Success {
			t.Fatalf("want PUBACK %d, got %#v", 10+i, ack)
		}
	}
	sess := srv.lookup("owed-sub")
	sess.mu.Lock()
	queued := sess.queue.len()
	sess.mu.Unlock()
	if queued != 5 || srv.Stats().DroppedQueueFull != dropped {
		t.Fatalf("%d queued (want 5: 2 before the hold, 3 released past the limit), %d dropped",
			queued, srv.Stats().DroppedQueueFull-dropped)
	}
}
