package tlsconf

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

// TestSecureWebSocketServer serves the Manager's config through net/http,
// as the secure WebSocket listener does (net/http clones the config), and
// checks verification, identity mapping and ticket rotation through the
// clone.
func TestSecureWebSocketServer(t *testing.T) {
	e := newEnv(t, testpki.P256)
	dev := e.ca.Issue(t, testpki.Options{CN: "ws-device"})
	revoked := e.ca.Issue(t, testpki.Options{CN: "ws-revoked"})
	e.cfg.CRLFiles = []string{e.writeCRL(t, "ca.crl", 24*time.Hour, revoked)}
	e.cfg.Identity = IdentityMapping{Username: IdentityCN}
	m := e.manager(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{
		TLSConfig:         m.TLSConfig(),
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, err := m.MapIdentity(*r.TLS, "", "")
			if err != nil {
				http.Error(w, err.Error(), http.StatusForbidden)
				return
			}
			io.WriteString(w, id.Username)
		}),
	}
	go hs.ServeTLS(ln, "", "")
	t.Cleanup(func() { hs.Close() })

	cache := tls.NewLRUClientSessionCache(4)
	get := func(cert *testpki.Cert) (string, bool, error) {
		cfg := clientConfig(e.ca, cert)
		if cert == dev {
			cfg.ClientSessionCache = cache
		}
		cfg.Time = e.clock.Now
		var resumed bool
		tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		resp, err := c.Get("https://" + ln.Addr().String() + "/mqtt")
		if err != nil {
			return "", false, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		resumed = resp.TLS.DidResume
		return string(body), resumed, nil
	}
	user, resumed, err := get(dev)
	if err != nil || user != "ws-device" || resumed {
		t.Fatalf("first request: %q resumed=%v err=%v", user, resumed, err)
	}
	if _, resumed, _ = get(dev); !resumed {
		t.Error("no resumption over the net/http clone")
	}
	if _, _, err := get(revoked); err == nil {
		t.Error("revoked device accepted over secure WebSocket")
	}
	// Keys rotate through the clone: after the old keys are gone a new
	// ticket (under the current key) still resumes.
	for i := 0; i < 4; i++ {
		head := m.tickets.keys()[0]
		e.clock.Advance(61 * time.Minute)
		testutil.WaitFor(t, "rotation", 5*time.Second, func() bool { return m.tickets.keys()[0] != head })
	}
	if _, resumed, err := get(dev); err != nil || resumed {
		t.Fatalf("after rotation: resumed=%v err=%v (old key must be gone)", resumed, err)
	}
	if _, resumed, err := get(dev); err != nil || !resumed {
		t.Fatalf("new ticket did not resume: resumed=%v err=%v", resumed, err)
	}
}
