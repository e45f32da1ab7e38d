package pki

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"golang.org/x/crypto/ocsp"
)

func countCRLs(t *testing.T, b []byte) int {
	t.Helper()
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return n
		}
		if _, err := x509.ParseRevocationList(blk.Bytes); err != nil {
			t.Fatal(err)
		}
		n++
	}
}

func ocspStatus(t *testing.T, httpURL string, cert, issuer *x509.Certificate) int {
	t.Helper()
	req, err := ocsp.CreateRequest(cert, issuer, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(httpURL+"/ocsp", "application/ocsp-request", bytes.NewReader(req))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r, err := ocsp.ParseResponseForCert(b, cert, issuer)
	if err != nil {
		t.Fatalf("OCSP response for %s: %v", cert.Subject.CommonName, err)
	}
	return r.Status
}

// TestRotateIntermediateOverlap: after a rotation, new certificates come
// from the new intermediate while the old one's certificates stay valid
// against the same root, revocable, on their own CRL and answered for by
// OCSP; the old intermediate can then go on the root CRL; a process that
// still has the old intermediate open refuses to issue.
func TestRotateIntermediateOverlap(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	ca := newCA(t, InitOptions{})
	work := t.TempDir()
	oldDev, err := ca.IssueDevice("dev-old", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	oldDev.WriteFiles(filepath.Join(work, "old"))
	oldDev2, err := ca.IssueDevice("dev-old-2", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	oldDev2.WriteFiles(filepath.Join(work, "old2"))
	oldInter := ca.Intermediate()

	key, err := ca.LoadRootKey(testPass)
	if err != nil {
		t.Fatal(err)
	}
	next, err := ca.RotateIntermediate(RotateRequest{RootKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if next.Intermediate().Equal(oldInter) || !strings.HasSuffix(next.Intermediate().Subject.CommonName, " G2") {
		t.Fatalf("new intermediate %q", next.Intermediate().Subject.CommonName)
	}
	if der, err := next.RootCRL(); err != nil {
		t.Fatal(err)
	} else if crl, _ := x509.ParseRevocationList(der); crl.Number.Int64() != 2 {
		t.Fatalf("root CRL not re-signed at the rotation: number %v", crl.Number)
	}
	// The stale handle refuses to sign with the old intermediate.
	if _, err := ca.IssueDevice("dev-stale", nil, 0); !errors.Is(err, ErrRotated) {
		t.Fatalf("stale CA issued: %v", err)
	}
	newDev, err := next.IssueDevice("dev-new", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	newDev.WriteFiles(filepath.Join(work, "new"))
	if newDev.Certificate.CheckSignatureFrom(next.Intermediate()) != nil {
		t.Fatal("new certificate not from the new intermediate")
	}
	if rs := next.Retired(); len(rs) != 1 || !rs[0].Equal(oldInter) {
		t.Fatalf("retired: %v", rs)
	}

	// Both chain to the unchanged trust anchor; both intermediates' CRLs
	// are in crl.pem, which openssl applies to each.
	crlFile := filepath.Join(next.Dir(), FileCRL)
	if b, _ := os.ReadFile(crlFile); countCRLs(t, b) != 2 {
		t.Fatalf("crl.pem holds %d CRLs, want 2", countCRLs(t, b))
	}
	verify := func(wantOK bool, name string, extra ...string) string {
		p := filepath.Join(work, name+".pem")
		args := append([]string{"verify", "-CAfile", filepath.Join(next.Dir(), FileRoot), "-untrusted", p, "-crl_check", "-CRLfile", crlFile}, extra...)
		return run(t, wantOK, openssl, append(args, p)...)
	}
	verify(true, "old")
	verify(true, "new")

	httpURL, _, _ := startServer(t, next, ServerConfig{})
	if s := ocspStatus(t, httpURL, oldDev.Certificate, oldInter); s != ocsp.Good {
		t.Fatalf("old certificate OCSP %d", s)
	}
	if s := ocspStatus(t, httpURL, newDev.Certificate, next.Intermediate()); s != ocsp.Good {
		t.Fatalf("new certificate OCSP %d", s)
	}

	// Revoking the old certificate reaches the old intermediate's CRL
	// and OCSP.
	if _, err := next.RevokeCertificate(oldDev.Certificate, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	if s := ocspStatus(t, httpURL, oldDev.Certificate, oldInter); s != ocsp.Revoked {
		t.Fatalf("revoked old certificate OCSP %d", s)
	}
	if out := verify(false, "old"); !strings.Contains(out, "revoked") {
		t.Fatalf("openssl verify of the revoked old certificate:\n%s", out)
	}
	verify(true, "new")
	resp, err := http.Get(httpURL + "/crl/" + keyIDHex(oldInter))
	if err != nil {
		t.Fatal(err)
	}
	der, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if crl, err := x509.ParseRevocationList(der); err != nil || crl.CheckSignatureFrom(oldInter) != nil || len(crl.RevokedCertificateEntries) != 1 {
		t.Fatalf("/crl/KEYID of the old intermediate: %v", err)
	}

	// The old intermediate goes on the root CRL; with it, a chain through
	// the old intermediate fails even for a certificate not revoked itself.
	verify(true, "old2")
	if _, err := next.SignRootCRL(RootCRLRequest{RootKey: key, Revoke: []*x509.Certificate{oldInter}, Reason: ReasonSuperseded}); err != nil {
		t.Fatal(err)
	}
	both := filepath.Join(work, "all-crls.pem")
	crls, _ := os.ReadFile(crlFile)
	rootCRL, _ := os.ReadFile(filepath.Join(next.Dir(), FileRootCRL))
	writeFile(t, both, append(crls, rootCRL...))
	checkAll := func(wantOK bool, name string) string {
		p := filepath.Join(work, name+".pem")
		return run(t, wantOK, openssl, "verify", "-CAfile", filepath.Join(next.Dir(), FileRoot), "-untrusted", p, "-crl_check_all", "-CRLfile", both, p)
	}
	checkAll(true, "new")
	if out := checkAll(false, "old2"); !strings.Contains(out, "revoked") {
		t.Fatalf("chain through the revoked intermediate:\n%s", out)
	}

	// Once the old intermediate's last certificate has expired (and one
	// CRL period more), its CRL is no longer produced.
	later := time.Now().Add(DefaultDeviceLifetime + DefaultCRLValidity + time.Hour)
	aged, err := Open(next.Dir(), Config{Now: func() time.Time { return later }, Logger: next.cfg.logger()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := aged.RegenerateCRL(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(crlFile); countCRLs(t, b) != 1 {
		t.Fatalf("after the overlap crl.pem holds %d CRLs, want 1", countCRLs(t, b))
	}
}

// TestSecurityReenrollUnderRevokedIntermediate: after a rotation, devices
// re-enroll with certificates of the old intermediate and get one from the
// new intermediate. Once the operator puts the old intermediate on the
// root CRL (its key may be compromised), a certificate under it (which a
// thief could have minted with that key) must not buy a fresh certificate
// any more: the attack re-enrolls with it and is refused.
func TestSecurityReenrollUnderRevokedIntermediate(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	curl := testutil.NeedTool(t, "curl")
	ca := newCA(t, InitOptions{})
	dir := t.TempDir()
	enroll := func(name string) (keyFile, pemFile string) {
		tok, _ := ca.CreateToken(name, time.Hour)
		key, csr := opensslCSR(t, openssl, dir, name, name, "")
		_, estURL, _ := startServer(t, ca, ServerConfig{})
		code, body := estCurl(t, curl, estURL, filepath.Join(ca.Dir(), FileRoot), "simpleenroll", csr, "-u", name+":"+tok)
		if code != http.StatusOK {
			t.Fatalf("enroll %s: %d %s", name, code, body)
		}
		_, p := estCertFromBody(t, ca, dir, name, body)
		return key, p
	}
	keyA, pemA := enroll("sensor-a")
	keyB, pemB := enroll("sensor-b")
	oldInter := ca.Intermediate()

	rk, _ := ca.LoadRootKey(testPass)
	next, err := ca.RotateIntermediate(RotateRequest{RootKey: rk})
	if err != nil {
		t.Fatal(err)
	}
	_, estURL, _ := startServer(t, next, ServerConfig{})
	caFile := filepath.Join(next.Dir(), FileRoot)

	_, csrA := opensslCSR(t, openssl, dir, "sensor-a2", "sensor-a", "")
	code, body := estCurl(t, curl, estURL, caFile, "simplereenroll", csrA, "--cert", pemA, "--key", keyA)
	if code != http.StatusOK {
		t.Fatalf("re-enrollment with the old intermediate's certificate: %d %s", code, body)
	}
	renewed, _ := estCertFromBody(t, next, dir, "sensor-a2", body)
	if renewed.CheckSignatureFrom(next.Intermediate()) != nil {
		t.Fatal("renewed certificate not from the new intermediate")
	}

	if _, err := next.SignRootCRL(RootCRLRequest{RootKey: rk, Revoke: []*x509.Certificate{oldInter}, Reason: ReasonCACompromise}); err != nil {
		t.Fatal(err)
	}
	_, csrB := opensslCSR(t, openssl, dir, "sensor-b2", "sensor-b", "")
	if code, body := estCurl(t, curl, estURL, caFile, "simplereenroll", csrB, "--cert", pemB, "--key", keyB); code != http.StatusForbidden {
		t.Fatalf("re-enrollment under a revoked intermediate: %d %s", code, body)
	}
}

// TestServeStopsAfterRotation: a running server whose intermediate is
// rotated by another process stops with ErrRotated instead of serving the
// old state.
func TestServeStopsAfterRotation(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{})
	srv, err := ca.NewServer(ServerConfig{RotationCheck: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), hl, nil) }()
	other, err := Open(ca.Dir(), Config{Logger: ca.cfg.logger()}) // another process
	if err != nil {
		t.Fatal(err)
	}
	rk, _ := other.LoadRootKey(testPass)
	if _, err := other.RotateIntermediate(RotateRequest{RootKey: rk}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrRotated) {
			t.Fatalf("Serve returned %v, want ErrRotated", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve kept running with a rotated intermediate")
	}
}
