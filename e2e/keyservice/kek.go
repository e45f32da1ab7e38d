package keyservice

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"golang.org/x/crypto/argon2"
)

// KEKBackend wraps and unwraps data-encryption keys under a key-encryption
// key (envelope encryption, the seed's DEK/KEK design). A KMS or HSM
// backend implements it by calling out to the device; the KEK then never
// enters this process. aad binds a wrapped key to its purpose (group and
// epoch): unwrapping with another aad fails. Implementations must be safe
// for concurrent use.
type KEKBackend interface {
	Wrap(plaintext, aad []byte) ([]byte, error)
	Unwrap(wrapped, aad []byte) ([]byte, error)
}

var _ KEKBackend = (*LocalKEK)(nil)

// LocalKEK is a KEK held in memory: AES-256-GCM with random nonces,
// wrapped = nonce(12) ‖ ciphertext ‖ tag(16). Safe for concurrent use.
type LocalKEK struct {
	aead cipher.AEAD
}

// NewLocalKEK returns a KEK from 32 bytes of key. The key is copied.
func NewLocalKEK(key []byte) (*LocalKEK, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("keyservice: KEK must be 32 bytes, got %d", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("keyservice: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("keyservice: %w", err)
	}
	return &LocalKEK{aead: aead}, nil
}

// LoadKEKFile reads a KEK file: 32 bytes of binary key or 64 hex digits.
// It refuses a file that group or others can read.
func LoadKEKFile(path string) (*LocalKEK, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("keyservice: KEK file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("keyservice: KEK file %s has mode %v; it must not be readable by group or others (chmod 600)", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keyservice: KEK file: %w", err)
	}
	defer clear(data)
	if len(data) == 32 {
		return NewLocalKEK(data)
	}
	s := bytes.TrimSpace(data)
	if len(s) == 64 {
		key := make([]byte, 32)
		defer clear(key)
		if _, err := hex.Decode(key, s); err == nil {
			return NewLocalKEK(key)
		}
	}
	return nil, fmt.Errorf("keyservice: KEK file %s must hold 32 bytes of binary key or 64 hex digits", path)
}

// GenerateKEKFile writes a new random KEK (64 hex digits) to path with
// mode 0600; it refuses to overwrite an existing file.
func GenerateKEKFile(path string) error {
	key := make([]byte, 32)
	rand.Read(key)
	defer clear(key)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keyservice: creating KEK file: %w", err)
	}
	if _, err := fmt.Fprintf(f, "%x\n", key); err != nil {
		f.Close()
		return fmt.Errorf("keyservice: writing KEK file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("keyservice: writing KEK file: %w", err)
	}
	return f.Close()
}

// String does not reveal the key.
func (k *LocalKEK) String() string { return "LocalKEK(REDACTED)" }

// Wrap implements [KEKBackend].
func (k *LocalKEK) Wrap(plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, 12, 12+len(plaintext)+16)
	if _, err := rand.Read(out); err != nil {
		return nil, err
	}
	return k.aead.Seal(out, out[:12], plaintext, aad), nil
}

// Unwrap implements [KEKBackend].
func (k *LocalKEK) Unwrap(wrapped, aad []byte) ([]byte, error) {
	if len(wrapped) < 28 {
		return nil, errors.New("keyservice: wrapped key too short")
	}
	pt, err := k.aead.Open(nil, wrapped[:12], wrapped[12:], aad)
	if err != nil {
		return nil, errors.New("keyservice: wrapped key does not unwrap (wrong KEK or corrupted store)")
	}
	return pt, nil
}

// Argon2Params are the argon2id parameters that turn a passphrase into a
// KEK. They are stored with the salt when a store is created.
type Argon2Params struct {
	Time    uint32 // iterations
	Memory  uint32 // KiB
	Threads uint8
}

// DefaultArgon2 follows RFC 9106's second recommended option, with 64 MiB.
var DefaultArgon2 = Argon2Params{Time: 3, Memory: 64 * 1024, Threads: 4}

func passphraseKEK(passphrase, salt []byte, p Argon2Params) (*LocalKEK, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("keyservice: empty passphrase")
	}
	key := argon2.IDKey(passphrase, salt, p.Time, p.Memory, p.Threads, 32)
	defer clear(key)
	return NewLocalKEK(key)
}
