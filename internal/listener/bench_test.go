package listener

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/coder/websocket"
)

// BenchmarkRead measures the byte-stream read path per transport: 1 KiB
// writes from a client, read back through the listener's conn.
func BenchmarkRead(b *testing.B) {
	const size = 1024
	msg := make([]byte, size)
	b.Run("tcp+proxy", func(b *testing.B) {
		l := listen(b, Config{Proxy: &ProxyConfig{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}})
		ch := acceptAsync(l)
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		c.Write(proxyHeader(b, 2))
		srv := waitAccept(b, ch)
		go func() {
			for {
				if _, err := c.Write(msg); err != nil {
					return
				}
			}
		}()
		b.SetBytes(size)
		buf := make([]byte, size)
		b.ResetTimer()
		for b.Loop() {
			if _, err := io.ReadFull(srv, buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ws", func(b *testing.B) {
		l := listen(b, Config{Transport: WebSocket})
		ch := acceptAsync(l)
		c, _, err := wsDial(b, l, "/", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer c.CloseNow()
		srv := waitAccept(b, ch)
		go func() {
			for {
				if err := c.Write(context.Background(), websocket.MessageBinary, msg); err != nil {
					return
				}
			}
		}()
		b.SetBytes(size)
		buf := make([]byte, size)
		b.ResetTimer()
		for b.Loop() {
			if _, err := io.ReadFull(srv, buf); err != nil {
				b.Fatal(err)
			}
		}
	})
}
