package store

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
	"hash"
	"hash/maphash"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/argon2"

	"github.com/moatmq/moat/e2e/keyservice"
)

// Bucket names. They say what kind of record a bucket holds, which the
// record count would reveal anyway; keys and values reveal nothing else.
var (
	bktMeta     = []byte("meta")
	bktSession  = []byte("sess")
	bktMessage  = []byte("msg")
	bktDelivery = []byte("dlv")
	bktInbound  = []byte("in2")
	bktRetained = []byte("ret")
	bktWill     = []byte("will")
	// bktPublisher was added after the first stores were written: Open
	// creates it in a store that lacks it.
	bktPublisher = []byte("pub")
	dataBuckets  = [][]byte{bktSession, bktMessage, bktDelivery, bktInbound, bktRetained, bktWill, bktPublisher}
)

var (
	keyHeader = []byte("header")
	keyState  = []byte("state")
)

const (
	idLen      = 16 // truncated keyed hash naming a client or topic
	nonceLen   = 12
	versionLen = 8
	dekLen     = 32
)

// recordKeys are the keys derived from one data key (DEK).
//
// Records are not sealed under the DEK-derived key directly: the store
// draws a random 16-byte salt and seals records under HKDF(record key,
// salt), with random 12-byte nonces, until that key has sealed
// maxSealsPerKey records or the store is reopened; then it draws a new
// salt. A key therefore seals at most 2^20 records, far below the 2^32
// random nonces AES-GCM allows per key, however long the store lives, and
// nothing a crash can make repeat (a commit counter, a seal ID) takes part
// in choosing a nonce.
type recordKeys struct {
	storeID [16]byte
	recKey  []byte // HKDF input for the sealing keys
	idKey   []byte // HMAC key for bucket keys
	sumKey  []byte // HMAC key for the record digest
	logRoot []byte // HKDF input for the keys of the commit log (wal.go)
	idMACs  sync.Pool
	sumMACs sync.Pool

	sealing atomic.Pointer[sealKey] // the key sealing new records

	nameSeed maphash.Seed
	names    [nameShards]nameShard

	mu    sync.Mutex
	cache map[[saltLen]byte]cipher.AEAD // opening keys by salt
}

// sealKey is the key new records are sealed under, shared by every
// goroutine that seals.
type sealKey struct {
	salt [saltLen]byte
	aead cipher.AEAD
	uses atomic.Int64
}

const saltLen = 16

// maxSealsPerKey is how many records one sealing key seals before the
// next is drawn. With random 96-bit nonces the chance that two of them
// repeat under one key stays below 2^-57.
const maxSealsPerKey = 1 << 20

// aeadFor returns the AES-256-GCM key for salt.
func (k *recordKeys) aeadFor(salt [saltLen]byte) (cipher.AEAD, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if a := k.cache[salt]; a != nil {
		return a, nil
	}
	key, err := hkdf.Key(sha256.New, k.recKey, salt[:], "moat store transaction key", 32)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	a, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if k.cache == nil || len(k.cache) >= 4096 {
		k.cache = map[[saltLen]byte]cipher.AEAD{}
	}
	k.cache[salt] = a
	return a, nil
}

// sealingKey returns the key for the next seal, drawing a new one when
// the current one has sealed maxSealsPerKey records. Safe for concurrent
// use.
func (k *recordKeys) sealingKey() (*sealKey, error) {
	for {
		cur := k.sealing.Load()
		if cur != nil && cur.uses.Add(1) <= maxSealsPerKey {
			return cur, nil
		}
		n := &sealKey{}
		rand.Read(n.salt[:])
		a, err := k.aeadFor(n.salt)
		if err != nil {
			return nil, err
		}
		n.aead = a
		k.sealing.CompareAndSwap(cur, n) // whoever loses uses the winner's
	}
}

// mac takes a reset HMAC from pool, keyed with key.
func mac(pool *sync.Pool, key []byte) hash.Hash {
	if h, ok := pool.Get().(hash.Hash); ok {
		h.Reset()
		return h
	}
	return hmac.New(sha256.New, key)
}

func deriveKeys(dek []byte, storeID [16]byte) (*recordKeys, error) {
	if len(dek) != dekLen {
		return nil, errors.New("store: data key has the wrong length")
	}
	k := &recordKeys{storeID: storeID, nameSeed: maphash.MakeSeed()}
	var err error
	if k.recKey, err = hkdf.Key(sha256.New, dek, storeID[:], "moat store record encryption", 32); err != nil {
		return nil, err
	}
	if k.idKey, err = hkdf.Key(sha256.New, dek, storeID[:], "moat store key names", 32); err != nil {
		return nil, err
	}
	if k.sumKey, err = hkdf.Key(sha256.New, dek, storeID[:], "moat store record digest", 32); err != nil {
		return nil, err
	}
	if k.logRoot, err = hkdf.Key(sha256.New, dek, storeID[:], "moat store commit log", 32); err != nil {
		return nil, err
	}
	return k, nil
}

// name returns the keyed hash that stands for a client ID or topic in
// bucket keys: equal names give equal keys, and the key reveals nothing
// about the name without the DEK.
func (k *recordKeys) name(kind string, s string) []byte {
	m := mac(&k.idMACs, k.idKey)
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write([]byte(s))
	out := m.Sum(make([]byte, 0, sha256.Size+8))[:idLen]
	k.idMACs.Put(m)
	return out
}

func (k *recordKeys) sessionKey(clientID string) []byte { return k.name("sess", clientID) }

// clientNames are the keyed hashes of one client ID that the hot path
// needs for every message: its session's key and its deliveries' prefix.
type clientNames struct{ sess, dlv []byte }

// nameShards and maxCachedNames bound the cache of client names: a few
// MiB at most; a shard that fills up is emptied and fills again.
const (
	nameShards     = 16
	maxCachedNames = 1 << 14
)

type nameShard struct {
	mu sync.Mutex
	m  map[string]*clientNames
}

// client returns clientID's names, from the cache when they are in it.
// The names are shared: callers must not modify them. Safe for
// concurrent use.
func (k *recordKeys) client(clientID string) *clientNames {
	sh := &k.names[maphash.String(k.nameSeed, clientID)%nameShards]
	sh.mu.Lock()
	cn := sh.m[clientID]
	sh.mu.Unlock()
	if cn != nil {
		return cn
	}
	cn = &clientNames{sess: k.sessionKey(clientID), dlv: k.deliveryPrefix(clientID)}
	sh.mu.Lock()
	if sh.m == nil || len(sh.m) >= maxCachedNames/nameShards {
		sh.m = make(map[string]*clientNames)
	}
	sh.m[clientID] = cn
	sh.mu.Unlock()
	return cn
}

// appendDeliveryKey appends the key of the client's delivery seq to dst.
func (cn *clientNames) appendDeliveryKey(dst []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, cn.dlv...), seq)
}

func (k *recordKeys) willKey(clientID string) []byte  { return k.name("will", clientID) }
func (k *recordKeys) retainedKey(topic string) []byte { return k.name("ret", topic) }

// publisherKey names a publisher record by its content: the records of
// equal publishers share it.
func (k *recordKeys) publisherKey(enc []byte) []byte { return k.name("pub", string(enc)) }
func (k *recordKeys) deliveryPrefix(clientID string) []byte {
	return k.name("dlv", clientID)
}
func (k *recordKeys) inboundPrefix(clientID string) []byte { return k.name("in2", clientID) }

func (k *recordKeys) deliveryKey(clientID string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(k.deliveryPrefix(clientID), seq)
}
func (k *recordKeys) inboundKey(clientID string, pid uint16) []byte {
	return binary.BigEndian.AppendUint16(k.inboundPrefix(clientID), pid)
}
func messageKey(id uint64) []byte { return binary.BigEndian.AppendUint64(nil, id) }

// aad binds a sealed value to its store, bucket, key and version: a value
// moved to another key or bucket, or written back with another version,
// does not open.
func (k *recordKeys) aad(bucket, key []byte, version uint64) []byte {
	return k.appendAAD(make([]byte, 0, len(aadLabel)+16+1+len(bucket)+len(key)+8), bucket, key, version)
}

const aadLabel = "moat-store/1"

func (k *recordKeys) appendAAD(a, bucket, key []byte, version uint64) []byte {
	a = append(a, aadLabel...)
	a = append(a, k.storeID[:]...)
	a = append(a, byte(len(bucket)))
	a = append(a, bucket...)
	a = binary.BigEndian.AppendUint64(a, version)
	return append(a, key...)
}

// gcmOverhead is the AES-GCM tag length.
const gcmOverhead = 16

// seal returns version ‖ salt ‖ nonce ‖ AES-256-GCM(plaintext) under the
// current sealing key. Safe for concurrent use.
func (k *recordKeys) seal(bucket, key []byte, version uint64, plaintext []byte) ([]byte, error) {
	sk, err := k.sealingKey()
	if err != nil {
		return nil, fmt.Errorf("store: sealing key: %w", err)
	}
	const head = versionLen + saltLen + nonceLen
	out := make([]byte, head, head+len(plaintext)+gcmOverhead)
	binary.BigEndian.PutUint64(out, version)
	copy(out[versionLen:], sk.salt[:])
	rand.Read(out[versionLen+saltLen : head])
	return sk.aead.Seal(out, out[versionLen+saltLen:head], plaintext, k.aad(bucket, key, version)), nil
}

// A record's version is a number no other record ever written under its
// key has had, and no higher than the store's commit counter; it is in
// the associated data and in the record's element of the digest, so a
// record replaced by an older copy of itself is detected. Records are
// sealed before their transaction, on whichever goroutine is free to do
// it, so the version is not the transaction's commit counter (which is
// known only inside the transaction) but a seal ID drawn from the store's
// ID counter (Store.NextID). IDs are unique in the store: Open starts
// them above every ID and every commit counter the store holds, and each
// transaction raises the commit counter to at least the highest ID it
// wrote, so a seal ID never equals a commit counter that versioned a
// record (stores written before seal IDs, and earlier versions of Moat,
// use the commit counter) and every version stays within the counter,
// which keeps the file readable by those versions.

// sealed is a record sealed for the store: the value to store and the
// record's element of the digest, both bound to its seal ID.
type sealed struct {
	value []byte
	elem  [32]byte
	id    uint64 // the seal ID, for the state's highest ID
}

// plainRecord is a record encoded for sealing: its plaintext in a buffer
// with room before it for the value's header and after it for the tag
// and the associated data, so that sealing takes no further allocation.
type plainRecord []byte

const sealHead = versionLen + saltLen + nonceLen

// encodeForSeal encodes rec (or copies plaintext, when rec is nil) for
// sealing under bucket/key. Safe for concurrent use.
func (k *recordKeys) encodeForSeal(bucket, key []byte, rec any, plaintext []byte) plainRecord {
	size := len(plaintext)
	if rec != nil {
		size = recordSizeHint(rec)
	}
	aadLen := len(aadLabel) + len(k.storeID) + 1 + len(bucket) + versionLen + len(key)
	out := make([]byte, sealHead, sealHead+size+gcmOverhead+aadLen)
	if rec != nil {
		return appendRecord(out, rec)
	}
	return append(out, plaintext...)
}

// sealPlain seals p for bucket/key under seal ID id, in place: p must not be
// used afterwards. Safe for concurrent use.
func (k *recordKeys) sealPlain(p plainRecord, bucket, key []byte, id uint64) (sealed, error) {
	v, err := k.sealPlainValue(p, bucket, key, id)
	if err != nil {
		return sealed{}, err
	}
	return sealed{value: v, elem: k.element(bucket, key, id), id: id}, nil
}

// sealPlainValue is sealPlain without the record's element of the digest.
func (k *recordKeys) sealPlainValue(p plainRecord, bucket, key []byte, id uint64) ([]byte, error) {
	if id == 0 {
		return nil, errors.New("store: seal ID 0")
	}
	sk, err := k.sealingKey()
	if err != nil {
		return nil, fmt.Errorf("store: sealing key: %w", err)
	}
	out := []byte(p)
	binary.BigEndian.PutUint64(out, id)
	copy(out[versionLen:], sk.salt[:])
	rand.Read(out[versionLen+saltLen : sealHead])
	aadLen := len(aadLabel) + len(k.storeID) + 1 + len(bucket) + versionLen + len(key)
	var aad []byte
	if end := len(out) + gcmOverhead; cap(out)-end >= aadLen {
		aad = k.appendAAD(out[end:end:cap(out)], bucket, key, id)
	} else {
		aad = k.aad(bucket, key, id) // the encoding outgrew its hint
	}
	// Sealed in place: the ciphertext overwrites the plaintext exactly.
	v := sk.aead.Seal(out[:sealHead], out[versionLen+saltLen:sealHead], out[sealHead:], aad)
	return v[:len(v):len(v)], nil
}

// errSeal is wrapped when a value does not open.
var errSeal = errors.New("store: record fails authentication (altered, moved or from another store)")

// open authenticates and decrypts a sealed value and returns its version
// and plaintext.
func (k *recordKeys) open(bucket, key, value []byte) (uint64, []byte, error) {
	const head = versionLen + saltLen + nonceLen
	if len(value) < head+gcmOverhead {
		return 0, nil, fmt.Errorf("%w: value too short", errSeal)
	}
	v := binary.BigEndian.Uint64(value)
	a, err := k.aeadFor([saltLen]byte(value[versionLen : versionLen+saltLen]))
	if err != nil {
		return 0, nil, err
	}
	pt, err := a.Open(nil, value[versionLen+saltLen:head], value[head:], k.aad(bucket, key, v))
	if err != nil {
		return 0, nil, errSeal
	}
	return v, pt, nil
}

// element is one record's contribution to the store digest: a keyed hash
// of bucket, key and version. The digest is the XOR of all elements, so a
// put or delete updates it without reading other records, and a record
// replaced by an older version of itself, removed or added changes it.
func (k *recordKeys) element(bucket, key []byte, version uint64) [32]byte {
	m := mac(&k.sumMACs, k.sumKey)
	defer k.sumMACs.Put(m)
	m.Write([]byte{byte(len(bucket))})
	m.Write(bucket)
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], version)
	m.Write(v[:])
	m.Write(key)
	var out [32]byte
	m.Sum(out[:0])
	return out
}

func xorInto(dst *[32]byte, e [32]byte) {
	for i := range dst {
		dst[i] ^= e[i]
	}
}

// header is the unsealed first record: the store's identity, how the KEK
// is obtained and the wrapped DEK.
type header struct {
	StoreID    [16]byte
	Passphrase bool // KEK derived from a passphrase with Argon2
	Salt       [16]byte
	Argon2     keyservice.Argon2Params
	WrappedDEK []byte
}

const headerMagic = "MOATSTORE1"

func (h *header) marshal() []byte {
	e := &enc{b: []byte(headerMagic)}
	e.b = append(e.b, h.StoreID[:]...)
	e.boolean(h.Passphrase)
	e.b = append(e.b, h.Salt[:]...)
	e.u32(h.Argon2.Time)
	e.u32(h.Argon2.Memory)
	e.u8(h.Argon2.Threads)
	e.bytes(h.WrappedDEK)
	return e.b
}

func parseHeader(b []byte) (*header, error) {
	if len(b) < len(headerMagic) || string(b[:len(headerMagic)]) != headerMagic {
		return nil, errors.New("store: header missing or of an unknown format")
	}
	d := &dec{b: b[len(headerMagic):]}
	h := &header{}
	if d.need(16) {
		copy(h.StoreID[:], d.b)
		d.b = d.b[16:]
	}
	h.Passphrase = d.boolean()
	if d.need(16) {
		copy(h.Salt[:], d.b)
		d.b = d.b[16:]
	}
	h.Argon2 = keyservice.Argon2Params{Time: d.u32(), Memory: d.u32(), Threads: d.u8()}
	h.WrappedDEK = d.bytes()
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return nil, fmt.Errorf("store: header: %w", d.err)
	}
	return h, nil
}

// wrapAAD binds the wrapped DEK to the store and to how its KEK is made.
func (h *header) wrapAAD() []byte {
	h2 := *h
	h2.WrappedDEK = nil
	return append([]byte("moat-store dek/1"), h2.marshal()...)
}

// maxArgon2Memory bounds the memory a header may ask Argon2 for (KiB), so
// a damaged header cannot exhaust memory.
const maxArgon2Memory = 1 << 20 // 1 GiB

func passphraseKEK(pass []byte, salt [16]byte, p keyservice.Argon2Params) (keyservice.KEKBackend, error) {
	if len(pass) == 0 {
		return nil, errors.New("store: empty passphrase")
	}
	if p.Time == 0 || p.Time > 16 || p.Memory < 8*uint32(max(p.Threads, 1)) || p.Memory > maxArgon2Memory || p.Threads == 0 {
		return nil, errors.New("store: header carries unusable Argon2 parameters (damaged header?)")
	}
	key := argon2.IDKey(pass, salt[:], p.Time, p.Memory, p.Threads, 32)
	defer clear(key)
	return keyservice.NewLocalKEK(key)
}
