package cli

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// keysWriteCRL writes dir/crl.pem, signed by the CA of keysWriteTestPKI,
// revoking the certificates dir/NAME.pem of names.
func keysWriteCRL(t *testing.T, dir string, number int64, names ...string) {
	t.Helper()
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(ca.Certificate[0])
	var revoked []x509.RevocationListEntry
	for _, n := range names {
		c, err := tls.LoadX509KeyPair(filepath.Join(dir, n+".pem"), filepath.Join(dir, n+".key"))
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(c.Certificate[0])
		revoked = append(revoked, x509.RevocationListEntry{SerialNumber: leaf.SerialNumber, RevocationTime: time.Now().Add(-time.Second), ReasonCode: 1})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(number), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: revoked,
	}, caCert, ca.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "crl.pem.tmp")
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "crl.pem")); err != nil {
		t.Fatal(err)
	}
}

// keysIssueClient issues dir/NAME.pem and dir/NAME.key, a client
// certificate for common name cn, from the CA of keysWriteTestPKI.
func keysIssueClient(t *testing.T, dir, name, cn string) {
	t.Helper()
	ca, err := tls.LoadX509KeyPair(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(ca.Certificate[0])
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, caCert, key.Public(), ca.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	for _, f := range []struct {
		name, typ string
		b         []byte
	}{{name + ".pem", "CERTIFICATE", der}, {name + ".key", "PRIVATE KEY", kder}} {
		if err := os.WriteFile(filepath.Join(dir, f.name), pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSecurityKeyServiceRevokedMember performs the attack of a stolen
// device certificate after it was revoked: the thief, holding the revoked
// certificate of member sensor-1, calls the key service to register its
// own HPKE key (replacing the real member's) and to download the current
// epoch key. The key service checks the same CRL as the broker (through
// tlsconf), so the revoked certificate is refused at the handshake, and a
// member whose certificate is revoked is removed from its groups with a
// new epoch, live (sensor-1) or at the next start when the CRL changed
// while the service was stopped (platform); the removal is logged with its
// reason and persists across restarts. Revoking a certificate a member
// has since replaced (auditor renewed its certificate) removes nothing.
func TestSecurityKeyServiceRevokedMember(t *testing.T) {
	ctx := psTestCtx(t)
	dir := t.TempDir()
	keysWriteTestPKI(t, dir, "sensor-1", "platform", "auditor")
	keysWriteCRL(t, dir, 1)
	pem := func(name string) string { return filepath.Join(dir, name) }
	store := []string{"--data", pem("keys"), "--kek-file", pem("kek")}
	keys := func(args ...string) string {
		t.Helper()
		r := psRun(ctx, "", append(append([]string{"keys"}, args...), store...)...)
		if r.code != 0 {
			t.Fatalf("moat keys %v: exit %d: %s", args, r.code, r.err)
		}
		return r.out
	}
	if r := psRun(ctx, "", "keys", "genkek", pem("kek")); r.code != 0 {
		t.Fatal(r.err)
	}
	keys("group", "create", "temps", "--filter", "factory/+/temp")
	keys("member", "add", "temps", "sensor-1", "--role", "writer")
	keys("member", "add", "temps", "platform", "--role", "reader")
	keys("member", "add", "temps", "auditor", "--role", "reader")

	serve := func() (func(), string, *syncBuffer) {
		t.Helper()
		sctx, cancel := context.WithCancel(ctx)
		errb, done := e2eRunAsync(sctx, append([]string{"keys", "serve", "--listen", "127.0.0.1:0", "--cert", pem("server.pem"), "--key", pem("server.key"),
			"--client-ca", pem("ca.pem"), "--crl", pem("crl.pem")}, store...)...)
		m := regexp.MustCompile(`serving on (https://127\.0\.0\.1:\d+)`).FindStringSubmatch(e2eWaitFor(t, errb, "serving on"))
		return func() {
			cancel()
			if r := <-done; r.code != 0 {
				t.Fatalf("keys serve: exit %d: %s", r.code, r.err)
			}
		}, m[1], errb
	}
	fetch := func(url, id string) psResult {
		return psRun(ctx, "", "keys", "fetch", "--server", url, "--dir", pem(id+".d"), "--cert", pem(id+".pem"), "--key", pem(id+".key"), "--ca", pem("ca.pem"))
	}
	stop, url, serveLog := serve()
	for _, id := range []string{"sensor-1", "platform", "auditor"} {
		if r := fetch(url, id); r.code != 0 {
			t.Fatalf("fetch %s: %s", id, r.err)
		}
	}

	// sensor-1's certificate is revoked while the service runs.
	keysWriteCRL(t, dir, 2, "sensor-1")
	e2eWaitFor(t, serveLog, "member certificate revoked")
	if s := serveLog.String(); !regexp.MustCompile(`member=sensor-1 .*reason=.*revoked`).MatchString(s) {
		t.Fatalf("the removal is not logged with its reason:\n%s", s)
	}
	// The thief cannot register a key or fetch a bundle any more.
	if r := fetch(url, "sensor-1"); r.code == 0 {
		t.Fatalf("a revoked certificate registered and fetched a bundle: %s", r.out)
	}
	// auditor renews its certificate and uses the new one.
	keysIssueClient(t, dir, "auditor-new", "auditor")
	if r := psRun(ctx, "", "keys", "fetch", "--server", url, "--dir", pem("auditor.d"), "--cert", pem("auditor-new.pem"), "--key", pem("auditor-new.key"), "--ca", pem("ca.pem")); r.code != 0 {
		t.Fatalf("fetch with the renewed certificate: %s", r.err)
	}
	// platform's certificate, and auditor's old one, are revoked while
	// the service is stopped.
	stop()
	keysWriteCRL(t, dir, 3, "sensor-1", "platform", "auditor")
	stop, url, serveLog = serve()
	e2eWaitFor(t, serveLog, "member=platform")
	if r := psRun(ctx, "", "keys", "fetch", "--server", url, "--dir", pem("auditor.d"), "--cert", pem("auditor-new.pem"), "--key", pem("auditor-new.key"), "--ca", pem("ca.pem")); r.code != 0 {
		t.Fatalf("the member with a renewed certificate lost access: %s", r.err)
	}
	if r := fetch(url, "auditor"); r.code == 0 {
		t.Fatal("auditor's revoked old certificate still works")
	}
	stop()

	status := keys("status", "temps")
	if strings.Contains(status, "  member sensor-1 ") || strings.Contains(status, "  member platform ") {
		t.Fatalf("revoked members are still in the group after a restart:\n%s", status)
	}
	if !strings.Contains(status, "current epoch 3") || !strings.Contains(status, "  member auditor ") {
		t.Fatalf("want a new epoch per removal and auditor kept:\n%s", status)
	}
	if !strings.Contains(status, "member sensor-1 removed from temps") || !strings.Contains(status, "member platform removed from temps") {
		t.Fatalf("status does not show the removals and their reasons:\n%s", status)
	}
}
