package pki

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"golang.org/x/crypto/ocsp"
)

// opensslOCSP asks the responder about certFile with openssl and returns
// its output; openssl verifies the response signature against the root.
func opensslOCSP(t *testing.T, openssl string, ca *CA, certFile, ocspURL string) string {
	t.Helper()
	return run(t, true, openssl, "ocsp", "-issuer", filepath.Join(ca.Dir(), FileIntermediate),
		"-cert", certFile, "-url", ocspURL, "-CAfile", filepath.Join(ca.Dir(), FileRoot), "-no_nonce", "-resp_text")
}

func TestOCSPAndCRLWithOpenSSL(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	for _, alg := range []KeyAlgorithm{ECDSAP256, Ed25519, RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			ca := newCA(t, InitOptions{Settings: Settings{Algorithm: alg}})
			httpURL, _, _ := startServer(t, ca, ServerConfig{})
			dir := t.TempDir()
			iss, err := ca.IssueDevice("dev-1", nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			certFile := filepath.Join(dir, "dev")
			iss.WriteFiles(certFile)
			certFile += ".pem"

			out := opensslOCSP(t, openssl, ca, certFile, httpURL+"/ocsp")
			if !strings.Contains(out, "Response verify OK") || !strings.Contains(out, ": good") {
				t.Fatalf("openssl ocsp before revocation:\n%s", out)
			}
			if !strings.Contains(out, "Next Update") {
				t.Errorf("OCSP response without nextUpdate:\n%s", out)
			}

			start := time.Now()
			if _, err := ca.Revoke(iss.Record.Serial, ReasonKeyCompromise); err != nil {
				t.Fatal(err)
			}
			out = opensslOCSP(t, openssl, ca, certFile, httpURL+"/ocsp")
			if !strings.Contains(out, "Response verify OK") || !strings.Contains(out, ": revoked") || !strings.Contains(out, "keyCompromise") {
				t.Fatalf("openssl ocsp after revocation:\n%s", out)
			}
			crlFile := filepath.Join(dir, "crl.der")
			resp, err := http.Get(httpURL + "/crl")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			writeFile(t, crlFile, b)
			if time.Since(start) > time.Second {
				t.Errorf("revocation took %v to show in OCSP and CRL", time.Since(start))
			}
			crlText := run(t, true, openssl, "crl", "-inform", "DER", "-in", crlFile, "-noout", "-text")
			if !strings.Contains(crlText, strings.ToUpper(iss.Record.Serial)) {
				t.Fatalf("CRL does not list %s:\n%s", iss.Record.Serial, crlText)
			}
			// openssl verify with the CRL rejects the revoked certificate.
			pemCRL := filepath.Join(ca.Dir(), FileCRL)
			o := run(t, false, openssl, "verify", "-crl_check", "-CRLfile", pemCRL, "-CAfile", filepath.Join(ca.Dir(), FileRoot), "-untrusted", certFile, certFile)
			if !strings.Contains(o, "revoked") {
				t.Errorf("openssl verify -crl_check: %s", o)
			}
		})
	}
}

func TestOCSPGetAndCache(t *testing.T) {
	t.Parallel()
	now := time.Now()
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	ca := newCA(t, InitOptions{Config: Config{Now: func() time.Time { return *clock.Load() }}})
	httpURL, _, _ := startServer(t, ca, ServerConfig{})
	iss, _ := ca.IssueDevice("dev-1", nil, 0)
	req, err := ocsp.CreateRequest(iss.Certificate, ca.Intermediate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	get := func() *ocsp.Response {
		t.Helper()
		resp, err := http.Get(httpURL + "/ocsp/" + url.PathEscape(base64.StdEncoding.EncodeToString(req)))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.Header.Get("Content-Type") != "application/ocsp-response" || resp.Header.Get("Cache-Control") == "" {
			t.Errorf("headers: %v", resp.Header)
		}
		r, err := ocsp.ParseResponseForCert(b, iss.Certificate, ca.Intermediate())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r1 := get()
	if r1.Status != ocsp.Good || !r1.NextUpdate.Equal(r1.ThisUpdate.Add(DefaultOCSPValidity)) {
		t.Fatalf("status %d, thisUpdate %v nextUpdate %v", r1.Status, r1.ThisUpdate, r1.NextUpdate)
	}
	if r1.Certificate == nil || r1.Certificate.ExtKeyUsage[0] != x509.ExtKeyUsageOCSPSigning {
		t.Fatal("response not signed by a delegated OCSP signer")
	}
	later := now.Add(10 * time.Minute)
	clock.Store(&later)
	if r2 := get(); !r2.ThisUpdate.Equal(r1.ThisUpdate) {
		t.Error("response not cached within half its validity")
	}
	muchLater := now.Add(40 * time.Minute)
	clock.Store(&muchLater)
	if r3 := get(); !r3.ThisUpdate.After(r1.ThisUpdate) {
		t.Error("stale cached response served")
	}
	ca.Revoke(iss.Record.Serial, ReasonSuperseded)
	if r4 := get(); r4.Status != ocsp.Revoked || r4.RevocationReason != ocsp.Superseded {
		t.Errorf("after revoke: status %d reason %d", r4.Status, r4.RevocationReason)
	}
	// Unescaped base64 is served, and "//" in it reaches the responder
	// instead of being redirected by path cleaning.
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	raw := base64.StdEncoding.EncodeToString(req)
	for _, tc := range []struct {
		path string
		want int
	}{{"/ocsp/" + raw, http.StatusOK}, {"/ocsp/" + raw[:10] + "//" + raw[10:], http.StatusBadRequest}} {
		resp, err := noRedirect.Get(httpURL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s: status %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
	}

	// Unknown serial, foreign issuer and garbage.
	other := newCA(t, InitOptions{})
	foreign, _ := other.IssueDevice("x", nil, 0)
	freq, _ := ocsp.CreateRequest(foreign.Certificate, other.Intermediate(), nil)
	der, _, _ := ca.OCSPResponse(freq)
	if !bytes.Equal(der, ocsp.UnauthorizedErrorResponse) {
		t.Error("foreign issuer not answered unauthorized")
	}
	der, _, _ = ca.OCSPResponse([]byte("junk"))
	if !bytes.Equal(der, ocsp.MalformedRequestErrorResponse) {
		t.Error("junk not answered malformed")
	}
	fake := *iss.Certificate
	fake.SerialNumber = fake.SerialNumber.Add(fake.SerialNumber, fake.SerialNumber)
	ureq, _ := ocsp.CreateRequest(&fake, ca.Intermediate(), nil)
	der, st, err := ca.OCSPResponse(ureq)
	if err != nil || st.Status != ocsp.Unknown {
		t.Errorf("unknown serial: status %d err %v", st.Status, err)
	}
	if _, err := ocsp.ParseResponse(der, ca.Intermediate()); err != nil {
		t.Errorf("unknown response does not verify: %v", err)
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{})
	httpURL, _, _ := startServer(t, ca, ServerConfig{})
	a, _ := ca.IssueDevice("a", nil, 0)
	ca.IssueDevice("b", nil, 0)
	ca.Revoke(a.Record.Serial, 0)
	resp, err := http.Get(httpURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`moat_ca_certificates{profile="device",status="revoked"} 1`,
		`moat_ca_certificates{profile="device",status="valid"} 1`,
		`moat_ca_soonest_expiry_timestamp_seconds `,
		`moat_ca_crl_next_update_timestamp_seconds `,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// estCurl posts a CSR to the EST server like a device stack built on curl
// and openssl would, and returns the HTTP status and body.
func estCurl(t *testing.T, curl, estURL, caFile, op, csrB64File string, extra ...string) (int, string) {
	t.Helper()
	args := append([]string{"-sS", "--cacert", caFile, "-o", "-", "-w", "\n%{http_code}", "-H", "Content-Type: application/pkcs10", "-H", "Content-Transfer-Encoding: base64", "--data-binary", "@" + csrB64File}, extra...)
	args = append(args, estURL+ESTPathPrefix+op)
	out := run(t, true, curl, args...)
	i := strings.LastIndex(out, "\n")
	var code int
	fmt.Sscanf(out[i+1:], "%d", &code)
	return code, out[:i]
}

func TestESTWithCurlAndOpenSSL(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	curl := testutil.NeedTool(t, "curl")
	ca := newCA(t, InitOptions{})
	_, estURL, _ := startServer(t, ca, ServerConfig{})
	dir := t.TempDir()
	caFile := filepath.Join(ca.Dir(), FileRoot)

	bash := testutil.NeedTool(t, "bash")
	testutil.NeedTool(t, "base64")

	// cacerts, decoded the way RFC 8951 promises works: the answer is
	// base64 without line breaks, which coreutils' base64 -d accepts.
	printed := run(t, true, bash, "-c", "set -o pipefail; curl -sS --cacert \"$1\" \"$2\" | base64 -d | openssl pkcs7 -inform DER -print_certs -noout", "est", caFile, estURL+ESTPathPrefix+"cacerts")
	if !strings.Contains(printed, "Moat Issuing CA") || !strings.Contains(printed, "Moat Root CA") {
		t.Fatalf("cacerts:\n%s", printed)
	}
	if out := run(t, true, curl, "-sS", "--cacert", caFile, estURL+ESTPathPrefix+"cacerts"); strings.ContainsAny(out, "\r\n") {
		t.Errorf("cacerts answer has line breaks (RFC 8951 §3.1): %q", out)
	}

	// A device makes its key and CSR with openssl. Requests are sent
	// with CRLF line breaks (RFC 7030 clients) or without (RFC 8951);
	// both are accepted.
	wrapped := true
	mkCSR := func(name, cn string) string {
		key := filepath.Join(dir, name+".key")
		csr := filepath.Join(dir, name+".csr")
		run(t, true, openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-subj", "/CN="+cn, "-outform", "DER", "-out", csr)
		b, _ := os.ReadFile(csr)
		if !wrapped {
			return writeFile(t, csr+".b64", []byte(base64.StdEncoding.EncodeToString(b)))
		}
		return writeFile(t, csr+".b64", []byte(base64Lines(b)))
	}
	decode := func(name, body string) string {
		b64 := writeFile(t, filepath.Join(dir, name+".p7.b64"), []byte(body))
		run(t, true, bash, "-c", "base64 -d \"$1\" > \"$2\"", "decode", b64, filepath.Join(dir, name+".p7"))
		pemFile := filepath.Join(dir, name+".pem")
		run(t, true, openssl, "pkcs7", "-inform", "DER", "-in", filepath.Join(dir, name+".p7"), "-print_certs", "-out", pemFile)
		// Append the intermediate so the file is a PREFIX.pem chain.
		chain, _ := os.ReadFile(pemFile)
		chain = append(chain, EncodeCertificatesPEM(ca.Intermediate())...)
		writeFile(t, pemFile, chain)
		return pemFile
	}

	tok, err := ca.CreateToken("sensor-7", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	csr := mkCSR("sensor-7", "sensor-7")

	t.Run("no credentials", func(t *testing.T) {
		code, _ := estCurl(t, curl, estURL, caFile, "simpleenroll", csr)
		if code != http.StatusUnauthorized {
			t.Fatalf("status %d", code)
		}
	})
	t.Run("token for another ID", func(t *testing.T) {
		other := mkCSR("other", "other-device")
		code, body := estCurl(t, curl, estURL, caFile, "simpleenroll", other, "-u", "other-device:"+tok)
		if code != http.StatusForbidden {
			t.Fatalf("status %d: %s", code, body)
		}
		code, body = estCurl(t, curl, estURL, caFile, "simpleenroll", other, "-u", "sensor-7:"+tok)
		if code != http.StatusForbidden {
			t.Fatalf("CSR naming another device: status %d: %s", code, body)
		}
	})
	var devPEM string
	t.Run("enroll with token", func(t *testing.T) {
		code, body := estCurl(t, curl, estURL, caFile, "simpleenroll", csr, "-u", "sensor-7:"+tok)
		if code != http.StatusOK {
			t.Fatalf("status %d: %s", code, body)
		}
		devPEM = decode("sensor-7", body)
		run(t, true, openssl, "verify", "-CAfile", caFile, "-untrusted", devPEM, "-purpose", "sslclient", devPEM)
		subj := run(t, true, openssl, "x509", "-in", devPEM, "-noout", "-subject")
		if !strings.Contains(subj, "CN=sensor-7") && !strings.Contains(subj, "CN = sensor-7") {
			t.Fatalf("subject %s", subj)
		}
	})
	t.Run("token reuse", func(t *testing.T) {
		code, _ := estCurl(t, curl, estURL, caFile, "simpleenroll", csr, "-u", "sensor-7:"+tok)
		if code != http.StatusUnauthorized {
			t.Fatalf("status %d", code)
		}
	})
	t.Run("reenroll with current certificate", func(t *testing.T) {
		if devPEM == "" {
			t.Skip("enrollment failed")
		}
		wrapped = false
		newCSR := mkCSR("sensor-7b", "sensor-7")
		code, body := estCurl(t, curl, estURL, caFile, "simplereenroll", newCSR, "--cert", devPEM, "--key", filepath.Join(dir, "sensor-7.key"))
		if code != http.StatusOK {
			t.Fatalf("status %d: %s", code, body)
		}
		renewed := decode("sensor-7b", body)
		run(t, true, openssl, "verify", "-CAfile", caFile, "-untrusted", renewed, renewed)
		// The renewed certificate superseded the old one, which can no
		// longer re-enroll.
		code, body = estCurl(t, curl, estURL, caFile, "simplereenroll", mkCSR("sensor-7c", "sensor-7"), "--cert", devPEM, "--key", filepath.Join(dir, "sensor-7.key"))
		if code != http.StatusForbidden || !strings.Contains(body, "revoked") {
			t.Fatalf("superseded certificate: status %d: %s", code, body)
		}
		// Another device's name is refused even with a valid certificate.
		code, _ = estCurl(t, curl, estURL, caFile, "simplereenroll", mkCSR("x", "sensor-8"), "--cert", renewed, "--key", filepath.Join(dir, "sensor-7b.key"))
		if code != http.StatusForbidden {
			t.Fatalf("rename: status %d", code)
		}
		// A revoked certificate cannot re-enroll.
		certs, _ := LoadCertificatesFile(renewed)
		if _, err := ca.RevokeCertificate(certs[0], ReasonKeyCompromise); err != nil {
			t.Fatal(err)
		}
		code, _ = estCurl(t, curl, estURL, caFile, "simplereenroll", newCSR, "--cert", renewed, "--key", filepath.Join(dir, "sensor-7b.key"))
		if code != http.StatusForbidden {
			t.Fatalf("revoked: status %d", code)
		}
	})
	t.Run("reenroll without certificate", func(t *testing.T) {
		code, _ := estCurl(t, curl, estURL, caFile, "simplereenroll", csr)
		if code != http.StatusUnauthorized {
			t.Fatalf("status %d", code)
		}
	})
}

func TestEnrollerEndToEnd(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{Settings: Settings{DeviceLifetime: Duration(time.Hour)}})
	_, estURL, _ := startServer(t, ca, ServerConfig{})
	tok, _ := ca.CreateTokenFor(TokenRequest{ID: "dev-9", TTL: time.Hour, Names: []string{"spiffe://example.org/dev-9"}})
	prefix := filepath.Join(t.TempDir(), "dev-9")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waits []time.Duration
	var serials []string
	e := &Enroller{
		Client: &ESTClient{Server: estURL, Roots: ca.Roots()},
		ID:     "dev-9", Token: tok, Prefix: prefix,
		URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/dev-9"}},
		After: func(d time.Duration) <-chan time.Time {
			waits = append(waits, d)
			if cur, err := tls.LoadX509KeyPair(prefix+".pem", prefix+".key"); err == nil {
				serials = append(serials, SerialString(cur.Leaf.SerialNumber))
			}
			if len(waits) == 3 {
				cancel()
			}
			c := make(chan time.Time, 1)
			c <- time.Now()
			return c
		},
	}
	if err := e.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if len(serials) != 3 || serials[0] == serials[1] || serials[1] == serials[2] {
		t.Fatalf("serials across renewals: %v", serials)
	}
	// First wait is about two thirds of an hour (minus the backdate).
	if waits[0] < 35*time.Minute || waits[0] > 41*time.Minute {
		t.Errorf("first renewal scheduled in %v, want about 40m", waits[0])
	}
	recs, _ := ca.List(ListFilter{Subject: "dev-9"})
	if len(recs) < 3 {
		t.Fatalf("inventory has %d certificates for dev-9", len(recs))
	}
	for _, r := range recs {
		if len(r.URIs) != 1 || r.URIs[0] != "spiffe://example.org/dev-9" {
			t.Errorf("URIs %v", r.URIs)
		}
	}
	if st, _ := os.Stat(prefix + ".key"); st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", st.Mode().Perm())
	}
	cur, _ := e.Current()
	if res := ca.Verify([]*x509.Certificate{cur.Leaf}); !res.Valid {
		t.Errorf("enrolled certificate: %s", res)
	}
	// The token was used up by the first enrollment.
	e2 := &Enroller{Client: e.Client, ID: "dev-9", Token: tok, Prefix: prefix + "-2"}
	_, err := e2.Enroll(context.Background())
	var se *ESTStatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusUnauthorized {
		t.Fatalf("token reuse: %v", err)
	}
}

func TestManufacturerEnrollment(t *testing.T) {
	t.Parallel()
	mfr := newCA(t, InitOptions{})
	ca := newCA(t, InitOptions{})
	_, estURL, _ := startServer(t, ca, ServerConfig{ManufacturerRoots: mfr.Roots()})
	birth, _ := mfr.IssueDevice("dev-m", nil, 0)
	tc := tls.Certificate{Certificate: [][]byte{birth.Certificate.Raw, mfr.Intermediate().Raw}, PrivateKey: birth.Key}
	e := &Enroller{Client: &ESTClient{Server: estURL, Roots: ca.Roots()}, ID: "dev-m", AuthCertificate: &tc, Prefix: filepath.Join(t.TempDir(), "m")}
	c, err := e.Enroll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r, _ := ca.Get(SerialString(c.SerialNumber))
	if !strings.HasPrefix(r.AuthorizedBy, "manufacturer:") {
		t.Errorf("authorized by %q", r.AuthorizedBy)
	}
	// The manufacturer certificate names dev-m; asking for dev-x fails.
	e.ID, e.Prefix = "dev-x", e.Prefix+"x"
	if _, err := e.Enroll(context.Background()); err == nil {
		t.Fatal("manufacturer certificate enrolled another device ID")
	}
}

func TestTokenExpiryAndIDs(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := newCA(t, InitOptions{Config: Config{Now: func() time.Time { return now }}})
	tok, err := ca.CreateToken("d1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.CreateToken("bad:id", 0); err == nil {
		t.Error("token for an invalid ID")
	}
	if ts, _ := ca.Tokens(); len(ts) != 1 || ts[0].ID != "d1" || strings.Contains(ts[0].Hash, tok) {
		t.Errorf("Tokens() = %+v", ts)
	}
	now = now.Add(2 * time.Minute)
	key, _ := GenerateKey(ECDSAP256, nil)
	der, _ := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}}, key)
	csr, _ := x509.ParseCertificateRequest(der)
	if _, err := ca.EnrollWithToken("d1", tok, csr); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("expired token: %v", err)
	}
}

func TestPKCS7RoundTrip(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{})
	der, err := EncodeCertsOnly([]*x509.Certificate{ca.Intermediate(), ca.Root()})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseCertsOnly(der)
	if err != nil || len(got) != 2 || !got[0].Equal(ca.Intermediate()) || !got[1].Equal(ca.Root()) {
		t.Fatalf("ParseCertsOnly = %v, %v", got, err)
	}
	if _, err := ParseCertsOnly(append(der, 0)); err == nil {
		t.Error("trailing byte accepted")
	}
}

func FuzzParseCertsOnly(f *testing.F) {
	f.Add([]byte{0x30, 0x03, 0x06, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := ParseCertsOnly(b)
		if err != nil {
			return
		}
		// Re-encoding what was parsed parses to the same certificates.
		der, err := EncodeCertsOnly(certs)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseCertsOnly(der)
		if err != nil || len(again) != len(certs) {
			t.Fatalf("re-parse: %v", err)
		}
	})
}

func FuzzParseCSR(f *testing.F) {
	f.Add([]byte("MIIBADCBpwIBADAOMQwwCgYDVQQDDANkZXY="))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMA==\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, err := ParseCSR(b)
		if err == nil && csr == nil {
			t.Fatal("nil CSR without error")
		}
	})
}

func TestParseCertsOnlyFromOpenSSL(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	ca := newCA(t, InitOptions{})
	iss, _ := ca.IssueServer("", []string{"localhost"}, 0)
	dir := t.TempDir()
	iss.WriteFiles(filepath.Join(dir, "s"))
	p7 := filepath.Join(dir, "s.p7")
	run(t, true, openssl, "crl2pkcs7", "-nocrl", "-certfile", filepath.Join(dir, "s.pem"), "-outform", "DER", "-out", p7)
	der, _ := os.ReadFile(p7)
	certs, err := ParseCertsOnly(der)
	if err != nil || len(certs) != 2 || !certs[0].Equal(iss.Certificate) {
		t.Fatalf("ParseCertsOnly(openssl) = %d certs, %v", len(certs), err)
	}
}

func TestESTCertificateReused(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{})
	a, err := ca.estCertificate([]string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ca.estCertificate([]string{"localhost", "127.0.0.1"})
	if !a.Leaf.Equal(b.Leaf) {
		t.Error("EST certificate re-issued although the stored one is fresh")
	}
	c, _ := ca.estCertificate([]string{"ca.example.com"})
	if c.Leaf.Equal(a.Leaf) || c.Leaf.DNSNames[0] != "ca.example.com" {
		t.Error("EST certificate not re-issued for new names")
	}
}
