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
	"strings"
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
	ID string `json:"id"`
	// Names are the SANs ("URI:...") a certificate enrolled with this
	// token may carry; none when empty.
	Names   []string  `json:"names,omitempty"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// TokenInfo describes an unused token without revealing it.
type TokenInfo struct {
	ID      string
	Names   []string
	Created time.Time
	Expires time.Time
	// Hash is the first 12 hex digits of SHA-256(token), for display.
	Hash string
}

func tokenKey(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return []byte(hex.EncodeToString(h[:]))
}

// TokenRequest describes a bootstrap token.
type TokenRequest struct {
	// ID is the device ID (the certificate's CN) the token enrolls.
	ID string
	// Names are the subject alternative names the enrolled certificate
	// may carry, as "URI:spiffe://..." (bare absolute URIs are taken as
	// URIs). The device may request any subset; nil allows none.
	Names []string
	// TTL is how long the token can be used; 0 means DefaultTokenTTL.
	TTL time.Duration
}

// CreateToken makes a one-time bootstrap token that authorizes a single
// EST enrollment of device id, with no SANs, within ttl (0 means
// DefaultTokenTTL). See CreateTokenFor.
func (ca *CA) CreateToken(id string, ttl time.Duration) (string, error) {
	return ca.CreateTokenFor(TokenRequest{ID: id, TTL: ttl})
}

// CreateTokenFor makes a one-time bootstrap token that authorizes a
// single EST enrollment of a certificate for req.ID carrying no names
// beyond req.Names. The returned secret is shown once; only its hash is
// stored.
func (ca *CA) CreateTokenFor(req TokenRequest) (string, error) {
	id, ttl := req.ID, req.TTL
	if !ValidDeviceID(id) {
		return "", fmt.Errorf("pki: device ID %q is invalid (1-64 letters, digits, '.', '_', '-', '@')", id)
	}
	if ttl < 0 {
		return "", errors.New("pki: token TTL must not be negative")
	}
	ttl = orDur(ttl, DefaultTokenTTL)
	names, err := deviceNames(req.Names)
	if err != nil {
		return "", err
	}
	b := make([]byte, 32)
	if _, err := io.ReadFull(ca.cfg.rand(), b); err != nil {
		return "", fmt.Errorf("pki: reading randomness: %w", err)
	}
	tok := base64.RawURLEncoding.EncodeToString(b)
	now := ca.cfg.now()
	rec, _ := json.Marshal(tokenRecord{ID: id, Names: names, Created: now.UTC(), Expires: now.Add(ttl).UTC()})
	err = ca.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).Put(tokenKey(tok), rec)
	})
	if err != nil {
		return "", err
	}
	ca.cfg.logger().Info("pki: created bootstrap token", "id", id, "names", strings.Join(names, ","), "expires", now.Add(ttl))
	return tok, nil
}

// deviceNames checks SANs given for a device (URIs only, the schemes the
// device profile allows) and returns them in canonical "URI:..." form.
func deviceNames(entries []string) ([]string, error) {
	var withKind []string
	for _, e := range entries {
		for _, s := range strings.Split(e, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			if k, _, _ := strings.Cut(s, ":"); !strings.EqualFold(k, "URI") && !strings.EqualFold(k, "DNS") && !strings.EqualFold(k, "IP") {
				s = "URI:" + s
			}
			withKind = append(withKind, s)
		}
	}
	dns, ips, uris, err := ParseSANs(withKind)
	if err != nil {
		return nil, err
	}
	if len(dns)+len(ips) > 0 {
		return nil, errors.New("pki: device certificates carry only URI SANs (e.g. URI:spiffe://example.org/device/ID)")
	}
	for _, u := range uris {
		if u.Scheme != "spiffe" && u.Scheme != "urn" && u.Scheme != "https" {
			return nil, fmt.Errorf("pki: URI SAN %q: scheme must be spiffe, urn or https", u)
		}
	}
	return canonicalNames(nil, nil, uris, nil), nil
}

// consumeToken checks token for id and the names the certificate asks
// for, and deletes the token; it must run inside the transaction that
// records the issued certificate.
func (ca *CA) consumeToken(tx *bolt.Tx, id, token string, csr *x509.CertificateRequest) error {
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
	bad, err := unauthorizedNames(csr, ProfileDevice, r.Names)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		allowed := "none"
		if len(r.Names) > 0 {
			allowed = strings.Join(r.Names, ", ")
		}
		return fmt.Errorf("%w: %s (the token for %q allows: %s)", ErrNamesNotAuthorized, strings.Join(bad, ", "), id, allowed)
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
			out = append(out, TokenInfo{ID: r.ID, Names: r.Names, Created: r.Created, Expires: r.Expires, Hash: string(k[:12])})
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Expires.Before(out[j].Expires) })
	return out, err
}

// EnrollWithToken signs csr for device id if token is a valid bootstrap
// token for id and every name the CSR asks for is among the token's
// names. The token is consumed in the same transaction that records the
// certificate; a CSR refused by policy does not use it up.
func (ca *CA) EnrollWithToken(id, token string, csr *x509.CertificateRequest) (*Issued, error) {
	// The token's names are checked in the transaction; here the CSR only
	// has to pass the profile, so any URI is let through to that check.
	ir, err := ca.csrToIssue(SignRequest{CSR: csr, Profile: ProfileDevice, AuthorizedID: id, AuthorizedNames: CSRNames(csr), AuthorizedBy: "est-token"})
	if err != nil {
		return nil, err
	}
	return ca.issue(ir, issueHooks{inTx: func(tx *bolt.Tx, _ *Record) error { return ca.consumeToken(tx, id, token, csr) }})
}
