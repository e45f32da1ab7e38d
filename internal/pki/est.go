package pki

import (
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// ESTPathPrefix is where the EST handler lives (RFC 7030 §3.2.2).
const ESTPathPrefix = "/.well-known/est/"

// ESTConfig configures ESTHandler. The zero value accepts bootstrap
// tokens and re-enrollment only.
type ESTConfig struct {
	// ManufacturerRoots, when not nil, authorizes first enrollment by a
	// TLS client certificate (clientAuth) that chains to one of these
	// roots; the device ID is that certificate's common name.
	ManufacturerRoots *x509.CertPool
	// Observe, when not nil, is called once per request with the
	// operation ("cacerts", "simpleenroll", "simplereenroll") and the
	// result ("ok", "unauthorized", "forbidden", "bad_request", "error").
	Observe func(op, result string)
}

type estError struct {
	code   int
	result string
	msg    string
}

func (e *estError) Error() string { return e.msg }

// ESTHandler serves RFC 7030 cacerts, simpleenroll and simplereenroll
// under ESTPathPrefix. It must be served over TLS with client
// certificates requested (see Server): Basic tokens are refused on plain
// HTTP, and re-enrollment needs the peer certificate.
//
// Authorization: simpleenroll accepts HTTP Basic "ID:TOKEN" with a
// bootstrap token from CreateToken, a manufacturer certificate (see
// ESTConfig), or a currently valid device certificate of this CA;
// simplereenroll only the current valid certificate, and the new CSR must
// name the same device. Issued certificates use the device profile.
func (ca *CA) ESTHandler(cfg ESTConfig) http.Handler {
	observe := cfg.Observe
	if observe == nil {
		observe = func(string, string) {}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+ESTPathPrefix+"cacerts", func(w http.ResponseWriter, r *http.Request) {
		writePKCS7(w, []*x509.Certificate{ca.inter, ca.root})
		observe("cacerts", "ok")
	})
	enroll := func(op string, fn func(r *http.Request, csr *x509.CertificateRequest) (*Issued, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.TLS == nil {
				http.Error(w, "EST requires HTTPS", http.StatusForbidden)
				observe(op, "forbidden")
				return
			}
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxCSRSize))
			if err != nil {
				http.Error(w, "request too large", http.StatusRequestEntityTooLarge)
				observe(op, "bad_request")
				return
			}
			csr, err := ParseCSR(body)
			if err != nil {
				http.Error(w, "bad PKCS#10 request: "+err.Error(), http.StatusBadRequest)
				observe(op, "bad_request")
				return
			}
			iss, err := fn(r, csr)
			if err != nil {
				var ee *estError
				if !errors.As(err, &ee) {
					ee = &estError{http.StatusBadRequest, "bad_request", err.Error()}
				}
				if ee.code == http.StatusUnauthorized {
					w.Header().Set("WWW-Authenticate", `Basic realm="moat-est"`)
				}
				ca.cfg.logger().Warn("pki: EST request refused", "op", op, "remote", r.RemoteAddr, "reason", ee.msg)
				http.Error(w, ee.msg, ee.code)
				observe(op, ee.result)
				return
			}
			writePKCS7(w, []*x509.Certificate{iss.Certificate})
			observe(op, "ok")
		}
	}
	mux.HandleFunc("POST "+ESTPathPrefix+"simpleenroll", enroll("simpleenroll", func(r *http.Request, csr *x509.CertificateRequest) (*Issued, error) {
		if len(r.TLS.PeerCertificates) > 0 {
			if rec, err := ca.verifyDeviceCert(r.TLS.PeerCertificates); err == nil {
				return ca.reenroll(rec, csr)
			}
			if cfg.ManufacturerRoots != nil {
				if id, by, err := verifyManufacturer(r.TLS.PeerCertificates, cfg.ManufacturerRoots, ca.cfg.now()); err == nil {
					return ca.SignCSR(SignRequest{CSR: csr, Profile: ProfileDevice, AuthorizedID: id, AuthorizedBy: by})
				}
			}
		}
		id, tok, ok := r.BasicAuth()
		if !ok {
			return nil, &estError{http.StatusUnauthorized, "unauthorized", "authentication required: HTTP Basic ID:TOKEN or a client certificate"}
		}
		if csr.Subject.CommonName != id {
			return nil, &estError{http.StatusForbidden, "forbidden", fmt.Sprintf("the CSR names %q but the token is presented for %q", csr.Subject.CommonName, id)}
		}
		iss, err := ca.EnrollWithToken(id, tok, csr)
		switch {
		case errors.Is(err, ErrTokenInvalid):
			return nil, &estError{http.StatusUnauthorized, "unauthorized", "bootstrap token is invalid, used or expired"}
		case errors.Is(err, ErrTokenWrongID):
			return nil, &estError{http.StatusForbidden, "forbidden", "bootstrap token was not issued for this device ID"}
		}
		return iss, err
	}))
	mux.HandleFunc("POST "+ESTPathPrefix+"simplereenroll", enroll("simplereenroll", func(r *http.Request, csr *x509.CertificateRequest) (*Issued, error) {
		if len(r.TLS.PeerCertificates) == 0 {
			return nil, &estError{http.StatusUnauthorized, "unauthorized", "re-enrollment requires the current certificate as TLS client certificate"}
		}
		rec, err := ca.verifyDeviceCert(r.TLS.PeerCertificates)
		if err != nil {
			return nil, &estError{http.StatusForbidden, "forbidden", err.Error()}
		}
		return ca.reenroll(rec, csr)
	}))
	return mux
}

// reenroll issues a successor of rec; the CSR must name the same device
// and request no other URIs (RFC 7030 §4.2.2).
func (ca *CA) reenroll(rec Record, csr *x509.CertificateRequest) (*Issued, error) {
	for _, u := range csr.URIs {
		if !slices.Contains(rec.URIs, u.String()) {
			return nil, &estError{http.StatusForbidden, "forbidden", fmt.Sprintf("the CSR requests URI %s, which the current certificate does not have", u)}
		}
	}
	if csr.Subject.CommonName != rec.Subject {
		return nil, &estError{http.StatusForbidden, "forbidden", fmt.Sprintf("the CSR names %q but the current certificate is for %q", csr.Subject.CommonName, rec.Subject)}
	}
	return ca.SignCSR(SignRequest{CSR: csr, Profile: ProfileDevice, AuthorizedID: rec.Subject, AuthorizedBy: "est-reenroll:" + rec.Serial})
}

// verifyDeviceCert checks that chain[0] is a currently valid, unrevoked
// device certificate of this CA and returns its record.
func (ca *CA) verifyDeviceCert(chain []*x509.Certificate) (Record, error) {
	inters := x509.NewCertPool()
	inters.AddCert(ca.inter)
	for _, c := range chain[1:] {
		inters.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: ca.Roots(), Intermediates: inters, CurrentTime: ca.cfg.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return Record{}, fmt.Errorf("the client certificate is not a valid certificate of this CA: %v", err)
	}
	rec, err := ca.Get(SerialString(chain[0].SerialNumber))
	if err != nil {
		return Record{}, fmt.Errorf("the client certificate is unknown to this CA: %v", err)
	}
	if rec.Revoked {
		return Record{}, errors.New("the client certificate is revoked")
	}
	if rec.Profile != ProfileDevice {
		return Record{}, errors.New("the client certificate is not a device certificate")
	}
	return rec, nil
}

func verifyManufacturer(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) (id, by string, err error) {
	inters := x509.NewCertPool()
	for _, c := range chain[1:] {
		inters.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", "", err
	}
	id = chain[0].Subject.CommonName
	if !ValidDeviceID(id) {
		return "", "", fmt.Errorf("manufacturer certificate CN %q is not a valid device ID", id)
	}
	return id, "manufacturer:" + chain[0].Issuer.CommonName + "/" + SerialString(chain[0].SerialNumber), nil
}

func writePKCS7(w http.ResponseWriter, certs []*x509.Certificate) {
	der, err := EncodeCertsOnly(certs)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/pkcs7-mime; smime-type=certs-only")
	w.Header().Set("Content-Transfer-Encoding", "base64")
	w.Write([]byte(base64Lines(der)))
}

// base64Lines encodes b as base64 in 64-character lines.
func base64Lines(b []byte) string {
	s := base64.StdEncoding.EncodeToString(b)
	var sb strings.Builder
	for len(s) > 64 {
		sb.WriteString(s[:64])
		sb.WriteString("\r\n")
		s = s[64:]
	}
	sb.WriteString(s)
	sb.WriteString("\r\n")
	return sb.String()
}
