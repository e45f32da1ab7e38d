package cluster

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/moatmq/moat/internal/broker"
)

// retSpill keeps on disk the retained changes of this node that wait for
// the retained bucket, so that a node stopped or killed while the cluster
// was unreachable writes them once it starts again instead of losing them
// (the local store alone would give them up: the bucket's older value
// replaces it at start). The queue is copied once a write failed (the
// bucket unreachable) and as long as changes wait, and when the node
// closes with changes left; it is cleared once the queue is empty. While
// the cluster is healthy a change waits milliseconds and nothing is
// written here.
//
// Each record is sealed with AES-256-GCM under a key derived from
// Config.RetainedSpillKey (the node's store key in moat serve), its
// topic replaced by an HMAC of it: like the JetStream files, the file protects copies of the data
// directory without the key file. Only the retained bucket's loop uses a
// retSpill (and Close after that loop ended), so it has no lock.
type retSpill struct {
	db   *bolt.DB
	aead cipher.AEAD
	mac  []byte
	// held is, per topic, the change on disk; seq the queue's last
	// change copied (pendingQueue.since).
	held map[string]*broker.Message
	seq  uint64
	// gone holds the changes written to the bucket since the last sync,
	// removed from disk at the next.
	gone []*broker.Message
	// member is the name of the cluster whose retained bucket this
	// node's store was last compared with (reconcileRetained); "" for
	// none yet.
	member string
}

var (
	spillBucket = []byte("retained")
	stateBucket = []byte("state")
	memberKey   = []byte("member")
)

// spillVersion prefixes each sealed record.
const spillVersion = 1

// openSpill opens (creating it with mode 0600) the spill file at path.
func openSpill(path string, storeKey []byte) (*retSpill, error) {
	if len(storeKey) != 32 {
		return nil, errors.New("cluster: the retained spill needs a 32-byte key")
	}
	encKey, err := hkdf.Key(sha256.New, storeKey, nil, "moat cluster retained spill: seal", 32)
	if err != nil {
		return nil, err
	}
	macKey, err := hkdf.Key(sha256.New, storeKey, nil, "moat cluster retained spill: topic", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(encKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("cluster: retained spill %s: %w", path, err)
	}
	var member string
	if err := db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(spillBucket); err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(stateBucket)
		member = string(b.Get(memberKey))
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("cluster: retained spill %s: %w", path, err)
	}
	return &retSpill{db: db, aead: aead, mac: macKey, held: make(map[string]*broker.Message), member: member}, nil
}

// setMember records that this node's store was compared with the
// retained bucket of the cluster name.
func (s *retSpill) setMember(name string) error {
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(stateBucket).Put(memberKey, []byte(name))
	}); err != nil {
		return err
	}
	s.member = name
	return nil
}

func (s *retSpill) close() error { return s.db.Close() }

// openSpillOrSetAside is openSpill that sets a damaged file aside
// (renamed to path.damaged-UNIXTIME, logged at Error) and starts a new
// one: the changes it held are lost, as all were before the spill
// existed, and the node starts. A file another process holds (bbolt's
// lock), or one that cannot be opened at all, is an error.
func openSpillOrSetAside(path string, key []byte, log *slog.Logger) (*retSpill, error) {
	sp, err := openSpill(path, key)
	if err == nil || !damagedSpill(err) {
		return sp, err
	}
	aside, rerr := setSpillAside(path)
	if rerr != nil {
		return nil, errors.Join(err, rerr)
	}
	log.Error("cluster: the file of retained changes waiting for the cluster is damaged; set aside, its changes are not written",
		"file", path, "moved_to", aside, "err", err)
	return openSpill(path, key)
}

func damagedSpill(err error) bool {
	return errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrChecksum) || errors.Is(err, berrors.ErrVersionMismatch)
}

func setSpillAside(path string) (string, error) {
	aside := fmt.Sprintf("%s.damaged-%d", path, time.Now().Unix())
	return aside, os.Rename(path, aside)
}

// shrink starts the file anew once it holds nothing: bbolt reuses the
// pages a long outage filled but never gives them back to the disk.
func (s *retSpill) shrink(path string, key []byte) error {
	if len(s.held) > 0 {
		return nil
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() <= 1<<20 {
		return err
	}
	if err := s.db.Close(); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil {
		return err
	}
	fresh, err := openSpill(path, key)
	if err != nil {
		return err
	}
	fresh.seq = s.seq
	if s.member != "" {
		if err := fresh.setMember(s.member); err != nil {
			fresh.close()
			return err
		}
	}
	*s = *fresh
	return nil
}

// loadOrSetAside is load that survives a file whose pages the reader
// cannot follow (bbolt panics on some damage): the file is set aside
// and a new one opened, and nothing is returned.
func (s *retSpill) loadOrSetAside(path string, key []byte, now time.Time, log *slog.Logger) (ws []kvWrite, bad int, err error) {
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("cluster: reading the retained spill: %v", r)
			}
		}()
		ws, bad, err = s.load(now)
	}()
	if err == nil {
		return ws, bad, nil
	}
	_ = s.db.Close()
	aside, rerr := setSpillAside(path)
	if rerr != nil {
		return nil, 0, errors.Join(err, rerr)
	}
	log.Error("cluster: the file of retained changes waiting for the cluster could not be read; set aside, its changes are not written",
		"file", path, "moved_to", aside, "err", err)
	fresh, oerr := openSpill(path, key)
	if oerr != nil {
		return nil, 0, oerr
	}
	*s = *fresh
	return nil, 0, nil
}

// key is the record's key: the topic's HMAC.
func (s *retSpill) key(topic string) []byte {
	h := hmac.New(sha256.New, s.mac)
	h.Write([]byte(topic))
	return h.Sum(nil)
}

// seal encodes the change w as a record: the version, the time it was
// copied (which a message expiry counts from), the message's creation
// time, then the record as the bucket holds it.
func (s *retSpill) seal(key []byte, w kvWrite, now time.Time) ([]byte, error) {
	rec, err := encodeRetained(retainedRecord{pub: w.pub, msg: w.retained}, now)
	if err != nil {
		return nil, err
	}
	plain := make([]byte, 0, 1+16+len(rec))
	plain = append(plain, spillVersion)
	plain = binary.BigEndian.AppendUint64(plain, uint64(now.UnixNano()))
	plain = binary.BigEndian.AppendUint64(plain, uint64(w.retained.Created.UnixNano()))
	plain = append(plain, rec...)
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, plain, key), nil
}

// open decodes a record of key; a message that expired since it was
// copied is reported as errExpired.
func (s *retSpill) open(key, val []byte, now time.Time) (kvWrite, error) {
	ns := s.aead.NonceSize()
	if len(val) < ns {
		return kvWrite{}, errRecord
	}
	plain, err := s.aead.Open(nil, val[:ns], val[ns:], key)
	if err != nil {
		return kvWrite{}, fmt.Errorf("cluster: retained spill record not readable with this node's key: %w", err)
	}
	w, err := decodeSpilled(plain, now)
	if err != nil {
		return kvWrite{}, err
	}
	if !hmac.Equal(key, s.key(w.retained.Topic)) {
		return kvWrite{}, errRecord
	}
	return w, nil
}

// decodeSpilled decodes an opened record (seal).
func decodeSpilled(plain []byte, now time.Time) (kvWrite, error) {
	if len(plain) < 17 || plain[0] != spillVersion {
		return kvWrite{}, errRecord
	}
	at := time.Unix(0, int64(binary.BigEndian.Uint64(plain[1:])))
	created := time.Unix(0, int64(binary.BigEndian.Uint64(plain[9:])))
	r, err := decodeRetained(plain[17:], at)
	if err != nil {
		return kvWrite{}, err
	}
	if !r.msg.Expires.IsZero() && !r.msg.Expires.After(now) {
		return kvWrite{}, errExpired
	}
	r.msg.Created = created
	return kvWrite{retained: r.msg, pub: r.pub, restored: true}, nil
}

// load returns the changes on disk, oldest first as far as the file
// knows (by creation time), and notes them as held. Records that cannot
// be read are removed and counted in bad; expired ones are removed.
func (s *retSpill) load(now time.Time) (ws []kvWrite, bad int, err error) {
	var drop [][]byte
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(spillBucket).ForEach(func(k, v []byte) error {
			w, err := s.open(k, v, now)
			if err != nil {
				if !errors.Is(err, errExpired) {
					bad++
				}
				drop = append(drop, append([]byte(nil), k...))
				return nil
			}
			ws = append(ws, w)
			return nil
		})
	})
	if err != nil {
		return nil, 0, err
	}
	if len(drop) > 0 {
		if err := s.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(spillBucket)
			for _, k := range drop {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, 0, err
		}
	}
	sortByCreated(ws)
	for _, w := range ws {
		s.held[w.retained.Topic] = w.retained
	}
	return ws, bad, nil
}

func sortByCreated(ws []kvWrite) {
	slices.SortStableFunc(ws, func(a, b kvWrite) int { return a.retained.Created.Compare(b.retained.Created) })
}

// written notes that the change m was written to the bucket (or given up).
func (s *retSpill) written(m *broker.Message) {
	if s.held[m.Topic] == m {
		s.gone = append(s.gone, m)
	}
}

// sync brings the file in line with the queue q: the changes queued
// since the last sync are copied, those written since are removed, and
// an empty queue empties the file. One transaction, one fsync.
func (s *retSpill) sync(q *pendingQueue[string, kvWrite], now time.Time) error {
	fresh, seq := q.since(s.seq)
	empty := q.len() == 0
	if len(fresh) == 0 && len(s.gone) == 0 && (!empty || len(s.held) == 0) {
		return nil
	}
	rebuild := empty || len(s.held) > 2*maxPendingWrites
	var put []*broker.Message
	err := s.db.Update(func(tx *bolt.Tx) error {
		put = put[:0]
		b := tx.Bucket(spillBucket)
		if rebuild {
			// Empty, or holding changes the queue evicted long ago:
			// start the file again from the queue.
			if err := tx.DeleteBucket(spillBucket); err != nil {
				return err
			}
			var err error
			if b, err = tx.CreateBucket(spillBucket); err != nil {
				return err
			}
			if !empty {
				fresh, seq = q.since(0)
			}
		} else {
			for _, m := range s.gone {
				if s.held[m.Topic] == m {
					if err := b.Delete(s.key(m.Topic)); err != nil {
						return err
					}
				}
			}
		}
		for _, w := range fresh {
			if w.retained == nil {
				continue
			}
			k := s.key(w.retained.Topic)
			v, err := s.seal(k, w, now)
			if errors.Is(err, errExpired) {
				if err := b.Delete(k); err != nil {
					return err
				}
				continue
			}
			if err != nil {
				return err
			}
			if err := b.Put(k, v); err != nil {
				return err
			}
			put = append(put, w.retained)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if rebuild {
		clear(s.held)
	} else {
		for _, m := range s.gone {
			if s.held[m.Topic] == m {
				delete(s.held, m.Topic)
			}
		}
	}
	for _, m := range put {
		s.held[m.Topic] = m
	}
	s.gone = s.gone[:0]
	s.seq = seq
	return nil
}

// drainRetained gives the retained changes queued when the node closes up
// to 2 s to reach the bucket, unless its writes are failing: a retained
// message published just before a stop is then in the cluster, not only
// in this node's store (or its spill).
func (n *Node) drainRetained() {
	kv := n.kvs()
	kv.mu.Lock()
	ready := kv.retained != nil
	kv.mu.Unlock()
	if !ready || n.b == nil || n.ctx.Err() != nil {
		return
	}
	deadline := time.Now().Add(2 * time.Second)
	for kv.ret.writes.len() > 0 && !kv.retFailing.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// closeSpill copies what still waits for the retained bucket to the
// spill, once the loops have ended, and closes it.
func (n *Node) closeSpill() {
	kv := n.kvs()
	if kv.ret.spill == nil {
		return
	}
	sp := kv.ret.spill
	if kv.ret.writes.len() > 0 || len(sp.held) > 0 {
		n.syncSpill(&kv.ret)
	}
	if left := kv.ret.writes.len(); left > 0 {
		n.log.Info("cluster: retained changes not yet in the cluster are kept on disk and written when the node runs again",
			"changes", left, "file", n.cfg.RetainedSpill)
	}
	if err := sp.close(); err != nil {
		n.log.Warn("cluster: closing the retained spill", "err", err)
	}
	kv.ret.spill = nil // a second Close has nothing to do
}
