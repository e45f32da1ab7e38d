package broker

// Conformance tests for the server side of MQTT 5.0, named after the
// normative statements they check ([MQTT-x.x.x-y], MQTT 5.0 numbering
// unless a name says v3.1.1). docs/conformance.md maps clauses to tests.
// They use the raw client so that every byte the server sends is checked.

import (
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// quiet is how long a test waits to be sure nothing more arrives.
const quiet = 250 * time.Millisecond

// denyAuthorizer refuses every action on topics under "deny/".
type denyAuthorizer struct{}

func (denyAuthorizer) Authorize(r *AuthzRequest) Decision {
	if strings.HasPrefix(r.Topic, "deny/") {
		return Decision{Reason: "test policy denies deny/"}
	}
	return Decision{Allow: true}
}

// connectV5 builds a v5 CONNECT; set adjusts its properties.
func connectV5(id string, clean bool, set func(p *packet.Properties)) *packet.Connect {
	cp := &packet.Connect{ClientID: id, CleanStart: clean, KeepAlive: 30}
	if set != nil {
		set(&cp.Properties)
	}
	return cp
}

func withExpiry(secs uint32) func(p *packet.Properties) {
	return func(p *packet.Properties) { p.SetSessionExpiry(secs) }
}

// expectNone fails if any packet arrives within quiet.
func expectNone(t *testing.T, c *rawClient) {
	t.Helper()
	if p, err := c.recvErr(quiet); err == nil {
		t.Fatalf("unexpected %s: %+v", p.Type(), p)
	}
}

// publishAcked sends a QoS 1 PUBLISH and waits for its PUBACK.
func publishAcked(t *testing.T, c *rawClient, pid uint16, p *packet.Publish) *packet.Puback {
	t.Helper()
	p.QoS, p.PacketID = 1, pid
	c.send(p)
	ack, ok := c.recv().(*packet.Puback)
	if !ok || ack.PacketID != pid {
		t.Fatalf("expected PUBACK %d, got %#v", pid, ack)
	}
	return ack
}

// reconnect dials a new connection for a client whose previous one may
// still be closing, and returns it with the CONNACK.
func reconnect(t *testing.T, addr string, v packet.Version, cp *packet.Connect) (*rawClient, *packet.Connack) {
	t.Helper()
	c := dialRaw(t, addr, v)
	return c, c.connect(cp)
}

// closeAndWait sends DISCONNECT (code) and waits until the server closed
// the connection, so the session has been detached.
func closeAndWait(t *testing.T, c *rawClient, d *packet.Disconnect) {
	t.Helper()
	c.send(d)
	c.expectClosed(5 * time.Second)
}

// expectDisconnect waits for the server to close the connection with a
// DISCONNECT carrying code.
func expectDisconnect(t *testing.T, c *rawClient, code packet.ReasonCode) *packet.Disconnect {
	t.Helper()
	d := c.expectClosed(5 * time.Second)
	if d == nil || d.ReasonCode != code {
		t.Fatalf("got DISCONNECT %+v, want reason %v", d, code)
	}
	return d
}

func TestConformanceConnectV5(t *testing.T) {
	_, addr := testServer(t, Config{MaxKeepAlive: 60})
	// Raw CONNECT packets: protocol "MQTT" level 5, client ID "x".
	rawConnect := func(flags byte, payload ...byte) []byte {
		body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 5, flags, 0, 30, 0, 0, 1, 'x'}, payload...)
		return append([]byte{0x10, byte(len(body))}, body...)
	}
	refusals := []struct {
		name string
		raw  []byte
		code packet.ReasonCode
	}{
		{"MQTT-3.1.2-3 reserved flag set", rawConnect(0x03), packet.MalformedPacket},
		{"MQTT-3.1.2-11 will QoS without will flag", rawConnect(0x0A), packet.MalformedPacket},
		{"MQTT-3.1.2-12 will QoS 3", rawConnect(0x1E, 0, 0, 1, 'w', 0, 0), packet.MalformedPacket},
		{"MQTT-3.1.2-13 will retain without will flag", rawConnect(0x22), packet.MalformedPacket},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr, packet.V5)
			c.write(tc.raw)
			p, err := c.recvErr(5 * time.Second)
			if err != nil {
				t.Fatalf("no CONNACK: %v", err)
			}
			ack, ok := p.(*packet.Connack)
			if !ok || ack.ReasonCode != tc.code || ack.SessionPresent {
				t.Fatalf("got %#v, want CONNACK %v", p, tc.code)
			}
			// [MQTT-3.2.2-7]: the server closes after an error CONNACK.
			c.expectClosed(5 * time.Second)
		})
	}
	t.Run("MQTT-4.12.0-1 unsupported Authentication Method refused with 0x8C", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		ack := c.connect(connectV5("am", true, func(p *packet.Properties) { p.SetAuthMethod("SCRAM-SHA-256") }))
		if ack.ReasonCode != packet.BadAuthenticationMethod || ack.SessionPresent {
			t.Fatalf("CONNACK %+v", ack)
		}
		c.expectClosed(5 * time.Second)
	})
	t.Run("MQTT-3.1.0-1 first packet not CONNECT closes without CONNACK", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "a"}}})
		if d := c.expectClosed(5 * time.Second); d != nil {
			t.Fatalf("DISCONNECT before CONNACK [MQTT-3.14.0-1]: %+v", d)
		}
	})
	t.Run("MQTT-3.15 AUTH without Authentication Method is a protocol error", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("auth-noamethod"))
		c.send(&packet.Auth{ReasonCode: packet.ReAuthenticate})
		expectDisconnect(t, c, packet.ProtocolError)
	})
	t.Run("MQTT-3.2.2-16 assigned client identifier for an empty one even without Clean Start", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		ack := c.connect(connectV5("", false, nil))
		if ack.ReasonCode != 0 || ack.SessionPresent || ack.Properties.AssignedClientID == "" {
			t.Fatalf("CONNACK %+v", ack)
		}
	})
	t.Run("MQTT-3.2.2-21 Server Keep Alive when the client asks for 0 or more than max_keepalive", func(t *testing.T) {
		for _, ka := range []uint16{0, 61, 65535} {
			c := dialRaw(t, addr, packet.V5)
			cp := connectV5("ka", true, nil)
			cp.KeepAlive = ka
			ack := c.connect(cp)
			if !ack.Properties.Has(packet.PropServerKeepAlive) || ack.Properties.ServerKeepAlive != 60 {
				t.Fatalf("keep alive %d: CONNACK %+v", ka, ack.Properties)
			}
		}
		c := dialRaw(t, addr, packet.V5)
		cp := connectV5("ka", true, nil)
		cp.KeepAlive = 60
		if ack := c.connect(cp); ack.Properties.Has(packet.PropServerKeepAlive) {
			t.Fatal("Server Keep Alive sent although the client's value is accepted")
		}
	})
	t.Run("MQTT-3.1.2-28 Response Information only on request", func(t *testing.T) {
		// Moat never returns Response Information (optional); with
		// Request Response Information 0 it must not [MQTT-3.1.2-28].
		c := dialRaw(t, addr, packet.V5)
		ack := c.connect(connectV5("rri", true, func(p *packet.Properties) { p.SetRequestResponseInfo(1) }))
		if ack.ReasonCode != 0 || ack.Properties.Has(packet.PropResponseInfo) {
			t.Fatalf("CONNACK %+v", ack)
		}
	})
}

func TestConformanceConnackLimitsV5(t *testing.T) {
	_, addr := testServer(t, Config{AllowAnonymous: false, Authenticator: noAuthenticator})
	t.Run("MQTT-3.2.2-19 no Reason String beyond the client's Maximum Packet Size", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		ack := c.connect(connectV5("small", true, func(p *packet.Properties) { p.SetMaximumPacketSize(16) }))
		if ack.ReasonCode != packet.NotAuthorized || ack.Properties.Has(packet.PropReasonString) {
			t.Fatalf("CONNACK %+v", ack)
		}
	})
	t.Run("CONNACK carries a Reason String when it fits", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		ack := c.connect(connectV5("large", true, nil))
		if ack.ReasonCode != packet.NotAuthorized || ack.Properties.ReasonString == "" {
			t.Fatalf("CONNACK %+v", ack)
		}
	})
}

func TestConformanceSessionV5(t *testing.T) {
	clock := newFakeClock()
	srv, addr := testServer(t, Config{Clock: clock})
	// subscribeAndLeave creates a session with one subscription and
	// closes its connection with DISCONNECT d.
	subscribeAndLeave := func(t *testing.T, cp *packet.Connect, d *packet.Disconnect) {
		t.Helper()
		c := dialRaw(t, addr, packet.V5)
		if ack := c.connect(cp); ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %+v", ack)
		}
		subscribe(t, c, 1, packet.Subscription{Filter: "sess/" + cp.ClientID, QoS: 1})
		closeAndWait(t, c, d)
	}
	t.Run("MQTT-3.1.2-23 no Session Expiry Interval: the session ends at disconnection", func(t *testing.T) {
		subscribeAndLeave(t, connectV5("s-noexp", false, nil), &packet.Disconnect{})
		_, ack := reconnect(t, addr, packet.V5, connectV5("s-noexp", false, nil))
		if ack.SessionPresent {
			t.Fatal("session present after a session with expiry 0 ended")
		}
	})
	t.Run("MQTT-3.2.2-3 session present when resumed", func(t *testing.T) {
		subscribeAndLeave(t, connectV5("s-exp", true, withExpiry(60)), &packet.Disconnect{})
		c, ack := reconnect(t, addr, packet.V5, connectV5("s-exp", false, withExpiry(60)))
		if !ack.SessionPresent {
			t.Fatal("session present 0 for a stored session")
		}
		// The subscription survived.
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("s-exp-pub"))
		pub.send(&packet.Publish{Topic: "sess/s-exp", Payload: []byte("x")})
		if p := recvPublish(t, c); p.Topic != "sess/s-exp" {
			t.Fatalf("got %q", p.Topic)
		}
	})
	t.Run("MQTT-3.2.2-2 Clean Start discards the session", func(t *testing.T) {
		subscribeAndLeave(t, connectV5("s-clean", true, withExpiry(60)), &packet.Disconnect{})
		c, ack := reconnect(t, addr, packet.V5, connectV5("s-clean", true, withExpiry(60)))
		if ack.SessionPresent {
			t.Fatal("session present with Clean Start 1")
		}
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("s-clean-pub"))
		pub.send(&packet.Publish{Topic: "sess/s-clean", Payload: []byte("x")})
		expectNone(t, c)
	})
	t.Run("MQTT-3.14.2-2 DISCONNECT may not raise a zero Session Expiry Interval", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(connectV5("s-raise", true, nil))
		d := &packet.Disconnect{}
		d.Properties.SetSessionExpiry(60)
		c.send(d)
		expectDisconnect(t, c, packet.ProtocolError)
		_, ack := reconnect(t, addr, packet.V5, connectV5("s-raise", false, nil))
		if ack.SessionPresent {
			t.Fatal("session kept after an invalid DISCONNECT")
		}
	})
	t.Run("MQTT-3.14.2 DISCONNECT Session Expiry 0 ends the session", func(t *testing.T) {
		d := &packet.Disconnect{}
		d.Properties.SetSessionExpiry(0)
		subscribeAndLeave(t, connectV5("s-end", true, withExpiry(60)), d)
		_, ack := reconnect(t, addr, packet.V5, connectV5("s-end", false, withExpiry(60)))
		if ack.SessionPresent {
			t.Fatal("session present after DISCONNECT with Session Expiry 0")
		}
	})
	t.Run("MQTT-3.14.2 DISCONNECT raises a non-zero Session Expiry Interval", func(t *testing.T) {
		d := &packet.Disconnect{}
		d.Properties.SetSessionExpiry(600)
		subscribeAndLeave(t, connectV5("s-longer", true, withExpiry(1)), d)
		// closeAndWait returned after the session was detached (see
		// TestSessionEndsBeforeClose), so its expiry timer is set.
		clock.advance(1500 * time.Millisecond) // past the original interval
		_, ack := reconnect(t, addr, packet.V5, connectV5("s-longer", false, withExpiry(1)))
		if !ack.SessionPresent {
			t.Fatal("session expired with the CONNECT interval despite DISCONNECT's")
		}
	})
	t.Run("MQTT-3.1.2-23 session expires after its interval", func(t *testing.T) {
		subscribeAndLeave(t, connectV5("s-short", true, withExpiry(1)), &packet.Disconnect{})
		if srv.lookup("s-short") == nil {
			t.Fatal("session ended at once")
		}
		clock.advance(999 * time.Millisecond)
		if srv.lookup("s-short") == nil {
			t.Fatal("session ended before its interval")
		}
		clock.advance(time.Millisecond) // the timer runs within advance
		if srv.lookup("s-short") != nil {
			t.Fatal("session still present after its interval")
		}
		if _, ack := reconnect(t, addr, packet.V5, connectV5("s-short", false, withExpiry(1))); ack.SessionPresent {
			t.Fatal("session present after expiry")
		}
	})
}

type errString string

func (e errString) Error() string { return string(e) }

func TestConformanceWillV5(t *testing.T) {
	clock := newFakeClock()
	srv, addr := testServer(t, Config{Clock: clock})
	watcher := dialRaw(t, addr, packet.V5)
	watcher.connect(v5connect("will-watch"))
	subscribe(t, watcher, 1, packet.Subscription{Filter: "will/#"})
	will := func(topic string, delay uint32) *packet.Will {
		w := &packet.Will{Topic: topic, Payload: []byte("gone")}
		if delay > 0 {
			w.Properties.SetWillDelay(delay)
		}
		return w
	}

	t.Run("MQTT-3.1.4-3 takeover closes the old connection and publishes its will", func(t *testing.T) {
		cp := connectV5("w-take", true, withExpiry(60))
		cp.Will = will("will/take", 0)
		old := dialRaw(t, addr, packet.V5)
		old.connect(cp)
		_, ack := reconnect(t, addr, packet.V5, connectV5("w-take", false, withExpiry(60)))
		if !ack.SessionPresent {
			t.Fatal("session not resumed on takeover")
		}
		expectDisconnect(t, old, packet.SessionTakenOver)
		if p := recvPublish(t, watcher); p.Topic != "will/take" {
			t.Fatalf("got %q", p.Topic)
		}
	})
	t.Run("MQTT-3.1.3-9 takeover within the will delay cancels the will", func(t *testing.T) {
		cp := connectV5("w-take-delay", true, withExpiry(60))
		cp.Will = will("will/take-delay", 60)
		old := dialRaw(t, addr, packet.V5)
		old.connect(cp)
		reconnect(t, addr, packet.V5, connectV5("w-take-delay", false, withExpiry(60)))
		expectDisconnect(t, old, packet.SessionTakenOver)
		expectNone(t, watcher)
	})
	t.Run("MQTT-3.1.2-8 takeover with Clean Start ends the session and publishes a delayed will at once", func(t *testing.T) {
		cp := connectV5("w-take-clean", true, withExpiry(60))
		cp.Will = will("will/take-clean", 60)
		old := dialRaw(t, addr, packet.V5)
		old.connect(cp)
		reconnect(t, addr, packet.V5, connectV5("w-take-clean", true, withExpiry(60)))
		expectDisconnect(t, old, packet.SessionTakenOver)
		if p := recvPublish(t, watcher); p.Topic != "will/take-clean" {
			t.Fatalf("got %q", p.Topic)
		}
	})
	t.Run("MQTT-3.1.3-9 will delay longer than session expiry: will sent when the session ends", func(t *testing.T) {
		cp := connectV5("w-expiry", true, withExpiry(1))
		cp.Will = will("will/expiry", 3600)
		c := dialRaw(t, addr, packet.V5)
		c.connect(cp)
		c.nc.Close()
		waitOffline(t, srv, "w-expiry")
		clock.advance(time.Second) // the session's expiry, not the will delay
		if p := recvPublish(t, watcher); p.Topic != "will/expiry" {
			t.Fatalf("got %q", p.Topic)
		}
	})
	t.Run("MQTT-3.1.2-15 will retain: the will becomes the retained message", func(t *testing.T) {
		cp := connectV5("w-retain", true, nil)
		cp.Will = will("will/retained", 0)
		cp.Will.Retain = true
		c := dialRaw(t, addr, packet.V5)
		c.connect(cp)
		c.nc.Close()
		if p := recvPublish(t, watcher); p.Topic != "will/retained" || p.Retain {
			t.Fatalf("live will: %+v", p)
		}
		late := dialRaw(t, addr, packet.V5)
		late.connect(v5connect("w-retain-late"))
		subscribe(t, late, 1, packet.Subscription{Filter: "will/retained"})
		if p := recvPublish(t, late); !p.Retain || string(p.Payload) != "gone" {
			t.Fatalf("retained will: %+v", p)
		}
	})
	t.Run("MQTT-3.1.2-14 will without retain is not retained", func(t *testing.T) {
		cp := connectV5("w-noretain", true, nil)
		cp.Will = will("will/not-retained", 0)
		c := dialRaw(t, addr, packet.V5)
		c.connect(cp)
		c.nc.Close()
		recvPublish(t, watcher)
		late := dialRaw(t, addr, packet.V5)
		late.connect(v5connect("w-noretain-late"))
		subscribe(t, late, 1, packet.Subscription{Filter: "will/not-retained"})
		expectNone(t, late)
	})
	t.Run("MQTT-3.1.3 will Message Expiry runs from publication, not from disconnection", func(t *testing.T) {
		cp := connectV5("w-msgexp", true, withExpiry(600))
		cp.Will = will("will/msg-expiry", 20)
		cp.Will.Properties.SetMessageExpiry(30)
		c := dialRaw(t, addr, packet.V5)
		c.connect(cp)
		c.nc.Close()
		waitOffline(t, srv, "w-msgexp")
		clock.advance(20 * time.Second) // the will is published 20 s after the close
		p := recvPublish(t, watcher)
		if p.Topic != "will/msg-expiry" || p.Properties.MessageExpiry != 30 {
			t.Fatalf("got %q with Message Expiry %d, want 30", p.Topic, p.Properties.MessageExpiry)
		}
	})
	t.Run("MQTT-3.14.4-3 DISCONNECT 0x00 discards the will even with a delay", func(t *testing.T) {
		cp := connectV5("w-normal", true, withExpiry(1))
		cp.Will = will("will/normal", 1)
		c := dialRaw(t, addr, packet.V5)
		c.connect(cp)
		closeAndWait(t, c, &packet.Disconnect{})
		clock.advance(2 * time.Second) // past the will delay and the session
		expectNone(t, watcher)
	})
}

func TestConformanceQoSV5(t *testing.T) {
	_, addr := testServer(t, Config{Authorizer: denyAuthorizer{}})
	t.Run("MQTT-4.3.3-11 PUBREL for an unknown identifier gets PUBCOMP 0x92", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("q-rel"))
		c.send(&packet.Pubrel{PacketID: 77})
		if pc, ok := c.recv().(*packet.Pubcomp); !ok || pc.PacketID != 77 || pc.ReasonCode != packet.PacketIDNotFound {
			t.Fatalf("got %#v", pc)
		}
	})
	t.Run("MQTT-4.3.3-4 PUBREC for an unknown identifier gets PUBREL 0x92", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("q-rec"))
		c.send(&packet.Pubrec{PacketID: 78})
		if pr, ok := c.recv().(*packet.Pubrel); !ok || pr.PacketID != 78 || pr.ReasonCode != packet.PacketIDNotFound {
			t.Fatalf("got %#v", pr)
		}
	})
	t.Run("unknown PUBACK and PUBCOMP are ignored", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("q-unknown-ack"))
		c.send(&packet.Puback{PacketID: 5})
		c.send(&packet.Pubcomp{PacketID: 6})
		c.send(&packet.Pingreq{})
		if _, ok := c.recv().(*packet.Pingresp); !ok {
			t.Fatal("connection disturbed by unknown acknowledgements")
		}
	})
	t.Run("MQTT-4.3.3-12 after PUBCOMP the identifier starts a new message", func(t *testing.T) {
		sub := dialRaw(t, addr, packet.V5)
		sub.connect(v5connect("q-new-sub"))
		subscribe(t, sub, 1, packet.Subscription{Filter: "q/new"})
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("q-new-pub"))
		for i := range 2 {
			pub.send(&packet.Publish{Topic: "q/new", QoS: 2, PacketID: 9, Payload: []byte{byte(i)}})
			pub.recv() // PUBREC
			pub.send(&packet.Pubrel{PacketID: 9})
			if pc, ok := pub.recv().(*packet.Pubcomp); !ok || pc.ReasonCode != 0 {
				t.Fatalf("PUBCOMP %#v", pc)
			}
			if p := recvPublish(t, sub); p.Payload[0] != byte(i) {
				t.Fatalf("message %d: %+v", i, p)
			}
		}
	})
	t.Run("MQTT-4.3.3-9 after an error PUBREC the identifier starts a new message", func(t *testing.T) {
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("q-err"))
		pub.send(&packet.Publish{Topic: "deny/x", QoS: 2, PacketID: 3})
		if rec, ok := pub.recv().(*packet.Pubrec); !ok || rec.ReasonCode != packet.NotAuthorized {
			t.Fatalf("got %#v", rec)
		}
		// No PUBREL is expected after an error; the identifier is free.
		pub.send(&packet.Publish{Topic: "q/after-error", QoS: 2, PacketID: 3})
		if rec, ok := pub.recv().(*packet.Pubrec); !ok || rec.ReasonCode.IsError() {
			t.Fatalf("got %#v", rec)
		}
	})
	t.Run("MQTT-3.3.1-3 DUP of an incoming PUBLISH is not passed on", func(t *testing.T) {
		sub := dialRaw(t, addr, packet.V5)
		sub.connect(v5connect("q-dup-sub"))
		subscribe(t, sub, 1, packet.Subscription{Filter: "q/dup", QoS: 1})
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("q-dup-pub"))
		pub.send(&packet.Publish{Topic: "q/dup", QoS: 1, PacketID: 4, Dup: true, Payload: []byte("d")})
		pub.recv()
		if p := recvPublish(t, sub); p.Dup {
			t.Fatal("DUP copied from the publisher")
		}
	})
	t.Run("MQTT-4.6.0-2 PUBACKs are sent in the order the PUBLISHes arrived", func(t *testing.T) {
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("q-order-ack"))
		for i := uint16(1); i <= 20; i++ {
			pub.send(&packet.Publish{Topic: "q/order-ack", QoS: 1, PacketID: 100 + i})
		}
		for i := uint16(1); i <= 20; i++ {
			if a, ok := pub.recv().(*packet.Puback); !ok || a.PacketID != 100+i {
				t.Fatalf("acknowledgement %d: %#v", i, a)
			}
		}
	})
	t.Run("MQTT-4.6.0-6 messages keep their order per topic and QoS", func(t *testing.T) {
		sub := dialRaw(t, addr, packet.V5)
		sub.connect(v5connect("q-order-sub"))
		subscribe(t, sub, 1, packet.Subscription{Filter: "q/order", QoS: 2})
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("q-order-pub"))
		const n = 50
		for i := range n {
			pub.send(&packet.Publish{Topic: "q/order", QoS: 1, PacketID: uint16(i + 1), Payload: []byte{byte(i)}})
		}
		for i := range n {
			p := recvPublish(t, sub)
			if p.Payload[0] != byte(i) {
				t.Fatalf("message %d arrived as %d", p.Payload[0], i)
			}
			sub.send(&packet.Puback{PacketID: p.PacketID})
		}
	})
	t.Run("MQTT-4.4.0-1 reconnect resends PUBLISH with DUP and PUBREL with the original identifiers", func(t *testing.T) {
		sub := dialRaw(t, addr, packet.V5)
		sub.connect(connectV5("q-resend", true, withExpiry(60)))
		subscribe(t, sub, 1, packet.Subscription{Filter: "q/resend/+", QoS: 2})
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("q-resend-pub"))
		publishAcked(t, pub, 1, &packet.Publish{Topic: "q/resend/1", Payload: []byte("1")})
		pub.send(&packet.Publish{Topic: "q/resend/2", QoS: 2, PacketID: 2, Payload: []byte("2")})
		pub.recv()
		pub.send(&packet.Pubrel{PacketID: 2})
		pub.recv()
		p1, p2 := recvPublish(t, sub), recvPublish(t, sub)
		sub.send(&packet.Pubrec{PacketID: p2.PacketID})
		if rel, ok := sub.recv().(*packet.Pubrel); !ok || rel.PacketID != p2.PacketID {
			t.Fatalf("got %#v", rel)
		}
		sub.nc.Close()

		sub2, ack := reconnect(t, addr, packet.V5, connectV5("q-resend", false, withExpiry(60)))
		if !ack.SessionPresent {
			t.Fatal("no session")
		}
		re := recvPublish(t, sub2)
		if !re.Dup || re.PacketID != p1.PacketID || re.QoS != 1 || string(re.Payload) != "1" {
			t.Fatalf("resent PUBLISH %+v", re)
		}
		if rel, ok := sub2.recv().(*packet.Pubrel); !ok || rel.PacketID != p2.PacketID {
			t.Fatalf("resent PUBREL %#v", rel)
		}
		sub2.send(&packet.Puback{PacketID: re.PacketID})
		sub2.send(&packet.Pubcomp{PacketID: p2.PacketID})
		expectNone(t, sub2)
	})
	t.Run("MQTT-4.4.0-2 a message refused with an error PUBACK is not resent", func(t *testing.T) {
		sub := dialRaw(t, addr, packet.V5)
		sub.connect(connectV5("q-refuse", true, withExpiry(60)))
		subscribe(t, sub, 1, packet.Subscription{Filter: "q/refuse", QoS: 1})
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("q-refuse-pub"))
		publishAcked(t, pub, 1, &packet.Publish{Topic: "q/refuse"})
		p := recvPublish(t, sub)
		sub.send(&packet.Puback{PacketID: p.PacketID, ReasonCode: packet.UnspecifiedError})
		closeAndWait(t, sub, &packet.Disconnect{})
		sub2, _ := reconnect(t, addr, packet.V5, connectV5("q-refuse", false, withExpiry(60)))
		expectNone(t, sub2)
	})
	t.Run("MQTT-3.3.4-9 resends on reconnect respect a smaller Receive Maximum", func(t *testing.T) {
		sub := dialRaw(t, addr, packet.V5)
		sub.connect(connectV5("q-rm", true, withExpiry(60)))
		subscribe(t, sub, 1, packet.Subscription{Filter: "q/rm", QoS: 1})
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("q-rm-pub"))
		for i := range 4 {
			publishAcked(t, pub, uint16(i+1), &packet.Publish{Topic: "q/rm", Payload: []byte{byte(i)}})
		}
		for range 4 {
			recvPublish(t, sub) // in flight, never acknowledged
		}
		sub.nc.Close()

		sub2, _ := reconnect(t, addr, packet.V5, connectV5("q-rm", false, func(p *packet.Properties) {
			p.SetSessionExpiry(60)
			p.SetReceiveMaximum(2)
		}))
		a, b := recvPublish(t, sub2), recvPublish(t, sub2)
		expectNone(t, sub2)
		sub2.send(&packet.Puback{PacketID: a.PacketID})
		c := recvPublish(t, sub2)
		expectNone(t, sub2)
		sub2.send(&packet.Puback{PacketID: b.PacketID})
		sub2.send(&packet.Puback{PacketID: c.PacketID})
		d := recvPublish(t, sub2)
		for i, p := range []*packet.Publish{a, b, c, d} {
			if !p.Dup || p.Payload[0] != byte(i) {
				t.Fatalf("resend %d: %+v", i, p)
			}
		}
	})
	t.Run("MQTT-3.1.2-29 Request Problem Information 0: no Reason String on PUBACK, PUBREC, SUBACK", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(connectV5("q-rpi", true, func(p *packet.Properties) { p.SetRequestProblemInfo(0) }))
		c.send(&packet.Publish{Topic: "deny/1", QoS: 1, PacketID: 1})
		if a, ok := c.recv().(*packet.Puback); !ok || a.ReasonCode != packet.NotAuthorized || a.Properties.Present != 0 || len(a.Properties.User) > 0 {
			t.Fatalf("PUBACK %#v", a)
		}
		c.send(&packet.Publish{Topic: "deny/2", QoS: 2, PacketID: 2})
		if a, ok := c.recv().(*packet.Pubrec); !ok || a.ReasonCode != packet.NotAuthorized || a.Properties.Present != 0 || len(a.Properties.User) > 0 {
			t.Fatalf("PUBREC %#v", a)
		}
		ack := subscribe(t, c, 3, packet.Subscription{Filter: "deny/#"})
		if ack.ReasonCodes[0] != packet.NotAuthorized || ack.Properties.Present != 0 || len(ack.Properties.User) > 0 {
			t.Fatalf("SUBACK %#v", ack)
		}
	})
	t.Run("MQTT-3.3.4-6 Subscription Identifier from a client is a protocol error", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("q-subid"))
		p := &packet.Publish{Topic: "q/x"}
		p.Properties.AddSubscriptionID(5)
		c.send(p)
		expectDisconnect(t, c, packet.ProtocolError)
	})
	t.Run("PUBACK 0x10 only when there is no matching subscriber", func(t *testing.T) {
		off := dialRaw(t, addr, packet.V5)
		off.connect(connectV5("q-nomatch-off", true, withExpiry(60)))
		subscribe(t, off, 1, packet.Subscription{Filter: "q/offline-qos0"})
		closeAndWait(t, off, &packet.Disconnect{})
		pub := dialRaw(t, addr, packet.V5)
		pub.connect(v5connect("q-nomatch"))
		if a := publishAcked(t, pub, 1, &packet.Publish{Topic: "q/nobody"}); a.ReasonCode != packet.NoMatchingSubscribers {
			t.Fatalf("no subscriber: %v", a.ReasonCode)
		}
		// A subscriber whose copy is dropped (offline, subscribed at
		// QoS 0) is still a matching subscriber.
		if a := publishAcked(t, pub, 2, &packet.Publish{Topic: "q/offline-qos0"}); a.ReasonCode != packet.Success {
			t.Fatalf("offline QoS 0 subscriber: %v", a.ReasonCode)
		}
	})
}

func TestConformanceSubscribeV5(t *testing.T) {
	_, addr := testServer(t, Config{Authorizer: denyAuthorizer{}})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("sub-pub"))
	publishAcked(t, pub, 1, &packet.Publish{Topic: "sr/retained", Retain: true, Payload: []byte("r")})

	t.Run("MQTT-3.8.4-3 an identical filter replaces the subscription and resends retained (Retain Handling 0)", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("sr-replace"))
		subscribe(t, c, 1, packet.Subscription{Filter: "sr/#", QoS: 0})
		if p := recvPublish(t, c); !p.Retain || p.QoS != 0 {
			t.Fatalf("first retained: %+v", p)
		}
		s := &packet.Subscribe{PacketID: 2, Subscriptions: []packet.Subscription{{Filter: "sr/#", QoS: 1}}}
		s.Properties.AddSubscriptionID(42)
		c.send(s)
		if ack, ok := c.recv().(*packet.Suback); !ok || ack.ReasonCodes[0] != packet.GrantedQoS1 {
			t.Fatalf("SUBACK %#v", ack)
		}
		if p := recvPublish(t, c); !p.Retain || p.QoS != 1 || len(p.Properties.SubscriptionIDs) != 1 || p.Properties.SubscriptionIDs[0] != 42 {
			t.Fatalf("retained after replacement: %+v", p)
		} else {
			c.send(&packet.Puback{PacketID: p.PacketID})
		}
		// One subscription, with the new options: one copy at QoS 1.
		publishAcked(t, pub, 2, &packet.Publish{Topic: "sr/live", Payload: []byte("l")})
		p := recvPublish(t, c)
		if p.QoS != 1 || len(p.Properties.SubscriptionIDs) != 1 || p.Properties.SubscriptionIDs[0] != 42 {
			t.Fatalf("live after replacement: %+v", p)
		}
		c.send(&packet.Puback{PacketID: p.PacketID})
		expectNone(t, c)
	})
	t.Run("MQTT-3.8.4-3 replacement with Retain Handling 1 does not resend retained", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("sr-replace-rh1"))
		subscribe(t, c, 1, packet.Subscription{Filter: "sr/#", RetainHandling: 1})
		recvPublish(t, c)
		subscribe(t, c, 2, packet.Subscription{Filter: "sr/#", RetainHandling: 1, QoS: 1})
		expectNone(t, c)
	})
	t.Run("MQTT-3.3.4-3 retained message carries the Subscription Identifier", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("sr-subid"))
		s := &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "sr/+"}}}
		s.Properties.AddSubscriptionID(7)
		c.send(s)
		c.recv()
		if p := recvPublish(t, c); len(p.Properties.SubscriptionIDs) != 1 || p.Properties.SubscriptionIDs[0] != 7 {
			t.Fatalf("retained: %+v", p.Properties)
		}
	})
	t.Run("MQTT-3.8.4-4 several filters: one SUBACK with a code each, in order", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("sr-multi"))
		ack := subscribe(t, c, 1,
			packet.Subscription{Filter: "m/a", QoS: 2},
			packet.Subscription{Filter: "deny/b", QoS: 1},
			packet.Subscription{Filter: "m/c", QoS: 1})
		want := []packet.ReasonCode{packet.GrantedQoS2, packet.NotAuthorized, packet.GrantedQoS1}
		if !slicesEqual(ack.ReasonCodes, want) {
			t.Fatalf("SUBACK codes %v, want %v", ack.ReasonCodes, want)
		}
	})
	t.Run("MQTT-4.8.2-2 invalid share name is a protocol error", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("sr-badshare"))
		// SUBSCRIBE 1, no properties, "$share/a+b/x" QoS 0.
		c.write(append([]byte{0x82, 18, 0, 1, 0, 0, 12}, "$share/a+b/x\x00"...))
		expectDisconnect(t, c, packet.ProtocolError)
	})
	t.Run("MQTT-3.10.4-5 UNSUBACK with one code per filter: 0x00 and 0x11", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("sr-unsub"))
		subscribe(t, c, 1, packet.Subscription{Filter: "u/a"})
		c.send(&packet.Unsubscribe{PacketID: 2, Filters: []string{"u/a", "u/none", "u/a"}})
		ack, ok := c.recv().(*packet.Unsuback)
		want := []packet.ReasonCode{packet.Success, packet.NoSubscriptionExisted, packet.NoSubscriptionExisted}
		if !ok || ack.PacketID != 2 || !slicesEqual(ack.ReasonCodes, want) {
			t.Fatalf("UNSUBACK %#v, want codes %v", ack, want)
		}
	})
	t.Run("MQTT-3.10.4-2 MQTT-3.10.4-3 unsubscribe stops new messages and completes those in flight", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("sr-unsub-inflight"))
		subscribe(t, c, 1, packet.Subscription{Filter: "u/flight", QoS: 2})
		publishAcked(t, pub, 3, &packet.Publish{Topic: "u/flight", Payload: []byte("1")})
		p := recvPublish(t, c)
		c.send(&packet.Unsubscribe{PacketID: 2, Filters: []string{"u/flight"}})
		if _, ok := c.recv().(*packet.Unsuback); !ok {
			t.Fatal("no UNSUBACK")
		}
		publishAcked(t, pub, 4, &packet.Publish{Topic: "u/flight", Payload: []byte("2")})
		// The in-flight message's flow still completes: PUBACK accepted,
		// the connection is fine, and nothing new arrives.
		c.send(&packet.Puback{PacketID: p.PacketID})
		expectNone(t, c)
		c.send(&packet.Pingreq{})
		if _, ok := c.recv().(*packet.Pingresp); !ok {
			t.Fatal("no PINGRESP")
		}
	})
	t.Run("MQTT-4.7.2-1 wildcards at the first level do not match $ topics", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("sr-dollar"))
		subscribe(t, c, 1, packet.Subscription{Filter: "#"}, packet.Subscription{Filter: "+/+"})
		explicit := dialRaw(t, addr, packet.V5)
		explicit.connect(v5connect("sr-dollar-explicit"))
		subscribe(t, explicit, 1, packet.Subscription{Filter: "$app/+"})
		// Drain the retained messages "#" brought.
		for {
			if _, err := c.recvErr(quiet); err != nil {
				break
			}
		}
		publishAcked(t, pub, 5, &packet.Publish{Topic: "$app/x", Payload: []byte("$")})
		if p := recvPublish(t, explicit); p.Topic != "$app/x" {
			t.Fatalf("explicit: %q", p.Topic)
		}
		expectNone(t, c)
	})
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestConformanceSharedV5(t *testing.T) {
	_, addr := testServer(t, Config{})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("sh-pub"))
	t.Run("MQTT-4.8.2 no retained messages on a shared subscription", func(t *testing.T) {
		publishAcked(t, pub, 1, &packet.Publish{Topic: "sh/r", Retain: true, Payload: []byte("r")})
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("sh-retained"))
		subscribe(t, c, 1, packet.Subscription{Filter: "$share/g/sh/r"})
		expectNone(t, c)
	})
	t.Run("MQTT-4.8.2-3 a member gets at most its granted QoS", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("sh-qos"))
		subscribe(t, c, 1, packet.Subscription{Filter: "$share/q/sh/qos", QoS: 0})
		publishAcked(t, pub, 2, &packet.Publish{Topic: "sh/qos"})
		if p := recvPublish(t, c); p.QoS != 0 {
			t.Fatalf("QoS %d", p.QoS)
		}
	})
	t.Run("MQTT-4.8.2 messages of a member whose session ends go to another member", func(t *testing.T) {
		a := dialRaw(t, addr, packet.V5)
		a.connect(v5connect("sh-a"))
		subscribe(t, a, 1, packet.Subscription{Filter: "$share/r/sh/jobs", QoS: 1})
		b := dialRaw(t, addr, packet.V5)
		b.connect(v5connect("sh-b"))
		subscribe(t, b, 1, packet.Subscription{Filter: "$share/r/sh/jobs", QoS: 1})
		// Publish until each member holds an unacknowledged message.
		got := map[*rawClient]*packet.Publish{}
		for i := 0; len(got) < 2 && i < 10; i++ {
			publishAcked(t, pub, uint16(10+i), &packet.Publish{Topic: "sh/jobs", Payload: []byte{byte(i)}})
			for _, c := range []*rawClient{a, b} {
				if p, err := c.recvErr(quiet); err == nil {
					if got[c] != nil {
						c.send(&packet.Puback{PacketID: p.(*packet.Publish).PacketID})
						continue
					}
					got[c] = p.(*packet.Publish)
				}
			}
		}
		if len(got) != 2 {
			t.Fatal("messages not shared between both members")
		}
		a.nc.Close() // session expiry 0: a's session ends
		p := recvPublish(t, b)
		if p.Payload[0] != got[a].Payload[0] || p.Dup {
			t.Fatalf("redistributed %+v, want payload %d without DUP", p, got[a].Payload[0])
		}
	})
}

func TestConformanceTopicAliasV5(t *testing.T) {
	_, addr := testServer(t, Config{})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(v5connect("ta-sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "ta/#"})
	aliased := func(topic string, alias uint16, payload string) *packet.Publish {
		p := &packet.Publish{Topic: topic, Payload: []byte(payload)}
		p.Properties.SetTopicAlias(alias)
		return p
	}
	t.Run("MQTT-3.3.2-12 an alias can be remapped to another topic", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("ta-remap"))
		c.send(aliased("ta/one", 1, "1"))
		c.send(aliased("ta/two", 1, "2"))
		c.send(aliased("", 1, "3"))
		for _, want := range []string{"ta/one", "ta/two", "ta/two"} {
			if p := recvPublish(t, sub); p.Topic != want {
				t.Fatalf("got %q, want %q", p.Topic, want)
			}
		}
	})
	t.Run("MQTT-3.3.4 alias with an empty topic before it was set is a protocol error", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("ta-unset"))
		c.send(aliased("", 2, "x"))
		expectDisconnect(t, c, packet.ProtocolError)
	})
	t.Run("MQTT-3.3.2-8 alias 0 is a protocol error", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("ta-zero"))
		// PUBLISH "t", properties: Topic Alias 0.
		c.write([]byte{0x30, 0x07, 0, 1, 't', 3, 0x23, 0, 0})
		expectDisconnect(t, c, packet.ProtocolError)
	})
	t.Run("MQTT-3.3.2-9 alias above Topic Alias Maximum is 0x94", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		ack := c.connect(v5connect("ta-max"))
		c.send(aliased("ta/x", ack.Properties.TopicAliasMaximum+1, "x"))
		expectDisconnect(t, c, packet.TopicAliasInvalid)
	})
	t.Run("MQTT-3.3.2-7 aliases do not survive the connection", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(connectV5("ta-conn", true, withExpiry(60)))
		c.send(aliased("ta/kept", 1, "1"))
		recvPublish(t, sub)
		closeAndWait(t, c, &packet.Disconnect{})
		c2, _ := reconnect(t, addr, packet.V5, connectV5("ta-conn", false, withExpiry(60)))
		c2.send(aliased("", 1, "2"))
		expectDisconnect(t, c2, packet.ProtocolError)
	})
	t.Run("MQTT-3.3.2-11 the server never exceeds the client's Topic Alias Maximum", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(connectV5("ta-out", true, func(p *packet.Properties) { p.SetTopicAliasMaximum(1) }))
		subscribe(t, c, 1, packet.Subscription{Filter: "tb/#"})
		pc := dialRaw(t, addr, packet.V5)
		pc.connect(v5connect("ta-out-pub"))
		for _, tp := range []string{"tb/a", "tb/b", "tb/a", "tb/b"} {
			pc.send(&packet.Publish{Topic: tp, Payload: []byte("x")})
		}
		a1, b1, a2, b2 := recvPublish(t, c), recvPublish(t, c), recvPublish(t, c), recvPublish(t, c)
		if a1.Topic != "tb/a" || a1.Properties.TopicAlias != 1 {
			t.Fatalf("first: %+v", a1)
		}
		if b1.Topic != "tb/b" || b1.Properties.Has(packet.PropTopicAlias) || b2.Topic != "tb/b" || b2.Properties.Has(packet.PropTopicAlias) {
			t.Fatalf("over the maximum: %+v %+v", b1, b2)
		}
		if a2.Topic != "" || a2.Properties.TopicAlias != 1 {
			t.Fatalf("alias reuse: %+v", a2)
		}
	})
	t.Run("MQTT-3.1.2-24 no outbound alias that would exceed the Maximum Packet Size", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		// PUBLISH "tc/a" with payload "xx" and no properties is 11 bytes;
		// a Topic Alias adds 3.
		c.connect(connectV5("ta-size", true, func(p *packet.Properties) {
			p.SetTopicAliasMaximum(5)
			p.SetMaximumPacketSize(11)
		}))
		subscribe(t, c, 1, packet.Subscription{Filter: "tc/#"})
		pc := dialRaw(t, addr, packet.V5)
		pc.connect(v5connect("ta-size-pub"))
		pc.send(&packet.Publish{Topic: "tc/a", Payload: []byte("xx")})
		if p := recvPublish(t, c); p.Topic != "tc/a" || p.Properties.Has(packet.PropTopicAlias) {
			t.Fatalf("got %+v", p)
		}
	})
}

func TestConformanceLimitsV5(t *testing.T) {
	_, addr := testServer(t, Config{MaxPacketSize: 1024})
	t.Run("MQTT-3.2.2 MQTT-4.13.1-1 CONNACK announces Maximum Packet Size; a larger packet is DISCONNECT 0x95", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		ack := c.connect(v5connect("lim-big"))
		if ack.Properties.MaximumPacketSize != 1024 {
			t.Fatalf("Maximum Packet Size %d", ack.Properties.MaximumPacketSize)
		}
		c.send(&packet.Publish{Topic: "lim", Payload: make([]byte, 1100)})
		expectDisconnect(t, c, packet.PacketTooLarge)
	})
	t.Run("MQTT-3.14.2-3 server DISCONNECT drops its Reason String beyond the client's Maximum Packet Size", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(connectV5("lim-small", true, func(p *packet.Properties) { p.SetMaximumPacketSize(8) }))
		c.send(&packet.Connect{Version: packet.V5, ProtocolName: "MQTT", ClientID: "again", CleanStart: true})
		d := expectDisconnect(t, c, packet.ProtocolError)
		if d.Properties.Has(packet.PropReasonString) {
			t.Fatal("Reason String sent beyond the Maximum Packet Size")
		}
	})
}

func TestConformanceRetainedExpiryV5(t *testing.T) {
	clock := newFakeClock()
	_, addr := testServer(t, Config{Clock: clock})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("rx-pub"))
	for i, exp := range []uint32{10, 100} {
		p := &packet.Publish{Topic: "rx/" + string(rune('a'+i)), Retain: true, Payload: []byte("r")}
		p.Properties.SetMessageExpiry(exp)
		publishAcked(t, pub, uint16(i+1), p)
	}
	clock.advance(30 * time.Second)
	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("rx-sub"))
	subscribe(t, c, 1, packet.Subscription{Filter: "rx/+"})
	p := recvPublish(t, c)
	if p.Topic != "rx/b" {
		t.Fatalf("MQTT-3.3.2-5: expired retained message %q delivered", p.Topic)
	}
	if p.Properties.MessageExpiry != 70 {
		t.Fatalf("MQTT-3.3.2-6: remaining expiry %d, want 70", p.Properties.MessageExpiry)
	}
	expectNone(t, c)
}

// TestConformancePahoV5Quirks documents, as executable checks, the
// places where the Eclipse Paho v5 interoperability suite expects
// behaviour that MQTT 5.0 forbids: Moat follows the specification.
func TestConformancePahoV5Quirks(t *testing.T) {
	_, addr := testServer(t, Config{})
	// Offline queueing with Clean Start 0 and no Session Expiry Interval:
	// the session ends at disconnection [MQTT-3.1.2-23], so nothing is
	// queued and the reconnect finds no session.
	c := dialRaw(t, addr, packet.V5)
	c.connect(connectV5("quirk", false, nil))
	subscribe(t, c, 1, packet.Subscription{Filter: "quirk/#", QoS: 2})
	closeAndWait(t, c, &packet.Disconnect{})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("quirk-pub"))
	if a := publishAcked(t, pub, 1, &packet.Publish{Topic: "quirk/a"}); a.ReasonCode != packet.NoMatchingSubscribers {
		t.Fatalf("PUBACK %v: a session without expiry outlived its connection", a.ReasonCode)
	}
	c2, ack := reconnect(t, addr, packet.V5, connectV5("quirk", false, nil))
	if ack.SessionPresent {
		t.Fatal("session present")
	}
	expectNone(t, c2)
}
