package pki

import (
	"crypto/x509"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestRootCRL: Init writes a root CRL that openssl verifies against the
// root; it is served next to the CRL; re-signing bumps its number and the
// issuing intermediate cannot be put on it.
func TestRootCRL(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	ca := newCA(t, InitOptions{})
	out := run(t, true, openssl, "crl", "-in", filepath.Join(ca.Dir(), FileRootCRL), "-CAfile", filepath.Join(ca.Dir(), FileRoot), "-noout", "-text")
	if !strings.Contains(out, "verify OK") || !strings.Contains(out, "No Revoked Certificates") {
		t.Fatalf("openssl crl:\n%s", out)
	}
	httpURL, _, _ := startServer(t, ca, ServerConfig{})
	resp, err := http.Get(httpURL + "/root-crl")
	if err != nil {
		t.Fatal(err)
	}
	der, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	crl, err := x509.ParseRevocationList(der)
	if err != nil || crl.CheckSignatureFrom(ca.Root()) != nil || crl.Number.Int64() != 1 {
		t.Fatalf("served root CRL: %v", err)
	}

	key, err := ca.LoadRootKey(testPass)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.SignRootCRL(RootCRLRequest{RootKey: key, Revoke: []*x509.Certificate{ca.Intermediate()}}); err == nil || !strings.Contains(err.Error(), "rotate") {
		t.Fatalf("revoking the issuing intermediate: %v", err)
	}
	other := newCA(t, InitOptions{})
	okey, _ := other.LoadRootKey(testPass)
	if _, err := ca.SignRootCRL(RootCRLRequest{RootKey: okey}); err == nil {
		t.Fatal("signed with another root's key")
	}
	der, err = ca.SignRootCRL(RootCRLRequest{RootKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if crl, _ := x509.ParseRevocationList(der); crl.Number.Int64() != 2 {
		t.Fatalf("number %v", crl.Number)
	}
}
