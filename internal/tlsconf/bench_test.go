package tlsconf

import (
	"context"
	"crypto/x509"
	"io"
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
