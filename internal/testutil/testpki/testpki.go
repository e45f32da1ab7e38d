// Package testpki is the one throw-away PKI of Moat's tests: certificate
// authorities, intermediates, leaves with any key type, CRLs and a real
// OCSP responder, in memory and written to files on request. Nothing here
// is meant for production: keys are cached per process to keep tests fast,
// and errors fail the calling test.
//
// A typical server and client pair:
//
//	ca := testpki.NewRoot(t, "Test CA", testpki.P256)
//	srv := ca.Issue(t, testpki.ServerOptions())
//	cli := ca.Issue(t, testpki.Options{CN: "device-1", EKU: testpki.ClientAuth})
package testpki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// KeyType selects the key algorithm of a generated certificate.
type KeyType int

// Key types. The zero value is ECDSA P-256.
const (
	P256 KeyType = iota
	RSA2048
	Ed25519
)

func (k KeyType) String() string {
	switch k {
	case RSA2048:
		return "RSA2048"
	case Ed25519:
		return "Ed25519"
	default:
		return "P256"
	}
}

var (
	keyMu    sync.Mutex
	keyCache = map[KeyType]map[int]crypto.Signer{}
	serialMu sync.Mutex
	serialN  int64 = 1000
)

// Key returns the n-th cached key of type k, generating it on first use.
// Different n give different keys.
func Key(t testing.TB, k KeyType, n int) crypto.Signer {
	t.Helper()
	keyMu.Lock()
	defer keyMu.Unlock()
	if s, ok := keyCache[k][n]; ok {
		return s
	}
	{
		var (
			s   crypto.Signer
			err error
		)
		switch k {
		case RSA2048:
			s, err = rsa.GenerateKey(rand.Reader, 2048)
		case Ed25519:
			_, s, err = ed25519.GenerateKey(rand.Reader)
		default:
			s, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		if err != nil {
			t.Fatalf("testpki: generate key: %v", err)
		}
		if keyCache[k] == nil {
			keyCache[k] = map[int]crypto.Signer{}
		}
		keyCache[k][n] = s
		return s
	}
}

func nextSerial() *big.Int {
	serialMu.Lock()
	defer serialMu.Unlock()
	serialN++
	return big.NewInt(serialN)
}

// Options describe a certificate to issue. Zero values give a one-year
// P-256 client+server certificate valid from an hour ago.
type Options struct {
	CN        string
	Subject   *pkix.Name // overrides CN when set
	DNS       []string
	IPs       []net.IP
	URIs      []string
	Emails    []string
	EKU       []x509.ExtKeyUsage // nil: clientAuth+serverAuth; use NoEKU for none
	NoEKU     bool
	NotBefore time.Time
	NotAfter  time.Time
	Key       KeyType
	KeyIndex  int // selects a different cached key
	IsCA      bool
	OCSP      []string // AIA OCSP responder URLs
	CRLDP     []string
	SigAlg    x509.SignatureAlgorithm
	Serial    *big.Int
}

// Cert is an issued certificate and its key.
type Cert struct {
	Cert   *x509.Certificate
	Key    crypto.Signer
	Issuer *Cert // nil for self-signed
}

// PEM returns the certificate in PEM form.
func (c *Cert) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Cert.Raw})
}

// ChainPEM returns the certificate followed by its issuers, without the root.
func (c *Cert) ChainPEM() []byte {
	var b bytes.Buffer
	b.Write(c.PEM())
	for i := c.Issuer; i != nil && i.Issuer != nil; i = i.Issuer {
		b.Write(i.PEM())
	}
	return b.Bytes()
}

// KeyPEM returns the private key as PKCS#8 PEM.
func (c *Cert) KeyPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		t.Fatalf("testpki: marshal key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// TLS returns the certificate with its chain (without root) as a tls.Certificate.
func (c *Cert) TLS() tls.Certificate {
	tc := tls.Certificate{Certificate: [][]byte{c.Cert.Raw}, PrivateKey: c.Key, Leaf: c.Cert}
	for i := c.Issuer; i != nil && i.Issuer != nil; i = i.Issuer {
		tc.Certificate = append(tc.Certificate, i.Cert.Raw)
	}
	return tc
}

// WriteFiles writes PREFIX.pem (chain) and PREFIX.key (mode 0600) in dir
// and returns both paths.
func (c *Cert) WriteFiles(t testing.TB, dir, prefix string) (certFile, keyFile string) {
	t.Helper()
	certFile = filepath.Join(dir, prefix+".pem")
	keyFile = filepath.Join(dir, prefix+".key")
	WriteFile(t, certFile, c.ChainPEM())
	WriteFile(t, keyFile, c.KeyPEM(t))
	return certFile, keyFile
}

// WriteFile writes data atomically (temp file + rename), mode 0600.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatalf("testpki: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatalf("testpki: %v", err)
	}
}

// NewRoot creates a self-signed CA with a key of its own.
func NewRoot(t testing.TB, cn string, k KeyType) *Cert {
	t.Helper()
	rootMu.Lock()
	rootN++
	n := 100 + rootN
	rootMu.Unlock()
	return issue(t, nil, Options{CN: cn, Key: k, KeyIndex: n, IsCA: true})
}

var (
	rootMu sync.Mutex
	rootN  int
)

// Issue issues a certificate signed by c.
func (c *Cert) Issue(t testing.TB, o Options) *Cert {
	t.Helper()
	return issue(t, c, o)
}

// SelfSigned creates a self-signed end-entity certificate.
func SelfSigned(t testing.TB, o Options) *Cert {
	t.Helper()
	return issue(t, nil, o)
}

func issue(t testing.TB, parent *Cert, o Options) *Cert {
	t.Helper()
	key := Key(t, o.Key, o.KeyIndex)
	now := time.Now()
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(365 * 24 * time.Hour)
	}
	if o.Serial == nil {
		o.Serial = nextSerial()
	}
	subj := pkix.Name{CommonName: o.CN}
	if o.Subject != nil {
		subj = *o.Subject
	}
	tmpl := &x509.Certificate{
		SerialNumber:          o.Serial,
		Subject:               subj,
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		DNSNames:              o.DNS,
		IPAddresses:           o.IPs,
		EmailAddresses:        o.Emails,
		OCSPServer:            o.OCSP,
		CRLDistributionPoints: o.CRLDP,
		BasicConstraintsValid: true,
		SignatureAlgorithm:    o.SigAlg,
	}
	for _, u := range o.URIs {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatalf("testpki: %v", err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	if o.IsCA {
		tmpl.IsCA = true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		if _, ok := key.(*rsa.PrivateKey); ok {
			tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
		}
		switch {
		case o.NoEKU:
		case o.EKU != nil:
			tmpl.ExtKeyUsage = o.EKU
		default:
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
		}
	}
	signer, parentCert := key, tmpl
	if parent != nil {
		signer, parentCert = parent.Key, parent.Cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), signer)
	if err != nil {
		t.Fatalf("testpki: create certificate %q: %v", o.CN, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	return &Cert{Cert: cert, Key: key, Issuer: parent}
}

// CRL returns a PEM CRL signed by ca listing the given certificates as revoked.
func (c *Cert) CRL(t testing.TB, thisUpdate, nextUpdate time.Time, revoked ...*Cert) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{
		Number:     nextSerial(),
		ThisUpdate: thisUpdate,
		NextUpdate: nextUpdate,
	}
	for _, r := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber:   r.Cert.SerialNumber,
			RevocationTime: thisUpdate,
		})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, c.Cert, c.Key)
	if err != nil {
		t.Fatalf("testpki: create CRL: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// Extended key usages for Options.EKU.
var (
	ServerAuth = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	ClientAuth = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
)

// ServerOptions are the options of a serverAuth certificate for
// "localhost" and 127.0.0.1, the names every test server listens on.
func ServerOptions() Options {
	return Options{CN: "localhost", DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, EKU: ServerAuth}
}

// Pool returns a certificate pool holding only c, for RootCAs or ClientCAs.
func (c *Cert) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Cert)
	return p
}

// WritePEM writes the certificate alone (no chain, no key) to path, mode
// 0600, and returns path: a CA file for peers such as Mosquitto or openssl.
func (c *Cert) WritePEM(t testing.TB, path string) string {
	t.Helper()
	WriteFile(t, path, c.PEM())
	return path
}
