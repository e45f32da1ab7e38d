package store

import (
	"bytes"
	"errors"
	"fmt"

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

func (t *txn) needSession(clientID string) error {
	if t.tx.Bucket(bktSession).Get(t.s.keys.sessionKey(clientID)) == nil {
		return ErrUnknownSession
	}
	return nil
}

// txn is one write transaction of the committer.
type txn struct {
	s       *Store
	tx      *bolt.Tx
	version uint64
	st      state
	refs    map[uint64]int // changes to Store.refs
	newMsgs map[uint64]bool
	prefs   map[string]int // changes to Store.prefs
}

func (t *txn) refcount(id uint64) int { return t.s.refs[id] + t.refs[id] }

// refPublisher stores p's record unless it is there, counts the
// reference and returns its key; nil for a nil (unknown) publisher.
func (t *txn) refPublisher(p *Publisher) ([]byte, error) {
	if p == nil {
		return nil, nil
	}
	enc := encodeRecord(p)
	key := t.s.keys.publisherKey(enc)
	k := string(key)
	if t.s.prefs[k]+t.prefs[k] <= 0 {
		if err := t.put(bktPublisher, key, enc); err != nil {
			return nil, err
		}
	}
	t.prefs[k]++
	return key, nil
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

// put seals plaintext under bucket/key and keeps the digest current.
func (t *txn) put(bucket, key, plaintext []byte) error {
	b := t.tx.Bucket(bucket)
	if bytes.Equal(bucket, bktMessage) || bytes.Equal(bucket, bktDelivery) {
		// Message IDs and a session's delivery sequence numbers grow:
		// pages filled before they split stay dense.
		b.FillPercent = 0.9
	}
	if old := b.Get(key); old != nil {
		t.forget(bucket, key, old)
	}
	if err := b.Put(key, t.s.keys.seal(bucket, key, t.version, plaintext)); err != nil {
		return err
	}
	xorInto(&t.st.Digest, t.s.keys.element(bucket, key, t.version))
	t.st.Records++
	return nil
}

func (t *txn) forget(bucket, key, old []byte) {
	if len(old) >= versionLen {
		xorInto(&t.st.Digest, t.s.keys.element(bucket, key, beUint64(old)))
	}
	t.st.Records--
}

// del removes bucket/key; it reports whether the record existed.
func (t *txn) del(bucket, key []byte) (bool, error) {
	b := t.tx.Bucket(bucket)
	old := b.Get(key)
	if old == nil {
		return false, nil
	}
	t.forget(bucket, key, old)
	return true, b.Delete(key)
}

// get opens the record at bucket/key, nil when there is none.
func (t *txn) get(bucket, key []byte) (any, error) {
	v := t.tx.Bucket(bucket).Get(key)
	if v == nil {
		return nil, nil
	}
	_, pt, err := t.s.keys.open(bucket, key, v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return decodeRecord(pt)
}

func (t *txn) unref(id uint64) error {
	t.refs[id]--
	if t.refcount(id) <= 0 {
		_, err := t.del(bktMessage, messageKey(id))
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

func (o PutSession) apply(t *txn) error {
	if o.Session == nil {
		return errors.New("store: PutSession without a session")
	}
	return t.put(bktSession, t.s.keys.sessionKey(o.Session.ClientID), encodeRecord(o.Session))
}

func (o DeleteSession) apply(t *txn) error {
	if _, err := t.del(bktSession, t.s.keys.sessionKey(o.ClientID)); err != nil {
		return err
	}
	for _, k := range t.prefixKeys(bktDelivery, t.s.keys.deliveryPrefix(o.ClientID)) {
		if err := t.deleteDelivery(k); err != nil {
			return err
		}
	}
	for _, k := range t.prefixKeys(bktInbound, t.s.keys.inboundPrefix(o.ClientID)) {
		if _, err := t.del(bktInbound, k); err != nil {
			return err
		}
	}
	return t.deleteWill(o.ClientID)
}

func (o PutMessage) apply(t *txn) error {
	if o.Message == nil || o.Message.ID == 0 {
		return errors.New("store: PutMessage needs a message with an ID from NextID")
	}
	t.noteID(o.Message.ID)
	t.newMsgs[o.Message.ID] = true
	return t.put(bktMessage, messageKey(o.Message.ID), encodeRecord(o.Message))
}

func (o PutDelivery) apply(t *txn) error {
	d := o.Delivery
	if d == nil || d.Seq == 0 {
		return errors.New("store: PutDelivery needs a delivery with a Seq from NextID")
	}
	if err := t.needSession(d.ClientID); err != nil {
		return err
	}
	if t.tx.Bucket(bktMessage).Get(messageKey(d.MsgID)) == nil {
		return fmt.Errorf("%w (message %d)", ErrUnknownMessage, d.MsgID)
	}
	key := t.s.keys.deliveryKey(d.ClientID, d.Seq)
	old, err := t.get(bktDelivery, key)
	if err != nil {
		return err
	}
	t.noteID(d.Seq)
	t.refs[d.MsgID]++
	if err := t.put(bktDelivery, key, encodeRecord(d)); err != nil {
		return err
	}
	if od, ok := old.(*Delivery); ok {
		return t.unref(od.MsgID)
	}
	return nil
}

func (t *txn) deleteDelivery(key []byte) error {
	old, err := t.get(bktDelivery, key)
	if err != nil || old == nil {
		return err
	}
	od, ok := old.(*Delivery)
	if !ok {
		return fmt.Errorf("%w: delivery bucket holds another record type", ErrCorrupt)
	}
	if _, err := t.del(bktDelivery, key); err != nil {
		return err
	}
	return t.unref(od.MsgID)
}

func (o DeleteDelivery) apply(t *txn) error {
	return t.deleteDelivery(t.s.keys.deliveryKey(o.ClientID, o.Seq))
}

func (o PutInbound) apply(t *txn) error {
	if err := t.needSession(o.ClientID); err != nil {
		return err
	}
	return t.put(bktInbound, t.s.keys.inboundKey(o.ClientID, o.PacketID), encodeRecord(&inbound{ClientID: o.ClientID, PacketID: o.PacketID}))
}

func (o DeleteInbound) apply(t *txn) error {
	_, err := t.del(bktInbound, t.s.keys.inboundKey(o.ClientID, o.PacketID))
	return err
}

func (o PutRetained) apply(t *txn) error {
	if o.Retained == nil {
		return errors.New("store: PutRetained without a message")
	}
	r := *o.Retained // the caller's value is not modified
	return t.putWithPublisher(bktRetained, t.s.keys.retainedKey(r.Topic), r.Publisher, &r.pubKey, &r)
}

// putWithPublisher puts a retained message or will, referencing its
// publisher's record (new reference first, so that a publisher both
// records name is never removed and stored again) and releasing the one
// the replaced record held.
func (t *txn) putWithPublisher(bucket, key []byte, p *Publisher, pubKey *[]byte, rec any) error {
	old, err := t.oldPubKey(bucket, key)
	if err != nil {
		return err
	}
	if *pubKey, err = t.refPublisher(p); err != nil {
		return err
	}
	if err := t.put(bucket, key, encodeRecord(rec)); err != nil {
		return err
	}
	return t.unrefPublisher(old)
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

func (o DeleteRetained) apply(t *txn) error {
	return t.delWithPublisher(bktRetained, t.s.keys.retainedKey(o.Topic))
}

func (o PutWill) apply(t *txn) error {
	if o.Will == nil {
		return errors.New("store: PutWill without a will")
	}
	w := *o.Will
	return t.putWithPublisher(bktWill, t.s.keys.willKey(w.ClientID), w.Publisher, &w.pubKey, &w)
}

func (t *txn) deleteWill(clientID string) error {
	return t.delWithPublisher(bktWill, t.s.keys.willKey(clientID))
}

func (o DeleteWill) apply(t *txn) error { return t.deleteWill(o.ClientID) }

func beUint64(b []byte) uint64 {
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}
