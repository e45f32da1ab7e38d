//go:build linux

package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// waitParked waits until n connections of s are parked.
func waitParked(t testing.TB, s *Server, n int) {
	t.Helper()
	testutil.CheckFor(t, 5*time.Second, func() error {
		if got := s.parked.parked(); got != n {
			return fmt.Errorf("%d connections parked, want %d", got, n)
		}
		return nil
	})
}

// TestParkedConnectionsHaveNoReader checks that quiet connections, over
// TCP and TLS, wait without a goroutine each and wake for their next
// packet, again and again.
func TestParkedConnectionsHaveNoReader(t *testing.T) {
	for _, transport := range []string{"tcp", "tls"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			var s *Server
			var addr string
			if transport == "tls" {
				s, addr = testServerTLS(t, Config{})
			} else {
				s, addr = testServer(t, Config{})
			}
			const n = 20
			clients := make([]*rawClient, n)
			for i := range clients {
				if transport == "tls" {
					clients[i], _ = dialTLSHeld(t, addr, packet.V5)
				} else {
					clients[i] = dialRaw(t, addr, packet.V5)
				}
				clients[i].connect(v5connect(fmt.Sprintf("parked-%d", i)))
			}
			// A client that sent nothing after CONNECT is quiet at once,
			// and parked parkAfter later; its reader goroutine ends.
			waitParked(t, s, n)
			testutil.CheckFor(t, 5*time.Second, func() error {
				if r := s.goroutines.byKind[goReader].Load(); r != 0 {
					return fmt.Errorf("%d reader goroutines for %d parked connections", r, n)
				}
				return nil
			})
			for round := range 2 {
				// A packet more than quietAfter after the last one finds
				// the connection parked; once handled, it parks again.
				time.Sleep(quietAfter + 200*time.Millisecond)
				for i, c := range clients {
					c.send(&packet.Pingreq{})
					if _, ok := c.recv().(*packet.Pingresp); !ok {
						t.Fatalf("round %d, client %d: no PINGRESP", round, i)
					}
				}
				waitParked(t, s, n)
			}
		})
	}
}

// TestParkedKeepAlive checks that a parked connection is still cut off
// one and a half keep-alive periods after its last packet
// [MQTT-3.1.2-24].
func TestParkedKeepAlive(t *testing.T) {
	s, addr := testServer(t, Config{})
	c := dialRaw(t, addr, packet.V5)
	cp := v5connect("parked-ka")
	cp.KeepAlive = 1
	c.connect(cp)
	start := time.Now()
	waitParked(t, s, 1)
	d := c.expectClosed(5 * time.Second)
	if d == nil || d.ReasonCode != packet.KeepAliveTimeout {
		t.Fatalf("DISCONNECT %+v, want keep alive timeout", d)
	}
	if el := time.Since(start); el < 1400*time.Millisecond || el > 2700*time.Millisecond {
		t.Fatalf("closed %v after CONNECT, want about 1.5 s", el)
	}
	waitParked(t, s, 0)
}

// TestParkedPeerCloses checks that a client closing a parked connection
// ends its session.
func TestParkedPeerCloses(t *testing.T) {
	s, addr := testServer(t, Config{})
	c := dialRaw(t, addr, packet.V5)
	cp := v5connect("parked-close")
	cp.CleanStart = false
	cp.Properties.SetSessionExpiry(60)
	c.connect(cp)
	waitParked(t, s, 1)
	c.nc.Close()
	waitOffline(t, s, "parked-close")
	waitParked(t, s, 0)
}

// TestParkedTakeover checks that a parked connection is woken and closed
// when another connection takes its session over [MQTT-3.1.4-3].
func TestParkedTakeover(t *testing.T) {
	s, addr := testServer(t, Config{})
	a := dialRaw(t, addr, packet.V5)
	a.connect(v5connect("parked-same"))
	waitParked(t, s, 1)
	b := dialRaw(t, addr, packet.V5)
	if ack := b.connect(v5connect("parked-same")); ack.ReasonCode != packet.Success {
		t.Fatalf("CONNACK %v", ack.ReasonCode)
	}
	if d := a.expectClosed(5 * time.Second); d == nil || d.ReasonCode != packet.SessionTakenOver {
		t.Fatalf("first connection: DISCONNECT %+v, want session taken over", d)
	}
	b.send(&packet.Pingreq{})
	if _, ok := b.recv().(*packet.Pingresp); !ok {
		t.Fatal("no PINGRESP on the new connection")
	}
}

// TestShutdownWithParkedConnections checks that Shutdown wakes and closes
// parked connections (each client reads DISCONNECT) and that nothing is
// left running, the poller included.
func TestShutdownWithParkedConnections(t *testing.T) {
	testutil.CheckNoLeaks(t)
	s, err := New(Config{AllowAnonymous: true, SysInterval: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln, ListenerConfig{Name: "test"}) }()
	clients := make([]*rawClient, 10)
	for i := range clients {
		clients[i] = dialRaw(t, ln.Addr().String(), packet.V5)
		clients[i].connect(v5connect(fmt.Sprintf("parked-shut-%d", i)))
	}
	waitParked(t, s, len(clients))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	for i, c := range clients {
		if d := c.expectClosed(5 * time.Second); d == nil || d.ReasonCode != packet.ServerShuttingDown {
			t.Fatalf("client %d: DISCONNECT %+v, want server shutting down", i, d)
		}
	}
	if n := s.parked.parked(); n != 0 {
		t.Fatalf("%d connections still parked after Shutdown", n)
	}
}
