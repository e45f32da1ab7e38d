package tlsconf

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"
)

// Handshake runs the server handshake on conn, bounded by timeout (when
// positive) and ctx. Listeners call it right after Accept with a timeout
// shorter than the pre-CONNECT timeout, so a peer that stalls the handshake
// cannot hold a connection slot. On error the caller must close conn.
func Handshake(ctx context.Context, conn *tls.Conn, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tlsconf: TLS handshake with %s: %w", conn.RemoteAddr(), err)
	}
	return nil
}
