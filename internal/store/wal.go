package store

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The commit log (every sync mode).
//
// A commit is made durable by appending one record to the log file,
// store.wal, and an fdatasync of it: with SyncAlways before it is
// reported (one fdatasync shared by the records appended while the
// previous one ran), with SyncBatch every interval, with SyncOff at
// Close. The storage engine's
// file is written behind the log: the committer applies every batch to
// one long engine transaction, which is committed (with the engine's own
// two fsyncs) only at a checkpoint, once the log holds 16 MiB or a second
// after the last one, and at Close. A checkpoint names, in the engine's
// file, the log that continues it; the log is then replaced by a new,
// empty one. A crash loses the uncommitted engine transaction and nothing
// else: Open replays the log's records into the engine before the store
// is read.
//
// Layout of store.wal:
//
//	header (64 bytes): "MOATWAL2" | store ID (16) | log ID (16) |
//	                   base counter (8, big endian) | GCM tag (16)
//	record:            length (4, big endian) | index (8) | check (4) |
//	                   AES-256-GCM ciphertext and tag (length bytes)
//
// ("MOATWAL1": a log of the previous format, read the same way, whose
// state records counted its put-records in the digest; see replayLog.)
//
// The check is CRC-32C of the length and the index. The index is also
// authenticated (below); in the clear, with the check, it lets a reader
// that meets a damaged record find the authentic records after it, and
// learn from them whether it was durable (damage) or not (the torn end of
// the log).
//
// Every log has its own key, HKDF(the data key's log root, log ID): a
// record copied from another log, of this store or another, does not
// open. A record's nonce is its index in the file (0, 1, 2, ...), and the
// store ID, log ID and index are its associated data: a record moved,
// removed or replayed within the file does not open either. A log file is
// written once, from its start: a store that opens creates a new log
// rather than appending to the old one, so no index is ever sealed twice
// under one key, even where a crash cut a record. The header is
// authenticated under the same key (an empty plaintext, nonce all ones).
//
// A record's plaintext is the batch's writes to the engine, in order:
//
//	commit counter (8) | durable (8) | ops
//	op: kind (1) | bucket length (1) | bucket | key length (2) | key |
//	    (put and put-record only) value length (4) | value
//
// A put's value is a record sealed as the store file holds it (encrypted
// once more by the log). A put-record (kind 4) is a message or delivery
// that is not sealed on its own: its value is the record's version (8,
// its seal ID) and its encoding; it is sealed under that version when it
// is written to the store file (at the checkpoint, or when Open or
// redoLog applies the log), see overlay.go. Keys are keyed hashes; the
// commit counter is the store's after the batch; durable is how many
// records of the log an fsync had covered when the record was written.
const (
	LogFile = "store.wal"

	// logMagic starts a log whose put-records are outside the store's
	// digest until they are applied (see replayLog); logMagicV1 one
	// whose put-records were counted in it when they were logged.
	logMagic     = "MOATWAL2"
	logMagicV1   = "MOATWAL1"
	logHeaderLen = 8 + 16 + 16 + 8 + gcmTagLen
	gcmTagLen    = 16
	logLenLen    = 16 // length, index and check
	// maxLogRecord bounds one record: a batch is at most MaxBatch
	// requests, each bounded by the broker's maximum packet size.
	maxLogRecord = 1 << 30

	logOpPut    = 1
	logOpDelete = 2
	logOpBucket = 3 // create the bucket if it does not exist
	// logOpPutRecord puts a record that the log alone encrypts: sealed
	// (under the version its value starts with) when it is applied.
	logOpPutRecord = 4

	// The checkpoint policy's defaults.
	defaultLogCheckpointBytes = 16 << 20
	defaultLogCheckpointEvery = time.Second
)

// logRecordLimit is maxLogRecord; tests lower it.
var logRecordLimit = maxLogRecord

// errLogRecordTooLarge: a batch's writes do not fit in one log record.
var errLogRecordTooLarge = fmt.Errorf("store: a commit larger than %d bytes", maxLogRecord)

// keyLog names, in the meta bucket, the log that continues the engine's
// file: its ID, sealed with the commit counter as version.
var keyLog = []byte("log")

// logAEAD derives the key of one log file.
func (k *recordKeys) logAEAD(logID [16]byte) (cipher.AEAD, error) {
	key, err := hkdf.Key(sha256.New, k.logRoot, logID[:], "moat store log file", 32)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func logNonce(index uint64) []byte {
	n := make([]byte, nonceLen)
	binary.BigEndian.PutUint64(n[4:], index)
	return n
}

// logHeaderNonce is never a record's: record indexes stay far below 2^64-1.
var logHeaderNonce = bytes.Repeat([]byte{0xff}, nonceLen)

func logRecordAAD(storeID, logID [16]byte, index uint64) []byte {
	aad := make([]byte, 0, 16+16+16+8)
	aad = append(aad, "moat log record\x00"...)
	aad = append(aad, storeID[:]...)
	aad = append(aad, logID[:]...)
	return binary.BigEndian.AppendUint64(aad, index)
}

// logWriter appends records to one log file. Owned by the committer.
type logWriter struct {
	f       *os.File
	path    string
	aead    cipher.AEAD
	storeID [16]byte
	logID   [16]byte
	base    uint64 // the commit counter of the engine's file the log continues
	index   uint64 // the next record's index
	size    int64  // bytes of records written
	buf     []byte
}

// createLog writes a new, empty log continuing the engine's file at
// counter base, under a temporary name, syncs it and renames it to
// dir/store.wal (replacing the previous log), then syncs the directory.
// Without sync (the checkpoints of SyncOff) it does not fsync.
func createLog(dir string, keys *recordKeys, logID [16]byte, base uint64, sync bool) (*logWriter, error) {
	a, err := keys.logAEAD(logID)
	if err != nil {
		return nil, fmt.Errorf("store: log key: %w", err)
	}
	w := &logWriter{path: filepath.Join(dir, LogFile), aead: a, storeID: keys.storeID, logID: logID, base: base}
	hdr := make([]byte, 0, logHeaderLen)
	hdr = append(hdr, logMagic...)
	hdr = append(hdr, keys.storeID[:]...)
	hdr = append(hdr, logID[:]...)
	hdr = binary.BigEndian.AppendUint64(hdr, base)
	hdr = a.Seal(hdr, logHeaderNonce, nil, hdr)
	tmp := w.path + ".new"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: creating the log: %w", err)
	}
	fail := func(err error) (*logWriter, error) {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("store: creating the log: %w", err)
	}
	if _, err := f.Write(hdr); err != nil {
		return fail(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(tmp, w.path); err != nil {
		return fail(err)
	}
	if sync {
		if err := syncDir(dir); err != nil {
			f.Close()
			return nil, err
		}
	}
	w.f = f
	return w, nil
}

// append seals plaintext as the next record and writes it to the file
// (one write). It is durable after the next sync.
func (w *logWriter) append(plaintext []byte) error {
	n := len(plaintext) + gcmTagLen
	if n > logRecordLimit {
		return errLogRecordTooLarge
	}
	b := w.buf[:0]
	if cap(b) < logLenLen+n || cap(b) > 4*(logLenLen+n)+(1<<20) {
		b = make([]byte, 0, logLenLen+n)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = binary.BigEndian.AppendUint64(b, w.index)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b[len(b)-12:], castagnoli))
	b = w.aead.Seal(b, logNonce(w.index), plaintext, logRecordAAD(w.storeID, w.logID, w.index))
	w.buf = b
	if _, err := w.f.Write(b); err != nil {
		return err
	}
	w.index++
	w.size += int64(len(b))
	return nil
}

func (w *logWriter) sync() error { return fdatasync(w.f) }

func (w *logWriter) close() error { return w.f.Close() }

// logContents is what readLog found in a log file.
type logContents struct {
	logID   [16]byte
	base    uint64
	records []logRecord
	// torn: the file ended in a record that an interrupted append left
	// incomplete (cut short, zero-filled or not authentic, with nothing
	// after it); the log ends before it.
	torn bool
	// uncounted: the log's put-records are not in the digest of the
	// state records it holds (logMagic); see replayLog.
	uncounted bool
}

type logRecord struct {
	counter uint64
	durable uint64
	ops     []logOp
}

type logOp struct {
	kind             byte
	bucket, key, val []byte
}

// readLog reads and authenticates the log at path. It returns nil when
// there is none. A damaged header, a log of another store, a record that
// does not open although a later record states it was durable, or records
// out of order are ErrCorrupt. Otherwise a record that does not open is
// the end of the log (torn), see parseLog.
func readLog(path string, keys *recordKeys) (*logContents, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: reading the log: %w", err)
	}
	return parseLog(b, keys)
}

func parseLog(b []byte, keys *recordKeys) (*logContents, error) {
	corrupt := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrCorrupt, LogFile, fmt.Sprintf(format, a...))
	}
	if len(b) < logHeaderLen || (string(b[:len(logMagic)]) != logMagic && string(b[:len(logMagic)]) != logMagicV1) {
		return nil, corrupt("no log header (not a log, or damaged)")
	}
	lc := &logContents{uncounted: string(b[:len(logMagic)]) == logMagic}
	copy(lc.logID[:], b[24:40])
	lc.base = binary.BigEndian.Uint64(b[40:48])
	if !bytes.Equal(b[8:24], keys.storeID[:]) {
		return nil, corrupt("the log belongs to another store")
	}
	a, err := keys.logAEAD(lc.logID)
	if err != nil {
		return nil, err
	}
	if _, err := a.Open(nil, logHeaderNonce, b[48:logHeaderLen], b[:48]); err != nil {
		return nil, corrupt("the log header does not authenticate (another store's key, or damaged)")
	}
	rest := b[logHeaderLen:]
	last := lc.base
	for i := uint64(0); len(rest) > 0; i++ {
		if allZero(rest) {
			lc.torn = true // space the file system allocated, never written
			break
		}
		pt, n := openLogRecord(a, keys.storeID, lc.logID, i, rest)
		if pt == nil {
			// A record cut short, not authentic, or with a damaged
			// length: the end of an interrupted append, unless a later
			// record of the log says that this one was durable when it
			// was written (records say how many of the log an fsync
			// had covered, see Store.commitLogged). A crash can leave
			// unsynced records after a torn one, never one that an
			// fsync covered.
			if j, d := laterDurable(a, keys.storeID, lc.logID, rest); d > i {
				return nil, corrupt("record %d (offset %d) is damaged, moved or from another log (record %d says %d records were durable)", i, len(b)-len(rest), j, d)
			}
			lc.torn = true
			break
		}
		r, err := decodeLogBatch(pt)
		if err != nil {
			return nil, corrupt("record %d: %v", i, err)
		}
		if r.counter <= last {
			return nil, corrupt("record %d: commit counter %d does not follow %d", i, r.counter, last)
		}
		last = r.counter
		lc.records = append(lc.records, *r)
		rest = rest[n:]
	}
	return lc, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// logRecordHead reads a record's head at the start of b: its length and
// index, and whether the check matches and the record fits in b.
func logRecordHead(b []byte) (n int, index uint64, ok bool) {
	if len(b) < logLenLen {
		return 0, 0, false
	}
	l := binary.BigEndian.Uint32(b)
	index = binary.BigEndian.Uint64(b[4:])
	if binary.BigEndian.Uint32(b[12:]) != crc32.Checksum(b[:12], castagnoli) ||
		l < gcmTagLen || l > maxLogRecord || uint64(l) > uint64(len(b)-logLenLen) {
		return 0, 0, false
	}
	return int(l), index, true
}

// openLogRecord opens record index at the start of b: its plaintext and
// length in b, or nil when it is incomplete, damaged, not authentic or
// another record.
func openLogRecord(a cipher.AEAD, storeID, logID [16]byte, index uint64, b []byte) ([]byte, int) {
	n, idx, ok := logRecordHead(b)
	if !ok || idx != index {
		return nil, 0
	}
	pt, err := a.Open(nil, logNonce(index), b[logLenLen:logLenLen+n], logRecordAAD(storeID, logID, index))
	if err != nil {
		return nil, 0
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, logLenLen + n
}

// laterDurable returns, of the authentic records of the log in b (found
// at any offset), the highest durable count one states, and its index.
// The check filters candidates before the cipher is tried.
func laterDurable(a cipher.AEAD, storeID, logID [16]byte, b []byte) (index, durable uint64) {
	for p := 0; p+logLenLen <= len(b); p++ {
		_, idx, ok := logRecordHead(b[p:])
		if !ok {
			continue
		}
		pt, n := openLogRecord(a, storeID, logID, idx, b[p:])
		if len(pt) < logBatchHead {
			continue
		}
		if d := binary.BigEndian.Uint64(pt[8:]); d > durable {
			index, durable = idx, d
		}
		p += n - 1
	}
	return index, durable
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// logBatch encodes a batch's writes for the log.
type logBatch struct{ b []byte }

func (l *logBatch) reset() {
	if cap(l.b) > 64<<20 {
		l.b = nil
	}
	l.b = append(l.b[:0], make([]byte, logBatchHead)...)
}

// logBatchHead is the commit counter and the durable count.
const logBatchHead = 16

func (l *logBatch) setCounter(counter, durable uint64) {
	binary.BigEndian.PutUint64(l.b, counter)
	binary.BigEndian.PutUint64(l.b[8:], durable)
}

func (l *logBatch) put(bucket, key, val []byte) {
	l.op(logOpPut, bucket, key)
	l.b = binary.BigEndian.AppendUint32(l.b, uint32(len(val)))
	l.b = append(l.b, val...)
}

// putRecord logs a record that is not sealed: its version and plaintext.
func (l *logBatch) putRecord(bucket, key []byte, version uint64, plaintext []byte) {
	l.op(logOpPutRecord, bucket, key)
	l.b = binary.BigEndian.AppendUint32(l.b, uint32(versionLen+len(plaintext)))
	l.b = binary.BigEndian.AppendUint64(l.b, version)
	l.b = append(l.b, plaintext...)
}

func (l *logBatch) del(bucket, key []byte) { l.op(logOpDelete, bucket, key) }

func (l *logBatch) bucket(name []byte) { l.op(logOpBucket, name, nil) }

func (l *logBatch) op(kind byte, bucket, key []byte) {
	l.b = append(l.b, kind, byte(len(bucket)))
	l.b = append(l.b, bucket...)
	l.b = binary.BigEndian.AppendUint16(l.b, uint16(len(key)))
	l.b = append(l.b, key...)
}

// encodeLogBatch is the inverse of decodeLogBatch.
func encodeLogBatch(r *logRecord) []byte {
	var l logBatch
	l.reset()
	l.setCounter(r.counter, r.durable)
	for _, o := range r.ops {
		switch o.kind {
		case logOpPut:
			l.put(o.bucket, o.key, o.val)
		case logOpPutRecord:
			l.putRecord(o.bucket, o.key, beUint64(o.val), o.val[versionLen:])
		case logOpDelete:
			l.del(o.bucket, o.key)
		case logOpBucket:
			l.bucket(o.bucket)
		}
	}
	return l.b
}

// decodeLogBatch decodes a record's plaintext. The slices of the result
// point into b.
func decodeLogBatch(b []byte) (*logRecord, error) {
	if len(b) < logBatchHead {
		return nil, fmt.Errorf("%w: log record too short", errDecode)
	}
	r := &logRecord{counter: binary.BigEndian.Uint64(b), durable: binary.BigEndian.Uint64(b[8:])}
	b = b[logBatchHead:]
	for len(b) > 0 {
		var o logOp
		o.kind = b[0]
		if o.kind < logOpPut || o.kind > logOpPutRecord || len(b) < 2 {
			return nil, fmt.Errorf("%w: log op of unknown kind", errDecode)
		}
		n := int(b[1])
		b = b[2:]
		if n == 0 || len(b) < n+2 {
			return nil, fmt.Errorf("%w: log op bucket", errDecode)
		}
		o.bucket, b = b[:n:n], b[n:]
		n = int(binary.BigEndian.Uint16(b))
		b = b[2:]
		if len(b) < n || n > bolt.MaxKeySize || (o.kind == logOpBucket) != (n == 0) {
			return nil, fmt.Errorf("%w: log op key", errDecode)
		}
		o.key, b = b[:n:n], b[n:]
		if o.kind == logOpPut || o.kind == logOpPutRecord {
			if len(b) < 4 {
				return nil, fmt.Errorf("%w: log op value", errDecode)
			}
			v := binary.BigEndian.Uint32(b)
			b = b[4:]
			if uint64(len(b)) < uint64(v) || v > bolt.MaxValueSize {
				return nil, fmt.Errorf("%w: log op value", errDecode)
			}
			if o.kind == logOpPutRecord && v < versionLen {
				return nil, fmt.Errorf("%w: log record op without a version", errDecode)
			}
			o.val, b = b[:v:v], b[v:]
		}
		r.ops = append(r.ops, o)
	}
	return r, nil
}

// replayLog applies records (of the log lc) to tx, in order, and brings
// the state record the last of them wrote up to date with the digest.
//
// A put-record (a message or delivery the overlay held unsealed) is
// counted in the store's digest only when it is sealed into the engine's
// file: at a checkpoint, or here. Most are deleted before the next
// checkpoint, and their keyed hash is then never computed. So the state
// records in a log of logMagic leave out the put-records of the log that
// were still stored when the state was written; once the log is applied
// those records are in the engine, and their elements are added to the
// last state's digest here. A put-record is still stored at the end of
// the log unless a later op of the log deleted or replaced it. (A log of
// logMagicV1 counted them when they were logged: nothing to add.)
func replayLog(tx *bolt.Tx, keys *recordKeys, lc *logContents, records []logRecord) error {
	var pending map[string]uint64
	if lc.uncounted {
		pending = map[string]uint64{}
	}
	for i := range records {
		if err := applyLog(tx, keys, &records[i], pending); err != nil {
			return err
		}
	}
	if len(pending) == 0 {
		return nil
	}
	meta := tx.Bucket(bktMeta)
	st, err := readState(keys, meta)
	if err != nil {
		return err
	}
	for k, version := range pending {
		bucket, key, _ := strings.Cut(k, "\x00")
		xorInto(&st.Digest, keys.element([]byte(bucket), []byte(key), version))
	}
	v, err := keys.seal(bktMeta, keyState, st.Counter, encodeRecord(st))
	if err != nil {
		return err
	}
	return meta.Put(keyState, v)
}

// applyLog writes a record's ops to tx, sealing with keys the records
// that the log alone encrypted. pending (nil for a log of logMagicV1)
// tracks the put-records still stored, by bucket and key, with their
// versions (see replayLog).
func applyLog(tx *bolt.Tx, keys *recordKeys, r *logRecord, pending map[string]uint64) error {
	for _, o := range r.ops {
		if o.kind == logOpBucket {
			if _, err := tx.CreateBucketIfNotExists(o.bucket); err != nil {
				return err
			}
			continue
		}
		b := tx.Bucket(o.bucket)
		if b == nil {
			return fmt.Errorf("%w: %s: an op on a missing bucket", ErrCorrupt, LogFile)
		}
		if pending != nil && (o.kind == logOpPutRecord || len(pending) > 0) {
			k := string(o.bucket) + "\x00" + string(o.key)
			if o.kind == logOpPutRecord {
				pending[k] = beUint64(o.val)
			} else {
				delete(pending, k)
			}
		}
		var err error
		switch o.kind {
		case logOpPut:
			err = b.Put(o.key, o.val)
		case logOpPutRecord:
			var v []byte
			if v, err = keys.seal(o.bucket, o.key, beUint64(o.val), o.val[versionLen:]); err == nil {
				err = b.Put(o.key, v)
			}
		default:
			err = b.Delete(o.key)
		}
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, LogFile, err)
		}
	}
	return nil
}

// newLogID draws a log's ID.
func newLogID() (id [16]byte) {
	rand.Read(id[:])
	return id
}
