package admin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func certWithURIs(serial int64, uris ...string) *x509.Certificate {
	c := &x509.Certificate{SerialNumber: big.NewInt(serial)}
	c.Subject.CommonName = "alice"
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			panic(err)
		}
		c.URIs = append(c.URIs, u)
	}
	return c
}

func TestCertificateRole(t *testing.T) {
	for _, tc := range []struct {
		uris []string
		role Role
		ok   bool
	}{
		{[]string{"urn:moat:admin:viewer"}, RoleViewer, true},
		{[]string{"spiffe://example.org/x", "urn:moat:admin:operator"}, RoleOperator, true},
		{[]string{"urn:moat:admin:operator", "urn:moat:admin:operator"}, RoleOperator, true},
		{nil, "", false},
		{[]string{"spiffe://example.org/x"}, "", false},
		{[]string{"urn:moat:admin:root"}, "", false},
		{[]string{"urn:moat:admin:viewer", "urn:moat:admin:operator"}, "", false},
		{[]string{"urn:moat:admin:Operator"}, "", false},
		{[]string{"moat:admin:operator"}, "", false},
	} {
		role, ok := CertificateRole(certWithURIs(1, tc.uris...))
		if role != tc.role || ok != tc.ok {
			t.Errorf("%q: %q %v, want %q %v", tc.uris, role, ok, tc.role, tc.ok)
		}
	}
}

// TestSecurityAdminCertificateAuth: a client certificate authenticates
// only when VerifyClientCert accepts it (checked on every request) and it
// names a role; a viewer certificate cannot change anything; a bearer
// token, when sent, is what counts.
func TestSecurityAdminCertificateAuth(t *testing.T) {
	revoked := map[string]bool{}
	h, viewerToken, _ := newTestHandler(t, Config{
		VerifyClientCert: func(_ context.Context, chain []*x509.Certificate) error {
			if revoked[chain[0].SerialNumber.String()] {
				return errors.New("revoked")
			}
			return nil
		},
	})
	call := func(method, path string, cert *x509.Certificate, token string) int {
		req := httptest.NewRequest(method, path, strings.NewReader("{}"))
		if cert != nil {
			req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	op := certWithURIs(10, "urn:moat:admin:operator")
	viewer := certWithURIs(11, "urn:moat:admin:viewer")
	device := certWithURIs(12)
	if c := call("GET", "/api/v1/whoami", op, ""); c != 200 {
		t.Fatalf("operator certificate: %d", c)
	}
	if c := call("POST", "/api/v1/config/reload", viewer, ""); c != 403 {
		t.Errorf("viewer certificate changing state: %d, want 403", c)
	}
	if c := call("GET", "/metrics", device, ""); c != 401 {
		t.Errorf("a certificate without a role: %d, want 401", c)
	}
	revoked["10"] = true
	if c := call("GET", "/api/v1/whoami", op, ""); c != 401 {
		t.Errorf("revoked certificate: %d, want 401", c)
	}
	// The token decides when one is sent: a bad token is not rescued by
	// a good certificate.
	if c := call("GET", "/api/v1/whoami", viewer, "moat_bad"); c != 401 {
		t.Errorf("bad token with a good certificate: %d, want 401", c)
	}
	if c := call("GET", "/api/v1/whoami", device, viewerToken); c != 200 {
		t.Errorf("good token with a certificate without a role: %d, want 200", c)
	}
	// Without VerifyClientCert, certificates count for nothing.
	h2, _, _ := newTestHandler(t, Config{})
	req := httptest.NewRequest("GET", "/api/v1/whoami", nil)
	req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{viewer}}
	rec := httptest.NewRecorder()
	h2.ServeHTTP(rec, req)
	if rec.Code != 401 {
		t.Errorf("certificate without VerifyClientCert: %d, want 401", rec.Code)
	}
}

// TestSecurityAdminCertificateCSRF: a browser presents its client
// certificate to requests of any page, so a change authenticated by one is
// refused unless it shows it comes from the API's own origin: a form POST
// from another site, a request whose Origin or Sec-Fetch-Site names
// another site, are refused; curl and the API's own pages pass.
func TestSecurityAdminCertificateCSRF(t *testing.T) {
	h, _, opToken := newTestHandler(t, Config{
		VerifyClientCert: func(context.Context, []*x509.Certificate) error { return nil },
	})
	op := certWithURIs(10, "urn:moat:admin:operator")
	for _, tc := range []struct {
		name    string
		headers map[string]string
		token   string
		want    int
	}{
		{"form post from another site", map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"}, "", 403},
		{"text/plain post (no preflight)", map[string]string{"Content-Type": "text/plain"}, "", 403},
		{"JSON from another origin", map[string]string{"Content-Type": "application/json", "Origin": "https://evil.example"}, "", 403},
		{"cross-site fetch", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, "", 403},
		{"same-site but another origin", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, "", 403},
		{"curl with JSON", map[string]string{"Content-Type": "application/json"}, "", 404},
		{"the API's own page", map[string]string{"Content-Type": "application/json; charset=utf-8", "Origin": "https://admin.test:9883", "Sec-Fetch-Site": "same-origin"}, "", 404},
		// A token is never sent by a browser on its own: no such check.
		{"token, form body", map[string]string{"Content-Type": "text/plain"}, opToken, 404},
	} {
		req := httptest.NewRequest("POST", "https://admin.test:9883/api/v1/clients/nobody/kick", strings.NewReader("{}"))
		req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{op}}
		for k, v := range tc.headers {
			req.Header.Set(k, v)
		}
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, rec.Code, rec.Body, tc.want)
		}
	}
}
