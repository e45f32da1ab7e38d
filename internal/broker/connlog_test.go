package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// logBuffer is a concurrency-safe log sink for tests that read the log.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// line returns the first log line holding every part, or "".
func (l *logBuffer) line(parts ...string) string {
next:
	for ln := range strings.SplitSeq(l.String(), "\n") {
		for _, p := range parts {
			if !strings.Contains(ln, p) {
				continue next
			}
		}
		return ln
	}
	return ""
}

// waitLine waits for a log line holding every part and returns it.
func (l *logBuffer) waitLine(t *testing.T, parts ...string) string {
	t.Helper()
	var got string
	checkFor(t, 5*time.Second, func() error {
		if got = l.line(parts...); got == "" {
			return fmt.Errorf("no log line with %q in\n%s", parts, l.String())
		}
		return nil
	})
	return got
}

// TestDisconnectLogged: with connection messages on (the default), every
// end of an established connection is logged at info with its reason,
// as the connect is (Mosquitto's connection_messages).
func TestDisconnectLogged(t *testing.T) {
	var logs logBuffer
	s, addr := testServer(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})

	connect := func(id string, ka uint16) *rawClient {
		c := dialRaw(t, addr, packet.V5)
		c.connect(&packet.Connect{ClientID: id, CleanStart: true, KeepAlive: ka})
		return c
	}
	const disc = `msg="broker: client disconnected"`

	t.Run("client DISCONNECT with its code", func(t *testing.T) {
		c := connect("d-normal", 0)
		closeAndWait(t, c, &packet.Disconnect{})
		l := logs.waitLine(t, disc, "client=d-normal")
		if !strings.Contains(l, "level=INFO") || !strings.Contains(l, "client sent DISCONNECT (0x00 normal disconnection)") {
			t.Errorf("line %q", l)
		}
		c = connect("d-will", 0)
		closeAndWait(t, c, &packet.Disconnect{ReasonCode: packet.DisconnectWithWill})
		logs.waitLine(t, disc, "client=d-will", "client sent DISCONNECT (0x04")
	})
	t.Run("client went away", func(t *testing.T) {
		c := connect("d-eof", 0)
		c.nc.Close()
		logs.waitLine(t, disc, "client=d-eof", "client closed the connection without DISCONNECT")
	})
	t.Run("keep alive timeout", func(t *testing.T) {
		connect("d-ka", 1)
		logs.waitLine(t, disc, "client=d-ka", "reason=\"keep alive timeout\"", "0x8D")
	})
	t.Run("protocol error with code", func(t *testing.T) {
		c := connect("d-proto", 0)
		c.write([]byte{0x36, 0x00}) // PUBLISH with QoS 3
		c.expectClosed(5 * time.Second)
		logs.waitLine(t, disc, "client=d-proto", "code=\"0x81 malformed packet\"")
	})
	t.Run("takeover", func(t *testing.T) {
		connect("d-take", 0)
		connect("d-take", 0)
		logs.waitLine(t, disc, "client=d-take", "session taken over", "0x8E")
	})
	t.Run("server shutdown", func(t *testing.T) {
		connect("d-shut", 0)
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		logs.waitLine(t, disc, "client=d-shut", "server shutting down", "0x8B")
	})
}

// TestDisconnectQuiet: QuietConnections (connection_messages false) logs
// the disconnect line at debug only.
func TestDisconnectQuiet(t *testing.T) {
	var logs logBuffer
	_, addr := testServer(t, Config{QuietConnections: true, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	c := dialRaw(t, addr, packet.V311)
	c.connect(&packet.Connect{ClientID: "quiet", CleanStart: true})
	closeAndWait(t, c, &packet.Disconnect{})
	l := logs.waitLine(t, "broker: client disconnected", "client=quiet")
	if !strings.Contains(l, "level=DEBUG") {
		t.Errorf("line %q, want debug", l)
	}
}

// failingListener accepts TCP connections whose reads fail once fail is
// closed: a socket error the client cannot produce on purpose.
type failingListener struct {
	net.Listener
	fail chan struct{}
}

func (l failingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return failingConn{nc, l.fail}, nil
}

type failingConn struct {
	net.Conn
	fail chan struct{}
}

func (c failingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	select {
	case <-c.fail:
		return 0, errors.New("injected socket failure")
	default:
		return n, err
	}
}

// TestDisconnectLoggedSocketError: a read that fails on the socket is
// logged as the reason the connection ended.
func TestDisconnectLoggedSocketError(t *testing.T) {
	var logs logBuffer
	s, err := New(Config{AllowAnonymous: true, SysInterval: -1, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := failingListener{ln, make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), fl, ListenerConfig{Name: "test"}) }()
	defer func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		<-done
	}()
	c := dialRaw(t, ln.Addr().String(), packet.V311)
	c.connect(&packet.Connect{ClientID: "d-sock", CleanStart: true})
	close(fl.fail)
	c.send(&packet.Pingreq{})
	logs.waitLine(t, `msg="broker: client disconnected"`, "client=d-sock", `reason="socket error: injected socket failure"`)
}
