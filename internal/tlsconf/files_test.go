package tlsconf

import (
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// TestSetFiles: new certificate and CA paths serve the next handshake and
// are watched from then on; a connection made before stays unless the
// new CA no longer accepts its client; files that do not load, or a set
// the listener's policy does not allow, leave the previous ones in force.
func TestSetFiles(t *testing.T) {
	e := newEnv(t, testpki.P256)
	dev := e.ca.Issue(t, testpki.Options{CN: "dev"})
	e.cfg.ClientAuth = ClientAuthRequired
	m := e.manager(t)
	srv := serve(t, m)
	c, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev))
	if err != nil {
		t.Fatal(err)
	}
	d := watchConn(t, m, serverPeer(t, srv))

	before := m.Files()
	if err := m.SetFiles(Files{}); err == nil || !strings.Contains(err.Error(), "no server certificate") {
		t.Fatalf("no certificate: %v", err)
	}
	if err := m.SetFiles(Files{Certificates: before.Certificates}); err == nil || !strings.Contains(err.Error(), "no cafile") {
		t.Fatalf("client certificates required without a CA: %v", err)
	}
	missing := Files{Certificates: []KeyPair{{CertFile: e.dir + "/nope.pem", KeyFile: e.dir + "/nope.key"}}, CAFile: before.CAFile}
	if err := m.SetFiles(missing); err == nil {
		t.Fatal("a missing certificate file was accepted")
	}
	if got := m.Files(); got.Certificates[0] != before.Certificates[0] || got.CAFile != before.CAFile {
		t.Fatalf("a refused change altered the files: %+v", got)
	}
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err != nil {
		t.Fatalf("handshake after a refused change: %v", err)
	}
	serverPeer(t, srv)

	// New paths: another server certificate of the same CA.
	other := e.ca.Issue(t, testpki.Options{CN: "localhost", DNS: []string{"localhost"}, KeyIndex: 6})
	cf, kf := other.WriteFiles(t, e.dir, "other")
	if err := m.SetFiles(Files{Certificates: []KeyPair{{CertFile: cf, KeyFile: kf}}, CAFile: before.CAFile}); err != nil {
		t.Fatal(err)
	}
	if got := m.Files().Certificates[0].CertFile; got != cf {
		t.Fatalf("Files after the change: %s", got)
	}
	c2, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev))
	if err != nil {
		t.Fatal(err)
	}
	if !c2.ConnectionState().PeerCertificates[0].Equal(other.Cert) {
		t.Fatal("the next handshake does not serve the certificate of the new path")
	}
	serverPeer(t, srv)
	if err := echo(c); err != nil {
		t.Fatalf("a connection made before the change broke: %v", err)
	}

	// The new path is watched: a certificate written there is served.
	third := e.ca.Issue(t, testpki.Options{CN: "localhost", DNS: []string{"localhost"}, KeyIndex: 7})
	third.WriteFiles(t, e.dir, "other")
	testutil.WaitFor(t, "the new path's change to load", 5*time.Second, func() bool {
		c3, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev))
		if err != nil {
			t.Fatal(err)
		}
		serverPeer(t, srv)
		return c3.ConnectionState().PeerCertificates[0].Equal(third.Cert)
	})

	// A CA file at a new path that does not hold the devices' CA: the
	// device's live session is dropped, as on a CA bundle reload.
	newCA := testpki.NewRoot(t, "Other CA", testpki.P256)
	caFile := e.dir + "/other-ca.pem"
	testpki.WriteFile(t, caFile, newCA.PEM())
	if err := m.SetFiles(Files{Certificates: []KeyPair{{CertFile: cf, KeyFile: kf}}, CAFile: caFile}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the device's session to be dropped", 5*time.Second, func() bool { return d.get() != 0 })
}
