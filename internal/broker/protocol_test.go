package broker

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

func v5connect(id string) *packet.Connect {
	return &packet.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}
}

func subscribe(t *testing.T, c *rawClient, pid uint16, subs ...packet.Subscription) *packet.Suback {
	t.Helper()
	c.send(&packet.Subscribe{PacketID: pid, Subscriptions: subs})
	ack, ok := c.recv().(*packet.Suback)
	if !ok || ack.PacketID != pid {
		t.Fatalf("expected SUBACK %d, got %#v", pid, ack)
	}
	return ack
}

func recvPublish(t *testing.T, c *rawClient) *packet.Publish {
	t.Helper()
	p := c.recv()
	pub, ok := p.(*packet.Publish)
	if !ok {
		t.Fatalf("expected PUBLISH, got %s", p.Type())
	}
	return pub
}

func TestConnect(t *testing.T) {
	_, addr := testServer(t, Config{})
	t.Run("MQTT-3.2.2-16 assigned client identifier v5", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		ack := c.connect(v5connect(""))
		if ack.ReasonCode != packet.Success || !ack.Properties.Has(packet.PropAssignedClientID) || ack.Properties.AssignedClientID == "" {
			t.Fatalf("CONNACK %+v", ack)
		}
	})
	t.Run("MQTT-3.1.3-8 zero-length id without clean session refused v3.1.1", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		ack := c.connect(&packet.Connect{CleanStart: false})
		if ack.ReasonCode != packet.V3IdentifierRejected {
			t.Fatalf("got return code %d, want 2", ack.ReasonCode)
		}
	})
	t.Run("MQTT-3.1.3-7 zero-length id with clean session accepted v3.1.1", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		if ack := c.connect(&packet.Connect{CleanStart: true}); ack.ReasonCode != 0 {
			t.Fatalf("got return code %d", ack.ReasonCode)
		}
	})
	t.Run("MQTT 3.1 connect", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V31)
		if ack := c.connect(&packet.Connect{ClientID: "old-device", CleanStart: true}); ack.ReasonCode != 0 {
			t.Fatalf("got return code %d", ack.ReasonCode)
		}
	})
	t.Run("MQTT-3.1.0-1 first packet must be CONNECT", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		c.send(&packet.Pingreq{})
		c.expectClosed(5 * time.Second)
	})
	t.Run("MQTT-3.1.0-2 second CONNECT is a protocol error", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("twice"))
		c.send(v5connect("twice"))
		d := c.expectClosed(5 * time.Second)
		if d == nil || d.ReasonCode != packet.ProtocolError {
			t.Fatalf("DISCONNECT %+v, want protocol error", d)
		}
	})
	t.Run("MQTT-3.1.2-2 unsupported protocol level", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		// CONNECT, protocol "MQTT" level 9.
		c.write([]byte{0x10, 0x0d, 0, 4, 'M', 'Q', 'T', 'T', 9, 2, 0, 30, 0, 1, 'x'})
		p, err := c.recvErr(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if ack, ok := p.(*packet.Connack); !ok || ack.ReasonCode != packet.V3UnacceptableProtocolVersion {
			t.Fatalf("got %#v, want CONNACK 0x01", p)
		}
	})
}

func TestAnonymousRefusedByDefault(t *testing.T) {
	_, addr := testServer(t, Config{AllowAnonymous: false, Authenticator: noAuthenticator})
	c := dialRaw(t, addr, packet.V5)
	ack := c.connect(v5connect("anon"))
	if ack.ReasonCode != packet.NotAuthorized {
		t.Fatalf("got %v, want not authorized", ack.ReasonCode)
	}
	c3 := dialRaw(t, addr, packet.V311)
	if ack := c3.connect(&packet.Connect{ClientID: "anon3", CleanStart: true, UsernameFlag: true, Username: "u", PasswordFlag: true, Password: []byte("p")}); ack.ReasonCode != packet.V3BadUsernameOrPassword {
		t.Fatalf("got %v, want 4", ack.ReasonCode)
	}
}

// noAuthenticator has no opinion on any client, which leaves the decision
// to the anonymous policy.
var noAuthenticator = AuthenticatorFunc(func(_ context.Context, req *ConnectRequest) AuthResult {
	if req.Connect.UsernameFlag {
		return AuthResult{Code: packet.BadUsernameOrPassword, Reason: "unknown user"}
	}
	return AuthResult{NoOpinion: true}
})

func TestPublishSubscribe(t *testing.T) {
	_, addr := testServer(t, Config{})
	for _, v := range []packet.Version{packet.V31, packet.V311, packet.V5} {
		for qos := byte(0); qos <= 2; qos++ {
			t.Run(fmt.Sprintf("v%s QoS %d", v, qos), func(t *testing.T) {
				sub := dialRaw(t, addr, v)
				sub.connect(&packet.Connect{ClientID: fmt.Sprintf("sub-%d-%d", v, qos), CleanStart: true})
				subscribe(t, sub, 1, packet.Subscription{Filter: "t/+/x", QoS: 2})
				pub := dialRaw(t, addr, v)
				pub.connect(&packet.Connect{ClientID: fmt.Sprintf("pub-%d-%d", v, qos), CleanStart: true})
				pub.send(&packet.Publish{Topic: "t/a/x", QoS: qos, PacketID: uint16(qos), Payload: []byte("hello")})
				switch qos {
				case 1:
					if ack, ok := pub.recv().(*packet.Puback); !ok || ack.PacketID != 1 {
						t.Fatal("expected PUBACK 1")
					}
				case 2:
					if ack, ok := pub.recv().(*packet.Pubrec); !ok || ack.PacketID != 2 {
						t.Fatal("expected PUBREC 2")
					}
					pub.send(&packet.Pubrel{PacketID: 2})
					if ack, ok := pub.recv().(*packet.Pubcomp); !ok || ack.PacketID != 2 {
						t.Fatal("expected PUBCOMP 2")
					}
				}
				got := recvPublish(t, sub)
				if got.Topic != "t/a/x" || !bytes.Equal(got.Payload, []byte("hello")) || got.QoS != qos || got.Retain {
					t.Fatalf("got %+v", got)
				}
				switch qos {
				case 1:
					sub.send(&packet.Puback{PacketID: got.PacketID})
				case 2:
					sub.send(&packet.Pubrec{PacketID: got.PacketID})
					if rel, ok := sub.recv().(*packet.Pubrel); !ok || rel.PacketID != got.PacketID {
						t.Fatal("expected PUBREL")
					}
					sub.send(&packet.Pubcomp{PacketID: got.PacketID})
				}
			})
		}
	}
}

func TestQoS2DuplicateNotRoutedTwice(t *testing.T) {
	// [MQTT-4.3.3-9]: a resent QoS 2 PUBLISH before PUBREL is not delivered
	// again.
	_, addr := testServer(t, Config{})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(v5connect("s"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "q2", QoS: 0})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("p"))
	pub.send(&packet.Publish{Topic: "q2", QoS: 2, PacketID: 7, Payload: []byte("once")})
	pub.recv()
	pub.send(&packet.Publish{Topic: "q2", QoS: 2, PacketID: 7, Dup: true, Payload: []byte("once")})
	if rec, ok := pub.recv().(*packet.Pubrec); !ok || rec.PacketID != 7 {
		t.Fatal("expected second PUBREC")
	}
	recvPublish(t, sub)
	if p, err := sub.recvErr(300 * time.Millisecond); err == nil {
		t.Fatalf("duplicate delivered: %#v", p)
	}
}

func TestDollarTopics(t *testing.T) {
	// [MQTT-4.7.2-1]: wildcards at the first level do not match $ topics.
	s, addr := testServer(t, Config{})
	c := dialRaw(t, addr, packet.V311)
	c.connect(&packet.Connect{ClientID: "d", CleanStart: true})
	subscribe(t, c, 1, packet.Subscription{Filter: "#"}, packet.Subscription{Filter: "+/broker/#"})
	s.publishSys()
	pub := dialRaw(t, addr, packet.V311)
	pub.connect(&packet.Connect{ClientID: "p", CleanStart: true})
	pub.send(&packet.Publish{Topic: "normal", Payload: []byte("x")})
	if got := recvPublish(t, c); got.Topic != "normal" {
		t.Fatalf("received %q", got.Topic)
	}
	if p, err := c.recvErr(200 * time.Millisecond); err == nil {
		t.Fatalf("unexpected %#v", p)
	}
	// $SYS is visible to an explicit subscription.
	c2 := dialRaw(t, addr, packet.V311)
	c2.connect(&packet.Connect{ClientID: "d2", CleanStart: true})
	subscribe(t, c2, 1, packet.Subscription{Filter: "$SYS/broker/version"})
	if got := recvPublish(t, c2); got.Topic != "$SYS/broker/version" || !got.Retain {
		t.Fatalf("got %+v", got)
	}
}

func TestRetained(t *testing.T) {
	_, addr := testServer(t, Config{})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("p"))
	pub.send(&packet.Publish{Topic: "r/1", Retain: true, QoS: 1, PacketID: 1, Payload: []byte("one")})
	pub.recv()
	pub.send(&packet.Publish{Topic: "r/2", Retain: true, QoS: 1, PacketID: 2, Payload: []byte("two")})
	pub.recv()
	pub.send(&packet.Publish{Topic: "r/2", Retain: true, QoS: 1, PacketID: 3, Payload: []byte("two again")})
	pub.recv()

	t.Run("MQTT-3.3.1-6 retained sent on subscribe with retain flag", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("c1"))
		subscribe(t, c, 1, packet.Subscription{Filter: "r/+", QoS: 1})
		got := map[string]string{}
		for range 2 {
			p := recvPublish(t, c)
			if !p.Retain {
				t.Fatalf("retain flag not set on %q", p.Topic)
			}
			got[p.Topic] = string(p.Payload)
			c.send(&packet.Puback{PacketID: p.PacketID})
		}
		if got["r/1"] != "one" || got["r/2"] != "two again" {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("MQTT-3.3.1-10 empty payload clears", func(t *testing.T) {
		// QoS 1, so the clear is known to be processed (PUBACK) before
		// the subscriber asks for retained messages.
		publishAcked(t, pub, 4, &packet.Publish{Topic: "r/1", Retain: true})
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("c2"))
		subscribe(t, c, 1, packet.Subscription{Filter: "r/1"})
		if p, err := c.recvErr(200 * time.Millisecond); err == nil {
			t.Fatalf("cleared message delivered: %#v", p)
		}
	})
	t.Run("retain handling 2 sends nothing", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("c3"))
		subscribe(t, c, 1, packet.Subscription{Filter: "r/2", RetainHandling: 2})
		if p, err := c.recvErr(200 * time.Millisecond); err == nil {
			t.Fatalf("unexpected %#v", p)
		}
	})
	t.Run("retain handling 1 only for new subscriptions", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("c4"))
		subscribe(t, c, 1, packet.Subscription{Filter: "r/2", RetainHandling: 1})
		recvPublish(t, c)
		subscribe(t, c, 2, packet.Subscription{Filter: "r/2", RetainHandling: 1})
		if p, err := c.recvErr(200 * time.Millisecond); err == nil {
			t.Fatalf("unexpected %#v", p)
		}
	})
	t.Run("MQTT-3.3.1-9 live messages have retain 0 unless retain as published", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("c5"))
		subscribe(t, c, 1, packet.Subscription{Filter: "live/a", QoS: 0}, packet.Subscription{Filter: "live/b", RetainAsPublished: true})
		pub.send(&packet.Publish{Topic: "live/a", Retain: true, Payload: []byte("a")})
		if p := recvPublish(t, c); p.Retain {
			t.Fatal("retain flag set on live message")
		}
		pub.send(&packet.Publish{Topic: "live/b", Retain: true, Payload: []byte("b")})
		if p := recvPublish(t, c); !p.Retain {
			t.Fatal("retain as published not honoured")
		}
	})
}

func TestOverlappingSubscriptions(t *testing.T) {
	// [MQTT-3.3.4-2] [MQTT-3.3.4-3]: one delivery at the highest QoS with
	// every subscription identifier.
	_, addr := testServer(t, Config{})
	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("o"))
	s1 := &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "a/#", QoS: 1}}}
	s1.Properties.SubscriptionIDs = []uint32{11}
	c.send(s1)
	c.recv()
	s2 := &packet.Subscribe{PacketID: 2, Subscriptions: []packet.Subscription{{Filter: "a/+", QoS: 2}}}
	s2.Properties.SubscriptionIDs = []uint32{22}
	c.send(s2)
	c.recv()
	c.send(&packet.Publish{Topic: "a/b", QoS: 2, PacketID: 5, Payload: []byte("x")})
	var got *packet.Publish
	for got == nil {
		switch p := c.recv().(type) {
		case *packet.Pubrec:
			c.send(&packet.Pubrel{PacketID: p.PacketID})
		case *packet.Pubcomp:
		case *packet.Publish:
			got = p
		}
	}
	if got.QoS != 2 {
		t.Fatalf("QoS %d, want 2", got.QoS)
	}
	ids := map[uint32]bool{}
	for _, id := range got.Properties.SubscriptionIDs {
		ids[id] = true
	}
	if !ids[11] || !ids[22] || len(ids) != 2 {
		t.Fatalf("subscription identifiers %v", got.Properties.SubscriptionIDs)
	}
	if p, err := c.recvErr(200 * time.Millisecond); err == nil {
		if _, ok := p.(*packet.Publish); ok {
			t.Fatal("second delivery")
		}
	}
}

func TestNoLocal(t *testing.T) {
	_, addr := testServer(t, Config{})
	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("nl"))
	subscribe(t, c, 1, packet.Subscription{Filter: "nl", NoLocal: true})
	c.send(&packet.Publish{Topic: "nl", Payload: []byte("self")})
	if p, err := c.recvErr(200 * time.Millisecond); err == nil {
		t.Fatalf("own message delivered: %#v", p)
	}
}

func TestSharedSubscription(t *testing.T) {
	_, addr := testServer(t, Config{})
	a := dialRaw(t, addr, packet.V5)
	a.connect(v5connect("sa"))
	subscribe(t, a, 1, packet.Subscription{Filter: "$share/g/jobs/+"})
	b := dialRaw(t, addr, packet.V5)
	b.connect(v5connect("sb"))
	subscribe(t, b, 1, packet.Subscription{Filter: "$share/g/jobs/+"})
	p := dialRaw(t, addr, packet.V5)
	p.connect(v5connect("sp"))
	const n = 10
	for i := range n {
		p.send(&packet.Publish{Topic: "jobs/x", Payload: []byte{byte(i)}})
	}
	count := func(c *rawClient) int {
		k := 0
		for {
			if _, err := c.recvErr(300 * time.Millisecond); err != nil {
				return k
			}
			k++
		}
	}
	na, nb := count(a), count(b)
	if na+nb != n || na == 0 || nb == 0 {
		t.Fatalf("a got %d, b got %d; want %d in total, split between both", na, nb, n)
	}
}

func TestTopicAliases(t *testing.T) {
	_, addr := testServer(t, Config{})
	sub := dialRaw(t, addr, packet.V5)
	cp := v5connect("alias-sub")
	cp.Properties.TopicAliasMaximum = 5
	cp.Properties.Mark(packet.PropTopicAliasMaximum)
	sub.connect(cp)
	subscribe(t, sub, 1, packet.Subscription{Filter: "al/#"})

	pub := dialRaw(t, addr, packet.V5)
	ack := pub.connect(v5connect("alias-pub"))
	if ack.Properties.TopicAliasMaximum == 0 {
		t.Fatal("server offers no topic aliases")
	}
	p1 := &packet.Publish{Topic: "al/one", Payload: []byte("1")}
	p1.Properties.SetTopicAlias(1)
	pub.send(p1)
	p2 := &packet.Publish{Payload: []byte("2")}
	p2.Properties.SetTopicAlias(1)
	pub.send(p2)

	// Outbound: the first message sets the alias, the second uses it.
	g1, g2 := recvPublish(t, sub), recvPublish(t, sub)
	if g1.Topic != "al/one" || !g1.Properties.Has(packet.PropTopicAlias) {
		t.Fatalf("first: %+v", g1)
	}
	if g2.Topic != "" || g2.Properties.TopicAlias != g1.Properties.TopicAlias {
		t.Fatalf("second: topic %q alias %d", g2.Topic, g2.Properties.TopicAlias)
	}

	t.Run("MQTT-3.3.2-9 alias above maximum", func(t *testing.T) {
		p := &packet.Publish{Topic: "al/x"}
		p.Properties.SetTopicAlias(ack.Properties.TopicAliasMaximum + 1)
		pub.send(p)
		d := pub.expectClosed(5 * time.Second)
		if d == nil || d.ReasonCode != packet.TopicAliasInvalid {
			t.Fatalf("DISCONNECT %+v", d)
		}
	})
}

func TestSessionResumeAndRedelivery(t *testing.T) {
	_, addr := testServer(t, Config{})
	// Persistent v3.1.1 subscriber that does not acknowledge.
	sub := dialRaw(t, addr, packet.V311)
	sub.connect(&packet.Connect{ClientID: "persist", CleanStart: false})
	subscribe(t, sub, 1, packet.Subscription{Filter: "p/#", QoS: 2})
	pub := dialRaw(t, addr, packet.V311)
	pub.connect(&packet.Connect{ClientID: "ppub", CleanStart: true})
	pub.send(&packet.Publish{Topic: "p/1", QoS: 1, PacketID: 1, Payload: []byte("inflight")})
	pub.recv()
	first := recvPublish(t, sub)
	sub.nc.Close()

	// Offline: these are queued.
	pub.send(&packet.Publish{Topic: "p/2", QoS: 2, PacketID: 2, Payload: []byte("queued")})
	pub.recv()
	pub.send(&packet.Pubrel{PacketID: 2})
	pub.recv()

	sub2 := dialRaw(t, addr, packet.V311)
	var ack *packet.Connack
	testutil.CheckFor(t, 5*time.Second, func() error {
		ack = sub2.connect(&packet.Connect{ClientID: "persist", CleanStart: false})
		return nil
	})
	if !ack.SessionPresent {
		t.Fatal("MQTT-3.2.2-2: session present not set")
	}
	re := recvPublish(t, sub2)
	if !re.Dup || re.PacketID != first.PacketID || string(re.Payload) != "inflight" {
		t.Fatalf("MQTT-4.4.0-1 redelivery: %+v", re)
	}
	sub2.send(&packet.Puback{PacketID: re.PacketID})
	q := recvPublish(t, sub2)
	if string(q.Payload) != "queued" || q.QoS != 2 {
		t.Fatalf("queued: %+v", q)
	}
}

func TestSessionTakeover(t *testing.T) {
	_, addr := testServer(t, Config{})
	old := dialRaw(t, addr, packet.V5)
	old.connect(v5connect("dup-id"))
	nw := dialRaw(t, addr, packet.V5)
	if ack := nw.connect(v5connect("dup-id")); ack.ReasonCode != 0 {
		t.Fatalf("takeover refused: %v", ack.ReasonCode)
	}
	d := old.expectClosed(5 * time.Second)
	if d == nil || d.ReasonCode != packet.SessionTakenOver {
		t.Fatalf("MQTT-3.1.4-3: old connection got %+v, want DISCONNECT 0x8E", d)
	}
}

func TestWill(t *testing.T) {
	clock := newFakeClock()
	srv, addr := testServer(t, Config{Clock: clock})
	watcher := dialRaw(t, addr, packet.V5)
	watcher.connect(v5connect("watch"))
	subscribe(t, watcher, 1, packet.Subscription{Filter: "will/#"})

	t.Run("MQTT-3.1.2-8 will published on abnormal close", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		c.connect(&packet.Connect{ClientID: "w1", CleanStart: true, Will: &packet.Will{Topic: "will/w1", Payload: []byte("gone")}})
		c.nc.Close()
		if p := recvPublish(t, watcher); p.Topic != "will/w1" || string(p.Payload) != "gone" {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("MQTT-3.14.4-3 no will after normal DISCONNECT", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(&packet.Connect{ClientID: "w2", CleanStart: true, Will: &packet.Will{Topic: "will/w2", Payload: []byte("x")}})
		c.send(&packet.Disconnect{})
		c.expectClosed(5 * time.Second)
		if p, err := watcher.recvErr(300 * time.Millisecond); err == nil {
			t.Fatalf("will sent: %#v", p)
		}
	})
	t.Run("DISCONNECT 0x04 sends the will", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(&packet.Connect{ClientID: "w3", CleanStart: true, Will: &packet.Will{Topic: "will/w3", Payload: []byte("x")}})
		c.send(&packet.Disconnect{ReasonCode: packet.DisconnectWithWill})
		if p := recvPublish(t, watcher); p.Topic != "will/w3" {
			t.Fatalf("got %+v", p)
		}
	})
	t.Run("MQTT-3.1.3-9 will delay cancelled by reconnect", func(t *testing.T) {
		w := &packet.Will{Topic: "will/w4", Payload: []byte("late")}
		w.Properties.WillDelay = 2
		w.Properties.Mark(packet.PropWillDelay)
		cp := &packet.Connect{ClientID: "w4", CleanStart: true, Will: w}
		cp.Properties.SessionExpiry = 60
		cp.Properties.Mark(packet.PropSessionExpiry)
		c := dialRaw(t, addr, packet.V5)
		c.connect(cp)
		c.nc.Close()
		waitOffline(t, srv, "w4")
		c2 := dialRaw(t, addr, packet.V5)
		c2.connect(&packet.Connect{ClientID: "w4", CleanStart: false})
		clock.advance(3 * time.Second) // past the will delay
		if p, err := watcher.recvErr(quiet); err == nil {
			t.Fatalf("will sent despite reconnect: %#v", p)
		}
	})
	t.Run("will delay elapses", func(t *testing.T) {
		w := &packet.Will{Topic: "will/w5", Payload: []byte("late")}
		w.Properties.WillDelay = 1
		w.Properties.Mark(packet.PropWillDelay)
		cp := &packet.Connect{ClientID: "w5", CleanStart: true, Will: w}
		cp.Properties.SessionExpiry = 60
		cp.Properties.Mark(packet.PropSessionExpiry)
		c := dialRaw(t, addr, packet.V5)
		c.connect(cp)
		c.nc.Close()
		waitOffline(t, srv, "w5")
		clock.advance(999 * time.Millisecond)
		if p, err := watcher.recvErr(quiet); err == nil {
			t.Fatalf("will sent before its delay: %#v", p)
		}
		clock.advance(time.Millisecond)
		if p := recvPublish(t, watcher); p.Topic != "will/w5" {
			t.Fatalf("got %q", p.Topic)
		}
	})
}

func TestMessageExpiry(t *testing.T) {
	now := time.Now()
	clock := &fakeClock{t: now}
	_, addr := testServer(t, Config{Clock: clock})
	sub := dialRaw(t, addr, packet.V5)
	cp := v5connect("exp")
	cp.CleanStart = true
	cp.Properties.SessionExpiry = 300
	cp.Properties.Mark(packet.PropSessionExpiry)
	sub.connect(cp)
	subscribe(t, sub, 1, packet.Subscription{Filter: "e/#", QoS: 1})
	sub.send(&packet.Disconnect{})
	sub.expectClosed(5 * time.Second)

	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("exp-pub"))
	p1 := &packet.Publish{Topic: "e/short", QoS: 1, PacketID: 1, Payload: []byte("short")}
	p1.Properties.SetMessageExpiry(5)
	pub.send(p1)
	pub.recv()
	p2 := &packet.Publish{Topic: "e/long", QoS: 1, PacketID: 2, Payload: []byte("long")}
	p2.Properties.SetMessageExpiry(100)
	pub.send(p2)
	pub.recv()

	clock.advance(10 * time.Second)
	sub2 := dialRaw(t, addr, packet.V5)
	sub2.connect(&packet.Connect{ClientID: "exp", KeepAlive: 30})
	got := recvPublish(t, sub2)
	if got.Topic != "e/long" {
		t.Fatalf("expired message delivered: %q", got.Topic)
	}
	if e := got.Properties.MessageExpiry; e != 90 {
		t.Fatalf("MQTT-3.3.2-6 remaining expiry %d, want 90", e)
	}
}

func TestServerKeepAlive(t *testing.T) {
	_, addr := testServer(t, Config{MaxKeepAlive: 60})
	c := dialRaw(t, addr, packet.V5)
	cp := v5connect("ka")
	cp.KeepAlive = 120
	ack := c.connect(cp)
	if !ack.Properties.Has(packet.PropServerKeepAlive) || ack.Properties.ServerKeepAlive != 60 {
		t.Fatalf("MQTT-3.2.2-21: CONNACK %+v", ack.Properties)
	}
	c3 := dialRaw(t, addr, packet.V311)
	if ack := c3.connect(&packet.Connect{ClientID: "ka3", CleanStart: true, KeepAlive: 120}); ack.ReasonCode != packet.V3IdentifierRejected {
		t.Fatalf("v3 keep alive over maximum: return code %d, want 2", ack.ReasonCode)
	}
}

func TestKeepAliveTimeout(t *testing.T) {
	_, addr := testServer(t, Config{})
	c := dialRaw(t, addr, packet.V5)
	cp := v5connect("idle")
	cp.KeepAlive = 1
	c.connect(cp)
	start := time.Now()
	d := c.expectClosed(5 * time.Second)
	if d == nil || d.ReasonCode != packet.KeepAliveTimeout {
		t.Fatalf("DISCONNECT %+v", d)
	}
	if el := time.Since(start); el < 1400*time.Millisecond {
		t.Fatalf("MQTT-3.1.2-24 closed after %v, before 1.5 x keep alive", el)
	}
}

func TestMaximumPacketSizeOutbound(t *testing.T) {
	_, addr := testServer(t, Config{})
	sub := dialRaw(t, addr, packet.V5)
	cp := v5connect("small")
	cp.Properties.MaximumPacketSize = 64
	cp.Properties.Mark(packet.PropMaximumPacketSize)
	sub.connect(cp)
	subscribe(t, sub, 1, packet.Subscription{Filter: "big/#"})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("bigpub"))
	pub.send(&packet.Publish{Topic: "big/1", Payload: bytes.Repeat([]byte("x"), 200)})
	pub.send(&packet.Publish{Topic: "big/2", Payload: []byte("small")})
	if p := recvPublish(t, sub); p.Topic != "big/2" {
		t.Fatalf("MQTT-3.1.2-25: got %q first", p.Topic)
	}
}

func TestReceiveMaximumExceeded(t *testing.T) {
	_, addr := testServer(t, Config{ReceiveMaximum: 2})
	c := dialRaw(t, addr, packet.V5)
	ack := c.connect(v5connect("flood"))
	if ack.Properties.ReceiveMaximum != 2 {
		t.Fatalf("receive maximum %d", ack.Properties.ReceiveMaximum)
	}
	for i := uint16(1); i <= 3; i++ {
		c.send(&packet.Publish{Topic: "f", QoS: 2, PacketID: i})
	}
	var d *packet.Disconnect
	for d == nil {
		p, err := c.recvErr(5 * time.Second)
		if err != nil {
			t.Fatal("closed without DISCONNECT 0x93")
		}
		d, _ = p.(*packet.Disconnect)
	}
	if d.ReasonCode != packet.ReceiveMaximumExceeded {
		t.Fatalf("receive maximum exceeded (§4.9): got %v", d.ReasonCode)
	}
}

func TestOutboundReceiveMaximum(t *testing.T) {
	// [MQTT-3.3.4-9]: no more unacknowledged QoS 1/2 messages than the
	// client's Receive Maximum.
	_, addr := testServer(t, Config{})
	sub := dialRaw(t, addr, packet.V5)
	cp := v5connect("slow")
	cp.Properties.ReceiveMaximum = 2
	cp.Properties.Mark(packet.PropReceiveMaximum)
	sub.connect(cp)
	subscribe(t, sub, 1, packet.Subscription{Filter: "rm", QoS: 1})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("fast"))
	for i := uint16(1); i <= 5; i++ {
		pub.send(&packet.Publish{Topic: "rm", QoS: 1, PacketID: i, Payload: []byte{byte(i)}})
	}
	a, b := recvPublish(t, sub), recvPublish(t, sub)
	if p, err := sub.recvErr(300 * time.Millisecond); err == nil {
		t.Fatalf("third message before acknowledgement: %#v", p)
	}
	sub.send(&packet.Puback{PacketID: a.PacketID})
	c := recvPublish(t, sub)
	if c.Payload[0] != 3 || b.Payload[0] != 2 {
		t.Fatal("order not kept")
	}
}

func TestQueueLimit(t *testing.T) {
	s, addr := testServer(t, Config{MaxQueued: 3})
	sub := dialRaw(t, addr, packet.V311)
	sub.connect(&packet.Connect{ClientID: "q", CleanStart: false})
	subscribe(t, sub, 1, packet.Subscription{Filter: "q", QoS: 1})
	sub.send(&packet.Disconnect{})
	sub.expectClosed(5 * time.Second)
	pub := dialRaw(t, addr, packet.V311)
	pub.connect(&packet.Connect{ClientID: "qp", CleanStart: true})
	for i := uint16(1); i <= 5; i++ {
		pub.send(&packet.Publish{Topic: "q", QoS: 1, PacketID: i})
		pub.recv()
	}
	if st := s.Stats(); st.DroppedQueueFull != 2 || st.Queued != 3 {
		t.Fatalf("dropped %d queued %d, want 2 and 3", st.DroppedQueueFull, st.Queued)
	}
}
