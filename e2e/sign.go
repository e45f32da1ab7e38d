package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/moatmq/moat/e2e/internal/format"
)

// sigContext is the first element of a message signature's external AAD.
const sigContext = "moat-e2e/1 signature"

// CertIdentity returns the identity of a certificate as Moat uses it for
// sender IDs and key-service members: the first common name of the
// subject (the same attribute the broker maps with identity source "cn";
// a subject may carry several and Go's Subject.CommonName holds the last),
// or when there is none the first URI SAN, or else the first DNS SAN. It
// returns "" if the certificate has none of them, or if the chosen value
// contains a control character (which could spoof another name).
func CertIdentity(cert *x509.Certificate) string {
	v := firstCommonName(cert)
	switch {
	case v != "":
	case len(cert.URIs) > 0:
		v = cert.URIs[0].String()
	case len(cert.DNSNames) > 0:
		v = cert.DNSNames[0]
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] == 0x7f {
			return ""
		}
	}
	return v
}

// oidCommonName is the X.520 commonName attribute type.
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// firstCommonName returns the first commonName attribute of the subject,
// the rule of internal/tlsconf's identity mapping.
func firstCommonName(cert *x509.Certificate) string {
	for _, a := range cert.Subject.Names {
		if a.Type.Equal(oidCommonName) {
			s, _ := a.Value.(string)
			return s
		}
	}
	return ""
}

// KeyID returns the key ID Moat puts in COSE_Sign1 headers for a
// certificate: the first 16 bytes of SHA-256 of its SubjectPublicKeyInfo.
func KeyID(cert *x509.Certificate) []byte {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return sum[:16]
}

// Signer signs messages with a certificate's private key (Ed25519 or ECDSA
// P-256). The key may live in an HSM behind crypto.Signer. Safe for
// concurrent use if the key is.
type Signer struct {
	cert *x509.Certificate
	key  crypto.Signer
	alg  int64
	kid  []byte
	// Rand is used by ECDSA; nil means crypto/rand.Reader.
	Rand interface{ Read([]byte) (int, error) }
}

// NewSigner returns a signer for cert, whose public key must match key.
func NewSigner(cert *x509.Certificate, key crypto.Signer) (*Signer, error) {
	alg, err := algFor(key.Public())
	if err != nil {
		return nil, err
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("e2e: signing key does not match the certificate's public key")
	}
	if CertIdentity(cert) == "" {
		return nil, errors.New("e2e: signer certificate has no identity (common name, URI or DNS SAN)")
	}
	return &Signer{cert: cert, key: key, alg: alg, kid: KeyID(cert)}, nil
}

// Identity returns the signer's certificate identity.
func (s *Signer) Identity() string { return CertIdentity(s.cert) }

// Certificate returns the signer's certificate.
func (s *Signer) Certificate() *x509.Certificate { return s.cert }

func algFor(pub crypto.PublicKey) (int64, error) {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return format.AlgEdDSA, nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return format.AlgES256, nil
		}
	}
	return 0, fmt.Errorf("e2e: unsupported signing key %T: use Ed25519 or ECDSA P-256", pub)
}

func (s *Signer) signMessage(topic string, ms int64, payload []byte) ([]byte, error) {
	return signCOSE(s.key, s.alg, s.kid, ms, true, sigAAD(topic), payload, s.Rand)
}

func sigAAD(topic string) []byte {
	ext := format.AppendArray(nil, 2)
	ext = format.AppendText(ext, sigContext)
	return format.AppendText(ext, topic)
}

// signCOSE builds a COSE_Sign1 over payload.
func signCOSE(key crypto.Signer, alg int64, kid []byte, ms int64, hasTime bool, extAAD, payload []byte, rnd interface{ Read([]byte) (int, error) }) ([]byte, error) {
	h := format.SignHeader{Alg: alg, KID: kid, TimeMillis: ms, HasTime: hasTime}
	protected := format.AppendSignHeader(nil, &h)
	tbs := format.AppendSigStructure(nil, protected, extAAD, payload)
	var sig []byte
	var err error
	switch alg {
	case format.AlgEdDSA:
		sig, err = key.Sign(nil, tbs, crypto.Hash(0))
	case format.AlgES256:
		digest := sha256.Sum256(tbs)
		if rnd == nil {
			rnd = rand.Reader
		}
		var der []byte
		der, err = key.Sign(rnd, digest[:], crypto.SHA256)
		if err == nil {
			sig, err = derToRaw(der, 32)
		}
	default:
		err = fmt.Errorf("unsupported algorithm %d", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("e2e: signing: %w", err)
	}
	return format.AppendSign1(nil, protected, payload, sig), nil
}

type ecdsaSig struct{ R, S *big.Int }

func derToRaw(der []byte, size int) ([]byte, error) {
	var s ecdsaSig
	rest, err := asn1.Unmarshal(der, &s)
	if err != nil || len(rest) != 0 || s.R.Sign() <= 0 || s.S.Sign() <= 0 {
		return nil, errors.New("bad ECDSA signature encoding")
	}
	out := make([]byte, 2*size)
	s.R.FillBytes(out[:size])
	s.S.FillBytes(out[size:])
	return out, nil
}

// verifyCOSE checks the signature of a parsed COSE_Sign1.
func verifyCOSE(pub crypto.PublicKey, alg int64, protected, extAAD, payload, sig []byte) bool {
	tbs := format.AppendSigStructure(nil, protected, extAAD, payload)
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return alg == format.AlgEdDSA && len(sig) == ed25519.SignatureSize && ed25519.Verify(k, tbs, sig)
	case *ecdsa.PublicKey:
		if alg != format.AlgES256 || k.Curve != elliptic.P256() || len(sig) != 64 {
			return false
		}
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		digest := sha256.Sum256(tbs)
		return ecdsa.Verify(k, digest[:], r, s)
	}
	return false
}

// TrustStore holds the certificates of senders whose signatures are
// accepted. The zero value is an empty store; it is safe for concurrent
// use.
type TrustStore struct {
	mu    sync.RWMutex
	byKID map[string]*x509.Certificate
}

// NewTrustStore returns a store holding certs.
func NewTrustStore(certs ...*x509.Certificate) (*TrustStore, error) {
	t := &TrustStore{}
	for _, c := range certs {
		if err := t.Add(c); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Add trusts the signatures made by cert's key for cert's identity.
func (t *TrustStore) Add(cert *x509.Certificate) error {
	if _, err := algFor(cert.PublicKey); err != nil {
		return err
	}
	if CertIdentity(cert) == "" {
		return errors.New("e2e: certificate has no identity (common name, URI or DNS SAN)")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byKID == nil {
		t.byKID = make(map[string]*x509.Certificate)
	}
	t.byKID[string(KeyID(cert))] = cert
	return nil
}

func (t *TrustStore) lookup(kid []byte) *x509.Certificate {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.byKID[string(kid)]
}

// verifyMessage checks a message signature: trusted key, valid at the
// message time, same timestamp as the encryption header, same identity as
// the sender.
func (t *TrustStore) verifyMessage(sign1 []byte, topic string, ms int64, sender string) ([]byte, *x509.Certificate, error) {
	protected, payload, sig, err := format.ParseSign1(sign1)
	if err != nil {
		return nil, nil, wrapf(ErrBadSignature, "%v", err)
	}
	h, err := format.ParseSignHeader(protected)
	if err != nil {
		return nil, nil, wrapf(ErrBadSignature, "%v", err)
	}
	cert := t.lookup(h.KID)
	if cert == nil {
		return nil, nil, wrapf(ErrBadSignature, "signer key %x is not in the trust store", h.KID)
	}
	if !verifyCOSE(cert.PublicKey, h.Alg, protected, sigAAD(topic), payload, sig) {
		return nil, nil, wrapf(ErrBadSignature, "signature by %q does not verify", CertIdentity(cert))
	}
	if !h.HasTime || h.TimeMillis != ms {
		return nil, nil, wrapf(ErrBadSignature, "signed timestamp differs from the message timestamp")
	}
	if id := CertIdentity(cert); id != sender {
		return nil, nil, wrapf(ErrBadSignature, "signed by %q but sent as %q", id, sender)
	}
	at := time.UnixMilli(ms)
	if at.Before(cert.NotBefore) || at.After(cert.NotAfter) {
		return nil, nil, wrapf(ErrBadSignature, "signer certificate of %q was not valid at %s", sender, at.UTC().Format(time.RFC3339))
	}
	return bytes.Clone(payload), cert, nil
}

// SignPayload signs payload as a COSE_Sign1 with the signer's certificate
// key, the current time (ms) in the protected header, and context as
// external associated data, so a signature made for one purpose (say
// "moat-ota/1 manifest") never verifies for another.
func (s *Signer) SignPayload(context string, now time.Time, payload []byte) ([]byte, error) {
	return signCOSE(s.key, s.alg, s.kid, now.UnixMilli(), true, contextAAD(context), payload, s.Rand)
}

// VerifyPayload verifies a COSE_Sign1 made by SignPayload with the same
// context against the trusted certificates, and returns the payload, the
// signer's certificate and the signing time. The certificate must have been
// valid at the signing time. Errors wrap [ErrBadSignature].
func (t *TrustStore) VerifyPayload(context string, sign1 []byte) ([]byte, *x509.Certificate, time.Time, error) {
	protected, payload, sig, err := format.ParseSign1(sign1)
	if err != nil {
		return nil, nil, time.Time{}, wrapf(ErrBadSignature, "%v", err)
	}
	h, err := format.ParseSignHeader(protected)
	if err != nil {
		return nil, nil, time.Time{}, wrapf(ErrBadSignature, "%v", err)
	}
	cert := t.lookup(h.KID)
	if cert == nil {
		return nil, nil, time.Time{}, wrapf(ErrBadSignature, "signer key %x is not in the trust store", h.KID)
	}
	if !verifyCOSE(cert.PublicKey, h.Alg, protected, contextAAD(context), payload, sig) {
		return nil, nil, time.Time{}, wrapf(ErrBadSignature, "signature by %q does not verify", CertIdentity(cert))
	}
	if !h.HasTime {
		return nil, nil, time.Time{}, wrapf(ErrBadSignature, "signature has no timestamp")
	}
	at := time.UnixMilli(h.TimeMillis)
	if at.Before(cert.NotBefore) || at.After(cert.NotAfter) {
		return nil, nil, time.Time{}, wrapf(ErrBadSignature, "signer certificate of %q was not valid at %s", CertIdentity(cert), at.UTC().Format(time.RFC3339))
	}
	return bytes.Clone(payload), cert, at, nil
}

func contextAAD(context string) []byte {
	return format.AppendText(format.AppendArray(nil, 1), context)
}
