// Package audit writes Moat's tamper-evident audit log: one JSON line per
// security decision, each line carrying the SHA-256 of the previous one,
// with checkpoints signed by an Ed25519 key kept in the data directory.
// [Verify] checks a log against the public key; docs/audit.md describes the
// format, the canonical encoding and what verification proves.
//
// Recording never blocks: [Log.Record] puts the event in a bounded queue
// that one writer goroutine, owned by the Log, drains into the file; what
// is dropped when the queue is full is counted and itself logged.
package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of [Config].
const (
	DefaultFile               = "audit.log"
	DefaultQueueSize          = 10000
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 60 * time.Second
	DefaultMaxFileSize        = 64 << 20
	DefaultKeepFiles          = 10
	flushSize                 = 64 << 10
)

// Event types written by the log itself. The types callers record are
// listed in docs/audit.md.
const (
	TypeCheckpoint = checkpointType // signed checkpoint
	TypeStart      = "audit.start"  // the log was opened (the broker started)
	TypeFile       = "audit.file"   // first entry of a file after rotation
	TypeDropped    = "audit.dropped"
)

// Config configures a [Log]. The zero value of every field but Dir is a
// working default.
type Config struct {
	// Dir is the data directory holding audit.key (created with mode 0600
	// on first use) and audit.pub. Required.
	Dir string

	// File is the log file. Default: Dir/audit.log. Rotated files are
	// File.1 (the newest) to File.KeepFiles.
	File string

	// Now is the clock that stamps entries. Nil: time.Now.
	Now func() time.Time

	// QueueSize bounds the events waiting for the writer. Default 10,000.
	QueueSize int

	// CheckpointEvery writes a signed checkpoint after that many entries.
	// Default 1,000.
	CheckpointEvery int

	// CheckpointInterval writes a signed checkpoint when that much time (on
	// Now's clock) has passed since the last one and entries were written
	// since. Default 60 s.
	CheckpointInterval time.Duration

	// MaxFileSize rotates the file once it is larger. Default 64 MiB.
	MaxFileSize int64

	// KeepFiles is the number of rotated files kept. Default 10.
	KeepFiles int

	// Syslog, when set, forwards every line (checkpoints included) to a
	// syslog receiver. Nil: no forwarding.
	Syslog *SyslogConfig

	// Logger receives the log's own problems (write errors). Nil:
	// slog.Default().
	Logger *slog.Logger
}

// Stats are the log's counters, for metrics.
type Stats struct {
	Written        uint64 // entries written to the file
	Dropped        uint64 // events lost: queue full, recorded after Close, or a failed write
	Bytes          uint64 // bytes written to the file
	Checkpoints    uint64 // signed checkpoints written
	WriteErrors    uint64 // failed writes or syncs
	Forwarded      uint64 // lines sent to syslog
	ForwardDropped uint64 // lines not sent to syslog (its queue full or the send failed)
}

// ErrClosed is returned by operations on a closed Log.
var ErrClosed = errors.New("audit: log closed")

type queued struct {
	ev Event
	t  time.Time
}

type request struct {
	fn   func() error
	done chan error
}

// Log is an open audit log. Its methods are safe for concurrent use. The
// caller must Close it.
type Log struct {
	cfg Config
	now func() time.Time
	log *slog.Logger

	mu     sync.RWMutex // guards closed against sends on queue
	closed bool

	queue  chan queued
	reqs   chan request
	done   chan struct{} // closed by Close: the writer drains and stops
	exited chan struct{} // closed by the writer when it returns

	written, dropped, bytes, checkpoints, writeErrors atomic.Uint64
	pendingDrops                                      atomic.Uint64

	fwd *forwarder

	// Owned by the writer goroutine (by Open before it starts).
	f           *os.File
	size        int64  // bytes in f that are written
	seq         uint64 // seq of the last entry appended to buf
	head        string // hash of that entry
	buf         []byte // lines not yet written
	bufN        int    // entries in buf
	flushedSeq  uint64
	flushedHead string
	key         *signer
	sinceCP     int
	lastCP      time.Time
	firstErr    error
	beforeWrite func() // test hook: runs before each queued event is written
}

// Open opens (or creates) the audit log in cfg.Dir and starts its writer.
// An existing log is continued: the chain goes on from its last entry. A
// torn last line (a write interrupted by a crash) is removed and recorded
// in the first new entry. Open fails when the last complete entry cannot be
// read, since continuing would break the chain silently.
func Open(cfg Config) (*Log, error) {
	if cfg.Dir == "" {
		return nil, errors.New("audit: Config.Dir is required (the data directory holding audit.key)")
	}
	var errs []error
	if cfg.QueueSize < 0 || cfg.CheckpointEvery < 0 || cfg.CheckpointInterval < 0 || cfg.MaxFileSize < 0 || cfg.KeepFiles < 0 {
		errs = append(errs, errors.New("audit: sizes, counts and intervals must not be negative"))
	}
	if cfg.MaxFileSize > 0 && cfg.MaxFileSize < 4096 {
		errs = append(errs, fmt.Errorf("audit: MaxFileSize %d is too small (minimum 4096 bytes)", cfg.MaxFileSize))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.File == "" {
		cfg.File = filepath.Join(cfg.Dir, DefaultFile)
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.CheckpointEvery == 0 {
		cfg.CheckpointEvery = DefaultCheckpointEvery
	}
	if cfg.CheckpointInterval == 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	if cfg.MaxFileSize == 0 {
		cfg.MaxFileSize = DefaultMaxFileSize
	}
	if cfg.KeepFiles == 0 {
		cfg.KeepFiles = DefaultKeepFiles
	}
	l := &Log{
		cfg:    cfg,
		now:    cfg.Now,
		log:    cfg.Logger,
		queue:  make(chan queued, cfg.QueueSize),
		reqs:   make(chan request),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	if cfg.Syslog != nil {
		fwd, err := newForwarder(*cfg.Syslog, l.now)
		if err != nil {
			return nil, err
		}
		l.fwd = fwd
	}
	if err := l.start(); err != nil {
		if l.f != nil {
			l.f.Close()
		}
		if l.fwd != nil {
			l.fwd.close()
		}
		return nil, err
	}
	l.lastCP = l.now()
	go l.run()
	return l, nil
}

// start prepares the key and the file and writes the first entries.
func (l *Log) start() error {
	if err := os.MkdirAll(l.cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("audit: data directory: %w", err)
	}
	if err := l.loadKey(); err != nil {
		return err
	}
	if err := l.openFile(); err != nil {
		return err
	}
	return l.flush()
}

// loadKey loads audit.key, creating it (epoch 1) and audit.pub on first
// use, and finishes a key rotation a crash interrupted.
func (l *Log) loadKey() error {
	keyPath := filepath.Join(l.cfg.Dir, KeyFile)
	pubPath := filepath.Join(l.cfg.Dir, PubFile)
	s, err := readKey(keyPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		seed := make([]byte, ed25519.SeedSize)
		if _, err := io.ReadFull(rand.Reader, seed); err != nil {
			return fmt.Errorf("audit: key: %w", err)
		}
		s = &signer{epoch: 1, priv: ed25519.NewKeyFromSeed(seed)}
		if err := writeKey(keyPath, s); err != nil {
			return fmt.Errorf("audit: writing the signing key: %w", err)
		}
		if err := writeFileSync(pubPath, []byte(pubHeader+"\n"+pubAnchorLine(s)), 0o644); err != nil {
			return fmt.Errorf("audit: writing the public key: %w", err)
		}
	case err != nil:
		return fmt.Errorf("audit: signing key: %w", err)
	}
	if fi, err := os.Stat(keyPath); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("audit: %s is readable by others (mode %o); chmod 600 it", keyPath, fi.Mode().Perm())
	}
	if _, err := os.Stat(pubPath); errors.Is(err, os.ErrNotExist) {
		// Without the file nobody can verify; the current key becomes the
		// anchor of a new one. Trust comes from the copy kept off the host.
		l.log.Warn("audit: public key file missing; writing the current key as a new anchor", "file", pubPath, "epoch", s.epoch)
		if err := writeFileSync(pubPath, []byte(pubHeader+"\n"+pubAnchorLine(s)), 0o644); err != nil {
			return fmt.Errorf("audit: writing the public key: %w", err)
		}
	}
	l.key = s
	newPath := filepath.Join(l.cfg.Dir, newKeyFile)
	next, err := readKey(newPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil || next.epoch != s.epoch+1 {
		return os.Remove(newPath)
	}
	// A rotation was interrupted. It happened if the log holds the
	// rotation checkpoint naming the new key.
	if !l.logNames(next) {
		return os.Remove(newPath)
	}
	if err := appendPub(pubPath, pubRotationLine(s, next)); err != nil {
		return fmt.Errorf("audit: finishing key rotation: %w", err)
	}
	if err := os.Rename(newPath, keyPath); err != nil {
		return fmt.Errorf("audit: finishing key rotation: %w", err)
	}
	l.key = next
	return nil
}

// logNames reports whether the current log file holds the rotation
// checkpoint that introduces next.
func (l *Log) logNames(next *signer) bool {
	data, err := os.ReadFile(l.cfg.File)
	if err != nil {
		return false
	}
	want := b64.EncodeToString(next.public())
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		if !bytes.Contains(line, []byte(want)) {
			continue
		}
		e, err := ParseLine(line)
		if err != nil || e.Type != TypeCheckpoint {
			continue
		}
		if k, ok := e.Get("next_key"); ok && k.str == want {
			return true
		}
	}
	return false
}

// openFile opens the log file and finds the chain's head: the last entry
// of the file, or of the newest rotated file when the file is new.
func (l *Log) openFile() error {
	f, err := os.OpenFile(l.cfg.File, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: log file: %w", err)
	}
	last, torn, size, err := readTail(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: %s: %w", l.cfg.File, err)
	}
	if len(torn) > 0 {
		if err := f.Truncate(size); err != nil {
			f.Close()
			return fmt.Errorf("audit: removing a torn last line: %w", err)
		}
	}
	l.f, l.size = f, size
	l.head = zeroHash
	continued := false
	if last == nil && len(torn) == 0 && size == 0 {
		// A new file: continue the chain of the newest rotated file, if any
		// (a crash between renaming it and writing here).
		if rf, err := os.Open(l.cfg.File + ".1"); err == nil {
			last, _, _, err = readTail(rf)
			rf.Close()
			if err != nil {
				f.Close()
				return fmt.Errorf("audit: %s.1: %w", l.cfg.File, err)
			}
			continued = last != nil
		}
	}
	if last != nil {
		l.seq, l.head = last.Seq, last.Hash
	}
	l.flushedSeq, l.flushedHead = l.seq, l.head
	if continued {
		l.appendEntry(l.now(), TypeFile, []Field{String("previous_file", filepath.Base(l.cfg.File)+".1"), String("reason", "continued after an interrupted rotation")})
	}
	fields := []Field{Int("epoch", int64(l.key.epoch)), String("reason", "log opened")}
	if len(torn) > 0 {
		fields = append(fields, Int("torn_bytes", int64(len(torn))), String("torn", string(torn)))
	}
	l.appendEntry(l.now(), TypeStart, fields)
	return nil
}

// readTail returns the last complete entry of f (nil when there is none),
// the bytes after the last newline (a torn line) and the offset where they
// start.
func readTail(f *os.File) (*Entry, []byte, int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, 0, err
	}
	size := fi.Size()
	n := min(size, int64(2*MaxLineLen+2))
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, 0, err
	}
	end := bytes.LastIndexByte(buf, '\n') + 1
	torn := buf[end:]
	if end == 0 {
		if n < size {
			return nil, nil, 0, errors.New("last line too long: not an audit log")
		}
		return nil, torn, 0, nil
	}
	body := buf[:end-1]
	line := body[bytes.LastIndexByte(body, '\n')+1:]
	e, err := ParseLine(line)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("the last entry cannot be read (%v): the chain cannot be continued; check it with moat audit verify and move the file aside", err)
	}
	return e, torn, size - int64(len(torn)), nil
}

// Record queues ev for the log. It never blocks: when the queue is full the
// event is dropped and counted, and an audit.dropped entry with the count
// is written as soon as there is room. The caller must not change ev.Fields
// afterwards. Events recorded after Close are dropped and counted.
func (l *Log) Record(ev Event) {
	t := l.now()
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		l.dropped.Add(1)
		return
	}
	select {
	case l.queue <- queued{ev, t}:
	default:
		l.dropped.Add(1)
		l.pendingDrops.Add(1)
	}
	l.mu.RUnlock()
}

// RecordWait writes evs, in order, after the events queued before it,
// and returns once they are written to the file (not synced: the next
// checkpoint syncs them). Unlike Record it waits and drops nothing, so it
// is for short, bounded lists the log must hold whole, such as the bans in
// force when the broker starts; never for the publish path. It returns
// ErrClosed after Close, or the write error.
func (l *Log) RecordWait(evs ...Event) error {
	t := l.now()
	return l.do(func() error {
		l.drain()
		for _, ev := range evs {
			l.write(queued{ev, t})
		}
		return l.flush()
	})
}

// Stats returns the counters.
func (l *Log) Stats() Stats {
	s := Stats{
		Written:     l.written.Load(),
		Dropped:     l.dropped.Load(),
		Bytes:       l.bytes.Load(),
		Checkpoints: l.checkpoints.Load(),
		WriteErrors: l.writeErrors.Load(),
	}
	if l.fwd != nil {
		s.Forwarded, s.ForwardDropped = l.fwd.sent.Load(), l.fwd.dropped.Load()
	}
	return s
}

// PublicKeyFile returns the path of audit.pub.
func (l *Log) PublicKeyFile() string { return filepath.Join(l.cfg.Dir, PubFile) }

// do runs fn on the writer goroutine after the events queued before it.
func (l *Log) do(fn func() error) error {
	r := request{fn: fn, done: make(chan error, 1)}
	select {
	case l.reqs <- r:
		return <-r.done
	case <-l.exited:
		return ErrClosed
	}
}

// Checkpoint writes the events queued so far and a signed checkpoint, and
// syncs the file.
func (l *Log) Checkpoint() error {
	return l.do(func() error {
		l.drain()
		return l.checkpoint("requested", nil)
	})
}

// RotateKey introduces a new signing key: a checkpoint signed by the
// current key names the new public key and epoch, audit.pub gains a line
// introducing it (signed by the current key), and audit.key is replaced.
// Later checkpoints are signed by the new key only.
func (l *Log) RotateKey() error {
	return l.do(func() error {
		l.drain()
		seed := make([]byte, ed25519.SeedSize)
		if _, err := io.ReadFull(rand.Reader, seed); err != nil {
			return fmt.Errorf("audit: key: %w", err)
		}
		next := &signer{epoch: l.key.epoch + 1, priv: ed25519.NewKeyFromSeed(seed)}
		newPath := filepath.Join(l.cfg.Dir, newKeyFile)
		if err := writeKey(newPath, next); err != nil {
			return fmt.Errorf("audit: writing the new key: %w", err)
		}
		if err := l.checkpoint("key rotation", next); err != nil {
			os.Remove(newPath)
			return err
		}
		if err := appendPub(filepath.Join(l.cfg.Dir, PubFile), pubRotationLine(l.key, next)); err != nil {
			return fmt.Errorf("audit: key rotation: %w", err)
		}
		if err := os.Rename(newPath, filepath.Join(l.cfg.Dir, KeyFile)); err != nil {
			return fmt.Errorf("audit: key rotation: %w", err)
		}
		l.key = next
		return nil
	})
}

// Close writes the queued events and a final checkpoint, syncs and closes
// the file and stops the writer and the syslog forwarder. It returns the
// first write error the log met.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.exited
		return ErrClosed
	}
	l.closed = true
	l.mu.Unlock()
	close(l.done)
	<-l.exited
	return l.firstErr
}

// run is the writer goroutine.
func (l *Log) run() {
	defer close(l.exited)
	tick := time.NewTicker(l.cfg.CheckpointInterval)
	defer tick.Stop()
	for {
		select {
		case q := <-l.queue:
			l.write(q)
			if len(l.queue) == 0 {
				l.noteErr(l.flush())
			}
		case r := <-l.reqs:
			r.done <- r.fn()
		case <-tick.C:
			l.maybeCheckpoint()
		case <-l.done:
			l.drain()
			l.noteErr(l.checkpoint("close", nil))
			l.noteErr(l.f.Close())
			if l.fwd != nil {
				l.fwd.close()
			}
			return
		}
	}
}

// drain writes every queued event.
func (l *Log) drain() {
	for {
		select {
		case q := <-l.queue:
			l.write(q)
		default:
			l.noteErr(l.flush())
			return
		}
	}
}

func (l *Log) noteErr(err error) {
	if err != nil && l.firstErr == nil {
		l.firstErr = err
	}
}

// write appends one queued event and whatever it makes due.
func (l *Log) write(q queued) {
	if l.beforeWrite != nil {
		l.beforeWrite()
	}
	typ := sanitizeKey(q.ev.Type)
	fields := q.ev.Fields
	if decisionTypes[typ] && !hasField(fields, "reason") {
		fields = append(fields[:len(fields):len(fields)], String("reason", "unspecified"))
	}
	l.appendEntry(q.t, typ, fields)
	if n := l.pendingDrops.Swap(0); n > 0 {
		l.appendEntry(l.now(), TypeDropped, []Field{Int("count", int64(n)), String("reason", "queue full")})
	}
	if len(l.buf) >= flushSize {
		l.noteErr(l.flush())
	}
	l.maybeCheckpoint()
	if l.size+int64(len(l.buf)) >= l.cfg.MaxFileSize {
		l.noteErr(l.rotateFile())
	}
}

func hasField(fs []Field, key string) bool {
	for _, f := range fs {
		if f.Key == key {
			return true
		}
	}
	return false
}

func (l *Log) maybeCheckpoint() {
	if l.sinceCP == 0 {
		return
	}
	if l.sinceCP >= l.cfg.CheckpointEvery {
		l.noteErr(l.checkpoint("count", nil))
	} else if !l.now().Before(l.lastCP.Add(l.cfg.CheckpointInterval)) {
		l.noteErr(l.checkpoint("interval", nil))
	}
}

// appendEntry chains a new entry and appends its line to buf.
func (l *Log) appendEntry(t time.Time, typ string, fields []Field) *Entry {
	e := &Entry{Time: t, Seq: l.seq + 1, Type: typ, Fields: normalizeFields(fields), Prev: l.head}
	l.buf = e.seal(l.buf)
	l.bufN++
	l.seq, l.head = e.Seq, e.Hash
	l.sinceCP++
	return e
}

// checkpoint appends a signed checkpoint (introducing next when it is not
// nil), writes the buffer and syncs the file.
func (l *Log) checkpoint(reason string, next *signer) error {
	fields := []Field{
		Int("epoch", int64(l.key.epoch)),
		String("key", b64.EncodeToString(l.key.public())),
		String("reason", reason),
	}
	if next != nil {
		fields = append(fields, Int("next_epoch", int64(next.epoch)), String("next_key", b64.EncodeToString(next.public())))
	}
	e := &Entry{Time: l.now(), Seq: l.seq + 1, Type: TypeCheckpoint, Fields: normalizeFields(fields), Prev: l.head}
	sig := ed25519.Sign(l.key.priv, checkpointMessage(e.canonical(nil)))
	e.Fields = normalizeFields(append(e.Fields, String("sig", b64.EncodeToString(sig))))
	l.buf = e.seal(l.buf)
	l.bufN++
	l.seq, l.head = e.Seq, e.Hash
	if err := l.flush(); err != nil {
		return err
	}
	if err := l.f.Sync(); err != nil {
		l.writeErrors.Add(1)
		return fmt.Errorf("audit: sync: %w", err)
	}
	l.checkpoints.Add(1)
	l.sinceCP = 0
	l.lastCP = l.now()
	return nil
}

// flush writes buf to the file. On failure the file is cut back to its
// last good size and the entries in buf are counted as dropped (and
// reported by an audit.dropped entry once writing works again).
func (l *Log) flush() error {
	if len(l.buf) == 0 {
		return nil
	}
	n, err := l.f.Write(l.buf)
	if err != nil {
		l.writeErrors.Add(1)
		if n > 0 {
			_ = l.f.Truncate(l.size)
		}
		l.dropped.Add(uint64(l.bufN))
		l.pendingDrops.Add(uint64(l.bufN))
		l.seq, l.head = l.flushedSeq, l.flushedHead
		l.buf, l.bufN = l.buf[:0], 0
		l.log.Error("audit: writing the audit log failed; entries lost", "file", l.cfg.File, "err", err)
		return fmt.Errorf("audit: writing %s: %w", l.cfg.File, err)
	}
	if l.fwd != nil {
		for line := range bytes.SplitSeq(l.buf[:len(l.buf)-1], []byte("\n")) {
			l.fwd.send(line)
		}
	}
	l.size += int64(n)
	l.bytes.Add(uint64(n))
	l.written.Add(uint64(l.bufN))
	l.flushedSeq, l.flushedHead = l.seq, l.head
	if cap(l.buf) > 4*flushSize {
		l.buf = nil
	} else {
		l.buf = l.buf[:0]
	}
	l.bufN = 0
	return nil
}

// rotateFile ends the file with a checkpoint, shifts File.i to File.i+1
// (File.KeepFiles is overwritten), renames File to File.1 and starts a new
// File whose first entry continues the chain.
func (l *Log) rotateFile() error {
	if err := l.checkpoint("rotate", nil); err != nil {
		return err
	}
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	for i := l.cfg.KeepFiles - 1; i >= 1; i-- {
		from := l.cfg.File + "." + strconv.Itoa(i)
		if err := os.Rename(from, l.cfg.File+"."+strconv.Itoa(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("audit: rotate: %w", err)
		}
	}
	if err := os.Rename(l.cfg.File, l.cfg.File+".1"); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	f, err := os.OpenFile(l.cfg.File, os.O_RDWR|os.O_CREATE|os.O_APPEND|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	l.f, l.size = f, 0
	l.appendEntry(l.now(), TypeFile, []Field{String("previous_file", filepath.Base(l.cfg.File)+".1"), String("reason", "size limit")})
	return l.flush()
}
