package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// DirRetired holds intermediates replaced by RotateIntermediate, as
// KEYID.pem and KEYID.key (KEYID: the hex subject key identifier). Their
// CRLs and OCSP answers are served until their last certificate expires.
const DirRetired = "retired"

// issuerCA is an intermediate with its key.
type issuerCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	id   string // hex subject key identifier
}

// ErrRotated is returned by a CA opened before another process rotated
// the intermediate, for every change it would make: it would sign with
// the old intermediate and write a CRL file without the new one's CRL.
var ErrRotated = errors.New("pki: the intermediate was rotated by another process; restart this one")

func keyIDHex(c *x509.Certificate) string {
	id := c.SubjectKeyId
	if len(id) == 0 {
		id = keyID(c.PublicKey)
	}
	return hex.EncodeToString(id)
}

// loadRetired reads DIR/retired/*.pem and their keys.
func (ca *CA) loadRetired() error {
	ents, err := os.ReadDir(ca.path(DirRetired))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".pem")
		if !ok {
			continue
		}
		certs, err := LoadCertificatesFile(filepath.Join(ca.path(DirRetired), e.Name()))
		if err != nil {
			return err
		}
		keyFile := filepath.Join(ca.path(DirRetired), name+".key")
		if err := checkKeyFileMode(keyFile); err != nil {
			return err
		}
		key, err := LoadKeyFile(keyFile)
		if err != nil {
			return err
		}
		c := certs[0]
		if !publicKeysEqual(key.Public(), c.PublicKey) {
			return fmt.Errorf("pki: %s does not match its certificate", keyFile)
		}
		if err := c.CheckSignatureFrom(ca.root); err != nil {
			return fmt.Errorf("pki: retired intermediate %s is not signed by %s: %w", e.Name(), FileRoot, err)
		}
		ca.retired = append(ca.retired, issuerCA{cert: c, key: key, id: keyIDHex(c)})
	}
	sort.Slice(ca.retired, func(i, j int) bool { return ca.retired[i].cert.NotBefore.Before(ca.retired[j].cert.NotBefore) })
	return nil
}

// Retired returns the intermediates replaced by RotateIntermediate that
// have not expired yet, oldest first.
func (ca *CA) Retired() []*x509.Certificate {
	now := ca.cfg.now()
	var out []*x509.Certificate
	for _, r := range ca.retired {
		if now.Before(r.cert.NotAfter) {
			out = append(out, r.cert)
		}
	}
	return out
}

// IssuedHere reports whether c was signed by this CA's current or a
// retired intermediate.
func (ca *CA) IssuedHere(c *x509.Certificate) bool {
	_, ok := ca.issuerOf(c)
	return ok
}

// issuerOf returns the intermediate (current or retired) that signed c.
func (ca *CA) issuerOf(c *x509.Certificate) (issuerCA, bool) {
	if c.CheckSignatureFrom(ca.inter) == nil {
		return issuerCA{cert: ca.inter, key: ca.interKey, id: keyIDHex(ca.inter)}, true
	}
	for _, r := range ca.retired {
		if c.CheckSignatureFrom(r.cert) == nil {
			return r, true
		}
	}
	return issuerCA{}, false
}

// checkCurrent fails with ErrRotated when DIR/intermediate.pem is no
// longer the intermediate this CA was opened with.
func (ca *CA) checkCurrent() error {
	certs, err := LoadCertificatesFile(ca.path(FileIntermediate))
	if err != nil {
		return err
	}
	if !bytes.Equal(certs[0].Raw, ca.inter.Raw) {
		return ErrRotated
	}
	return nil
}

// recordIssuer returns the hex key identifier of the intermediate that
// issued r (from the certificate when the record predates Record.Issuer).
func recordIssuer(r Record) string {
	if r.Issuer != "" {
		return r.Issuer
	}
	if c, err := x509.ParseCertificate(r.DER); err == nil {
		return hex.EncodeToString(c.AuthorityKeyId)
	}
	return ""
}

// RotateRequest asks RotateIntermediate for a new intermediate.
type RotateRequest struct {
	// RootKey is the decrypted root key (see LoadRootKey). Required.
	RootKey crypto.Signer
	// Lifetime of the new intermediate; zero means 10 years (at most
	// until the root expires).
	Lifetime time.Duration
}

var genSuffix = regexp.MustCompile(` G([0-9]+)$`)

// RotateIntermediate signs a new issuing intermediate with the root key
// and makes it current (and re-signs the root CRL while the key is at
// hand); the old one moves to DIR/retired/ and keeps
// signing its CRL and OCSP answers (never new certificates) until its
// last certificate expires, so devices renew at their own pace. Trust
// anchors do not change: both chain to the same root. It returns the CA
// reopened with the new intermediate; ca itself is stale afterwards, and
// so is every other process that has the CA open (moat ca serve, moat
// serve): restart them, they refuse to write until then (ErrRotated).
func (ca *CA) RotateIntermediate(req RotateRequest) (*CA, error) {
	if req.RootKey == nil || !publicKeysEqual(req.RootKey.Public(), ca.root.PublicKey) {
		return nil, errors.New("pki: rotating the intermediate needs the root key of this CA")
	}
	if req.Lifetime < 0 {
		return nil, errors.New("pki: the intermediate lifetime must not be negative")
	}
	now := ca.cfg.now()
	base, gen := ca.inter.Subject.CommonName, 1
	if m := genSuffix.FindStringSubmatch(base); m != nil {
		gen, _ = strconv.Atoi(m[1])
		base = strings.TrimSuffix(base, m[0])
	}
	org := defaultOrganization
	if len(ca.inter.Subject.Organization) > 0 {
		org = ca.inter.Subject.Organization[0]
	}
	cert, key, err := newIntermediate(ca.settings, org, fmt.Sprintf("%s G%d", base, gen+1), orDur(req.Lifetime, DefaultIntermediateLifetime), ca.root, req.RootKey, now, ca.cfg.rand())
	if err != nil {
		return nil, err
	}
	keyPEM, err := MarshalKeyPEM(key)
	if err != nil {
		return nil, err
	}
	oldKeyPEM, err := MarshalKeyPEM(ca.interKey)
	if err != nil {
		return nil, err
	}
	err = ca.updateThen(func(*bolt.Tx) error { return nil }, func() error {
		if err := os.MkdirAll(ca.path(DirRetired), 0o700); err != nil {
			return fmt.Errorf("pki: %w", err)
		}
		old := filepath.Join(ca.path(DirRetired), keyIDHex(ca.inter))
		for _, f := range []struct {
			path string
			data []byte
			mode os.FileMode
		}{
			{old + ".key", oldKeyPEM, 0o600},
			{old + ".pem", EncodeCertificatesPEM(ca.inter), 0o644},
			// The key first: a crash between the two leaves a pair
			// that Open refuses as mismatched, with the old pair kept
			// in retired/ and the new key in intermediate.key.
			{ca.path(FileIntermediateKey), keyPEM, 0o600},
			{ca.path(FileIntermediate), EncodeCertificatesPEM(cert), 0o644},
		} {
			if err := writeFileAtomic(f.path, f.data, f.mode); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	ca.cfg.logger().Info("pki: rotated the issuing intermediate", "old", ca.inter.Subject.CommonName, "old_not_after", ca.inter.NotAfter,
		"new", cert.Subject.CommonName, "new_not_after", cert.NotAfter)
	next, err := Open(ca.dir, ca.cfg)
	if err != nil {
		return nil, err
	}
	if _, err := next.RegenerateCRL(); err != nil {
		return nil, err
	}
	// The root key is at hand: renew the root CRL's dates (or make the
	// first one for a CA older than root CRLs).
	if canSignCRL(next.root) {
		if _, err := next.SignRootCRL(RootCRLRequest{RootKey: req.RootKey}); err != nil {
			next.cfg.logger().Warn("pki: could not re-sign the root CRL after the rotation; run moat ca crl --root --sign", "err", err)
		}
	}
	return next, nil
}
