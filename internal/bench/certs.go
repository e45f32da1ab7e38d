package bench

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"
)

// KeyType names the key algorithm of generated certificates.
type KeyType string

// Key types for WritePKI and Issuer.
const (
	ECDSAP256 KeyType = "ecdsa" // ECDSA P-256 (default)
	RSA2048   KeyType = "rsa"   // RSA 2048, as in the seed's openssl commands
)

func newKey(t KeyType) (crypto.Signer, error) {
	switch t {
	case "", ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return nil, fmt.Errorf("bench: unknown key type %q (want ecdsa or rsa)", t)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n.Add(n, big.NewInt(1))
}

// PKIFiles are the files WritePKI writes in its directory.
var PKIFiles = struct{ CA, CAKey, Server, ServerKey, Client, ClientKey string }{
	"ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key",
}

// WritePKI writes a throw-away PKI for benchmarks into dir: a CA
// (ca.pem, ca.key), a server certificate for localhost and 127.0.0.1
// (server.pem, server.key) and one shared client certificate with common
// name "bench-shared" (client.pem, client.key), all with keys of type kt,
// valid for 30 days. Keys are written with mode 0600. The CA key stays
// unencrypted so that Issuer can sign per-client certificates: use it for
// benchmarks only.
func WritePKI(dir string, kt KeyType) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	caKey, err := newKey(kt)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Moat bench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return fmt.Errorf("bench: creating CA: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	if err := writePair(dir, PKIFiles.CA, PKIFiles.CAKey, caDER, caKey); err != nil {
		return err
	}
	iss := &Issuer{ca: ca, key: caKey, keyType: kt}
	srvKey, err := newKey(kt)
	if err != nil {
		return err
	}
	srvDER, err := iss.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, srvKey)
	if err != nil {
		return err
	}
	if err := writePair(dir, PKIFiles.Server, PKIFiles.ServerKey, srvDER, srvKey); err != nil {
		return err
	}
	cliKey, err := newKey(kt)
	if err != nil {
		return err
	}
	cliDER, err := iss.sign(clientTemplate("bench-shared"), cliKey)
	if err != nil {
		return err
	}
	return writePair(dir, PKIFiles.Client, PKIFiles.ClientKey, cliDER, cliKey)
}

func writePair(dir, certName, keyName string, der []byte, key crypto.Signer) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("bench: encoding key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, keyName), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, certName), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

func clientTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// Issuer signs per-client certificates with a CA key, so that a
// connection storm can present one distinct certificate per client
// without thousands of CLI calls. It is safe for concurrent use.
type Issuer struct {
	ca      *x509.Certificate
	key     crypto.Signer
	keyType KeyType
}

// LoadIssuer reads a CA certificate and its unencrypted PKCS#8, PKCS#1 or
// SEC 1 private key from PEM files. Client keys are of the CA key's type.
func LoadIssuer(certFile, keyFile string) (*Issuer, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("bench: loading client CA: %w (the key must be unencrypted PEM)", err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("bench: client CA key cannot sign")
	}
	kt := ECDSAP256
	if _, ok := signer.(*rsa.PrivateKey); ok {
		kt = RSA2048
	}
	return &Issuer{ca: pair.Leaf, key: signer, keyType: kt}, nil
}

func (is *Issuer) sign(tmpl *x509.Certificate, key crypto.Signer) ([]byte, error) {
	now := time.Now()
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(30 * 24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	if _, ok := key.(*rsa.PrivateKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, is.ca, key.Public(), is.key)
	if err != nil {
		return nil, fmt.Errorf("bench: signing certificate: %w", err)
	}
	return der, nil
}

// IssueClients returns n client certificates with common names
// prefix0..prefix(n-1), each sent without the CA (the server holds it). Distinct
// certificates share a pool of at most 64 key pairs (a handshake costs
// the same whichever key signs it, and RSA key generation would otherwise
// dominate); the work is spread over all CPUs.
func (is *Issuer) IssueClients(prefix string, n int) ([]tls.Certificate, error) {
	nkeys := min(n, 64)
	keys := make([]crypto.Signer, nkeys)
	for i := range keys {
		k, err := newKey(is.keyType)
		if err != nil {
			return nil, err
		}
		keys[i] = k
	}
	out := make([]tls.Certificate, n)
	var wg sync.WaitGroup
	errs := make([]error, runtime.GOMAXPROCS(0))
	for w := range errs {
		wg.Go(func() {
			for i := w; i < n; i += len(errs) {
				key := keys[i%nkeys]
				der, err := is.sign(clientTemplate(fmt.Sprintf("%s%d", prefix, i)), key)
				if err != nil {
					errs[w] = err
					return
				}
				leaf, _ := x509.ParseCertificate(der)
				out[i] = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}
