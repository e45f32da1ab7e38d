package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"testing"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
	"github.com/moatmq/moat/internal/listener"
)

// startMoatListener runs Moat's broker behind one of Moat's listeners
// (TLS, WebSocket, secure WebSocket) and returns the address.
func startMoatListener(t *testing.T, tr listener.Transport, tc *tls.Config) string {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	ln, err := listener.Listen(context.Background(), listener.Config{Address: "127.0.0.1:0", Transport: tr, TLS: tc, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return brokertest.Start(t, broker.Config{AllowAnonymous: true, Logger: quiet}, brokertest.Options{Net: ln}).Addr
}

// TestMoatListeners connects to Moat's broker over its TLS and WebSocket
// listeners with mutual TLS, and sends batches larger than the WebSocket
// listener's message limit.
func TestMoatListeners(t *testing.T) {
	p := newPKI(t)
	serverTLS := &tls.Config{
		Certificates: []tls.Certificate{p.serverTLS},
		ClientCAs:    p.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
	clientTLS := &tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{p.client}}
	cases := []struct {
		name   string
		tr     listener.Transport
		tls    *tls.Config
		scheme string
	}{
		{"tls", listener.TLS, serverTLS, "mqtts://"},
		{"ws", listener.WebSocket, nil, "ws://"},
		{"wss", listener.WebSocketTLS, serverTLS, "wss://"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := startMoatListener(t, tc.tr, tc.tls)
			url := tc.scheme + addr + "/mqtt"
			if tc.tr == listener.TLS {
				url = tc.scheme + addr
			}
			cfg := Config{Servers: []string{url}, TLSConfig: clientTLS}
			exchange(t, cfg, "listener/"+tc.name)

			c := dial(t, cfg)
			ctx := ctxT(t)
			if _, err := c.Subscribe(ctx, Subscription{Filter: "big/#"}); err != nil {
				t.Fatal(err)
			}
			big := bytes.Repeat([]byte("0123456789abcdef"), 600<<10/16)
			var toks []*Token
			for range 4 {
				toks = append(toks, c.PublishAsync(ctx, &Message{Topic: "big/x", Payload: big}))
			}
			for _, tk := range toks {
				if err := tk.Wait(ctx); err != nil {
					t.Fatal(err)
				}
			}
			for range 4 {
				if m := recv(t, c); !bytes.Equal(m.Payload, big) {
					t.Fatalf("payload of %d bytes changed", len(m.Payload))
				}
			}
			if tc.tls != nil {
				_, err := Dial(ctx, Config{Servers: []string{url}, TLSConfig: &tls.Config{RootCAs: p.pool}})
				if err == nil {
					t.Fatal("connected without a client certificate")
				}
			}
		})
	}
}
