package pki

import (
	"crypto"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// IssueRequest asks the CA for a new leaf certificate.
type IssueRequest struct {
	// Profile is ProfileServer or ProfileDevice (required).
	Profile Profile
	// CommonName is the server name or the device ID (required for
	// devices; for servers it defaults to the first DNS name or IP).
	CommonName  string
	DNSNames    []string
	IPAddresses []net.IP
	// URIs are allowed for devices only (for example a SPIFFE ID).
	URIs []*url.URL
	// Lifetime defaults to the profile's lifetime from Settings. The
	// certificate never outlives the intermediate.
	Lifetime time.Duration
	// PublicKey, when set, is certified and no key is generated (this is
	// how CSRs are signed). Otherwise the CA generates a key of
	// KeyAlgorithm (default: ECDSA P-256) and returns it in Issued.Key.
	PublicKey    crypto.PublicKey
	KeyAlgorithm KeyAlgorithm
	// AuthorizedBy is recorded in the inventory ("cli", "est-token", ...).
	AuthorizedBy string
}

// Issued is the result of an issuance.
type Issued struct {
	Certificate *x509.Certificate
	// Chain is the issuing chain without the root (the intermediate).
	Chain []*x509.Certificate
	// Key is the generated private key, nil when the request carried a
	// public key. The caller owns it.
	Key    crypto.Signer
	Record Record
}

// CertPEM returns the certificate followed by its issuing chain.
func (i *Issued) CertPEM() []byte {
	return EncodeCertificatesPEM(append([]*x509.Certificate{i.Certificate}, i.Chain...)...)
}

// TLSCertificate returns the certificate, its chain and key for
// tls.Config.Certificates. It fails when no key was generated.
func (i *Issued) TLSCertificate() (tls.Certificate, error) {
	if i.Key == nil {
		return tls.Certificate{}, errors.New("pki: no private key (the certificate was made from a CSR)")
	}
	tc := tls.Certificate{Certificate: [][]byte{i.Certificate.Raw}, PrivateKey: i.Key, Leaf: i.Certificate}
	for _, c := range i.Chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, nil
}

// KeyPEM returns the private key as PKCS#8 PEM (nil when there is none).
func (i *Issued) KeyPEM() ([]byte, error) {
	if i.Key == nil {
		return nil, nil
	}
	return MarshalKeyPEM(i.Key)
}

// WriteFiles writes PREFIX.pem (certificate and chain, mode 0644) and,
// when a key was generated, PREFIX.key (PKCS#8 PEM, mode 0600).
func (i *Issued) WriteFiles(prefix string) error {
	if i.Key != nil {
		k, err := i.KeyPEM()
		if err != nil {
			return err
		}
		if err := writeFileAtomic(prefix+".key", k, 0o600); err != nil {
			return err
		}
	}
	return writeFileAtomic(prefix+".pem", i.CertPEM(), 0o644)
}

// WriteCertKeyFiles is WriteFiles for a certificate chain and key obtained
// elsewhere (for example by enrollment). key may be nil.
func WriteCertKeyFiles(prefix string, chain []*x509.Certificate, key crypto.Signer) error {
	i := &Issued{Certificate: chain[0], Chain: chain[1:], Key: key}
	return i.WriteFiles(prefix)
}

// Issue creates, records and returns a leaf certificate.
func (ca *CA) Issue(req IssueRequest) (*Issued, error) {
	return ca.issue(req, issueHooks{})
}

// IssueServer is Issue for a server certificate; sans are "DNS:name",
// "IP:addr" or bare names and addresses.
func (ca *CA) IssueServer(name string, sans []string, lifetime time.Duration) (*Issued, error) {
	req := IssueRequest{Profile: ProfileServer, CommonName: name, Lifetime: lifetime, AuthorizedBy: "api"}
	if err := addSANs(&req, sans); err != nil {
		return nil, err
	}
	if len(req.DNSNames)+len(req.IPAddresses) == 0 {
		addSANs(&req, []string{name})
	}
	return ca.Issue(req)
}

// IssueDevice is Issue for a device (client) certificate with CN=id.
func (ca *CA) IssueDevice(id string, uris []*url.URL, lifetime time.Duration) (*Issued, error) {
	return ca.Issue(IssueRequest{Profile: ProfileDevice, CommonName: id, URIs: uris, Lifetime: lifetime, AuthorizedBy: "api"})
}

// ParseSANs turns "DNS:a,IP:b,URI:c" style entries (bare values are DNS
// names or IP addresses) into the fields of an IssueRequest.
func ParseSANs(entries []string) (dns []string, ips []net.IP, uris []*url.URL, err error) {
	var r IssueRequest
	err = addSANs(&r, entries)
	return r.DNSNames, r.IPAddresses, r.URIs, err
}

func addSANs(r *IssueRequest, entries []string) error {
	for _, e := range entries {
		for _, s := range strings.Split(e, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			kind, val, ok := strings.Cut(s, ":")
			if !ok || strings.Contains(kind, "/") {
				kind, val = "", s
			}
			switch strings.ToUpper(kind) {
			case "DNS":
				r.DNSNames = append(r.DNSNames, strings.ToLower(val))
			case "IP":
				ip := net.ParseIP(val)
				if ip == nil {
					return fmt.Errorf("pki: SAN %q: not an IP address", s)
				}
				r.IPAddresses = append(r.IPAddresses, ip)
			case "URI":
				u, err := url.Parse(val)
				if err != nil || u.Scheme == "" {
					return fmt.Errorf("pki: SAN %q: not an absolute URI", s)
				}
				r.URIs = append(r.URIs, u)
			case "":
				if ip := net.ParseIP(val); ip != nil {
					r.IPAddresses = append(r.IPAddresses, ip)
				} else {
					r.DNSNames = append(r.DNSNames, strings.ToLower(val))
				}
			default:
				return fmt.Errorf("pki: SAN %q: unknown type %q (use DNS:, IP: or URI:)", s, kind)
			}
		}
	}
	return nil
}

// SignRequest asks the CA to sign a PKCS#10 certificate request.
type SignRequest struct {
	CSR     *x509.CertificateRequest
	Profile Profile
	// AuthorizedID, when set, is the only device ID the CSR may name
	// (device profile: the CSR's CN must equal it).
	AuthorizedID string
	// AuthorizedNames are the subject alternative names the certificate
	// may carry, as "DNS:name", "IP:addr" or "URI:uri" (ParseSANs form).
	// A CSR that asks for any other DNS name, IP address, URI or e-mail
	// address is refused, and so is a server CSR whose CN is not among
	// them. Nil authorizes no names: the CSR may then ask for none.
	AuthorizedNames []string
	Lifetime        time.Duration
	AuthorizedBy    string
}

// SignCSR checks a CSR against the profile's policy and the names the
// request is authorized for, and issues a certificate for its public key.
// The certificate carries the CSR's CN and the SANs it asks for, never a
// name outside AuthorizedNames; the CSR's other subject attributes and
// requested extensions are ignored.
func (ca *CA) SignCSR(req SignRequest) (*Issued, error) {
	ir, err := ca.csrToIssue(req)
	if err != nil {
		return nil, err
	}
	return ca.issue(ir, issueHooks{})
}

// canonicalNames returns the SANs in "DNS:x", "IP:y", "URI:z", "email:w"
// form, DNS names in lower case and IP addresses in their canonical
// text, so that two spellings of a name compare equal.
func canonicalNames(dns []string, ips []net.IP, uris []*url.URL, emails []string) []string {
	var out []string
	for _, d := range dns {
		out = append(out, "DNS:"+strings.ToLower(d))
	}
	for _, ip := range ips {
		out = append(out, "IP:"+ip.String())
	}
	for _, u := range uris {
		out = append(out, "URI:"+u.String())
	}
	for _, e := range emails {
		out = append(out, "email:"+e)
	}
	return out
}

// CSRNames returns every subject alternative name a CSR asks for, in
// "DNS:x", "IP:y", "URI:z", "email:w" form.
func CSRNames(csr *x509.CertificateRequest) []string {
	return canonicalNames(csr.DNSNames, csr.IPAddresses, csr.URIs, csr.EmailAddresses)
}

// unauthorizedNames returns the names of csr (SANs, and for servers the
// CN) that are not in allowed (ParseSANs form). E-mail names are never
// authorized: no profile issues them.
func unauthorizedNames(csr *x509.CertificateRequest, p Profile, allowed []string) ([]string, error) {
	dns, ips, uris, err := ParseSANs(allowed)
	if err != nil {
		return nil, err
	}
	ok := make(map[string]bool)
	for _, n := range canonicalNames(dns, ips, uris, nil) {
		ok[n] = true
	}
	var bad []string
	for _, n := range CSRNames(csr) {
		if !ok[n] {
			bad = append(bad, n)
		}
	}
	if cn := csr.Subject.CommonName; p == ProfileServer && cn != "" {
		var cnNames []string
		if ip := net.ParseIP(cn); ip != nil {
			cnNames = canonicalNames(nil, []net.IP{ip}, nil, nil)
		} else {
			cnNames = canonicalNames([]string{cn}, nil, nil, nil)
		}
		if !ok[cnNames[0]] {
			bad = append(bad, "CN="+cn)
		}
	}
	return bad, nil
}

// ErrNamesNotAuthorized is returned when a CSR asks for a name (a SAN,
// or a server's CN) that what authorizes the request does not cover.
var ErrNamesNotAuthorized = errors.New("pki: the CSR asks for names that are not authorized")

func (ca *CA) csrToIssue(req SignRequest) (IssueRequest, error) {
	csr := req.CSR
	if csr == nil {
		return IssueRequest{}, errors.New("pki: no CSR")
	}
	if err := csr.CheckSignature(); err != nil {
		return IssueRequest{}, fmt.Errorf("pki: CSR signature is invalid: %w", err)
	}
	if len(csr.EmailAddresses) > 0 {
		return IssueRequest{}, errors.New("pki: CSR requests e-mail SANs, which no profile allows")
	}
	bad, err := unauthorizedNames(csr, req.Profile, req.AuthorizedNames)
	if err != nil {
		return IssueRequest{}, err
	}
	if len(bad) > 0 {
		allowed := "none"
		if len(req.AuthorizedNames) > 0 {
			allowed = strings.Join(req.AuthorizedNames, ", ")
		}
		return IssueRequest{}, fmt.Errorf("%w: %s (authorized: %s)", ErrNamesNotAuthorized, strings.Join(bad, ", "), allowed)
	}
	ir := IssueRequest{
		Profile: req.Profile, CommonName: csr.Subject.CommonName, PublicKey: csr.PublicKey,
		DNSNames: csr.DNSNames, IPAddresses: csr.IPAddresses, URIs: csr.URIs,
		Lifetime: req.Lifetime, AuthorizedBy: req.AuthorizedBy,
	}
	switch req.Profile {
	case ProfileDevice:
		if req.AuthorizedID != "" && ir.CommonName != req.AuthorizedID {
			return IssueRequest{}, fmt.Errorf("pki: CSR names device %q but the request is authorized only for %q", ir.CommonName, req.AuthorizedID)
		}
	case ProfileServer:
		if ir.CommonName != "" && len(ir.DNSNames)+len(ir.IPAddresses) == 0 {
			addSANs(&ir, []string{ir.CommonName})
		}
	}
	return ir, nil
}

// ValidDeviceID reports whether id can name a device: 1 to 64 characters
// from letters, digits and ". _ - @" (no ':' so that it fits HTTP Basic).
func ValidDeviceID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', strings.ContainsRune("._-@", c):
		default:
			return false
		}
	}
	return true
}

func validDNSName(n string) bool {
	n = strings.TrimPrefix(n, "*.")
	if n == "" || len(n) > 253 {
		return false
	}
	for _, l := range strings.Split(n, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// checkPolicy validates a request against its profile and the CA's
// settings and returns every problem found.
func (ca *CA) checkPolicy(r *IssueRequest) error {
	var errs []error
	switch r.Profile {
	case ProfileServer:
		if r.CommonName == "" {
			switch {
			case len(r.DNSNames) > 0:
				r.CommonName = r.DNSNames[0]
			case len(r.IPAddresses) > 0:
				r.CommonName = r.IPAddresses[0].String()
			}
		}
		if len(r.DNSNames)+len(r.IPAddresses) == 0 {
			errs = append(errs, errors.New("pki: a server certificate needs at least one DNS or IP SAN (--san DNS:broker.example.com,IP:10.0.0.5)"))
		}
		if len(r.URIs) > 0 {
			errs = append(errs, errors.New("pki: the server profile does not allow URI SANs"))
		}
		for _, d := range r.DNSNames {
			if !validDNSName(d) {
				errs = append(errs, fmt.Errorf("pki: %q is not a valid DNS name", d))
			}
		}
		if len(r.CommonName) > 64 {
			errs = append(errs, errors.New("pki: common name longer than 64 characters"))
		}
	case ProfileDevice:
		if !ValidDeviceID(r.CommonName) {
			errs = append(errs, fmt.Errorf("pki: device ID %q is invalid (1-64 letters, digits, '.', '_', '-', '@')", r.CommonName))
		}
		if len(r.DNSNames)+len(r.IPAddresses) > 0 {
			errs = append(errs, errors.New("pki: the device profile allows only URI SANs (e.g. spiffe://...), not DNS or IP"))
		}
		for _, u := range r.URIs {
			if u.Scheme != "spiffe" && u.Scheme != "urn" && u.Scheme != "https" {
				errs = append(errs, fmt.Errorf("pki: URI SAN %q: scheme must be spiffe, urn or https", u))
			}
		}
	case ProfileOCSP:
	default:
		errs = append(errs, fmt.Errorf("pki: unknown profile %q (use server or device)", r.Profile))
	}
	if r.PublicKey != nil {
		if _, err := AlgorithmOf(r.PublicKey); err != nil {
			errs = append(errs, err)
		}
	}
	if r.Lifetime < 0 {
		errs = append(errs, errors.New("pki: lifetime must not be negative"))
	}
	errs = append(errs, ca.checkNameConstraints(r.DNSNames, r.IPAddresses)...)
	return errors.Join(errs...)
}

func (ca *CA) checkNameConstraints(dns []string, ips []net.IP) []error {
	s := ca.settings
	var errs []error
	for _, d := range dns {
		if len(s.PermittedDNSDomains) > 0 && !matchesAnyDomain(d, s.PermittedDNSDomains) {
			errs = append(errs, fmt.Errorf("pki: DNS name %q is outside the CA's permitted domains %v", d, s.PermittedDNSDomains))
		}
		if matchesAnyDomain(d, s.ExcludedDNSDomains) {
			errs = append(errs, fmt.Errorf("pki: DNS name %q is in an excluded domain %v", d, s.ExcludedDNSDomains))
		}
	}
	for _, ip := range ips {
		if len(s.PermittedIPRanges) > 0 && !inAnyRange(ip, parseRanges(s.PermittedIPRanges)) {
			errs = append(errs, fmt.Errorf("pki: IP %s is outside the CA's permitted ranges %v", ip, s.PermittedIPRanges))
		}
		if inAnyRange(ip, parseRanges(s.ExcludedIPRanges)) {
			errs = append(errs, fmt.Errorf("pki: IP %s is in an excluded range %v", ip, s.ExcludedIPRanges))
		}
	}
	return errs
}

func matchesAnyDomain(name string, domains []string) bool {
	name = strings.ToLower(strings.TrimPrefix(name, "*."))
	for _, d := range domains {
		d = strings.ToLower(d)
		if strings.HasPrefix(d, ".") {
			if strings.HasSuffix(name, d) {
				return true
			}
			continue
		}
		if name == d || strings.HasSuffix(name, "."+d) {
			return true
		}
	}
	return false
}

func inAnyRange(ip net.IP, ranges []*net.IPNet) bool {
	for _, r := range ranges {
		if r.Contains(ip) {
			return true
		}
	}
	return false
}

// issueHooks extend an issuance with work done in the transaction that
// records the certificate.
type issueHooks struct {
	// inTx, when not nil, runs in the write transaction that records rec
	// (token consumption, superseding the parent of a re-enrollment) and
	// may set fields of rec; if it fails nothing is recorded.
	inTx func(tx *bolt.Tx, rec *Record) error
	// rebuildCRL signs a new CRL in that transaction and writes crl.pem
	// after it (inTx revoked a certificate).
	rebuildCRL bool
}

// issue builds, signs and records a certificate.
func (ca *CA) issue(req IssueRequest, hooks issueHooks) (*Issued, error) {
	if err := ca.checkPolicy(&req); err != nil {
		return nil, err
	}
	now := ca.cfg.now()
	rnd := ca.cfg.rand()
	var key crypto.Signer
	pub := req.PublicKey
	if pub == nil {
		alg := req.KeyAlgorithm
		var err error
		if key, err = GenerateKey(alg, rnd); err != nil {
			return nil, err
		}
		pub = key.Public()
	}
	lifetime := req.Lifetime
	var eku []x509.ExtKeyUsage
	var extra []pkix.Extension
	switch req.Profile {
	case ProfileServer:
		lifetime = orDur(lifetime, ca.settings.serverLifetime())
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case ProfileDevice:
		lifetime = orDur(lifetime, ca.settings.deviceLifetime())
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case ProfileOCSP:
		lifetime = orDur(lifetime, ocspSignerLifetime)
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}
		// id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1): value NULL.
		extra = append(extra, pkix.Extension{Id: oidOCSPNoCheck, Value: []byte{0x05, 0x00}})
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(ca.inter.NotAfter) {
		notAfter = ca.inter.NotAfter
	}
	ku := x509.KeyUsageDigitalSignature
	if _, isRSA := pub.(*rsa.PublicKey); isRSA && req.Profile != ProfileOCSP {
		ku |= x509.KeyUsageKeyEncipherment
	}
	serial, err := newSerial(rnd)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: req.CommonName},
		NotBefore:             now.Add(-ca.settings.backdate()),
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPAddresses,
		URIs:                  req.URIs,
		ExtraExtensions:       extra,
	}
	if req.Profile != ProfileOCSP {
		if ca.settings.OCSPURL != "" {
			tmpl.OCSPServer = []string{ca.settings.OCSPURL}
		}
		if ca.settings.CRLURL != "" {
			tmpl.CRLDistributionPoints = []string{ca.settings.CRLURL}
		}
	}
	der, err := x509.CreateCertificate(rnd, tmpl, ca.inter, pub, ca.interKey)
	if err != nil {
		return nil, fmt.Errorf("pki: signing certificate: %w", err)
	}
	rec, err := newRecord(der, req.Profile, orDefault(req.AuthorizedBy, "api"))
	if err != nil {
		return nil, err
	}
	var crl crlSet
	var after func() error
	if hooks.rebuildCRL {
		after = func() error { return ca.writeCRLFile(crl) }
	}
	err = ca.updateThen(func(tx *bolt.Tx) error {
		if hooks.inTx != nil {
			if err := hooks.inTx(tx, &rec); err != nil {
				return err
			}
		}
		if err := putRecord(tx, rec); err != nil {
			return err
		}
		if !hooks.rebuildCRL {
			return nil
		}
		var cerr error
		crl, cerr = ca.buildCRL(tx, now)
		return cerr
	}, after)
	if err != nil {
		return nil, err
	}
	cert, _ := parseCert(der)
	ca.cfg.logger().Info("pki: issued certificate", "serial", rec.Serial, "profile", rec.Profile, "subject", rec.Subject, "names", strings.Join(rec.SANs(), ","), "not_after", rec.NotAfter, "authorized_by", rec.AuthorizedBy)
	return &Issued{Certificate: cert, Chain: []*x509.Certificate{ca.inter}, Key: key, Record: rec}, nil
}

func parseCert(der []byte) (*x509.Certificate, error) {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing certificate: %w", err)
	}
	return c, nil
}

// ReadCSRFile reads a PEM ("CERTIFICATE REQUEST") or DER CSR file.
func ReadCSRFile(path string) (*x509.CertificateRequest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: reading CSR: %w", err)
	}
	return ParseCSR(b)
}
