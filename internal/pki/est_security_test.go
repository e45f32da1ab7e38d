package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// opensslCSR makes a key and a base64 DER CSR (the EST request body) with
// openssl, with subject /CN=cn and, when san is not empty, the
// subjectAltName extension san (openssl syntax, e.g. "URI:spiffe://x").
func opensslCSR(t *testing.T, openssl, dir, name, cn, san string) (keyFile, b64File string) {
	t.Helper()
	keyFile = filepath.Join(dir, name+".key")
	der := filepath.Join(dir, name+".csr")
	args := []string{"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", keyFile, "-subj", "/CN=" + cn, "-outform", "DER", "-out", der}
	if san != "" {
		args = append(args, "-addext", "subjectAltName="+san)
	}
	run(t, true, openssl, args...)
	b, err := os.ReadFile(der)
	if err != nil {
		t.Fatal(err)
	}
	return keyFile, writeFile(t, der+".b64", []byte(base64.StdEncoding.EncodeToString(b)))
}

// estCertFromBody decodes an EST certs-only answer and writes the
// certificate and the intermediate to dir/name.pem.
func estCertFromBody(t *testing.T, ca *CA, dir, name, body string) (*x509.Certificate, string) {
	t.Helper()
	der, err := base64.StdEncoding.DecodeString(strings.TrimSpace(body))
	if err != nil {
		t.Fatalf("EST answer is not base64: %v: %q", err, body)
	}
	certs, err := ParseCertsOnly(der)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name+".pem")
	writeFile(t, p, EncodeCertificatesPEM(certs[0], ca.Intermediate()))
	return certs[0], p
}

// TestSecurityESTTokenNamesAreAuthorized performs the review's attack: a
// device holding a bootstrap token for "attacker2" sends a CSR with
// CN=attacker2 and URI:spiffe://factory.example/sensor-042. Before the
// fix the CA checked only the CN and issued the URI, so on a listener
// that takes the identity from the SPIFFE ID the attacker became
// sensor-042. Now every name must be among the token's names: the
// request is refused, the token survives, and the same for DNS, IP and
// e-mail names and for a token that allows another URI.
func TestSecurityESTTokenNamesAreAuthorized(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	curl := testutil.NeedTool(t, "curl")
	ca := newCA(t, InitOptions{})
	_, estURL, _ := startServer(t, ca, ServerConfig{})
	caFile := filepath.Join(ca.Dir(), FileRoot)
	dir := t.TempDir()

	tok, err := ca.CreateToken("attacker2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, san := range []string{
		"URI:spiffe://factory.example/sensor-042",
		"DNS:sensor-042.factory.example",
		"IP:10.0.0.42",
		"email:sensor-042@factory.example",
	} {
		_, csr := opensslCSR(t, openssl, dir, "a", "attacker2", san)
		// URIs are refused for lack of authorization (403), DNS, IP and
		// e-mail names by the device profile already (400).
		code, body := estCurl(t, curl, estURL, caFile, "simpleenroll", csr, "-u", "attacker2:"+tok)
		if code != http.StatusForbidden && code != http.StatusBadRequest {
			t.Fatalf("token without names, CSR with %s: status %d: %s", san, code, body)
		}
	}
	if recs, _ := ca.List(ListFilter{Subject: "attacker2"}); len(recs) != 0 {
		t.Fatalf("certificates issued: %+v", recs)
	}
	// The refused requests did not use the token up; a CSR asking for
	// nothing more than the token allows is served.
	_, csr := opensslCSR(t, openssl, dir, "ok", "attacker2", "")
	if code, body := estCurl(t, curl, estURL, caFile, "simpleenroll", csr, "-u", "attacker2:"+tok); code != http.StatusOK {
		t.Fatalf("plain CSR: status %d: %s", code, body)
	}

	// A token that allows the device's own SPIFFE ID does not allow
	// another one, nor an extra one next to it.
	own := "spiffe://factory.example/attacker3"
	tok3, err := ca.CreateTokenFor(TokenRequest{ID: "attacker3", TTL: time.Hour, Names: []string{"URI:" + own}})
	if err != nil {
		t.Fatal(err)
	}
	for _, san := range []string{"URI:spiffe://factory.example/sensor-042", "URI:" + own + ",URI:spiffe://factory.example/sensor-042"} {
		_, csr := opensslCSR(t, openssl, dir, "b", "attacker3", san)
		if code, body := estCurl(t, curl, estURL, caFile, "simpleenroll", csr, "-u", "attacker3:"+tok3); code != http.StatusForbidden {
			t.Fatalf("CSR with %s: status %d: %s", san, code, body)
		}
	}
	_, csr = opensslCSR(t, openssl, dir, "c", "attacker3", "URI:"+own)
	code, body := estCurl(t, curl, estURL, caFile, "simpleenroll", csr, "-u", "attacker3:"+tok3)
	if code != http.StatusOK {
		t.Fatalf("own URI: status %d: %s", code, body)
	}
	cert, _ := estCertFromBody(t, ca, dir, "c", body)
	if len(cert.URIs) != 1 || cert.URIs[0].String() != own {
		t.Fatalf("URIs %v", cert.URIs)
	}
}

// TestSecurityESTManufacturerNamesAreAuthorized: a device with a valid
// manufacturer (birth) certificate for dev-m asks for
// URI:spiffe://factory.example/sensor-042. Before the fix only the CN was
// checked and the URI was issued. Now a manufacturer certificate
// authorizes its CN and the URIs of ManufacturerNames with {id} = that CN.
func TestSecurityESTManufacturerNamesAreAuthorized(t *testing.T) {
	t.Parallel()
	mfr := newCA(t, InitOptions{})
	birth, err := mfr.IssueDevice("dev-m", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Certificate{Certificate: [][]byte{birth.Certificate.Raw, mfr.Intermediate().Raw}, PrivateKey: birth.Key}
	victim := &url.URL{Scheme: "spiffe", Host: "factory.example", Path: "/sensor-042"}
	own := &url.URL{Scheme: "spiffe", Host: "factory.example", Path: "/dev-m"}

	for _, tc2 := range []struct {
		name  string
		names []string
	}{{"no names configured", nil}, {"template", []string{"URI:spiffe://factory.example/{id}"}}} {
		t.Run(tc2.name, func(t *testing.T) {
			ca := newCA(t, InitOptions{})
			_, estURL, _ := startServer(t, ca, ServerConfig{ManufacturerRoots: mfr.Roots(), ManufacturerNames: tc2.names})
			e := &Enroller{Client: &ESTClient{Server: estURL, Roots: ca.Roots()}, ID: "dev-m", AuthCertificate: &tc, URIs: []*url.URL{victim}, Prefix: filepath.Join(t.TempDir(), "m")}
			_, err := e.Enroll(context.Background())
			var se *ESTStatusError
			if !errors.As(err, &se) || se.StatusCode != http.StatusForbidden {
				t.Fatalf("manufacturer certificate enrolled %s: %v", victim, err)
			}
			e.URIs = []*url.URL{own}
			c, err := e.Enroll(context.Background())
			if tc2.names == nil {
				if err == nil {
					t.Fatalf("own URI issued without ManufacturerNames: %v", c.URIs)
				}
				return
			}
			if err != nil || len(c.URIs) != 1 || c.URIs[0].String() != own.String() {
				t.Fatalf("own URI: %v %v", c, err)
			}
		})
	}
}

// TestSecurityReenrollRevocationReachesSuccessors performs the review's
// attack: a thief with a stolen device certificate re-enrolls (getting a
// fresh certificate the operator does not know about), the operator
// revokes the stolen certificate, and the successor keeps working and
// can mint a grandchild. Now re-enrollment supersedes (revokes) the
// parent at once, and revoking a certificate revokes its descendants.
func TestSecurityReenrollRevocationReachesSuccessors(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	curl := testutil.NeedTool(t, "curl")
	ca := newCA(t, InitOptions{})
	_, estURL, _ := startServer(t, ca, ServerConfig{})
	caFile := filepath.Join(ca.Dir(), FileRoot)
	dir := t.TempDir()

	tok, _ := ca.CreateToken("sensor-5", time.Hour)
	key, csr := opensslCSR(t, openssl, dir, "dev", "sensor-5", "")
	code, body := estCurl(t, curl, estURL, caFile, "simpleenroll", csr, "-u", "sensor-5:"+tok)
	if code != http.StatusOK {
		t.Fatalf("enroll: %d %s", code, body)
	}
	stolen, stolenPEM := estCertFromBody(t, ca, dir, "dev", body)

	// The thief re-enrolls with the stolen certificate.
	thiefKey, thiefCSR := opensslCSR(t, openssl, dir, "thief", "sensor-5", "")
	code, body = estCurl(t, curl, estURL, caFile, "simplereenroll", thiefCSR, "--cert", stolenPEM, "--key", key)
	if code != http.StatusOK {
		t.Fatalf("reenroll: %d %s", code, body)
	}
	child, childPEM := estCertFromBody(t, ca, dir, "thief", body)
	rec, _ := ca.Get(SerialString(child.SerialNumber))
	if rec.Parent != SerialString(stolen.SerialNumber) {
		t.Errorf("child's parent %q, want %s", rec.Parent, SerialString(stolen.SerialNumber))
	}
	// The parent is superseded at once: it cannot mint a second child.
	if r, _ := ca.Get(SerialString(stolen.SerialNumber)); !r.Revoked || r.Reason != ReasonSuperseded {
		t.Fatalf("parent after re-enrollment: revoked=%v reason=%v", r.Revoked, r.Reason)
	}
	_, csr2 := opensslCSR(t, openssl, dir, "thief2", "sensor-5", "")
	if code, body := estCurl(t, curl, estURL, caFile, "simplereenroll", csr2, "--cert", stolenPEM, "--key", key); code != http.StatusForbidden {
		t.Fatalf("second child from a superseded parent: %d %s", code, body)
	}

	// The operator learns of the theft and revokes the stolen certificate;
	// the revocation reaches the thief's successor.
	revoked, err := ca.RevokeTree(SerialString(stolen.SerialNumber), ReasonKeyCompromise, RevokeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(revoked) != 1 || revoked[0].Serial != SerialString(child.SerialNumber) || revoked[0].Reason != ReasonKeyCompromise {
		t.Fatalf("revoked %+v", revoked)
	}
	if res := ca.Verify([]*x509.Certificate{child}); res.Valid {
		t.Fatalf("successor still valid: %s", res)
	}
	// And the successor cannot mint a grandchild.
	_, csr3 := opensslCSR(t, openssl, dir, "thief3", "sensor-5", "")
	if code, body := estCurl(t, curl, estURL, caFile, "simplereenroll", csr3, "--cert", childPEM, "--key", thiefKey); code != http.StatusForbidden {
		t.Fatalf("grandchild: %d %s", code, body)
	}
	crl, err := x509.ParseRevocationList(mustCRL(t, ca))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, e := range crl.RevokedCertificateEntries {
		listed[SerialString(e.SerialNumber)] = true
	}
	if !listed[SerialString(stolen.SerialNumber)] || !listed[SerialString(child.SerialNumber)] {
		t.Errorf("CRL lists %v", listed)
	}
}

// TestSecurityReenrollRateLimited: a stolen (or buggy) device
// certificate re-enrolls in a loop, minting certificates as fast as the
// CA signs. Now each device ID may re-enroll ReenrollLimit times per
// ReenrollWindow (default 3 per 24 hours); further requests get 429 with
// Retry-After until the window has passed (injected clock).
func TestSecurityReenrollRateLimited(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	ca := newCA(t, InitOptions{Config: Config{Now: clock}})
	_, estURL, _ := startServer(t, ca, ServerConfig{})
	client := &ESTClient{Server: estURL, Roots: ca.Roots()}
	ctx := context.Background()

	cur, err := ca.IssueDevice("loop-1", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ca.IssueDevice("loop-2", nil, 0)
	reenroll := func(iss *Issued) (*Issued, error) {
		key, _ := GenerateKey(ECDSAP256, nil)
		csr, _ := CreateCSR(nil, key, iss.Record.Subject, nil)
		tc, _ := iss.TLSCertificate()
		certs, err := client.Reenroll(ctx, csr, tc)
		if err != nil {
			return nil, err
		}
		return &Issued{Certificate: certs[0], Chain: []*x509.Certificate{ca.Intermediate()}, Key: key, Record: Record{Subject: iss.Record.Subject}}, nil
	}
	for i := range DefaultReenrollLimit {
		if cur, err = reenroll(cur); err != nil {
			t.Fatalf("re-enrollment %d: %v", i+1, err)
		}
		mu.Lock()
		now = now.Add(time.Minute)
		mu.Unlock()
	}
	_, err = reenroll(cur)
	var se *ESTStatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("re-enrollment beyond the limit: %v", err)
	}
	// The limit is per device ID.
	if _, err := reenroll(other); err != nil {
		t.Fatalf("another device: %v", err)
	}
	// The refused attempt did not supersede the current certificate.
	if r, _ := ca.Get(SerialString(cur.Certificate.SerialNumber)); r.Revoked {
		t.Fatal("refused re-enrollment revoked the current certificate")
	}
	mu.Lock()
	now = now.Add(DefaultReenrollWindow)
	mu.Unlock()
	if _, err := reenroll(cur); err != nil {
		t.Fatalf("after the window: %v", err)
	}
}

// TestReenrollRetryAfter checks the 429 answer carries Retry-After.
func TestReenrollRetryAfter(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{})
	h := ca.ESTHandler(ESTConfig{ReenrollLimit: 1, ReenrollWindow: time.Hour})
	iss, _ := ca.IssueDevice("r-1", nil, 0)
	post := func(cert *x509.Certificate) *http.Response {
		key, _ := GenerateKey(ECDSAP256, nil)
		der, _ := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "r-1"}}, key)
		req, _ := http.NewRequest(http.MethodPost, "https://ca.test"+ESTPathPrefix+"simplereenroll", strings.NewReader(base64.StdEncoding.EncodeToString(der)))
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
		rw := httptest.NewRecorder()
		h.ServeHTTP(rw, req)
		return rw.Result()
	}
	first := post(iss.Certificate)
	if first.StatusCode != http.StatusOK {
		t.Fatalf("first: %d", first.StatusCode)
	}
	iss2, _ := ca.IssueDevice("r-1", nil, 0)
	r := post(iss2.Certificate)
	if r.StatusCode != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Fatalf("second: %d, Retry-After %q", r.StatusCode, r.Header.Get("Retry-After"))
	}
}
