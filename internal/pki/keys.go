package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// KeyAlgorithm names a key type and size. The zero value means the default,
// ECDSA P-256.
type KeyAlgorithm string

// Supported key algorithms.
const (
	ECDSAP256 KeyAlgorithm = "ecdsa-p256"
	ECDSAP384 KeyAlgorithm = "ecdsa-p384"
	Ed25519   KeyAlgorithm = "ed25519"
	RSA2048   KeyAlgorithm = "rsa-2048"
	RSA3072   KeyAlgorithm = "rsa-3072"
	RSA4096   KeyAlgorithm = "rsa-4096"
)

// KeyAlgorithms lists every supported algorithm, default first.
var KeyAlgorithms = []KeyAlgorithm{ECDSAP256, ECDSAP384, Ed25519, RSA2048, RSA3072, RSA4096}

// ParseKeyAlgorithm accepts the names above case-insensitively, plus the
// short forms "p256", "p384", "rsa2048", ...; "" means ECDSAP256.
func ParseKeyAlgorithm(s string) (KeyAlgorithm, error) {
	n := strings.ToLower(strings.TrimSpace(s))
	n = strings.NewReplacer("_", "", "-", "", " ", "").Replace(n)
	switch n {
	case "", "ecdsap256", "p256", "ecdsa", "ec", "prime256v1", "secp256r1":
		return ECDSAP256, nil
	case "ecdsap384", "p384", "secp384r1":
		return ECDSAP384, nil
	case "ed25519":
		return Ed25519, nil
	case "rsa2048", "rsa":
		return RSA2048, nil
	case "rsa3072":
		return RSA3072, nil
	case "rsa4096":
		return RSA4096, nil
	}
	return "", fmt.Errorf("pki: unknown key algorithm %q (use one of %s)", s, joinAlgs())
}

func joinAlgs() string {
	s := make([]string, len(KeyAlgorithms))
	for i, a := range KeyAlgorithms {
		s[i] = string(a)
	}
	return strings.Join(s, ", ")
}

// GenerateKey makes a new private key of algorithm alg using rnd (nil means
// crypto/rand). Note that RSA and ECDSA key generation in Go ignore rnd's
// exact bytes; rnd only matters for tests that want to fail it.
func GenerateKey(alg KeyAlgorithm, rnd io.Reader) (crypto.Signer, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	if alg == "" {
		alg = ECDSAP256
	}
	switch alg {
	case ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rnd)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rnd)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rnd)
		return k, err
	case RSA2048:
		return rsa.GenerateKey(rnd, 2048)
	case RSA3072:
		return rsa.GenerateKey(rnd, 3072)
	case RSA4096:
		return rsa.GenerateKey(rnd, 4096)
	}
	return nil, fmt.Errorf("pki: unknown key algorithm %q (use one of %s)", alg, joinAlgs())
}

// AlgorithmOf reports the KeyAlgorithm of a public key, or an error for key
// types and sizes the CA does not accept (RSA below 2048 or above 8192
// bits, curves other than P-256 and P-384).
func AlgorithmOf(pub crypto.PublicKey) (KeyAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECDSAP256, nil
		case elliptic.P384():
			return ECDSAP384, nil
		}
		return "", fmt.Errorf("pki: ECDSA curve %s is not accepted (use P-256 or P-384)", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return Ed25519, nil
	case *rsa.PublicKey:
		bits := k.N.BitLen()
		switch {
		case bits < 2048:
			return "", fmt.Errorf("pki: RSA key of %d bits is too small (at least 2048)", bits)
		case bits > 8192:
			return "", fmt.Errorf("pki: RSA key of %d bits is too large (at most 8192)", bits)
		case bits <= 2048:
			return RSA2048, nil
		case bits <= 3072:
			return RSA3072, nil
		}
		return RSA4096, nil
	}
	return "", fmt.Errorf("pki: public key type %T is not accepted", pub)
}

// MarshalKeyPEM encodes a private key as an unencrypted PKCS#8 PEM block
// ("PRIVATE KEY").
func MarshalKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKeyPEM decodes the first private key in data: PKCS#8 ("PRIVATE
// KEY"), or the legacy "EC PRIVATE KEY" and "RSA PRIVATE KEY" forms that
// openssl writes. Encrypted keys are refused with a hint.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("pki: no private key found in PEM data")
		}
		var k any
		var err error
		if b.Headers["Proc-Type"] != "" {
			return nil, fmt.Errorf("%w in the legacy OpenSSL format; convert it with: openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out KEY.new", ErrKeyEncrypted)
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case encryptedKeyPEMType, "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%w (decrypt it first)", ErrKeyEncrypted)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pki: parsing %s: %w", b.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("pki: unsupported private key type %T", k)
		}
		return s, nil
	}
}

// LoadKeyFile reads an unencrypted private key from a PEM file.
func LoadKeyFile(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: reading key: %w", err)
	}
	k, err := ParseKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return k, nil
}

// ParseCertificatesPEM returns every CERTIFICATE block in data, in order.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: parsing certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("pki: no certificate found in PEM data")
	}
	return out, nil
}

// LoadCertificatesFile reads every certificate in a PEM file.
func LoadCertificatesFile(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: reading certificate: %w", err)
	}
	cs, err := ParseCertificatesPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return cs, nil
}

// EncodeCertificatesPEM concatenates certs as CERTIFICATE blocks.
func EncodeCertificatesPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
