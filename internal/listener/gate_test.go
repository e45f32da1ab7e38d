package listener

import (
	"context"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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
			t.Fatal(err)
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
