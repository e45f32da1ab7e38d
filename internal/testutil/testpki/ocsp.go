package testpki

import (
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// Responder is a real OCSP responder (RFC 6960 over HTTP POST) on
// 127.0.0.1. Its state may be changed while it runs.
type Responder struct {
	URL    string
	Issuer *Cert
	Signer *Cert // Issuer itself or a delegated responder certificate

	mu       sync.Mutex
	revoked  map[string]bool
	unknown  bool
	validity time.Duration
	delay    time.Duration

	// Now is the responder's clock (default time.Now); set it before use.
	Now func() time.Time

	Hits atomic.Int64 // requests served
	Fail atomic.Bool  // answer HTTP 500
}

// NewResponder starts a responder for certificates issued by issuer. With
// delegated, responses are signed by a dedicated OCSP signing certificate
// issued by issuer. The server stops at test cleanup.
func NewResponder(t testing.TB, issuer *Cert, delegated bool) *Responder {
	t.Helper()
	r := &Responder{Issuer: issuer, Signer: issuer, revoked: map[string]bool{}, validity: time.Hour}
	if delegated {
		r.Signer = issuer.Issue(t, Options{CN: "ocsp responder", EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}, KeyIndex: 3})
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	srv := &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	r.URL = "http://" + ln.Addr().String() + "/ocsp"
	return r
}

// Revoke marks c revoked from now on.
func (r *Responder) Revoke(c *Cert) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.revoked[c.Cert.SerialNumber.String()] = true
}

// SetUnknown makes the responder answer "unknown" for every certificate.
func (r *Responder) SetUnknown(v bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unknown = v
}

// SetDelay makes the responder wait before answering.
func (r *Responder) SetDelay(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.delay = d
}

// SetValidity sets the span between thisUpdate and nextUpdate.
func (r *Responder) SetValidity(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.validity = d
}

// ServeHTTP answers one OCSP request.
func (r *Responder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.Hits.Add(1)
	r.mu.Lock()
	delay := r.delay
	r.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-req.Context().Done():
			return
		}
	}
	if r.Fail.Load() {
		http.Error(w, "responder failure", http.StatusInternalServerError)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<16))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	oreq, err := ocsp.ParseRequest(body)
	if err != nil {
		w.Header().Set("Content-Type", "application/ocsp-response")
		w.Write(ocsp.MalformedRequestErrorResponse)
		return
	}
	r.mu.Lock()
	now := time.Now()
	if r.Now != nil {
		now = r.Now()
	}
	tmpl := ocsp.Response{
		Status:       ocsp.Good,
		SerialNumber: oreq.SerialNumber,
		ThisUpdate:   now.Add(-time.Minute),
		NextUpdate:   now.Add(r.validity),
	}
	if r.unknown {
		tmpl.Status = ocsp.Unknown
	} else if r.revoked[oreq.SerialNumber.String()] {
		tmpl.Status = ocsp.Revoked
		tmpl.RevokedAt = now.Add(-time.Minute)
		tmpl.RevocationReason = ocsp.KeyCompromise
	}
	r.mu.Unlock()
	if r.Signer != r.Issuer {
		tmpl.Certificate = r.Signer.Cert
	}
	resp, err := ocsp.CreateResponse(r.Issuer.Cert, r.Signer.Cert, tmpl, r.Signer.Key)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	w.Write(resp)
}
