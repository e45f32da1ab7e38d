package pkitest

import (
	"crypto/x509"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// Revoke marks cert revoked for the CRL and the OCSP responder of
// ServeRevocation.
func (ca *CA) Revoke(cert *x509.Certificate) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.revoked == nil {
		ca.revoked = map[string]time.Time{}
	}
	ca.revoked[cert.SerialNumber.String()] = time.Now().Add(-time.Second)
}

func (ca *CA) revokedSet() map[string]time.Time {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	m := make(map[string]time.Time, len(ca.revoked))
	for k, v := range ca.revoked {
		m[k] = v
	}
	return m
}

// ServeRevocation starts an HTTP server on 127.0.0.1 (closed when the test
// ends) that answers OCSP at /ocsp (POST and GET, responses signed by the
// intermediate itself, valid for an hour) and serves the CRL at /crl,
// both reflecting Revoke calls at once. Leaves issued afterwards carry the
// two URLs unless their Options override them.
func (ca *CA) ServeRevocation(t testing.TB) (ocspURL, crlURL string) {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/crl", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(ca.crl(ca.revokedSet()))
	})
	ocspHandler := func(w http.ResponseWriter, r *http.Request) {
		var der []byte
		if r.Method == http.MethodPost {
			der, _ = io.ReadAll(io.LimitReader(r.Body, 8192))
		} else {
			s, _ := url.PathUnescape(strings.TrimPrefix(r.URL.EscapedPath(), "/ocsp/"))
			der, _ = base64.StdEncoding.DecodeString(s)
		}
		req, err := ocsp.ParseRequest(der)
		w.Header().Set("Content-Type", "application/ocsp-response")
		if err != nil {
			w.Write(ocsp.MalformedRequestErrorResponse)
			return
		}
		now := time.Now()
		tmpl := ocsp.Response{Status: ocsp.Good, SerialNumber: req.SerialNumber, ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(time.Hour)}
		if at, ok := ca.revokedSet()[req.SerialNumber.String()]; ok {
			tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = ocsp.Revoked, at, ocsp.KeyCompromise
		}
		resp, err := ocsp.CreateResponse(ca.Intermediate, ca.Intermediate, tmpl, ca.IntermediateKey)
		if err != nil {
			w.Write(ocsp.InternalErrorErrorResponse)
			return
		}
		w.Write(resp)
	}
	mux.HandleFunc("/ocsp", ocspHandler)
	mux.HandleFunc("/ocsp/", ocspHandler)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	ca.mu.Lock()
	ca.opts.OCSPURL, ca.opts.CRLURL = srv.URL+"/ocsp", srv.URL+"/crl"
	ca.mu.Unlock()
	return srv.URL + "/ocsp", srv.URL + "/crl"
}
