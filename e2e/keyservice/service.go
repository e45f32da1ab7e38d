// Package keyservice is Moat's end-to-end key service. It keeps key groups
// (named, covering an MQTT topic filter, with writer and reader members
// and numbered epochs) in a bbolt store, holds every epoch secret wrapped
// under a key-encryption key ([KEKBackend]: a key file, a passphrase, or a
// KMS/HSM), and issues each member a bundle of the keys it may use, sealed
// to the member's registered HPKE public key and signed by the service
// (see e2e.SealBundle). Bundles are plain bytes: [Service.Handler] serves
// them over mutual-TLS HTTPS, and the same bytes can be published on a
// per-member MQTT topic such as $moat/keys/<member> ([Config.OnChange]
// says when a member's bundle changed).
//
// Epochs rotate on demand ([Service.Rotate]), on a per-group schedule
// ([Service.RotateDue], driven by [Service.Run]) and whenever a member is
// removed: the removed member never receives the new epoch. A superseded
// epoch stays in bundles until its grace period ends, so late messages
// still open; messages sealed with it after the short writers' grace are
// refused. With [Config.Certs] the service checks members' certificates
// for revocation (CRL, OCSP) on every request and removes a member whose
// certificate is revoked from all its groups.
package keyservice

import (
	"bytes"
	"crypto/ed25519"
	"crypto/fips140"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/internal/tlsconf"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Role is a member's role in a group, a bit set.
type Role uint8

// Roles.
const (
	Writer Role = 1 << iota
	Reader
)

// String returns "writer", "reader", "writer+reader" or "none".
func (r Role) String() string {
	switch r {
	case Writer:
		return "writer"
	case Reader:
		return "reader"
	case Writer | Reader:
		return "writer+reader"
	}
	return "none"
}

// ParseRole parses "writer", "reader" or "writer+reader" (also "both").
func ParseRole(s string) (Role, error) {
	switch strings.ToLower(s) {
	case "writer", "w":
		return Writer, nil
	case "reader", "r":
		return Reader, nil
	case "writer+reader", "reader+writer", "both", "rw":
		return Writer | Reader, nil
	}
	return 0, fmt.Errorf("keyservice: unknown role %q (writer, reader or both)", s)
}

// Sentinel errors.
var (
	ErrNoGroup     = errors.New("keyservice: no such group")
	ErrGroupExists = errors.New("keyservice: group exists")
	ErrNotMember   = errors.New("keyservice: not a member")
	ErrNoPublicKey = errors.New("keyservice: member has not registered a public key")
	ErrWrongKEK    = errors.New("keyservice: the KEK does not match this store (wrong passphrase or key file)")
)

// Defaults of [Config].
const (
	DefaultGrace       = 24 * time.Hour
	DefaultWriterGrace = time.Minute
)

// Config configures a [Service]. Exactly one of KEK and Passphrase is
// required.
type Config struct {
	// Path is the bbolt database file (created with mode 0600). Required.
	Path string
	// KEK wraps epoch secrets and the service's signing key.
	KEK KEKBackend
	// Passphrase derives the KEK with argon2id; the salt and parameters
	// are stored in the database. The slice is not retained. Refused in
	// FIPS 140-3 mode (argon2id is not an approved algorithm).
	Passphrase []byte
	// Argon2 sets the argon2id parameters of a new store; zero means
	// DefaultArgon2. An existing store keeps the parameters it was
	// created with.
	Argon2 Argon2Params
	// Grace is how long a superseded epoch stays readable; zero means
	// DefaultGrace.
	Grace time.Duration
	// WriterGrace is how long after an epoch is superseded messages may
	// still be sealed with it: bundles carry the end of it
	// (e2e.EpochKey.SealUntil), senders refuse to seal and receivers
	// refuse to open a message of the epoch sealed later. It covers
	// writers that have not applied their new bundle yet. Zero means
	// DefaultWriterGrace; it must not exceed Grace.
	WriterGrace time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Rand supplies epoch secrets; nil means crypto/rand.Reader.
	Rand io.Reader
	// Logger logs key events (never key material); nil means
	// slog.Default().
	Logger *slog.Logger
	// Identity maps a client certificate to a member ID; nil means
	// CertIdentity (the first common name, else the first URI SAN, else
	// the first DNS SAN).
	Identity func(*x509.Certificate) string
	// OnChange, when set, is called after a change with the members whose
	// bundle changed, e.g. to publish new bundles over MQTT. It runs on
	// the caller's goroutine after the change is committed.
	OnChange func(members []string)
	// Certs, when set, checks members' client certificates for revocation
	// on every request (the handshake's own verification is not enough for
	// a connection kept alive across a revocation), keeps the latest
	// certificate of each member in the store, and watches it: when it is
	// revoked, [Service.Run] removes the member from every group (a new
	// epoch in each), forgets its registered key, and logs why. Nil means
	// the caller's tls.Config alone verifies clients, with no revocation
	// check. moat keys serve sets it to its tlsconf.Manager.
	Certs CertChecker
	// OpenTimeout bounds the wait for the database lock held by another
	// process; zero means 1 second.
	OpenTimeout time.Duration
}

// CertIdentity is the default [Config.Identity]: the member ID of a client
// certificate is its first subject common name, by the same function the
// broker's identity mapping uses (internal/tlsconf, identity source "cn"),
// else the first URI SAN, else the first DNS SAN. It returns "" when there
// is none or the chosen value holds a control character. e2e.CertIdentity
// follows the same rule.
func CertIdentity(cert *x509.Certificate) string {
	src := tlsconf.IdentityCN
	switch {
	case tlsconf.FirstCommonName(cert) != "":
	case len(cert.URIs) > 0:
		src = tlsconf.IdentitySANURI
	case len(cert.DNSNames) > 0:
		src = tlsconf.IdentitySANDNS
	}
	id, err := tlsconf.Identity(cert, src)
	if err != nil {
		return ""
	}
	return id
}

// Service is a key service over one store. It is safe for concurrent use;
// the caller must Close it.
type Service struct {
	cfg    Config
	db     *bolt.DB
	kek    KEKBackend
	signer ed25519.PrivateKey
	log    *slog.Logger
	mu     sync.Mutex // serializes read-modify-write operations

	// Certificate watches (Config.Certs). Lock order: mu before watchMu;
	// neither is held while calling Config.Certs or Config.OnChange.
	watchMu     sync.Mutex
	watches     map[string]*certWatch
	pending     map[string]pendingRevocation
	watchClosed bool
	wake        chan struct{} // a revocation is pending (capacity 1)
}

var (
	bktMeta    = []byte("meta")
	bktGroups  = []byte("groups")
	bktEpochs  = []byte("epochs")
	bktMembers = []byte("members")
)

const kekCheckAAD = "moat-keyservice/1 kek-check"

type groupRec struct {
	Name        string          `json:"name"`
	Filter      string          `json:"filter"`
	RotateEvery time.Duration   `json:"rotate_every,omitempty"`
	Current     uint64          `json:"current"`
	LastRotated time.Time       `json:"last_rotated"`
	Members     map[string]Role `json:"members"`
}

type epochRec struct {
	Wrapped    []byte    `json:"wrapped"`
	Created    time.Time `json:"created"`
	NotAfter   time.Time `json:"not_after,omitzero"`
	Superseded time.Time `json:"superseded,omitzero"`
}

type memberRec struct {
	KEM        e2e.KEM   `json:"kem"`
	PublicKey  []byte    `json:"public_key"`
	Registered time.Time `json:"registered"`
	Serial     uint64    `json:"serial"`
	// Chain is the member's latest verified client certificate chain
	// (DER, leaf first), watched for revocation.
	Chain [][]byte `json:"chain,omitempty"`
	// Revoked records the last removal for a revoked certificate.
	Revoked *revokedRec `json:"revoked,omitempty"`
}

type metaRec struct {
	Salt   []byte       `json:"salt,omitempty"`
	Argon2 Argon2Params `json:"argon2"`
}

// Open opens or creates the store at cfg.Path, checks that the KEK matches
// it, and returns the service. All configuration problems are reported
// together.
func Open(cfg Config) (*Service, error) {
	var errs []error
	if cfg.Path == "" {
		errs = append(errs, errors.New("keyservice: Config.Path is required"))
	}
	if (cfg.KEK == nil) == (len(cfg.Passphrase) == 0) {
		errs = append(errs, errors.New("keyservice: set exactly one of Config.KEK (key file, KMS) and Config.Passphrase"))
	}
	if len(cfg.Passphrase) > 0 && fips140.Enabled() {
		errs = append(errs, errors.New("keyservice: a passphrase KEK is derived with argon2id, which is not approved in FIPS 140-3 mode; use a KEK key file (moat keys genkek FILE, then --kek-file FILE)"))
	}
	if cfg.Grace < 0 || cfg.WriterGrace < 0 {
		errs = append(errs, errors.New("keyservice: Config.Grace and Config.WriterGrace must not be negative"))
	}
	grace := cfg.Grace
	if grace == 0 {
		grace = DefaultGrace
	}
	if cfg.WriterGrace > grace {
		errs = append(errs, fmt.Errorf("keyservice: Config.WriterGrace %v exceeds the grace period %v", cfg.WriterGrace, grace))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.WriterGrace == 0 {
		cfg.WriterGrace = min(DefaultWriterGrace, cfg.Grace)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Identity == nil {
		cfg.Identity = CertIdentity
	}
	if cfg.Argon2 == (Argon2Params{}) {
		cfg.Argon2 = DefaultArgon2
	}
	if cfg.OpenTimeout == 0 {
		cfg.OpenTimeout = time.Second
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: cfg.OpenTimeout})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("keyservice: %s is locked by another process (is `moat keys serve` running?)", cfg.Path)
		}
		return nil, fmt.Errorf("keyservice: opening %s: %w", cfg.Path, err)
	}
	s := &Service{cfg: cfg, db: db, kek: cfg.KEK, log: cfg.Logger,
		watches: map[string]*certWatch{}, pending: map[string]pendingRevocation{}, wake: make(chan struct{}, 1)}
	err = s.init()
	s.cfg.Passphrase = nil // not retained
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Service) init() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bktMeta, bktGroups, bktEpochs, bktMembers} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bktMeta)
		check := meta.Get([]byte("kek-check"))
		if s.kek == nil {
			var m metaRec
			if raw := meta.Get([]byte("kdf")); raw != nil {
				if err := json.Unmarshal(raw, &m); err != nil {
					return fmt.Errorf("keyservice: corrupt KDF parameters: %w", err)
				}
			} else if check != nil {
				return errors.New("keyservice: this store was created with a KEK file or KMS, not a passphrase")
			} else {
				m = metaRec{Salt: make([]byte, 16), Argon2: s.cfg.Argon2}
				if _, err := io.ReadFull(rand.Reader, m.Salt); err != nil {
					return err
				}
				raw, _ := json.Marshal(m)
				if err := meta.Put([]byte("kdf"), raw); err != nil {
					return err
				}
			}
			kek, err := passphraseKEK(s.cfg.Passphrase, m.Salt, m.Argon2)
			if err != nil {
				return err
			}
			s.kek = kek
		}
		if check == nil {
			w, err := s.kek.Wrap([]byte(kekCheckAAD), []byte(kekCheckAAD))
			if err != nil {
				return fmt.Errorf("keyservice: KEK: %w", err)
			}
			if err := meta.Put([]byte("kek-check"), w); err != nil {
				return err
			}
			_, sk, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			ws, err := s.kek.Wrap(sk.Seed(), []byte("moat-keyservice/1 service-key"))
			if err != nil {
				return fmt.Errorf("keyservice: KEK: %w", err)
			}
			if err := meta.Put([]byte("service-key"), ws); err != nil {
				return err
			}
			s.signer = sk
			return nil
		}
		if pt, err := s.kek.Unwrap(check, []byte(kekCheckAAD)); err != nil || !bytes.Equal(pt, []byte(kekCheckAAD)) {
			return ErrWrongKEK
		}
		seed, err := s.kek.Unwrap(meta.Get([]byte("service-key")), []byte("moat-keyservice/1 service-key"))
		if err != nil || len(seed) != ed25519.SeedSize {
			return fmt.Errorf("keyservice: service signing key does not unwrap: %v", err)
		}
		s.signer = ed25519.NewKeyFromSeed(seed)
		clear(seed)
		return nil
	})
}

// Close ends the certificate watches and closes the store.
func (s *Service) Close() error {
	s.stopWatches()
	return s.db.Close()
}

// PublicKey returns the Ed25519 key that signs bundles; members pin it.
func (s *Service) PublicKey() ed25519.PublicKey { return s.signer.Public().(ed25519.PublicKey) }

func epochKey(group string, epoch uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(group), 0), epoch)
}

func epochAAD(group string, epoch uint64) []byte {
	return append([]byte("moat-keyservice/1 epoch\x00"), epochKey(group, epoch)...)
}

func getJSON(b *bolt.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("keyservice: corrupt record %q: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// CreateGroup creates a key group covering the topics that match filter,
// with epoch 1. rotateEvery > 0 schedules rotation (see RotateDue).
func (s *Service) CreateGroup(name, filter string, rotateEvery time.Duration) error {
	if _, err := e2e.NewEpochKey(name, filter, 1, make([]byte, e2e.KeySize), nil, time.Time{}); err != nil {
		return fmt.Errorf("keyservice: %w", err)
	}
	if strings.ContainsRune(name, 0) {
		return errors.New("keyservice: group name must not contain NUL")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		gb := tx.Bucket(bktGroups)
		if gb.Get([]byte(name)) != nil {
			return fmt.Errorf("%w: %q", ErrGroupExists, name)
		}
		g := &groupRec{Name: name, Filter: filter, RotateEvery: rotateEvery, Members: map[string]Role{}}
		return s.newEpoch(tx, g)
	})
	if err == nil {
		s.log.Info("keyservice: group created", "group", name, "filter", filter, "rotate_every", rotateEvery)
	}
	return err
}

// newEpoch creates the next epoch of g, retires the current one after the
// grace period, and stores g.
func (s *Service) newEpoch(tx *bolt.Tx, g *groupRec) error {
	now := s.cfg.Now()
	eb := tx.Bucket(bktEpochs)
	if g.Current > 0 {
		var cur epochRec
		if ok, err := getJSON(eb, epochKey(g.Name, g.Current), &cur); err != nil {
			return err
		} else if ok {
			cur.NotAfter, cur.Superseded = now.Add(s.cfg.Grace), now
			if err := putJSON(eb, epochKey(g.Name, g.Current), &cur); err != nil {
				return err
			}
		}
	}
	secret := make([]byte, e2e.KeySize)
	defer clear(secret)
	if _, err := io.ReadFull(s.cfg.Rand, secret); err != nil {
		return fmt.Errorf("keyservice: generating epoch secret: %w", err)
	}
	g.Current++
	wrapped, err := s.kek.Wrap(secret, epochAAD(g.Name, g.Current))
	if err != nil {
		return fmt.Errorf("keyservice: wrapping epoch key with the KEK: %w", err)
	}
	if err := putJSON(eb, epochKey(g.Name, g.Current), &epochRec{Wrapped: wrapped, Created: now}); err != nil {
		return err
	}
	g.LastRotated = now
	return putJSON(tx.Bucket(bktGroups), []byte(g.Name), g)
}

func (s *Service) loadGroup(tx *bolt.Tx, name string) (*groupRec, error) {
	var g groupRec
	ok, err := getJSON(tx.Bucket(bktGroups), []byte(name), &g)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %q (create it with `moat keys group create`)", ErrNoGroup, name)
	}
	if g.Members == nil {
		g.Members = map[string]Role{}
	}
	return &g, nil
}

func (g *groupRec) memberIDs() []string {
	ids := make([]string, 0, len(g.Members))
	for id := range g.Members {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (s *Service) changed(members []string) {
	if s.cfg.OnChange != nil && len(members) > 0 {
		s.cfg.OnChange(members)
	}
}

// AddMember adds id to group with role, or changes its role. A new member
// receives the current epoch and the epochs still in their grace period.
func (s *Service) AddMember(group, id string, role Role) error {
	if id == "" || len(id) > 255 {
		return errors.New("keyservice: member ID must be 1 to 255 bytes")
	}
	if role&^(Writer|Reader) != 0 || role == 0 {
		return errors.New("keyservice: role must be writer, reader or both")
	}
	s.mu.Lock()
	var members []string
	err := s.db.Update(func(tx *bolt.Tx) error {
		g, err := s.loadGroup(tx, group)
		if err != nil {
			return err
		}
		g.Members[id] = role
		members = g.memberIDs()
		return putJSON(tx.Bucket(bktGroups), []byte(group), g)
	})
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.log.Info("keyservice: member added", "group", group, "member", id, "role", role.String())
	s.changed(members)
	return nil
}

// RemoveMember removes id from group and starts a new epoch that id never
// receives. The previous epochs stay readable by the remaining readers for
// the grace period.
func (s *Service) RemoveMember(group, id string) error {
	s.mu.Lock()
	var members []string
	var epoch uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		g, err := s.loadGroup(tx, group)
		if err != nil {
			return err
		}
		if _, ok := g.Members[id]; !ok {
			return fmt.Errorf("%w: %q is not a member of %q", ErrNotMember, id, group)
		}
		delete(g.Members, id)
		if err := s.newEpoch(tx, g); err != nil {
			return err
		}
		epoch = g.Current
		members = append(g.memberIDs(), id)
		return nil
	})
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.log.Info("keyservice: member removed, new epoch", "group", group, "member", id, "epoch", epoch)
	s.changed(members)
	return nil
}

// Rotate starts a new epoch of group and returns its number.
func (s *Service) Rotate(group string) (uint64, error) {
	s.mu.Lock()
	var members []string
	var epoch uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		g, err := s.loadGroup(tx, group)
		if err != nil {
			return err
		}
		if err := s.newEpoch(tx, g); err != nil {
			return err
		}
		epoch, members = g.Current, g.memberIDs()
		return nil
	})
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	s.log.Info("keyservice: epoch rotated", "group", group, "epoch", epoch)
	s.changed(members)
	return epoch, nil
}

// RotateDue rotates every group whose schedule is due, deletes epochs
// whose grace period has ended, and returns the rotated groups.
func (s *Service) RotateDue() ([]string, error) {
	now := s.cfg.Now()
	var rotated []string
	var members []string
	s.mu.Lock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		var groups []*groupRec
		err := tx.Bucket(bktGroups).ForEach(func(k, v []byte) error {
			var g groupRec
			if err := json.Unmarshal(v, &g); err != nil {
				return fmt.Errorf("keyservice: corrupt group %q: %w", k, err)
			}
			groups = append(groups, &g)
			return nil
		})
		if err != nil {
			return err
		}
		for _, g := range groups {
			if g.RotateEvery > 0 && now.Sub(g.LastRotated) >= g.RotateEvery {
				if err := s.newEpoch(tx, g); err != nil {
					return err
				}
				rotated = append(rotated, g.Name)
				members = append(members, g.memberIDs()...)
			}
		}
		eb := tx.Bucket(bktEpochs)
		var expired [][]byte
		err = eb.ForEach(func(k, v []byte) error {
			var e epochRec
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if !e.NotAfter.IsZero() && now.After(e.NotAfter) {
				expired = append(expired, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range expired {
			if err := eb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for _, g := range rotated {
		s.log.Info("keyservice: scheduled rotation", "group", g)
	}
	slices.Sort(members)
	s.changed(slices.Compact(members))
	return rotated, nil
}

// Register records id's HPKE public key. id must be a member of at least
// one group.
func (s *Service) Register(id string, pub e2e.MemberPublicKey) error {
	if err := pub.Validate(); err != nil {
		return fmt.Errorf("keyservice: %w", err)
	}
	s.mu.Lock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		if !isMember(tx, id) {
			return fmt.Errorf("%w: %q is in no group (add it with `moat keys member add`)", ErrNotMember, id)
		}
		mb := tx.Bucket(bktMembers)
		var m memberRec
		if _, err := getJSON(mb, []byte(id), &m); err != nil {
			return err
		}
		m.KEM, m.PublicKey, m.Registered = pub.KEM, pub.Key, s.cfg.Now()
		return putJSON(mb, []byte(id), &m)
	})
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.log.Info("keyservice: member key registered", "member", id, "kem", pub.KEM.String())
	s.changed([]string{id})
	return nil
}

func isMember(tx *bolt.Tx, id string) bool {
	found := false
	tx.Bucket(bktGroups).ForEach(func(k, v []byte) error {
		var g groupRec
		if json.Unmarshal(v, &g) == nil {
			if _, ok := g.Members[id]; ok {
				found = true
			}
		}
		return nil
	})
	return found
}

// Bundle returns a new bundle for member id: the keys of every group it
// belongs to, sealed to its registered public key and signed. Each call
// increments the member's bundle serial.
func (s *Service) Bundle(id string) ([]byte, error) {
	now := s.cfg.Now()
	var b *e2e.Bundle
	var pub e2e.MemberPublicKey
	s.mu.Lock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bktMembers)
		var m memberRec
		ok, err := getJSON(mb, []byte(id), &m)
		if err != nil {
			return err
		}
		if !ok || len(m.PublicKey) == 0 {
			return fmt.Errorf("%w: %q (the member runs `moat keys fetch` to register)", ErrNoPublicKey, id)
		}
		if !isMember(tx, id) {
			return fmt.Errorf("%w: %q", ErrNotMember, id)
		}
		m.Serial++
		if err := putJSON(mb, []byte(id), &m); err != nil {
			return err
		}
		pub = e2e.MemberPublicKey{KEM: m.KEM, Key: m.PublicKey}
		b = &e2e.Bundle{Member: id, Serial: m.Serial, Issued: now}
		return tx.Bucket(bktGroups).ForEach(func(k, v []byte) error {
			var g groupRec
			if err := json.Unmarshal(v, &g); err != nil {
				return err
			}
			role, ok := g.Members[id]
			if !ok {
				return nil
			}
			var writers []string
			for mid, r := range g.Members {
				if r&Writer != 0 {
					writers = append(writers, mid)
				}
			}
			return s.addGroupKeys(tx, b, &g, role, writers, now)
		})
	})
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return e2e.SealBundle(b, pub, s.signer)
}

func (s *Service) addGroupKeys(tx *bolt.Tx, b *e2e.Bundle, g *groupRec, role Role, writers []string, now time.Time) error {
	eb := tx.Bucket(bktEpochs)
	c := eb.Cursor()
	prefix := append([]byte(g.Name), 0)
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, v = c.Next() {
		var e epochRec
		if err := json.Unmarshal(v, &e); err != nil {
			return err
		}
		epoch := binary.BigEndian.Uint64(k[len(prefix):])
		if !e.NotAfter.IsZero() && now.After(e.NotAfter) {
			continue
		}
		if role&Reader == 0 && epoch != g.Current {
			continue // writers only need the current epoch
		}
		secret, err := s.kek.Unwrap(e.Wrapped, epochAAD(g.Name, epoch))
		if err != nil {
			return fmt.Errorf("keyservice: group %q epoch %d: %w", g.Name, epoch, err)
		}
		ek, err := e2e.NewEpochKey(g.Name, g.Filter, epoch, secret, writers, e.NotAfter)
		clear(secret)
		if err != nil {
			return err
		}
		if !e.Superseded.IsZero() {
			ek = ek.WithSealUntil(e.Superseded.Add(s.cfg.WriterGrace))
		}
		if role&Reader != 0 {
			b.EpochKeys = append(b.EpochKeys, ek)
			continue
		}
		sk, err := ek.SenderKey(b.Member)
		if err != nil {
			return err
		}
		b.SenderKeys = append(b.SenderKeys, sk)
	}
	return nil
}

// EpochInfo describes one stored epoch.
type EpochInfo struct {
	Epoch    uint64
	Created  time.Time
	NotAfter time.Time // zero: current
}

// MemberInfo describes one member of a group.
type MemberInfo struct {
	ID         string
	Role       Role
	KEM        e2e.KEM // 0 if not registered
	Registered time.Time
	Serial     uint64
}

// GroupInfo describes a group, without any key material.
type GroupInfo struct {
	Name        string
	Filter      string
	RotateEvery time.Duration
	Current     uint64
	LastRotated time.Time
	Members     []MemberInfo
	Epochs      []EpochInfo
}

// Groups returns every group, sorted by name.
func (s *Service) Groups() ([]GroupInfo, error) {
	var out []GroupInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktGroups).ForEach(func(k, v []byte) error {
			gi, err := s.groupInfo(tx, string(k))
			if err != nil {
				return err
			}
			out = append(out, *gi)
			return nil
		})
	})
	return out, err
}

// Group returns one group.
func (s *Service) Group(name string) (*GroupInfo, error) {
	var gi *GroupInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		gi, err = s.groupInfo(tx, name)
		return err
	})
	return gi, err
}

func (s *Service) groupInfo(tx *bolt.Tx, name string) (*GroupInfo, error) {
	g, err := s.loadGroup(tx, name)
	if err != nil {
		return nil, err
	}
	gi := &GroupInfo{Name: g.Name, Filter: g.Filter, RotateEvery: g.RotateEvery, Current: g.Current, LastRotated: g.LastRotated}
	mb := tx.Bucket(bktMembers)
	for _, id := range g.memberIDs() {
		mi := MemberInfo{ID: id, Role: g.Members[id]}
		var m memberRec
		if ok, _ := getJSON(mb, []byte(id), &m); ok {
			mi.KEM, mi.Registered, mi.Serial = m.KEM, m.Registered, m.Serial
		}
		gi.Members = append(gi.Members, mi)
	}
	c := tx.Bucket(bktEpochs).Cursor()
	prefix := append([]byte(name), 0)
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, v = c.Next() {
		var e epochRec
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, err
		}
		gi.Epochs = append(gi.Epochs, EpochInfo{Epoch: binary.BigEndian.Uint64(k[len(prefix):]), Created: e.Created, NotAfter: e.NotAfter})
	}
	return gi, nil
}

// RewrapKEK re-encrypts every stored key (epoch keys, the service signing
// key and the KEK check value) under newKEK in one transaction, for a
// scheduled KEK rotation or a move to a KMS/HSM. The service keeps running
// with newKEK; restart it with the new key afterwards. A passphrase store
// stays a passphrase store only if newKEK was derived the same way; the
// caller decides, and the KDF parameters are dropped when newKEK is not a
// passphrase KEK, so a later start needs the new key.
func (s *Service) RewrapKEK(newKEK KEKBackend) error {
	if newKEK == nil {
		return errors.New("keyservice: RewrapKEK needs a KEK")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		eb := tx.Bucket(bktEpochs)
		type rec struct {
			k []byte
			e epochRec
		}
		var recs []rec
		if err := eb.ForEach(func(k, v []byte) error {
			var e epochRec
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			recs = append(recs, rec{bytes.Clone(k), e})
			return nil
		}); err != nil {
			return err
		}
		for _, r := range recs {
			sep := bytes.IndexByte(r.k, 0)
			if sep < 0 || len(r.k) != sep+9 {
				return fmt.Errorf("keyservice: corrupt epoch key %q", r.k)
			}
			aad := epochAAD(string(r.k[:sep]), binary.BigEndian.Uint64(r.k[sep+1:]))
			secret, err := s.kek.Unwrap(r.e.Wrapped, aad)
			if err != nil {
				return err
			}
			r.e.Wrapped, err = newKEK.Wrap(secret, aad)
			clear(secret)
			if err != nil {
				return fmt.Errorf("keyservice: wrapping with the new KEK: %w", err)
			}
			if err := putJSON(eb, r.k, &r.e); err != nil {
				return err
			}
			n++
		}
		meta := tx.Bucket(bktMeta)
		ws, err := newKEK.Wrap(s.signer.Seed(), []byte("moat-keyservice/1 service-key"))
		if err != nil {
			return fmt.Errorf("keyservice: wrapping with the new KEK: %w", err)
		}
		wc, err := newKEK.Wrap([]byte(kekCheckAAD), []byte(kekCheckAAD))
		if err != nil {
			return fmt.Errorf("keyservice: wrapping with the new KEK: %w", err)
		}
		if err := meta.Put([]byte("service-key"), ws); err != nil {
			return err
		}
		if err := meta.Put([]byte("kek-check"), wc); err != nil {
			return err
		}
		return meta.Delete([]byte("kdf"))
	})
	if err != nil {
		return err
	}
	s.kek = newKEK
	s.log.Info("keyservice: KEK rotated", "epoch_keys", n)
	return nil
}
