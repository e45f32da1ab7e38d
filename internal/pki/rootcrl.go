package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FileRootCRL is the root's CRL in a CA directory: the revoked
// intermediates, signed by the root key.
const FileRootCRL = "root-crl.pem"

// DefaultRootCRLValidity is the validity of a root CRL. The root key is
// kept offline, so its CRL is long-lived; re-sign it with SignRootCRL
// ("moat ca crl --root") before it runs out.
const DefaultRootCRLValidity = 365 * 24 * time.Hour

// RootCRLRequest asks SignRootCRL for a new root CRL.
type RootCRLRequest struct {
	// RootKey is the decrypted root key (see LoadRootKey). Required.
	RootKey crypto.Signer
	// Revoke adds these intermediates (certificates signed by the root)
	// to the CRL. The current issuing intermediate cannot be revoked:
	// rotate it first (RotateIntermediate).
	Revoke []*x509.Certificate
	// Reason is the reason of the new entries.
	Reason RevocationReason
	// Validity is nextUpdate - thisUpdate; zero means
	// DefaultRootCRLValidity.
	Validity time.Duration
}

// RootCRLPEM returns DIR/root-crl.pem. A CA made before root CRLs existed
// has none until SignRootCRL is run once.
func (ca *CA) RootCRLPEM() ([]byte, error) {
	b, err := os.ReadFile(ca.path(FileRootCRL))
	if err != nil {
		return nil, fmt.Errorf("pki: no root CRL (%w); sign one with \"moat ca crl --root\"", err)
	}
	return b, nil
}

// RootCRL returns the root CRL in DER.
func (ca *CA) RootCRL() ([]byte, error) {
	b, err := ca.RootCRLPEM()
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "X509 CRL" {
		return nil, fmt.Errorf("pki: %s holds no X509 CRL block", ca.path(FileRootCRL))
	}
	return blk.Bytes, nil
}

// SignRootCRL signs a new root CRL that keeps every entry of the previous
// one and adds req.Revoke, writes it to DIR/root-crl.pem and returns it
// in DER. Writers are serialized with the database lock.
func (ca *CA) SignRootCRL(req RootCRLRequest) ([]byte, error) {
	if req.RootKey == nil || !publicKeysEqual(req.RootKey.Public(), ca.root.PublicKey) {
		return nil, errors.New("pki: the root CRL needs the root key of this CA")
	}
	if _, ok := reasonNames[req.Reason]; !ok {
		return nil, fmt.Errorf("pki: unknown revocation reason %d", req.Reason)
	}
	if !canSignCRL(ca.root) {
		return nil, errors.New("pki: the root cannot sign CRLs (its certificate lacks the cRLSign key usage or a subject key identifier, as openssl's default root does); revoke the intermediate by distributing a new trust anchor")
	}
	for _, c := range req.Revoke {
		if err := c.CheckSignatureFrom(ca.root); err != nil || !c.IsCA {
			return nil, fmt.Errorf("pki: %q is not an intermediate of this root; only intermediates go on the root CRL", c.Subject.CommonName)
		}
		if c.Equal(ca.inter) {
			return nil, fmt.Errorf("pki: %q is the issuing intermediate; rotate it first (moat ca rotate-intermediate), then revoke the old one", c.Subject.CommonName)
		}
	}
	var der []byte
	err := ca.updateThen(func(*bolt.Tx) error { return nil }, func() error {
		var prev *x509.RevocationList
		if old, err := ca.RootCRL(); err == nil {
			if prev, err = x509.ParseRevocationList(old); err != nil || prev.CheckSignatureFrom(ca.root) != nil {
				return fmt.Errorf("pki: %s is not a CRL of this root; move it away and sign a new one", ca.path(FileRootCRL))
			}
		}
		var err error
		der, err = signRootCRL(ca.root, req.RootKey, prev, req.Revoke, req.Reason, ca.cfg.now(), req.Validity, ca.cfg.rand())
		if err != nil {
			return err
		}
		return writeFileAtomic(ca.path(FileRootCRL), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644)
	})
	if err != nil {
		return nil, err
	}
	for _, c := range req.Revoke {
		ca.cfg.logger().Info("pki: revoked intermediate on the root CRL", "subject", c.Subject.CommonName, "serial", SerialString(c.SerialNumber), "reason", req.Reason.String())
	}
	return der, nil
}

func signRootCRL(root *x509.Certificate, key crypto.Signer, prev *x509.RevocationList, revoke []*x509.Certificate, reason RevocationReason, now time.Time, validity time.Duration, rnd io.Reader) ([]byte, error) {
	if validity <= 0 {
		validity = DefaultRootCRLValidity
	}
	num := big.NewInt(1)
	var entries []x509.RevocationListEntry
	seen := map[string]bool{}
	if prev != nil {
		if prev.Number != nil {
			num.Add(prev.Number, num)
		}
		for _, e := range prev.RevokedCertificateEntries {
			seen[e.SerialNumber.String()] = true
			entries = append(entries, x509.RevocationListEntry{SerialNumber: e.SerialNumber, RevocationTime: e.RevocationTime, ReasonCode: e.ReasonCode})
		}
	}
	this := now.Add(-DefaultBackdate).UTC().Truncate(time.Second)
	for _, c := range revoke {
		if seen[c.SerialNumber.String()] {
			continue
		}
		seen[c.SerialNumber.String()] = true
		entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: this, ReasonCode: int(reason)})
	}
	next := this.Add(validity)
	if next.After(root.NotAfter) {
		next = root.NotAfter
	}
	der, err := x509.CreateRevocationList(rnd, &x509.RevocationList{
		Number: num, ThisUpdate: this, NextUpdate: next, RevokedCertificateEntries: entries,
	}, root, key)
	if err != nil {
		return nil, fmt.Errorf("pki: signing the root CRL: %w", err)
	}
	return der, nil
}

// onRootCRL reports whether the intermediate c is listed on the root CRL.
// A missing root CRL lists nothing; an unreadable one, or one not signed
// by the root, lists everything (fail closed).
func (ca *CA) onRootCRL(c *x509.Certificate) bool {
	der, err := ca.RootCRL()
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		ca.cfg.logger().Error("pki: root CRL unreadable; treating intermediates as revoked", "err", err)
		return true
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil || crl.CheckSignatureFrom(ca.root) != nil {
		ca.cfg.logger().Error("pki: root CRL invalid; treating intermediates as revoked", "file", ca.path(FileRootCRL))
		return true
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(c.SerialNumber) == 0 {
			return true
		}
	}
	return false
}
