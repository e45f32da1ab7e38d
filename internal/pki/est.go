package pki

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ESTPathPrefix is where the EST handler lives (RFC 7030 §3.2.2).
const ESTPathPrefix = "/.well-known/est/"

// Re-enrollment rate limit defaults (see ESTConfig).
const (
	DefaultReenrollLimit  = 3
	DefaultReenrollWindow = 24 * time.Hour
)

// ESTConfig configures ESTHandler. The zero value accepts bootstrap
// tokens and re-enrollment only.
type ESTConfig struct {
	// ManufacturerRoots, when not nil, authorizes first enrollment by a
	// TLS client certificate (clientAuth) that chains to one of these
	// roots; the device ID is that certificate's common name.
	ManufacturerRoots *x509.CertPool
	// ManufacturerNames are the SANs a certificate enrolled with a
	// manufacturer certificate may carry, as "URI:..." templates in which
	// "{id}" stands for the device ID, e.g.
	// "URI:spiffe://factory.example/{id}". Nil allows none.
	ManufacturerNames []string
	// ReenrollLimit is how many re-enrollments one device ID may make
	// within ReenrollWindow; zero means DefaultReenrollLimit (3) and
	// DefaultReenrollWindow (24 hours). Further requests get 429.
	ReenrollLimit  int
	ReenrollWindow time.Duration
	// Observe, when not nil, is called once per request with the
	// operation ("cacerts", "simpleenroll", "simplereenroll") and the
	// result ("ok", "unauthorized", "forbidden", "bad_request",
	// "rate_limited", "error").
	Observe func(op, result string)
}

type estError struct {
	code   int
	result string
	msg    string
	// retryAfter is sent as Retry-After with 429 answers.
	retryAfter time.Duration
}

// CheckManufacturerNames validates ManufacturerNames templates.
func CheckManufacturerNames(templates []string) error {
	_, err := deviceNames(expandID(templates, "device-id"))
	if err != nil {
		return fmt.Errorf("pki: manufacturer names: %w", err)
	}
	return nil
}

func expandID(templates []string, id string) []string {
	out := make([]string, 0, len(templates))
	for _, t := range templates {
		out = append(out, strings.ReplaceAll(t, "{id}", id))
	}
	return out
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
//
// Every name of the new certificate must be authorized by the credential:
// the CN is the token's, manufacturer certificate's or current
// certificate's device ID; URI SANs must be among the token's names, the
// expanded ManufacturerNames, or the current certificate's URIs; DNS, IP
// and e-mail names are never issued. A re-enrollment supersedes the
// current certificate: it is revoked (reason superseded) in the
// transaction that records its successor, whose Record.Parent names it.
func (ca *CA) ESTHandler(cfg ESTConfig) http.Handler {
	observe := cfg.Observe
	if observe == nil {
		observe = func(string, string) {}
	}
	lim := reenrollLimit{n: cfg.ReenrollLimit, window: cfg.ReenrollWindow}
	if lim.n <= 0 || lim.window <= 0 {
		lim = reenrollLimit{n: DefaultReenrollLimit, window: DefaultReenrollWindow}
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
				switch {
				case errors.As(err, &ee):
				case errors.Is(err, ErrNamesNotAuthorized):
					ee = &estError{code: http.StatusForbidden, result: "forbidden", msg: err.Error()}
				default:
					ee = &estError{code: http.StatusBadRequest, result: "bad_request", msg: err.Error()}
				}
				if ee.code == http.StatusUnauthorized {
					w.Header().Set("WWW-Authenticate", `Basic realm="moat-est"`)
				}
				if ee.retryAfter > 0 {
					w.Header().Set("Retry-After", strconv.Itoa(int(ee.retryAfter.Round(time.Second)/time.Second)))
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
				return ca.reenroll(rec, csr, lim)
			}
			if cfg.ManufacturerRoots != nil {
				if id, by, err := verifyManufacturer(r.TLS.PeerCertificates, cfg.ManufacturerRoots, ca.cfg.now()); err == nil {
					names, err := deviceNames(expandID(cfg.ManufacturerNames, id))
					if err != nil {
						return nil, &estError{code: http.StatusInternalServerError, result: "error", msg: "manufacturer names are misconfigured"}
					}
					return ca.SignCSR(SignRequest{CSR: csr, Profile: ProfileDevice, AuthorizedID: id, AuthorizedNames: names, AuthorizedBy: by})
				}
			}
		}
		id, tok, ok := r.BasicAuth()
		if !ok {
			return nil, &estError{code: http.StatusUnauthorized, result: "unauthorized", msg: "authentication required: HTTP Basic ID:TOKEN or a client certificate"}
		}
		if csr.Subject.CommonName != id {
			return nil, &estError{code: http.StatusForbidden, result: "forbidden", msg: fmt.Sprintf("the CSR names %q but the token is presented for %q", csr.Subject.CommonName, id)}
		}
		iss, err := ca.EnrollWithToken(id, tok, csr)
		switch {
		case errors.Is(err, ErrTokenInvalid):
			return nil, &estError{code: http.StatusUnauthorized, result: "unauthorized", msg: "bootstrap token is invalid, used or expired"}
		case errors.Is(err, ErrTokenWrongID):
			return nil, &estError{code: http.StatusForbidden, result: "forbidden", msg: "bootstrap token was not issued for this device ID"}
		}
		return iss, err
	}))
	mux.HandleFunc("POST "+ESTPathPrefix+"simplereenroll", enroll("simplereenroll", func(r *http.Request, csr *x509.CertificateRequest) (*Issued, error) {
		if len(r.TLS.PeerCertificates) == 0 {
			return nil, &estError{code: http.StatusUnauthorized, result: "unauthorized", msg: "re-enrollment requires the current certificate as TLS client certificate"}
		}
		rec, err := ca.verifyDeviceCert(r.TLS.PeerCertificates)
		if err != nil {
			return nil, &estError{code: http.StatusForbidden, result: "forbidden", msg: err.Error()}
		}
		return ca.reenroll(rec, csr, lim)
	}))
	return mux
}

// reenrollLimit is a per-device-ID rate limit: n re-enrollments within
// window.
type reenrollLimit struct {
	n      int
	window time.Duration
}

// reenroll issues a successor of rec (RFC 7030 §4.2.2): the CSR must name
// the same device and ask for no name rec does not have. In the
// transaction that records the successor, rec is revoked as superseded
// (so a stolen certificate that re-enrolls locks out the legitimate
// device, which notices, and one that is revoked later cannot have left a
// live successor unless the operator skips descendants), and the device
// ID's re-enrollment count is checked against lim.
func (ca *CA) reenroll(rec Record, csr *x509.CertificateRequest, lim reenrollLimit) (*Issued, error) {
	if csr.Subject.CommonName != rec.Subject {
		return nil, &estError{code: http.StatusForbidden, result: "forbidden", msg: fmt.Sprintf("the CSR names %q but the current certificate is for %q", csr.Subject.CommonName, rec.Subject)}
	}
	ir, err := ca.csrToIssue(SignRequest{CSR: csr, Profile: ProfileDevice, AuthorizedID: rec.Subject, AuthorizedNames: rec.SANs(), AuthorizedBy: "est-reenroll:" + rec.Serial})
	if err != nil {
		if errors.Is(err, ErrNamesNotAuthorized) {
			return nil, &estError{code: http.StatusForbidden, result: "forbidden", msg: err.Error() + "; the current certificate has no such name"}
		}
		return nil, err
	}
	now := ca.cfg.now()
	iss, err := ca.issue(ir, issueHooks{rebuildCRL: true, inTx: func(tx *bolt.Tx, child *Record) error {
		parent, err := getRecord(tx, rec.Serial)
		if err != nil {
			return err
		}
		if parent.Revoked {
			// Another re-enrollment with the same certificate won the race.
			return &estError{code: http.StatusForbidden, result: "forbidden", msg: "the client certificate is revoked"}
		}
		if err := checkReenrollRate(tx, rec.Subject, now, lim); err != nil {
			return err
		}
		parent.Revoked, parent.RevokedAt, parent.Reason = true, now.UTC().Truncate(time.Second), ReasonSuperseded
		if err := putRecord(tx, parent); err != nil {
			return err
		}
		child.Parent = parent.Serial
		return nil
	}})
	if err != nil {
		return nil, err
	}
	ca.cfg.logger().Info("pki: re-enrollment superseded certificate", "id", rec.Subject, "revoked", rec.Serial, "reason", ReasonSuperseded.String(), "successor", iss.Record.Serial)
	return iss, nil
}

// checkReenrollRate counts a re-enrollment of id at now, or refuses it
// with 429 when lim is reached. Only successful re-enrollments count (the
// caller's transaction is rolled back otherwise); the stored list holds
// at most lim.n times per device ID.
func checkReenrollRate(tx *bolt.Tx, id string, now time.Time, lim reenrollLimit) error {
	b, err := tx.CreateBucketIfNotExists(bucketReenroll)
	if err != nil {
		return err
	}
	var times []time.Time
	if v := b.Get([]byte(id)); v != nil {
		_ = json.Unmarshal(v, &times) // a corrupt entry counts as empty
	}
	recent := times[:0]
	for _, t := range times {
		if now.Sub(t) < lim.window && !t.After(now) {
			recent = append(recent, t)
		}
	}
	if len(recent) >= lim.n {
		wait := recent[len(recent)-lim.n].Add(lim.window).Sub(now)
		return &estError{code: http.StatusTooManyRequests, result: "rate_limited", retryAfter: wait,
			msg: fmt.Sprintf("device %q has re-enrolled %d times within %v; try again in %v", id, len(recent), lim.window, wait.Round(time.Second))}
	}
	recent = append(recent, now.UTC())
	v, _ := json.Marshal(recent)
	return b.Put([]byte(id), v)
}

// verifyDeviceCert checks that chain[0] is a currently valid, unrevoked
// device certificate of this CA and returns its record.
func (ca *CA) verifyDeviceCert(chain []*x509.Certificate) (Record, error) {
	inters := x509.NewCertPool()
	inters.AddCert(ca.inter)
	for _, r := range ca.retired { // devices renew after a rotation with the old certificate
		inters.AddCert(r.cert)
	}
	for _, c := range chain[1:] {
		inters.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: ca.Roots(), Intermediates: inters, CurrentTime: ca.cfg.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return Record{}, fmt.Errorf("the client certificate is not a valid certificate of this CA: %v", err)
	}
	iss, ok := ca.issuerOf(chain[0])
	if !ok {
		return Record{}, errors.New("the client certificate was not issued by this CA's intermediates")
	}
	if ca.onRootCRL(iss.cert) {
		return Record{}, fmt.Errorf("the client certificate's intermediate %q is revoked on the root CRL", iss.cert.Subject.CommonName)
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
	// RFC 8951 §3.1: base64 of RFC 4648, without line breaks, so that
	// "curl ... | base64 -d" works.
	w.Write([]byte(base64.StdEncoding.EncodeToString(der)))
}
