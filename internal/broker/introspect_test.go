package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// TestIntrospection: the operator views list a connected client, its
// session, subscriptions and retained messages; DeleteRetained clears a
// retained message and its accounting; Kick sends DISCONNECT 0x98.
func TestIntrospection(t *testing.T) {
	s, addr := testServer(t, Config{})
	c := dialRaw(t, addr, packet.V5)
	if ack := c.connect(&packet.Connect{ClientID: "dev-1", KeepAlive: 30, CleanStart: true}); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", byte(ack.ReasonCode))
	}
	c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "a/+", QoS: 1}, {Filter: "$share/g/b/#"}}})
	if _, ok := c.recv().(*packet.Suback); !ok {
		t.Fatal("expected SUBACK")
	}
	for i := range 3 {
		c.send(&packet.Publish{Topic: fmt.Sprintf("r/%d", i), Payload: []byte("v"), Retain: true, QoS: 1, PacketID: uint16(10 + i)})
		if _, ok := c.recv().(*packet.Puback); !ok {
			t.Fatal("expected PUBACK")
		}
	}

	cl := s.Clients()
	if len(cl) != 1 || cl[0].Client.ClientID != "dev-1" || cl[0].ProtocolLevel != 5 || cl[0].KeepAlive != 30*time.Second ||
		cl[0].Client.Listener != "test" || cl[0].ConnectedAt.IsZero() {
		t.Fatalf("Clients: %+v", cl)
	}
	if ss := s.Sessions(); len(ss) != 1 || !ss[0].Online || ss[0].Subscriptions != 2 {
		t.Fatalf("Sessions: %+v", ss)
	}
	if subs := s.Subscriptions(); len(subs) != 2 || subs[0].ClientID != "dev-1" {
		t.Fatalf("Subscriptions: %+v", subs)
	}
	msgs, more := s.RetainedMatch("r/#", 2)
	if len(msgs) != 2 || !more || msgs[0].Topic > msgs[1].Topic || msgs[0].From != "dev-1" || string(msgs[0].Preview) != "v" {
		t.Fatalf("RetainedMatch: %+v %v", msgs, more)
	}
	before := s.Stats().RetainedBytes
	if !s.DeleteRetained("r/1") || s.DeleteRetained("r/1") || s.DeleteRetained("r/+") {
		t.Fatal("DeleteRetained: want true once, then false, and false for a filter")
	}
	if st := s.Stats(); st.Retained != 2 || st.RetainedBytes >= before {
		t.Fatalf("after delete: %d retained, %d bytes (was %d)", st.Retained, st.RetainedBytes, before)
	}

	if s.Kick("nobody", "x") {
		t.Fatal("Kick of an unknown client reported true")
	}
	if !s.Kick("dev-1", "maintenance") {
		t.Fatal("Kick reported false")
	}
	if d := c.expectClosed(5 * time.Second); d == nil || d.ReasonCode != packet.AdministrativeAction {
		t.Fatalf("DISCONNECT %+v; want 0x98", d)
	}
	if len(s.Clients()) != 0 {
		t.Fatal("kicked client still listed")
	}
}
