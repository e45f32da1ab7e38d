package pki

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
)

// Encrypted PKCS#8 keys ("ENCRYPTED PRIVATE KEY", RFC 5958 §3) as openssl
// writes them (openssl req -keyout without -nodes, openssl genpkey -aes256,
// openssl pkcs8 -topk8): PBES2 (RFC 8018 §6.2) with PBKDF2 and AES-CBC or
// DES-EDE3-CBC. Only decryption is offered, to import a CA made with
// openssl; Moat's own encrypted keys use the format in keyenc.go.

var (
	oidPBES2      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidDESEDE3CBC = asn1.ObjectIdentifier{1, 2, 840, 113549, 3, 7}
	oidAES128CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES192CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 22}
	oidAES256CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
)

var pbkdf2PRFs = map[string]func() hash.Hash{
	"1.2.840.113549.2.7":  sha1.New, // hmacWithSHA1, the default
	"1.2.840.113549.2.8":  sha256.New224,
	"1.2.840.113549.2.9":  sha256.New,
	"1.2.840.113549.2.10": sha512.New384,
	"1.2.840.113549.2.11": sha512.New,
}

// maxPBKDF2Iterations bounds the work a key file can ask for.
const maxPBKDF2Iterations = 10_000_000

type encryptedPKCS8 struct {
	Algo pkix.AlgorithmIdentifier
	Data []byte
}

type pbes2Params struct {
	KDF    pkix.AlgorithmIdentifier
	Cipher pkix.AlgorithmIdentifier
}

type pbkdf2Params struct {
	Salt       []byte
	Iterations int
	KeyLength  int                      `asn1:"optional"`
	PRF        pkix.AlgorithmIdentifier `asn1:"optional"`
}

// ErrKeyEncrypted is returned by ParseKeyPEM for an encrypted key; give
// the passphrase to ParseKeyPEMWithPassphrase.
var ErrKeyEncrypted = errors.New("pki: the private key is encrypted")

// IsEncryptedKeyPEM reports whether the first private key in data is an
// encrypted PKCS#8 key.
func IsEncryptedKeyPEM(data []byte) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		switch b.Type {
		case "ENCRYPTED PRIVATE KEY":
			return true
		case "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY":
			return false
		}
	}
}

// ParseKeyPEMWithPassphrase is ParseKeyPEM that also decrypts an
// "ENCRYPTED PRIVATE KEY" block with passphrase.
func ParseKeyPEMWithPassphrase(data, passphrase []byte) (crypto.Signer, error) {
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return ParseKeyPEM(data)
		}
		if b.Type != "ENCRYPTED PRIVATE KEY" {
			continue
		}
		der, err := decryptPKCS8(b.Bytes, passphrase)
		if err != nil {
			return nil, err
		}
		k, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return nil, ErrWrongPassphrase // CBC padding passed by chance
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("pki: unsupported private key type %T", k)
		}
		return s, nil
	}
}

func decryptPKCS8(der, passphrase []byte) ([]byte, error) {
	unsupported := errors.New("pki: the key's encryption is not supported (PBES2 with PBKDF2 and AES-CBC or DES-EDE3-CBC are); re-encrypt it with: openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out KEY.new")
	var ep encryptedPKCS8
	if rest, err := asn1.Unmarshal(der, &ep); err != nil || len(rest) > 0 {
		return nil, errors.New("pki: malformed ENCRYPTED PRIVATE KEY")
	}
	if !ep.Algo.Algorithm.Equal(oidPBES2) {
		return nil, unsupported
	}
	var p pbes2Params
	if _, err := asn1.Unmarshal(ep.Algo.Parameters.FullBytes, &p); err != nil || !p.KDF.Algorithm.Equal(oidPBKDF2) {
		return nil, unsupported
	}
	var kp pbkdf2Params
	if _, err := asn1.Unmarshal(p.KDF.Parameters.FullBytes, &kp); err != nil {
		return nil, unsupported
	}
	if kp.Iterations < 1 || kp.Iterations > maxPBKDF2Iterations || len(kp.Salt) == 0 || len(kp.Salt) > 64 {
		return nil, errors.New("pki: the key's PBKDF2 parameters are out of range")
	}
	prf := sha1.New
	if len(kp.PRF.Algorithm) > 0 {
		var ok bool
		if prf, ok = pbkdf2PRFs[kp.PRF.Algorithm.String()]; !ok {
			return nil, unsupported
		}
	}
	var iv []byte
	if _, err := asn1.Unmarshal(p.Cipher.Parameters.FullBytes, &iv); err != nil {
		return nil, unsupported
	}
	var keyLen int
	var newBlock func([]byte) (cipher.Block, error)
	switch {
	case p.Cipher.Algorithm.Equal(oidAES128CBC):
		keyLen, newBlock = 16, aes.NewCipher
	case p.Cipher.Algorithm.Equal(oidAES192CBC):
		keyLen, newBlock = 24, aes.NewCipher
	case p.Cipher.Algorithm.Equal(oidAES256CBC):
		keyLen, newBlock = 32, aes.NewCipher
	case p.Cipher.Algorithm.Equal(oidDESEDE3CBC):
		keyLen, newBlock = 24, des.NewTripleDESCipher
	default:
		return nil, unsupported
	}
	if kp.KeyLength != 0 && kp.KeyLength != keyLen {
		return nil, unsupported
	}
	k, err := pbkdf2.Key(prf, string(passphrase), kp.Salt, kp.Iterations, keyLen)
	if err != nil {
		return nil, fmt.Errorf("pki: deriving the key: %w", err)
	}
	blk, err := newBlock(k)
	if err != nil {
		return nil, err
	}
	bs := blk.BlockSize()
	if len(iv) != bs || len(ep.Data) == 0 || len(ep.Data)%bs != 0 {
		return nil, errors.New("pki: malformed ENCRYPTED PRIVATE KEY")
	}
	out := make([]byte, len(ep.Data))
	cipher.NewCBCDecrypter(blk, iv).CryptBlocks(out, ep.Data)
	// PKCS#7 padding; a wrong passphrase almost always breaks it.
	n := int(out[len(out)-1])
	if n < 1 || n > bs {
		return nil, ErrWrongPassphrase
	}
	for _, c := range out[len(out)-n:] {
		if int(c) != n {
			return nil, ErrWrongPassphrase
		}
	}
	return out[:len(out)-n], nil
}
