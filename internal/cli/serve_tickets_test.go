package cli

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// device is a client of the built-in CA that keeps its TLS sessions
// across connections, as a device's TLS stack does.
type device struct {
	t      *testing.T
	name   string
	cert   tls.Certificate
	caPool *x509.CertPool
	cache  tls.ClientSessionCache
}

func newDevice(t *testing.T, dir, caFile, name string) *device {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &device{t: t, name: name, cert: cert, caPool: pool, cache: tls.NewLRUClientSessionCache(4)}
}

// connect opens a mutual-TLS connection, completes CONNECT and closes
// it; it reports whether the TLS session was resumed. The CONNACK is read
// after the TLS 1.3 ticket, so the ticket is in the cache afterwards.
func (d *device) connect(addr string) (resumed bool, err error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{
		RootCAs: d.caPool, Certificates: []tls.Certificate{d.cert}, ServerName: "localhost", ClientSessionCache: d.cache})
	if err != nil {
		return false, err
	}
	defer c.Close()
	resumed = c.ConnectionState().DidResume
	if err := connectMQTT5(c, d.name); err != nil {
		return resumed, err
	}
	c.Write([]byte{0xE0, 0}) // DISCONNECT
	return resumed, nil
}

// stop ends the broker with SIGTERM and waits for it.
func (p *moatProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("moat did not exit")
	}
}

// TestSecurityServeRevokedClientCannotResumeAfterRestart: with the
// durable store, `moat serve` keeps its TLS session ticket keys across a
// restart, so devices resume their sessions (the reconnect storm costs no
// full handshakes); but a device revoked while the broker was down is
// refused although it presents a ticket that opens, and a device banned
// meanwhile resumes TLS only to be refused at CONNECT. Without the store,
// no session resumes after a restart.
func TestSecurityServeRevokedClientCannotResumeAfterRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := func(persist bool) {
		writeFile(t, filepath.Join(dir, "moat.yaml"), fmt.Sprintf(`listeners:
  - name: mqtts
    address: 127.0.0.1:0
    transport: tls
    tls:
      client_auth: required
      identity:
        username_from: cn
data_dir: data
persistence:
  enabled: %t
`, persist))
	}
	conf(true)
	p := startMoat(t, dir, "-c", "moat.yaml")
	ca := filepath.Join(dir, "data", "ca")
	caFile := filepath.Join(ca, "ca.pem")
	// The client session cache is keyed by the server name, not the
	// address, so a restart on a new port still resumes.
	addr := p.addr(0)
	var good, revoked, banned *device
	for _, d := range []**device{&good, &revoked, &banned} {
		name := map[**device]string{&good: "dev-good", &revoked: "dev-revoked", &banned: "dev-banned"}[d]
		moatCmd(t, dir, "ca", "issue", "device", name, "--dir", ca, "--out", name)
		*d = newDevice(t, dir, caFile, name)
		if resumed, err := (*d).connect(addr); err != nil || resumed {
			t.Fatalf("%s, first connection: resumed=%v err=%v\n%s", name, resumed, err, p.logs.String())
		}
	}
	if resumed, err := good.connect(addr); err != nil || !resumed {
		t.Fatalf("no resumption before the restart: resumed=%v err=%v", resumed, err)
	}
	p.stop(t)

	// While the broker is down: one device is revoked, another banned.
	moatCmd(t, dir, "ca", "revoke", "dev-revoked.pem", "--dir", ca, "--reason", "keyCompromise")
	moatCmd(t, dir, "ban", "add", "--username", "dev-banned", "--data", filepath.Join(dir, "data"))

	p = startMoat(t, dir, "-c", "moat.yaml")
	addr = p.addr(0)
	if !p.waitLog(t, "session ticket keys restored") {
		t.Fatalf("the ticket keys were not restored:\n%s", p.logs.String())
	}
	if resumed, err := good.connect(addr); err != nil || !resumed {
		t.Fatalf("after the restart: resumed=%v err=%v, want the session resumed\n%s", resumed, err, p.logs.String())
	}
	if resumed, err := revoked.connect(addr); err == nil {
		t.Fatalf("the revoked device connected after the restart (resumed=%v)", resumed)
	}
	if !p.waitLog(t, "TLS handshake refused", "reason=revoked", "CN=dev-revoked") {
		t.Errorf("no refusal for revocation logged:\n%s", p.logs.String())
	}
	resumed, err := banned.connect(addr)
	if err == nil {
		t.Fatalf("the banned device connected after the restart (resumed=%v)", resumed)
	}
	if !resumed {
		t.Errorf("the banned device's TLS session did not resume (%v): the ban was not tested on a resumed session", err)
	}
	p.stop(t)

	// Without the store the keys are the process's own.
	conf(false)
	p = startMoat(t, dir, "-c", "moat.yaml")
	addr = p.addr(0)
	if resumed, err := good.connect(addr); err != nil || resumed {
		t.Fatalf("restart without persistence: resumed=%v err=%v, want a full handshake", resumed, err)
	}
	if strings.Contains(p.logs.String(), "session ticket keys restored") {
		t.Error("ticket keys restored without a store")
	}
}
