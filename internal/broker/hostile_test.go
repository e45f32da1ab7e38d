package broker

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// stillServes checks that a well-behaved client can connect and round-trip.
func stillServes(t *testing.T, addr string) {
	t.Helper()
	c := dialRaw(t, addr, packet.V5)
	if ack := c.connect(v5connect("")); ack.ReasonCode != 0 {
		t.Fatalf("broker refuses after hostile input: %v", ack.ReasonCode)
	}
	c.send(&packet.Pingreq{})
	if _, ok := c.recv().(*packet.Pingresp); !ok {
		t.Fatal("no PINGRESP")
	}
}

func TestHostileInput(t *testing.T) {
	_, addr := testServer(t, Config{ConnectTimeout: 500 * time.Millisecond, MaxPacketSize: 1 << 20})
	cases := []struct {
		name string
		raw  []byte
	}{
		{"garbage before CONNECT", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"MQTT-1.5.5-1 variable byte integer of five bytes", []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x7f}},
		{"declared length over maximum packet size", []byte{0x10, 0xff, 0xff, 0xff, 0x7f}},
		{"truncated CONNECT", []byte{0x10, 0x20, 0, 4, 'M', 'Q'}},
		{"MQTT-3.1.2-3 reserved connect flag", []byte{0x10, 0x0d, 0, 4, 'M', 'Q', 'T', 'T', 4, 1, 0, 30, 0, 1, 'x'}},
		{"MQTT-2.1.3-1 bad fixed header flags", []byte{0x11, 0x0d, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 1, 'x'}},
		{"zero bytes", make([]byte, 64)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr, packet.V311)
			c.write(tc.raw)
			c.expectClosed(5 * time.Second)
			stillServes(t, addr)
		})
	}
	t.Run("silent socket closed after connect timeout", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		start := time.Now()
		c.expectClosed(5 * time.Second)
		if el := time.Since(start); el < 400*time.Millisecond {
			t.Fatalf("closed after %v", el)
		}
	})
	t.Run("MQTT-3.3.1-4 QoS 3 after CONNECT", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("q3"))
		c.write([]byte{0x36, 0x05, 0, 1, 'a', 0, 1})
		d := c.expectClosed(5 * time.Second)
		if d == nil || d.ReasonCode != packet.MalformedPacket {
			t.Fatalf("DISCONNECT %+v, want malformed packet", d)
		}
	})
	t.Run("packet too large after CONNECT", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect("big"))
		c.write([]byte{0x30, 0xff, 0xff, 0x7f})
		d := c.expectClosed(5 * time.Second)
		if d == nil || d.ReasonCode != packet.PacketTooLarge {
			t.Fatalf("DISCONNECT %+v, want packet too large", d)
		}
	})
	// Acknowledgements of the 4-byte form bypass the decoder; malformed
	// ones must still be refused.
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"MQTT-2.1.3-1 PUBACK with flags", []byte{0x41, 0x02, 0, 1}},
		{"MQTT-2.1.3-1 PUBREL without its flags", []byte{0x60, 0x02, 0, 1}},
		{"MQTT-2.2.1-3 PUBACK with identifier 0", []byte{0x40, 0x02, 0, 0}},
		{"MQTT-2.2.1-3 PUBCOMP with identifier 0 after a valid one", []byte{0x70, 0x02, 0, 7, 0x70, 0x02, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr, packet.V5)
			c.connect(v5connect("acks"))
			c.write(tc.raw)
			d := c.expectClosed(5 * time.Second)
			if d == nil || (d.ReasonCode != packet.MalformedPacket && d.ReasonCode != packet.ProtocolError) {
				t.Fatalf("DISCONNECT %+v, want malformed packet or protocol error", d)
			}
		})
	}
	t.Run("MQTT-4.7.3-2 wildcard in PUBLISH topic", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V311)
		c.connect(&packet.Connect{ClientID: "wild", CleanStart: true})
		c.write([]byte{0x30, 0x05, 0, 3, 'a', '/', '#'})
		c.expectClosed(5 * time.Second)
	})
}

func TestHostileMemoryBounded(t *testing.T) {
	// Many connections each declaring a near-maximum packet and then
	// stalling must not make the broker allocate what they declare.
	_, addr := testServer(t, Config{ConnectTimeout: 3 * time.Second, MaxPacketSize: 1 << 20})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var conns []net.Conn
	for range 200 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		// A CONNECT declaring 1 MiB minus a little: allowed by the limit,
		// but only 10 bytes ever arrive.
		nc.Write([]byte{0x10, 0xf0, 0xff, 0x3f, 0, 4, 'M', 'Q', 'T', 'T', 4, 2})
	}
	time.Sleep(300 * time.Millisecond)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	for _, c := range conns {
		c.Close()
	}
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap grew by %d KiB for 200 stalled connections", grown/1024)
	if grown > 300<<20 {
		t.Fatalf("heap grew by %d MiB", grown>>20)
	}
	stillServes(t, addr)
}

func TestPanicRecovered(t *testing.T) {
	boom := AuthenticatorFunc(func(context.Context, *ConnectRequest) AuthResult { panic("boom") })
	s, addr := testServer(t, Config{Authenticator: boom})
	c := dialRaw(t, addr, packet.V5)
	c.send(v5connect("p"))
	c.expectClosed(5 * time.Second)
	if n := s.Stats().Panics; n != 1 {
		t.Fatalf("panics %d", n)
	}
	// The broker is still up: the listener accepts and reads CONNECT.
	c2 := dialRaw(t, addr, packet.V5)
	c2.send(v5connect("p2"))
	c2.expectClosed(5 * time.Second)
	if n := s.Stats().Panics; n != 2 {
		t.Fatalf("panics %d", n)
	}
}

func TestConnectionCap(t *testing.T) {
	_, addr := testServer(t, Config{MaxConnections: 2})
	a := dialRaw(t, addr, packet.V5)
	a.connect(v5connect("a"))
	b := dialRaw(t, addr, packet.V5)
	b.connect(v5connect("b"))
	c := dialRaw(t, addr, packet.V5)
	c.write([]byte{0xc0, 0})
	c.expectClosed(5 * time.Second)
	a.send(&packet.Disconnect{})
	a.expectClosed(5 * time.Second)
	testutil.CheckFor(t, 5*time.Second, func() error {
		d := dialRaw(t, addr, packet.V5)
		d.send(v5connect("d"))
		p, err := d.recvErr(time.Second)
		if err != nil {
			return err
		}
		_ = p
		return nil
	})
}

func TestShutdown(t *testing.T) {
	testutil.CheckNoLeaks(t)
	s, err := New(Config{AllowAnonymous: true, Logger: testLogger(t), SysInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln, ListenerConfig{}) }()
	c := dialRaw(t, ln.Addr().String(), packet.V5)
	c.connect(v5connect("bye"))
	c3 := dialRaw(t, ln.Addr().String(), packet.V311)
	c3.connect(&packet.Connect{ClientID: "bye3", CleanStart: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != ErrServerClosed {
		t.Fatalf("Serve: %v", err)
	}
	d := c.expectClosed(5 * time.Second)
	if d == nil || d.ReasonCode != packet.ServerShuttingDown {
		t.Fatalf("DISCONNECT %+v, want 0x8B", d)
	}
	c3.expectClosed(5 * time.Second)
	c.nc.Close()
	c3.nc.Close()
}

func TestTopicDepthLimit(t *testing.T) {
	_, addr := testServer(t, Config{MaxTopicLevels: 4})
	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("deep"))
	ack := subscribe(t, c, 1, packet.Subscription{Filter: "a/b/c/d"}, packet.Subscription{Filter: "a/b/c/d/e"})
	if ack.ReasonCodes[0] != 0 || ack.ReasonCodes[1] != packet.TopicFilterInvalid {
		t.Fatalf("SUBACK %v", ack.ReasonCodes)
	}
	c.send(&packet.Publish{Topic: "a/b/c/d/e", Payload: []byte("x")})
	d := c.expectClosed(5 * time.Second)
	if d == nil || d.ReasonCode != packet.TopicNameInvalid {
		t.Fatalf("DISCONNECT %+v, want topic name invalid", d)
	}
	w := dialRaw(t, addr, packet.V5)
	if ack := w.connect(&packet.Connect{ClientID: "deepwill", CleanStart: true, Will: &packet.Will{Topic: "////"}}); ack.ReasonCode != packet.TopicNameInvalid {
		t.Fatalf("CONNACK %v", ack.ReasonCode)
	}
}

func TestSubscriptionQuota(t *testing.T) {
	_, addr := testServer(t, Config{MaxSubscriptions: 2})
	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("greedy"))
	ack := subscribe(t, c, 1, packet.Subscription{Filter: "a"}, packet.Subscription{Filter: "b"}, packet.Subscription{Filter: "a"}, packet.Subscription{Filter: "c"})
	want := []packet.ReasonCode{0, 0, 0, packet.QuotaExceeded}
	for i := range want {
		if ack.ReasonCodes[i] != want[i] {
			t.Fatalf("SUBACK %v, want %v", ack.ReasonCodes, want)
		}
	}
	c.send(&packet.Unsubscribe{PacketID: 2, Filters: []string{"a"}})
	c.recv()
	if ack := subscribe(t, c, 3, packet.Subscription{Filter: "c"}); ack.ReasonCodes[0] != 0 {
		t.Fatalf("after unsubscribe: SUBACK %v", ack.ReasonCodes)
	}
}

func TestSessionCap(t *testing.T) {
	_, addr := testServer(t, Config{MaxSessions: 2})
	a := dialRaw(t, addr, packet.V5)
	cp := v5connect("s1")
	cp.Properties.SessionExpiry = 60
	cp.Properties.Mark(packet.PropSessionExpiry)
	a.connect(cp)
	a.send(&packet.Disconnect{})
	a.expectClosed(5 * time.Second) // s1 stays as an offline session
	b := dialRaw(t, addr, packet.V311)
	b.connect(&packet.Connect{ClientID: "s2", CleanStart: true})
	c := dialRaw(t, addr, packet.V5)
	if ack := c.connect(v5connect("s3")); ack.ReasonCode != packet.QuotaExceeded {
		t.Fatalf("third session: CONNACK %v, want quota exceeded", ack.ReasonCode)
	}
	// An existing session can still be resumed.
	a2 := dialRaw(t, addr, packet.V5)
	if ack := a2.connect(&packet.Connect{ClientID: "s1", KeepAlive: 30}); ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("resuming s1: %+v", ack)
	}
}
