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
// With SyncAlways (not read-only) that transaction is a checkpoint that
// starts a new, empty log; otherwise the log is left behind, stale. The
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
	useLog := s.cfg.Sync == SyncAlways && !s.cfg.readOnly
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
	for i := range replay {
		if err := applyLog(tx, &replay[i]); err != nil {
			return err
		}
		counter = replay[i].counter
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
	if s.cfg.Sync != SyncAlways {
		// The engine's commit above did not fsync.
		if err := s.db.Sync(); err != nil {
			return fmt.Errorf("store: %w", err)
		}
	}
	if !useLog {
		return nil
	}
	if s.wal, err = createLog(s.cfg.Dir, s.keys, id, counter); err != nil {
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
// engine's open transaction, is appended to the log as one record and
// made durable by one fdatasync. A batch that fails to apply leaves the
// transaction partly written: it is rolled back and the log's records
// since the checkpoint, every batch reported so far, are applied again.
//
// Only the last record of the log is ever unsynced: a record is written
// after the fdatasync of the one before returned. So an incomplete or
// unauthentic record followed by more data is damage, not a crash
// (parseLog).
func (s *Store) commitLogged(t *txn, reqs []*request, force bool) (nops, dropped int, err error) {
	if s.wtx == nil {
		if s.wtx, err = s.db.Begin(true); err != nil {
			return 0, 0, err
		}
	}
	t.tx = s.wtx
	t.log = &s.logBuf
	t.log.reset()
	nops, dropped, err = s.applyBatch(t, reqs, force)
	if err == nil {
		// The record before must be durable before this one is written:
		// then only the last record of the log is ever unsynced.
		err = s.waitLogSync()
	}
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
	t.log.setCounter(t.st.Counter)
	if err := s.wal.append(t.log.b); err != nil {
		return nops, dropped, err
	}
	return nops, dropped, nil
}

// logJob is work for the log's syncer: fsync w (when set), then report
// err, or the fsync's failure, to reqs.
type logJob struct {
	w       *logWriter
	reqs    []*request
	err     error
	counter uint64    // the commit counter the record brings the store to
	start   time.Time // when the batch's commit started
}

// logSyncer fsyncs the log and reports requests, in the order of jobs.
// The result of each fsync goes to the committer (logSynced) before the
// requests are reported, so that the committer writes the next record
// while the callbacks run. After a failed fsync every later request
// fails too.
func (s *Store) logSyncer(jobs <-chan logJob) {
	defer s.logWG.Done()
	var failed error
	var lastCounter time.Time
	for j := range jobs {
		err := j.err
		if j.w != nil {
			serr := failed
			if serr == nil {
				if serr = j.w.sync(); serr != nil {
					serr = fmt.Errorf("%w: %v", ErrFailed, serr)
					failed = serr
				}
			}
			s.logSynced <- serr
			if serr == nil {
				s.stats.syncs.Add(1)
				s.latency.observe(time.Since(j.start))
				if now := s.cfg.Now(); now.Sub(lastCounter) >= s.cfg.CounterInterval && s.writeCounterAt(j.counter) == nil {
					lastCounter = now
				}
			}
			err = serr
		}
		if err == nil {
			err = failed
		}
		if len(j.reqs) > 0 {
			s.finishBatch(j.reqs, err)
		}
	}
}

// waitLogSync waits for the fsync handed to the log's syncer last.
func (s *Store) waitLogSync() error {
	if !s.logBusy {
		return nil
	}
	s.logBusy = false
	return <-s.logSynced
}

// afterLogged hands a batch that commitTx logged (or found nothing to
// write for) to the log's syncer, and checkpoints when one is due or
// asked for: a batch that asked waits for the checkpoint before it is
// reported.
func (s *Store) afterLogged(reqs []*request, wrote bool, start time.Time) {
	ckpt := wantsCheckpoint(reqs) && (wrote || s.wal.index > 0)
	if wrote {
		j := logJob{w: s.wal, counter: s.st.Counter, start: start}
		if !ckpt {
			j.reqs = slices.Clone(reqs)
		}
		s.logJobs <- j
		s.logBusy = true
	} else if !ckpt {
		s.reportBatch(reqs, nil) // after the batches before it
	}
	if ckpt || s.checkpointDue() {
		err := s.waitLogSync()
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
	for i := range lc.records {
		if err := applyLog(tx, &lc.records[i]); err != nil {
			tx.Rollback()
			return err
		}
	}
	s.wtx = tx
	return nil
}

// checkpointDue reports whether the log should be checkpointed.
func (s *Store) checkpointDue() bool {
	return s.wal != nil && s.wal.index > 0 &&
		(s.wal.size >= s.cfg.logCkptBytes || time.Since(s.ckptAt) >= s.cfg.logCkptEvery)
}

// checkpoint commits the engine's transaction (with the engine's fsyncs),
// naming a new log in it, and replaces the log with that new, empty one.
// A crash before the new log is in place leaves the previous one, whose
// records the engine's file then holds: recoverLog accepts it.
func (s *Store) checkpoint() (err error) {
	defer recoverCorrupt(&err)
	tx := s.wtx
	s.wtx = nil
	if tx == nil {
		if tx, err = s.db.Begin(true); err != nil {
			return err
		}
	}
	id := newLogID()
	if err := s.putLogID(tx, id, s.st.Counter); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	w, err := createLog(s.cfg.Dir, s.keys, id, s.st.Counter)
	if err != nil {
		return err
	}
	s.wal.close()
	s.wal = w
	s.ckptAt = time.Now()
	s.stats.checkpoints.Add(1)
	return nil
}

// closeLog drops the engine's transaction (if any) and closes the log.
func (s *Store) closeLog() {
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
