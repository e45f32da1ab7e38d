package e2e

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
)

var (
	_ Sealer = (*RawKey)(nil)
	_ Opener = (*RawKey)(nil)
)

// RawOverhead is the size a raw message adds to its plaintext.
const RawOverhead = nonceSize + tagSize

// RawKey reads and writes the seed's raw format, nonce(12) ‖ ciphertext ‖
// tag(16), AES-256-GCM with a pre-shared key and no associated data, as the
// Python snippet of the seed (PyCryptodome AES.MODE_GCM, or
// cryptography's AESGCM) produces. The format binds nothing: not the
// topic, not the sender, not the time, and nonces are random, so a key
// must not seal more than 2³² messages. Use it only for devices that
// cannot run the group format. Safe for concurrent use.
type RawKey struct {
	aead cipher.AEAD
	// Rand supplies nonces; nil means crypto/rand.Reader.
	Rand io.Reader
}

// NewRawKey returns a raw-format cipher for a 32-byte AES-256 key. The key
// is copied.
func NewRawKey(key []byte) (*RawKey, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("e2e: raw key must be %d bytes (AES-256), got %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("e2e: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("e2e: %w", err)
	}
	return &RawKey{aead: aead}, nil
}

// ParseRawKey parses the contents of a raw key file: exactly 32 bytes of
// binary key, or 64 hexadecimal digits (surrounding white space allowed).
func ParseRawKey(data []byte) (*RawKey, error) {
	if len(data) == KeySize {
		return NewRawKey(data)
	}
	s := bytes.TrimSpace(data)
	if len(s) == 2*KeySize {
		key := make([]byte, KeySize)
		if _, err := hex.Decode(key, s); err == nil {
			return NewRawKey(key)
		}
	}
	return nil, fmt.Errorf("e2e: raw key file must hold 32 bytes of binary key or 64 hex digits (found %d bytes)", len(data))
}

// String does not reveal the key.
func (k *RawKey) String() string { return "RawKey(REDACTED)" }

// Seal encrypts plaintext with a random nonce. topic is ignored: the raw
// format cannot bind it.
func (k *RawKey) Seal(topic string, plaintext []byte) ([]byte, error) {
	out := make([]byte, nonceSize, nonceSize+len(plaintext)+tagSize)
	r := k.Rand
	if r == nil {
		r = rand.Reader
	}
	if _, err := io.ReadFull(r, out); err != nil {
		return nil, fmt.Errorf("e2e: generating nonce: %w", err)
	}
	return k.aead.Seal(out, out[:nonceSize], plaintext, nil), nil
}

// Open decrypts a raw message. topic is only copied into the result.
func (k *RawKey) Open(topic string, msg []byte) (*Message, error) {
	if len(msg) < RawOverhead {
		return nil, wrapf(ErrMalformed, "raw message of %d bytes is shorter than nonce and tag (%d)", len(msg), RawOverhead)
	}
	pt, err := k.aead.Open(nil, msg[:nonceSize], msg[nonceSize:], nil)
	if err != nil {
		return nil, wrapf(ErrTampered, "raw message does not authenticate (wrong key or altered)")
	}
	return &Message{Topic: topic, Plaintext: pt}, nil
}
