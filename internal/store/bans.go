package store

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Ban is one entry of the broker's ban list (docs/defense.md), kept in
// the store when persistence is on, so that bans live with the rest of
// the broker's state: sealed, crash-safe, and covered by the digest
// (removing or replaying a ban record is detected like any other). The
// store does not interpret a ban; internal/cli converts it to and from
// the guard's.
type Ban struct {
	ID     string // 1..64 hex digits; the record's key
	Kind   string // "ip", "client_id", "username", "cert_fingerprint", "cert_serial"
	Value  string
	Reason string
	Source string // "manual" or the detector that added it
	// Created is when it was added; Expires when it ends (zero: never).
	Created, Expires time.Time
}

// PutBan stores a ban, replacing one with the same ID.
type PutBan struct{ Ban *Ban }

// DeleteBan removes the ban with the given ID; a missing one is no error.
type DeleteBan struct{ ID string }

// bktBans holds Ban records. Stores made before it existed lack the
// bucket: the first PutBan creates it, and a store without it has no
// bans.
var bktBans = []byte("ban")

// tagBan is a Ban record's type tag (tags 1 to 11 are taken, see
// records.go and tickets.go).
const tagBan byte = 12

// Bounds of a ban's fields, checked by PutBan and the decoder. The
// guard's own bounds are tighter; these keep a damaged or forged record
// from holding much.
const (
	maxBanID     = 64
	maxBanKind   = 32
	maxBanValue  = 64 << 10
	maxBanReason = 4 << 10
	maxBanSource = 256
)

func (k *recordKeys) banKey(id string) []byte { return k.name("ban", id) }

func (b *Ban) check() error {
	switch {
	case b.ID == "" || len(b.ID) > maxBanID:
		return fmt.Errorf("store: ban ID %q: 1 to %d bytes", b.ID, maxBanID)
	case len(b.Kind) == 0 || len(b.Kind) > maxBanKind, len(b.Value) > maxBanValue,
		len(b.Reason) > maxBanReason, len(b.Source) > maxBanSource:
		return fmt.Errorf("store: ban %s: kind, value, reason or source empty or too long", b.ID)
	}
	return nil
}

func (o PutBan) apply(t *txn) error {
	if o.Ban == nil {
		return fmt.Errorf("store: PutBan without a ban")
	}
	if err := o.Ban.check(); err != nil {
		return err
	}
	if err := t.createBucket(bktBans); err != nil {
		return err
	}
	return t.put(bktBans, t.s.keys.banKey(o.Ban.ID), encodeRecord(o.Ban))
}

func (o DeleteBan) apply(t *txn) error {
	if t.tx.Bucket(bktBans) == nil {
		return nil
	}
	_, err := t.del(bktBans, t.s.keys.banKey(o.ID))
	return err
}

func encodeBan(e *enc, v *Ban) {
	e.u8(tagBan)
	e.str(v.ID)
	e.str(v.Kind)
	e.str(v.Value)
	e.str(v.Reason)
	e.str(v.Source)
	e.time(v.Created)
	e.time(v.Expires)
}

func decodeBan(d *dec) *Ban {
	v := &Ban{ID: d.str(), Kind: d.str(), Value: d.str(), Reason: d.str(), Source: d.str()}
	v.Created = d.time()
	v.Expires = d.time()
	if d.err == nil && v.check() != nil {
		d.fail("ban field out of bounds")
	}
	return v
}

// Bans returns the bans stored, in no particular order. Unlike the rest
// of the store, which the broker reads once through Recovered, it reads
// the current records: the ban list is read at start and whenever the
// guard checks it against what is stored. Safe for concurrent use with
// commits.
func (s *Store) Bans() ([]*Ban, error) {
	var out []*Ban
	err := s.syncView(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktBans)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			_, pt, err := s.keys.open(bktBans, k, v)
			if err != nil {
				return fmt.Errorf("%w: ban record %x: %v", ErrCorrupt, k, err)
			}
			r, err := decodeRecord(pt)
			ban, ok := r.(*Ban)
			if err != nil || !ok || string(s.keys.banKey(ban.ID)) != string(k) {
				return fmt.Errorf("%w: ban record %x: malformed record", ErrCorrupt, k)
			}
			out = append(out, ban)
			return nil
		})
	})
	return out, err
}
