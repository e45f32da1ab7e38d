package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// Op is one change in a commit. The implementations are the Put… and
// Delete… types of this package.
type Op interface {
	apply(t *txn) error
}

// PutSession stores a session (creating or replacing it).
type PutSession struct{ Session *Session }

// DeleteSession removes a session with everything it holds: its
// deliveries (messages no other session refers to go with them), its
// inbound QoS 2 identifiers and its pending will.
type DeleteSession struct{ ClientID string }

// PutMessage stores a message once. Commit it together with the
// deliveries that refer to it: a message no delivery refers to at the end
// of the transaction is not kept.
type PutMessage struct{ Message *Message }

// PutDelivery stores a delivery or its new state. Its message must be in
// the store or in the same commit.
type PutDelivery struct{ Delivery *Delivery }

// DeleteDelivery removes a delivery: the subscriber acknowledged it
// (PUBACK, PUBCOMP), or it was dropped. Its message goes with its last
// delivery.
type DeleteDelivery struct {
	ClientID string
	Seq      uint64
}

// PutInbound remembers an inbound QoS 2 packet identifier until PUBREL.
type PutInbound struct {
	ClientID string
	PacketID uint16
}

// DeleteInbound forgets an inbound QoS 2 packet identifier (PUBREL).
type DeleteInbound struct {
	ClientID string
	PacketID uint16
}

// PutRetained stores a topic's retained message, replacing any, with its
// publisher (kept once for all the records that name it).
type PutRetained struct{ Retained *Retained }

// DeleteRetained clears a topic's retained message.
type DeleteRetained struct{ Topic string }

// PutWill stores a pending will with its publisher.
type PutWill struct{ Will *Will }

// DeleteWill removes a pending will (it fired, or the client came back).
type DeleteWill struct{ ClientID string }

// ErrUnknownMessage is returned for a delivery whose message is neither in
// the store nor in the same commit.
var ErrUnknownMessage = errors.New("store: delivery refers to a message that is not stored (commit the message with its deliveries)")

// ErrUnknownSession is returned for a delivery or an inbound QoS 2
// identifier of a session that is not stored: only persistent sessions
// are stored, and their records go with them.
var ErrUnknownSession = errors.New("store: the session is not stored (commit PutSession first; clean sessions are not stored)")

// preparer is an Op with work that needs no transaction: naming its
// records (keyed hashes), encoding and sealing them. Commit and
// CommitAsync prepare every op on the caller's goroutine, before it
// reaches the committer, which applies every connection's ops one after
// another and is left only the engine's reads and writes and what depends
// on them (reference counts, the digest). An op applied without being
// prepared prepares itself on the committer.
type preparer interface {
	prepare(s *Store) (Op, error)
}

// prepareOps returns ops with every preparer replaced by its prepared
// form, in out when it has the length of ops. Safe for concurrent use.
func (s *Store) prepareOps(ops, out []Op) ([]Op, error) {
	if len(out) != len(ops) {
		out = make([]Op, len(ops))
	}
	for i, op := range ops {
		p, ok := op.(preparer)
		if !ok {
			out[i] = op
			continue
		}
		var err error
		if out[i], err = p.prepare(s); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func prepareAndApply(t *txn, o preparer) error {
	p, err := o.prepare(t.s)
	if err != nil {
		return err
	}
	return p.apply(t)
}

// sealNew encodes and seals rec (or plaintext, when rec is nil) under a
// new seal ID. Safe for concurrent use.
func (s *Store) sealNew(bucket, key []byte, rec any, plaintext []byte) (sealed, error) {
	return s.keys.sealPlain(s.keys.encodeForSeal(bucket, key, rec, plaintext), bucket, key, s.nextID.Add(1))
}

// sealEagerly makes the submitting goroutine seal messages and
// deliveries too (see laterRecord).
var sealEagerly = false

// laterRecord is a message or delivery record, encoded on the submitting
// goroutine and sealed once it is known to be written: the committer
// leaves out the deliveries a subscriber acknowledged before their
// commit, and the messages only they referred to, and sealing those
// would be work for nothing.
type laterRecord struct {
	bucket, key []byte
	plain       plainRecord
	// version is the record's seal ID once drawn (by plainFor or
	// sealed): a request applied again (its batch failed) keeps it.
	version uint64
	once    sync.Once
	rec     sealed
	err     error
}

func (l *laterRecord) init(s *Store, bucket, key []byte, rec any) {
	l.bucket, l.key, l.plain = bucket, key, s.keys.encodeForSeal(bucket, key, rec, nil)
	if sealEagerly {
		l.sealed(s)
	}
}

// sealed seals the record unless that is done, and returns it. Safe for
// concurrent use.
func (l *laterRecord) sealed(s *Store) (*sealed, error) {
	l.once.Do(func() {
		if l.version == 0 {
			l.version = s.nextID.Add(1)
		}
		l.rec, l.err = s.keys.sealPlain(l.plain, l.bucket, l.key, l.version)
		l.plain = nil
	})
	return &l.rec, l.err
}

// plainFor returns the record unsealed, its version (seal ID) written in
// its first 8 bytes, for the overlay; ok is false once it is sealed. On
// the committer only (sealEagerly seals on the submitter, before).
func (l *laterRecord) plainFor(s *Store) (p plainRecord, version uint64, ok bool) {
	if l.plain == nil {
		return nil, 0, false
	}
	if l.version == 0 {
		l.version = s.nextID.Add(1)
	}
	binary.BigEndian.PutUint64(l.plain, l.version)
	return l.plain, l.version, true
}

// txn is one write transaction of the committer.
type txn struct {
	s    *Store
	tx   *bolt.Tx
	st   state
	refs map[uint64]int // changes to Store.refs
	// newMsgs are the messages this transaction put: true while stored,
	// false once their last delivery took them away again.
	newMsgs map[uint64]bool
	prefs   map[string]int // changes to Store.prefs
	// sessions caches whether a session (by key) is stored, as this
	// transaction has left it so far.
	sessions map[string]bool
	// maxID0 is the highest ID issued before this transaction: no
	// message or delivery with a higher ID (Seq) was stored before it,
	// so putting one needs no look-up of an old record, unless this
	// transaction put it already (freshPuts).
	maxID0    uint64
	freshPuts map[[idLen + 8]byte]bool
	// putDlv are the deliveries this transaction put and that are
	// stored as it has left them so far (lateCoalesce).
	putDlv map[[idLen + 8]byte]uint64 // → message ID
	// log collects the transaction's writes for the commit log; nil
	// without one.
	log *logBatch
	// ovl holds the messages and deliveries written since the last
	// checkpoint that the engine does not hold (overlay.go); nil
	// without the commit log. All reads and writes of those two
	// buckets go through lookup, putOver, del and deleteDelivery.
	ovl *overlay
}

// lookup returns the value at bucket/key as the transaction has left it
// so far, nil when there is none, and whether the engine holds it (false
// when the overlay does, or nobody). plain reports a record of the
// overlay that is not sealed (see ovlRec): its version is in its first 8
// bytes as in a sealed value, but it opens with openAt only.
func (t *txn) lookup(bucket, key []byte) (v []byte, engine, plain bool) {
	if t.ovl != nil && overlaid(bucket) {
		r, found, maybe := t.ovl.get(bucket, key)
		if found || !maybe {
			return r.v, false, r.plain
		}
	}
	v = t.tx.Bucket(bucket).Get(key)
	return v, v != nil, false
}

// logPut, logDel and createBucket record the transaction's writes to the
// engine for the commit log: every write to t.tx goes through them.
func (t *txn) logPut(bucket, key, value []byte) {
	if t.log != nil {
		t.log.put(bucket, key, value)
	}
}

func (t *txn) logDel(bucket, key []byte) {
	if t.log != nil {
		t.log.del(bucket, key)
	}
}

func (t *txn) createBucket(name []byte) error {
	if _, err := t.tx.CreateBucketIfNotExists(name); err != nil {
		return err
	}
	if t.log != nil {
		t.log.bucket(name)
	}
	return nil
}

func (t *txn) refcount(id uint64) int { return t.s.refs[id] + t.refs[id] }

// bucket returns a data bucket of the transaction.
func (t *txn) bucket(name []byte) *bolt.Bucket {
	b := t.tx.Bucket(name)
	if bytes.Equal(name, bktMessage) || bytes.Equal(name, bktDelivery) {
		// Message IDs and a session's delivery sequence numbers grow:
		// pages filled before they split stay dense.
		b.FillPercent = 0.9
	}
	return b
}

func (t *txn) needSession(key []byte) error {
	stored, known := t.sessions[string(key)]
	if !known {
		stored = t.tx.Bucket(bktSession).Get(key) != nil
		t.setSession(key, stored)
	}
	if !stored {
		return ErrUnknownSession
	}
	return nil
}

func (t *txn) setSession(key []byte, stored bool) {
	if t.sessions == nil {
		t.sessions = map[string]bool{}
	}
	t.sessions[string(key)] = stored
}

// messageStored reports whether message id is in the store (as this
// transaction has left it so far).
func (t *txn) messageStored(id uint64) bool {
	if stored, ok := t.newMsgs[id]; ok {
		return stored
	}
	if id > t.maxID0 {
		return false
	}
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], id)
	v, _, _ := t.lookup(bktMessage, k[:])
	return v != nil
}

// refPublisher stores p's record unless it is there and counts the
// reference.
func (t *txn) refPublisher(p *sealedPublisher) error {
	k := string(p.key)
	if t.s.prefs[k]+t.prefs[k] <= 0 {
		if err := t.putSealed(bktPublisher, p.key, &p.rec); err != nil {
			return err
		}
	}
	t.prefs[k]++
	return nil
}

// unrefPublisher drops a reference to a publisher record (the key a
// retained message or will being replaced or deleted held) and the record
// with its last reference.
func (t *txn) unrefPublisher(key []byte) error {
	if key == nil {
		return nil
	}
	k := string(key)
	t.prefs[k]--
	if t.s.prefs[k]+t.prefs[k] <= 0 {
		_, err := t.del(bktPublisher, key)
		return err
	}
	return nil
}

// oldPubKey returns the publisher key of the retained message or will at
// bucket/key, nil when there is none or it names no publisher.
func (t *txn) oldPubKey(bucket, key []byte) ([]byte, error) {
	old, err := t.get(bucket, key)
	if err != nil {
		return nil, err
	}
	switch o := old.(type) {
	case *Retained:
		return o.pubKey, nil
	case *Will:
		return o.pubKey, nil
	}
	return nil, nil
}

func (t *txn) noteID(id uint64) {
	if id > t.st.MaxID {
		t.st.MaxID = id
	}
}

// put seals plaintext under bucket/key on the committer and stores it:
// for ops that were not prepared.
func (t *txn) put(bucket, key, plaintext []byte) error {
	rec, err := t.s.sealNew(bucket, key, nil, plaintext)
	if err != nil {
		return err
	}
	return t.putSealed(bucket, key, &rec)
}

// putSealed stores a sealed record under bucket/key and keeps the digest
// current.
func (t *txn) putSealed(bucket, key []byte, rec *sealed) error {
	old, engine, plain := t.lookup(bucket, key)
	return t.putOver(bucket, key, old, plain, engine, rec)
}

// putOver stores rec in place of old, the value at bucket/key (nil when
// there is none; oldPlain: an unsealed record of the overlay); inEngine
// says that the engine holds the key (see lookup), where it is then
// replaced. A message or delivery the engine does not hold goes to the
// overlay, when there is one.
func (t *txn) putOver(bucket, key, old []byte, oldPlain, inEngine bool, rec *sealed) error {
	if old != nil {
		t.forget(bucket, key, old, oldPlain)
	}
	if t.ovl != nil && !inEngine && overlaid(bucket) {
		t.ovl.put(bucket, key, ovlRec{v: rec.value})
	} else if err := t.bucket(bucket).Put(key, rec.value); err != nil {
		return err
	}
	t.logPut(bucket, key, rec.value)
	xorInto(&t.st.Digest, rec.elem)
	t.st.Records++
	t.noteID(rec.id)
	return nil
}

// putLater stores the message or delivery record l in place of old, the
// value at bucket/key (nil when there is none; oldPlain: an unsealed
// record of the overlay; inEngine: the engine holds it), and returns the
// record's version and, when counted, its element of the digest. A
// record the engine does not hold goes to the overlay without
// being sealed: until a checkpoint writes it to the engine (sealed then,
// under the same version), the commit log alone holds it, in a log
// record that AES-GCM encrypts under the log's key (derived from the
// data key) with the store, the log and the record's index as associated
// data, and whose authenticated plaintext names the record's bucket, key
// and version. It is as confidential, and as bound to its key and
// version, as a sealed record, and most such records (a message
// acknowledged before the next checkpoint) are never sealed at all: one
// encryption, the log's, instead of two. The version is drawn as for a
// sealed record, but the record's element (a keyed hash) is not added to
// the digest until the record is sealed into the engine (overlay.flush at
// a checkpoint, replayLog when the log is applied): most are deleted
// before, and their element is then never computed. The digest is
// therefore that of every record except the unsealed ones of the
// overlay, in the committer's state and in the state records of the log;
// Open checks the store file, which never holds an unsealed record.
func (t *txn) putLater(bucket, key, old []byte, oldPlain, inEngine bool, l *laterRecord) (version uint64, elem [32]byte, counted bool, err error) {
	if t.ovl != nil && !inEngine {
		if p, ver, ok := l.plainFor(t.s); ok {
			if old != nil {
				t.forget(bucket, key, old, oldPlain)
			}
			t.ovl.put(bucket, key, ovlRec{v: p, plain: true})
			if t.log != nil {
				t.log.putRecord(bucket, key, ver, p[sealHead:])
			}
			t.st.Records++
			t.noteID(ver)
			return ver, elem, false, nil
		}
	}
	rec, err := l.sealed(t.s)
	if err != nil {
		return 0, elem, false, err
	}
	return rec.id, rec.elem, true, t.putOver(bucket, key, old, oldPlain, inEngine, rec)
}

// forget takes the record old, stored at bucket/key, out of the digest
// (plain: an unsealed record of the overlay, which is not in it).
func (t *txn) forget(bucket, key, old []byte, plain bool) {
	var e recentRecord
	var ok bool
	switch {
	case bytes.Equal(bucket, bktDelivery):
		e, ok = t.s.recent.delivery(key, old)
	case bytes.Equal(bucket, bktMessage) && len(key) == 8:
		e, ok = t.s.recent.message(beUint64(key), old)
	}
	t.forgetKnown(bucket, key, old, plain, e, ok)
}

// forgetKnown takes the record old, stored at bucket/key, out of the
// digest, with e its entry of the recent records when ok: an unsealed
// record of the overlay (plain) was never in it; the element of another
// is e's when e has it, else computed.
func (t *txn) forgetKnown(bucket, key, old []byte, plain bool, e recentRecord, ok bool) {
	switch {
	case plain:
	case ok && e.counted:
		xorInto(&t.st.Digest, e.elem)
	case len(old) >= versionLen:
		xorInto(&t.st.Digest, t.s.keys.element(bucket, key, beUint64(old)))
	}
	t.st.Records--
}

// del removes bucket/key; it reports whether the record existed.
func (t *txn) del(bucket, key []byte) (bool, error) {
	if t.ovl != nil && overlaid(bucket) {
		old, engine := t.ovl.take(bucket, key)
		if old.v != nil {
			t.forget(bucket, key, old.v, old.plain)
			t.logDel(bucket, key)
			return true, nil
		}
		if !engine {
			return false, nil
		}
	}
	c := t.tx.Bucket(bucket).Cursor()
	k, old := c.Seek(key)
	if old == nil || !bytes.Equal(k, key) {
		return false, nil
	}
	t.forget(bucket, key, old, false)
	t.logDel(bucket, key)
	return true, c.Delete()
}

// get opens the record at bucket/key, nil when there is none.
func (t *txn) get(bucket, key []byte) (any, error) {
	v, _, plain := t.lookup(bucket, key)
	if v == nil {
		return nil, nil
	}
	return t.openAt(bucket, key, v, plain)
}

// openAt is open for a value lookup returned: plain is a record of the
// overlay that is not sealed.
func (t *txn) openAt(bucket, key, v []byte, plain bool) (any, error) {
	if plain {
		return decodeRecord(v[sealHead:])
	}
	return t.open(bucket, key, v)
}

// open decrypts and decodes the value v stored at bucket/key.
func (t *txn) open(bucket, key, v []byte) (any, error) {
	_, pt, err := t.s.keys.open(bucket, key, v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return decodeRecord(pt)
}

// openDelivery decrypts the delivery v stored at key (plain: see openAt).
func (t *txn) openDelivery(key, v []byte, plain bool) (*Delivery, error) {
	r, err := t.openAt(bktDelivery, key, v, plain)
	if err != nil {
		return nil, err
	}
	d, ok := r.(*Delivery)
	if !ok {
		return nil, fmt.Errorf("%w: delivery bucket holds another record type", ErrCorrupt)
	}
	return d, nil
}

func (t *txn) unref(id uint64) error {
	t.refs[id]--
	if t.refcount(id) <= 0 {
		if _, ok := t.newMsgs[id]; ok {
			t.newMsgs[id] = false
		}
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], id)
		_, err := t.del(bktMessage, k[:])
		return err
	}
	return nil
}

// prefixKeys returns the keys of bucket that start with prefix.
func (t *txn) prefixKeys(bucket, prefix []byte) [][]byte {
	var keys [][]byte
	c := t.tx.Bucket(bucket).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	return keys
}

func (o PutSession) prepare(s *Store) (Op, error) {
	if o.Session == nil {
		return nil, errors.New("store: PutSession without a session")
	}
	p := &putSession{key: s.keys.client(o.Session.ClientID).sess}
	var err error
	p.rec, err = s.sealNew(bktSession, p.key, o.Session, nil)
	return p, err
}

func (o PutSession) apply(t *txn) error { return prepareAndApply(t, o) }

type putSession struct {
	key []byte
	rec sealed
}

func (o *putSession) apply(t *txn) error {
	if err := t.putSealed(bktSession, o.key, &o.rec); err != nil {
		return err
	}
	t.setSession(o.key, true)
	return nil
}

func (o DeleteSession) prepare(s *Store) (Op, error) {
	return &deleteSession{sessKey: s.keys.sessionKey(o.ClientID), dlvPrefix: s.keys.deliveryPrefix(o.ClientID),
		in2Prefix: s.keys.inboundPrefix(o.ClientID), willKey: s.keys.willKey(o.ClientID)}, nil
}

func (o DeleteSession) apply(t *txn) error { return prepareAndApply(t, o) }

type deleteSession struct{ sessKey, dlvPrefix, in2Prefix, willKey []byte }

func (o *deleteSession) apply(t *txn) error {
	if _, err := t.del(bktSession, o.sessKey); err != nil {
		return err
	}
	t.setSession(o.sessKey, false)
	keys := t.prefixKeys(bktDelivery, o.dlvPrefix)
	if t.ovl != nil {
		keys = t.ovl.deliveryKeys(keys, o.dlvPrefix)
	}
	for _, k := range keys {
		if err := t.deleteDelivery(k); err != nil {
			return err
		}
	}
	for _, k := range t.prefixKeys(bktInbound, o.in2Prefix) {
		if _, err := t.del(bktInbound, k); err != nil {
			return err
		}
	}
	return t.delWithPublisher(bktWill, o.willKey)
}

func (o PutMessage) prepare(s *Store) (Op, error) {
	if o.Message == nil || o.Message.ID == 0 {
		return nil, errors.New("store: PutMessage needs a message with an ID from NextID")
	}
	p := &putMessage{id: o.Message.ID}
	binary.BigEndian.PutUint64(p.keyBuf[:], p.id)
	p.rec.init(s, bktMessage, p.keyBuf[:], o.Message)
	return p, nil
}

func (o PutMessage) apply(t *txn) error { return prepareAndApply(t, o) }

type putMessage struct {
	id     uint64
	keyBuf [8]byte
	rec    laterRecord
}

func (o *putMessage) apply(t *txn) error {
	_, again := t.newMsgs[o.id]
	t.noteID(o.id)
	t.newMsgs[o.id] = true
	var old []byte
	var inEngine, oldPlain bool
	if o.id <= t.maxID0 || again {
		// Not a new message: it may replace one.
		old, inEngine, oldPlain = t.lookup(bktMessage, o.keyBuf[:])
	}
	version, elem, counted, err := t.putLater(bktMessage, o.keyBuf[:], old, oldPlain, inEngine, &o.rec)
	if err == nil {
		t.s.recent.putMessage(o.id, recentRecord{version: version, elem: elem, counted: counted})
	}
	return err
}

func (o PutDelivery) prepare(s *Store) (Op, error) {
	d := o.Delivery
	if d == nil || d.Seq == 0 {
		return nil, errors.New("store: PutDelivery needs a delivery with a Seq from NextID")
	}
	cn := s.keys.client(d.ClientID)
	p := &putDelivery{msgID: d.MsgID, seq: d.Seq, sessKey: cn.sess}
	p.key = cn.appendDeliveryKey(p.keyBuf[:0], d.Seq)
	p.rec.init(s, bktDelivery, p.key, d)
	return p, nil
}

func (o PutDelivery) apply(t *txn) error { return prepareAndApply(t, o) }

type putDelivery struct {
	msgID, seq   uint64
	sessKey, key []byte // key is keyBuf
	keyBuf       [idLen + 8]byte
	rec          laterRecord
	// Set by coalesce, on the committer: left out of this batch, and
	// the next put of the same delivery in the batch.
	skip bool
	next *putDelivery
}

func (o *putDelivery) apply(t *txn) error {
	if err := t.needSession(o.sessKey); err != nil {
		return err
	}
	if !t.messageStored(o.msgID) {
		return fmt.Errorf("%w (message %d)", ErrUnknownMessage, o.msgID)
	}
	var old []byte
	var inEngine, oldPlain bool
	if o.seq > t.maxID0 {
		// Not stored before this transaction: only this transaction
		// can have put it.
		k := [idLen + 8]byte(o.key)
		if t.freshPuts[k] {
			old, inEngine, oldPlain = t.lookup(bktDelivery, o.key)
		} else {
			if t.freshPuts == nil {
				t.freshPuts = map[[idLen + 8]byte]bool{}
			}
			t.freshPuts[k] = true
		}
	} else {
		old, inEngine, oldPlain = t.lookup(bktDelivery, o.key)
	}
	var oldMsg uint64
	hadOld := old != nil
	if hadOld {
		if e, ok := t.s.recent.delivery(o.key, old); ok {
			oldMsg = e.msgID
			t.forgetKnown(bktDelivery, o.key, old, oldPlain, e, true)
			old = nil // taken out of the digest
		} else {
			od, err := t.openDelivery(o.key, old, oldPlain)
			if err != nil {
				return err
			}
			oldMsg = od.MsgID
		}
	}
	if t.putDlv == nil {
		t.putDlv = map[[idLen + 8]byte]uint64{}
	}
	t.putDlv[[idLen + 8]byte(o.key)] = o.msgID
	t.noteID(o.seq)
	t.refs[o.msgID]++
	version, elem, counted, err := t.putLater(bktDelivery, o.key, old, oldPlain, inEngine, &o.rec)
	if err != nil {
		return err
	}
	t.s.recent.putDelivery(o.key, recentRecord{version: version, msgID: o.msgID, elem: elem, counted: counted})
	if hadOld {
		return t.unref(oldMsg)
	}
	return nil
}

func (t *txn) deleteDelivery(key []byte) error {
	var v []byte
	var plain bool
	var c *bolt.Cursor // set when the engine holds the delivery
	if t.ovl != nil {
		r, engine := t.ovl.take(bktDelivery, key)
		if r.v == nil && !engine {
			return nil
		}
		v, plain = r.v, r.plain
	}
	if v == nil {
		c = t.tx.Bucket(bktDelivery).Cursor()
		k, cv := c.Seek(key)
		if cv == nil || !bytes.Equal(k, key) {
			return nil
		}
		v = cv
	}
	var msgID uint64
	if e, ok := t.s.recent.delivery(key, v); ok {
		msgID = e.msgID
		t.forgetKnown(bktDelivery, key, v, plain, e, true)
	} else {
		od, err := t.openDelivery(key, v, plain)
		if err != nil {
			return err
		}
		msgID = od.MsgID
		t.forget(bktDelivery, key, v, plain)
	}
	if c != nil {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	t.logDel(bktDelivery, key)
	if len(key) == idLen+8 {
		delete(t.putDlv, [idLen + 8]byte(key))
	}
	return t.unref(msgID)
}

func (o DeleteDelivery) prepare(s *Store) (Op, error) {
	p := &deleteDelivery{}
	p.key = s.keys.client(o.ClientID).appendDeliveryKey(p.keyBuf[:0], o.Seq)
	return p, nil
}

func (o DeleteDelivery) apply(t *txn) error { return prepareAndApply(t, o) }

type deleteDelivery struct {
	key    []byte // keyBuf
	keyBuf [idLen + 8]byte
	skip   bool // set by coalesce: left out of this batch
}

func (o *deleteDelivery) apply(t *txn) error { return t.deleteDelivery(o.key) }

func (o PutInbound) prepare(s *Store) (Op, error) {
	p := &putInbound{sessKey: s.keys.client(o.ClientID).sess, key: s.keys.inboundKey(o.ClientID, o.PacketID)}
	var err error
	p.rec, err = s.sealNew(bktInbound, p.key, &inbound{ClientID: o.ClientID, PacketID: o.PacketID}, nil)
	return p, err
}

func (o PutInbound) apply(t *txn) error { return prepareAndApply(t, o) }

type putInbound struct {
	sessKey, key []byte
	rec          sealed
}

func (o *putInbound) apply(t *txn) error {
	if err := t.needSession(o.sessKey); err != nil {
		return err
	}
	return t.putSealed(bktInbound, o.key, &o.rec)
}

func (o DeleteInbound) prepare(s *Store) (Op, error) {
	return &deleteRecord{bucket: bktInbound, key: s.keys.inboundKey(o.ClientID, o.PacketID)}, nil
}

func (o DeleteInbound) apply(t *txn) error { return prepareAndApply(t, o) }

// deleteRecord removes one record that nothing else refers to.
type deleteRecord struct{ bucket, key []byte }

func (o *deleteRecord) apply(t *txn) error {
	_, err := t.del(o.bucket, o.key)
	return err
}

// sealedPublisher is a publisher record, sealed, and its key.
type sealedPublisher struct {
	key []byte
	rec sealed
}

// sealPublisher seals p's record under the keyed hash of its encoding;
// nil for a nil (unknown) publisher.
func (s *Store) sealPublisher(p *Publisher) (*sealedPublisher, error) {
	if p == nil {
		return nil, nil
	}
	enc := encodeRecord(p)
	sp := &sealedPublisher{key: s.keys.publisherKey(enc)}
	var err error
	sp.rec, err = s.sealNew(bktPublisher, sp.key, nil, enc)
	return sp, err
}

// putWithPublisher puts a retained message or will, referencing its
// publisher's record (new reference first, so that a publisher both
// records name is never removed and stored again) and releasing the one
// the replaced record held. The publisher's record is sealed in advance
// and written only when the store does not hold it.
type putWithPublisher struct {
	bucket, key []byte
	pub         *sealedPublisher // nil: no publisher
	rec         sealed
}

func (o *putWithPublisher) apply(t *txn) error {
	old, err := t.oldPubKey(o.bucket, o.key)
	if err != nil {
		return err
	}
	if o.pub != nil {
		if err := t.refPublisher(o.pub); err != nil {
			return err
		}
	}
	if err := t.putSealed(o.bucket, o.key, &o.rec); err != nil {
		return err
	}
	return t.unrefPublisher(old)
}

func (o PutRetained) prepare(s *Store) (Op, error) {
	if o.Retained == nil {
		return nil, errors.New("store: PutRetained without a message")
	}
	r := *o.Retained // the caller's value is not modified
	return s.preparePutWithPublisher(bktRetained, s.keys.retainedKey(r.Topic), r.Publisher, &r.pubKey, &r)
}

func (o PutRetained) apply(t *txn) error { return prepareAndApply(t, o) }

func (s *Store) preparePutWithPublisher(bucket, key []byte, p *Publisher, pubKey *[]byte, rec any) (Op, error) {
	pub, err := s.sealPublisher(p)
	if err != nil {
		return nil, err
	}
	if pub != nil {
		*pubKey = pub.key
	}
	op := &putWithPublisher{bucket: bucket, key: key, pub: pub}
	op.rec, err = s.sealNew(bucket, key, rec, nil)
	return op, err
}

// delWithPublisher deletes a retained message or will and releases its
// publisher.
func (t *txn) delWithPublisher(bucket, key []byte) error {
	old, err := t.oldPubKey(bucket, key)
	if err != nil {
		return err
	}
	if _, err := t.del(bucket, key); err != nil {
		return err
	}
	return t.unrefPublisher(old)
}

// deleteWithPublisher is a prepared DeleteRetained or DeleteWill.
type deleteWithPublisher struct{ bucket, key []byte }

func (o *deleteWithPublisher) apply(t *txn) error { return t.delWithPublisher(o.bucket, o.key) }

func (o DeleteRetained) prepare(s *Store) (Op, error) {
	return &deleteWithPublisher{bucket: bktRetained, key: s.keys.retainedKey(o.Topic)}, nil
}

func (o DeleteRetained) apply(t *txn) error { return prepareAndApply(t, o) }

func (o PutWill) prepare(s *Store) (Op, error) {
	if o.Will == nil {
		return nil, errors.New("store: PutWill without a will")
	}
	w := *o.Will
	return s.preparePutWithPublisher(bktWill, s.keys.willKey(w.ClientID), w.Publisher, &w.pubKey, &w)
}

func (o PutWill) apply(t *txn) error { return prepareAndApply(t, o) }

func (o DeleteWill) prepare(s *Store) (Op, error) {
	return &deleteWithPublisher{bucket: bktWill, key: s.keys.willKey(o.ClientID)}, nil
}

func (o DeleteWill) apply(t *txn) error { return prepareAndApply(t, o) }

func beUint64(b []byte) uint64 {
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}
