package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// TestSecurityGateBeforeWebSocketUpgrade: a connection the Gate refuses (a
// flooding or banned address) is closed before the HTTP server reads a
// byte of it, so it costs no upgrade (or, for wss, TLS) work; one it admits
// is served.
func TestSecurityGateBeforeWebSocketUpgrade(t *testing.T) {
	var admit atomic.Bool
	var asked atomic.Int64
	l, err := Listen(context.Background(), Config{Address: "127.0.0.1:0", Transport: WebSocket,
		Gate: func(remote net.Addr) bool {
			asked.Add(1)
			return admit.Load()
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	request := func() string {
		t.Helper()
		nc, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			// Refused with a reset before the dial completed.
			return ""
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		b, _ := io.ReadAll(io.LimitReader(nc, 64))
		return string(b)
	}
	if got := request(); got != "" {
		t.Fatalf("refused connection got an answer: %q", got)
	}
	admit.Store(true)
	if got := request(); !strings.HasPrefix(got, "HTTP/1.1 ") {
		t.Fatalf("admitted connection: %q", got)
	}
	if asked.Load() != 2 {
		t.Fatalf("gate asked %d times, want 2", asked.Load())
	}
}

// TestSecurityGateBeforeTLS: on a TLS listener the Gate runs on the bare
// socket: a refused client (127.0.0.2, a flooding or banned address) gets
// a reset before any TLS work and never reaches Accept, so its socket
// leaves no FIN_WAIT or TIME_WAIT state behind; an admitted one (127.0.0.3)
// handshakes, with TCP keep-alive as configured (set on admitted sockets
// only).
func TestSecurityGateBeforeTLS(t *testing.T) {
	pki := newTestPKI(t)
	for _, tt := range []struct {
		name      string
		keepAlive time.Duration
		want      int // SO_KEEPALIVE
	}{{"keepalive default", 0, 1}, {"keepalive off", -1, 0}} {
		t.Run(tt.name, func(t *testing.T) {
			var asked atomic.Int64
			l := listen(t, Config{Transport: TLS, TLS: pki.serverTLS(), KeepAlive: tt.keepAlive,
				Gate: func(remote net.Addr) bool {
					asked.Add(1)
					return !strings.HasPrefix(remote.String(), "127.0.0.2:")
				}})
			accepted := make(chan net.Conn, 4)
			var wg sync.WaitGroup
			wg.Go(func() {
				for {
					c, err := l.Accept()
					if err != nil {
						close(accepted)
						return
					}
					accepted <- c
				}
			})
			t.Cleanup(func() {
				l.Close()
				wg.Wait()
			})
			dial := func(src string) (net.Conn, error) {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
				nc, err := d.Dial("tcp", l.Addr().String())
				if err != nil {
					return nil, err
				}
				t.Cleanup(func() { nc.Close() })
				nc.SetDeadline(time.Now().Add(5 * time.Second))
				return nc, nil
			}
			// The reset may come before the dial returns, or after.
			nc, err := dial("127.0.0.2")
			if err == nil {
				err = tls.Client(nc, pki.clientTLS(false)).Handshake()
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("refused client: %v, want a reset", err)
			}
			nc, err = dial("127.0.0.3")
			if err != nil {
				t.Fatal(err)
			}
			good := tls.Client(nc, pki.clientTLS(true))
			errc := make(chan error, 1)
			go func() { errc <- good.Handshake() }()
			var sc net.Conn
			select {
			case sc = <-accepted:
			case <-time.After(5 * time.Second):
				t.Fatal("admitted connection not accepted")
			}
			defer sc.Close()
			tc := sc.(*tls.Conn)
			if err := tc.HandshakeContext(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(sc.RemoteAddr().String(), "127.0.0.3:") {
				t.Fatalf("accepted %v, want the client from 127.0.0.3", sc.RemoteAddr())
			}
			rc, err := tc.NetConn().(*Conn).Conn.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var ka int
			rc.Control(func(fd uintptr) { ka, err = testutil.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) })
			if err != nil || ka != tt.want {
				t.Errorf("SO_KEEPALIVE %d (%v), want %d", ka, err, tt.want)
			}
			if n := asked.Load(); n != 2 {
				t.Errorf("gate asked %d times, want 2", n)
			}
		})
	}
}
