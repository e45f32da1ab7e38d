package tlsconf

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// state is one immutable generation of loaded files. Only the staple
// pointers and the CRL signature cache change after it is published.
type state struct {
	certs   []*servedCert
	roots   *x509.CertPool // nil when no CA is configured
	caCerts []*x509.Certificate
	caSum   [32]byte
	crls    map[string][]*crlInfo // by raw issuer name
	ncrl    int
	conf    *tls.Config // returned by GetConfigForClient

	// verified caches chains that passed x509 verification against this
	// generation's CA pool (key: SHA-256 of the peer certificates), so Watch
	// after a handshake does not verify again. Revocation is always
	// re-checked. Cleared when it reaches maxVerifiedCache entries.
	verified  sync.Map
	nverified atomic.Int64
}

// maxVerifiedCache bounds the verified-chain cache. An entry holds the
// parsed chain (about 3 KiB with a P-256 leaf) and outlives the
// connection, so the bound is also what the cache can hold after clients
// have gone: about 12 MiB. The cache only has to bridge a handshake and the
// Watch that follows it (and quick reconnects); a storm larger than the
// bound costs at most an extra verification for handshakes that straddle
// a clearing.
const maxVerifiedCache = 4096

// chainKey is the verified-chain cache's key for the certificates a peer
// sent: the SHA-256 of the leaf alone (the usual case, without an
// allocation), or of all of them.
func chainKey(peer []*x509.Certificate) [sha256.Size]byte {
	if len(peer) == 1 {
		return sha256.Sum256(peer[0].Raw)
	}
	h := sha256.New()
	for _, c := range peer {
		h.Write(c.Raw)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// servedCert is a server certificate with its current OCSP staple.
type servedCert struct {
	pair   KeyPair
	leaf   *x509.Certificate
	issuer *x509.Certificate // for stapling; nil when unknown
	cert   atomic.Pointer[tls.Certificate]
	staple atomic.Pointer[staple]
}

type staple struct {
	der        []byte
	nextUpdate time.Time // zero: none given
	refreshAt  time.Time
}

// crlInfo is one parsed CRL.
type crlInfo struct {
	path    string
	list    *x509.RevocationList
	revoked map[string]time.Time // serial (decimal) -> revocation time
	sigOK   sync.Map             // string(issuer.Raw) -> error (nil when valid)
	stale   atomic.Bool          // already reported as past nextUpdate
}

// checkSignature verifies the CRL against issuer once and caches the result.
func (c *crlInfo) checkSignature(issuer *x509.Certificate) error {
	if v, ok := c.sigOK.Load(string(issuer.Raw)); ok {
		err, _ := v.(error)
		return err
	}
	err := c.list.CheckSignatureFrom(issuer)
	if err != nil {
		c.sigOK.Store(string(issuer.Raw), err)
	} else {
		c.sigOK.Store(string(issuer.Raw), nil)
	}
	return err
}

// crlFor returns the newest CRL signed by issuer, or nil.
func (s *state) crlFor(issuer *x509.Certificate) *crlInfo {
	var best *crlInfo
	for _, c := range s.crls[string(issuer.RawSubject)] {
		if c.checkSignature(issuer) != nil {
			continue
		}
		if best == nil || c.list.ThisUpdate.After(best.list.ThisUpdate) {
			best = c
		}
	}
	return best
}

// hashedName matches OpenSSL c_rehash names of certificates (not CRLs).
var hashedName = regexp.MustCompile(`^[0-9a-f]{8}\.[0-9]+$`)

// watchedFiles lists every file the configuration depends on, in a stable order.
func (m *Manager) watchedFiles() []string {
	var files []string
	for _, kp := range m.cfg.Certificates {
		files = append(files, kp.CertFile, kp.KeyFile)
	}
	if m.cfg.CAFile != "" {
		files = append(files, m.cfg.CAFile)
	}
	files = append(files, m.caPathFiles()...)
	files = append(files, m.cfg.CRLFiles...)
	return files
}

func (m *Manager) caPathFiles() []string {
	if m.cfg.CAPath == "" {
		return nil
	}
	ents, err := os.ReadDir(m.cfg.CAPath)
	if err != nil {
		return []string{m.cfg.CAPath} // make the error visible at load
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		n := e.Name()
		ext := strings.ToLower(filepath.Ext(n))
		if ext == ".pem" || ext == ".crt" || ext == ".cer" || hashedName.MatchString(n) {
			out = append(out, filepath.Join(m.cfg.CAPath, n))
		}
	}
	slices.Sort(out)
	return out
}

// fileSignature is a cheap summary (name, size, mtime) of the watched files.
func (m *Manager) fileSignature() string {
	var b strings.Builder
	for _, f := range m.watchedFiles() {
		fi, err := os.Stat(f)
		if err != nil {
			fmt.Fprintf(&b, "%s:err;", f)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d;", f, fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String()
}

// contentHash hashes the contents of the watched files.
func (m *Manager) contentHash() [32]byte {
	h := sha256.New()
	for _, f := range m.watchedFiles() {
		data, err := os.ReadFile(f)
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(data))
		if err != nil {
			h.Write([]byte("error"))
		}
		h.Write(data)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// load reads every file and builds a new state, reporting all problems.
func (m *Manager) load() (*state, error) {
	st := &state{crls: map[string][]*crlInfo{}}
	var errs []error
	now := m.now()

	for _, kp := range m.cfg.Certificates {
		sc, err := m.loadKeyPair(kp, now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		st.certs = append(st.certs, sc)
	}

	var caPEM [][]byte
	if m.cfg.CAFile != "" {
		data, err := os.ReadFile(m.cfg.CAFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("tlsconf: read cafile: %w", err))
		} else {
			caPEM = append(caPEM, data)
			certs, err := parseCerts(data)
			if err != nil || len(certs) == 0 {
				errs = append(errs, fmt.Errorf("tlsconf: cafile %s: no usable certificate (%v)", m.cfg.CAFile, err))
			}
			st.caCerts = append(st.caCerts, certs...)
		}
	}
	if m.cfg.CAPath != "" {
		if fi, err := os.Stat(m.cfg.CAPath); err != nil || !fi.IsDir() {
			errs = append(errs, fmt.Errorf("tlsconf: capath %s is not a readable directory", m.cfg.CAPath))
		}
		n := 0
		for _, f := range m.caPathFiles() {
			data, err := os.ReadFile(f)
			if err != nil {
				errs = append(errs, fmt.Errorf("tlsconf: capath: %w", err))
				continue
			}
			certs, err := parseCerts(data)
			if err != nil {
				m.log.Warn("tlsconf: capath: skipping file without certificates", "listener", m.cfg.Name, "file", f, "error", err)
				continue
			}
			caPEM = append(caPEM, data)
			st.caCerts = append(st.caCerts, certs...)
			n += len(certs)
		}
		if n == 0 && m.cfg.CAFile == "" {
			errs = append(errs, fmt.Errorf("tlsconf: capath %s holds no CA certificate (*.pem, *.crt, *.cer or hashed names)", m.cfg.CAPath))
		}
	}
	if len(st.caCerts) > 0 {
		st.roots = x509.NewCertPool()
		for _, c := range st.caCerts {
			st.roots.AddCert(c)
		}
		st.caSum = sha256.Sum256(bytes.Join(caPEM, nil))
	}

	for _, f := range m.cfg.CRLFiles {
		infos, err := loadCRLs(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ci := range infos {
			st.crls[string(ci.list.RawIssuer)] = append(st.crls[string(ci.list.RawIssuer)], ci)
			st.ncrl++
			if !ci.list.NextUpdate.IsZero() && now.After(ci.list.NextUpdate) {
				m.log.Error("tlsconf: CRL is past its nextUpdate", "listener", m.cfg.Name, "file", f,
					"next_update", ci.list.NextUpdate, "policy", m.stalePolicyName())
				ci.stale.Store(true)
			}
		}
	}

	// Find issuers for stapling: the chain's second certificate, else a CA.
	for _, sc := range st.certs {
		tc := sc.cert.Load()
		if len(tc.Certificate) > 1 {
			if iss, err := x509.ParseCertificate(tc.Certificate[1]); err == nil {
				sc.issuer = iss
			}
		}
		if sc.issuer == nil {
			for _, ca := range st.caCerts {
				if bytes.Equal(ca.RawSubject, sc.leaf.RawIssuer) && sc.leaf.CheckSignatureFrom(ca) == nil {
					sc.issuer = ca
					break
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return st, nil
}

func (m *Manager) stalePolicyName() string {
	if m.cfg.CRLStalePolicy == CRLStaleWarn {
		return "warn"
	}
	return "refuse"
}

func (m *Manager) loadKeyPair(kp KeyPair, now time.Time) (*servedCert, error) {
	tc, err := tls.LoadX509KeyPair(kp.CertFile, kp.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: load certificate %s with key %s: %w", kp.CertFile, kp.KeyFile, err)
	}
	leaf := tc.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(tc.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tlsconf: parse %s: %w", kp.CertFile, err)
		}
		tc.Leaf = leaf
	}
	if weakSignature(leaf.SignatureAlgorithm) {
		return nil, fmt.Errorf("tlsconf: certificate %s is signed with %v, which is refused (SHA-1/MD5)", kp.CertFile, leaf.SignatureAlgorithm)
	}
	if key := fipsRefusedKey(leaf); key != "" {
		return nil, fmt.Errorf("tlsconf: certificate %s has a %s key, which is %s (use RSA of 2048 bits or more, ECDSA P-256/P-384/P-521 or Ed25519)", kp.CertFile, key, fipsNote())
	}
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		m.log.Error("tlsconf: server certificate is outside its validity period; clients will refuse it",
			"listener", m.cfg.Name, "file", kp.CertFile, "not_before", leaf.NotBefore, "not_after", leaf.NotAfter)
	}
	if fi, err := os.Stat(kp.KeyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		m.log.Warn("tlsconf: private key file is readable by group or others; chmod 600 it",
			"listener", m.cfg.Name, "file", kp.KeyFile, "mode", fi.Mode().Perm().String())
	}
	sc := &servedCert{pair: kp, leaf: leaf}
	sc.cert.Store(&tc)
	return sc, nil
}

// parseCerts reads PEM certificates, or one DER certificate.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := data
	sawPEM := false
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		sawPEM = true
		if b.Type != "CERTIFICATE" && b.Type != "TRUSTED CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if !sawPEM {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, errors.New("neither PEM nor DER certificate")
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no CERTIFICATE block")
	}
	return out, nil
}

// loadCRLs reads one file of PEM ("X509 CRL") or DER CRLs.
func loadCRLs(path string) ([]*crlInfo, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: read crlfile: %w", err)
	}
	var ders [][]byte
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "X509 CRL" {
			ders = append(ders, b.Bytes)
		}
	}
	if len(ders) == 0 {
		ders = [][]byte{data}
	}
	var out []*crlInfo
	for _, der := range ders {
		l, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: crlfile %s: %w", path, err)
		}
		for _, ext := range l.Extensions {
			if ext.Id.Equal(oidDeltaCRLIndicator) {
				return nil, fmt.Errorf("tlsconf: crlfile %s holds a delta CRL, which is not supported: configure the full CRL", path)
			}
		}
		ci := &crlInfo{path: path, list: l, revoked: make(map[string]time.Time, len(l.RevokedCertificateEntries))}
		for _, e := range l.RevokedCertificateEntries {
			ci.revoked[e.SerialNumber.String()] = e.RevocationTime
		}
		out = append(out, ci)
	}
	return out, nil
}

var oidDeltaCRLIndicator = asn1.ObjectIdentifier{2, 5, 29, 27}

func weakSignature(a x509.SignatureAlgorithm) bool {
	switch a {
	case x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1, x509.MD5WithRSA, x509.MD2WithRSA:
		return true
	}
	return false
}
