package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/ocsp"
)

var oidOCSPNoCheck = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}

const (
	maxOCSPRequest  = 8 << 10
	maxOCSPCacheLen = 10000
)

type cachedOCSP struct {
	revision   uint64
	der        []byte
	fresh      time.Time // reuse until then
	thisUpdate time.Time
	nextUpdate time.Time
}

// OCSPStatus is the answer the responder gives for one serial.
type OCSPStatus struct {
	Status     int // ocsp.Good, ocsp.Revoked or ocsp.Unknown
	Record     Record
	ThisUpdate time.Time
	NextUpdate time.Time
}

// ocspSigner returns the delegated OCSP signing certificate and key,
// issuing a new one when missing or when less than a third of its
// lifetime remains. The responder key is ECDSA P-256 when the CA uses
// Ed25519 (x/crypto/ocsp cannot sign with Ed25519), otherwise the CA's
// algorithm.
func (ca *CA) ocspSigner() (*x509.Certificate, crypto.Signer, error) {
	ca.ocspmu.Lock()
	defer ca.ocspmu.Unlock()
	now := ca.cfg.now()
	fresh := func(c *x509.Certificate) bool {
		return c != nil && now.Before(c.NotAfter.Add(-c.NotAfter.Sub(c.NotBefore)/3)) && c.CheckSignatureFrom(ca.inter) == nil
	}
	if fresh(ca.ocspCert) {
		return ca.ocspCert, ca.ocspKey, nil
	}
	if cs, err := LoadCertificatesFile(ca.path(FileOCSPSigner)); err == nil && fresh(cs[0]) {
		if k, err := LoadKeyFile(ca.path(FileOCSPSignerKey)); err == nil && publicKeysEqual(k.Public(), cs[0].PublicKey) {
			ca.ocspCert, ca.ocspKey = cs[0], k
			return ca.ocspCert, ca.ocspKey, nil
		}
	}
	alg := ca.settings.Algorithm
	if alg == Ed25519 || alg == "" {
		alg = ECDSAP256
	}
	iss, err := ca.issue(IssueRequest{Profile: ProfileOCSP, CommonName: ca.inter.Subject.CommonName + " OCSP Responder", KeyAlgorithm: alg, AuthorizedBy: "ocsp-rollover"}, issueHooks{})
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issuing OCSP signer: %w", err)
	}
	if err := iss.WriteFiles(strings.TrimSuffix(ca.path(FileOCSPSigner), ".pem")); err != nil {
		return nil, nil, err
	}
	ca.ocspCert, ca.ocspKey = iss.Certificate, iss.Key
	ca.ocspCache = map[string]cachedOCSP{}
	ca.cfg.logger().Info("pki: new OCSP signing certificate", "serial", iss.Record.Serial, "not_after", iss.Certificate.NotAfter)
	return ca.ocspCert, ca.ocspKey, nil
}

// OCSPResponse answers a DER OCSP request with a signed DER response.
// A request nonce (RFC 8954) of 1 to 32 bytes is echoed in the response;
// a longer, empty or repeated one makes the request malformed.
// Malformed requests get a malformedRequest response, requests about
// another issuer an unauthorized response (both unsigned, as RFC 6960
// §2.3 prescribes). Good and revoked answers are cached per serial until
// half of their validity has passed or the inventory changes.
func (ca *CA) OCSPResponse(reqDER []byte) ([]byte, OCSPStatus, error) {
	req, err := ocsp.ParseRequest(reqDER)
	if err != nil {
		return ocsp.MalformedRequestErrorResponse, OCSPStatus{}, nil
	}
	nonce, err := requestNonce(reqDER)
	if err != nil {
		ca.cfg.logger().Info("pki: OCSP request refused as malformed", "reason", err.Error())
		return ocsp.MalformedRequestErrorResponse, OCSPStatus{}, nil
	}
	issuer, ok := ca.ocspIssuer(req)
	if !ok {
		return ocsp.UnauthorizedErrorResponse, OCSPStatus{}, nil
	}
	serial := SerialString(req.SerialNumber)
	var rec Record
	var found bool
	var rev uint64
	err = ca.view(func(tx *bolt.Tx) error {
		rev = ca.revision(tx)
		r, err := getRecord(tx, serial)
		if err == nil {
			rec, found = r, true
			return nil
		}
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return ocsp.InternalErrorErrorResponse, OCSPStatus{}, err
	}
	now := ca.cfg.now()
	st := OCSPStatus{Status: ocsp.Unknown, Record: rec}
	if found {
		st.Status = ocsp.Good
		if rec.Revoked {
			st.Status = ocsp.Revoked
		}
	}
	if found && rec.Issuer != "" && rec.Issuer != issuer.id {
		st = OCSPStatus{Status: ocsp.Unknown} // a serial of another intermediate
	}
	cacheKey := fmt.Sprintf("%s/%s/%d", issuer.id, serial, req.HashAlgorithm)
	ca.ocspmu.Lock()
	c, ok := ca.ocspCache[cacheKey]
	ca.ocspmu.Unlock()
	if ok && nonce == nil && c.revision == rev && now.Before(c.fresh) {
		st.ThisUpdate, st.NextUpdate = c.thisUpdate, c.nextUpdate
		return c.der, st, nil
	}
	// The current intermediate answers through its delegated responder;
	// a retired one signs its answers itself (RFC 6960 §4.2.2.2).
	cert, key := issuer.cert, issuer.key
	if issuer.cert == ca.inter {
		if cert, key, err = ca.ocspSigner(); err != nil {
			return ocsp.InternalErrorErrorResponse, st, err
		}
	}
	validity := ca.settings.ocspValidity()
	st.ThisUpdate = now.UTC().Truncate(time.Second)
	st.NextUpdate = st.ThisUpdate.Add(validity)
	tmpl := ocsp.Response{
		Status:       st.Status,
		SerialNumber: req.SerialNumber,
		ThisUpdate:   st.ThisUpdate,
		NextUpdate:   st.NextUpdate,
		Certificate:  cert,
		IssuerHash:   req.HashAlgorithm,
	}
	if st.Status == ocsp.Revoked {
		tmpl.RevokedAt = rec.RevokedAt
		tmpl.RevocationReason = int(rec.Reason)
	}
	if issuer.cert != ca.inter {
		tmpl.Certificate = nil
	}
	der, err := ocsp.CreateResponse(issuer.cert, cert, tmpl, key)
	if err != nil {
		return ocsp.InternalErrorErrorResponse, st, fmt.Errorf("pki: signing OCSP response: %w", err)
	}
	if nonce != nil {
		// A response with the client's nonce is unique to that request:
		// it is neither cached nor taken from the cache.
		if der, err = addResponseNonce(der, *nonce, key, ca.cfg.rand()); err != nil {
			return ocsp.InternalErrorErrorResponse, st, err
		}
		return der, st, nil
	}
	ca.ocspmu.Lock()
	if len(ca.ocspCache) >= maxOCSPCacheLen {
		clear(ca.ocspCache)
	}
	ca.ocspCache[cacheKey] = cachedOCSP{revision: rev, der: der, fresh: now.Add(validity / 2), thisUpdate: st.ThisUpdate, nextUpdate: st.NextUpdate}
	ca.ocspmu.Unlock()
	return der, st, nil
}

// ocspIssuer returns the intermediate a request asks about: the current
// one, or a retired one that still has unexpired certificates.
func (ca *CA) ocspIssuer(req *ocsp.Request) (issuerCA, bool) {
	if ocspIssuerMatches(req, ca.inter) {
		return issuerCA{cert: ca.inter, key: ca.interKey, id: keyIDHex(ca.inter)}, true
	}
	now := ca.cfg.now()
	for _, r := range ca.retired {
		if now.Before(r.cert.NotAfter) && ocspIssuerMatches(req, r.cert) {
			return r, true
		}
	}
	return issuerCA{}, false
}

func ocspIssuerMatches(req *ocsp.Request, issuer *x509.Certificate) bool {
	if !req.HashAlgorithm.Available() {
		return false
	}
	var spki struct {
		Algorithm asn1.RawValue
		Key       asn1.BitString
	}
	if _, err := asn1.Unmarshal(issuer.RawSubjectPublicKeyInfo, &spki); err != nil {
		return false
	}
	h := req.HashAlgorithm.New()
	h.Write(issuer.RawSubject)
	nameHash := h.Sum(nil)
	h.Reset()
	h.Write(spki.Key.Bytes)
	keyHash := h.Sum(nil)
	return bytes.Equal(nameHash, req.IssuerNameHash) && bytes.Equal(keyHash, req.IssuerKeyHash)
}

// OCSPHandler serves RFC 6960 OCSP over HTTP: POST with an
// application/ocsp-request body, or GET with the base64 request as the
// last path element (RFC 6960 Appendix A.1). Mount it at /ocsp and
// /ocsp/. observe, when not nil, is told each answer's status ("good",
// "revoked", "unknown", "malformed", "unauthorized", "error").
func (ca *CA) OCSPHandler(observe func(result string)) http.Handler {
	if observe == nil {
		observe = func(string) {}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var reqDER []byte
		switch r.Method {
		case http.MethodPost:
			b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxOCSPRequest))
			if err != nil {
				http.Error(w, "request too large", http.StatusRequestEntityTooLarge)
				return
			}
			reqDER = b
		case http.MethodGet:
			p := r.URL.EscapedPath()
			i := strings.LastIndex(p, "/ocsp/")
			if i < 0 {
				http.Error(w, "missing request", http.StatusBadRequest)
				return
			}
			enc, err := url.PathUnescape(p[i+len("/ocsp/"):])
			if err != nil || len(enc) > 2*maxOCSPRequest {
				http.Error(w, "bad request encoding", http.StatusBadRequest)
				return
			}
			if reqDER, err = base64.StdEncoding.DecodeString(enc); err != nil {
				if reqDER, err = base64.RawURLEncoding.DecodeString(strings.TrimRight(enc, "=")); err != nil {
					http.Error(w, "bad request encoding", http.StatusBadRequest)
					return
				}
			}
		default:
			w.Header().Set("Allow", "GET, POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		der, st, err := ca.OCSPResponse(reqDER)
		result := "error"
		switch {
		case err != nil:
			ca.cfg.logger().Error("pki: OCSP", "err", err)
		case bytes.Equal(der, ocsp.MalformedRequestErrorResponse):
			result = "malformed"
		case bytes.Equal(der, ocsp.UnauthorizedErrorResponse):
			result = "unauthorized"
		default:
			result = map[int]string{ocsp.Good: "good", ocsp.Revoked: "revoked", ocsp.Unknown: "unknown"}[st.Status]
		}
		observe(result)
		w.Header().Set("Content-Type", "application/ocsp-response")
		if !st.ThisUpdate.IsZero() && r.Method == http.MethodGet {
			// RFC 5019 §6: cacheable GET responses.
			maxAge := int(st.NextUpdate.Sub(ca.cfg.now()).Seconds() / 2)
			if maxAge > 0 {
				w.Header().Set("Cache-Control", fmt.Sprintf("max-age=%d, public, no-transform, must-revalidate", maxAge))
			}
			w.Header().Set("Last-Modified", st.ThisUpdate.Format(http.TimeFormat))
			w.Header().Set("Expires", st.NextUpdate.Format(http.TimeFormat))
		}
		w.Write(der)
	})
}
