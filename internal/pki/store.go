package pki

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Bucket and key names in ca.db.
var (
	bucketCerts  = []byte("certs")  // serial (hex) → Record JSON
	bucketTokens = []byte("tokens") // SHA-256(token) hex → tokenRecord JSON
	// bucketReenroll: device ID → JSON list of recent re-enrollment
	// times (created on first use; older databases lack it).
	bucketReenroll = []byte("reenroll")
	bucketMeta     = []byte("meta")
	keyRevision    = []byte("revision")   // uint64, bumped by every write
	keyCRLNumber   = []byte("crl_number") // uint64
	keyCRL         = []byte("crl")        // DER of the current CRL
)

// ErrDatabaseBusy is returned when another process holds the database
// lock for longer than Config.LockTimeout.
var ErrDatabaseBusy = errors.New("pki: the CA database is in use by another moat process")

// ErrNotFound is returned for an unknown serial number.
var ErrNotFound = errors.New("pki: no certificate with this serial number in the inventory")

// Profile names an issuance profile.
type Profile string

// Issuance profiles.
const (
	ProfileServer Profile = "server" // serverAuth, DNS/IP SANs
	ProfileDevice Profile = "device" // clientAuth, CN = device ID, optional URI SAN
	ProfileOCSP   Profile = "ocsp"   // delegated OCSP signing (internal)
)

// Status is the state of an issued certificate.
type Status string

// Certificate states. Expired is computed from NotAfter at read time.
const (
	StatusValid   Status = "valid"
	StatusRevoked Status = "revoked"
	StatusExpired Status = "expired"
)

// Record is the inventory entry for one issued certificate.
type Record struct {
	Serial       string           `json:"serial"` // lower-case hex
	Profile      Profile          `json:"profile"`
	Subject      string           `json:"subject"` // common name
	DNSNames     []string         `json:"dns_names,omitempty"`
	IPAddresses  []string         `json:"ip_addresses,omitempty"`
	URIs         []string         `json:"uris,omitempty"`
	NotBefore    time.Time        `json:"not_before"`
	NotAfter     time.Time        `json:"not_after"`
	Revoked      bool             `json:"revoked,omitempty"`
	RevokedAt    time.Time        `json:"revoked_at,omitzero"`
	Reason       RevocationReason `json:"reason,omitempty"`
	AuthorizedBy string           `json:"authorized_by,omitempty"` // how issuance was authorized
	// Parent is the serial of the certificate that authorized this one's
	// re-enrollment (and that it superseded); empty for first issuance.
	Parent string `json:"parent,omitempty"`
	// Issuer is the hex subject key identifier of the intermediate that
	// signed the certificate (empty in records made before rotation
	// existed; the certificate's authority key identifier says it).
	Issuer string `json:"issuer,omitempty"`
	DER    []byte `json:"der"`
}

// Status returns the record's state at time now.
func (r Record) Status(now time.Time) Status {
	switch {
	case r.Revoked:
		return StatusRevoked
	case now.After(r.NotAfter):
		return StatusExpired
	}
	return StatusValid
}

// SANs returns the subject alternative names as "DNS:x", "IP:y", "URI:z".
func (r Record) SANs() []string {
	var out []string
	for _, d := range r.DNSNames {
		out = append(out, "DNS:"+d)
	}
	for _, i := range r.IPAddresses {
		out = append(out, "IP:"+i)
	}
	for _, u := range r.URIs {
		out = append(out, "URI:"+u)
	}
	return out
}

// SerialString formats a serial number the way the inventory stores it.
func SerialString(n *big.Int) string { return n.Text(16) }

// NormalizeSerial accepts hex with or without colons or a 0x prefix, in
// any case, and returns the inventory form.
func NormalizeSerial(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	s = strings.TrimPrefix(s, "0x")
	s = strings.ReplaceAll(s, ":", "")
	n, ok := new(big.Int).SetString(s, 16)
	if !ok || n.Sign() <= 0 || n.BitLen() > 160 {
		return "", fmt.Errorf("pki: %q is not a certificate serial number (hex, e.g. 3f2a...)", s)
	}
	return SerialString(n), nil
}

func newRecord(der []byte, p Profile, authorizedBy string) (Record, error) {
	c, err := parseCert(der)
	if err != nil {
		return Record{}, err
	}
	r := Record{
		Serial: SerialString(c.SerialNumber), Profile: p, Subject: c.Subject.CommonName,
		DNSNames: c.DNSNames, NotBefore: c.NotBefore, NotAfter: c.NotAfter,
		AuthorizedBy: authorizedBy, DER: der, Issuer: hex.EncodeToString(c.AuthorityKeyId),
	}
	for _, ip := range c.IPAddresses {
		r.IPAddresses = append(r.IPAddresses, ip.String())
	}
	for _, u := range c.URIs {
		r.URIs = append(r.URIs, u.String())
	}
	return r, nil
}

// openDB opens ca.db under this process's lock and bbolt's file lock.
func (ca *CA) openDB(write bool) (*bolt.DB, func(), error) {
	if write {
		ca.dbmu.Lock()
	} else {
		ca.dbmu.RLock()
	}
	unlock := func() {
		if write {
			ca.dbmu.Unlock()
		} else {
			ca.dbmu.RUnlock()
		}
	}
	timeout := ca.cfg.LockTimeout
	if timeout <= 0 {
		timeout = defaultLockTimeout
	}
	db, err := bolt.Open(ca.path(FileDatabase), 0o600, &bolt.Options{Timeout: timeout, ReadOnly: !write})
	if err != nil {
		unlock()
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, nil, fmt.Errorf("%w (%s; waited %v, try again)", ErrDatabaseBusy, ca.path(FileDatabase), timeout)
		}
		return nil, nil, fmt.Errorf("pki: opening CA database: %w", err)
	}
	return db, func() { db.Close(); unlock() }, nil
}

func (ca *CA) createDB() error {
	db, done, err := ca.openDB(true)
	if err != nil {
		return err
	}
	defer done()
	return db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketCerts, bucketTokens, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
}

// update runs fn in a write transaction and bumps the revision counter.
func (ca *CA) update(fn func(tx *bolt.Tx) error) error { return ca.updateThen(fn, nil) }

// updateThen is update followed, after a successful commit and while the
// database lock is still held, by after (used to write crl.pem, so that
// concurrent writers cannot leave an older CRL in the file).
func (ca *CA) updateThen(fn func(tx *bolt.Tx) error, after func() error) error {
	db, done, err := ca.openDB(true)
	if err != nil {
		return err
	}
	defer done()
	if err := ca.checkCurrent(); err != nil {
		ca.cfg.logger().Error("pki: refusing to write with a replaced intermediate", "err", err)
		return err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		m := tx.Bucket(bucketMeta)
		return m.Put(keyRevision, u64(getU64(m, keyRevision)+1))
	})
	if err == nil && after != nil {
		err = after()
	}
	return err
}

// view runs fn in a read-only transaction.
func (ca *CA) view(fn func(tx *bolt.Tx) error) error {
	db, done, err := ca.openDB(false)
	if err != nil {
		return err
	}
	defer done()
	return db.View(fn)
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func getU64(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putRecord(tx *bolt.Tx, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketCerts).Put([]byte(r.Serial), b)
}

func getRecord(tx *bolt.Tx, serial string) (Record, error) {
	v := tx.Bucket(bucketCerts).Get([]byte(serial))
	if v == nil {
		return Record{}, fmt.Errorf("%w: %s", ErrNotFound, serial)
	}
	var r Record
	if err := json.Unmarshal(v, &r); err != nil {
		return Record{}, fmt.Errorf("pki: corrupt inventory record %s: %w", serial, err)
	}
	return r, nil
}

// Get returns the inventory record for serial (any format NormalizeSerial
// accepts).
func (ca *CA) Get(serial string) (Record, error) {
	s, err := NormalizeSerial(serial)
	if err != nil {
		return Record{}, err
	}
	var r Record
	err = ca.view(func(tx *bolt.Tx) error {
		r, err = getRecord(tx, s)
		return err
	})
	return r, err
}

// ListFilter selects records for List. The zero value selects all.
type ListFilter struct {
	// ExpiringWithin selects valid certificates whose NotAfter is within
	// this duration from now (0 = no filter).
	ExpiringWithin time.Duration
	// Revoked selects only revoked certificates.
	Revoked bool
	// Profile selects one profile ("" = all).
	Profile Profile
	// Subject selects one common name ("" = all).
	Subject string
}

// List returns inventory records matching f, soonest expiry first.
func (ca *CA) List(f ListFilter) ([]Record, error) {
	now := ca.cfg.now()
	var out []Record
	err := ca.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCerts).ForEach(func(k, v []byte) error {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("pki: corrupt inventory record %s: %w", k, err)
			}
			if f.Revoked && !r.Revoked {
				return nil
			}
			if f.ExpiringWithin > 0 && (r.Status(now) != StatusValid || r.NotAfter.After(now.Add(f.ExpiringWithin))) {
				return nil
			}
			if f.Profile != "" && r.Profile != f.Profile {
				return nil
			}
			if f.Subject != "" && r.Subject != f.Subject {
				return nil
			}
			out = append(out, r)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].NotAfter.Equal(out[j].NotAfter) {
			return out[i].NotAfter.Before(out[j].NotAfter)
		}
		return out[i].Serial < out[j].Serial
	})
	return out, err
}

// revision returns the database's write counter.
func (ca *CA) revision(tx *bolt.Tx) uint64 { return getU64(tx.Bucket(bucketMeta), keyRevision) }

func ipStrings(ips []net.IP) []string {
	var s []string
	for _, ip := range ips {
		s = append(s, ip.String())
	}
	return s
}
