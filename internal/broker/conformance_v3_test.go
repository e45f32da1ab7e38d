package broker

// Conformance tests for the server side of MQTT 3.1.1, named after its
// normative statements (MQTT 3.1.1 numbering). See conformance_test.go
// for MQTT 5.0 and docs/conformance.md for the map of clauses to tests.

import (
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

func connectV3(id string, clean bool) *packet.Connect {
	return &packet.Connect{ClientID: id, CleanStart: clean}
}

func TestConformanceConnectV311(t *testing.T) {
	_, addr := testServer(t, Config{MaxKeepAlive: 60})
	t.Run("MQTT-3.1.2-22 password without user name closes without CONNACK", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		// flags: password, clean session; client ID "x", password "p".
		c.write([]byte{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x42, 0, 30, 0, 1, 'x', 0, 1, 'p'})
		if p, err := c.recvErr(5 * time.Second); err == nil {
			t.Fatalf("got %#v, want the connection closed", p)
		}
	})
	t.Run("MQTT-3.1.2-1 wrong protocol name is refused", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		c.write([]byte{0x10, 0x0d, 0, 4, 'M', 'Q', 'T', 'X', 4, 2, 0, 30, 0, 1, 'x'})
		p, err := c.recvErr(5 * time.Second)
		if err == nil {
			if ack, ok := p.(*packet.Connack); !ok || ack.ReasonCode != packet.V3UnacceptableProtocolVersion {
				t.Fatalf("got %#v", p)
			}
		}
		c.expectClosed(5 * time.Second)
	})
	t.Run("MQTT-3.1.2-24 keep alive 0 and up to max_keepalive accepted, more refused with 0x02", func(t *testing.T) {
		for _, tc := range []struct {
			ka   uint16
			code packet.ReasonCode
		}{{0, packet.V3Accepted}, {60, packet.V3Accepted}, {61, packet.V3IdentifierRejected}} {
			c := dialRaw(t, addr, packet.V311)
			cp := connectV3("ka3", true)
			cp.KeepAlive = tc.ka
			if ack := c.connect(cp); ack.ReasonCode != tc.code {
				t.Fatalf("keep alive %d: return code %d, want %d", tc.ka, ack.ReasonCode, tc.code)
			}
		}
	})
	t.Run("MQTT-3.1.4-2 takeover closes the existing connection", func(t *testing.T) {
		old := dialRaw(t, addr, packet.V311)
		old.connect(connectV3("take3", true))
		reconnect(t, addr, packet.V311, connectV3("take3", true))
		if d := old.expectClosed(5 * time.Second); d != nil {
			t.Fatal("DISCONNECT sent to a 3.1.1 client")
		}
	})
}

func TestConformanceSessionV311(t *testing.T) {
	_, addr := testServer(t, Config{})
	leave := func(t *testing.T, id string, clean bool) {
		t.Helper()
		c := dialRaw(t, addr, packet.V311)
		c.connect(connectV3(id, clean))
		subscribe(t, c, 1, packet.Subscription{Filter: "s3/" + id, QoS: 1})
		closeAndWait(t, c, &packet.Disconnect{})
	}
	t.Run("MQTT-3.2.2-2 session present for a stored session", func(t *testing.T) {
		leave(t, "s3-keep", false)
		c, ack := reconnect(t, addr, packet.V311, connectV3("s3-keep", false))
		if !ack.SessionPresent {
			t.Fatal("session present 0")
		}
		pub := dialRaw(t, addr, packet.V311)
		pub.connect(connectV3("s3-pub", true))
		pub.send(&packet.Publish{Topic: "s3/s3-keep", Payload: []byte("x")})
		recvPublish(t, c)
	})
	t.Run("MQTT-3.2.2-3 session present 0 without a stored session", func(t *testing.T) {
		if _, ack := reconnect(t, addr, packet.V311, connectV3("s3-none", false)); ack.SessionPresent {
			t.Fatal("session present 1")
		}
	})
	t.Run("MQTT-3.2.2-1 MQTT-3.1.2-6 clean session discards the stored session", func(t *testing.T) {
		leave(t, "s3-clean", false)
		c, ack := reconnect(t, addr, packet.V311, connectV3("s3-clean", true))
		if ack.SessionPresent {
			t.Fatal("session present 1 with clean session")
		}
		pub := dialRaw(t, addr, packet.V311)
		pub.connect(connectV3("s3-pub2", true))
		pub.send(&packet.Publish{Topic: "s3/s3-clean", Payload: []byte("x")})
		expectNone(t, c)
	})
	t.Run("MQTT-3.14.4-3 DISCONNECT discards the will", func(t *testing.T) {
		w := dialRaw(t, addr, packet.V311)
		w.connect(connectV3("s3-watch", true))
		subscribe(t, w, 1, packet.Subscription{Filter: "will3/#"})
		c := dialRaw(t, addr, packet.V311)
		cp := connectV3("s3-will", true)
		cp.Will = &packet.Will{Topic: "will3/x", Payload: []byte("x")}
		c.connect(cp)
		closeAndWait(t, c, &packet.Disconnect{})
		expectNone(t, w)
	})
}

func TestConformanceMessagingV311(t *testing.T) {
	_, addr := testServer(t, Config{Authorizer: denyAuthorizer{}})
	pub := dialRaw(t, addr, packet.V311)
	pub.connect(connectV3("m3-pub", true))
	t.Run("MQTT-3.8.4-5 MQTT-3.9.3-2 a refused filter gets 0x80 in its place", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		c.connect(connectV3("m3-suback", true))
		ack := subscribe(t, c, 1,
			packet.Subscription{Filter: "m3/a", QoS: 1},
			packet.Subscription{Filter: "deny/x", QoS: 1},
			packet.Subscription{Filter: "m3/b", QoS: 2})
		want := []packet.ReasonCode{1, packet.V3SubackFailure, 2}
		if !slicesEqual(ack.ReasonCodes, want) {
			t.Fatalf("SUBACK %v, want %v", ack.ReasonCodes, want)
		}
	})
	t.Run("MQTT-3.3.5-2 an unauthorized PUBLISH is acknowledged normally", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		c.connect(connectV3("m3-deny", true))
		c.send(&packet.Publish{Topic: "deny/p", QoS: 1, PacketID: 1})
		if a, ok := c.recv().(*packet.Puback); !ok || a.PacketID != 1 {
			t.Fatalf("got %#v", a)
		}
	})
	t.Run("MQTT-4.3.3-2 PUBREL for an unknown identifier still gets PUBCOMP", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		c.connect(connectV3("m3-rel", true))
		c.send(&packet.Pubrel{PacketID: 9})
		if a, ok := c.recv().(*packet.Pubcomp); !ok || a.PacketID != 9 {
			t.Fatalf("got %#v", a)
		}
	})
	t.Run("MQTT-3.10.4-5 UNSUBACK even when nothing matched", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		c.connect(connectV3("m3-unsub", true))
		c.send(&packet.Unsubscribe{PacketID: 4, Filters: []string{"never/subscribed"}})
		if a, ok := c.recv().(*packet.Unsuback); !ok || a.PacketID != 4 {
			t.Fatalf("got %#v", a)
		}
	})
	t.Run("MQTT-3.3.1-8 MQTT-3.3.1-9 retain flag 1 on subscription, 0 on live delivery", func(t *testing.T) {
		pub.send(&packet.Publish{Topic: "m3/ret", Retain: true, QoS: 1, PacketID: 2, Payload: []byte("r")})
		pub.recv()
		c := dialRaw(t, addr, packet.V311)
		c.connect(connectV3("m3-ret", true))
		subscribe(t, c, 1, packet.Subscription{Filter: "m3/ret"})
		if p := recvPublish(t, c); !p.Retain {
			t.Fatal("retained message without retain flag")
		}
		pub.send(&packet.Publish{Topic: "m3/ret", Retain: true, QoS: 1, PacketID: 3, Payload: []byte("r2")})
		pub.recv()
		if p := recvPublish(t, c); p.Retain {
			t.Fatal("live message with retain flag")
		}
	})
	t.Run("MQTT-3.3.1-10 MQTT-3.3.1-11 empty retained message clears and is not stored", func(t *testing.T) {
		pub.send(&packet.Publish{Topic: "m3/clear", Retain: true, QoS: 1, PacketID: 4, Payload: []byte("r")})
		pub.recv()
		pub.send(&packet.Publish{Topic: "m3/clear", Retain: true, QoS: 1, PacketID: 5})
		pub.recv()
		c := dialRaw(t, addr, packet.V311)
		c.connect(connectV3("m3-clear", true))
		subscribe(t, c, 1, packet.Subscription{Filter: "m3/clear"})
		expectNone(t, c)
	})
}

func TestConformanceQueuedQoS0OrderV311(t *testing.T) {
	// [MQTT-4.6.0-6]: with queue_qos0_messages, QoS 0 messages queued while
	// the client was away are not overtaken by newer QoS 0 messages.
	_, addr := testServer(t, Config{QueueQoS0: true, MaxInflight: 1})
	sub := dialRaw(t, addr, packet.V311)
	sub.connect(connectV3("q0", false))
	subscribe(t, sub, 1, packet.Subscription{Filter: "q0/#", QoS: 2})
	closeAndWait(t, sub, &packet.Disconnect{})

	pub := dialRaw(t, addr, packet.V311)
	pub.connect(connectV3("q0-pub", true))
	publishAcked(t, pub, 1, &packet.Publish{Topic: "q0/t", Payload: []byte("1")})
	publishAcked(t, pub, 2, &packet.Publish{Topic: "q0/t", Payload: []byte("2")})
	pub.send(&packet.Publish{Topic: "q0/t", Payload: []byte("3")})

	sub2, _ := reconnect(t, addr, packet.V311, connectV3("q0", false))
	first := recvPublish(t, sub2)
	pub.send(&packet.Publish{Topic: "q0/t", Payload: []byte("4")})
	publishAcked(t, pub, 3, &packet.Publish{Topic: "q0/sync"})
	sub2.send(&packet.Puback{PacketID: first.PacketID})
	var got []string
	for len(got) < 3 {
		p := recvPublish(t, sub2)
		got = append(got, string(p.Payload))
		if p.QoS == 1 {
			sub2.send(&packet.Puback{PacketID: p.PacketID})
		}
	}
	if string(first.Payload) != "1" || !slicesEqual(got, []string{"2", "3", "4"}) {
		t.Fatalf("order %s then %v, want 1 then [2 3 4]", first.Payload, got)
	}
}
