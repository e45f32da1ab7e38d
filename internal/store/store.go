package store

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/moatmq/moat/e2e/keyservice"
)

// SyncMode says when a commit reaches the disk.
type SyncMode int

// Sync modes.
const (
	// SyncAlways (the default) fsyncs before a commit is reported: a
	// reported commit survives power loss. Concurrent commits share one
	// fsync (group commit).
	SyncAlways SyncMode = iota
	// SyncBatch writes every commit to the operating system before it
	// is reported (it survives a crash of the process) and fsyncs every
	// Config.BatchInterval: power loss may lose the last interval.
	SyncBatch
	// SyncOff writes every commit to the operating system before it is
	// reported, as SyncBatch, and never fsyncs until Close.
	SyncOff
)

func (m SyncMode) String() string {
	switch m {
	case SyncAlways:
		return "always"
	case SyncBatch:
		return "batch"
	case SyncOff:
		return "off"
	}
	return fmt.Sprintf("SyncMode(%d)", int(m))
}

// ParseSyncMode parses "always", "batch" or "off".
func ParseSyncMode(s string) (SyncMode, error) {
	switch s {
	case "always", "":
		return SyncAlways, nil
	case "batch":
		return SyncBatch, nil
	case "off":
		return SyncOff, nil
	}
	return 0, fmt.Errorf("store: sync mode %q: use always, batch or off", s)
}

// File names inside Config.Dir.
const (
	DBFile      = "store.db"
	CounterFile = "store.counter"
	KeyFile     = "store.key"
)

// Config configures a Store. The zero value (with Dir set) is the secure
// default: sync always, a key file created beside the data on first start.
type Config struct {
	// Dir holds the store (store.db), its commit counter (store.counter)
	// and, by default, its key file. Required; created with mode 0700.
	Dir string
	// Sync is when commits reach the disk. Default SyncAlways.
	Sync SyncMode
	// BatchInterval is the fsync period of SyncBatch. Default 1s.
	BatchInterval time.Duration
	// KEK wraps the data key: a key file, an environment variable or a
	// KMS/HSM backend of the key service. At most one of KEK and
	// Passphrase; with neither, KeyFile is used.
	KEK keyservice.KEKBackend
	// Passphrase derives the KEK with Argon2id; salt and parameters are
	// kept in the store's header. The slice is not retained.
	Passphrase []byte
	// Argon2 are the parameters for a new passphrase store. Default
	// keyservice.DefaultArgon2.
	Argon2 keyservice.Argon2Params
	// KeyFile is the KEK file used when neither KEK nor Passphrase is
	// set. Default Dir/store.key. It is created (mode 0600) only when the
	// store itself is new; a missing key for an existing store is an
	// error.
	KeyFile string
	// CounterInterval is how often at most the commit counter file is
	// rewritten (SyncAlways and SyncBatch; SyncOff writes it at Close).
	// A whole-file rollback to a copy older than the counter file is
	// detected at Open. Default 1s.
	CounterInterval time.Duration
	// MaxBatch bounds the commit requests one transaction takes.
	// Default 4096.
	MaxBatch int
	// Now is the clock. Default time.Now.
	Now func() time.Time

	readOnly bool
	hooks    *hooks
	// The commit log's checkpoint policy: a checkpoint once
	// the log holds logCkptBytes, or logCkptEvery after the last one.
	// Defaults defaultLogCheckpointBytes and defaultLogCheckpointEvery.
	logCkptBytes int64
	logCkptEvery time.Duration
}

// hooks let tests observe and stall the committer.
type hooks struct {
	beforeCommit func(requests int) // in the committer, before the transaction
	diskError    func() error       // inside the transaction: a simulated write failure
	logSync      func() error       // before each fsync of the log: a simulated fsync failure
}

// Errors. Each is wrapped with details; test with errors.Is.
var (
	// ErrWrongKey: the KEK (key file, environment variable, passphrase or
	// KMS) does not unwrap this store's data key, or the header is
	// damaged. The store is not quarantined: fix the key configuration.
	ErrWrongKey = errors.New("store: the key does not open this store (wrong key file, MOAT_STORE_KEY or passphrase, or a damaged header)")
	// ErrNoKey: the store exists but no key was configured or found.
	ErrNoKey = errors.New("store: the store exists but its key is missing")
	// ErrCorrupt: the file or a record is damaged, altered, moved,
	// truncated, or records were removed, added or replayed.
	ErrCorrupt = errors.New("store: corrupt store")
	// ErrRollback: the file is older than the commit counter kept beside
	// it (an older copy was put in its place), or the counter file is
	// missing or damaged.
	ErrRollback = errors.New("store: the store file is older than its commit counter (rolled back to an older copy?)")
	// ErrClosed is returned by commits after Close.
	ErrClosed = errors.New("store: closed")
	// ErrFailed: a write or fsync of the store failed. The store reports
	// no further commit as durable; the broker must stop acknowledging
	// messages it cannot keep, and the store must be reopened.
	ErrFailed = errors.New("store: a write to the disk failed; no further commit is accepted until the store is reopened")
	// ErrInUse: another process (a running broker?) holds the store.
	ErrInUse = errors.New("store: the store is in use by another process (is the broker running?)")
)

// Store is the embedded, encrypted, crash-safe store. It is safe for
// concurrent use. The caller must Close it.
type Store struct {
	cfg  Config
	path string
	db   *bolt.DB
	keys *recordKeys
	kek  keyservice.KEKBackend
	hdr  *header

	// Owned by the committer goroutine after Open.
	st          state
	refs        map[uint64]int // message ID → deliveries referring to it
	recent      recentRecords  // the committer's (recent.go)
	coal        coalescer      // the committer's (commit.go)
	prefs       map[string]int // publisher key → retained messages and wills naming it
	lastCounter time.Time      // when the counter file was last written
	failed      error          // set at the first disk error; wraps ErrFailed

	// The commit log (wal.go; every mode) and the engine transaction
	// that holds every commit logged since the last checkpoint (nil
	// when there is none). Owned by the committer after Open.
	wal      *logWriter
	applyLog bool // the engine's file is open for writing (not read-only, or a read-only open applying the log)
	wtx      *bolt.Tx
	ovl      *overlay // messages and deliveries since the last checkpoint that wtx does not hold
	logBuf   logBatch
	ckptAt   time.Time // the last checkpoint, by the system clock
	// The log's syncer (logSyncer) fsyncs what the committer wrote to
	// the log while the committer goes on with the next batches, and
	// reports every request, in order. logDurable: how many records of
	// the current log an fsync has covered; logProgress: a signal after
	// each fsync; logErr: the syncer's failure.
	logJobs     chan logJob
	logDurable  atomic.Uint64
	logProgress chan struct{}
	logErr      atomic.Pointer[error]
	logWG       sync.WaitGroup

	// SyncBatch: the syncer goroutine fsyncs the log every
	// BatchInterval, up to logWritten (the records the committer has
	// written, and the commit counter of the last). walMu guards s.wal
	// and walGen for it: a checkpoint replaces the log under walMu and
	// counts walGen up, without waiting for the syncer's fsync.
	walMu             sync.Mutex
	walGen            uint64
	logWritten        atomic.Uint64
	logWrittenCounter atomic.Uint64
	syncStop          chan struct{}
	syncWG            sync.WaitGroup

	nextID atomic.Uint64

	mu      sync.Mutex // guards closed and pending
	closed  bool
	pending []*request    // waiting for the committer, in submission order
	wake    chan struct{} // capacity 1: there is work, or Close was called
	wg      sync.WaitGroup

	recovered *State
	report    *Report // what Open's check found (read-only opens)
	stats     struct{ commits, syncs, requests, ops, failed, coalesced, checkpoints atomic.Int64 }
	latency   latency // of each transaction, fsync included
}

// Open opens or creates the store in cfg.Dir, verifies every record and
// the commit counter, and keeps what it recovered for [Store.Recovered].
// Errors wrap ErrWrongKey, ErrNoKey, ErrCorrupt, ErrRollback or ErrInUse
// when they apply.
func Open(cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if !cfg.readOnly {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("store: creating %s: %w", cfg.Dir, err)
		}
	}
	s := &Store{cfg: cfg, path: filepath.Join(cfg.Dir, DBFile), refs: map[uint64]int{}, prefs: map[string]int{}}
	_, statErr := os.Stat(s.path)
	if statErr != nil && !errors.Is(statErr, os.ErrNotExist) {
		return nil, fmt.Errorf("store: %w", statErr)
	}
	exists := statErr == nil
	if !exists && cfg.readOnly {
		return nil, fmt.Errorf("store: no store at %s", s.path)
	}
	if !exists {
		if err := checkNoCounter(cfg.Dir); err != nil {
			return nil, err
		}
	}
	if err := s.resolveKEK(exists); err != nil {
		return nil, err
	}
	// A read-only open of a store whose log holds records (after a
	// crash) applies them first, as a start of the broker would: the
	// engine's file is opened for writing then.
	s.applyLog = !cfg.readOnly || logHasRecords(cfg.Dir)
	if err := s.openDB(); err != nil {
		return nil, err
	}
	if exists && !cfg.readOnly && s.emptyDB() {
		// A creation interrupted before its first transaction, or a
		// store replaced by an empty file.
		if err := checkNoCounter(cfg.Dir); err != nil {
			s.db.Close()
			return nil, err
		}
		exists = false
	}
	var err error
	if exists {
		err = s.load()
		if err == nil && !cfg.readOnly {
			err = s.addBuckets()
		}
	} else {
		err = s.create()
		if err == nil {
			err = s.recoverLog()
		}
	}
	if err != nil {
		s.closeLog()
		s.db.Close()
		return nil, err
	}
	// IDs start above every ID and every commit counter the store holds:
	// seal IDs never repeat a version (see sealed).
	s.nextID.Store(max(s.st.MaxID, s.st.Counter))
	if !cfg.readOnly {
		s.wake = make(chan struct{}, 1)
		if s.wal != nil && cfg.Sync == SyncAlways {
			s.logJobs = make(chan logJob, 64)
			s.logProgress = make(chan struct{}, 1)
			s.logWG.Add(1)
			go s.logSyncer(s.logJobs)
		}
		s.wg.Add(1)
		go s.committer()
		if s.wal != nil && cfg.Sync == SyncBatch {
			s.syncStop = make(chan struct{})
			s.syncWG.Add(1)
			go s.syncer(s.syncStop)
		}
	}
	return s, nil
}

func (c *Config) validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("store: Config.Dir is required"))
	}
	if c.KEK != nil && len(c.Passphrase) > 0 {
		errs = append(errs, errors.New("store: set at most one of Config.KEK and Config.Passphrase"))
	}
	if c.Sync < SyncAlways || c.Sync > SyncOff {
		errs = append(errs, fmt.Errorf("store: unknown sync mode %d", c.Sync))
	}
	if a := c.Argon2; a != (keyservice.Argon2Params{}) && (a.Time == 0 || a.Time > 16 || a.Threads == 0 || a.Memory < 8*uint32(a.Threads) || a.Memory > maxArgon2Memory) {
		errs = append(errs, errors.New("store: Config.Argon2 needs Time 1-16, Threads ≥ 1 and Memory between 8×Threads KiB and 1 GiB"))
	}
	if c.BatchInterval < 0 || c.CounterInterval < 0 || c.MaxBatch < 0 {
		errs = append(errs, errors.New("store: BatchInterval, CounterInterval and MaxBatch must not be negative"))
	}
	return errors.Join(errs...)
}

func (c *Config) setDefaults() {
	if c.BatchInterval == 0 {
		c.BatchInterval = time.Second
	}
	if c.CounterInterval == 0 {
		c.CounterInterval = time.Second
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 4096
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Argon2 == (keyservice.Argon2Params{}) {
		c.Argon2 = keyservice.DefaultArgon2
	}
	if c.KeyFile == "" {
		c.KeyFile = filepath.Join(c.Dir, KeyFile)
	}
	c.Passphrase = slices.Clone(c.Passphrase)
	if c.logCkptBytes == 0 {
		c.logCkptBytes = defaultLogCheckpointBytes
	}
	if c.logCkptEvery == 0 {
		c.logCkptEvery = defaultLogCheckpointEvery
	}
}

// resolveKEK picks the KEK; a passphrase KEK is derived once the header
// (salt, parameters) is known.
func (s *Store) resolveKEK(exists bool) error {
	if s.cfg.KEK != nil || len(s.cfg.Passphrase) > 0 {
		s.kek = s.cfg.KEK
		return nil
	}
	if _, err := os.Stat(s.cfg.KeyFile); errors.Is(err, os.ErrNotExist) {
		if exists {
			return fmt.Errorf("%w: key file %s not found (configure the key the store was created with)", ErrNoKey, s.cfg.KeyFile)
		}
		if err := keyservice.GenerateKEKFile(s.cfg.KeyFile); err != nil {
			return fmt.Errorf("store: %w", err)
		}
	}
	k, err := keyservice.LoadKEKFile(s.cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	s.kek = k
	return nil
}

func (s *Store) openDB() (err error) {
	defer recoverCorrupt(&err)
	// The engine's file is written by checkpoints of the commit log (and
	// by Open's replay of it), with the engine's fsyncs except in SyncOff.
	opts := &bolt.Options{Timeout: time.Second, NoSync: s.cfg.Sync == SyncOff, FreelistType: bolt.FreelistMapType, ReadOnly: !s.applyLog}
	if err := checkFileSize(s.path); err != nil {
		return err
	}
	db, err := bolt.Open(s.path, 0o600, opts)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("%w: %s", ErrInUse, s.path)
	}
	if errors.Is(err, bolterrors.ErrInvalid) || errors.Is(err, bolterrors.ErrChecksum) || errors.Is(err, bolterrors.ErrVersionMismatch) {
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path, err)
	}
	if err != nil {
		// Permissions, a full disk, a read-only file system: the
		// operator's to fix, not a reason to move the store aside.
		return fmt.Errorf("store: opening %s: %w", s.path, err)
	}
	s.db = db
	return nil
}

// checkNoCounter refuses to create a store where a counter file says
// one was: the store was removed or replaced by an empty file, and
// starting empty must be loud.
func checkNoCounter(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, CounterFile)); err == nil {
		return fmt.Errorf("%w: %s exists but the store file is missing or empty (the store was removed?)", ErrRollback, CounterFile)
	}
	return nil
}

// emptyDB reports whether the engine's file holds no bucket at all. A
// file the engine cannot even list is not empty: load reports it corrupt.
func (s *Store) emptyDB() (empty bool) {
	empty = true
	defer func() {
		if recover() != nil {
			empty = false
		}
	}()
	s.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return errors.New("stop") })
	})
	return empty
}

// recoverCorrupt turns a panic of the storage engine on a damaged file
// into ErrCorrupt. The engine reads a memory-mapped file; SetPanicOnFault
// makes a fault on a truncated mapping a panic too.
func recoverCorrupt(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: the storage engine failed reading the file: %v", ErrCorrupt, r)
	}
}

// checkFileSize refuses a file shorter than the pages its newest valid
// meta page says it holds (a truncated file), before it is mapped: the
// engine would otherwise fault on the missing pages.
func checkFileSize(path string) error {
	used, size, err := usedSize(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("store: %w", err)
	}
	if err != nil {
		return err
	}
	if size < used {
		return fmt.Errorf("%w: %s is truncated (%d bytes, %d expected)", ErrCorrupt, path, size, used)
	}
	return nil
}

// usedSize returns the bytes the engine's newest valid meta page claims
// (high-water page × page size) and the file's size.
func usedSize(path string) (used, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("store: %w", err)
	}
	var best struct{ txid, pages, pageSize uint64 }
	for _, off := range []int64{0, 4096} {
		// The engine's meta page: a 16-byte page header, then magic,
		// version, page size, flags, root bucket (16), freelist page,
		// high-water page, transaction ID, checksum (FNV-1a 64).
		var m [16 + 64]byte
		if _, err := f.ReadAt(m[:], off); err != nil {
			continue
		}
		b := m[16:]
		if binary.LittleEndian.Uint32(b[0:]) != 0xED0CDAED {
			continue
		}
		h := fnv.New64a()
		h.Write(b[:56])
		if h.Sum64() != binary.LittleEndian.Uint64(b[56:]) {
			continue
		}
		if txid := binary.LittleEndian.Uint64(b[48:]); txid >= best.txid {
			best.txid, best.pages, best.pageSize = txid, binary.LittleEndian.Uint64(b[40:]), uint64(binary.LittleEndian.Uint32(b[8:]))
		}
	}
	if best.pageSize == 0 {
		return 0, fi.Size(), fmt.Errorf("%w: %s has no valid meta page (not a store, or damaged)", ErrCorrupt, path)
	}
	return int64(best.pages * best.pageSize), fi.Size(), nil
}

func (s *Store) create() error {
	dek := make([]byte, dekLen)
	rand.Read(dek)
	defer clear(dek)
	h := &header{}
	rand.Read(h.StoreID[:])
	if len(s.cfg.Passphrase) > 0 {
		h.Passphrase = true
		rand.Read(h.Salt[:])
		h.Argon2 = s.cfg.Argon2
		k, err := passphraseKEK(s.cfg.Passphrase, h.Salt, h.Argon2)
		if err != nil {
			return err
		}
		s.kek = k
	}
	clear(s.cfg.Passphrase)
	wrapped, err := s.kek.Wrap(dek, h.wrapAAD())
	if err != nil {
		return fmt.Errorf("store: wrapping the data key: %w", err)
	}
	h.WrappedDEK = wrapped
	if s.keys, err = deriveKeys(dek, h.StoreID); err != nil {
		return err
	}
	s.hdr = h
	s.st = state{Counter: 1}
	s.recovered = &State{Sessions: map[string]*SessionState{}, Messages: map[uint64]*Message{}}
	// The counter file first: a crash before the store file is complete
	// leaves a counter file that the next (new) store replaces, never a
	// store without its counter.
	if err := s.writeCounter(); err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bktMeta)
		if err != nil {
			return err
		}
		for _, b := range scannedBuckets {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		if err := meta.Put(keyHeader, h.marshal()); err != nil {
			return err
		}
		st, err := s.keys.seal(bktMeta, keyState, s.st.Counter, encodeRecord(&s.st))
		if err != nil {
			return err
		}
		return meta.Put(keyState, st)
	})
	if err != nil {
		return fmt.Errorf("store: creating %s: %w", s.path, err)
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// addBuckets creates, once the store verified, the buckets a store
// written by an earlier version lacks (bktPublisher). An empty bucket
// holds no record, so the digest still holds.
func (s *Store) addBuckets() (err error) {
	defer recoverCorrupt(&err)
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range dataBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrCorrupt) {
		err = fmt.Errorf("store: %w", err)
	}
	return err
}

// load opens an existing store: header, key, state, counter file and
// every record.
func (s *Store) load() (err error) {
	defer recoverCorrupt(&err)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	if err := s.db.View(s.loadKey); err != nil {
		return err
	}
	// The log's records after the engine's last checkpoint are applied
	// before anything is read: what the store holds is the engine's file
	// and the log together.
	if err := s.recoverLog(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		if err := s.loadState(tx.Bucket(bktMeta)); err != nil {
			return err
		}
		if err := s.checkCounter(); err != nil {
			return err
		}
		rep := s.scan(tx, true)
		if len(rep.Problems) > 0 {
			return &CorruptError{Problems: rep.Problems}
		}
		for _, ss := range rep.state.Sessions {
			for _, d := range ss.Deliveries {
				s.refs[d.MsgID]++
			}
		}
		for _, r := range rep.state.Retained {
			if r.pubKey != nil {
				s.prefs[string(r.pubKey)]++
			}
		}
		for _, w := range rep.state.Wills {
			if w.pubKey != nil {
				s.prefs[string(w.pubKey)]++
			}
		}
		s.recovered, rep.state = rep.state, nil
		s.report = rep
		return nil
	})
}

// loadKey reads the header and unwraps the data key.
func (s *Store) loadKey(tx *bolt.Tx) error {
	meta := tx.Bucket(bktMeta)
	if meta == nil {
		return fmt.Errorf("%w: no header (not a Moat store?)", ErrCorrupt)
	}
	h, err := parseHeader(meta.Get(keyHeader))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	s.hdr = h
	if h.Passphrase {
		if len(s.cfg.Passphrase) == 0 {
			return fmt.Errorf("%w: this store was created with a passphrase", ErrNoKey)
		}
		k, err := passphraseKEK(s.cfg.Passphrase, h.Salt, h.Argon2)
		clear(s.cfg.Passphrase)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrWrongKey, err)
		}
		s.kek = k
	} else if len(s.cfg.Passphrase) > 0 {
		return fmt.Errorf("%w: this store was created with a key file, environment key or KMS, not a passphrase", ErrWrongKey)
	}
	dek, err := s.kek.Unwrap(h.WrappedDEK, h.wrapAAD())
	if err != nil {
		return ErrWrongKey
	}
	defer clear(dek)
	if s.keys, err = deriveKeys(dek, h.StoreID); err != nil {
		return fmt.Errorf("%w: %v", ErrWrongKey, err)
	}
	return s.loadState(meta)
}

// readState opens and decodes the state record of meta; its version
// must be the counter it holds.
func readState(keys *recordKeys, meta *bolt.Bucket) (*state, error) {
	ver, pt, err := keys.open(bktMeta, keyState, meta.Get(keyState))
	if err != nil {
		return nil, fmt.Errorf("%w: state record: %v", ErrCorrupt, err)
	}
	r, err := decodeRecord(pt)
	st, ok := r.(*state)
	if err != nil || !ok || st.Counter != ver {
		return nil, fmt.Errorf("%w: state record malformed", ErrCorrupt)
	}
	return st, nil
}

// loadState reads the state record.
func (s *Store) loadState(meta *bolt.Bucket) error {
	st, err := readState(s.keys, meta)
	if err != nil {
		return err
	}
	s.st = *st
	return nil
}

// CorruptError lists what a scan of the store found wrong. It wraps
// ErrCorrupt.
type CorruptError struct{ Problems []string }

func (e *CorruptError) Error() string {
	const show = 5
	msg := fmt.Sprintf("store: corrupt store: %d problem(s): ", len(e.Problems))
	for i, p := range e.Problems {
		if i == show {
			msg += fmt.Sprintf("; and %d more", len(e.Problems)-show)
			break
		}
		if i > 0 {
			msg += "; "
		}
		msg += p
	}
	return msg
}

func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Recovered returns what Open read from the store, once: the broker
// rebuilds its sessions, queues, retained messages and wills from it. The
// store drops its reference, so the second call returns nil. Call it
// before sharing the Store between goroutines.
func (s *Store) Recovered() *State {
	r := s.recovered
	s.recovered = nil
	return r
}

// NextID returns a new identifier for a Message or a Delivery's Seq,
// larger than any the store has committed. Safe for concurrent use.
func (s *Store) NextID() uint64 { return s.nextID.Add(1) }

// Stats are counters since Open.
type Stats struct {
	Requests int64 // commit requests reported
	Ops      int64 // operations committed
	Commits  int64 // transactions
	Syncs    int64 // fsyncs of the commit log (SyncAlways: one per group of batches; SyncBatch: at most one per interval)
	Failed   int64 // requests that failed
	// Coalesced counts the ops not written because they cancelled out in
	// their transaction: deliveries acknowledged before their commit,
	// and the messages only they referred to.
	Coalesced int64
	// Checkpoints counts the commits of the commit log into the storage
	// engine's file, each with the engine's two fsyncs (none in SyncOff).
	Checkpoints int64
	// CommitLatency is the time each transaction took, from the start of
	// its write to its durability (fsync included in SyncAlways), by the
	// system clock. One transaction carries every request waiting.
	CommitLatency Histogram
}

// Stats returns the store's counters. Safe for concurrent use.
func (s *Store) Stats() Stats {
	return Stats{Requests: s.stats.requests.Load(), Ops: s.stats.ops.Load(), Commits: s.stats.commits.Load(),
		Syncs: s.stats.syncs.Load(), Failed: s.stats.failed.Load(), Coalesced: s.stats.coalesced.Load(), Checkpoints: s.stats.checkpoints.Load(),
		CommitLatency: s.latency.snapshot()}
}

// Close commits what was submitted, fsyncs, writes the commit counter and
// closes the file. Commits submitted afterwards fail with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if s.wake != nil {
		s.signal() // the committer drains what is pending and returns
		s.wg.Wait()
	}
	if s.syncStop != nil {
		close(s.syncStop)
		s.syncWG.Wait()
	}
	var errs []error
	if s.logJobs != nil {
		// The committer has returned: the last sync and the reports
		// still queued finish before the log is checkpointed.
		if err := s.drainLog(); err != nil && s.failed == nil {
			s.failed = err
		}
		close(s.logJobs)
		s.logWG.Wait()
	}
	if s.wal != nil && s.failed == nil && s.wal.index > 0 {
		// Everything logged goes into the engine's file; the log
		// left behind is empty.
		if err := s.checkpoint(); err != nil {
			errs = append(errs, err)
		}
	}
	s.closeLog()
	if !s.cfg.readOnly {
		if err := s.db.Sync(); err != nil {
			errs = append(errs, err)
		} else if err := s.writeCounter(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.db.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
