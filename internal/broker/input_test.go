package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/listener"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// testTLSConfig returns a server config with a self-signed certificate
// for 127.0.0.1.
func testTLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	c := testpki.SelfSigned(t, testpki.Options{CN: "broker test", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, EKU: testpki.ServerAuth})
	return &tls.Config{Certificates: []tls.Certificate{c.TLS()}}
}

// testServerTLS is testServer on a TLS listener named "tls".
func testServerTLS(t testing.TB, cfg Config) (*Server, string) {
	t.Helper()
	return serveTest(t, cfg, testTLSConfig(t), "tls")
}

// heldConn sends what is written to it in one system call on flush, so
// that several TLS records reach the broker together.
type heldConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	buf  bytes.Buffer
}

func (c *heldConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold {
		return c.buf.Write(p)
	}
	return c.Conn.Write(p)
}

func (c *heldConn) holdWrites() {
	c.mu.Lock()
	c.hold = true
	c.mu.Unlock()
}

func (c *heldConn) flush(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold = false
	if _, err := c.Conn.Write(c.buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	c.buf.Reset()
}

// dialTLSHeld connects a raw client over TLS through a heldConn.
func dialTLSHeld(t testing.TB, addr string, v packet.Version) (*rawClient, *heldConn) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hc := &heldConn{Conn: nc}
	tc := tls.Client(hc, &tls.Config{InsecureSkipVerify: true})
	t.Cleanup(func() { tc.Close() })
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	r := packet.NewReader(tc, 0)
	r.SetVersion(v)
	return &rawClient{t: t, nc: tc, r: r, v: v}, hc
}

// TestQuietConnection checks connections that wait for input without a
// read buffer on a fresh goroutine (input.go): right after CONNECT and
// after being quiet for longer than quietAfter, over TCP and TLS, with
// input that a lower layer (crypto/tls) had already buffered when the
// broker's own buffer ran empty.
func TestQuietConnection(t *testing.T) {
	for _, transport := range []string{"tcp", "tls"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			var addr string
			if transport == "tls" {
				_, addr = testServerTLS(t, Config{})
			} else {
				_, addr = testServer(t, Config{})
			}
			dial := func() *rawClient {
				if transport == "tls" {
					c, _ := dialTLSHeld(t, addr, packet.V5)
					return c
				}
				return dialRaw(t, addr, packet.V5)
			}
			pub := dial()
			pub.connect(v5connect("quiet-pub"))
			sub := dial()
			sub.connect(v5connect("quiet-sub"))
			time.Sleep(quietAfter + 200*time.Millisecond)
			// Both readers are quiet now: a packet wakes them.
			subscribe(t, sub, 1, packet.Subscription{Filter: "q/#", QoS: 1})
			time.Sleep(quietAfter + 200*time.Millisecond)
			for i := range 3 {
				pub.send(&packet.Publish{Topic: "q/x", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("hello")})
				if ack, ok := pub.recv().(*packet.Puback); !ok || ack.PacketID != uint16(i+1) {
					t.Fatalf("publish %d: no PUBACK", i)
				}
				p, ok := sub.recv().(*packet.Publish)
				if !ok || string(p.Payload) != "hello" {
					t.Fatalf("publish %d: subscriber got %v", i, p)
				}
				sub.send(&packet.Puback{PacketID: p.PacketID})
				if i == 1 {
					time.Sleep(quietAfter + 200*time.Millisecond)
				}
			}
			sub.send(&packet.Pingreq{})
			if _, ok := sub.recv().(*packet.Pingresp); !ok {
				t.Fatal("no PINGRESP")
			}
		})
	}
	t.Run("tls records buffered below", func(t *testing.T) {
		t.Parallel()
		_, addr := testServerTLS(t, Config{})
		c, hc := dialTLSHeld(t, addr, packet.V5)
		// CONNECT and PINGREQ in two TLS records, sent together: crypto/tls
		// reads both and returns the first; the broker must not wait on
		// the socket for the second.
		hc.holdWrites()
		cp := v5connect("buffered")
		cp.ProtocolName, cp.Version = "MQTT", packet.V5
		c.send(cp)
		c.send(&packet.Pingreq{})
		hc.flush(t)
		if _, ok := c.recv().(*packet.Connack); !ok {
			t.Fatal("no CONNACK")
		}
		if _, ok := c.recv().(*packet.Pingresp); !ok {
			t.Fatal("no PINGRESP for the PINGREQ sent with CONNECT")
		}
		// The same once the connection is quiet.
		time.Sleep(quietAfter + 200*time.Millisecond)
		for range 2 {
			hc.holdWrites()
			c.send(&packet.Pingreq{})
			c.send(&packet.Pingreq{})
			hc.flush(t)
			for i := range 2 {
				if _, ok := c.recv().(*packet.Pingresp); !ok {
					t.Fatalf("PINGREQ %d of 2 sent together: no PINGRESP", i+1)
				}
			}
			time.Sleep(quietAfter + 200*time.Millisecond)
		}
	})
}

// TestKeepAliveWhileQuiet checks that a quiet connection's keep-alive
// deadline runs from its last packet, not from when it went quiet twice.
func TestKeepAliveWhileQuiet(t *testing.T) {
	_, addr := testServer(t, Config{})
	c := dialRaw(t, addr, packet.V5)
	cp := v5connect("quiet-ka")
	cp.KeepAlive = 1
	c.connect(cp)
	// A PINGREQ after more than quietAfter: the connection is quiet
	// before and after it.
	time.Sleep(quietAfter + 100*time.Millisecond)
	c.send(&packet.Pingreq{})
	if _, ok := c.recv().(*packet.Pingresp); !ok {
		t.Fatal("no PINGRESP")
	}
	start := time.Now()
	d := c.expectClosed(5 * time.Second)
	if d == nil || d.ReasonCode != packet.KeepAliveTimeout {
		t.Fatalf("DISCONNECT %+v", d)
	}
	// 1.5 s after the PINGREQ; a deadline renewed when the reader went
	// quiet again would give 3 s.
	if el := time.Since(start); el < 1400*time.Millisecond || el > 2700*time.Millisecond {
		t.Fatalf("MQTT-3.1.2-24 closed %v after the last packet, want about 1.5 s", el)
	}
}

// wrappedConn stands for a transport that frames its input (WebSocket):
// it exposes its socket, but waiting on the socket would be wrong.
type wrappedConn struct{ net.Conn }

func (w wrappedConn) NetConn() net.Conn { return w.Conn }

func TestRawConnOf(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	lln, err := listener.Listen(context.Background(), listener.Config{Address: "127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer lln.Close()
	lclient, err := net.Dial("tcp", lln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer lclient.Close()
	lc, err := lln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	for _, tt := range []struct {
		name string
		nc   net.Conn
		want bool
	}{
		{"tcp", nc, true},
		{"tls over tcp", tls.Server(nc, &tls.Config{}), true},
		{"listener conn", lc, true},
		{"tls over listener conn", tls.Server(lc, &tls.Config{}), true},
		{"pipe", p1, false},
		{"framed transport", wrappedConn{nc}, false},
		{"tls over a framed transport", tls.Server(wrappedConn{nc}, &tls.Config{}), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := rawConnOf(tt.nc, nil) != nil; got != (tt.want && canWaitReadable) {
				t.Errorf("rawConnOf: %v, want %v", got, tt.want && canWaitReadable)
			}
		})
	}
	// A connection read with arrival times waits on its reader's RawConn
	// rather than keeping a second one for the same socket.
	if r := newStampedReader(lc.(*listener.Conn), lc.LocalAddr(), lc.RemoteAddr()); r != nil && canWaitReadable {
		for _, nc := range []net.Conn{lc, tls.Server(lc, &tls.Config{})} {
			if rawConnOf(nc, r) != r.rc {
				t.Errorf("rawConnOf(%T) with an arrival reader: not the reader's RawConn", nc)
			}
		}
	}
}
