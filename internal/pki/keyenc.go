package pki

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/scrypt"
)

// The encrypted key format ("MOAT ENCRYPTED PRIVATE KEY" PEM block) is
// deliberately small and uses only standard primitives:
//
//	offset size  field
//	0      8     magic "moatkey1"
//	8      1     KDF identifier, 1 = scrypt
//	9      1     log2(N) of scrypt, 10..20
//	10     1     scrypt r, 1..32
//	11     1     scrypt p, 1..16
//	12     16    salt (random)
//	28     12    AES-GCM nonce (random)
//	40     ...   AES-256-GCM ciphertext and 16-byte tag of the PKCS#8 DER key
//
// The 32-byte AES key is scrypt(passphrase, salt, N, r, p). The 40 header
// bytes are the GCM additional data, so no parameter can be changed without
// the tag failing. scrypt is in golang.org/x/crypto and is memory-hard;
// the default N=2^15, r=8, p=1 (32 MiB, about 0.1 s) is the interactive
// setting from the scrypt paper, adequate for a passphrase that is used
// once per CA lifetime and whose file is also mode 0600.
const (
	encryptedKeyPEMType = "MOAT ENCRYPTED PRIVATE KEY"
	encKeyMagic         = "moatkey1"
	encKeyHeaderLen     = 40
	kdfScrypt           = 1
	defaultScryptLogN   = 15
)

// scryptLogN is the cost EncryptKey uses; tests lower it.
var scryptLogN byte = defaultScryptLogN

// EncryptKey encrypts key with passphrase and returns a PEM block in the
// format described above. rnd nil means crypto/rand.
func EncryptKey(key crypto.Signer, passphrase []byte, rnd io.Reader) ([]byte, error) {
	return encryptKey(key, passphrase, rnd, scryptLogN)
}

func encryptKey(key crypto.Signer, passphrase []byte, rnd io.Reader, logN byte) ([]byte, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("pki: empty passphrase")
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encoding private key: %w", err)
	}
	hdr := make([]byte, encKeyHeaderLen)
	copy(hdr, encKeyMagic)
	hdr[8], hdr[9], hdr[10], hdr[11] = kdfScrypt, logN, 8, 1
	if _, err := io.ReadFull(rnd, hdr[12:40]); err != nil {
		return nil, fmt.Errorf("pki: reading randomness: %w", err)
	}
	aead, err := keyAEAD(passphrase, hdr)
	if err != nil {
		return nil, err
	}
	out := aead.Seal(hdr, hdr[28:40], der, hdr)
	return pem.EncodeToMemory(&pem.Block{Type: encryptedKeyPEMType, Bytes: out}), nil
}

// encKeyHeader checks the fixed part of an encrypted key and returns its
// header and ciphertext. It never runs the KDF.
func encKeyHeader(b []byte) (hdr, ct []byte, err error) {
	if len(b) < encKeyHeaderLen+16 {
		return nil, nil, errors.New("pki: encrypted key is truncated")
	}
	if string(b[:8]) != encKeyMagic {
		return nil, nil, errors.New("pki: not a moat encrypted key (bad magic)")
	}
	if b[8] != kdfScrypt {
		return nil, nil, fmt.Errorf("pki: encrypted key uses unknown KDF %d", b[8])
	}
	if b[9] < 10 || b[9] > 20 || b[10] < 1 || b[10] > 32 || b[11] < 1 || b[11] > 16 {
		return nil, nil, errors.New("pki: encrypted key has out-of-range scrypt parameters")
	}
	return b[:encKeyHeaderLen], b[encKeyHeaderLen:], nil
}

func keyAEAD(passphrase, hdr []byte) (cipher.AEAD, error) {
	k, err := scrypt.Key(passphrase, hdr[12:28], 1<<hdr[9], int(hdr[10]), int(hdr[11]), 32)
	if err != nil {
		return nil, fmt.Errorf("pki: deriving key: %w", err)
	}
	blk, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// ErrWrongPassphrase is returned by DecryptKey when the tag does not verify.
var ErrWrongPassphrase = errors.New("pki: wrong passphrase (or the key file was modified)")

// DecryptKey decrypts a key made by EncryptKey.
func DecryptKey(pemData, passphrase []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(pemData)
	if blk == nil || blk.Type != encryptedKeyPEMType {
		return nil, fmt.Errorf("pki: no %s PEM block found", encryptedKeyPEMType)
	}
	hdr, ct, err := encKeyHeader(blk.Bytes)
	if err != nil {
		return nil, err
	}
	aead, err := keyAEAD(passphrase, hdr)
	if err != nil {
		return nil, err
	}
	der, err := aead.Open(nil, hdr[28:40], ct, hdr)
	if err != nil {
		return nil, ErrWrongPassphrase
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("pki: decrypted key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("pki: unsupported private key type %T", k)
	}
	return s, nil
}
