package tlsconf

import (
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/testutil/testpki"
	"golang.org/x/crypto/ocsp"
)

func TestOCSPClientChecks(t *testing.T) {
	for _, delegated := range []bool{false, true} {
		name := map[bool]string{false: "CA-signed", true: "delegated"}[delegated]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, testpki.P256)
			r := testpki.NewResponder(t, e.ca, delegated)
			good := e.ca.Issue(t, testpki.Options{CN: "good", OCSP: []string{r.URL}})
			bad := e.ca.Issue(t, testpki.Options{CN: "bad", OCSP: []string{r.URL}})
			r.Revoke(bad)
			e.cfg.OCSP = OCSPConfig{Mode: OCSPFailClosed, Timeout: time.Second, CacheTTL: 10 * time.Minute}
			m := e.manager(t)
			srv := serve(t, m)
			if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, good)); err != nil {
				t.Fatalf("good certificate refused: %v", err)
			}
			serverPeer(t, srv)
			if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, bad)); err == nil {
				t.Fatal("OCSP-revoked certificate accepted")
			}
			srv.nextResult(t)
			if !contains(e.logs.String(), "OCSP responder says revoked") || !contains(e.logs.String(), "CN=bad") {
				t.Errorf("no clear refusal line:\n%s", e.logs.String())
			}
			// Cached: a second handshake does not query the responder.
			hits := r.Hits.Load()
			if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, good)); err != nil {
				t.Fatal(err)
			}
			serverPeer(t, srv)
			if r.Hits.Load() != hits {
				t.Errorf("responder queried again within the cache TTL")
			}
		})
	}
}

func TestOCSPFailurePolicies(t *testing.T) {
	tests := []struct {
		name   string
		mode   OCSPMode
		setup  func(r *testpki.Responder)
		noAIA  bool
		wantOK bool
	}{
		{"closed/responder down", OCSPFailClosed, func(r *testpki.Responder) { r.Fail.Store(true) }, false, false},
		{"open/responder down", OCSPFailOpen, func(r *testpki.Responder) { r.Fail.Store(true) }, false, true},
		{"closed/timeout", OCSPFailClosed, func(r *testpki.Responder) { r.SetDelay(2 * time.Second) }, false, false},
		{"open/timeout", OCSPFailOpen, func(r *testpki.Responder) { r.SetDelay(2 * time.Second) }, false, true},
		{"closed/unknown", OCSPFailClosed, func(r *testpki.Responder) { r.SetUnknown(true) }, false, false},
		{"closed/no responder in AIA", OCSPFailClosed, func(*testpki.Responder) {}, true, false},
		{"open/no responder in AIA", OCSPFailOpen, func(*testpki.Responder) {}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, testpki.P256)
			r := testpki.NewResponder(t, e.ca, false)
			tt.setup(r)
			o := testpki.Options{CN: "dev", OCSP: []string{r.URL}}
			if tt.noAIA {
				o.OCSP = nil
			}
			dev := e.ca.Issue(t, o)
			e.cfg.OCSP = OCSPConfig{Mode: tt.mode, Timeout: 200 * time.Millisecond}
			srv := serve(t, e.manager(t))
			_, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev))
			if (err == nil) != tt.wantOK {
				t.Fatalf("err = %v, want ok=%v", err, tt.wantOK)
			}
			if tt.wantOK && !contains(e.logs.String(), "fail-open") {
				t.Errorf("fail-open acceptance not logged:\n%s", e.logs.String())
			}
			if !tt.wantOK && !contains(e.logs.String(), "reason=ocsp-unavailable") {
				t.Errorf("fail-closed refusal not logged:\n%s", e.logs.String())
			}
		})
	}
}

func TestOCSPWrongSigner(t *testing.T) {
	e := newEnv(t, testpki.P256)
	// A responder for another CA answers for our certificates.
	other := testpki.NewRoot(t, "Other CA", testpki.P256)
	r := testpki.NewResponder(t, e.ca, false)
	r.Signer = other
	dev := e.ca.Issue(t, testpki.Options{CN: "dev", OCSP: []string{r.URL}})
	e.cfg.OCSP = OCSPConfig{Mode: OCSPFailClosed, Timeout: time.Second}
	srv := serve(t, e.manager(t))
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err == nil {
		t.Fatal("accepted an OCSP answer signed by a stranger")
	}
	if !contains(e.logs.String(), "OCSP check failed") {
		t.Errorf("log:\n%s", e.logs.String())
	}
}

func TestOCSPLiveRevocation(t *testing.T) {
	e := newEnv(t, testpki.P256)
	r := testpki.NewResponder(t, e.ca, true)
	dev := e.ca.Issue(t, testpki.Options{CN: "dev", OCSP: []string{r.URL}})
	e.cfg.OCSP = OCSPConfig{Mode: OCSPFailOpen, Timeout: time.Second, CacheTTL: 5 * time.Minute}
	m := e.manager(t)
	srv := serve(t, m)
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err != nil {
		t.Fatal(err)
	}
	d := watchConn(t, m, serverPeer(t, srv))
	r.Revoke(dev)
	time.Sleep(50 * time.Millisecond) // cached "good" still in force
	if d.get() != 0 {
		t.Fatal("dropped before the cached answer expired")
	}
	e.clock.Advance(6 * time.Minute)
	testutil.WaitFor(t, "OCSP-revoked session dropped", 5*time.Second, func() bool { return d.get() == ReasonRevoked })
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err == nil {
		t.Fatal("OCSP-revoked client reconnected")
	}
}

func TestOCSPStapling(t *testing.T) {
	e := newEnv(t, testpki.P256)
	r := testpki.NewResponder(t, e.ca, false)
	r.Now = e.clock.Now
	r.SetValidity(time.Hour)
	srvCert := e.ca.Issue(t, testpki.Options{CN: "localhost", DNS: []string{"localhost"}, OCSP: []string{r.URL}, KeyIndex: 7})
	srvCert.WriteFiles(t, e.dir, "server")
	e.cfg.ClientAuth = ClientAuthNone
	m := e.manager(t)
	srv := serve(t, m)
	c, err := roundTrip(t, srv.addr, clientConfig(e.ca, nil))
	if err != nil {
		t.Fatal(err)
	}
	staple := c.ConnectionState().OCSPResponse
	if len(staple) == 0 {
		t.Fatal("no OCSP staple")
	}
	resp, err := ocsp.ParseResponseForCert(staple, srvCert.Cert, e.ca.Cert)
	if err != nil || resp.Status != ocsp.Good {
		t.Fatalf("staple: %v status %v", err, resp)
	}
	// Refreshed before nextUpdate: half-way, i.e. after 30 minutes.
	hits := r.Hits.Load()
	e.clock.Advance(31 * time.Minute)
	testutil.WaitFor(t, "staple refresh", 5*time.Second, func() bool { return r.Hits.Load() > hits })
	testutil.WaitFor(t, "new staple", 5*time.Second, func() bool { return string(m.Staple()) != string(staple) })
	// A responder outage keeps the still-valid staple.
	r.Fail.Store(true)
	cur := m.Staple()
	e.clock.Advance(31 * time.Minute)
	testutil.WaitFor(t, "failed refresh logged", 5*time.Second, func() bool { return contains(e.logs.String(), "OCSP staple fetch failed") })
	if string(m.Staple()) != string(cur) {
		t.Fatal("valid staple dropped on a failed refresh")
	}
}

func TestOCSPLiveRecheckBeforeCacheExpiry(t *testing.T) {
	e := newEnv(t, testpki.P256)
	r := testpki.NewResponder(t, e.ca, true)
	dev := e.ca.Issue(t, testpki.Options{CN: "dev", OCSP: []string{r.URL}})
	// A long cache, the default live re-check (5 s).
	e.cfg.OCSP = OCSPConfig{Mode: OCSPFailClosed, Timeout: time.Second, CacheTTL: time.Hour}
	m := e.manager(t)
	srv := serve(t, m)
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err != nil {
		t.Fatal(err)
	}
	d := watchConn(t, m, serverPeer(t, srv))
	r.Revoke(dev)
	e.clock.Advance(6 * time.Second)
	testutil.WaitFor(t, "OCSP-revoked session dropped by the live re-check", 5*time.Second, func() bool { return d.get() == ReasonRevoked })
}
