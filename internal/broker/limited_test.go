package broker

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// limitObserver records the limits reported to it (LimitObserver) and
// pauses a connection's reader once, on its pauseAt-th packet (Read).
type limitObserver struct {
	recObserver
	pauseAt int32         // 0: never
	paused  chan struct{} // closed when the pause starts

	lmu    sync.Mutex
	limits []string // "CLIENT LIMIT"
}

func (o *limitObserver) Accept(listener string, remote net.Addr) (ConnObserver, Decision) {
	return &limitConn{recConn: recConn{&o.recObserver}, o: o}, Decision{Allow: true}
}

func (o *limitObserver) seenLimits() []string {
	o.lmu.Lock()
	defer o.lmu.Unlock()
	return slices.Clone(o.limits)
}

type limitConn struct {
	recConn
	o     *limitObserver
	reads atomic.Int32
}

var _ LimitObserver = (*limitConn)(nil)

func (lc *limitConn) Limited(c *Client, l Limit, detail string) Verdict {
	lc.o.lmu.Lock()
	lc.o.limits = append(lc.o.limits, c.ClientID+" "+l.String())
	lc.o.lmu.Unlock()
	return Verdict{}
}

func (lc *limitConn) Read(n int) (time.Duration, Decision) {
	if k := lc.reads.Add(1); lc.o.pauseAt > 0 && k == lc.o.pauseAt {
		close(lc.o.paused)
		return time.Minute, Decision{Allow: true}
	}
	return 0, Decision{Allow: true}
}

// TestLimitsReportedToObserver: every limit a client runs into reaches
// the Observer's Limited with the client and the limit's name (the
// defense counts them as limit abuse): topic length and levels in
// SUBSCRIBE and PUBLISH, the subscription limit, the message size limit,
// a retained quota, a packet over the maximum size, and messages dropped
// for a subscriber whose queue is full (reported on its reader's next
// packet).
func TestLimitsReportedToObserver(t *testing.T) {
	obs := &limitObserver{}
	_, addr := testServer(t, Config{Observer: obs, MaxTopicLength: 32, MaxTopicLevels: 3, MaxSubscriptions: 1,
		MessageSizeLimit: 16, MaxRetainedPerIdentity: 1, MaxPacketSize: 4096, MaxInflight: 1, MaxQueued: 1, PushbackMessages: -1})
	c := dialRaw(t, addr, packet.V311)
	c.connect(&packet.Connect{ClientID: "prober", CleanStart: true, KeepAlive: 60})
	c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{
		{Filter: strings.Repeat("x", 40)}, {Filter: "a/b/c/d"}, {Filter: "ok/1"}, {Filter: "ok/2"}}})
	if ack, ok := c.recv().(*packet.Suback); !ok || len(ack.ReasonCodes) != 4 {
		t.Fatalf("SUBACK %v", ack)
	}
	c.send(&packet.Publish{Topic: "big", Payload: make([]byte, 20)}) // v3: dropped
	c.send(&packet.Publish{Topic: "r/1", Payload: []byte("1"), Retain: true})
	c.send(&packet.Publish{Topic: "r/2", Payload: []byte("2"), Retain: true}) // over the per-identity quota
	c.send(&packet.Pingreq{})
	c.recv()

	// A subscriber that acknowledges nothing: one message in flight, one
	// queued, the third dropped.
	sub := dialRaw(t, addr, packet.V311)
	sub.connect(&packet.Connect{ClientID: "slow", CleanStart: true, KeepAlive: 60})
	sub.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "q", QoS: 1}}})
	sub.recv()
	pub := dialRaw(t, addr, packet.V311)
	pub.connect(&packet.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 60})
	for i := range 3 {
		pub.send(&packet.Publish{Topic: "q", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("m")})
		pub.recv()
	}
	sub.send(&packet.Pingreq{}) // its reader reports the drop

	// Over the topic length in PUBLISH: disconnected, and reported.
	c.send(&packet.Publish{Topic: strings.Repeat("y", 40)})
	c.expectClosed(5 * time.Second)
	d := dialRaw(t, addr, packet.V311)
	d.connect(&packet.Connect{ClientID: "big", CleanStart: true, KeepAlive: 60})
	d.send(&packet.Publish{Topic: "t", Payload: make([]byte, 5000)})
	d.expectClosed(5 * time.Second)

	want := []string{"prober topic_length", "prober topic_levels", "prober subscriptions", "prober message_size",
		"prober retained", "slow queue_full", "big packet_size"}
	testutil.CheckFor(t, 5*time.Second, func() error {
		got := obs.seenLimits()
		for _, w := range want {
			if !slices.Contains(got, w) {
				return fmt.Errorf("limits reported %q; missing %q", got, w)
			}
		}
		if n := strings.Count(strings.Join(got, ","), "prober topic_length"); n != 2 {
			return fmt.Errorf("topic_length reported %d times for prober, want 2 (SUBSCRIBE and PUBLISH): %q", n, got)
		}
		return nil
	})
}

// TestThrottlePauseRestartsKeepAlive: a client paused by its rate limit
// (the Observer's Read asks for a minute on the injected clock) while the
// rest of its next packet is still on the way is not disconnected for
// keep-alive: the pause is the server's, and the keep-alive deadline
// starts again after it. Without that, the deadline armed before the
// pause (1.5 × the 1 s keep-alive, on the system clock, where socket
// deadlines live) has passed when reading resumes, and the half-read
// packet ends the connection as a keep-alive timeout.
func TestThrottlePauseRestartsKeepAlive(t *testing.T) {
	clk := newFakeClock()
	obs := &limitObserver{pauseAt: 1, paused: make(chan struct{})}
	_, addr := testServer(t, Config{Observer: obs, Clock: clk})
	c := dialRaw(t, addr, packet.V311)
	c.connect(&packet.Connect{ClientID: "paused", CleanStart: true, KeepAlive: 1})
	pending := clk.pending()
	first, _ := packet.Append(nil, &packet.Publish{Topic: "t", Payload: []byte("a")}, packet.V311)
	second, _ := packet.Append(nil, &packet.Publish{Topic: "t", Payload: []byte("bbbbbbbb")}, packet.V311)
	c.write(append(first, second[:4]...)) // the second packet cut in two
	<-obs.paused
	testutil.WaitFor(t, "the pause's timer", 5*time.Second, func() bool { return clk.pending() > pending })
	// The keep-alive deadline runs on the system clock: let it pass
	// during the pause (1.5 s for a keep-alive of 1 s).
	time.Sleep(1600 * time.Millisecond)
	clk.advance(time.Minute) // the pause ends
	c.write(second[4:])
	c.send(&packet.Pingreq{})
	p, err := c.recvErr(5 * time.Second)
	if err != nil {
		t.Fatalf("the paused client was disconnected: %v (observer: %v)", err, obs.seen())
	}
	if _, ok := p.(*packet.Pingresp); !ok {
		t.Fatalf("got %v, want PINGRESP", p.Type())
	}
}

// TestTLSHandshakeFailedCounted: a handshake a listener made and saw
// fail (secure WebSocket) is counted with the server's own, by reason.
func TestTLSHandshakeFailedCounted(t *testing.T) {
	s, _ := testServer(t, Config{})
	s.TLSHandshakeFailed("wss", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"})
	s.TLSHandshakeFailed("wss", nil, nil) // not a failure
	if st := s.Stats(); st.TLSHandshakeFailures["not_tls"] != 1 || len(st.TLSHandshakeFailures) != 1 {
		t.Fatalf("TLS failures %v, want not_tls 1", st.TLSHandshakeFailures)
	}
}
