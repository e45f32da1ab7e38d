package listener_test

import (
	"context"
	"crypto/tls"
	"log"
	"net/netip"
	"time"

	"github.com/moatmq/moat/internal/listener"
)

// A TLS listener behind a TCP load balancer that sends PROXY headers, served
// the way the broker does: TLS handshake under the pre-CONNECT deadline, then
// the real client address and certificate from the connection.
func ExampleListen() {
	var tlsConfig *tls.Config // built by the TLS policy package
	ln, err := listener.Listen(context.Background(), listener.Config{
		Name:      "devices",
		Address:   "0.0.0.0:8883",
		Transport: listener.TLS,
		TLS:       tlsConfig,
		Proxy:     &listener.ProxyConfig{Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	for {
		conn, err := ln.Accept()
		if err != nil {
			return // net.ErrClosed after Close
		}
		go func() {
			defer conn.Close()
			if hs, ok := conn.(interface{ HandshakeContext(context.Context) error }); ok {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := hs.HandshakeContext(ctx); err != nil {
					return
				}
			}
			info := listener.Info(conn)
			log.Printf("client %v on %s", info.RemoteAddr, info.Listener)
			if info.TLS != nil && len(info.TLS.PeerCertificates) > 0 {
				log.Printf("certificate CN %s", info.TLS.PeerCertificates[0].Subject.CommonName)
			} else if info.ProxyTLS.Verified() {
				log.Printf("balancer verified CN %s", info.ProxyTLS.CommonName)
			}
		}()
	}
}
