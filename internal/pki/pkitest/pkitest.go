// Package pkitest makes throw-away certificate authorities and leaf
// certificates in memory for tests of other packages. Nothing is written
// to disk unless a test asks for files with WriteFiles. It is not for
// production use: keys are never protected.
//
// A *CA is safe for concurrent use.
package pkitest

import (
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/pki"
)

// Options tune a CA or a leaf. The zero value gives ECDSA P-256 keys,
// a lifetime of one day and no revocation URLs.
type Options struct {
	// KeyAlgorithm of the generated key (pki.ECDSAP256, pki.RSA2048,
	// pki.Ed25519, ...).
	KeyAlgorithm pki.KeyAlgorithm
	// OCSPURL and CRLURL are written into leaf certificates.
	OCSPURL string
	CRLURL  string
	// NotBefore defaults to one minute ago, Lifetime to 24 hours.
	NotBefore time.Time
	Lifetime  time.Duration
	// URIs are added to client certificates.
	URIs []string
}

// CA is a root and an intermediate held in memory.
type CA struct {
	Root, Intermediate       *x509.Certificate
	RootKey, IntermediateKey crypto.Signer
	opts                     Options
	mu                       sync.Mutex // guards the fields below
	serial                   int64
	revoked                  map[string]time.Time
}

// Leaf is an issued certificate with its key.
type Leaf struct {
	Cert *x509.Certificate
	// Chain is [Cert, Intermediate].
	Chain []*x509.Certificate
	Key   crypto.Signer
}

// TLS returns the leaf as a tls.Certificate with the intermediate chain.
func (l *Leaf) TLS() tls.Certificate {
	var raw [][]byte
	for _, c := range l.Chain {
		raw = append(raw, c.Raw)
	}
	return tls.Certificate{Certificate: raw, PrivateKey: l.Key, Leaf: l.Cert}
}

// CertPEM is the chain (leaf first, no root) in PEM.
func (l *Leaf) CertPEM() []byte { return pki.EncodeCertificatesPEM(l.Chain...) }

// KeyPEM is the key in PKCS#8 PEM.
func (l *Leaf) KeyPEM() []byte {
	b, err := pki.MarshalKeyPEM(l.Key)
	if err != nil {
		panic(err)
	}
	return b
}

// WriteFiles writes dir/name.pem and dir/name.key (0600) and returns the
// two paths.
func (l *Leaf) WriteFiles(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, l.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, l.KeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// New makes a CA. opts.KeyAlgorithm selects the CA keys; OCSPURL and
// CRLURL become defaults for its leaves.
func New(t testing.TB, opts Options) *CA {
	t.Helper()
	ca := &CA{opts: opts}
	now := time.Now()
	var err error
	if ca.RootKey, err = pki.GenerateKey(opts.KeyAlgorithm, nil); err != nil {
		t.Fatal(err)
	}
	if ca.IntermediateKey, err = pki.GenerateKey(opts.KeyAlgorithm, nil); err != nil {
		t.Fatal(err)
	}
	root := &x509.Certificate{
		SerialNumber: ca.next(), Subject: pkix.Name{CommonName: "pkitest Root CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	ca.Root = create(t, root, root, ca.RootKey.Public(), ca.RootKey)
	inter := &x509.Certificate{
		SerialNumber: ca.next(), Subject: pkix.Name{CommonName: "pkitest Issuing CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
		MaxPathLenZero: true,
	}
	ca.Intermediate = create(t, inter, ca.Root, ca.IntermediateKey.Public(), ca.RootKey)
	return ca
}

func create(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatalf("pkitest: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("pkitest: %v", err)
	}
	return c
}

func (ca *CA) next() *big.Int {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.serial++
	return new(big.Int).Lsh(big.NewInt(ca.serial), 64) // unique, positive, 65+ bits
}

// Pool returns a pool with the root.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Root)
	return p
}

// RootPEM is the root certificate in PEM.
func (ca *CA) RootPEM() []byte { return pki.EncodeCertificatesPEM(ca.Root) }

// WriteRoot writes dir/ca.pem and returns its path.
func (ca *CA) WriteRoot(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(p, ca.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Server issues a serverAuth leaf for names (DNS names or IP addresses;
// default "localhost" and 127.0.0.1). opts zero fields fall back to the
// CA's options.
func (ca *CA) Server(t testing.TB, opts Options, names ...string) *Leaf {
	t.Helper()
	if len(names) == 0 {
		names = []string{"localhost", "127.0.0.1"}
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: names[0]}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	return ca.leaf(t, tmpl, opts)
}

// Client issues a clientAuth leaf with CN=cn.
func (ca *CA) Client(t testing.TB, opts Options, cn string) *Leaf {
	t.Helper()
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, s := range opts.URIs {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	return ca.leaf(t, tmpl, opts)
}

func (ca *CA) leaf(t testing.TB, tmpl *x509.Certificate, opts Options) *Leaf {
	t.Helper()
	key, err := pki.GenerateKey(opts.KeyAlgorithm, nil)
	if err != nil {
		t.Fatal(err)
	}
	nb := opts.NotBefore
	if nb.IsZero() {
		nb = time.Now().Add(-time.Minute)
	}
	life := opts.Lifetime
	if life == 0 {
		life = 24 * time.Hour
	}
	tmpl.SerialNumber = ca.next()
	tmpl.NotBefore, tmpl.NotAfter = nb, nb.Add(life)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	ocspURL, crlURL := opts.OCSPURL, opts.CRLURL
	ca.mu.Lock()
	if ocspURL == "" {
		ocspURL = ca.opts.OCSPURL
	}
	if crlURL == "" {
		crlURL = ca.opts.CRLURL
	}
	ca.mu.Unlock()
	if ocspURL != "" {
		tmpl.OCSPServer = []string{ocspURL}
	}
	if crlURL != "" {
		tmpl.CRLDistributionPoints = []string{crlURL}
	}
	c := create(t, tmpl, ca.Intermediate, key.Public(), ca.IntermediateKey)
	return &Leaf{Cert: c, Chain: []*x509.Certificate{c, ca.Intermediate}, Key: key}
}

// CRL returns a DER CRL signed by the intermediate that lists revoked
// (and everything passed to Revoke), valid for a day.
func (ca *CA) CRL(t testing.TB, revoked ...*x509.Certificate) []byte {
	t.Helper()
	set := ca.revokedSet()
	for _, c := range revoked {
		set[c.SerialNumber.String()] = time.Now().Add(-time.Minute)
	}
	der := ca.crl(set)
	if der == nil {
		t.Fatal("pkitest: signing CRL failed")
	}
	return der
}

func (ca *CA) crl(set map[string]time.Time) []byte {
	var entries []x509.RevocationListEntry
	for s, at := range set {
		n, _ := new(big.Int).SetString(s, 10)
		entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: at})
	}
	now := time.Now()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: ca.next(), ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(24 * time.Hour),
		RevokedCertificateEntries: entries,
	}, ca.Intermediate, ca.IntermediateKey)
	if err != nil {
		return nil
	}
	return der
}
