package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

// newClock returns a manual clock at the current time.
func newClock() *testutil.Clock { return testutil.NewClock(time.Now()) }

// debugLogger logs everything, as text, to w (a *testutil.Buffer the test
// inspects).
func debugLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// env is a CA, a server certificate on disk, and a listener config.
type env struct {
	dir    string
	ca     *testpki.Cert
	server *testpki.Cert
	clock  *testutil.Clock
	logs   *testutil.Buffer
	cfg    ListenerConfig
}

func newEnv(t *testing.T, kt testpki.KeyType) *env {
	t.Helper()
	e := &env{dir: t.TempDir(), clock: newClock(), logs: &testutil.Buffer{}}
	e.ca = testpki.NewRoot(t, "Moat Test CA "+kt.String(), kt)
	e.server = e.ca.Issue(t, testpki.Options{CN: "localhost", DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Key: kt, KeyIndex: 1})
	cf, kf := e.server.WriteFiles(t, e.dir, "server")
	caFile := e.dir + "/ca.pem"
	testpki.WriteFile(t, caFile, e.ca.PEM())
	e.cfg = ListenerConfig{
		Name:         "test",
		Certificates: []KeyPair{{CertFile: cf, KeyFile: kf}},
		CAFile:       caFile,
		PollInterval: 10 * time.Millisecond,
		Now:          e.clock.Now,
		Logger:       debugLogger(e.logs),
	}
	return e
}

func (e *env) manager(t *testing.T) *Manager {
	t.Helper()
	m, err := New(e.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func (e *env) writeCRL(t *testing.T, name string, next time.Duration, revoked ...*testpki.Cert) string {
	t.Helper()
	p := e.dir + "/" + name
	now := e.clock.Now()
	testpki.WriteFile(t, p, e.ca.CRL(t, now.Add(-time.Minute), now.Add(next), revoked...))
	return p
}

// server is a TLS echo server whose accepted connections report the
// outcome of their handshake.
type server struct {
	addr    string
	m       *Manager
	results chan serverConn
}

type serverConn struct {
	conn *tls.Conn
	err  error
}

func serve(t *testing.T, m *Manager) *server {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: ln.Addr().String(), m: m, results: make(chan serverConn, 64)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := c.(*tls.Conn)
				err := Handshake(t.Context(), tc, 5*time.Second)
				select {
				case s.results <- serverConn{tc, err}:
				default:
				}
				if err != nil {
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	return s
}

// clientConfig trusts ca and presents cert (when not nil).
func clientConfig(ca *testpki.Cert, cert *testpki.Cert) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	c := &tls.Config{RootCAs: pool, ServerName: "localhost"}
	if cert != nil {
		// Always send the certificate, as devices do, even when it does
		// not match the CA names in the server's CertificateRequest.
		tc := cert.TLS()
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tc, nil }
	}
	return c
}

// roundTrip dials addr, completes the handshake and an echo exchange, so a
// refusal by the server (which TLS 1.3 reports after the client's side of
// the handshake) surfaces as an error. The connection is returned open.
func roundTrip(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	if err := echo(c); err != nil {
		c.Close()
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

func echo(c *tls.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return errors.New("bad echo")
	}
	return nil
}

// nextResult returns the server-side outcome of the next handshake.
func (s *server) nextResult(t *testing.T) serverConn {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no server handshake result")
		return serverConn{}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// tlsServer wraps an accepted connection with the Manager's config.
func tlsServer(c net.Conn, m *Manager) *tls.Conn { return tls.Server(c, m.TLSConfig()) }

// nextResultOrNone returns the next server-side handshake outcome, or nil
// when the client never got as far as a handshake.
func (s *server) nextResultOrNone(d time.Duration) *serverConn {
	select {
	case r := <-s.results:
		return &r
	case <-time.After(d):
		return nil
	}
}
