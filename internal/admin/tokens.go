package admin

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// TokensFileName is the token file's name in the data directory.
const TokensFileName = "admin-tokens.json"

// Role is what a token may do.
type Role string

// Roles. A viewer reads; an operator also changes state (kick, bans,
// retained messages, revocation, reload).
const (
	RoleViewer   Role = "viewer"
	RoleOperator Role = "operator"
)

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleViewer, RoleOperator:
		return r, nil
	}
	return "", fmt.Errorf("admin: unknown role %q (viewer or operator)", s)
}

// tokenPrefix marks Moat admin tokens, so that a leaked one is easy to
// recognise in a secret scanner.
const tokenPrefix = "moat_"

// maxTokensFile bounds the token file read; maxTokens the entries.
const (
	maxTokensFile = 1 << 20
	maxTokens     = 1000
	maxNameLen    = 64
)

// TokenRecord is one token as stored: its name, role and the SHA-256 of
// the token. The token itself is never stored.
type TokenRecord struct {
	Name    string    `json:"name"`
	Role    Role      `json:"role"`
	Hash    string    `json:"sha256"`
	Created time.Time `json:"created"`
}

type tokensFile struct {
	Version int           `json:"version"`
	Tokens  []TokenRecord `json:"tokens"`
}

func validName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("admin: token name must be 1 to %d characters", maxNameLen)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.@", r)) {
			return fmt.Errorf("admin: token name %q: use letters, digits and - _ . @ only", name)
		}
	}
	return nil
}

// ReadTokens reads a token file; a missing file holds no tokens.
func ReadTokens(path string) ([]TokenRecord, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("admin: token file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokensFile+1))
	if err != nil {
		return nil, fmt.Errorf("admin: token file %s: %w", path, err)
	}
	if len(data) > maxTokensFile {
		return nil, fmt.Errorf("admin: token file %s is larger than %d bytes", path, maxTokensFile)
	}
	var tf tokensFile
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tf); err != nil {
		return nil, fmt.Errorf("admin: token file %s: %w", path, err)
	}
	if tf.Version != 1 {
		return nil, fmt.Errorf("admin: token file %s: unknown version %d", path, tf.Version)
	}
	if len(tf.Tokens) > maxTokens {
		return nil, fmt.Errorf("admin: token file %s holds more than %d tokens", path, maxTokens)
	}
	seen := map[string]bool{}
	for _, t := range tf.Tokens {
		if err := validName(t.Name); err != nil {
			return nil, fmt.Errorf("admin: token file %s: %w", path, err)
		}
		if _, err := ParseRole(string(t.Role)); err != nil {
			return nil, fmt.Errorf("admin: token file %s: token %s: %w", path, t.Name, err)
		}
		if h, err := hex.DecodeString(t.Hash); err != nil || len(h) != sha256.Size {
			return nil, fmt.Errorf("admin: token file %s: token %s: sha256 is not 64 hex digits", path, t.Name)
		}
		if seen[t.Name] {
			return nil, fmt.Errorf("admin: token file %s: token name %s appears twice", path, t.Name)
		}
		seen[t.Name] = true
	}
	return tf.Tokens, nil
}

// writeTokens writes the file atomically with mode 0600.
func writeTokens(path string, recs []TokenRecord) error {
	slices.SortFunc(recs, func(a, b TokenRecord) int { return strings.Compare(a.Name, b.Name) })
	data, err := json.MarshalIndent(tokensFile{Version: 1, Tokens: recs}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("admin: token file: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".admin-tokens-*")
	if err != nil {
		return fmt.Errorf("admin: token file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("admin: token file: %w", err)
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("admin: token file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("admin: token file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("admin: token file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("admin: token file: %w", err)
	}
	return nil
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

// CreateToken adds a token named name with role to the file at path and
// returns the token, which is not stored anywhere: the caller shows it
// once. The 256-bit token is drawn from r (crypto/rand when nil).
func CreateToken(path, name string, role Role, now time.Time, r io.Reader) (string, error) {
	if err := validName(name); err != nil {
		return "", err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return "", err
	}
	if r == nil {
		r = rand.Reader
	}
	var raw [32]byte
	if _, err := io.ReadFull(r, raw[:]); err != nil {
		return "", fmt.Errorf("admin: drawing a token: %w", err)
	}
	tok := tokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	recs, err := ReadTokens(path)
	if err != nil {
		return "", err
	}
	for _, t := range recs {
		if t.Name == name {
			return "", fmt.Errorf("admin: a token named %s exists; revoke it first or pick another name", name)
		}
	}
	if len(recs) >= maxTokens {
		return "", fmt.Errorf("admin: the token file already holds %d tokens; revoke some first", len(recs))
	}
	recs = append(recs, TokenRecord{Name: name, Role: role, Hash: hashToken(tok), Created: now.UTC().Truncate(time.Second)})
	if err := writeTokens(path, recs); err != nil {
		return "", err
	}
	return tok, nil
}

// RevokeToken removes the token named name from the file at path.
func RevokeToken(path, name string) error {
	recs, err := ReadTokens(path)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(recs, func(t TokenRecord) bool { return t.Name == name })
	if i < 0 {
		return fmt.Errorf("admin: no token named %s in %s", name, path)
	}
	return writeTokens(path, slices.Delete(recs, i, i+1))
}

// Identity is who a request authenticated as.
type Identity struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
}

// Tokens checks bearer tokens against a token file, re-reading it when
// it changes (its size or modification time), so that created and
// revoked tokens apply without a restart. A file that fails to read
// accepts no token (fail closed) until it is fixed. Safe for concurrent
// use.
type Tokens struct {
	path string

	mu      sync.Mutex
	sig     string // size and modification time of the file last read
	recs    []TokenRecord
	hashes  [][]byte
	lastErr error
}

// NewTokens returns a checker for the token file at path.
func NewTokens(path string) *Tokens { return &Tokens{path: path} }

// Path returns the token file's path.
func (t *Tokens) Path() string { return t.path }

// refreshLocked re-reads the file if it changed.
func (t *Tokens) refreshLocked() {
	sig := "missing"
	if fi, err := os.Stat(t.path); err == nil {
		sig = fmt.Sprintf("%d/%d", fi.Size(), fi.ModTime().UnixNano())
	}
	if sig == t.sig {
		return
	}
	recs, err := ReadTokens(t.path)
	t.sig = sig
	t.lastErr = err
	if err != nil {
		t.recs, t.hashes = nil, nil
		return
	}
	t.recs = recs
	t.hashes = make([][]byte, len(recs))
	for i, r := range recs {
		t.hashes[i], _ = hex.DecodeString(r.Hash)
	}
}

// Check returns the identity of tok. Every stored hash is compared in
// constant time, so the time taken says nothing about which token (or
// how much of one) matched.
func (t *Tokens) Check(tok string) (Identity, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refreshLocked()
	if len(tok) > 256 || !strings.HasPrefix(tok, tokenPrefix) {
		return Identity{}, false
	}
	h := sha256.Sum256([]byte(tok))
	found := -1
	for i, want := range t.hashes {
		if subtle.ConstantTimeCompare(h[:], want) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Identity{}, false
	}
	return Identity{Name: t.recs[found].Name, Role: t.recs[found].Role}, true
}

// Err returns the error of the last read of the file, if it failed.
func (t *Tokens) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refreshLocked()
	return t.lastErr
}
