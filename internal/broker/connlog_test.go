package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// line returns the first line of the log holding every part, or "".
func line(log *testutil.Buffer, parts ...string) string {
next:
	for ln := range strings.SplitSeq(log.String(), "\n") {
		for _, p := range parts {
			if !strings.Contains(ln, p) {
				continue next
			}
		}
		return ln
	}
	return ""
}

// waitLine waits for a line of the log holding every part and returns it.
func waitLine(t *testing.T, log *testutil.Buffer, parts ...string) string {
	t.Helper()
	var got string
	testutil.CheckFor(t, 5*time.Second, func() error {
		if got = line(log, parts...); got == "" {
			return fmt.Errorf("no log line with %q in\n%s", parts, log.String())
		}
		return nil
	})
	return got
}

// TestDisconnectLogged: with connection messages on (the default), every
// end of an established connection is logged at info with its reason,
// as the connect is (Mosquitto's connection_messages).
func TestDisconnectLogged(t *testing.T) {
	var logs testutil.Buffer
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
		l := waitLine(t, &logs, disc, "client=d-normal")
		if !strings.Contains(l, "level=INFO") || !strings.Contains(l, "client sent DISCONNECT (0x00 normal disconnection)") {
			t.Errorf("line %q", l)
		}
		c = connect("d-will", 0)
		closeAndWait(t, c, &packet.Disconnect{ReasonCode: packet.DisconnectWithWill})
		waitLine(t, &logs, disc, "client=d-will", "client sent DISCONNECT (0x04")
	})
	t.Run("client went away", func(t *testing.T) {
		c := connect("d-eof", 0)
		c.nc.Close()
		waitLine(t, &logs, disc, "client=d-eof", "client closed the connection without DISCONNECT")
	})
	t.Run("keep alive timeout", func(t *testing.T) {
		connect("d-ka", 1)
		waitLine(t, &logs, disc, "client=d-ka", "reason=\"keep alive timeout\"", "0x8D")
	})
	t.Run("protocol error with code", func(t *testing.T) {
		c := connect("d-proto", 0)
		c.write([]byte{0x36, 0x00}) // PUBLISH with QoS 3
		c.expectClosed(5 * time.Second)
		waitLine(t, &logs, disc, "client=d-proto", "code=\"0x81 malformed packet\"")
	})
	t.Run("takeover", func(t *testing.T) {
		connect("d-take", 0)
		connect("d-take", 0)
		waitLine(t, &logs, disc, "client=d-take", "session taken over", "0x8E")
	})
	t.Run("server shutdown", func(t *testing.T) {
		connect("d-shut", 0)
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		waitLine(t, &logs, disc, "client=d-shut", "server shutting down", "0x8B")
	})
}

// TestDisconnectQuiet: QuietConnections (connection_messages false) logs
// the disconnect line at debug only.
func TestDisconnectQuiet(t *testing.T) {
	var logs testutil.Buffer
	_, addr := testServer(t, Config{QuietConnections: true, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	c := dialRaw(t, addr, packet.V311)
	c.connect(&packet.Connect{ClientID: "quiet", CleanStart: true})
	closeAndWait(t, c, &packet.Disconnect{})
	l := waitLine(t, &logs, "broker: client disconnected", "client=quiet")
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
	var logs testutil.Buffer
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
	waitLine(t, &logs, `msg="broker: client disconnected"`, "client=d-sock", `reason="socket error: injected socket failure"`)
}

// TestConnLoggerOneObject: a connection's logger is one allocation, kept
// for the connection's life, and logs with the connection's attributes
// first.
func TestConnLoggerOneObject(t *testing.T) {
	var buf strings.Builder
	base := slog.New(slog.NewTextHandler(&buf, nil))
	remote := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1883}
	if n := testing.AllocsPerRun(100, func() { newConnLogger(base, "tcp", remote, "dev1") }); n != 1 {
		t.Errorf("newConnLogger: %v allocations, want 1", n)
	}
	newConnLogger(base, "tcp", remote, "dev1").Info("hello", "k", "v")
	if got := buf.String(); !strings.Contains(got, "msg=hello listener=tcp remote=192.0.2.1:1883 client=dev1 k=v") {
		t.Errorf("logged %q", got)
	}
}
