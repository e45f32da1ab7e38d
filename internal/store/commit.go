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
// must return quickly and must not call Commit (which would wait for the
// committer itself); it may call CommitAsync. Requests are applied in the
// order they were submitted. Safe for concurrent use.
func (s *Store) CommitAsync(done func(error), ops ...Op) {
	r := &request{ops: ops, cb: done}
	if err := s.submit(r); err != nil {
		done(err)
	}
}

// submit queues r for the committer. It never blocks, so a CommitAsync
// callback may submit again; the broker's own limits (in-flight windows,
// Receive Maximum) bound how many requests can wait.
func (s *Store) submit(r *request) error {
	s.mu.Lock()
	if s.closed || s.wake == nil {
		s.mu.Unlock()
		return ErrClosed
	}
	s.pending = append(s.pending, r)
	s.mu.Unlock()
	s.signal()
	return nil
}

func (s *Store) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pendingLen is the number of requests waiting for the committer.
func (s *Store) pendingLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// committer is the store's only writer. It takes every request waiting
// (up to MaxBatch), commits them in one transaction (one fsync in
// SyncAlways), and reports to each. It returns once Close was called and
// no request is left.
func (s *Store) committer() {
	defer s.wg.Done()
	var tick <-chan time.Time
	if s.cfg.Sync == SyncBatch {
		t := time.NewTicker(s.cfg.BatchInterval)
		defer t.Stop()
		tick = t.C
	}
	var batch []*request
	for {
		select {
		case <-s.wake:
		case <-tick:
			s.periodicSync()
			continue
		}
		for {
			s.mu.Lock()
			n := min(len(s.pending), s.cfg.MaxBatch)
			batch = append(batch[:0], s.pending[:n]...)
			rest := copy(s.pending, s.pending[n:])
			clear(s.pending[rest:])
			s.pending = s.pending[:rest]
			closed := s.closed
			s.mu.Unlock()
			if n == 0 {
				if closed {
					return
				}
				break
			}
			s.commitBatch(batch)
			clear(batch)
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
		// Latency is measured, not scheduled: the system clock, not
		// Config.Now.
		start := time.Now()
		err = s.commitTx(reqs)
		s.latency.observe(time.Since(start))
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
