package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// dialSmallWindow dials addr with a small socket receive buffer, so that
// what the server sends stays in the server's send queue until the client
// reads it.
func dialSmallWindow(t *testing.T, addr string, useTLS bool) *rawClient {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = testutil.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	var nc net.Conn
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if useTLS {
		tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		nc = tc
	}
	r := packet.NewReader(nc, 0)
	r.SetVersion(packet.V5)
	return &rawClient{t: t, nc: nc, r: r, v: packet.V5}
}

// floodQoS2 writes QoS 2 PUBLISH packets with fresh packet identifiers,
// one per write, until a write fails, and never sends PUBREL: a client
// that keeps sending after it broke the server's Receive Maximum.
func floodQoS2(nc net.Conn) {
	nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for pid := 1; ; pid++ {
		b, _ := packet.Append(nil, &packet.Publish{Topic: "flood", QoS: 2, PacketID: uint16(pid%65535 + 1), Payload: []byte("x")}, packet.V5)
		if _, err := nc.Write(b); err != nil {
			return
		}
	}
}

// TestServerDisconnectReachesClient checks that a DISCONNECT the server
// sends while the client keeps writing reaches the client
// [MQTT-4.13.2-1]. The client has messages waiting for it, so the
// DISCONNECT sits in the server's send queue behind them when the server
// ends the connection; closing a socket with unread input makes the
// kernel send a reset and throw that queue away. The server must
// half-close (after a TLS close_notify) and drain the input instead.
// Several tries show it is reliable.
func TestServerDisconnectReachesClient(t *testing.T) {
	testutil.CheckNoLeaks(t)
	t.Run("tcp", func(t *testing.T) {
		_, addr := testServer(t, Config{ReceiveMaximum: 2})
		disconnectWhileFlooding(t, addr, false)
	})
	t.Run("tls", func(t *testing.T) {
		_, addr := testServerTLS(t, Config{ReceiveMaximum: 2})
		disconnectWhileFlooding(t, addr, true)
	})
}

func disconnectWhileFlooding(t *testing.T, addr string, useTLS bool) {
	pub := dialSmallWindow(t, addr, useTLS)
	pub.connect(v5connect("flood-pub"))
	payload := make([]byte, 1024)
	pid := uint16(0)
	for try := range 5 {
		c := dialSmallWindow(t, addr, useTLS)
		c.connect(v5connect("flood-" + strconv.Itoa(try)))
		subscribe(t, c, 1, packet.Subscription{Filter: "backlog/" + strconv.Itoa(try)})
		// 128 KiB for the client that it does not read yet; each PUBACK
		// means the message was queued for it.
		for range 128 {
			pid++
			publishAcked(t, pub, pid, &packet.Publish{Topic: "backlog/" + strconv.Itoa(try), Payload: payload})
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			floodQoS2(c.nc)
		}()
		var got *packet.Disconnect
		var readErr error
		for got == nil && readErr == nil {
			var p packet.Packet
			p, readErr = c.recvErr(5 * time.Second)
			if d, ok := p.(*packet.Disconnect); ok && readErr == nil {
				got = d
			}
		}
		c.nc.Close()
		wg.Wait()
		if got == nil {
			t.Fatalf("try %d: no DISCONNECT before the connection ended: %v", try, readErr)
		}
		if got.ReasonCode != packet.ReceiveMaximumExceeded {
			t.Fatalf("try %d: DISCONNECT %v, want 0x93", try, got.ReasonCode)
		}
	}
}

// TestSessionEndsBeforeClose checks the order of a connection's end: a
// session that ends with its connection is gone (its subscriptions
// removed) before the client can see the connection close, so a message
// published right after cannot match it [MQTT-3.1.2-23].
func TestSessionEndsBeforeClose(t *testing.T) {
	_, addr := testServer(t, Config{})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("order-pub"))
	for i := range 100 {
		c := dialRaw(t, addr, packet.V5)
		c.connect(connectV5("order", false, nil))
		subscribe(t, c, 1, packet.Subscription{Filter: "order/#", QoS: 1})
		closeAndWait(t, c, &packet.Disconnect{})
		if a := publishAcked(t, pub, uint16(i+1), &packet.Publish{Topic: "order/a"}); a.ReasonCode != packet.NoMatchingSubscribers {
			t.Fatalf("try %d: PUBACK %v: the session outlived the connection its client saw closed", i, a.ReasonCode)
		}
	}
}

// TestInflightExpiryResend checks the Message Expiry Interval of a
// message resent after it expired in flight: it is resent [MQTT-4.3.3-7]
// with the interval it was first sent with, not 0, because it stopped
// waiting in the server when its delivery started [MQTT-3.3.2-6]; a
// message that expired while queued is dropped [MQTT-3.3.2-5].
func TestInflightExpiryResend(t *testing.T) {
	clock := newFakeClock()
	_, addr := testServer(t, Config{Clock: clock})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(connectV5("ie-sub", true, withExpiry(3600)))
	subscribe(t, sub, 1, packet.Subscription{Filter: "ie/#", QoS: 1})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("ie-pub"))
	p := &packet.Publish{Topic: "ie/inflight", Payload: []byte("a")}
	p.Properties.SetMessageExpiry(10)
	publishAcked(t, pub, 1, p)
	first := recvPublish(t, sub)
	if first.Properties.MessageExpiry != 10 {
		t.Fatalf("first send: expiry %d, want 10", first.Properties.MessageExpiry)
	}
	closeAndWait(t, sub, &packet.Disconnect{}) // not acknowledged
	q := &packet.Publish{Topic: "ie/queued", Payload: []byte("b")}
	q.Properties.SetMessageExpiry(10)
	publishAcked(t, pub, 2, q)
	clock.advance(30 * time.Second)
	sub2, ack := reconnect(t, addr, packet.V5, connectV5("ie-sub", false, withExpiry(3600)))
	if !ack.SessionPresent {
		t.Fatal("session lost")
	}
	again := recvPublish(t, sub2)
	if !again.Dup || again.Topic != "ie/inflight" || again.Properties.MessageExpiry != 10 {
		t.Fatalf("resend: dup %v topic %q expiry %d, want the in-flight message with expiry 10", again.Dup, again.Topic, again.Properties.MessageExpiry)
	}
	sub2.send(&packet.Puback{PacketID: again.PacketID})
	expectNone(t, sub2)
}

// TestExpiredQueuedMessagesMakeRoom checks that messages that expired
// while queued for an offline client are dropped rather than keep a full
// queue from taking new messages [MQTT-3.3.2-5].
func TestExpiredQueuedMessagesMakeRoom(t *testing.T) {
	clock := newFakeClock()
	_, addr := testServer(t, Config{Clock: clock, MaxQueued: 2})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(connectV5("eq-sub", true, withExpiry(3600)))
	subscribe(t, sub, 1, packet.Subscription{Filter: "eq/#", QoS: 1})
	closeAndWait(t, sub, &packet.Disconnect{})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("eq-pub"))
	for i := range 2 {
		p := &packet.Publish{Topic: "eq/old", Payload: []byte("old")}
		p.Properties.SetMessageExpiry(10)
		publishAcked(t, pub, uint16(i+1), p)
	}
	clock.advance(30 * time.Second)
	publishAcked(t, pub, 3, &packet.Publish{Topic: "eq/new", Payload: []byte("new")})
	sub2, _ := reconnect(t, addr, packet.V5, connectV5("eq-sub", false, withExpiry(3600)))
	if p := recvPublish(t, sub2); p.Topic != "eq/new" {
		t.Fatalf("got %q, want eq/new", p.Topic)
	}
	expectNone(t, sub2)
}

// TestShutdownReportsStuckGoroutines checks Shutdown with a context that
// ends while a goroutine of the server cannot finish (an Authenticator
// that does not return): Shutdown still returns, with an error wrapping
// the context's and counting what is left by kind, and a second Shutdown
// waits for it once it can finish.
func TestShutdownReportsStuckGoroutines(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv, addr := testServer(t, Config{Authenticator: AuthenticatorFunc(func(context.Context, *ConnectRequest) AuthResult {
		once.Do(func() { close(entered) })
		<-release // ignores its context, as a broken backend might
		return AuthResult{Allow: true}
	})})
	c := dialRaw(t, addr, packet.V5)
	c.send(v5connect("stuck"))
	<-entered

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := srv.Shutdown(ctx)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "connecting: 1") {
		t.Fatalf("Shutdown = %v, want context.Canceled and the connecting goroutine counted", err)
	}
	close(release)
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if n := srv.goroutines.total.Load(); n != 0 {
		t.Fatalf("%d goroutines running after Shutdown", n)
	}
}

// TestShutdownStopsTimers checks that a session expiry or will delay
// timer that is due during Shutdown does nothing: no goroutine runs after
// Shutdown returns.
func TestShutdownStopsTimers(t *testing.T) {
	clock := newFakeClock()
	srv, addr := testServer(t, Config{Clock: clock})
	cp := connectV5("timers", true, withExpiry(60))
	cp.Will = &packet.Will{Topic: "will/timers", Payload: []byte("x")}
	cp.Will.Properties.SetWillDelay(30)
	c := dialRaw(t, addr, packet.V5)
	c.connect(cp)
	c.nc.Close()
	waitOffline(t, srv, "timers")
	if n := clock.pending(); n != 2 {
		t.Fatalf("%d timers pending, want will delay and session expiry", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := clock.pending(); n != 0 {
		t.Fatalf("%d timers pending after Shutdown", n)
	}
}
