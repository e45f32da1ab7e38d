package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// How the store uses its commit log (wal.go): the committer's side.

// logHasRecords reports whether dir's log file is longer than its
// header: it may hold records the engine's file lacks.
func logHasRecords(dir string) bool {
	fi, err := os.Stat(filepath.Join(dir, LogFile))
	return err == nil && fi.Size() > logHeaderLen
}

// readLogID returns the ID of the log the engine's file names as its
// continuation (written by the last checkpoint), and whether it names one.
func (s *Store) readLogID() (id [16]byte, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bktMeta).Get(keyLog)
		if v == nil {
			return nil
		}
		_, pt, err := s.keys.open(bktMeta, keyLog, v)
		if err != nil || len(pt) != len(id) {
			return fmt.Errorf("%w: the log record of the store file does not authenticate", ErrCorrupt)
		}
		copy(id[:], pt)
		ok = true
		return nil
	})
	return id, ok, err
}

// recoverLog brings the engine's file up to date with the log, once the
// key and the state record are loaded: the records the log holds after
// the engine's last checkpoint are applied in one engine transaction.
// In a writable store that transaction is a checkpoint that starts a
// new, empty log; read-only, the log is left behind, stale. The
// log must continue the engine's file:
//
//   - the log the file names: its base is the file's commit counter, and
//     every record is applied;
//   - any other log (the one before the last checkpoint, which a crash
//     left in place, or one left by another sync mode): every record is
//     already in the file (counters not above the file's), nothing is
//     applied.
//
// Anything else (a log whose records the file lacks but does not name,
// a base above the file's counter) means the file or the log is an older
// copy, or not this store's: ErrCorrupt or ErrRollback, so the store is
// quarantined. A missing log is no error (a store written before the log
// existed, or one whose log was fully checkpointed): the commit counter
// file detects a log removed along with what it held.
func (s *Store) recoverLog() (err error) {
	defer recoverCorrupt(&err)
	path := filepath.Join(s.cfg.Dir, LogFile)
	lc, err := readLog(path, s.keys)
	if err != nil {
		return err
	}
	useLog := !s.cfg.readOnly
	if lc == nil && !useLog {
		return nil
	}
	named, hasNamed, err := s.readLogID()
	if err != nil {
		return err
	}
	counter := s.st.Counter
	var replay []logRecord
	if lc != nil {
		if hasNamed && lc.logID == named {
			if lc.base != counter {
				return fmt.Errorf("%w: %s starts at commit %d but the store file is at %d", ErrRollback, LogFile, lc.base, counter)
			}
			replay = lc.records
		} else {
			last := lc.base
			if n := len(lc.records); n > 0 {
				last = lc.records[n-1].counter
			}
			if last > counter {
				return fmt.Errorf("%w: %s holds commits up to %d that the store file (at %d) does not name (an older store file, or another log)", ErrRollback, LogFile, last, counter)
			}
		}
	}
	if len(replay) == 0 && !useLog {
		return nil // the log is stale: nothing to write
	}
	if !s.applyLog {
		return fmt.Errorf("store: %s holds commits to apply, and the store is open read-only", LogFile)
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer func() {
		if tx != nil {
			tx.Rollback()
		}
	}()
	if len(replay) > 0 {
		if err := replayLog(tx, s.keys, lc, replay); err != nil {
			return err
		}
		counter = replay[len(replay)-1].counter
	}
	var id [16]byte
	if useLog {
		id = newLogID()
		if err := s.putLogID(tx, id, counter); err != nil {
			return err
		}
	} else if hasNamed {
		// The log that was named is stale once applied.
		if err := tx.Bucket(bktMeta).Delete(keyLog); err != nil {
			return err
		}
	}
	err = tx.Commit()
	tx = nil
	if err != nil {
		return fmt.Errorf("store: applying the log: %w", err)
	}
	if s.cfg.Sync == SyncOff {
		// The engine's commit above did not fsync; the log that held
		// what it applied is about to be replaced.
		if err := s.db.Sync(); err != nil {
			return fmt.Errorf("store: %w", err)
		}
	}
	if !useLog {
		return nil
	}
	if s.wal, err = createLog(s.cfg.Dir, s.keys, id, counter, true); err != nil {
		return err
	}
	s.ckptAt = time.Now()
	return nil
}

// putLogID names, in tx, the log that continues the engine's file.
func (s *Store) putLogID(tx *bolt.Tx, id [16]byte, counter uint64) error {
	v, err := s.keys.seal(bktMeta, keyLog, counter, id[:])
	if err != nil {
		return err
	}
	return tx.Bucket(bktMeta).Put(keyLog, v)
}

// commitLogged is commitTx's end with the log: the batch, applied to the
// engine's open transaction, is appended to the log as one record; the
// log's syncer makes it durable (one fdatasync for every record written
// meanwhile) and reports it. A batch that fails to apply leaves the
// transaction partly written: it is rolled back and the log's records
// since the checkpoint, every batch logged so far, are applied again.
//
// Each record says how many records of its log were durable when it was
// written: recovery tells an interrupted append (no later record says it
// was durable) from damage (a later record says so), see parseLog. At
// most maxUnsynced records wait for an fsync, which bounds what a crash
// can leave undecided.
func (s *Store) commitLogged(t *txn, reqs []*request, force bool) (nops, dropped int, err error) {
	if s.wtx == nil {
		if s.wtx, err = s.db.Begin(true); err != nil {
			return 0, 0, err
		}
	}
	t.tx = s.wtx
	if s.ovl == nil {
		// The engine's content is up to date with s.st: after Open,
		// a checkpoint or redoLog.
		s.ovl = newOverlay(s.st.MaxID)
	}
	t.ovl = s.ovl
	t.log = &s.logBuf
	t.log.reset()
	nops, dropped, err = s.applyBatch(t, reqs, force)
	if err == errNothingLeft {
		return nops, dropped, err // nothing was written to the transaction
	}
	if err != nil {
		var oe *opError
		if errors.As(err, &oe) {
			if rerr := s.redoLog(); rerr != nil {
				return nops, dropped, rerr
			}
		}
		return nops, dropped, err
	}
	for s.logJobs != nil && s.wal.index-s.logDurable.Load() >= maxUnsynced {
		if p := s.logErr.Load(); p != nil {
			return nops, dropped, *p
		}
		<-s.logProgress
	}
	t.log.setCounter(t.st.Counter, s.logDurable.Load())
	if len(t.log.b)+gcmTagLen > logRecordLimit {
		// Too large for one record (a batch of several very large
		// messages): undone like a failing op, and the requests are
		// retried one by one; one that is too large alone fails alone.
		if rerr := s.redoLog(); rerr != nil {
			return nops, dropped, rerr
		}
		return nops, dropped, &opError{errLogRecordTooLarge}
	}
	if err := s.wal.append(t.log.b); err != nil {
		return nops, dropped, err
	}
	return nops, dropped, nil
}

// maxUnsynced bounds the records of the log waiting for an fsync.
const maxUnsynced = 4

// logJob is work for the log's syncer, in the committer's order: make
// the log durable up to record index (when w is set), then report err, or
// the fsync's failure, to reqs; or close barrier once everything before
// it is done.
type logJob struct {
	w       *logWriter
	index   uint64 // the log's records written, this batch's included
	reqs    []*request
	err     error
	counter uint64    // the commit counter the record brings the store to
	start   time.Time // when the batch's commit started
	barrier chan struct{}
}

// logSyncer takes every job queued, fsyncs the log once for all the
// records they wrote (group commit again: the batches the committer
// logged during the previous fsync share the next), publishes how many
// records are durable, and reports the jobs' requests in order. After a
// failed fsync every later request fails too.
func (s *Store) logSyncer(jobs <-chan logJob) {
	defer s.logWG.Done()
	var failed error
	var lastCounter time.Time
	var group []logJob
	for j := range jobs {
		group = append(group[:0], j)
	more:
		for len(group) < 1024 {
			select {
			case j, ok := <-jobs:
				if !ok {
					break more
				}
				group = append(group, j)
			default:
				break more
			}
		}
		var w *logWriter
		var upto, counter uint64
		var start time.Time
		for _, j := range group {
			if j.w != nil {
				if w == nil {
					start = j.start
				}
				w, upto, counter = j.w, j.index, j.counter
			}
		}
		if w != nil && failed == nil {
			if err := s.syncLog(w); err != nil {
				failed = fmt.Errorf("%w: %v", ErrFailed, err)
				s.logErr.Store(&failed)
			} else {
				s.logDurable.Store(upto)
				s.stats.syncs.Add(1)
				s.latency.observe(time.Since(start))
				if now := s.cfg.Now(); now.Sub(lastCounter) >= s.cfg.CounterInterval && s.writeCounterAt(counter) == nil {
					lastCounter = now
				}
			}
			select {
			case s.logProgress <- struct{}{}:
			default:
			}
		}
		for i := range group {
			j := &group[i]
			if j.barrier != nil {
				close(j.barrier)
			} else if len(j.reqs) > 0 {
				err := j.err
				if err == nil {
					err = failed
				}
				s.finishBatch(j.reqs, err)
			}
			*j = logJob{}
		}
	}
}

// syncLog makes the log durable up to what was written to it.
func (s *Store) syncLog(w *logWriter) error {
	if h := s.cfg.hooks; h != nil && h.logSync != nil {
		if err := h.logSync(); err != nil {
			return err
		}
	}
	return w.sync()
}

// drainLog waits until the log's syncer has done every job queued: every
// record written is durable (or the fsync failed) and reported.
func (s *Store) drainLog() error {
	if s.logJobs != nil {
		b := make(chan struct{})
		s.logJobs <- logJob{barrier: b}
		<-b
	}
	if p := s.logErr.Load(); p != nil {
		return *p
	}
	return nil
}

// afterLogged hands a batch that commitTx logged (or found nothing to
// write for) to the log's syncer, and checkpoints when one is due or
// asked for: a batch that asked waits for the checkpoint before it is
// reported.
func (s *Store) afterLogged(reqs []*request, wrote bool, start time.Time) {
	ckpt := wantsCheckpoint(reqs) && (wrote || s.wal.index > 0)
	if s.logJobs == nil {
		// SyncBatch, SyncOff: the record is written to the operating
		// system, which is what these modes report; the batch's
		// syncer fsyncs it within BatchInterval (SyncBatch).
		if wrote {
			s.latency.observe(time.Since(start))
			s.logWrittenCounter.Store(s.st.Counter)
			s.logWritten.Store(s.wal.index)
		}
		if !ckpt {
			s.finishBatch(reqs, nil)
		}
	} else if wrote {
		j := logJob{w: s.wal, index: s.wal.index, counter: s.st.Counter, start: start}
		if !ckpt {
			j.reqs = slices.Clone(reqs)
		}
		s.logJobs <- j
	} else if !ckpt {
		s.reportBatch(reqs, nil) // after the batches before it
	}
	if ckpt || s.checkpointDue() {
		// The checkpoint closes the old log: the syncer is done with
		// it first.
		err := s.drainLog()
		if err == nil {
			if err = s.checkpoint(); err != nil {
				err = fmt.Errorf("%w: checkpoint: %v", ErrFailed, err)
			}
		}
		if err != nil {
			// What was logged is durable (or reported failed by the
			// syncer); nothing more is accepted.
			s.failed = err
		}
	}
	if ckpt {
		s.reportBatch(reqs, s.failed)
	}
}

// redoLog rolls back the engine's transaction and applies the current
// log's records to a new one.
func (s *Store) redoLog() (err error) {
	defer recoverCorrupt(&err)
	if s.wtx != nil {
		s.wtx.Rollback()
		s.wtx = nil
	}
	// The overlay goes with the transaction: the log's records, applied
	// below, put back in the engine everything it held before the batch.
	s.ovl = nil
	if s.wal.index == 0 {
		return nil
	}
	lc, err := readLog(s.wal.path, s.keys)
	if err != nil {
		return err
	}
	if lc == nil || lc.logID != s.wal.logID || uint64(len(lc.records)) != s.wal.index || lc.torn {
		return fmt.Errorf("%w: %s no longer holds what was written to it", ErrCorrupt, LogFile)
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		return err
	}
	if err := replayLog(tx, s.keys, lc, lc.records); err != nil {
		tx.Rollback()
		return err
	}
	if err := s.loadState(tx.Bucket(bktMeta)); err != nil {
		tx.Rollback()
		return err
	}
	s.wtx = tx
	// The put-records still stored are in the engine now, and replayLog
	// added their elements to the digest of the transaction's state
	// record; the log's own state records leave them out. A checkpoint
	// ends this log, so that a replay after a crash never adds them
	// twice.
	if err := s.drainLog(); err != nil {
		return err
	}
	if err := s.checkpoint(); err != nil {
		return fmt.Errorf("%w: checkpoint: %v", ErrFailed, err)
	}
	return nil
}

// checkpointDue reports whether the log should be checkpointed.
func (s *Store) checkpointDue() bool {
	return s.wal != nil && s.wal.index > 0 &&
		(s.wal.size >= s.cfg.logCkptBytes || time.Since(s.ckptAt) >= s.cfg.logCkptEvery)
}

// checkpoint commits the engine's transaction (with the engine's fsyncs,
// except in SyncOff), naming a new log in it, and replaces the log with
// that new, empty one. A crash before the new log is in place leaves the
// previous one, whose records the engine's file then holds: recoverLog
// accepts it.
func (s *Store) checkpoint() (err error) {
	defer recoverCorrupt(&err)
	tx := s.wtx
	s.wtx = nil
	if tx == nil {
		if tx, err = s.db.Begin(true); err != nil {
			return err
		}
	}
	if s.ovl != nil {
		// The records still stored at the checkpoint go into the
		// engine's file with it, and those that were not sealed into
		// the digest (see putLater).
		if err := s.ovl.flush(tx, s.keys, s.st.MaxID, &s.st.Digest); err != nil {
			tx.Rollback()
			return err
		}
	}
	st, err := s.keys.seal(bktMeta, keyState, s.st.Counter, encodeRecord(&s.st))
	if err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Bucket(bktMeta).Put(keyState, st); err != nil {
		tx.Rollback()
		return err
	}
	id := newLogID()
	if err := s.putLogID(tx, id, s.st.Counter); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	w, err := createLog(s.cfg.Dir, s.keys, id, s.st.Counter, s.cfg.Sync != SyncOff)
	if err != nil {
		return err
	}
	// The batch syncer (SyncBatch) may be fsyncing the old log: what it
	// had to make durable is in the engine's file now, and walGen tells
	// it that its fsync is of a log replaced meanwhile.
	s.walMu.Lock()
	s.wal.close()
	s.wal = w
	s.walGen++
	s.logDurable.Store(0)
	s.logWritten.Store(0)
	s.walMu.Unlock()
	s.ckptAt = time.Now()
	s.stats.checkpoints.Add(1)
	return nil
}

// closeLog drops the engine's transaction (if any) and closes the log.
func (s *Store) closeLog() {
	s.ovl = nil
	if s.wtx != nil {
		s.wtx.Rollback()
		s.wtx = nil
	}
	if s.wal != nil {
		s.wal.close()
		s.wal = nil
	}
}

func wantsCheckpoint(reqs []*request) bool {
	for _, r := range reqs {
		if r.checkpoint {
			return true
		}
	}
	return false
}

// syncView runs fn in a read transaction that sees every commit reported
// before it was called. With the log, commits since the last checkpoint
// are only in the committer's transaction: a checkpoint comes first.
func (s *Store) syncView(fn func(*bolt.Tx) error) error {
	if s.cfg.Sync == SyncAlways && !s.cfg.readOnly {
		r := &request{done: make(chan error, 1), checkpoint: true}
		if err := s.submit(r); err != nil {
			return err
		}
		if err := <-r.done; err != nil {
			return err
		}
	}
	return s.db.View(fn)
}
