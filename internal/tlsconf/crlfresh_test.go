package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// loadedCRLLeft returns the time left before the nextUpdate of the CRL
// the Manager currently uses from path.
func loadedCRLLeft(m *Manager, path string, now time.Time) time.Duration {
	var left time.Duration
	for _, list := range m.state.Load().crls {
		for _, c := range list {
			if c.path == path {
				left = c.list.NextUpdate.Sub(now)
			}
		}
	}
	return left
}

// loopTicks returns how many times the background loop has run.
func (m *Manager) loopTicks() uint64 { return m.polls.Load() }

// settle waits until the background loop has run at the current time of
// the clock and any CRL renewal it started has finished.
func settle(m *Manager) {
	p := m.loopTicks()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		m.crlFresh.mu.Lock()
		busy := m.crlFresh.renewing
		m.crlFresh.mu.Unlock()
		if m.loopTicks() >= p+2 && !busy {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pkiClient is a client configuration presenting a certificate from the
// built-in CA.
func pkiClient(t *testing.T, ca *pki.CA, iss *pki.Issued) *tls.Config {
	t.Helper()
	tc, err := iss.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Root())
	return &tls.Config{RootCAs: pool, ServerName: "localhost",
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tc, nil }}
}

// TestSecurityBuiltinCRLKeptFresh: the attack is on availability. The
// built-in CA's CRL is valid for 7 days and nothing but `moat ca serve`
// re-signed it, so a broker running for a week cut off every connected
// client and refused every new one (crl_stale: refuse) without anyone
// revoking anything. Here the clock runs through four CRL validity periods
// with clients connected: they must stay, new ones must be admitted, and a
// revocation made meanwhile must still end its session.
func TestSecurityBuiltinCRLKeptFresh(t *testing.T) {
	clock := newClock()
	logs := &testutil.Buffer{}
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	ca, err := pki.Init(caDir, pki.InitOptions{Config: pki.Config{Now: clock.Now, Logger: debugLogger(logs)}})
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.IssueServer("localhost", []string{"DNS:localhost", "IP:127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := srvCert.WriteFiles(filepath.Join(dir, "server")); err != nil {
		t.Fatal(err)
	}
	crlFile := filepath.Join(caDir, pki.FileCRL)
	m, err := New(ListenerConfig{
		Name:         "builtin",
		Certificates: []KeyPair{{CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server.key")}},
		CAFile:       filepath.Join(caDir, pki.FileRoot),
		CRLFiles:     []string{crlFile},
		CRLRenewers: []CRLRenewer{{File: crlFile, Renew: func() error {
			_, err := ca.RegenerateCRL()
			return err
		}}},
		PollInterval: 10 * time.Millisecond,
		Now:          clock.Now,
		Logger:       debugLogger(logs),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	srv := serve(t, m)

	connect := func(name string) (*pki.Issued, *dropRecorder) {
		t.Helper()
		iss, err := ca.IssueDevice(name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := roundTrip(t, srv.addr, pkiClient(t, ca, iss)); err != nil {
			t.Fatalf("%s refused: %v", name, err)
		}
		return iss, watchConn(t, m, serverPeer(t, srv))
	}
	validity := pki.DefaultCRLValidity
	var live []*dropRecorder
	_, d := connect("steady-1")
	live = append(live, d)
	victim, dVictim := connect("victim")

	days := int(4 * validity / (24 * time.Hour))
	for day := 1; day <= days; day++ {
		clock.Advance(24 * time.Hour)
		settle(m)
		for i, d := range live {
			if d.get() != 0 {
				t.Fatalf("day %d: client %d dropped: %v\n%s", day, i, d.get(), logs.String())
			}
		}
		if left := loadedCRLLeft(m, crlFile, clock.Now()); left < validity/2 {
			t.Errorf("day %d: the CRL in use has %v left, want it renewed at half its validity", day, left)
		}
		switch {
		case day == 10:
			if _, err := ca.RevokeCertificate(victim.Certificate, pki.ReasonKeyCompromise); err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, "revoked session dropped", 5*time.Second, func() bool { return dVictim.get() == ReasonRevoked })
			if _, err := roundTrip(t, srv.addr, pkiClient(t, ca, victim)); err == nil {
				t.Fatal("revoked client reconnected")
			}
			if r := srv.nextResult(t); r.err == nil {
				t.Fatal("server accepted the revoked client")
			}
		case day%5 == 0:
			_, d := connect(fmt.Sprintf("joiner-%d", day))
			live = append(live, d)
		}
		if day > 10 && dVictim.get() != ReasonRevoked {
			t.Fatalf("day %d: drop reason of the revoked client changed to %v", day, dVictim.get())
		}
	}
	// The revocation survives every later renewal.
	if _, err := roundTrip(t, srv.addr, pkiClient(t, ca, victim)); err == nil {
		t.Fatal("revoked client admitted after later renewals")
	}
	out := logs.String()
	for _, bad := range []string{"past its nextUpdate", "CRL expires soon", "renewing the CRL failed"} {
		if strings.Contains(out, bad) {
			t.Errorf("log has %q:\n%s", bad, out)
		}
	}
	if n := strings.Count(out, "renewed the CRL at half its validity"); n < days/5 {
		t.Errorf("%d renewals logged over %d days, want at least %d", n, days, days/5)
	}
}

// TestCRLExpiryWarning: a CRL published by someone else warns, rate-limited,
// once less than a third of its validity (or two days) is left.
func TestCRLExpiryWarning(t *testing.T) {
	e := newEnv(t, testpki.P256)
	e.cfg.CRLFiles = []string{e.writeCRL(t, "ca.crl", 7*24*time.Hour)}
	m := e.manager(t)
	const msg = "CRL expires soon"
	count := func() int { return strings.Count(e.logs.String(), msg) }

	e.clock.Advance(4 * 24 * time.Hour) // ~3 days left: quiet
	settle(m)
	if n := count(); n != 0 {
		t.Fatalf("warned with 3 days of 7 left:\n%s", e.logs.String())
	}
	e.clock.Advance(24 * time.Hour) // ~2 days left: warn
	testutil.WaitFor(t, "expiry warning", 5*time.Second, func() bool { return count() == 1 })
	e.clock.Advance(30 * time.Minute)
	settle(m)
	if n := count(); n != 1 {
		t.Fatalf("warning not rate-limited: %d warnings in 30 minutes", n)
	}
	e.clock.Advance(31 * time.Minute)
	testutil.WaitFor(t, "repeated warning", 5*time.Second, func() bool { return count() == 2 })
	if !strings.Contains(e.logs.String(), "renewed_here=false") {
		t.Errorf("warning does not say nobody here renews it:\n%s", e.logs.String())
	}
}

// TestCRLRenewFailureRetried: a failing renewal is logged and retried a
// minute later, not on every poll.
func TestCRLRenewFailureRetried(t *testing.T) {
	e := newEnv(t, testpki.P256)
	crl := e.writeCRL(t, "ca.crl", 7*24*time.Hour)
	e.cfg.CRLFiles = []string{crl}
	var calls atomic.Int32
	e.cfg.CRLRenewers = []CRLRenewer{{File: crl, Renew: func() error {
		calls.Add(1)
		return errors.New("pki: the CA database is in use by another moat process")
	}}}
	m := e.manager(t)
	settle(m)
	if calls.Load() != 0 {
		t.Fatal("a fresh CRL was renewed")
	}
	e.clock.Advance(4 * 24 * time.Hour)
	testutil.WaitFor(t, "renewal attempt", 5*time.Second, func() bool { return calls.Load() == 1 })
	e.clock.Advance(30 * time.Second)
	settle(m)
	settle(m)
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d attempts within a minute, want 1", n)
	}
	if !strings.Contains(e.logs.String(), "renewing the CRL failed") {
		t.Errorf("failure not logged:\n%s", e.logs.String())
	}
	e.clock.Advance(31 * time.Second)
	testutil.WaitFor(t, "retry", 5*time.Second, func() bool { return calls.Load() == 2 })
}

func TestCRLRenewerValidation(t *testing.T) {
	e := newEnv(t, testpki.P256)
	e.cfg.CRLFiles = []string{e.writeCRL(t, "ca.crl", time.Hour)}
	e.cfg.CRLRenewers = []CRLRenewer{{File: e.dir + "/other.crl", Renew: func() error { return nil }}, {File: e.cfg.CRLFiles[0]}}
	_, err := New(e.cfg)
	if err == nil || !strings.Contains(err.Error(), "is not one of the crlfiles") || !strings.Contains(err.Error(), "has no Renew function") {
		t.Fatalf("New = %v, want both renewer problems", err)
	}
}
