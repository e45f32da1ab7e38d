package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

func benchEnv(b *testing.B) (*Manager, *testpki.Cert) {
	b.Helper()
	ca := testpki.NewRoot(b, "Bench CA", testpki.P256)
	dir := b.TempDir()
	srv := ca.Issue(b, testpki.Options{CN: "localhost", DNS: []string{"localhost"}})
	cf, kf := srv.WriteFiles(b, dir, "server")
	testpki.WriteFile(b, dir+"/ca.pem", ca.PEM())
	now := time.Now()
	testpki.WriteFile(b, dir+"/ca.crl", ca.CRL(b, now.Add(-time.Minute), now.Add(time.Hour)))
	m, err := New(ListenerConfig{Certificates: []KeyPair{{cf, kf}}, CAFile: dir + "/ca.pem", CRLFiles: []string{dir + "/ca.crl"},
		Logger: debugLogger(io.Discard), DisableOCSPStapling: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m, ca.Issue(b, testpki.Options{CN: "dev"})
}

// BenchmarkVerifyChain is the per-handshake verification with the chain
// cache warm (CRL lookup included).
func BenchmarkVerifyChain(b *testing.B) {
	m, dev := benchEnv(b)
	peer := []*x509.Certificate{dev.Cert}
	for b.Loop() {
		if _, err := m.VerifyChain(context.Background(), peer); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWatch is registering and unregistering one live session.
func BenchmarkWatch(b *testing.B) {
	m, dev := benchEnv(b)
	peer := []*x509.Certificate{dev.Cert}
	for b.Loop() {
		stop, err := m.Watch(peer, func(Reason) {})
		if err != nil {
			b.Fatal(err)
		}
		stop()
	}
}

// BenchmarkRecheck20k is the CRL re-check of 20,000 live sessions that a
// CRL reload costs.
func BenchmarkRecheck20k(b *testing.B) {
	m, dev := benchEnv(b)
	peer := []*x509.Certificate{dev.Cert}
	for i := 0; i < 20000; i++ {
		if _, err := m.Watch(peer, func(Reason) {}); err != nil {
			b.Fatal(err)
		}
	}
	st := m.state.Load()
	for b.Loop() {
		m.watch.recheckAll(st, false)
	}
}

func BenchmarkSubjectDN(b *testing.B) {
	ca := testpki.NewRoot(b, "Bench CA", testpki.P256)
	c := ca.Issue(b, testpki.Options{CN: "sensor-1"})
	for b.Loop() {
		if _, err := SubjectDN(c.Cert); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServerHandshake is one full mutual-TLS handshake (TLS 1.3,
// P-256 certificates, X25519MLKEM768) in memory, client and server in
// this process, served by a bare crypto/tls config that verifies client
// certificates itself (floor) and by the Manager (manager: identity-free
// listener, a CRL). The client's work is the same in both, so the
// difference is what the Manager adds to the server's side. The
// Manager's verified-chain cache is emptied before every handshake: in a
// storm each device's first handshake finds nothing there.
//
//	go test -run '^$' -bench ServerHandshake -benchmem ./internal/tlsconf
func BenchmarkServerHandshake(b *testing.B) {
	m, dev := benchEnv(b)
	st := m.state.Load()
	floor := &tls.Config{Certificates: []tls.Certificate{*st.certs[0].cert.Load()}, ClientCAs: st.roots,
		ClientAuth: tls.RequireAndVerifyClientCert, SessionTicketsDisabled: true}
	pool := x509.NewCertPool()
	pool.AddCert(st.caCerts[0])
	devCert := dev.TLS()
	client := &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{devCert}}
	for _, tc := range []struct {
		name string
		srv  *tls.Config
	}{{"floor", floor}, {"manager", m.TLSConfig()}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				m.state.Load().verified.Clear()
				cc, sc := net.Pipe()
				done := make(chan error, 1)
				go func() {
					s := tls.Server(sc, tc.srv)
					err := s.Handshake()
					if err == nil {
						// The client's certificate flight is checked
						// once the client reads the server's answer.
						_, err = s.Write([]byte{1})
					}
					done <- err
				}()
				c := tls.Client(cc, client)
				if err := c.Handshake(); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Read(make([]byte, 1)); err != nil {
					b.Fatal(err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				cc.Close()
				sc.Close()
			}
		})
	}
}
