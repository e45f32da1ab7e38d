package pki

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// DefaultTokenTTL is the lifetime of a bootstrap token when none is given.
const DefaultTokenTTL = 24 * time.Hour

// ErrTokenInvalid is returned when a bootstrap token is unknown, already
// used or expired; the three cases are deliberately not told apart.
var ErrTokenInvalid = errors.New("pki: bootstrap token is invalid, used or expired")

// ErrTokenWrongID is returned when a valid token is presented for another
// device ID than the one it was created for.
var ErrTokenWrongID = errors.New("pki: bootstrap token was issued for another device ID")

// tokenRecord is stored under SHA-256(token); the token itself is never
// stored. Tokens carry 256 random bits, so a fast hash suffices.
type tokenRecord struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// TokenInfo describes an unused token without revealing it.
type TokenInfo struct {
	ID      string
	Created time.Time
	Expires time.Time
	// Hash is the first 12 hex digits of SHA-256(token), for display.
	Hash string
}

func tokenKey(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return []byte(hex.EncodeToString(h[:]))
}

// CreateToken makes a one-time bootstrap token that authorizes a single
// EST enrollment of device id within ttl (0 means DefaultTokenTTL). The
// returned secret is shown once; only its hash is stored.
func (ca *CA) CreateToken(id string, ttl time.Duration) (string, error) {
	if !ValidDeviceID(id) {
		return "", fmt.Errorf("pki: device ID %q is invalid (1-64 letters, digits, '.', '_', '-', '@')", id)
	}
	if ttl < 0 {
		return "", errors.New("pki: token TTL must not be negative")
	}
	ttl = orDur(ttl, DefaultTokenTTL)
	b := make([]byte, 32)
	if _, err := io.ReadFull(ca.cfg.rand(), b); err != nil {
		return "", fmt.Errorf("pki: reading randomness: %w", err)
	}
	tok := base64.RawURLEncoding.EncodeToString(b)
	now := ca.cfg.now()
	rec, _ := json.Marshal(tokenRecord{ID: id, Created: now.UTC(), Expires: now.Add(ttl).UTC()})
	err := ca.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).Put(tokenKey(tok), rec)
	})
	if err != nil {
		return "", err
	}
	ca.cfg.logger().Info("pki: created bootstrap token", "id", id, "expires", now.Add(ttl))
	return tok, nil
}

// consumeToken checks token for id and deletes it; it must run inside
// the transaction that records the issued certificate.
func (ca *CA) consumeToken(tx *bolt.Tx, id, token string) error {
	b := tx.Bucket(bucketTokens)
	k := tokenKey(token)
	v := b.Get(k)
	if v == nil {
		return ErrTokenInvalid
	}
	var r tokenRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return ErrTokenInvalid
	}
	if !ca.cfg.now().Before(r.Expires) {
		b.Delete(k)
		return ErrTokenInvalid
	}
	if subtle.ConstantTimeCompare([]byte(r.ID), []byte(id)) != 1 {
		return ErrTokenWrongID
	}
	return b.Delete(k)
}

// Tokens lists unused, unexpired tokens.
func (ca *CA) Tokens() ([]TokenInfo, error) {
	now := ca.cfg.now()
	var out []TokenInfo
	err := ca.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).ForEach(func(k, v []byte) error {
			var r tokenRecord
			if json.Unmarshal(v, &r) != nil || !now.Before(r.Expires) {
				return nil
			}
			out = append(out, TokenInfo{ID: r.ID, Created: r.Created, Expires: r.Expires, Hash: string(k[:12])})
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Expires.Before(out[j].Expires) })
	return out, err
}

// EnrollWithToken signs csr for device id if token is a valid bootstrap
// token for id. The token is consumed in the same transaction that
// records the certificate; a CSR refused by policy does not use it up.
func (ca *CA) EnrollWithToken(id, token string, csr *x509.CertificateRequest) (*Issued, error) {
	ir, err := ca.csrToIssue(SignRequest{CSR: csr, Profile: ProfileDevice, AuthorizedID: id, AuthorizedBy: "est-token"})
	if err != nil {
		return nil, err
	}
	return ca.issue(ir, func(tx *bolt.Tx) error { return ca.consumeToken(tx, id, token) })
}
