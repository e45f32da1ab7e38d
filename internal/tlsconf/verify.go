package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// Reason says why a certificate was refused or a live session dropped.
type Reason int

const (
	// ReasonRevoked: a CRL or an OCSP responder lists the certificate (or
	// a CA certificate of its chain) as revoked.
	ReasonRevoked Reason = iota + 1
	// ReasonExpired: the certificate or a CA of its chain is expired or
	// not yet valid.
	ReasonExpired
	// ReasonCRLStale: the issuer's CRL is past its nextUpdate and the
	// policy is CRLStaleRefuse.
	ReasonCRLStale
	// ReasonCRLMissing: CRLs are configured but none is from the
	// certificate's issuer.
	ReasonCRLMissing
	// ReasonOCSPUnavailable: OCSPFailClosed and no "good" answer could be
	// obtained.
	ReasonOCSPUnavailable
	// ReasonUntrusted: the chain does not lead to a trusted CA (unknown CA,
	// self-signed, bad signature, CA removed by a reload).
	ReasonUntrusted
	// ReasonUsage: the certificate is not allowed for TLS client
	// authentication (extended key usage).
	ReasonUsage
	// ReasonWeakAlgorithm: a certificate is signed with SHA-1 or MD5.
	ReasonWeakAlgorithm
	// ReasonNoCertificate: a certificate is required and none was sent.
	ReasonNoCertificate
	// ReasonCipherSuite: the negotiated TLS 1.3 suite is not in
	// TLS13CipherSuites.
	ReasonCipherSuite
)

var reasonNames = map[Reason]string{
	ReasonRevoked:         "revoked",
	ReasonExpired:         "expired",
	ReasonCRLStale:        "crl-stale",
	ReasonCRLMissing:      "crl-missing",
	ReasonOCSPUnavailable: "ocsp-unavailable",
	ReasonUntrusted:       "untrusted",
	ReasonUsage:           "wrong-usage",
	ReasonWeakAlgorithm:   "weak-algorithm",
	ReasonNoCertificate:   "no-certificate",
	ReasonCipherSuite:     "cipher-suite",
}

func (r Reason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// VerifyError is the error a refused client certificate causes. The TLS
// handshake fails with it (the client sees a bad_certificate alert).
type VerifyError struct {
	Reason  Reason
	Subject string // RFC 2253 subject of the certificate at fault
	Serial  string // its serial number in hex
	Detail  string
}

func (e *VerifyError) Error() string {
	s := "tlsconf: client certificate refused: " + e.Reason.String()
	if e.Subject != "" {
		s += " (subject " + e.Subject + ", serial " + e.Serial + ")"
	}
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// HandshakeFailure names the refusal in the few words a metric label
// carries: "certificate_revoked", "certificate_expired",
// "certificate_untrusted", "certificate_missing", "cipher_suite", ...
// The broker counts failed handshakes by it.
func (e *VerifyError) HandshakeFailure() string {
	switch e.Reason {
	case ReasonCipherSuite:
		return "cipher_suite"
	case ReasonNoCertificate:
		return "certificate_missing"
	}
	if n, ok := reasonNames[e.Reason]; ok {
		return "certificate_" + strings.ReplaceAll(n, "-", "_")
	}
	return "certificate"
}

func certError(r Reason, c *x509.Certificate, format string, a ...any) *VerifyError {
	e := &VerifyError{Reason: r, Detail: fmt.Sprintf(format, a...)}
	if c != nil {
		e.Subject, _ = SubjectDN(c)
		e.Serial = fmt.Sprintf("%X", c.SerialNumber)
	}
	return e
}

// verifyConnection is the tls.Config.VerifyConnection callback; remote
// is the peer's address, or nil (only a refusal reads it).
func (m *Manager) verifyConnection(cs tls.ConnectionState, remote net.Addr) error {
	err := m.verifyState(cs)
	if err != nil {
		var ve *VerifyError
		addr := ""
		if remote != nil {
			addr = remote.String()
		}
		attrs := []any{"listener", m.cfg.Name, "remote", addr, "error", err.Error()}
		if errors.As(err, &ve) {
			attrs = append(attrs, "reason", ve.Reason.String(), "subject", ve.Subject, "serial", ve.Serial)
		}
		m.log.Warn("tlsconf: TLS handshake refused", attrs...)
	}
	return err
}

func (m *Manager) verifyState(cs tls.ConnectionState) error {
	if len(m.cfg.TLS13CipherSuites) > 0 && cs.Version == tls.VersionTLS13 && !slices.Contains(m.cfg.TLS13CipherSuites, cs.CipherSuite) {
		return &VerifyError{Reason: ReasonCipherSuite, Detail: tls.CipherSuiteName(cs.CipherSuite) + " is not allowed by ciphers_tls1.3"}
	}
	if m.cfg.ClientAuth == ClientAuthNone {
		return nil
	}
	if len(cs.PeerCertificates) == 0 {
		if m.cfg.ClientAuth == ClientAuthRequired {
			return &VerifyError{Reason: ReasonNoCertificate, Detail: "this listener requires a client certificate"}
		}
		return nil
	}
	_, err := m.verifyPeer(context.Background(), m.state.Load(), cs.PeerCertificates)
	return err
}

// VerifyChain verifies a client certificate chain as sent by a peer
// (leaf first) against the current CA pool, CRLs and OCSP policy, as the
// handshake does, and returns the verified chain (leaf to root). Errors
// are *VerifyError.
func (m *Manager) VerifyChain(ctx context.Context, peer []*x509.Certificate) ([]*x509.Certificate, error) {
	return m.verifyPeer(ctx, m.state.Load(), peer)
}

func (m *Manager) verifyPeer(ctx context.Context, st *state, peer []*x509.Certificate) ([]*x509.Certificate, error) {
	if len(peer) == 0 {
		return nil, &VerifyError{Reason: ReasonNoCertificate}
	}
	leaf := peer[0]
	if st.roots == nil {
		return nil, certError(ReasonUntrusted, leaf, "no CA is configured")
	}
	now := m.now()
	for _, c := range peer {
		if weakSignature(c.SignatureAlgorithm) && !isSelfSigned(c) {
			return nil, certError(ReasonWeakAlgorithm, c, "signed with %v", c.SignatureAlgorithm)
		}
	}
	var chains [][]*x509.Certificate
	key := chainKey(peer)
	if v, ok := st.verified.Load(key); ok {
		chains = v.([][]*x509.Certificate)
		// The cache skips signature work only; validity is re-checked.
		for _, c := range chains[0] {
			if now.After(c.NotAfter) || now.Before(c.NotBefore) {
				chains = nil
				break
			}
		}
	}
	if chains == nil {
		opts := x509.VerifyOptions{
			Roots:         st.roots,
			Intermediates: x509.NewCertPool(),
			CurrentTime:   now,
			KeyUsages:     clientAuthUsage,
		}
		for _, c := range peer[1:] {
			opts.Intermediates.AddCert(c)
		}
		var err error
		chains, err = leaf.Verify(opts)
		if err != nil {
			return nil, classifyVerifyError(leaf, err, now)
		}
		if st.nverified.Add(1) > maxVerifiedCache {
			st.verified.Clear()
			st.nverified.Store(1)
		}
		st.verified.Store(key, chains)
	}
	// Accept when at least one verified chain passes revocation checks.
	var firstErr error
	for _, chain := range chains {
		if err := m.checkRevocation(ctx, st, chain, now); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		return chain, nil
	}
	return nil, firstErr
}

// clientAuthUsage is the extended key usage a client certificate needs
// (read only).
var clientAuthUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}

func isSelfSigned(c *x509.Certificate) bool {
	return string(c.RawIssuer) == string(c.RawSubject)
}

func classifyVerifyError(leaf *x509.Certificate, err error, now time.Time) *VerifyError {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) {
		c := inv.Cert
		if c == nil {
			c = leaf
		}
		switch inv.Reason {
		case x509.Expired:
			if now.Before(c.NotBefore) {
				return certError(ReasonExpired, c, "not yet valid: valid from %s", c.NotBefore.UTC().Format(time.RFC3339))
			}
			return certError(ReasonExpired, c, "expired at %s", c.NotAfter.UTC().Format(time.RFC3339))
		case x509.IncompatibleUsage:
			return certError(ReasonUsage, c, "the certificate is not valid for TLS client authentication (extended key usage clientAuth missing)")
		}
		return certError(ReasonUntrusted, c, "%v", err)
	}
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		if isSelfSigned(leaf) {
			return certError(ReasonUntrusted, leaf, "self-signed certificate not issued by a trusted CA")
		}
		return certError(ReasonUntrusted, leaf, "issuer %q is not a trusted CA", issuerDN(leaf))
	}
	var ia x509.InsecureAlgorithmError
	if errors.As(err, &ia) {
		return certError(ReasonWeakAlgorithm, leaf, "%v", err)
	}
	return certError(ReasonUntrusted, leaf, "%v", err)
}

func issuerDN(c *x509.Certificate) string {
	s, err := FormatDN(c.RawIssuer)
	if err != nil {
		return c.Issuer.String()
	}
	return s
}

// checkRevocation checks a verified chain (leaf to root) against the CRLs
// and, for the leaf, OCSP.
func (m *Manager) checkRevocation(ctx context.Context, st *state, chain []*x509.Certificate, now time.Time) error {
	if err := m.checkCRLs(st, chain, now); err != nil {
		return err
	}
	if m.cfg.OCSP.Mode != OCSPOff && len(chain) > 1 {
		return m.checkOCSP(ctx, chain[0], chain[1], now)
	}
	return nil
}

// checkCRLs applies the CRLs to every non-root certificate of the chain.
// A CRL must exist for the leaf's issuer when any CRL is configured.
func (m *Manager) checkCRLs(st *state, chain []*x509.Certificate, now time.Time) error {
	if m.cfg.Revoked != nil {
		for i := 0; i+1 < len(chain); i++ {
			if detail, revoked := m.cfg.Revoked(chain[i], chain[i+1]); revoked {
				return certError(ReasonRevoked, chain[i], "%s", detail)
			}
		}
	}
	if st.ncrl == 0 {
		return nil
	}
	for i := 0; i+1 < len(chain); i++ {
		c, issuer := chain[i], chain[i+1]
		crl := st.crlFor(issuer)
		if crl == nil {
			if i == 0 {
				return certError(ReasonCRLMissing, c, "no CRL from issuer %q is configured", issuerDN(c))
			}
			continue
		}
		if !crl.list.NextUpdate.IsZero() && now.After(crl.list.NextUpdate) {
			if m.cfg.CRLStalePolicy == CRLStaleRefuse {
				return certError(ReasonCRLStale, c, "CRL %s from %q expired at %s", crl.path, issuerDN(c), crl.list.NextUpdate.UTC().Format(time.RFC3339))
			}
		}
		if t, ok := crl.revoked[c.SerialNumber.String()]; ok {
			return certError(ReasonRevoked, c, "listed in CRL %s (revoked at %s)", crl.path, t.UTC().Format(time.RFC3339))
		}
	}
	return nil
}
