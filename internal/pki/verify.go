package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"
)

// VerifyResult explains whether a certificate is usable, in words.
type VerifyResult struct {
	// Valid is true when the chain verifies to the root, the certificate
	// is inside its validity window and it is not revoked.
	Valid bool
	// Problems lists why it is not valid (empty when Valid).
	Problems []string
	// Facts lists what was checked and found, one sentence each.
	Facts []string
	// Record is the inventory entry, when this CA issued the certificate.
	Record *Record
}

// String renders the result as the text "moat ca verify" prints.
func (v VerifyResult) String() string {
	var b strings.Builder
	if v.Valid {
		b.WriteString("VALID\n")
	} else {
		b.WriteString("NOT VALID\n")
	}
	for _, p := range v.Problems {
		fmt.Fprintf(&b, "  problem: %s\n", p)
	}
	for _, f := range v.Facts {
		fmt.Fprintf(&b, "  %s\n", f)
	}
	return b.String()
}

// Verify checks certs[0] (further elements are intermediates presented
// with it, as in a PREFIX.pem file) against this CA's root: signature
// chain, validity window, key usage and revocation status from the
// inventory, cross-checked with the current CRL.
func (ca *CA) Verify(certs []*x509.Certificate) VerifyResult {
	var v VerifyResult
	if len(certs) == 0 {
		v.Problems = append(v.Problems, "no certificate given")
		return v
	}
	leaf := certs[0]
	now := ca.cfg.now()
	v.Facts = append(v.Facts, fmt.Sprintf("subject: %s", leaf.Subject), fmt.Sprintf("serial: %s", SerialString(leaf.SerialNumber)))
	if sans := sanList(leaf); len(sans) > 0 {
		v.Facts = append(v.Facts, "names: "+strings.Join(sans, ", "))
	}

	inters := x509.NewCertPool()
	inters.AddCert(ca.inter)
	for _, r := range ca.retired {
		inters.AddCert(r.cert)
	}
	for _, c := range certs[1:] {
		inters.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Roots(), Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		// Retry ignoring time, to tell "wrong CA" apart from "expired".
		_, err2 := leaf.Verify(x509.VerifyOptions{Roots: ca.Roots(), Intermediates: inters, CurrentTime: leaf.NotBefore.Add(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if err2 == nil {
			v.Facts = append(v.Facts, fmt.Sprintf("chain: signed by %s (root %s)", leaf.Issuer.CommonName, ca.root.Subject.CommonName))
		} else {
			v.Problems = append(v.Problems, "chain: "+explainChainError(err2, leaf, ca))
		}
	} else {
		names := []string{}
		for _, c := range chains[0] {
			names = append(names, c.Subject.CommonName)
		}
		v.Facts = append(v.Facts, "chain: "+strings.Join(names, " → ")+" (trusted root "+ca.path(FileRoot)+")")
	}

	checkLeaf(&v, leaf, now)

	if ca.IssuedHere(leaf) {
		rec, err := ca.Get(SerialString(leaf.SerialNumber))
		switch {
		case errors.Is(err, ErrNotFound):
			v.Problems = append(v.Problems, "revocation: signed by this CA but missing from its inventory (was the database replaced?)")
		case err != nil:
			v.Problems = append(v.Problems, "revocation: could not read the CA database: "+err.Error())
		case rec.Revoked:
			v.Record = &rec
			v.Problems = append(v.Problems, fmt.Sprintf("revoked at %s, reason %s", rec.RevokedAt.Format(time.RFC3339), rec.Reason))
		default:
			v.Record = &rec
			v.Facts = append(v.Facts, "revocation: not revoked (CA inventory)")
		}
		if der, err := ca.CRL(); err == nil {
			if crl, err := x509.ParseRevocationList(der); err == nil {
				for _, e := range crl.RevokedCertificateEntries {
					if e.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
						if v.Record == nil || !v.Record.Revoked {
							v.Problems = append(v.Problems, "revoked: listed on the current CRL")
						}
						v.Facts = append(v.Facts, fmt.Sprintf("CRL #%s lists it as revoked", crl.Number))
					}
				}
			}
		}
	}
	v.Valid = len(v.Problems) == 0
	return v
}

func explainChainError(err error, leaf *x509.Certificate, ca *CA) string {
	var ua x509.UnknownAuthorityError
	var inv x509.CertificateInvalidError
	var hn x509.HostnameError
	switch {
	case errors.As(err, &ua):
		return fmt.Sprintf("issued by %q, which does not lead to this CA's root %q (wrong CA, or the intermediate is missing from the file)", leaf.Issuer.CommonName, ca.root.Subject.CommonName)
	case errors.As(err, &inv):
		if inv.Reason == x509.CANotAuthorizedForThisName {
			return "a name in the certificate is outside the CA's name constraints"
		}
		return inv.Error()
	case errors.As(err, &hn):
		return hn.Error()
	}
	return err.Error()
}

func sanList(c *x509.Certificate) []string {
	var s []string
	for _, d := range c.DNSNames {
		s = append(s, "DNS:"+d)
	}
	for _, ip := range c.IPAddresses {
		s = append(s, "IP:"+ip.String())
	}
	for _, u := range c.URIs {
		s = append(s, "URI:"+u.String())
	}
	return s
}

// human renders a duration in days, hours or minutes.
func human(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	case d >= 2*time.Hour:
		return fmt.Sprintf("%d hours", int(d/time.Hour))
	case d >= 2*time.Minute:
		return fmt.Sprintf("%d minutes", int(d/time.Minute))
	}
	return d.Round(time.Second).String()
}

// checkLeaf adds the validity window and key usage findings for leaf.
func checkLeaf(v *VerifyResult, leaf *x509.Certificate, now time.Time) {
	switch {
	case now.Before(leaf.NotBefore):
		v.Problems = append(v.Problems, fmt.Sprintf("not yet valid: it becomes valid at %s (in %s); check the clock", leaf.NotBefore.Format(time.RFC3339), human(leaf.NotBefore.Sub(now))))
	case now.After(leaf.NotAfter):
		v.Problems = append(v.Problems, fmt.Sprintf("expired at %s (%s ago); issue or enroll a new certificate", leaf.NotAfter.Format(time.RFC3339), human(now.Sub(leaf.NotAfter))))
	default:
		v.Facts = append(v.Facts, fmt.Sprintf("validity: until %s (%s left)", leaf.NotAfter.Format(time.RFC3339), human(leaf.NotAfter.Sub(now))))
	}

	var uses []string
	for _, u := range leaf.ExtKeyUsage {
		uses = append(uses, map[x509.ExtKeyUsage]string{
			x509.ExtKeyUsageServerAuth: "TLS server (serverAuth)", x509.ExtKeyUsageClientAuth: "TLS client (clientAuth)",
			x509.ExtKeyUsageOCSPSigning: "OCSP signing", x509.ExtKeyUsageAny: "any",
		}[u])
	}
	if leaf.IsCA {
		uses = append(uses, "certificate authority")
	}
	if len(uses) == 0 {
		v.Problems = append(v.Problems, "usage: the certificate has no extended key usage; TLS peers may reject it")
	} else {
		v.Facts = append(v.Facts, "usage: "+strings.Join(uses, ", "))
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 && !leaf.IsCA {
		v.Problems = append(v.Problems, "usage: the key usage lacks digitalSignature, required for TLS")
	}

}

// VerifyWithCAs checks certs[0] (further elements are intermediates sent
// with it) against the CA certificates in bundle, for chains of CAs other
// than Moat's: self-signed certificates in bundle are the trusted roots,
// the others intermediates. Each CRL in crls that verifies against a CA of
// the chain is checked for the leaf's serial; a CRL that is past its
// nextUpdate is a problem. now zero means the current time.
func VerifyWithCAs(certs, bundle []*x509.Certificate, crls []*x509.RevocationList, now time.Time) VerifyResult {
	var v VerifyResult
	if len(certs) == 0 {
		v.Problems = append(v.Problems, "no certificate given")
		return v
	}
	if now.IsZero() {
		now = time.Now()
	}
	leaf := certs[0]
	v.Facts = append(v.Facts, fmt.Sprintf("subject: %s", leaf.Subject), fmt.Sprintf("serial: %s", SerialString(leaf.SerialNumber)))
	if sans := sanList(leaf); len(sans) > 0 {
		v.Facts = append(v.Facts, "names: "+strings.Join(sans, ", "))
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	nroots := 0
	for _, c := range bundle {
		if c.CheckSignatureFrom(c) == nil {
			roots.AddCert(c)
			nroots++
		} else {
			inters.AddCert(c)
		}
	}
	for _, c := range certs[1:] {
		inters.AddCert(c)
	}
	var chain []*x509.Certificate
	if nroots == 0 {
		v.Problems = append(v.Problems, "chain: the CA file holds no self-signed root certificate")
	} else {
		opts := x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
		chains, err := leaf.Verify(opts)
		if err != nil {
			opts.CurrentTime = leaf.NotBefore.Add(time.Second)
			chains, err = leaf.Verify(opts)
		}
		if err != nil {
			var ua x509.UnknownAuthorityError
			if errors.As(err, &ua) {
				v.Problems = append(v.Problems, fmt.Sprintf("chain: issued by %q, which does not lead to a root in the CA file (wrong CA, or an intermediate is missing)", leaf.Issuer.CommonName))
			} else {
				v.Problems = append(v.Problems, "chain: "+err.Error())
			}
		} else {
			chain = chains[0]
			var names []string
			for _, c := range chain {
				names = append(names, c.Subject.CommonName)
			}
			v.Facts = append(v.Facts, "chain: "+strings.Join(names, " → "))
		}
	}
	checkLeaf(&v, leaf, now)
	if len(chain) > 1 {
		for _, crl := range crls {
			if crl.CheckSignatureFrom(chain[1]) != nil {
				continue
			}
			if now.After(crl.NextUpdate) {
				v.Problems = append(v.Problems, fmt.Sprintf("revocation: the CRL of %s is stale (nextUpdate %s)", chain[1].Subject.CommonName, crl.NextUpdate.Format(time.RFC3339)))
			}
			listed := false
			for _, e := range crl.RevokedCertificateEntries {
				if e.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
					listed = true
					v.Problems = append(v.Problems, fmt.Sprintf("revoked at %s (CRL of %s)", e.RevocationTime.Format(time.RFC3339), chain[1].Subject.CommonName))
				}
			}
			if !listed {
				v.Facts = append(v.Facts, fmt.Sprintf("revocation: not on the CRL #%s of %s", crl.Number, chain[1].Subject.CommonName))
			}
		}
	}
	v.Valid = len(v.Problems) == 0
	return v
}
