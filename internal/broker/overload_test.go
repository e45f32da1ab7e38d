package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/listener"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// Overload control (overload.go): publishers are held back instead of the
// broker queueing without bound. These tests assert bounds on what the
// broker reads and holds, never timings; the wait after which a
// subscriber counts as slow runs on a fake clock.

// flood writes n PUBLISH packets from a goroutine, as a client that does
// not wait for acknowledgements (only its socket's buffers slow it
// down). Packet i has the payload "<tag> <i>" padded to size bytes and
// packet identifier i+1 for QoS > 0. The returned function closes the
// connection, if still needed, and waits for the goroutine.
func flood(t *testing.T, c *rawClient, topic, tag string, qos byte, n, size int) (wait func()) {
	t.Helper()
	return startFlood(c, floodPackets(t, c.v, topic, tag, qos, n, size))
}

func floodPackets(t *testing.T, v packet.Version, topic, tag string, qos byte, n, size int) []byte {
	t.Helper()
	var buf []byte
	for i := range n {
		payload := []byte(tag + " " + strconv.Itoa(i))
		if len(payload) < size {
			payload = append(payload, strings.Repeat(".", size-len(payload))...)
		}
		p := &packet.Publish{Topic: topic, QoS: qos, Payload: payload}
		if qos > 0 {
			p.PacketID = uint16(i + 1)
		}
		var err error
		if buf, err = packet.Append(buf, p, v); err != nil {
			t.Fatal(err)
		}
	}
	return buf
}

func startFlood(c *rawClient, buf []byte) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.nc.SetWriteDeadline(time.Time{})
		c.nc.Write(buf) // ends early when the test closes the connection
	}()
	return func() {
		c.nc.Close()
		<-done
	}
}

// seqOf returns the tag and the number of a payload written by flood.
func seqOf(t *testing.T, p *packet.Publish) (string, int) {
	t.Helper()
	tag, n, err := parseSeq(p.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return tag, n
}

func parseSeq(payload []byte) (string, int, error) {
	tag, rest, _ := strings.Cut(strings.TrimRight(string(payload), "."), " ")
	n, err := strconv.Atoi(rest)
	if err != nil {
		return "", 0, fmt.Errorf("payload %q", payload)
	}
	return tag, n, nil
}

// bigPacket is a payload size that makes every PUBLISH larger than the
// broker's read buffer, so that each one is read from the socket on its
// own: a held client handles what its read buffer holds before it waits,
// and tests that count messages exactly use packets that fill it alone.
const bigPacket = 2 << 10

// recvAck receives a PUBLISH and acknowledges it at QoS 1.
func recvAck(t *testing.T, c *rawClient) *packet.Publish {
	t.Helper()
	p := recvPublish(t, c)
	if p.QoS == 1 {
		c.send(&packet.Puback{PacketID: p.PacketID})
	}
	return p
}

// backlog returns the length and bytes of a session's queue and the QoS
// 0 messages waiting on its connection.
func backlog(srv *Server, id string) (queued int, bytes int64, qos0 int) {
	sess := srv.lookup(id)
	sess.mu.Lock()
	defer sess.mu.Unlock()
	queued, bytes = sess.queue.len(), sess.queueBytes
	if c := sess.conn; c != nil {
		c.outMu.Lock()
		qos0 = c.outQ0
		c.outMu.Unlock()
	}
	return
}

// waitHeld waits until n publishers are held back, and (id not empty)
// one of them at the gate of session id's queue.
func waitHeld(t *testing.T, srv *Server, n int64, id string) {
	t.Helper()
	testutil.CheckFor(t, 5*time.Second, func() error {
		if got := srv.Stats().PublishersHeld; got != n {
			return fmt.Errorf("%d publishers held, want %d", got, n)
		}
		if id == "" {
			return nil
		}
		sess := srv.lookup(id)
		sess.mu.Lock()
		defer sess.mu.Unlock()
		if len(sess.gate.waiters) == 0 {
			return errors.New("nobody waits for " + id)
		}
		return nil
	})
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestOverloadBoundedQueueAndMemory: a publisher floods a subscriber that
// reads nothing. Once the subscriber's queue reaches the mark, the broker
// stops reading the publisher: it has read no more than the subscriber's
// window and the mark, and its heap has not grown by what the publisher
// wrote. When the subscriber reads, every message arrives, in order, and
// the queue never passed the mark by more than the one message the
// publisher had read when it found the mark reached (each of its packets
// is larger than the read buffer).
func TestOverloadBoundedQueueAndMemory(t *testing.T) {
	const mark, window, n, size = 10, 2, 5000, 4000
	clk := newFakeClock() // never advanced: nobody is found slow
	srv, addr := testServer(t, Config{Clock: clk, PushbackMessages: mark, MaxQueued: 100000})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(connectV5("sub", true, func(p *packet.Properties) { p.SetReceiveMaximum(window) }))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 1})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))

	buf := floodPackets(t, pub.v, "t", "p", 1, n, size)
	before := heapInUse()
	wait := startFlood(pub, buf)
	defer wait()
	waitHeld(t, srv, 1, "sub")
	st := srv.Stats()
	if q, _, _ := backlog(srv, "sub"); q > mark+1 || st.MessagesReceived > window+mark+1 {
		t.Fatalf("held with %d queued and %d messages read; want at most %d and %d", q, st.MessagesReceived, mark+1, window+mark+1)
	}
	// The publisher wrote n × 4 KB = 20 MB; the broker must not hold it.
	if grew := int64(heapInUse()) - int64(before); grew > 4<<20 {
		t.Fatalf("heap grew by %d bytes while the publisher was held", grew)
	}
	for i := range n {
		p := recvAck(t, sub)
		if _, seq := seqOf(t, p); seq != i {
			t.Fatalf("message %d arrived as number %d", seq, i)
		}
		if q, _, _ := backlog(srv, "sub"); q > mark+1 {
			t.Fatalf("queue at %d, mark %d", q, mark)
		}
	}
	st = srv.Stats()
	if st.DroppedQueueFull != 0 || st.SlowSubscribers != 0 || st.Pushbacks == 0 {
		t.Fatalf("dropped %d, slow %d, pushbacks %d; want 0, 0 and some", st.DroppedQueueFull, st.SlowSubscribers, st.Pushbacks)
	}
}

// TestOverloadFairPublishers: two publishers flood one subscriber and
// are both held. Each acknowledgement frees one place in the queue and
// lets the publisher that waited longest route one more message, so they
// take turns: once the queue holds only messages routed that way, the
// deliveries alternate between them. The test waits for each message to
// be routed before it acknowledges the next one, so that the order does
// not depend on which reader the scheduler runs first.
func TestOverloadFairPublishers(t *testing.T) {
	const mark, n, steps = 10, 300, 100
	srv, addr := testServer(t, Config{Clock: newFakeClock(), PushbackMessages: mark})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(connectV5("sub", true, func(p *packet.Properties) { p.SetReceiveMaximum(1) }))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 1})
	for _, id := range []string{"a", "b"} {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect(id))
		defer flood(t, c, "t", id, 1, n, bigPacket)()
	}
	waitHeld(t, srv, 2, "sub")
	routed := int(srv.Stats().MessagesReceived)
	if routed > 1+mark+2 {
		t.Fatalf("%d routed before both publishers were held; want at most %d", routed, 1+mark+2)
	}
	next := map[string]int{}
	var tags []string
	for acked := 1; acked <= steps; acked++ {
		tag, seq := seqOf(t, recvAck(t, sub))
		if seq != next[tag] {
			t.Fatalf("publisher %s: message %d arrived after %d", tag, seq, next[tag]-1)
		}
		next[tag]++
		tags = append(tags, tag)
		// Once the acknowledgement is handled, one message is in flight
		// and the queue is at the mark again, refilled by the publisher
		// let go, which waits again; or, while the queue was over the
		// mark, nobody was let go.
		routed = max(routed, acked+1+mark)
		testutil.CheckFor(t, 5*time.Second, func() error {
			st := srv.Stats()
			q, _, _ := backlog(srv, "sub")
			if int(st.MessagesReceived) != routed || st.PublishersHeld != 2 || q != routed-acked-1 {
				return fmt.Errorf("%d routed, %d held, %d queued; want %d, 2, %d", st.MessagesReceived, st.PublishersHeld, q,
					routed, routed-acked-1)
			}
			return nil
		})
	}
	// The first deliveries were queued before both publishers were held
	// (the window, the mark and one message per publisher).
	for i := 1 + mark + 2; i < steps; i++ {
		if tags[i] == tags[i-1] {
			t.Fatalf("deliveries %d and %d both from publisher %s: %v", i-1, i, tags[i], tags)
		}
	}
}

// readAcked reads n PUBLISH packets on c on a goroutine of its own,
// acknowledging each, and hands them over on the first channel, closed
// once n arrived or reading failed; the failure is on the second.
func readAcked(c *rawClient, n int) (<-chan *packet.Publish, <-chan error) {
	got := make(chan *packet.Publish, n)
	readErr := make(chan error, 1)
	go func() {
		defer close(got)
		for range n {
			p, err := c.recvErr(10 * time.Second)
			if err != nil {
				readErr <- err
				return
			}
			pp, ok := p.(*packet.Publish)
			if !ok {
				readErr <- fmt.Errorf("got %s", p.Type())
				return
			}
			b, _ := packet.Append(nil, &packet.Puback{PacketID: pp.PacketID}, packet.V5)
			c.nc.Write(b)
			got <- pp
		}
	}()
	return got, readErr
}

// TestOverloadSlowSubscriberDoesNotStallFast: one publisher, a fast
// subscriber and one that reads nothing. The publisher is held back for
// the slow one at first; once that has lasted PushbackWait (the fake
// clock), the slow subscriber is marked slow and the publisher goes on:
// the fast subscriber receives everything, the slow one's queue fills to
// MaxQueued and the rest is dropped for it (the drop policy), counted.
func TestOverloadSlowSubscriberDoesNotStallFast(t *testing.T) {
	const n, maxQueued, slowWindow = 200, 50, 2
	clk := newFakeClock()
	srv, addr := testServer(t, Config{Clock: clk, PushbackMessages: 5, MaxQueued: maxQueued, MaxInflight: 100})
	slow := dialRaw(t, addr, packet.V5)
	slow.connect(connectV5("slow", true, func(p *packet.Properties) { p.SetReceiveMaximum(slowWindow) }))
	subscribe(t, slow, 1, packet.Subscription{Filter: "t", QoS: 1})
	fast := dialRaw(t, addr, packet.V5)
	fast.connect(v5connect("fast"))
	subscribe(t, fast, 1, packet.Subscription{Filter: "t", QoS: 1})

	// The fast subscriber reads and acknowledges on its own goroutine.
	got, readErr := readAcked(fast, n)
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))
	wait := flood(t, pub, "t", "p", 1, n, 16)
	defer wait()

	waitHeld(t, srv, 1, "slow")
	if st := srv.Stats(); st.MessagesReceived >= n {
		t.Fatalf("publisher not held: %d read", st.MessagesReceived)
	}
	clk.advance(DefaultPushbackWait)
	i := 0
	for p := range got {
		_, seq, err := parseSeq(p.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if seq != i {
			t.Fatalf("fast subscriber: message %d arrived as number %d", seq, i)
		}
		i++
	}
	select {
	case err := <-readErr:
		t.Fatalf("fast subscriber after %d messages: %v", i, err)
	default:
	}
	st := srv.Stats()
	if want := int64(n - slowWindow - maxQueued); st.SlowSubscribers != 1 || st.DroppedQueueFull != want {
		t.Fatalf("slow subscribers %d, dropped %d; want 1 and %d", st.SlowSubscribers, st.DroppedQueueFull, want)
	}
	// The slow subscriber gets what was queued for it, oldest first.
	for i := range slowWindow + maxQueued {
		if _, seq := seqOf(t, recvAck(t, slow)); seq != i {
			t.Fatalf("slow subscriber: message %d arrived as number %d", seq, i)
		}
	}
	expectNone(t, slow)
}

// TestOverloadQueueFullPolicy: with holding back at the mark off, a
// subscriber that reads nothing fills its queue. QueueDrop drops the
// rest for it, counted; QueueBlock holds the publisher back at the full
// queue, for any time (the fake clock passes many PushbackWaits), and
// loses nothing.
func TestOverloadQueueFullPolicy(t *testing.T) {
	const n, maxQueued, window = 200, 20, 2
	for _, policy := range []QueuePolicy{QueueDrop, QueueBlock} {
		t.Run(policy.String(), func(t *testing.T) {
			clk := newFakeClock()
			srv, addr := testServer(t, Config{Clock: clk, PushbackMessages: -1, MaxQueued: maxQueued, QueueFullPolicy: policy})
			sub := dialRaw(t, addr, packet.V5)
			sub.connect(connectV5("sub", true, func(p *packet.Properties) { p.SetReceiveMaximum(window) }))
			subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 1})
			pub := dialRaw(t, addr, packet.V5)
			pub.connect(v5connect("pub"))
			wait := flood(t, pub, "t", "p", 1, n, bigPacket)
			defer wait()

			want := n
			if policy == QueueDrop {
				want = window + maxQueued
				testutil.CheckFor(t, 5*time.Second, func() error {
					if st := srv.Stats(); st.DroppedQueueFull != n-window-maxQueued {
						return fmt.Errorf("dropped %d", st.DroppedQueueFull)
					}
					return nil
				})
				if st := srv.Stats(); st.Pushbacks != 0 {
					t.Fatalf("publisher held back %d times under the drop policy with no mark", st.Pushbacks)
				}
			} else {
				waitHeld(t, srv, 1, "sub")
				clk.advance(10 * DefaultPushbackWait)
				st := srv.Stats()
				if q, _, _ := backlog(srv, "sub"); q > maxQueued+1 || st.MessagesReceived > window+maxQueued+1 || st.PublishersHeld != 1 {
					t.Fatalf("queue %d, %d read, %d held; want at most %d and %d, 1 held", q, st.MessagesReceived, st.PublishersHeld,
						maxQueued+1, window+maxQueued+1)
				}
			}
			for i := range want {
				if _, seq := seqOf(t, recvAck(t, sub)); seq != i {
					t.Fatalf("message %d arrived as number %d", seq, i)
				}
			}
			expectNone(t, sub)
			if st := srv.Stats(); policy == QueueBlock && (st.DroppedQueueFull != 0 || st.SlowSubscribers != 0) {
				t.Fatalf("block policy: dropped %d, slow %d", st.DroppedQueueFull, st.SlowSubscribers)
			}
		})
	}
}

// TestOverloadQoS0DropsOldest: holding back off, a QoS 0 subscriber that
// reads nothing while 16 MB are published to it. Once the socket is full,
// its backlog stays within MaxOutboundBytes by dropping the oldest
// messages waiting: when it reads again it gets the newest message, what
// it got is in order, and every message is either received or counted as
// dropped.
func TestOverloadQoS0DropsOldest(t *testing.T) {
	const n, size = 2000, 8 << 10
	srv, addr := testServer(t, Config{PushbackMessages: -1, MaxOutboundBytes: 64 << 10})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(v5connect("sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 0})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))
	wait := flood(t, pub, "t", "p", 0, n, size)
	defer wait()
	testutil.CheckFor(t, 10*time.Second, func() error {
		if st := srv.Stats(); st.MessagesReceived != n {
			return fmt.Errorf("%d routed", st.MessagesReceived)
		}
		return nil
	})
	if _, _, q0 := backlog(srv, "sub"); q0*(size+1) > 64<<10 {
		t.Fatalf("%d QoS 0 messages waiting, over the 64 KiB budget", q0)
	}
	received, last, gaps := 0, -1, 0
	for last != n-1 {
		_, seq := seqOf(t, recvPublish(t, sub))
		if seq <= last {
			t.Fatalf("message %d after %d", seq, last)
		}
		if seq != last+1 {
			gaps++
		}
		last = seq
		received++
	}
	st := srv.Stats()
	if gaps == 0 || st.DroppedSlowClient == 0 || int64(received)+st.DroppedSlowClient != n {
		t.Fatalf("received %d (%d gaps), dropped %d; want every one of %d received or dropped, some dropped",
			received, gaps, st.DroppedSlowClient, n)
	}
}

// TestOverloadQoS0HoldsPublisher: the same flood with holding back on:
// once the subscriber's socket is full, its QoS 0 backlog reaches the
// mark (here its byte mark, three quarters of MaxOutboundBytes: 6
// messages) and the publisher is held instead of messages dropped, so the
// subscriber gets all of them.
func TestOverloadQoS0HoldsPublisher(t *testing.T) {
	const n, size, mark = 2000, 8 << 10, 10
	srv, addr := testServer(t, Config{Clock: newFakeClock(), PushbackMessages: mark, MaxOutboundBytes: 64 << 10})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(v5connect("sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 0})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))
	wait := flood(t, pub, "t", "p", 0, n, size)
	defer wait()
	waitHeld(t, srv, 1, "")
	if _, _, q0 := backlog(srv, "sub"); q0 > mark+1 {
		t.Fatalf("%d QoS 0 messages waiting, mark %d", q0, mark)
	}
	for i := range n {
		if _, seq := seqOf(t, recvPublish(t, sub)); seq != i {
			t.Fatalf("message %d arrived as number %d", seq, i)
		}
	}
	if st := srv.Stats(); st.DroppedSlowClient != 0 || st.Pushbacks == 0 {
		t.Fatalf("dropped %d, pushbacks %d", st.DroppedSlowClient, st.Pushbacks)
	}
}

// TestOverloadOfflineSessionHoldsNobody: messages for an offline
// persistent session are queued to its limits (max_queued_messages and
// max_queued_bytes) and then dropped; its publishers are never held.
func TestOverloadOfflineSessionHoldsNobody(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       Config
		wantQueue int
	}{
		{"messages", Config{MaxQueued: 10}, 10},
		// 100-byte payloads on topic "t": a queue takes messages while it
		// holds fewer than 1000 bytes, so ten of 101 bytes.
		{"bytes", Config{MaxQueuedBytes: 1000}, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.PushbackMessages = 5
			tc.cfg.QueueFullPolicy = QueueBlock // applies to connected clients only
			srv, addr := testServer(t, tc.cfg)
			sub := dialRaw(t, addr, packet.V5)
			sub.connect(connectV5("sub", true, withExpiry(300)))
			subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 1})
			closeAndWait(t, sub, &packet.Disconnect{})
			waitOffline(t, srv, "sub")
			pub := dialRaw(t, addr, packet.V5)
			pub.connect(v5connect("pub"))
			for i := range 50 {
				publishAcked(t, pub, uint16(i+1), &packet.Publish{Topic: "t", Payload: make([]byte, 100)})
			}
			st := srv.Stats()
			if q, _, _ := backlog(srv, "sub"); q != tc.wantQueue || st.DroppedQueueFull != int64(50-tc.wantQueue) || st.Pushbacks != 0 {
				t.Fatalf("queued %d, dropped %d, pushbacks %d; want %d, %d, 0", q, st.DroppedQueueFull, st.Pushbacks,
					tc.wantQueue, 50-tc.wantQueue)
			}
		})
	}
}

// TestOverloadHeldPublisherKeepsItsKeepAlive: a publisher held back
// longer than one and a half times its keep alive is not disconnected
// for it: the broker stopped reading, not the client sending. The
// publisher fills the subscriber's queue to the mark, then sends the
// start of one more PUBLISH, which is read and makes it wait; the rest of
// that packet is read once it is let go, which needs a fresh read
// deadline. The keep alive is a socket deadline on the system clock, so
// real time passes.
func TestOverloadHeldPublisherKeepsItsKeepAlive(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 2 s of real time")
	}
	const mark, window = 5, 1
	srv, addr := testServer(t, Config{Clock: newFakeClock(), PushbackMessages: mark})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(connectV5("sub", true, func(p *packet.Properties) { p.SetReceiveMaximum(window) }))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 1})
	pub := dialRaw(t, addr, packet.V5)
	cp := v5connect("pub")
	cp.KeepAlive = 1
	pub.connect(cp)
	publish := func(i int) []byte {
		b, _ := packet.Append(nil, &packet.Publish{Topic: "t", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("p " + strconv.Itoa(i))}, packet.V5)
		return b
	}
	var buf []byte
	for i := range window + mark {
		buf = append(buf, publish(i)...)
	}
	pub.write(buf)
	testutil.CheckFor(t, 5*time.Second, func() error {
		if q, _, _ := backlog(srv, "sub"); q != mark {
			return fmt.Errorf("queue %d", q)
		}
		return nil
	})
	last := publish(window + mark)
	pub.write(last[:2])
	waitHeld(t, srv, 1, "sub")
	time.Sleep(2 * time.Second)
	pub.write(last[2:])
	for i := range window + mark + 1 {
		if _, seq := seqOf(t, recvAck(t, sub)); seq != i {
			t.Fatalf("message %d arrived as number %d", seq, i)
		}
	}
	pub.send(&packet.Pingreq{})
	for {
		switch p := pub.recv().(type) {
		case *packet.Puback:
			continue
		case *packet.Pingresp:
			return
		default:
			t.Fatalf("publisher got %s", p.Type())
		}
	}
}

// TestOverloadSelfSubscriber: a client subscribed to its own topic is
// never held back by its own backlog: its reader is what reads the
// acknowledgements that drain it.
func TestOverloadSelfSubscriber(t *testing.T) {
	srv, addr := testServer(t, Config{Clock: newFakeClock(), PushbackMessages: 2, MaxInflight: 1})
	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("self"))
	subscribe(t, c, 1, packet.Subscription{Filter: "t", QoS: 1})
	for i := range 10 {
		c.send(&packet.Publish{Topic: "t", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("x")})
	}
	// Ten PUBACKs arrive although the client acknowledges nothing yet.
	acks := 0
	for acks < 10 {
		if _, ok := c.recv().(*packet.Puback); ok {
			acks++
		}
	}
	if st := srv.Stats(); st.Pushbacks != 0 {
		t.Fatalf("held back %d times by its own session", st.Pushbacks)
	}
}

// cutObserver ends the connection of client "pub" at its limit-th packet
// after CONNECT, as a rate limit would.
type cutObserver struct{ limit int }

func (o cutObserver) Accept(string, net.Addr) (ConnObserver, Decision) {
	return &cutConn{limit: o.limit}, Decision{Allow: true}
}

type cutConn struct {
	nopConnObserver
	limit, n int
	pub      bool
}

func (c *cutConn) Connected(cl *Client) Decision {
	c.pub = cl.ClientID == "pub"
	return Decision{Allow: true}
}

func (c *cutConn) Read(int) (time.Duration, Decision) {
	if c.n++; c.pub && c.n >= c.limit {
		return 0, Decision{Reason: "test limit"}
	}
	return 0, Decision{Allow: true}
}

// TestOverloadPublisherEndsInLine: a publisher whose last PUBLISH put it
// in line at a subscriber's gate, and whose connection then ends before
// it waited, leaves the line: it does not take a wake-up another
// publisher needs.
func TestOverloadPublisherEndsInLine(t *testing.T) {
	const mark, window = 5, 1
	srv, addr := testServer(t, Config{Clock: newFakeClock(), PushbackMessages: mark,
		Observer: cutObserver{limit: window + mark}})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(connectV5("sub", true, func(p *packet.Properties) { p.SetReceiveMaximum(window) }))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 1})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))
	for i := range window + mark {
		pub.send(&packet.Publish{Topic: "t", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("p " + strconv.Itoa(i))})
	}
	pub.expectClosed(5 * time.Second)
	testutil.CheckFor(t, 5*time.Second, func() error {
		if srv.lookup("pub") != nil {
			return errors.New("publisher's session still there")
		}
		return nil
	})
	sess := srv.lookup("sub")
	sess.mu.Lock()
	n := len(sess.gate.waiters)
	sess.mu.Unlock()
	if q, _, _ := backlog(srv, "sub"); q != mark || n != 0 {
		t.Fatalf("queue %d, %d in line; want %d and nobody", q, n, mark)
	}
}

// TestOverloadHeldPublisherHoldsNoReadBudget: a held client whose next
// packet is large waits for its turn before it reserves read budget for
// that packet's body, so that held clients cannot take the budget other
// connections read with.
func TestOverloadHeldPublisherHoldsNoReadBudget(t *testing.T) {
	const mark, window = 5, 1
	srv, addr := testServer(t, Config{Clock: newFakeClock(), PushbackMessages: mark})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(connectV5("sub", true, func(p *packet.Properties) { p.SetReceiveMaximum(window) }))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 1})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))
	var buf []byte
	for i := range window + mark + 1 {
		size := 0
		if i == window+mark {
			size = 64 << 10 // over the 4 KiB below which no budget is taken
		}
		buf = append(buf, floodPackets(t, packet.V5, "t", "p", 1, 1, size)...) // packet identifier 1 each time: allowed at QoS 1
	}
	pub.write(buf)
	waitHeld(t, srv, 1, "sub")
	if st := srv.Stats(); st.ReadBudgetInUse != 0 {
		t.Fatalf("held with %d bytes of read budget", st.ReadBudgetInUse)
	}
	for range window + mark + 1 {
		recvAck(t, sub)
	}
}

// TestOverloadHeldPublishersThroughListener: publishers held back on a
// listener of the listener package (the broker reads the socket under
// its Conn, which answers first from the bytes it read past a PROXY
// header) take in what they sent while they waited without reordering
// it: every message reaches the subscriber, in order per publisher.
// Each publisher sends its PROXY header, CONNECT and all its messages in
// one write, so that the listener's Conn holds some of them when the
// broker starts reading.
func TestOverloadHeldPublishersThroughListener(t *testing.T) {
	const mark, n = 4, 200
	for _, proxy := range []bool{false, true} {
		t.Run(fmt.Sprintf("proxy=%v", proxy), func(t *testing.T) {
			cfg := listener.Config{Address: "127.0.0.1:0", Logger: testLogger(t)}
			if proxy {
				cfg.Proxy = &listener.ProxyConfig{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
			}
			lln, err := listener.Listen(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			srv, err := New(Config{Clock: newFakeClock(), PushbackMessages: mark, AllowAnonymous: true, SysInterval: -1, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- srv.Serve(context.Background(), lln, ListenerConfig{Name: "test"}) }()
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				srv.Shutdown(ctx)
				<-done
			}()
			addr := lln.Addr().String()
			sub := dialRaw(t, addr, packet.V5)
			if proxy {
				sub.write([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1000 1883\r\n"))
			}
			sub.connect(connectV5("sub", true, func(p *packet.Properties) { p.SetReceiveMaximum(1) }))
			subscribe(t, sub, 1, packet.Subscription{Filter: "t", QoS: 1})
			for _, id := range []string{"a", "b"} {
				var buf []byte
				var err error
				if buf, err = packet.Append(buf, v5connect(id), packet.V5); err != nil {
					t.Fatal(err)
				}
				buf = append(buf, floodPackets(t, packet.V5, "t", id, 1, n, 16)...)
				c := dialRaw(t, addr, packet.V5)
				if proxy {
					buf = append([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1000 1883\r\n"), buf...)
				}
				defer startFlood(c, buf)()
				go io.Copy(io.Discard, c.nc) // CONNACK and PUBACKs
			}
			next := map[string]int{}
			for range 2 * n {
				tag, seq := seqOf(t, recvAck(t, sub))
				if seq != next[tag] {
					t.Fatalf("publisher %s: message %d arrived after %d", tag, seq, next[tag]-1)
				}
				next[tag]++
			}
			if srv.Stats().Pushbacks == 0 {
				t.Error("no publisher was held back")
			}
		})
	}
}
