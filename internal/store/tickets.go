package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TicketKeys are the TLS session ticket keys of one listener, kept so
// that clients resume their TLS sessions after a restart instead of all
// doing full handshakes at once (docs/tls.md, "Session resumption"). They
// are secrets: whoever holds them can read the session state inside every
// ticket they sealed (the client's certificates and the session's
// resumption secret), so they live only sealed in the store, are dropped
// by Rekey, and print and export without the key bytes.
type TicketKeys struct {
	// Listener names the listener the keys belong to; each listener has
	// keys of its own.
	Listener string
	// Keys, newest first: the newest seals new tickets, all open them.
	Keys []TicketKey
}

// TicketKey is one session ticket key and when it was made. String and
// MarshalJSON leave the key out.
type TicketKey struct {
	Key     [32]byte
	Created time.Time
}

// String describes k without its key bytes.
func (k TicketKey) String() string {
	return "session ticket key created " + k.Created.UTC().Format(time.RFC3339)
}

// GoString is String, so that %#v does not print the key either.
func (k TicketKey) GoString() string { return k.String() }

// MarshalJSON writes the creation time only.
func (k TicketKey) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Created time.Time `json:"created"`
		Key     string    `json:"key"`
	}{k.Created, "(secret, not exported)"})
}

// PutTicketKeys stores a listener's ticket keys, replacing any.
type PutTicketKeys struct{ Keys *TicketKeys }

// DeleteTicketKeys removes a listener's ticket keys.
type DeleteTicketKeys struct{ Listener string }

// bktTicketKeys holds TicketKeys records. Stores made before it existed
// lack the bucket: it is created by the first PutTicketKeys, and a store
// without it simply has no ticket keys.
var bktTicketKeys = []byte("tkey")

// optionalBuckets are scanned when present; a store may lack them.
var optionalBuckets = [][]byte{bktTicketKeys, bktBans}

// scannedBuckets are every bucket holding records.
var scannedBuckets = append(slices.Clone(dataBuckets), optionalBuckets...)

func isOptional(bucket []byte) bool {
	return slices.ContainsFunc(optionalBuckets, func(b []byte) bool { return string(b) == string(bucket) })
}

const tagTicketKeys byte = 11

// maxTicketKeys bounds the keys of one listener in a record: a key made
// every rotation interval and kept for its lifetime gives a few, so this
// is only a bound for the decoder.
const maxTicketKeys = 1024

func (k *recordKeys) ticketKeysKey(listener string) []byte { return k.name("tkey", listener) }

func (o PutTicketKeys) prepare(s *Store) (Op, error) {
	if o.Keys == nil {
		return nil, fmt.Errorf("store: PutTicketKeys without keys")
	}
	if len(o.Keys.Keys) > maxTicketKeys {
		return nil, fmt.Errorf("store: %d ticket keys for listener %q (at most %d)", len(o.Keys.Keys), o.Keys.Listener, maxTicketKeys)
	}
	p := &putTicketKeys{key: s.keys.ticketKeysKey(o.Keys.Listener)}
	var err error
	p.rec, err = s.sealNew(bktTicketKeys, p.key, o.Keys, nil)
	return p, err
}

func (o PutTicketKeys) apply(t *txn) error { return prepareAndApply(t, o) }

type putTicketKeys struct {
	key []byte
	rec sealed
}

func (o *putTicketKeys) apply(t *txn) error {
	if err := t.createBucket(bktTicketKeys); err != nil {
		return err
	}
	return t.putSealed(bktTicketKeys, o.key, &o.rec)
}

func (o DeleteTicketKeys) prepare(s *Store) (Op, error) {
	return &deleteTicketKeys{key: s.keys.ticketKeysKey(o.Listener)}, nil
}

func (o DeleteTicketKeys) apply(t *txn) error { return prepareAndApply(t, o) }

type deleteTicketKeys struct{ key []byte }

func (o *deleteTicketKeys) apply(t *txn) error {
	if t.tx.Bucket(bktTicketKeys) == nil {
		return nil
	}
	_, err := t.del(bktTicketKeys, o.key)
	return err
}

func encodeTicketKeys(e *enc, v *TicketKeys) {
	e.u8(tagTicketKeys)
	e.str(v.Listener)
	e.uv(uint64(len(v.Keys)))
	for _, k := range v.Keys {
		e.b = append(e.b, k.Key[:]...)
		e.time(k.Created)
	}
}

func decodeTicketKeys(d *dec) *TicketKeys {
	v := &TicketKeys{Listener: d.str()}
	n := d.count()
	if n > maxTicketKeys {
		d.fail("too many ticket keys")
		return nil
	}
	if n > 0 {
		v.Keys = make([]TicketKey, 0, min(n, len(d.b)/40))
		for range n {
			var k TicketKey
			if !d.need(len(k.Key)) {
				return nil
			}
			copy(k.Key[:], d.b)
			d.b = d.b[len(k.Key):]
			k.Created = d.time()
			v.Keys = append(v.Keys, k)
		}
	}
	return v
}

// TicketKeys returns the ticket keys stored for listener, or nil when
// there are none. Unlike the rest of the store, which the broker reads
// once through Recovered, it reads the current record, so a listener set
// up after commits sees the keys saved last. Safe for concurrent use with
// commits.
func (s *Store) TicketKeys(listener string) (*TicketKeys, error) {
	var out *TicketKeys
	err := s.syncView(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktTicketKeys)
		if b == nil {
			return nil
		}
		key := s.keys.ticketKeysKey(listener)
		v := b.Get(key)
		if v == nil {
			return nil
		}
		_, pt, err := s.keys.open(bktTicketKeys, key, v)
		if err != nil {
			return fmt.Errorf("%w: ticket keys of %q: %v", ErrCorrupt, listener, err)
		}
		r, err := decodeRecord(pt)
		tk, ok := r.(*TicketKeys)
		if err != nil || !ok || tk.Listener != listener {
			return fmt.Errorf("%w: ticket keys of %q: malformed record", ErrCorrupt, listener)
		}
		out = tk
		return nil
	})
	return out, err
}
