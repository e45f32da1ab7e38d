package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

// dropRecorder records the reason of a drop callback.
type dropRecorder struct{ r atomic.Int32 }

func (d *dropRecorder) drop(r Reason) { d.r.Store(int32(r)) }
func (d *dropRecorder) get() Reason   { return Reason(d.r.Load()) }

func watchConn(t *testing.T, m *Manager, c *tls.Conn) *dropRecorder {
	t.Helper()
	d := &dropRecorder{}
	stop, err := m.Watch(c.ConnectionState().PeerCertificates, d.drop)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	t.Cleanup(stop)
	return d
}

// serverPeer returns the server side of the next accepted connection.
func serverPeer(t *testing.T, srv *server) *tls.Conn {
	t.Helper()
	r := srv.nextResult(t)
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.conn
}

func TestLiveRevocationByCRLReload(t *testing.T) {
	e := newEnv(t, testpki.P256)
	dev := e.ca.Issue(t, testpki.Options{CN: "device-7"})
	other := e.ca.Issue(t, testpki.Options{CN: "device-8"})
	crl := e.writeCRL(t, "ca.crl", 24*time.Hour)
	e.cfg.CRLFiles = []string{crl}
	m := e.manager(t)
	srv := serve(t, m)

	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err != nil {
		t.Fatal(err)
	}
	d := watchConn(t, m, serverPeer(t, srv))
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, other)); err != nil {
		t.Fatal(err)
	}
	dOther := watchConn(t, m, serverPeer(t, srv))

	// Publish a CRL revoking device-7; the file watcher picks it up.
	start := time.Now()
	e.writeCRL(t, "ca.crl", 24*time.Hour, dev)
	testutil.WaitFor(t, "revoked session dropped", 5*time.Second, func() bool { return d.get() == ReasonRevoked })
	t.Logf("dropped %v after the CRL was written", time.Since(start))
	if dOther.get() != 0 {
		t.Errorf("unrevoked session dropped: %v", dOther.get())
	}
	if !contains(e.logs.String(), "disconnecting live session") || !contains(e.logs.String(), "CN=device-7") {
		t.Errorf("drop not logged:\n%s", e.logs.String())
	}
	if m.Watched() != 1 {
		t.Errorf("Watched() = %d, want 1", m.Watched())
	}
	// A revoked client cannot reconnect.
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err == nil {
		t.Fatal("revoked client reconnected")
	}
}

func TestLiveExpiry(t *testing.T) {
	e := newEnv(t, testpki.Ed25519)
	now := e.clock.Now()
	dev := e.ca.Issue(t, testpki.Options{CN: "short-lived", Key: testpki.Ed25519, NotAfter: now.Add(time.Hour)})
	m := e.manager(t)
	srv := serve(t, m)
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err != nil {
		t.Fatal(err)
	}
	d := watchConn(t, m, serverPeer(t, srv))
	e.clock.Advance(59 * time.Minute)
	time.Sleep(50 * time.Millisecond) // several polls: nothing may happen yet
	if d.get() != 0 {
		t.Fatalf("dropped early: %v", d.get())
	}
	e.clock.Advance(2 * time.Minute)
	testutil.WaitFor(t, "expired session dropped", 5*time.Second, func() bool { return d.get() == ReasonExpired })
}

func TestStaleCRLPolicies(t *testing.T) {
	for _, policy := range []CRLStalePolicy{CRLStaleRefuse, CRLStaleWarn} {
		t.Run(map[CRLStalePolicy]string{CRLStaleRefuse: "refuse", CRLStaleWarn: "warn"}[policy], func(t *testing.T) {
			e := newEnv(t, testpki.P256)
			dev := e.ca.Issue(t, testpki.Options{CN: "dev"})
			e.cfg.CRLFiles = []string{e.writeCRL(t, "ca.crl", time.Hour)}
			e.cfg.CRLStalePolicy = policy
			m := e.manager(t)
			srv := serve(t, m)
			if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err != nil {
				t.Fatal(err)
			}
			d := watchConn(t, m, serverPeer(t, srv))
			e.clock.Advance(2 * time.Hour)
			testutil.WaitFor(t, "stale CRL logged", 5*time.Second, func() bool { return contains(e.logs.String(), "CRL is past its nextUpdate") })
			_, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev))
			if policy == CRLStaleRefuse {
				testutil.WaitFor(t, "session dropped", 5*time.Second, func() bool { return d.get() == ReasonCRLStale })
				if err == nil {
					t.Fatal("new client accepted with a stale CRL under refuse policy")
				}
			} else {
				if err != nil {
					t.Fatalf("client refused under warn policy: %v", err)
				}
				if d.get() != 0 {
					t.Fatalf("session dropped under warn policy: %v", d.get())
				}
			}
		})
	}
}

func TestCRLMissingForIssuer(t *testing.T) {
	e := newEnv(t, testpki.P256)
	inter := e.ca.Issue(t, testpki.Options{CN: "Issuing CA", IsCA: true, KeyIndex: 4})
	dev := inter.Issue(t, testpki.Options{CN: "dev"})
	e.cfg.CRLFiles = []string{e.writeCRL(t, "root.crl", time.Hour)} // only the root's CRL
	srv := serve(t, e.manager(t))
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err == nil {
		t.Fatal("accepted without a CRL from the leaf's issuer")
	}
	if !contains(e.logs.String(), "reason=crl-missing") {
		t.Errorf("no crl-missing log line:\n%s", e.logs.String())
	}
	// With the intermediate's CRL as well, the device is accepted.
	p := e.dir + "/inter.crl"
	now := e.clock.Now()
	testpki.WriteFile(t, p, inter.CRL(t, now.Add(-time.Minute), now.Add(time.Hour)))
	e.cfg.CRLFiles = append(e.cfg.CRLFiles, p)
	srv2 := serve(t, e.manager(t))
	if _, err := roundTrip(t, srv2.addr, clientConfig(e.ca, dev)); err != nil {
		t.Fatalf("refused with both CRLs: %v", err)
	}
}

// TestReloadKeepsConnections replaces the server certificate and the CA
// bundle while a client is connected: the client keeps talking, new
// clients see the new certificate, and a session whose CA was removed is
// dropped.
func TestReloadKeepsConnections(t *testing.T) {
	e := newEnv(t, testpki.P256)
	dev := e.ca.Issue(t, testpki.Options{CN: "dev"})
	m := e.manager(t)
	srv := serve(t, m)
	c, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev))
	if err != nil {
		t.Fatal(err)
	}
	d := watchConn(t, m, serverPeer(t, srv))

	// New server certificate from the same CA: existing sessions unaffected.
	newServer := e.ca.Issue(t, testpki.Options{CN: "localhost", DNS: []string{"localhost"}, KeyIndex: 5})
	newServer.WriteFiles(t, e.dir, "server")
	testutil.WaitFor(t, "reload", 5*time.Second, func() bool { return contains(e.logs.String(), "reloaded certificates") })
	if err := echo(c); err != nil {
		t.Fatalf("existing connection broken by reload: %v", err)
	}
	c2, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev))
	if err != nil {
		t.Fatal(err)
	}
	if got := c2.ConnectionState().PeerCertificates[0]; !got.Equal(newServer.Cert) {
		t.Fatal("new connection does not see the reloaded certificate")
	}
	serverPeer(t, srv)

	// A broken file keeps the old state.
	testpki.WriteFile(t, e.cfg.Certificates[0].KeyFile, []byte("garbage"))
	if err := m.Reload(); err == nil {
		t.Fatal("Reload accepted a broken key")
	}
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err != nil {
		t.Fatalf("handshake failed after a failed reload: %v", err)
	}
	serverPeer(t, srv)
	newServer.WriteFiles(t, e.dir, "server")

	// Replace the CA bundle: the old CA's sessions are cut off.
	newCA := testpki.NewRoot(t, "New CA", testpki.P256)
	testpki.WriteFile(t, e.cfg.CAFile, newCA.PEM())
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "untrusted session dropped", 5*time.Second, func() bool { return d.get() == ReasonUntrusted })
	if err := echo(c); err != nil {
		t.Fatalf("the TLS connection itself must stay usable until the broker closes it: %v", err)
	}
}

func TestSNI(t *testing.T) {
	e := newEnv(t, testpki.P256)
	a := e.ca.Issue(t, testpki.Options{CN: "a.test", DNS: []string{"a.test"}, KeyIndex: 6})
	b := e.ca.Issue(t, testpki.Options{CN: "b.test", DNS: []string{"b.test"}, Key: testpki.RSA2048, KeyIndex: 1})
	ca, ka := a.WriteFiles(t, e.dir, "a")
	cb, kb := b.WriteFiles(t, e.dir, "b")
	e.cfg.Certificates = append(e.cfg.Certificates, KeyPair{ca, ka}, KeyPair{cb, kb})
	e.cfg.ClientAuth = ClientAuthNone
	srv := serve(t, e.manager(t))
	for _, tt := range []struct {
		sni  string
		want *testpki.Cert
	}{{"a.test", a}, {"b.test", b}, {"localhost", e.server}, {"", e.server}, {"unknown.test", e.server}} {
		cfg := clientConfig(e.ca, nil)
		cfg.ServerName = tt.sni
		cfg.InsecureSkipVerify = true // checking which certificate is served
		c, err := roundTrip(t, srv.addr, cfg)
		if err != nil {
			t.Fatalf("SNI %q: %v", tt.sni, err)
		}
		if !c.ConnectionState().PeerCertificates[0].Equal(tt.want.Cert) {
			t.Errorf("SNI %q: served %s", tt.sni, c.ConnectionState().PeerCertificates[0].Subject)
		}
	}
}

func TestSessionResumptionAndTicketRotation(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			e := newEnv(t, testpki.P256)
			dev := e.ca.Issue(t, testpki.Options{CN: "dev"})
			e.cfg.TicketKeyRotation = time.Hour
			m := e.manager(t)
			srv := serve(t, m)
			cache := tls.NewLRUClientSessionCache(8)
			dial := func() bool {
				cfg := clientConfig(e.ca, dev)
				cfg.MaxVersion = v
				cfg.ClientSessionCache = cache
				cfg.Time = e.clock.Now
				c, err := roundTrip(t, srv.addr, cfg)
				if err != nil {
					t.Fatal(err)
				}
				serverPeer(t, srv)
				return c.ConnectionState().DidResume
			}
			if dial() {
				t.Fatal("first connection resumed")
			}
			if !dial() {
				t.Fatal("second connection did not resume")
			}
			// A reload must not invalidate tickets.
			if err := m.Reload(); err != nil {
				t.Fatal(err)
			}
			if !dial() {
				t.Fatal("no resumption after reload")
			}
			// After one rotation the previous key still decrypts.
			e.clock.Advance(61 * time.Minute)
			testutil.WaitFor(t, "rotation", 5*time.Second, func() bool { return len(m.tickets.keys()) == 2 })
			if !dial() {
				t.Fatal("no resumption within the key lifetime")
			}
			// Past the lifetime (3h) of the key that issued the last ticket,
			// the session is not resumed but a full handshake succeeds.
			for i := 0; i < 4; i++ {
				head := m.tickets.keys()[0]
				e.clock.Advance(61 * time.Minute)
				testutil.WaitFor(t, "rotation", 5*time.Second, func() bool { return m.tickets.keys()[0] != head })
			}
			if n := len(m.tickets.keys()); n != 3 {
				t.Errorf("%d ticket keys kept, want 3 (lifetime 3h / rotation 1h)", n)
			}
			if dial() {
				t.Fatal("resumed with a ticket whose key is past its lifetime")
			}
		})
	}
}

// TestManyWatchers checks that watching many sessions is
// cheap: one goroutine, indexed checks.
func TestManyWatchers(t *testing.T) {
	e := newEnv(t, testpki.P256)
	dev := e.ca.Issue(t, testpki.Options{CN: "dev", NotAfter: e.clock.Now().Add(time.Hour)})
	e.cfg.CRLFiles = []string{e.writeCRL(t, "ca.crl", 24*time.Hour)}
	m := e.manager(t)
	before := runtime.NumGoroutine()
	const n = 20000
	var dropped atomic.Int64
	stops := make([]func(), 0, n)
	for i := 0; i < n; i++ {
		stop, err := m.Watch([]*x509.Certificate{dev.Cert}, func(Reason) { dropped.Add(1) })
		if err != nil {
			t.Fatal(err)
		}
		stops = append(stops, stop)
	}
	if g := runtime.NumGoroutine(); g > before+2 {
		t.Errorf("goroutines grew from %d to %d for %d sessions", before, g, n)
	}
	for _, s := range stops[:n/2] {
		s()
	}
	e.clock.Advance(2 * time.Hour)
	testutil.WaitFor(t, "expiry of all sessions", 10*time.Second, func() bool { return dropped.Load() == n/2 })
	if m.Watched() != 0 {
		t.Errorf("Watched() = %d after expiry", m.Watched())
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	e := newEnv(t, testpki.P256)
	r := testpki.NewResponder(t, e.ca, false)
	srvCert := e.ca.Issue(t, testpki.Options{CN: "localhost", DNS: []string{"localhost"}, OCSP: []string{r.URL}, KeyIndex: 7})
	srvCert.WriteFiles(t, e.dir, "server")
	e.cfg.OCSP.Mode = OCSPFailOpen
	for i := 0; i < 3; i++ {
		m, err := New(e.cfg)
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
		m.Close()
	}
	http := defaultOCSPClient.Transport.(interface{ CloseIdleConnections() })
	http.CloseIdleConnections()
	testutil.WaitFor(t, "goroutines to exit", 5*time.Second, func() bool { return runtime.NumGoroutine() <= before+1 })
}

// TestRevokedCannotResume checks that a session ticket obtained before a
// revocation does not let the client back in.
func TestRevokedCannotResume(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			e := newEnv(t, testpki.P256)
			dev := e.ca.Issue(t, testpki.Options{CN: "dev"})
			e.cfg.CRLFiles = []string{e.writeCRL(t, "ca.crl", 24*time.Hour)}
			m := e.manager(t)
			srv := serve(t, m)
			cfg := clientConfig(e.ca, dev)
			cfg.MaxVersion = v
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			for i := 0; i < 2; i++ {
				c, err := roundTrip(t, srv.addr, cfg)
				if err != nil {
					t.Fatal(err)
				}
				serverPeer(t, srv)
				if i == 1 && !c.ConnectionState().DidResume {
					t.Fatal("no resumption before revocation")
				}
			}
			e.writeCRL(t, "ca.crl", 24*time.Hour, dev)
			if err := m.Reload(); err != nil {
				t.Fatal(err)
			}
			if _, err := roundTrip(t, srv.addr, cfg); err == nil {
				t.Fatal("revoked client resumed its session")
			}
		})
	}
}

// TestRevokedHook checks Config.Revoked: a certificate it reports as
// revoked is refused in the handshake, without any CRL file, and it is
// asked with the certificate's issuer.
func TestRevokedHook(t *testing.T) {
	e := newEnv(t, testpki.P256)
	dev := e.ca.Issue(t, testpki.Options{CN: "device-7"})
	other := e.ca.Issue(t, testpki.Options{CN: "device-8"})
	var badIssuer atomic.Bool
	e.cfg.Revoked = func(cert, issuer *x509.Certificate) (string, bool) {
		if cert.CheckSignatureFrom(issuer) != nil {
			badIssuer.Store(true)
		}
		return "revoked on another node", cert.Subject.CommonName == "device-7"
	}
	m := e.manager(t)
	srv := serve(t, m)
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, other)); err != nil {
		t.Fatalf("a certificate the hook does not revoke: %v", err)
	}
	serverPeer(t, srv)
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err == nil {
		t.Fatal("a certificate the hook revokes was accepted")
	}
	r := srv.nextResult(t)
	var ve *VerifyError
	if !errors.As(r.err, &ve) || ve.Reason != ReasonRevoked || !contains(ve.Error(), "revoked on another node") {
		t.Fatalf("server side: %v, want a revocation with the hook's detail", r.err)
	}
	if badIssuer.Load() {
		t.Error("the hook was asked with a certificate that did not issue the one checked")
	}
}
