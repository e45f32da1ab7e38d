package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// request is one caller's commit: its ops go into one transaction with
// other callers' ops, and it is told the outcome once that transaction is
// durable as the sync mode says.
type request struct {
	ops  []Op
	done chan error  // Commit
	cb   func(error) // CommitAsync
}

func (r *request) finish(err error) {
	if r.cb != nil {
		r.cb(err)
		return
	}
	r.done <- err
}

// Commit applies ops in one transaction, together with other callers'
// concurrent commits, and returns once they are durable as Config.Sync
// says: fsynced (SyncAlways), written to the operating system (SyncBatch,
// SyncOff). The ops of one Commit are applied all or none. When ctx ends
// first, Commit returns ctx.Err() and the outcome is unknown: the ops may
// still be committed. Safe for concurrent use.
func (s *Store) Commit(ctx context.Context, ops ...Op) error {
	r := &request{ops: ops, done: make(chan error, 1)}
	if err := s.submit(r); err != nil {
		return err
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// CommitAsync is Commit without waiting: done is called with the outcome
// once the ops are durable as Config.Sync says (or immediately with
// ErrClosed after Close). done runs on the store's committer goroutine: it
// must return quickly and must not call Commit. Ops submitted by one
// goroutine are committed in submission order. Safe for concurrent use.
func (s *Store) CommitAsync(done func(error), ops ...Op) {
	r := &request{ops: ops, cb: done}
	if err := s.submit(r); err != nil {
		done(err)
	}
}

func (s *Store) submit(r *request) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.reqs == nil {
		return ErrClosed
	}
	s.reqs <- r
	return nil
}

// committer is the store's only writer. It takes every request waiting,
// commits them in one transaction (one fsync in SyncAlways), and reports
// to each. It returns when Close has closed reqs and the last request is
// done.
func (s *Store) committer() {
	defer s.wg.Done()
	var tick <-chan time.Time
	if s.cfg.Sync == SyncBatch {
		t := time.NewTicker(s.cfg.BatchInterval)
		defer t.Stop()
		tick = t.C
	}
	batch := make([]*request, 0, 64)
	for {
		select {
		case r, ok := <-s.reqs:
			if !ok {
				return
			}
			batch = append(batch[:0], r)
		more:
			for len(batch) < s.cfg.MaxBatch {
				select {
				case r, ok := <-s.reqs:
					if !ok {
						break more
					}
					batch = append(batch, r)
				default:
					break more
				}
			}
			s.commitBatch(batch)
			clear(batch)
		case <-tick:
			s.periodicSync()
		}
	}
}

// commitBatch commits requests in one transaction. When it fails, each
// request is retried alone, so one caller's bad op fails only that caller.
func (s *Store) commitBatch(reqs []*request) {
	if h := s.cfg.hooks; h != nil && h.beforeCommit != nil {
		h.beforeCommit(len(reqs))
	}
	err := s.failed
	if err == nil {
		err = s.commitTx(reqs)
		var oe *opError
		if err != nil && !errors.As(err, &oe) {
			// The disk refused a write or an fsync: what the file holds
			// is no longer known, so nothing more is reported durable.
			s.failed = fmt.Errorf("%w: %v", ErrFailed, err)
			err = s.failed
		}
	}
	if err != nil && s.failed == nil && len(reqs) > 1 {
		for _, r := range reqs {
			s.commitBatch([]*request{r})
		}
		return
	}
	if err == nil {
		s.afterCommit()
	} else {
		s.stats.failed.Add(int64(len(reqs)))
	}
	s.stats.requests.Add(int64(len(reqs)))
	for _, r := range reqs {
		r.finish(err)
	}
}

func (s *Store) commitTx(reqs []*request) (err error) {
	defer recoverCorrupt(&err)
	t := &txn{s: s, version: s.st.Counter + 1, st: s.st, refs: map[uint64]int{}, newMsgs: map[uint64]bool{}}
	t.st.Counter = t.version
	nops := 0
	if err := s.keys.newTxnKey(); err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		t.tx = tx
		for _, r := range reqs {
			for _, op := range r.ops {
				if err := op.apply(t); err != nil {
					return &opError{err}
				}
				nops++
			}
		}
		if h := s.cfg.hooks; h != nil && h.diskError != nil {
			if err := h.diskError(); err != nil {
				return err
			}
		}
		// A message no delivery refers to is not kept.
		for id := range t.newMsgs {
			if t.refcount(id) <= 0 {
				if _, err := t.del(bktMessage, messageKey(id)); err != nil {
					return err
				}
			}
		}
		return tx.Bucket(bktMeta).Put(keyState, s.keys.seal(bktMeta, keyState, t.st.Counter, encodeRecord(&t.st)))
	})
	if err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	s.st = t.st
	for id, d := range t.refs {
		if n := s.refs[id] + d; n > 0 {
			s.refs[id] = n
		} else {
			delete(s.refs, id)
		}
	}
	s.stats.commits.Add(1)
	s.stats.ops.Add(int64(nops))
	return nil
}

// opError marks an error of one caller's ops (bad input), as opposed to
// an error of the disk.
type opError struct{ err error }

func (e *opError) Error() string { return e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// afterCommit counts the fsync of SyncAlways and refreshes the counter
// file when it is due.
func (s *Store) afterCommit() {
	switch s.cfg.Sync {
	case SyncAlways:
		s.stats.syncs.Add(1)
		s.counterIfDue()
	case SyncBatch:
		s.dirty = true
	}
}

func (s *Store) periodicSync() {
	if !s.dirty {
		return
	}
	if err := s.db.Sync(); err != nil {
		s.failed = fmt.Errorf("%w: %v", ErrFailed, err)
		return
	}
	s.dirty = false
	s.stats.syncs.Add(1)
	s.counterIfDue()
}

func (s *Store) counterIfDue() {
	now := s.cfg.Now()
	if now.Sub(s.lastCounter) < s.cfg.CounterInterval {
		return
	}
	if s.writeCounter() == nil {
		s.lastCounter = now
	}
}
