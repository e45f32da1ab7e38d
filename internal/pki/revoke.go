package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// RevocationReason is an RFC 5280 §5.3.1 CRLReason code.
type RevocationReason int

// Revocation reasons accepted by Revoke (certificateHold is not offered:
// a revocation in Moat is final).
const (
	ReasonUnspecified          RevocationReason = 0
	ReasonKeyCompromise        RevocationReason = 1
	ReasonCACompromise         RevocationReason = 2
	ReasonAffiliationChanged   RevocationReason = 3
	ReasonSuperseded           RevocationReason = 4
	ReasonCessationOfOperation RevocationReason = 5
	ReasonPrivilegeWithdrawn   RevocationReason = 9
)

var reasonNames = map[RevocationReason]string{
	ReasonUnspecified: "unspecified", ReasonKeyCompromise: "keyCompromise", ReasonCACompromise: "cACompromise",
	ReasonAffiliationChanged: "affiliationChanged", ReasonSuperseded: "superseded",
	ReasonCessationOfOperation: "cessationOfOperation", ReasonPrivilegeWithdrawn: "privilegeWithdrawn",
}

func (r RevocationReason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// ParseReason accepts the RFC 5280 names case-insensitively, with or
// without dashes ("key-compromise", "keyCompromise"), or "" for unspecified.
func ParseReason(s string) (RevocationReason, error) {
	n := strings.ToLower(strings.NewReplacer("-", "", "_", "", " ", "").Replace(s))
	if n == "" {
		return ReasonUnspecified, nil
	}
	for r, name := range reasonNames {
		if strings.ToLower(name) == n {
			return r, nil
		}
	}
	return 0, fmt.Errorf("pki: unknown revocation reason %q (use keyCompromise, superseded, cessationOfOperation, affiliationChanged, privilegeWithdrawn or unspecified)", s)
}

// ErrAlreadyRevoked is returned when revoking a revoked certificate.
var ErrAlreadyRevoked = errors.New("pki: the certificate is already revoked")

// Revoke revokes the certificate with this serial and every certificate
// descended from it by re-enrollment (RevokeTree with default options),
// and returns the certificate's updated record.
func (ca *CA) Revoke(serial string, reason RevocationReason) (Record, error) {
	if _, err := ca.RevokeTree(serial, reason, RevokeOptions{}); err != nil {
		return Record{}, err
	}
	return ca.Get(serial)
}

// RevokeOptions modify RevokeTree. The zero value revokes descendants.
type RevokeOptions struct {
	// KeepDescendants leaves the certificates re-enrolled from this one
	// (and their successors) valid.
	KeepDescendants bool
}

// RevokeTree marks the certificate with this serial revoked and, unless
// opts.KeepDescendants, every unrevoked certificate descended from it
// through re-enrollment (Record.Parent), with the same reason: a
// successor minted with a stolen certificate must not outlive it. The
// revocations and a new CRL are written in one transaction, so the CRL
// and OCSP answers change together. It returns the records revoked now,
// parents before children; a certificate revoked before (for example
// superseded by a re-enrollment) is not in the list, but its descendants
// are still searched. It fails with ErrAlreadyRevoked when nothing was
// left to revoke.
func (ca *CA) RevokeTree(serial string, reason RevocationReason, opts RevokeOptions) ([]Record, error) {
	s, err := NormalizeSerial(serial)
	if err != nil {
		return nil, err
	}
	if _, ok := reasonNames[reason]; !ok {
		return nil, fmt.Errorf("pki: unknown revocation reason %d", reason)
	}
	var revoked []Record
	var crl crlSet
	now := ca.cfg.now()
	err = ca.updateThen(func(tx *bolt.Tx) error {
		revoked = nil
		r, err := getRecord(tx, s)
		if err != nil {
			return err
		}
		targets := []Record{r}
		if !opts.KeepDescendants {
			d, err := descendants(tx, s)
			if err != nil {
				return err
			}
			targets = append(targets, d...)
		}
		for _, t := range targets {
			if t.Revoked {
				continue
			}
			t.Revoked, t.RevokedAt, t.Reason = true, now.UTC().Truncate(time.Second), reason
			if err := putRecord(tx, t); err != nil {
				return err
			}
			revoked = append(revoked, t)
		}
		if len(revoked) == 0 {
			return fmt.Errorf("%w (serial %s, %s at %s)", ErrAlreadyRevoked, s, r.Reason, r.RevokedAt.Format(time.RFC3339))
		}
		crl, err = ca.buildCRL(tx, now)
		return err
	}, func() error { return ca.writeCRLFile(crl) })
	if err != nil {
		return nil, err
	}
	for _, r := range revoked {
		ca.cfg.logger().Info("pki: revoked certificate", "serial", r.Serial, "subject", r.Subject, "reason", reason.String(), "requested", s)
	}
	return revoked, nil
}

// descendants returns the records whose Parent chain leads to serial,
// breadth first.
func descendants(tx *bolt.Tx, serial string) ([]Record, error) {
	children := make(map[string][]Record)
	err := tx.Bucket(bucketCerts).ForEach(func(k, v []byte) error {
		var r Record
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("pki: corrupt inventory record %s: %w", k, err)
		}
		if r.Parent != "" {
			children[r.Parent] = append(children[r.Parent], r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []Record
	seen := map[string]bool{serial: true}
	queue := []string{serial}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if seen[c.Serial] {
				continue
			}
			seen[c.Serial] = true
			out = append(out, c)
			queue = append(queue, c.Serial)
		}
	}
	return out, nil
}

// RevokeCertificate revokes cert, which must have been issued by this CA.
func (ca *CA) RevokeCertificate(cert *x509.Certificate, reason RevocationReason) (Record, error) {
	if _, ok := ca.issuerOf(cert); !ok {
		return Record{}, fmt.Errorf("pki: this certificate was not issued by this CA's intermediate (%s) nor a retired one", ca.inter.Subject.CommonName)
	}
	return ca.Revoke(SerialString(cert.SerialNumber), reason)
}

// crlSet is what buildCRL signed: the current intermediate's CRL and
// the PEM file of every live intermediate's CRL, current first.
type crlSet struct {
	current []byte
	pem     []byte
}

func metaCRLKey(id string) []byte { return []byte("crl:" + id) }

// buildCRL signs a new CRL of every revoked, unexpired certificate for
// the current intermediate and for each retired one that still has
// unexpired certificates, and stores them with one incremented CRL
// number.
func (ca *CA) buildCRL(tx *bolt.Tx, now time.Time) (crlSet, error) {
	type acc struct {
		entries []x509.RevocationListEntry
		live    bool
	}
	curID := keyIDHex(ca.inter)
	per := map[string]*acc{curID: {live: true}}
	for _, r := range ca.retired {
		per[r.id] = &acc{}
	}
	// An expired certificate may leave the CRL (RFC 5280 §3.3); keep it
	// one extra CRL period so relying parties with skewed clocks still
	// see it. A retired intermediate's CRL lives as long.
	grace := ca.settings.crlValidity()
	err := tx.Bucket(bucketCerts).ForEach(func(k, v []byte) error {
		r, err := getRecord(tx, string(k))
		if err != nil {
			return err
		}
		id := curID
		if len(ca.retired) > 0 {
			id = recordIssuer(r)
		}
		a := per[id]
		if a == nil || now.After(r.NotAfter.Add(grace)) {
			return nil
		}
		a.live = true
		if r.Revoked {
			n, _ := new(big.Int).SetString(r.Serial, 16)
			a.entries = append(a.entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: r.RevokedAt, ReasonCode: int(r.Reason)})
		}
		return nil
	})
	if err != nil {
		return crlSet{}, err
	}
	m := tx.Bucket(bucketMeta)
	num := getU64(m, keyCRLNumber) + 1
	this := now.Add(-ca.settings.backdate()).UTC().Truncate(time.Second)
	sign := func(issuer *x509.Certificate, key crypto.Signer, entries []x509.RevocationListEntry) ([]byte, error) {
		der, err := x509.CreateRevocationList(ca.cfg.rand(), &x509.RevocationList{
			Number:                    new(big.Int).SetUint64(num),
			ThisUpdate:                this,
			NextUpdate:                this.Add(ca.settings.crlValidity()),
			RevokedCertificateEntries: entries,
		}, issuer, key)
		if err != nil {
			return nil, fmt.Errorf("pki: signing CRL of %s: %w", issuer.Subject.CommonName, err)
		}
		return der, nil
	}
	var set crlSet
	if set.current, err = sign(ca.inter, ca.interKey, per[curID].entries); err != nil {
		return crlSet{}, err
	}
	set.pem = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: set.current})
	for _, r := range ca.retired {
		a := per[r.id]
		if !a.live || !now.Before(r.cert.NotAfter) {
			if err := m.Delete(metaCRLKey(r.id)); err != nil {
				return crlSet{}, err
			}
			continue
		}
		der, err := sign(r.cert, r.key, a.entries)
		if err != nil {
			return crlSet{}, err
		}
		if err := m.Put(metaCRLKey(r.id), der); err != nil {
			return crlSet{}, err
		}
		set.pem = append(set.pem, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})...)
	}
	if err := m.Put(keyCRLNumber, u64(num)); err != nil {
		return crlSet{}, err
	}
	return set, m.Put(keyCRL, set.current)
}

func (ca *CA) writeCRLFile(set crlSet) error {
	return writeFileAtomic(ca.path(FileCRL), set.pem, 0o644)
}

// RegenerateCRL signs fresh CRLs now, stores them and writes DIR/crl.pem.
// It returns the DER encoding of the current intermediate's CRL.
func (ca *CA) RegenerateCRL() ([]byte, error) {
	var set crlSet
	err := ca.updateThen(func(tx *bolt.Tx) error {
		var err error
		set, err = ca.buildCRL(tx, ca.cfg.now())
		return err
	}, func() error { return ca.writeCRLFile(set) })
	if err != nil {
		return nil, err
	}
	return set.current, nil
}

// CRL returns the current intermediate's CRL (DER). When less than half
// of its validity remains it is regenerated first (with the CRLs of the
// retired intermediates), so a CRL served by Moat always has at least
// CRLValidity/2 before its nextUpdate.
func (ca *CA) CRL() ([]byte, error) {
	var der []byte
	err := ca.view(func(tx *bolt.Tx) error {
		der = append([]byte(nil), tx.Bucket(bucketMeta).Get(keyCRL)...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(der) > 0 {
		crl, err := x509.ParseRevocationList(der)
		if err == nil && ca.cfg.now().Before(crl.NextUpdate.Add(-ca.settings.crlValidity()/2)) {
			return der, nil
		}
	}
	return ca.RegenerateCRL()
}

// CRLFor returns the CRL (DER) of the intermediate with this hex key
// identifier, current or retired; ErrNotFound when there is none.
func (ca *CA) CRLFor(keyID string) ([]byte, error) {
	cur, err := ca.CRL() // refreshes all when needed
	if err != nil {
		return nil, err
	}
	if keyID == keyIDHex(ca.inter) {
		return cur, nil
	}
	var der []byte
	err = ca.view(func(tx *bolt.Tx) error {
		der = append([]byte(nil), tx.Bucket(bucketMeta).Get(metaCRLKey(keyID))...)
		return nil
	})
	if err == nil && len(der) == 0 {
		err = fmt.Errorf("%w: no CRL for intermediate %s", ErrNotFound, keyID)
	}
	return der, err
}

// CRLPEM returns the CRLs of every intermediate that still has valid
// certificates as "X509 CRL" PEM blocks, the current intermediate's
// first (without a rotation: exactly one), as DIR/crl.pem holds them.
func (ca *CA) CRLPEM() ([]byte, error) {
	der, err := ca.CRL()
	if err != nil {
		return nil, err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	for _, r := range ca.retired {
		if d, err := ca.CRLFor(r.id); err == nil {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: d})...)
		}
	}
	return out, nil
}
