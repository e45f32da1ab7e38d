package store

import (
	"bytes"
	"encoding/binary"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// overlay holds, with the commit log, the message and
// delivery records written since the last checkpoint, beside the
// engine's open transaction instead of in it.
//
// Most of them never reach a checkpoint: a QoS 1 message to an online
// persistent subscriber is put in one batch and deleted by the
// subscriber's acknowledgement in one of the next, well within the
// checkpoint interval. In the engine's transaction each such pair cost a
// B+tree search and insert, then a search and delete, per record; in a
// map it costs a hash insert and a hash delete, and the B+tree sees only
// the records still stored when a checkpoint comes (queued messages of
// offline sessions, in-flight ones), which the checkpoint writes in
// (flush).
//
// Nothing here changes what reaches a file: every put and delete still
// goes into the batch's log record as before (logPut, logDel), with the
// record sealed as before, so the log alone holds the overlay's records
// until the checkpoint writes them to the engine, and recovery replays
// the log's puts and deletes, in order, into the engine (applyLog: a
// record put and deleted between two checkpoints is put and deleted
// again). The record count is kept by the same code whichever side
// holds a record; the digest leaves out the overlay's unsealed records
// until they are sealed into the engine (flush, replayLog).
//
// A key is on one side only: a record the engine holds (written there by
// a checkpoint, by Open's replay of the log, or by redoLog) is replaced
// and deleted there; a record it does not hold is written to the
// overlay. IDs (message IDs, delivery sequence numbers) above engineMax
// were issued after the engine's content was last brought up to date, so
// their records can only be in the overlay: looking them up needs no
// B+tree search. Owned by the committer; no lock.
type overlay struct {
	msgs map[uint64]ovlRec                 // message ID → record
	dlv  map[[idLen]byte]map[uint64]ovlRec // delivery key prefix (session) → Seq → record
	n    int                               // records held
	// engineMax is at least every message ID and delivery Seq the
	// engine holds.
	engineMax uint64
}

// ovlRec is a record of the overlay: a sealed value, or (plain) a
// record that only the commit log encrypts, sealed when a checkpoint
// writes it to the engine: a plainRecord whose first 8 bytes hold its
// version (seal ID), as a sealed value's do.
type ovlRec struct {
	v     []byte
	plain bool
}

func newOverlay(engineMax uint64) *overlay {
	return &overlay{msgs: make(map[uint64]ovlRec, 1024), dlv: make(map[[idLen]byte]map[uint64]ovlRec), engineMax: engineMax}
}

// overlaid reports whether bucket's records go through the overlay.
func overlaid(bucket []byte) bool {
	return bytes.Equal(bucket, bktMessage) || bytes.Equal(bucket, bktDelivery)
}

// splitKey returns the session prefix (deliveries) and the ID in a
// message or delivery key; ok is false for a key of another shape.
func splitKey(bucket, key []byte) (prefix [idLen]byte, id uint64, ok bool) {
	if bytes.Equal(bucket, bktMessage) {
		if len(key) != 8 {
			return prefix, 0, false
		}
		return prefix, binary.BigEndian.Uint64(key), true
	}
	if len(key) != idLen+8 {
		return prefix, 0, false
	}
	return [idLen]byte(key), binary.BigEndian.Uint64(key[idLen:]), true
}

// get returns the value at bucket/key in the overlay. engine reports
// whether the engine may hold the key instead (found is false then).
func (o *overlay) get(bucket, key []byte) (v ovlRec, found, engine bool) {
	p, id, ok := splitKey(bucket, key)
	if !ok {
		return ovlRec{}, false, true
	}
	if bytes.Equal(bucket, bktMessage) {
		v, found = o.msgs[id]
	} else {
		v, found = o.dlv[p][id]
	}
	return v, found, !found && id <= o.engineMax
}

// put stores value at bucket/key, which the engine does not hold.
func (o *overlay) put(bucket, key []byte, value ovlRec) {
	p, id, _ := splitKey(bucket, key)
	if bytes.Equal(bucket, bktMessage) {
		if _, had := o.msgs[id]; !had {
			o.n++
		}
		o.msgs[id] = value
		return
	}
	m := o.dlv[p]
	if m == nil {
		m = make(map[uint64]ovlRec, 4)
		o.dlv[p] = m
	}
	if _, had := m[id]; !had {
		o.n++
	}
	m[id] = value
}

// take removes bucket/key from the overlay and returns its record (v
// nil when the overlay does not hold it); engine reports whether the
// engine may hold the key instead.
func (o *overlay) take(bucket, key []byte) (v ovlRec, engine bool) {
	p, id, ok := splitKey(bucket, key)
	if !ok {
		return ovlRec{}, true
	}
	var had bool
	if bytes.Equal(bucket, bktMessage) {
		if v, had = o.msgs[id]; had {
			delete(o.msgs, id)
		}
	} else if m := o.dlv[p]; m != nil {
		if v, had = m[id]; had {
			delete(m, id)
		}
	}
	if had {
		o.n--
		return v, false
	}
	return ovlRec{}, id <= o.engineMax
}

// deliveryKeys appends the keys of the deliveries the overlay holds
// under prefix (a session's) to keys.
func (o *overlay) deliveryKeys(keys [][]byte, prefix []byte) [][]byte {
	if len(prefix) != idLen {
		return keys
	}
	for id := range o.dlv[[idLen]byte(prefix)] {
		keys = append(keys, binary.BigEndian.AppendUint64(slices.Clip(bytes.Clone(prefix)), id))
	}
	return keys
}

// flush writes every record the overlay holds into tx, the engine's
// transaction (at a checkpoint), sealing those that were not and adding
// their elements to digest (see txn.putLater), and empties it; the
// engine then holds every ID up to engineMax.
func (o *overlay) flush(tx *bolt.Tx, keys *recordKeys, engineMax uint64, digest *[32]byte) error {
	if o.n > 0 {
		mb, db := tx.Bucket(bktMessage), tx.Bucket(bktDelivery)
		mb.FillPercent, db.FillPercent = 0.9, 0.9 // as txn.bucket
		put := func(b *bolt.Bucket, bucket, key []byte, r ovlRec) error {
			v := r.v
			if r.plain {
				version := beUint64(r.v)
				var err error
				if v, err = keys.sealPlainValue(plainRecord(r.v), bucket, key, version); err != nil {
					return err
				}
				xorInto(digest, keys.element(bucket, key, version))
			}
			return b.Put(key, v)
		}
		for id, r := range o.msgs {
			if err := put(mb, bktMessage, binary.BigEndian.AppendUint64(make([]byte, 0, 8), id), r); err != nil {
				return err
			}
		}
		for p, m := range o.dlv {
			for id, r := range m {
				k := make([]byte, 0, idLen+8)
				k = binary.BigEndian.AppendUint64(append(k, p[:]...), id)
				if err := put(db, bktDelivery, k, r); err != nil {
					return err
				}
			}
		}
	}
	o.reset(engineMax)
	return nil
}

// reset empties the overlay; the engine holds every ID up to engineMax.
// The maps' memory is kept for the next interval, unless a burst made
// them large.
func (o *overlay) reset(engineMax uint64) {
	if len(o.msgs) > maxOverlayKeep || len(o.dlv) > maxOverlayKeep {
		o.msgs = make(map[uint64]ovlRec, 1024)
		o.dlv = make(map[[idLen]byte]map[uint64]ovlRec)
	} else {
		clear(o.msgs)
		for p, m := range o.dlv {
			if len(m) > 64 {
				delete(o.dlv, p)
			} else {
				clear(m)
			}
		}
	}
	o.n = 0
	o.engineMax = engineMax
}

// maxOverlayKeep bounds the message records and the sessions whose maps
// the overlay keeps, emptied, from one checkpoint interval to the next.
const maxOverlayKeep = 1 << 14
