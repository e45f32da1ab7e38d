package broker

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/topic"
)

// The subscription fence (fence.go), tested without relying on the
// scheduler: a message is routed as if its PUBLISH had arrived after a
// SUBSCRIBE that the broker handles only afterwards, by giving it an
// arrival time a little in the future. The tests of the real race are in
// subtiming_test.go.

// lateBy is how far ahead of the SUBSCRIBE a routed message pretends to
// have arrived: more than a SUBSCRIBE takes to reach the broker, well
// within recentWindow.
const lateBy = 300 * time.Millisecond

// routeEarly routes msg the way handlePublish does, as if it had arrived
// at arrived.
func routeEarly(s *Server, msg *Message, arrived time.Time) int {
	msg.arrived = arrived.UnixNano()
	if msg.Retain {
		s.recent.reserve(0, msg)
		s.retained.retain(msg, "")
	}
	s.recent.add(0, msg)
	return s.deliver(msg, nil)
}

// later is a message that arrives after a SUBSCRIBE sent now.
func later(topic string, qos byte, from string) *Message {
	m := newMessage(&packet.Publish{Topic: topic, QoS: qos, Payload: []byte("late")}, from, time.Now())
	m.arrived = time.Now().Add(lateBy).UnixNano()
	return m
}

// subscribe sends SUBSCRIBE and returns the packets that follow its
// SUBACK within quiet, SUBACK included.
func (c *rawClient) subscribe(id uint16, props packet.Properties, subs ...packet.Subscription) []packet.Packet {
	c.t.Helper()
	c.send(&packet.Subscribe{PacketID: id, Properties: props, Subscriptions: subs})
	return c.drain()
}

// drain returns the packets that arrive within quiet of each other.
func (c *rawClient) drain() []packet.Packet {
	c.t.Helper()
	var got []packet.Packet
	for {
		p, err := c.recvErr(quiet)
		if err != nil {
			if !isTimeout(err) {
				c.t.Fatalf("read: %v", err)
			}
			return got
		}
		got = append(got, p)
	}
}

func publishes(ps []packet.Packet) []*packet.Publish {
	var out []*packet.Publish
	for _, p := range ps {
		if pub, ok := p.(*packet.Publish); ok {
			out = append(out, pub)
		}
	}
	return out
}

func subIDs(ids ...uint32) packet.Properties {
	var p packet.Properties
	p.SubscriptionIDs = ids
	return p
}

// TestSubscribeReplaysMessageRoutedBeforeIt: a message that arrived after
// the SUBSCRIBE but was routed before its subscription was installed is
// delivered as routing would have delivered it.
func TestSubscribeReplaysMessageRoutedBeforeIt(t *testing.T) {
	s, addr := testServer(t, Config{})
	for _, tc := range []struct {
		name    string
		msgQoS  byte
		retain  bool
		sub     packet.Subscription
		props   packet.Properties
		from    string
		arrived time.Duration // relative to the SUBSCRIBE being sent
		want    bool
		wantQoS byte
		wantRet bool
		wantIDs []uint32
	}{
		{name: "QoS 0", sub: packet.Subscription{}, want: true},
		{name: "QoS 1", msgQoS: 1, sub: packet.Subscription{QoS: 1}, want: true, wantQoS: 1},
		{name: "QoS downgraded by the subscription", msgQoS: 2, sub: packet.Subscription{QoS: 1}, want: true, wantQoS: 1},
		{name: "subscription identifier", props: subIDs(7), want: true, wantIDs: []uint32{7}},
		{name: "retained, live delivery", retain: true, want: true},
		{name: "retained, retain as published", retain: true, sub: packet.Subscription{RetainAsPublished: true}, want: true, wantRet: true},
		{name: "no local [MQTT-3.8.3-3]", from: "replay-b", sub: packet.Subscription{NoLocal: true}},
		{name: "own message without no local", from: "replay-b", want: true},
		{name: "arrived before the SUBSCRIBE", arrived: -10 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := dialRaw(t, addr, packet.V5)
			b.connect(v5connect("replay-b"))
			name := "replay/" + strings.ReplaceAll(tc.name, " ", "-")
			m := newMessage(&packet.Publish{Topic: name, QoS: tc.msgQoS, Retain: tc.retain, Payload: []byte("late")}, cmpOr(tc.from, "replay-a"), time.Now())
			arrived := time.Now().Add(lateBy)
			if tc.arrived != 0 {
				arrived = time.Now().Add(tc.arrived)
			}
			routeEarly(s, m, arrived)
			sub := tc.sub
			sub.Filter = "replay/#"
			got := publishes(b.subscribe(1, tc.props, sub))
			b.send(&packet.Unsubscribe{PacketID: 2, Filters: []string{"replay/#"}})
			b.drain()
			if tc.retain {
				routeEarly(s, &Message{Topic: name, Retain: true}, time.Now()) // clear it
			}
			if !tc.want {
				if len(got) != 0 {
					t.Fatalf("delivered %d messages, want none", len(got))
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("delivered %d messages, want exactly 1", len(got))
			}
			p := got[0]
			if p.Topic != name || p.QoS != tc.wantQoS || p.Retain != tc.wantRet || !slices.Equal(p.Properties.SubscriptionIDs, tc.wantIDs) {
				t.Fatalf("delivered %s QoS %d retain %v subscription IDs %v; want QoS %d retain %v IDs %v",
					p.Topic, p.QoS, p.Retain, p.Properties.SubscriptionIDs, tc.wantQoS, tc.wantRet, tc.wantIDs)
			}
			if p.QoS > 0 {
				b.send(&packet.Puback{PacketID: p.PacketID})
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestSubscribeReplayAuthorized: a replayed delivery is authorized like a
// routed one; a client that may subscribe to a filter but not receive a
// topic under it gets nothing.
func TestSubscribeReplayAuthorized(t *testing.T) {
	az := AuthorizerFunc(func(r *AuthzRequest) Decision {
		if r.Action == ActionReceive && r.Topic == "authz/secret" {
			return Decision{Reason: "not for you"}
		}
		return Decision{Allow: true}
	})
	s, addr := testServer(t, Config{Authorizer: az})
	b := dialRaw(t, addr, packet.V5)
	b.connect(v5connect("authz-b"))
	routeEarly(s, later("authz/secret", 0, "authz-a"), time.Now().Add(lateBy))
	routeEarly(s, later("authz/open", 0, "authz-a"), time.Now().Add(lateBy))
	got := publishes(b.subscribe(1, packet.Properties{}, packet.Subscription{Filter: "authz/#"}))
	if len(got) != 1 || got[0].Topic != "authz/open" {
		t.Fatalf("delivered %v, want authz/open alone", topicsOf(got))
	}
}

func topicsOf(ps []*packet.Publish) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Topic)
	}
	return out
}

// TestSubscribeReplayNoDuplicate: a message the session received through
// another subscription, or that routing delivered through the new one, is
// not delivered again.
func TestSubscribeReplayNoDuplicate(t *testing.T) {
	s, addr := testServer(t, Config{})
	b := dialRaw(t, addr, packet.V5)
	b.connect(v5connect("dup-b"))
	sess := s.lookup("dup-b")
	lapse := func() {
		// As if the fence's time had passed: the subscriptions so far
		// are old ones.
		sess.mu.Lock()
		sess.fence = nil
		sess.mu.Unlock()
	}

	// An older overlapping subscription received it.
	b.subscribe(1, packet.Properties{}, packet.Subscription{Filter: "dup/old/#"})
	lapse()
	routeEarly(s, later("dup/old/x", 0, "dup-a"), time.Now().Add(lateBy))
	if got := publishes(b.drain()); len(got) != 1 {
		t.Fatalf("routing delivered %d, want 1", len(got))
	}
	if got := publishes(b.subscribe(2, packet.Properties{}, packet.Subscription{Filter: "dup/old/x"})); len(got) != 0 {
		t.Fatalf("replayed %d through an older subscription's topic, want none", len(got))
	}

	// Routing delivered it through a subscription installed while the
	// fence stands (claimed), and a second subscription matches it.
	b.subscribe(3, packet.Properties{}, packet.Subscription{Filter: "dup/new/#"})
	routeEarly(s, later("dup/new/x", 0, "dup-a"), time.Now().Add(lateBy))
	if got := publishes(b.drain()); len(got) != 1 {
		t.Fatalf("routing delivered %d, want 1", len(got))
	}
	if got := publishes(b.subscribe(4, packet.Properties{}, packet.Subscription{Filter: "dup/new/+"})); len(got) != 0 {
		t.Fatalf("delivered again %d times, want none", len(got))
	}

	// Removed and made again: the older subscription had delivered it.
	b.subscribe(5, packet.Properties{}, packet.Subscription{Filter: "dup/re"})
	lapse()
	routeEarly(s, later("dup/re", 0, "dup-a"), time.Now().Add(lateBy))
	if got := publishes(b.drain()); len(got) != 1 {
		t.Fatalf("routing delivered %d, want 1", len(got))
	}
	b.send(&packet.Unsubscribe{PacketID: 6, Filters: []string{"dup/re"}})
	b.drain()
	if got := publishes(b.subscribe(7, packet.Properties{}, packet.Subscription{Filter: "dup/re"})); len(got) != 0 {
		t.Fatalf("replayed %d after unsubscribe and subscribe, want none", len(got))
	}

	// The same filter subscribed twice: one delivery.
	routeEarly(s, later("dup/twice", 0, "dup-a"), time.Now().Add(lateBy))
	got := publishes(b.subscribe(8, packet.Properties{}, packet.Subscription{Filter: "dup/twice"}))
	got = append(got, publishes(b.subscribe(9, packet.Properties{}, packet.Subscription{Filter: "dup/twice"}))...)
	if len(got) != 1 {
		t.Fatalf("delivered %d times, want 1", len(got))
	}
}

// TestSubscribeReplayRetainedOnce: a retained message that arrived after
// the SUBSCRIBE is delivered once, live, not a second time from the
// retained store; one that arrived before comes from the store, once.
func TestSubscribeReplayRetainedOnce(t *testing.T) {
	s, addr := testServer(t, Config{})
	b := dialRaw(t, addr, packet.V5)
	b.connect(v5connect("ret-b"))
	before := later("ret/before", 0, "ret-a")
	before.Retain = true
	routeEarly(s, before, time.Now().Add(-time.Millisecond))
	after := later("ret/after", 0, "ret-a")
	after.Retain = true
	routeEarly(s, after, time.Now().Add(lateBy))
	got := publishes(b.subscribe(1, packet.Properties{}, packet.Subscription{Filter: "ret/#"}))
	if len(got) != 2 {
		t.Fatalf("delivered %v, want ret/before and ret/after once each", topicsOf(got))
	}
	// Retained messages from the store come first, with the retain flag
	// [MQTT-3.3.1-9]; the live one after, without (no Retain As
	// Published) [MQTT-3.3.1-12].
	if got[0].Topic != "ret/before" || !got[0].Retain || got[1].Topic != "ret/after" || got[1].Retain {
		t.Fatalf("delivered %s (retain %v), %s (retain %v)", got[0].Topic, got[0].Retain, got[1].Topic, got[1].Retain)
	}

	// Stored as retained before the SUBSCRIBE is handled, routed only
	// after: sent from the store, not live a second time.
	slow := later("ret/slow", 0, "ret-a")
	slow.Retain = true
	slow.arrived = time.Now().UnixNano()
	s.recent.reserve(0, slow)
	s.retained.retain(slow, "")
	got = publishes(b.subscribe(2, packet.Properties{}, packet.Subscription{Filter: "ret/slow"}))
	s.recent.add(0, slow)
	s.deliver(slow, nil)
	got = append(got, publishes(b.drain())...)
	if len(got) != 1 || !got[0].Retain {
		t.Fatalf("delivered %d copies, want 1 from the store", len(got))
	}
}

// TestSubscribeReplaySharedSubscription: a shared subscription's group
// that did not exist when the message was routed receives it; a group
// whose other member received it does not.
func TestSubscribeReplaySharedSubscription(t *testing.T) {
	s, addr := testServer(t, Config{})
	b := dialRaw(t, addr, packet.V5)
	b.connect(v5connect("share-b"))
	routeEarly(s, later("shared/x", 1, "share-a"), time.Now().Add(lateBy))
	got := publishes(b.subscribe(1, packet.Properties{}, packet.Subscription{Filter: "$share/g/shared/#", QoS: 1}))
	if len(got) != 1 || got[0].QoS != 1 {
		t.Fatalf("delivered %v, want shared/x once at QoS 1", topicsOf(got))
	}
	b.send(&packet.Puback{PacketID: got[0].PacketID})

	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("share-c"))
	c.subscribe(1, packet.Properties{}, packet.Subscription{Filter: "$share/h/shared/#"})
	routeEarly(s, later("shared/y", 0, "share-a"), time.Now().Add(lateBy))
	if got := publishes(c.drain()); len(got) != 1 {
		t.Fatalf("the group's member received %d, want 1", len(got))
	}
	if got := publishes(b.drain()); len(got) != 1 {
		t.Fatalf("through its first group the session received %d, want 1", len(got))
	}
	if got := publishes(b.subscribe(2, packet.Properties{}, packet.Subscription{Filter: "$share/h/shared/#"})); len(got) != 0 {
		t.Fatalf("replayed %d to a group another member received it for, want none", len(got))
	}
}

// TestSubscribeFenceKeepsOrder: a message routed through the new
// subscription while the SUBSCRIBE is still being handled is held back
// and delivered after the older message the subscription missed, so
// messages of one publisher on one topic keep their order
// [MQTT-4.6.0-6].
func TestSubscribeFenceKeepsOrder(t *testing.T) {
	s, addr := testServer(t, Config{})
	b := dialRaw(t, addr, packet.V5)
	b.connect(v5connect("order-b"))
	sess := s.lookup("order-b")
	sess.mu.Lock()
	c := sess.conn
	sess.mu.Unlock()

	// The steps of handleSubscribe, driven from here: the connection's
	// reader is idle meanwhile.
	sf := &subscribeFence{c: c, at: time.Now().UnixNano()}
	first := later("order/t", 0, "order-a")
	first.Payload = []byte("1")
	routeEarly(s, first, time.Now().Add(lateBy)) // before the subscription
	sf.beforeInstall()
	sub := topic.Subscription{ClientID: "order-b", Filter: "order/t"}
	s.index.Subscribe(sub)
	sf.installed(sub, false)
	second := later("order/t", 0, "order-a")
	second.Payload = []byte("2")
	if n := routeEarly(s, second, time.Now().Add(lateBy+time.Millisecond)); n != 1 {
		t.Fatalf("routing found %d subscribers, want 1", n)
	}
	sf.scan()
	sf.finish()

	got := publishes(b.drain())
	if len(got) != 2 || string(got[0].Payload) != "1" || string(got[1].Payload) != "2" {
		var p []string
		for _, g := range got {
			p = append(p, string(g.Payload))
		}
		t.Fatalf("delivered %v, want [1 2]", p)
	}
	sess.mu.Lock()
	holding := sess.fence.holding
	sess.mu.Unlock()
	if holding {
		t.Fatal("still holding deliveries back")
	}
}

// TestFenceClaimsBounded: claims older than the record's window are
// forgotten, and a fence that reaches maxFenceClaims recent ones replays
// nothing more; a claimed message is still recognised.
func TestFenceClaimsBounded(t *testing.T) {
	sess := &session{}
	now := time.Now().UnixNano()
	f := sess.fenceLocked(now)
	// maxFenceClaims/2 per window, over eight windows.
	const n = 4 * maxFenceClaims
	for i := range n {
		m := &Message{recentID: uint64(i+1) << recentShardBits, arrived: now - 8*recentWindow + int64(i)*(8*recentWindow/n)}
		if !f.replayable(m, shareKey{}) {
			t.Fatal("a first replay was refused")
		}
	}
	if f.full {
		t.Fatal("full without a flood")
	}
	if c := len(f.claims); c > 2*maxFenceClaims {
		t.Fatalf("%d claims kept, want at most %d", c, 2*maxFenceClaims)
	}
	// A flood within the window fills the fence.
	for i := range 3 * maxFenceClaims {
		f.replayable(&Message{recentID: uint64(n+i+1) << recentShardBits, arrived: now + int64(i)}, shareKey{})
	}
	if !f.full {
		t.Fatal("not full after a flood")
	}
	if c := len(f.claims); c > maxFenceClaims {
		t.Fatalf("%d claims kept, want at most %d", c, maxFenceClaims)
	}
	// Routing drops a replayed message it is late to deliver.
	late := &Message{recentID: uint64(n+1) << recentShardBits, arrived: now}
	if f.admit(sess, late, 0, false, nil, nil) {
		t.Fatal("a replayed message was delivered again")
	}
}
