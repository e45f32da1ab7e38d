package jwt

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/moatmq/moat/internal/authn"
)

// keySource returns the key (or a gojwt.VerificationKeySet) to check t with.
// Every key it returns fits t's algorithm (keyFits).
type keySource interface {
	key(ctx context.Context, t *gojwt.Token) (any, error)
}

var (
	// errUnknownKID: the token names a key ID the key set does not have.
	errUnknownKID = errors.New("jwt: unknown key ID")
	// errKeyType: no configured key is of the token's algorithm's type
	// (HS256 against an RSA key, ES256 against a P-384 key).
	errKeyType = errors.New("jwt: no key of the token's algorithm")
	// errCrit: the token asks for header extensions Moat does not know.
	errCrit = errors.New("jwt: unsupported critical header extension")
)

// unavailableError wraps authn.ErrUnavailable: the keys could not be
// obtained, so no decision can be made.
type unavailableError struct{ msg string }

func (e *unavailableError) Error() string { return e.msg }
func (e *unavailableError) Unwrap() error { return authn.ErrUnavailable }

// minRSABits is the smallest RSA key accepted.
const minRSABits = 2048

// keyFits reports whether key is of the type alg needs. This is checked for
// every key, whatever its source, so that no token can choose how a key is
// used (algorithm confusion).
func keyFits(alg string, key any) bool {
	switch {
	case strings.HasPrefix(alg, "HS"):
		k, ok := key.([]byte)
		return ok && len(k) >= minHMACBytes
	case strings.HasPrefix(alg, "RS"), strings.HasPrefix(alg, "PS"):
		k, ok := key.(*rsa.PublicKey)
		return ok && k.N.BitLen() >= minRSABits
	case alg == "ES256", alg == "ES384", alg == "ES512":
		k, ok := key.(*ecdsa.PublicKey)
		if !ok {
			return false
		}
		want := map[string]elliptic.Curve{"ES256": elliptic.P256(), "ES384": elliptic.P384(), "ES512": elliptic.P521()}[alg]
		return k.Curve == want
	case alg == "EdDSA":
		_, ok := key.(ed25519.PublicKey)
		return ok
	}
	return false
}

// fitting filters keys to those of alg's type.
func fitting(alg string, keys []any) (any, error) {
	var out gojwt.VerificationKeySet
	for _, k := range keys {
		if keyFits(alg, k) {
			out.Keys = append(out.Keys, k)
		}
	}
	switch len(out.Keys) {
	case 0:
		return nil, errKeyType
	case 1:
		return out.Keys[0], nil
	}
	return out, nil
}

// staticKeys are keys read from files at start-up.
type staticKeys struct{ keys []any }

func (s *staticKeys) key(_ context.Context, t *gojwt.Token) (any, error) {
	return fitting(t.Method.Alg(), s.keys)
}

// minHMACBytes is the smallest HMAC secret accepted (RFC 7518 §3.2 asks
// for at least the hash size; 32 bytes covers HS256).
const minHMACBytes = 32

func loadHMAC(path string) (*staticKeys, error) {
	b, err := readSecretFile(path, "hmac_secret_file")
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	if len(b) < minHMACBytes {
		return nil, fmt.Errorf("jwt: hmac_secret_file %s holds %d bytes; an HMAC secret needs at least %d (e.g. 32 random bytes, base64-encoded)", path, len(b), minHMACBytes)
	}
	return &staticKeys{keys: []any{b}}, nil
}

func loadPublicKeys(paths []string) (*staticKeys, error) {
	s := &staticKeys{}
	var errs []error
	for _, p := range paths {
		keys, err := parsePublicKeysPEM(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.keys = append(s.keys, keys...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

func parsePublicKeysPEM(path string) ([]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("jwt: reading public key file: %w", err)
	}
	var keys []any
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		var k any
		switch blk.Type {
		case "PUBLIC KEY":
			k, err = x509.ParsePKIXPublicKey(blk.Bytes)
		case "RSA PUBLIC KEY":
			k, err = x509.ParsePKCS1PublicKey(blk.Bytes)
		case "CERTIFICATE":
			var c *x509.Certificate
			if c, err = x509.ParseCertificate(blk.Bytes); err == nil {
				k = c.PublicKey
			}
		default:
			if strings.Contains(blk.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("jwt: %s holds a private key; give the public key only (openssl pkey -pubout)", path)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("jwt: %s: parsing %s: %w", path, blk.Type, err)
		}
		switch kk := k.(type) {
		case *rsa.PublicKey:
			if kk.N.BitLen() < minRSABits {
				return nil, fmt.Errorf("jwt: %s: RSA key of %d bits is too small (want at least %d)", path, kk.N.BitLen(), minRSABits)
			}
		case *ecdsa.PublicKey, ed25519.PublicKey:
		default:
			return nil, fmt.Errorf("jwt: %s: unsupported key type %T (want RSA, ECDSA or Ed25519)", path, k)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("jwt: %s holds no PEM public key or certificate", path)
	}
	return keys, nil
}
