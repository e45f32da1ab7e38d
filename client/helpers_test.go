package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker/brokertest"
	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"

	"github.com/moatmq/moat/internal/broker"
)

// testPKI is a CA with a server certificate for 127.0.0.1/localhost and a
// client certificate, from the shared test PKI, with the server's files
// written for Mosquitto.
type testPKI struct {
	caFile, certFile, keyFile string // server files
	pool                      *x509.CertPool
	client                    tls.Certificate
	serverTLS                 tls.Certificate
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca := testpki.NewRoot(t, "Moat test CA", testpki.P256)
	srv := ca.Issue(t, testpki.ServerOptions())
	p := &testPKI{
		caFile:    ca.WritePEM(t, filepath.Join(dir, "ca.pem")),
		pool:      ca.Pool(),
		serverTLS: srv.TLS(),
		client:    ca.Issue(t, testpki.Options{CN: "device-1", EKU: testpki.ClientAuth}).TLS(),
	}
	p.certFile, p.keyFile = srv.WriteFiles(t, dir, "server")
	return p
}

// mosquitto is a Debian mosquitto broker started for a test.
type mosquitto struct {
	tcp, tls, mtls, ws string // host:port of each listener
	pki                *testPKI
}

// startMosquitto starts mosquitto with a plain, a TLS, a mutual TLS and a
// WebSocket listener on 127.0.0.1; it is killed when the test ends.
// extra is appended to the configuration.
func startMosquitto(t testing.TB, extra string) *mosquitto {
	t.Helper()
	p := newPKI(t)
	peer := testutil.StartMosquitto(t, 4, func(ports []int) string {
		return fmt.Sprintf(`per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
listener %d 127.0.0.1
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
listener %d 127.0.0.1
protocol websockets
%s
`, ports[0], ports[1], p.caFile, p.certFile, p.keyFile, ports[2], p.caFile, p.certFile, p.keyFile, ports[3], extra)
	})
	return &mosquitto{pki: p, tcp: peer.Addr(0), tls: peer.Addr(1), mtls: peer.Addr(2), ws: peer.Addr(3)}
}

// startMoat runs Moat's broker in-process (anonymous clients allowed) and
// returns its address.
func startMoat(t testing.TB, cfg broker.Config) string {
	t.Helper()
	cfg.AllowAnonymous = true
	return brokertest.Start(t, cfg, brokertest.Options{}).Addr
}

// dial connects a client and closes it when the test ends.
func dial(t testing.TB, cfg Config) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial %v: %v", cfg.Servers, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv waits for the next message on c.Messages().
func recv(t testing.TB, c *Client) *Message {
	t.Helper()
	select {
	case m, ok := <-c.Messages():
		if !ok {
			t.Fatalf("message channel closed: %v", c.Err())
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
	}
	return nil
}

// noMessage checks that no message arrives for a short while.
func noMessage(t testing.TB, c *Client, d time.Duration) {
	t.Helper()
	select {
	case m := <-c.Messages():
		t.Fatalf("unexpected message %q on %q", m.Payload, m.Topic)
	case <-time.After(d):
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}
