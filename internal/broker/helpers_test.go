package broker

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// testServer starts a Server on a fresh 127.0.0.1:0 TCP listener named
// "test" and returns it with its address; it is shut down when the test
// ends. (Other packages' tests use internal/broker/brokertest, which this
// package cannot import.)
func testServer(t testing.TB, cfg Config) (*Server, string) {
	t.Helper()
	return serveTest(t, cfg, nil, "test")
}

// serveTest is testServer with TLS (when tc is set) and a listener name.
func serveTest(t testing.TB, cfg Config, tc *tls.Config, name string) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.Authenticator == nil && !cfg.AllowAnonymous {
		cfg.AllowAnonymous = true
	}
	if cfg.SysInterval == 0 {
		cfg.SysInterval = -1
	}
	if os.Getenv("MOAT_TEST_PERSIST") != "" && cfg.Persistence == nil {
		// The whole suite again with every persistent session written
		// through to a model of the store.
		cfg.Persistence = newModel()
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln, ListenerConfig{Name: name}) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return s, addr
}

// testLogger logs to the test log when MOAT_TEST_LOG is set, and discards
// otherwise.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("MOAT_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// waitOffline waits until the server has seen the connection of the
// session id close: the session has no connection any more, and its will
// delay and expiry timers are set.
func waitOffline(t testing.TB, srv *Server, id string) {
	t.Helper()
	testutil.CheckFor(t, 5*time.Second, func() error {
		sess := srv.lookup(id)
		if sess == nil {
			return errString("no session " + id)
		}
		sess.mu.Lock()
		defer sess.mu.Unlock()
		if sess.conn != nil {
			return errString("session " + id + " still connected")
		}
		return nil
	})
}

// rawClient speaks MQTT byte by byte with the codec, for tests that need
// exact control over what is sent.
type rawClient struct {
	t  testing.TB
	nc net.Conn
	r  *packet.Reader
	v  packet.Version
}

func dialRaw(t testing.TB, addr string, v packet.Version) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	r := packet.NewReader(nc, 0)
	r.SetVersion(v)
	return &rawClient{t: t, nc: nc, r: r, v: v}
}

func (c *rawClient) send(p packet.Packet) {
	c.t.Helper()
	b, err := packet.Append(nil, p, c.v)
	if err != nil {
		c.t.Fatalf("encode %s: %v", p.Type(), err)
	}
	c.write(b)
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// recv reads the next packet within 5 s.
func (c *rawClient) recv() packet.Packet {
	c.t.Helper()
	p, err := c.recvErr(5 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return p
}

func (c *rawClient) recvErr(d time.Duration) (packet.Packet, error) {
	c.nc.SetReadDeadline(time.Now().Add(d))
	return c.r.ReadPacket()
}

// expectClosed waits for the server to close the connection, returning
// the DISCONNECT it sent first, if any.
func (c *rawClient) expectClosed(d time.Duration) *packet.Disconnect {
	c.t.Helper()
	var disc *packet.Disconnect
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		p, err := c.recvErr(time.Until(deadline))
		if err != nil {
			if isTimeout(err) {
				c.t.Fatalf("connection still open after %v", d)
			}
			return disc
		}
		if dp, ok := p.(*packet.Disconnect); ok {
			disc = dp
		}
	}
	c.t.Fatalf("connection still open after %v", d)
	return nil
}

// connect sends CONNECT and returns the CONNACK.
func (c *rawClient) connect(p *packet.Connect) *packet.Connack {
	c.t.Helper()
	if p.Version == 0 {
		p.Version = c.v
	}
	if p.ProtocolName == "" {
		p.ProtocolName = "MQTT"
		if p.Version == packet.V31 {
			p.ProtocolName = "MQIsdp"
		}
	}
	c.send(p)
	ack, ok := c.recv().(*packet.Connack)
	if !ok {
		c.t.Fatalf("expected CONNACK")
	}
	return ack
}
