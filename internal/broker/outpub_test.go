package broker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
	"weak"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// fanoutSub is one subscriber of TestFanoutSharedEncodings: its protocol,
// its subscriptions and what it asks of the server in CONNECT.
type fanoutSub struct {
	name     string
	v        packet.Version
	subs     []packet.Subscription // all with the same identifier, id
	id       uint32                // subscription identifier (5.0), 0 none
	aliasMax uint16                // Topic Alias Maximum (5.0)
	maxSize  uint32                // Maximum Packet Size (5.0), 0 none
}

// TestFanoutSharedEncodings routes messages to subscribers that need
// different bytes (protocol versions, QoS downgrades, retain as
// published, subscription identifiers, outbound topic aliases, a maximum
// packet size) and several that need the same, and checks every PUBLISH
// each receives against the packet the specification gives it. Shared
// encodings must never leak one subscriber's options into another's
// packet.
func TestFanoutSharedEncodings(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	_, addr := testServer(t, Config{Now: func() time.Time { return now }})
	sub := func(filter string, qos byte, rap bool) packet.Subscription {
		return packet.Subscription{Filter: filter, QoS: qos, RetainAsPublished: rap}
	}
	subs := []fanoutSub{
		{name: "v311-q0", v: packet.V311, subs: []packet.Subscription{sub("fan/#", 0, false)}},
		{name: "v311-q0-b", v: packet.V311, subs: []packet.Subscription{sub("fan/+", 0, false)}},
		{name: "v311-q2", v: packet.V311, subs: []packet.Subscription{sub("fan/#", 2, false)}},
		{name: "v31-q1", v: packet.V31, subs: []packet.Subscription{sub("fan/#", 1, false)}},
		{name: "v5-q0", v: packet.V5, subs: []packet.Subscription{sub("fan/#", 0, false)}},
		{name: "v5-q0-rap", v: packet.V5, subs: []packet.Subscription{sub("fan/#", 0, true)}},
		{name: "v5-q1-id5-rap", v: packet.V5, id: 5, subs: []packet.Subscription{sub("fan/#", 1, true)}},
		{name: "v5-q1-id5-rap-b", v: packet.V5, id: 5, subs: []packet.Subscription{sub("fan/#", 1, true)}},
		{name: "v5-q1-id5", v: packet.V5, id: 5, subs: []packet.Subscription{sub("fan/#", 1, false)}},
		{name: "v5-q1-id6", v: packet.V5, id: 6, subs: []packet.Subscription{sub("fan/#", 1, false)}},
		{name: "v5-q2-two-filters", v: packet.V5, id: 7, subs: []packet.Subscription{sub("fan/#", 2, true), sub("fan/+", 1, false)}},
		{name: "v5-q0-alias", v: packet.V5, aliasMax: 4, subs: []packet.Subscription{sub("fan/#", 0, false)}},
		{name: "v5-q1-alias", v: packet.V5, aliasMax: 4, subs: []packet.Subscription{sub("fan/#", 1, false)}},
		{name: "v5-small", v: packet.V5, maxSize: 40, subs: []packet.Subscription{sub("fan/#", 1, false)}},
	}
	clients := make([]*rawClient, len(subs))
	for i, s := range subs {
		c := dialRaw(t, addr, s.v)
		cp := &packet.Connect{ClientID: s.name, CleanStart: true, KeepAlive: 30}
		if s.aliasMax > 0 {
			cp.Properties.SetTopicAliasMaximum(s.aliasMax)
		}
		if s.maxSize > 0 {
			cp.Properties.SetMaximumPacketSize(s.maxSize)
		}
		if ack := c.connect(cp); ack.ReasonCode != packet.Success {
			t.Fatalf("%s: CONNACK %v", s.name, ack.ReasonCode)
		}
		sp := &packet.Subscribe{PacketID: 1, Subscriptions: s.subs}
		if s.id != 0 {
			sp.Properties.SubscriptionIDs = []uint32{s.id}
		}
		c.send(sp)
		if _, ok := c.recv().(*packet.Suback); !ok {
			t.Fatalf("%s: expected SUBACK", s.name)
		}
		clients[i] = c
	}

	pub := dialRaw(t, addr, packet.V5)
	pub.connect(&packet.Connect{ClientID: "fan-pub", CleanStart: true, KeepAlive: 30})
	type sent struct{ p *packet.Publish }
	var msgs []sent
	for i, m := range []struct {
		topic  string
		qos    byte
		retain bool
		expiry uint32
	}{
		{"fan/a", 2, true, 3600},
		{"fan/a", 1, false, 0},
		{"fan/b", 0, true, 0},
		{"fan/a/deep", 2, false, 10},
	} {
		p := &packet.Publish{Topic: m.topic, QoS: m.qos, Retain: m.retain, Payload: fmt.Appendf(nil, "payload %d", i)}
		if m.qos > 0 {
			p.PacketID = uint16(i + 1)
		}
		p.Properties.SetContentType("text/plain")
		p.Properties.User = []packet.UserProperty{{Key: "k", Value: "v"}}
		if m.expiry > 0 {
			p.Properties.SetMessageExpiry(m.expiry)
		}
		pub.send(p)
		switch m.qos {
		case 1:
			if _, ok := pub.recv().(*packet.Puback); !ok {
				t.Fatal("expected PUBACK")
			}
		case 2:
			if _, ok := pub.recv().(*packet.Pubrec); !ok {
				t.Fatal("expected PUBREC")
			}
			pub.send(&packet.Pubrel{PacketID: p.PacketID})
			if _, ok := pub.recv().(*packet.Pubcomp); !ok {
				t.Fatal("expected PUBCOMP")
			}
		}
		msgs = append(msgs, sent{p: p})
	}

	for i, s := range subs {
		c := clients[i]
		aliases := map[uint16]string{}
		pids := map[uint16]bool{}
		var wants []*packet.Publish
		for _, m := range msgs {
			if want := expectedPublish(s, m.p); want != nil {
				wants = append(wants, want)
			}
		}
		for len(wants) > 0 {
			var p *packet.Publish
			switch q := c.recv().(type) {
			case *packet.Pubrel:
				c.send(&packet.Pubcomp{PacketID: q.PacketID})
				continue
			case *packet.Publish:
				p = q
			default:
				t.Fatalf("%s: unexpected %s", s.name, q.Type())
			}
			want := wants[0]
			wants = wants[1:]
			if p.Properties.Has(packet.PropTopicAlias) {
				if s.aliasMax == 0 {
					t.Fatalf("%s: topic alias it did not allow", s.name)
				}
				if p.Topic != "" {
					aliases[p.Properties.TopicAlias] = p.Topic
				} else {
					p.Topic = aliases[p.Properties.TopicAlias]
				}
				p.Properties.Unmark(packet.PropTopicAlias)
			}
			if p.QoS > 0 {
				if p.PacketID == 0 || pids[p.PacketID] {
					t.Fatalf("%s: packet identifier %d reused or zero", s.name, p.PacketID)
				}
				pids[p.PacketID] = true
				want.PacketID = p.PacketID
			}
			slices.Sort(p.Properties.SubscriptionIDs)
			got, _ := packet.Append(nil, p, s.v)
			exp, err := packet.Append(nil, want, s.v)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, exp) {
				t.Errorf("%s: message %q:\ngot  %+v\nwant %+v", s.name, want.Payload, p, want)
			}
			switch p.QoS {
			case 1:
				c.send(&packet.Puback{PacketID: p.PacketID})
			case 2:
				c.send(&packet.Pubrec{PacketID: p.PacketID})
			}
		}
		for {
			q, err := c.recvErr(quiet)
			if err != nil {
				break
			}
			rel, ok := q.(*packet.Pubrel)
			if !ok {
				t.Fatalf("%s: unexpected %s", s.name, q.Type())
			}
			c.send(&packet.Pubcomp{PacketID: rel.PacketID})
		}
	}
}

// expectedPublish returns the PUBLISH the specification gives subscriber
// s for the message p (packet identifier left 0), or nil when s does not
// receive it.
func expectedPublish(s fanoutSub, p *packet.Publish) *packet.Publish {
	var qos byte
	rap, matched := false, false
	for _, sub := range s.subs {
		if !topicMatches(sub.Filter, p.Topic) {
			continue
		}
		matched = true
		qos = max(qos, sub.QoS)
		rap = rap || sub.RetainAsPublished
	}
	if !matched {
		return nil
	}
	want := &packet.Publish{Topic: p.Topic, QoS: min(qos, p.QoS), Retain: p.Retain && rap, Payload: p.Payload}
	if s.v == packet.V5 {
		want.Properties.SetContentType(p.Properties.ContentType)
		want.Properties.User = p.Properties.User
		if p.Properties.Has(packet.PropMessageExpiry) {
			// The test's clock stands still: all of it remains.
			want.Properties.SetMessageExpiry(p.Properties.MessageExpiry)
		}
		if s.id != 0 {
			for _, sub := range s.subs {
				if topicMatches(sub.Filter, p.Topic) {
					want.Properties.SubscriptionIDs = append(want.Properties.SubscriptionIDs, s.id)
				}
			}
		}
	}
	if want.QoS > 0 {
		want.PacketID = 1
	}
	if s.maxSize > 0 {
		if n, _ := packet.Size(want, s.v); uint32(n) > s.maxSize {
			return nil // [MQTT-3.1.2-25]
		}
	}
	want.PacketID = 0
	return want
}

// topicMatches is a plain matcher for the test's filters ("#" and "+").
func topicMatches(filter, topic string) bool {
	f, t := splitLevels(filter), splitLevels(topic)
	for i, l := range f {
		if l == "#" {
			return true
		}
		if i >= len(t) || (l != "+" && l != t[i]) {
			return false
		}
	}
	return len(f) == len(t)
}

func splitLevels(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '/' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// TestSharedEncodingResend checks a QoS 1 message that went in flight with
// a shared encoding and was not acknowledged: resent with DUP and the same
// packet identifier on the next connection, in that connection's protocol
// version.
func TestSharedEncodingResend(t *testing.T) {
	srv, addr := testServer(t, Config{})
	for _, next := range []packet.Version{packet.V5, packet.V311} {
		t.Run(next.String(), func(t *testing.T) {
			filter := "rs/" + next.String()
			a := dialRaw(t, addr, packet.V5)
			aID := "rs-a-" + next.String()
			a.connect(connectV5(aID, true, withExpiry(600)))
			b := dialRaw(t, addr, packet.V5)
			b.connect(connectV5("rs-b-"+next.String(), true, nil))
			for _, c := range []*rawClient{a, b} {
				c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: filter, QoS: 1}}})
				c.recv()
			}
			pub := dialRaw(t, addr, packet.V5)
			pub.connect(connectV5("rs-pub-"+next.String(), true, nil))
			m := &packet.Publish{Topic: filter, Payload: []byte("once")}
			m.Properties.User = []packet.UserProperty{{Key: "k", Value: "v"}}
			publishAcked(t, pub, 1, m)

			want := &packet.Publish{Topic: filter, QoS: 1, Payload: []byte("once")}
			want.Properties.User = m.Properties.User
			firstA, ok := a.recv().(*packet.Publish)
			if !ok || firstA.Dup {
				t.Fatalf("first send: %+v", firstA)
			}
			firstB, ok := b.recv().(*packet.Publish)
			if !ok || firstB.Dup {
				t.Fatalf("first send to the other subscriber: %+v", firstB)
			}
			b.send(&packet.Puback{PacketID: firstB.PacketID})

			// A goes away without acknowledging and comes back.
			a.nc.Close()
			waitOffline(t, srv, aID)
			a2 := dialRaw(t, addr, next)
			if ack := a2.connect(&packet.Connect{ClientID: aID, KeepAlive: 30}); !ack.SessionPresent {
				t.Fatal("session not resumed")
			}
			again, ok := a2.recv().(*packet.Publish)
			if !ok {
				t.Fatal("expected the resend")
			}
			want.Dup, want.PacketID = true, firstA.PacketID
			got, _ := packet.Append(nil, again, next)
			exp, _ := packet.Append(nil, want, next)
			if !bytes.Equal(got, exp) {
				t.Fatalf("resend in %s:\ngot  %+v\nwant %+v", next, again, want)
			}
			a2.send(&packet.Puback{PacketID: again.PacketID})
			expectNone(t, a2)
			a2.send(&packet.Disconnect{})
		})
	}
}

// TestSharedEncodingsReleased checks that a message routed to many
// subscribers, and its shared encodings, are garbage once every
// subscriber has received it: nothing (the routing buffers' pool, the
// writers' buffers) keeps them.
func TestSharedEncodingsReleased(t *testing.T) {
	s, addr := testServer(t, Config{})
	const n = 20
	var conns []*rawClient
	for i := range n {
		c := dialRaw(t, addr, packet.V311)
		c.connect(&packet.Connect{ClientID: fmt.Sprintf("rel-%d", i), CleanStart: true})
		c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "rel/+", QoS: byte(i % 2)}}})
		c.recv()
		conns = append(conns, c)
	}
	payload := bytes.Repeat([]byte("x"), 100)
	msg := newMessage(&packet.Publish{Topic: "rel/x", QoS: 1, Payload: payload}, "rel-pub", time.Now())
	wp := weak.Make(msg)
	if got := s.publish(msg); got != n {
		t.Fatalf("routed to %d sessions, want %d", got, n)
	}
	msg = nil
	for _, c := range conns {
		p, ok := c.recv().(*packet.Publish)
		if !ok || !bytes.Equal(p.Payload, payload) {
			t.Fatalf("expected the PUBLISH, got %+v", p)
		}
		if p.QoS == 1 {
			c.send(&packet.Puback{PacketID: p.PacketID})
		}
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		runtime.GC()
		if wp.Value() != nil {
			return io.ErrNoProgress
		}
		return nil
	})
}

// TestSharedEncodingExpiryMoves checks the writer's side of a shared QoS 0
// encoding whose Message Expiry Interval has moved on while it waited:
// that connection gets the interval remaining when it is written
// [MQTT-3.3.2-6], the others the shared bytes.
func TestSharedEncodingExpiryMoves(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := t0
	s, err := New(Config{Now: func() time.Time { return now }, SysInterval: -1, AllowAnonymous: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	p := &packet.Publish{Topic: "exp/x", Payload: []byte("p")}
	p.Properties.SetMessageExpiry(10)
	msg := newMessage(p, "pub", t0)
	var es encSet
	es.reset(msg, nil, clock{now: s.cfg.Now}, 2)
	e := es.get(packet.V5, 0, false, []uint32{3})
	if e == nil || e.expiry != 10 {
		t.Fatalf("shared encoding %+v", e)
	}
	if again := es.get(packet.V5, 0, false, []uint32{3}); again != e {
		t.Fatal("the same options got a second encoding")
	}
	if other := es.get(packet.V311, 0, false, []uint32{3}); other == e || other == nil || other.subIDs != nil {
		t.Fatalf("3.1.1 encoding %+v", other)
	}

	a, _ := netPipe(t)
	c := s.newConn(a, &listenerState{name: "test"})
	c.version = packet.V5
	for _, tc := range []struct {
		after  time.Duration
		expiry uint32
	}{{0, 10}, {999 * time.Millisecond, 10}, {3500 * time.Millisecond, 7}, {20 * time.Second, 0}} {
		now = t0.Add(tc.after)
		c.wclk = clock{now: s.cfg.Now}
		out, err := c.appendShared(nil, e)
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := packet.Decode(out, packet.V5, 0)
		if err != nil {
			t.Fatal(err)
		}
		gp := got.(*packet.Publish)
		if gp.Properties.MessageExpiry != tc.expiry || !slices.Equal(gp.Properties.SubscriptionIDs, []uint32{3}) {
			t.Errorf("after %v: %+v, want expiry %d", tc.after, gp.Properties, tc.expiry)
		}
		if tc.expiry == 10 && !bytes.Equal(out, e.b) {
			t.Errorf("after %v: not the shared bytes", tc.after)
		}
	}
	if !bytes.Equal(e.b[:2], []byte{0x30, byte(len(e.b) - 2)}) {
		t.Fatalf("shared bytes changed: % x", e.b)
	}
}

// netPipe returns the two ends of an in-memory connection, closed when
// the test ends.
func netPipe(t *testing.T) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestHeldWritersStartBeforeReaderWaits: a publisher's reader holds the
// subscribers' writers back only while complete packets wait in its read
// buffer. Messages followed by part of a packet, by nothing, or by the
// end of the connection reach the subscribers without waiting for more
// input.
func TestHeldWritersStartBeforeReaderWaits(t *testing.T) {
	_, addr := testServer(t, Config{})
	var subs []*rawClient
	for i := range 3 {
		c := dialRaw(t, addr, packet.V311)
		c.connect(&packet.Connect{ClientID: fmt.Sprintf("held-sub-%d", i), CleanStart: true})
		c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "held/#", QoS: byte(i % 2)}}})
		c.recv()
		subs = append(subs, c)
	}
	burst := func(from, n int) []byte {
		var b []byte
		for i := from; i < from+n; i++ {
			b, _ = packet.Append(b, &packet.Publish{Topic: "held/x", Payload: fmt.Appendf(nil, "m%d", i)}, packet.V311)
		}
		return b
	}
	expect := func(from, n int) {
		t.Helper()
		for _, c := range subs {
			for i := from; i < from+n; i++ {
				p, ok := c.recv().(*packet.Publish)
				if !ok || string(p.Payload) != fmt.Sprintf("m%d", i) {
					t.Fatalf("expected m%d, got %+v", i, p)
				}
				if p.QoS == 1 {
					c.send(&packet.Puback{PacketID: p.PacketID})
				}
			}
		}
	}
	pub := dialRaw(t, addr, packet.V311)
	pub.connect(&packet.Connect{ClientID: "held-pub", CleanStart: true})

	// Ten messages and the first bytes of an eleventh, in one write.
	next := burst(10, 1)
	pub.write(append(burst(0, 10), next[:4]...))
	expect(0, 10)
	pub.write(next[4:])
	expect(10, 1)

	// A burst and nothing after it.
	pub.write(burst(11, 20))
	expect(11, 20)

	// A burst, and the publisher goes away.
	pub.write(burst(31, 20))
	pub.nc.Close()
	expect(31, 20)
	for _, c := range subs {
		expectNone(t, c)
	}
}

// TestFanoutBurstsAllDelivered sends bursts of QoS 0 and QoS 1 messages
// to many subscribers over TCP, so that the publisher's reader holds the
// subscribers' writers back while writers are running: every subscriber
// must receive every message, in order. Large payloads are written in
// place from the shared encoding (writev), between the packet
// identifiers each connection patches.
func TestFanoutBurstsAllDelivered(t *testing.T) {
	for _, tc := range []struct {
		name             string
		subs, msgs, size int
	}{
		{"small", 40, 2000, 0},
		{"writev", 8, 200, writevMin + 500},
	} {
		t.Run(tc.name, func(t *testing.T) { fanoutBursts(t, tc.subs, tc.msgs, tc.size) })
	}
}

func fanoutBursts(t *testing.T, subs, msgs, size int) {
	_, addr := testServer(t, Config{MaxInflight: 65535})
	payload := func(n int) []byte {
		b := fmt.Appendf(nil, "%d.", n)
		for len(b) < size {
			b = append(b, byte('a'+len(b)%26))
		}
		return b
	}
	type got struct {
		n   int
		err error
	}
	results := make(chan got, subs)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	for i := range subs {
		v := packet.V311
		if i%3 == 2 {
			v = packet.V5
		}
		c := dialRaw(t, addr, v)
		c.connect(&packet.Connect{ClientID: fmt.Sprintf("burst-sub-%d", i), CleanStart: true})
		c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "burst/+", QoS: byte(i % 2)}}})
		c.recv()
		wg.Go(func() {
			var acks []byte
			for n := 0; n < msgs; n++ {
				p, err := c.recvErr(10 * time.Second)
				if err != nil {
					results <- got{n, err}
					return
				}
				pub, ok := p.(*packet.Publish)
				if !ok || !bytes.Equal(pub.Payload, payload(n)) || pub.Topic != "burst/x" {
					results <- got{n, fmt.Errorf("message %d: got %+v", n, p)}
					return
				}
				if pub.QoS == 1 {
					acks, _ = packet.Append(acks[:0], &packet.Puback{PacketID: pub.PacketID}, v)
					c.nc.Write(acks)
				}
			}
			results <- got{msgs, nil}
		})
	}
	pub := dialRaw(t, addr, packet.V311)
	pub.connect(&packet.Connect{ClientID: "burst-pub", CleanStart: true})
	wg.Go(func() { io.Copy(io.Discard, pub.nc) }) // its PUBACKs are not looked at
	var buf []byte
	for n := range msgs {
		buf, _ = packet.Append(buf, &packet.Publish{Topic: "burst/x", QoS: byte(n % 2), PacketID: uint16(n%2) * uint16(n%60000+1), Payload: payload(n)}, packet.V311)
		if len(buf) > 8<<10 || n == msgs-1 {
			pub.write(buf)
			buf = buf[:0]
		}
	}
	for range subs {
		if r := <-results; r.err != nil {
			t.Fatalf("a subscriber received %d of %d: %v", r.n, msgs, r.err)
		}
	}
}

// TestOfferToEndedSession: a routing pass may find a session through a
// subscription that its end has not removed yet; it delivers nothing
// there, and the queue gauge does not move.
func TestOfferToEndedSession(t *testing.T) {
	s, err := New(Config{SysInterval: -1, AllowAnonymous: true, QueueQoS0: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	sess := newSession("gone", sessionOwner{key: "anon:test"}, time.Now())
	msg := newMessage(&packet.Publish{Topic: "t", QoS: 1, PacketID: 1, Payload: []byte("x")}, "pub", time.Now())
	var es encSet
	es.reset(msg, nil, clock{now: s.cfg.Now}, 2)
	if !sess.offer(s, &es, 1, false, nil, nil, nil, nil) || sess.queue.len() != 1 {
		t.Fatalf("an offline session did not queue the message: %d queued", sess.queue.len())
	}
	s.sessMu.Lock()
	s.endSessionLocked(sess)
	s.sessMu.Unlock()
	queued := s.stats.queued.Load()
	if sess.offer(s, &es, 1, false, nil, nil, nil, nil) || sess.queue.len() != 0 || s.stats.queued.Load() != queued {
		t.Fatalf("an ended session took the message: %d queued, gauge %d -> %d", sess.queue.len(), queued, s.stats.queued.Load())
	}
}

// TestFanoutAllocationsPerMessage: routing a QoS 0 message allocates per
// message (its shared encoding), not per subscriber. The subscribers'
// writers are held back during the measurement, as a publisher's reader
// holds them, so that only routing is counted.
func TestFanoutAllocationsPerMessage(t *testing.T) {
	s, addr := testServer(t, Config{})
	const subs = 200
	var conns []*conn
	for i := range subs {
		c := dialRaw(t, addr, packet.V311)
		id := fmt.Sprintf("alloc-sub-%d", i)
		c.connect(&packet.Connect{ClientID: id, CleanStart: true})
		c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "alloc/+", QoS: 0}}})
		c.recv()
		sess := s.lookup(id)
		sess.mu.Lock()
		conns = append(conns, sess.conn)
		sess.mu.Unlock()
	}
	// Each subscriber's QoS 0 backlog takes every message (the writers
	// are held): it stays under the pushback mark (100), past which the
	// publisher would be put in line at each subscriber, which is not
	// what is measured here.
	const runs = 50
	for _, c := range conns {
		c.outMu.Lock()
		c.out = make([]packet.Packet, 0, 2*runs) // the queues' growth is not routing's
		c.outMu.Unlock()
	}
	from := &conn{kicks: make([]*conn, 0, subs)} // a publisher's reader holding the writers
	msg := newMessage(&packet.Publish{Topic: "alloc/x", Payload: make([]byte, 64)}, "pub", time.Now())
	s.deliverFrom(msg, nil, from) // warms the routing buffers up
	allocs := testing.AllocsPerRun(runs, func() { s.deliverFrom(msg, nil, from) })
	from.kickWriters()
	// The shared encoding and its bytes; nothing per subscriber.
	if allocs > 2 && !raceEnabled {
		t.Fatalf("routing a message to %d subscribers allocated %.1f times", subs, allocs)
	}
}
