package tlsconf

import (
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// TestOCSPStatus: responder answers are counted by status, and the
// staple of a certificate naming a responder is reported with its
// nextUpdate.
func TestOCSPStatus(t *testing.T) {
	e := newEnv(t, testpki.P256)
	r := testpki.NewResponder(t, e.ca, false)
	r.Now = e.clock.Now
	r.SetValidity(time.Hour)
	srvCert := e.ca.Issue(t, testpki.Options{CN: "localhost", DNS: []string{"localhost"}, OCSP: []string{r.URL}, KeyIndex: 7})
	cf, _ := srvCert.WriteFiles(t, e.dir, "server")
	good := e.ca.Issue(t, testpki.Options{CN: "good", OCSP: []string{r.URL}})
	bad := e.ca.Issue(t, testpki.Options{CN: "bad", OCSP: []string{r.URL}})
	r.Revoke(bad)
	e.cfg.OCSP = OCSPConfig{Mode: OCSPFailClosed, Timeout: time.Second, CacheTTL: 10 * time.Minute}
	m := e.manager(t)

	st := m.OCSPStatus()
	if len(st.Staples) != 1 || st.Staples[0].CertFile != cf || !st.Staples[0].Good || !st.Staples[0].NextUpdate.After(e.clock.Now()) {
		t.Fatalf("staples: %+v", st.Staples)
	}
	srv := serve(t, m)
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, good)); err != nil {
		t.Fatal(err)
	}
	serverPeer(t, srv)
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, bad)); err == nil {
		t.Fatal("revoked certificate accepted")
	}
	srv.nextResult(t)
	st = m.OCSPStatus()
	// The staple's good answer and the client's, then the revoked one.
	if st.Responses["good"] != 2 || st.Responses["revoked"] != 1 || st.Responses["unknown"] != 0 || st.Responses["error"] != 0 {
		t.Fatalf("responses: %v", st.Responses)
	}

	// The responder fails and the staple expires: no good staple.
	r.Fail.Store(true)
	e.clock.Advance(2 * time.Hour)
	testutil.WaitFor(t, "a failed staple refresh", 5*time.Second, func() bool {
		s := m.OCSPStatus()
		return s.Responses["error"] > 0 && !s.Staples[0].Good
	})
}
