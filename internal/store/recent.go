package store

// recentRecords remembers, for the messages and deliveries the committer
// wrote lately, what replacing or deleting them needs: their element of
// the digest (a keyed hash) and, for a delivery, the message it refers
// to. A subscriber's acknowledgement usually deletes a delivery that one
// of the last few transactions wrote; without this the committer would
// decrypt the delivery to learn its message and compute two keyed hashes
// (the delivery's and, when it was the last reference, the message's),
// all on the store's one serial path.
//
// An entry is a fact about one version of one record: seal IDs never
// repeat within a store (see sealed), so a record found under the key
// with the entry's version is the record the entry describes, whatever
// happened in between (a rolled-back transaction, a retry). A record
// whose version does not match is opened as before. Only the committer
// uses it; no lock.
type recentRecords struct {
	dlv, dlvOld map[[idLen + 8]byte]recentRecord
	msg, msgOld map[uint64]recentRecord
}

type recentRecord struct {
	version uint64
	msgID   uint64 // of a delivery
	elem    [32]byte
	// counted: elem is the record's element of the digest. A record put
	// unsealed in the overlay has none yet (see txn.putLater); once a
	// checkpoint sealed it into the engine, deleting it computes it.
	counted bool
}

// maxRecent bounds each generation of each map: entries older than two
// generations are forgotten (and looked up the slow way), so the cache
// holds at most 4 × maxRecent entries, about 6 MiB.
const maxRecent = 1 << 14

func (r *recentRecords) putDelivery(key []byte, rec recentRecord) {
	if len(key) != idLen+8 {
		return
	}
	if r.dlv == nil || len(r.dlv) >= maxRecent {
		r.dlvOld, r.dlv = r.dlv, make(map[[idLen + 8]byte]recentRecord, 1024)
	}
	r.dlv[[idLen + 8]byte(key)] = rec
}

func (r *recentRecords) putMessage(id uint64, rec recentRecord) {
	if r.msg == nil || len(r.msg) >= maxRecent {
		r.msgOld, r.msg = r.msg, make(map[uint64]recentRecord, 1024)
	}
	r.msg[id] = rec
}

// delivery returns the entry of the delivery stored at key as old, if
// there is one, and forgets it.
func (r *recentRecords) delivery(key, old []byte) (recentRecord, bool) {
	if len(key) != idLen+8 || len(old) < versionLen {
		return recentRecord{}, false
	}
	k := [idLen + 8]byte(key)
	v := beUint64(old)
	if e, ok := r.dlv[k]; ok {
		delete(r.dlv, k)
		return e, e.version == v
	}
	if e, ok := r.dlvOld[k]; ok {
		delete(r.dlvOld, k)
		return e, e.version == v
	}
	return recentRecord{}, false
}

// message is delivery's counterpart for message id stored as old.
func (r *recentRecords) message(id uint64, old []byte) (recentRecord, bool) {
	if len(old) < versionLen {
		return recentRecord{}, false
	}
	v := beUint64(old)
	if e, ok := r.msg[id]; ok {
		delete(r.msg, id)
		return e, e.version == v
	}
	if e, ok := r.msgOld[id]; ok {
		delete(r.msgOld, id)
		return e, e.version == v
	}
	return recentRecord{}, false
}
