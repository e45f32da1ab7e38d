package broker

import (
	"testing"
	"time"
	"unsafe"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// TestSizeClasses: the structures kept per connection and per session fit
// the allocation size classes they were laid out for. A field added to
// one of them that takes it past its class costs the next class's extra
// bytes for every connection or session, idle or not, and the collector
// marks them in every cycle: move a rarely used field out, or reorder to
// save padding, before raising a bound here (docs/performance.md,
// "Scenario e: what main keeps live").
func TestSizeClasses(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the classes below are those of 64-bit platforms")
	}
	for _, c := range []struct {
		name       string
		size, want uintptr
	}{
		{"conn", unsafe.Sizeof(conn{}), 1536},
		{"session", unsafe.Sizeof(session{}), 384},
		{"Client", unsafe.Sizeof(Client{}), 256},
	} {
		t.Logf("%s: %d bytes (size class %d)", c.name, c.size, c.want)
		if c.size > c.want {
			t.Errorf("%s is %d bytes, beyond its size class of %d", c.name, c.size, c.want)
		}
	}
}

// TestWriterScratchReleased: a PUBLISH encoded in the writer's scratch
// packet (here with an outbound topic alias, which no shared encoding
// carries) arrives whole, and a writer that has gone idle holds no
// scratch packet.
func TestWriterScratchReleased(t *testing.T) {
	s, addr := testServer(t, Config{})
	sub := dialRaw(t, addr, packet.V5)
	cp := &packet.Connect{ClientID: "scratch-sub", CleanStart: true, KeepAlive: 30}
	cp.Properties.SetTopicAliasMaximum(4)
	sub.connect(cp)
	sub.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "scratch/#", QoS: 1}}})
	if _, ok := sub.recv().(*packet.Suback); !ok {
		t.Fatal("expected SUBACK")
	}
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(&packet.Connect{ClientID: "scratch-pub", CleanStart: true, KeepAlive: 30})
	for i, want := range []string{"one", "two"} {
		pub.send(&packet.Publish{Topic: "scratch/a", QoS: 1, PacketID: uint16(i + 1), Payload: []byte(want)})
		if _, ok := pub.recv().(*packet.Puback); !ok {
			t.Fatal("expected PUBACK")
		}
		p, ok := sub.recv().(*packet.Publish)
		if !ok {
			t.Fatal("expected PUBLISH")
		}
		alias := p.Properties.TopicAlias
		switch {
		case string(p.Payload) != want:
			t.Fatalf("message %d: payload %q, want %q", i, p.Payload, want)
		case alias != 1:
			t.Fatalf("message %d: topic alias %d, want 1", i, alias)
		case i == 0 && p.Topic != "scratch/a", i == 1 && p.Topic != "":
			t.Fatalf("message %d: topic %q", i, p.Topic)
		}
		sub.send(&packet.Puback{PacketID: p.PacketID})
	}
	sess := s.lookup("scratch-sub")
	sess.mu.Lock()
	c := sess.conn
	sess.mu.Unlock()
	testutil.WaitFor(t, "the subscriber's writer to go idle without its scratch packet", 5*time.Second, func() bool {
		c.outMu.Lock()
		defer c.outMu.Unlock()
		return !c.writing && c.wpub == nil
	})
}
