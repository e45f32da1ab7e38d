package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// request is one caller's commit: its ops go into one transaction with
// other callers' ops, and it is told the outcome once that transaction is
// durable as the sync mode says.
type request struct {
	ops    []Op        // prepared (prepareOps)
	err    error       // preparing the ops failed: the request fails alone
	done   chan error  // Commit
	cb     func(error) // CommitAsync
	opsBuf [3]Op       // ops of a small request (a message and its delivery)
	// checkpoint asks for a checkpoint of the log once the batch is
	// durable (syncView).
	checkpoint bool
}

// newRequest prepares ops for a request, on the caller's goroutine.
func (s *Store) newRequest(ops []Op) *request {
	r := &request{}
	var buf []Op
	if len(ops) <= len(r.opsBuf) {
		buf = r.opsBuf[:len(ops)]
	}
	r.ops, r.err = s.prepareOps(ops, buf)
	return r
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
// still be committed. The ops' records are encoded and sealed on the
// calling goroutine. Safe for concurrent use.
func (s *Store) Commit(ctx context.Context, ops ...Op) error {
	r := s.newRequest(ops)
	r.done = make(chan error, 1)
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
// ErrClosed after Close). done runs on the goroutine that reports the
// store's commits, one at a time and in the order the requests were
// submitted: the committer, or with SyncAlways the log's syncer. It must
// return quickly and must not call Commit (which would wait for that
// goroutine itself); it may call CommitAsync. Requests are applied in the
// order they were submitted. The ops' records are encoded and sealed on
// the calling goroutine before CommitAsync returns; the ops are not used
// afterwards. Safe for concurrent use.
func (s *Store) CommitAsync(done func(error), ops ...Op) {
	r := s.newRequest(ops)
	r.cb = done
	if err := s.submit(r); err != nil {
		done(err)
	}
}

// submit queues r for the committer. It never blocks, so a CommitAsync
// callback may submit again; the broker's own limits (in-flight windows,
// Receive Maximum) bound how many requests can wait. A request is not
// changed once it is queued, and append never writes below the length
// another goroutine read under s.mu, so the committer may read the
// requests of a copy of s.pending without the lock (lateCoalesce); only
// the committer removes requests.
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
	var batch []*request
	for range s.wake {
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

// syncer fsyncs the commit log every BatchInterval in SyncBatch, on its
// own goroutine: the committer goes on appending and reporting records
// while the disk flushes what the interval wrote. It returns when stop
// is closed (Close then checkpoints, with the engine's fsyncs) or after
// a failed fsync, which stops the store (logErr).
func (s *Store) syncer(stop <-chan struct{}) {
	defer s.syncWG.Done()
	t := time.NewTicker(s.cfg.BatchInterval)
	defer t.Stop()
	var lastCounter time.Time
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if err := s.syncWritten(&lastCounter); err != nil {
			err = fmt.Errorf("%w: %v", ErrFailed, err)
			s.logErr.Store(&err)
			return
		}
	}
}

// syncWritten fsyncs the log up to the records the committer has
// written (SyncBatch), then refreshes the counter file when it is due.
// The committer does not wait for it: a checkpoint may replace the log
// (and close its file) while the fsync runs, and walGen then tells that
// the fsync was of a log whose records the checkpoint has already made
// durable in the engine's file (an os.File closed during Sync is closed
// only once Sync returns).
func (s *Store) syncWritten(lastCounter *time.Time) error {
	s.walMu.Lock()
	w, gen := s.wal, s.walGen
	// Read before the fsync starts: every record up to upto, and the
	// commit that counter names, was written before it, so it is on
	// disk when the fsync returns; the counter file may name it, never
	// a later one.
	upto, counter := s.logWritten.Load(), s.logWrittenCounter.Load()
	s.walMu.Unlock()
	if w == nil || upto <= s.logDurable.Load() {
		return nil
	}
	err := s.syncLog(w)
	s.walMu.Lock()
	defer s.walMu.Unlock()
	if gen != s.walGen {
		return nil // checkpointed meanwhile
	}
	if err != nil {
		return err
	}
	s.logDurable.Store(upto)
	s.stats.syncs.Add(1)
	if now := s.cfg.Now(); now.Sub(*lastCounter) >= s.cfg.CounterInterval && s.writeCounterAt(counter) == nil {
		*lastCounter = now
	}
	return nil
}

// commitBatch commits requests in one transaction. When it fails, each
// request is retried alone, so one caller's bad op fails only that caller.
func (s *Store) commitBatch(reqs []*request) {
	if h := s.cfg.hooks; h != nil && h.beforeCommit != nil {
		h.beforeCommit(len(reqs))
	}
	if p := s.logErr.Load(); p != nil && s.failed == nil {
		s.failed = *p // an fsync of the log failed
	}
	err := s.failed
	if err == nil {
		var wrote bool
		// Latency is measured, not scheduled: the system clock, not
		// Config.Now.
		start := time.Now()
		wrote, err = s.commitTx(reqs, false)
		if s.wal != nil && err == nil {
			// The log's syncer reports the batch once its record is
			// durable (and the requests before it were reported).
			s.afterLogged(reqs, wrote, start)
			return
		}
		s.latency.observe(time.Since(start))
		if err == nil && wrote {
			s.afterCommit()
		}
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
	s.reportBatch(reqs, err)
}

// reportBatch reports err to reqs: at once, or with the log in the order of
// the log's syncer, after the batches before them.
func (s *Store) reportBatch(reqs []*request, err error) {
	if s.logJobs != nil {
		s.logJobs <- logJob{reqs: slices.Clone(reqs), err: err}
		return
	}
	s.finishBatch(reqs, err)
}

func (s *Store) finishBatch(reqs []*request, err error) {
	if err != nil {
		s.stats.failed.Add(int64(len(reqs)))
	}
	s.stats.requests.Add(int64(len(reqs)))
	for _, r := range reqs {
		r.finish(err)
	}
}

// commitTx applies reqs in one transaction and reports whether it wrote
// one: with nothing to write it writes none, unless force is set.
func (s *Store) commitTx(reqs []*request, force bool) (wrote bool, err error) {
	defer recoverCorrupt(&err)
	m := s.coal.txnMaps()
	t := &txn{s: s, st: s.st, refs: m.refs, newMsgs: m.newMsgs, prefs: map[string]int{}, maxID0: s.st.MaxID,
		sessions: m.sessions, freshPuts: m.freshPuts, putDlv: m.putDlv}
	t.st.Counter++
	var nops, dropped int
	if s.wal != nil {
		nops, dropped, err = s.commitLogged(t, reqs, force)
	} else {
		err = s.db.Update(func(tx *bolt.Tx) error {
			t.tx = tx
			var err error
			nops, dropped, err = s.applyBatch(t, reqs, force)
			return err
		})
	}
	s.stats.coalesced.Add(int64(dropped))
	if err == errNothingLeft {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: commit: %w", err)
	}
	s.st = t.st
	for id, d := range t.refs {
		if n := s.refs[id] + d; n > 0 {
			s.refs[id] = n
		} else {
			delete(s.refs, id)
		}
	}
	for k, d := range t.prefs {
		if n := s.prefs[k] + d; n > 0 {
			s.prefs[k] = n
		} else {
			delete(s.prefs, k)
		}
	}
	s.stats.commits.Add(1)
	s.stats.ops.Add(int64(nops))
	return true, nil
}

// applyBatch applies reqs to t.tx; with nothing to write it returns
// errNothingLeft, having written nothing, unless force is set.
func (s *Store) applyBatch(t *txn, reqs []*request, force bool) (nops, dropped int, err error) {
	tx := t.tx
	err = func() error {
		for _, r := range reqs {
			if r.err != nil {
				return &opError{r.err}
			}
		}
		dropMsg := t.coalesce(reqs)
		empty := true
		for _, r := range reqs {
			for _, op := range r.ops {
				switch o := op.(type) {
				case *putDelivery:
					if o.skip {
						dropped++
						continue
					}
				case *deleteDelivery:
					if o.skip {
						dropped++
						continue
					}
				case *putMessage:
					if dropMsg[o.id] {
						dropped++
						continue
					}
				}
				empty = false
				if err := op.apply(t); err != nil {
					return &opError{err}
				}
				nops++
			}
		}
		if !empty {
			late, err := t.lateCoalesce()
			if err != nil {
				return err
			}
			dropped += late
		}
		if empty && !force {
			// Nothing to write (ops that cancelled out, or requests
			// without ops that only keep a caller's order): no
			// transaction, no fsync. Every earlier request is durable.
			return errNothingLeft
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
		// The counter covers every ID the transaction wrote, seal IDs
		// included: a record's version never exceeds the counter, and a
		// later counter never repeats a seal ID (see sealed).
		t.st.Counter = max(t.st.Counter, t.st.MaxID)
		st, err := s.keys.seal(bktMeta, keyState, t.st.Counter, encodeRecord(&t.st))
		if err != nil {
			return err
		}
		if err := tx.Bucket(bktMeta).Put(keyState, st); err != nil {
			return err
		}
		t.logPut(bktMeta, keyState, st)
		return nil
	}()
	return nops, dropped, err
}

// errNothingLeft rolls back a transaction that has nothing to write.
var errNothingLeft = errors.New("store: nothing left to write")

// coalesce marks the deliveries the batch puts and deletes again to be
// left out, and returns the messages only they referred to, also left
// out: a subscriber that acknowledged a message before the commit that
// stores it is owed nothing, so neither the delivery nor (unless another
// session is owed it) the message needs to reach the disk. The state
// after the transaction is the same as with every op applied. Only a
// delivery that was not stored before the batch, of a session that was,
// and that the batch neither puts again after its delete nor touches
// through a DeleteSession, is left out; a message only when it was not
// stored either. It works on prepared ops, whose keys are computed:
// deliveries are named by their keys (a keyed hash of the client ID and
// the sequence number). The marks are fields of the prepared ops
// (putDelivery.skip, deleteDelivery.skip), set anew for every batch, so
// a request retried alone after its batch failed starts unmarked.
func (t *txn) coalesce(reqs []*request) (dropMsg map[uint64]bool) {
	c := &t.s.coal
	c.reset()
	for _, r := range reqs {
		for _, op := range r.ops {
			switch o := op.(type) {
			case *putDelivery:
				o.skip, o.next = false, nil
				k := dkey(o.key)
				if _, deleted := c.dels[k]; deleted {
					c.spoiled[k] = true // put again after its delete
					continue
				}
				if ch, ok := c.puts[k]; ok {
					ch.last.next = o
					ch.last = o
					c.puts[k] = ch
				} else {
					c.puts[k] = putChain{o, o}
				}
			case *deleteDelivery:
				o.skip = false
				k := dkey(o.key)
				if _, put := c.puts[k]; !put {
					continue
				}
				if _, deleted := c.dels[k]; deleted {
					continue
				}
				c.dels[k] = o
			case *deleteSession:
				c.sessionGone[[idLen]byte(o.dlvPrefix)] = true
			}
		}
	}
	if len(c.dels) == 0 {
		return nil
	}
	for k, d := range c.dels {
		first := c.puts[k].first
		// A sequence number above every ID issued before this
		// transaction was not stored before it.
		storedBefore := false
		if first.seq <= t.maxID0 {
			v, _, _ := t.lookup(bktDelivery, first.key)
			storedBefore = v != nil
		}
		if c.spoiled[k] || c.sessionGone[[idLen]byte(k[:idLen])] || storedBefore || t.needSession(first.sessKey) != nil {
			continue
		}
		d.skip = true
		for p := first; p != nil; p = p.next {
			p.skip = true
			c.dropMsg[p.msgID] = true
		}
	}
	// A message stays when it was stored before or a delivery that is
	// written refers to it.
	for _, ch := range c.puts {
		for p := ch.first; p != nil; p = p.next {
			if !p.skip {
				delete(c.dropMsg, p.msgID)
			}
		}
	}
	for id := range c.dropMsg {
		if t.s.refs[id] > 0 {
			delete(c.dropMsg, id)
		}
	}
	return c.dropMsg
}

// dkey is a delivery's key.
type dkey = [idLen + 8]byte

// putChain lists the puts of one delivery in a batch, in order.
type putChain struct{ first, last *putDelivery }

// coalescer holds coalesce's maps, kept by the committer from batch to
// batch so that their memory is reused.
type coalescer struct {
	puts        map[dkey]putChain
	dels        map[dkey]*deleteDelivery // the first delete after a put
	spoiled     map[dkey]bool
	sessionGone map[[idLen]byte]bool // by delivery key prefix
	dropMsg     map[uint64]bool      // messages of dropped deliveries
	txn         txnMaps
}

// txnMaps are the maps of one transaction (see txn), kept by the
// committer from transaction to transaction so that their memory is
// reused: every one is emptied before it is handed out.
type txnMaps struct {
	refs      map[uint64]int
	newMsgs   map[uint64]bool
	sessions  map[string]bool
	freshPuts map[dkey]bool
	putDlv    map[dkey]uint64
}

// txnMaps returns the emptied maps for the next transaction.
func (c *coalescer) txnMaps() *txnMaps {
	m := &c.txn
	if m.refs == nil || len(m.refs) > maxCoalesceMap || len(m.newMsgs) > maxCoalesceMap || len(m.sessions) > maxCoalesceMap ||
		len(m.freshPuts) > maxCoalesceMap || len(m.putDlv) > maxCoalesceMap {
		*m = txnMaps{refs: make(map[uint64]int, 1024), newMsgs: make(map[uint64]bool, 1024), sessions: map[string]bool{},
			freshPuts: make(map[dkey]bool, 1024), putDlv: make(map[dkey]uint64, 1024)}
		return m
	}
	clear(m.refs)
	clear(m.newMsgs)
	clear(m.sessions)
	clear(m.freshPuts)
	clear(m.putDlv)
	return m
}

// maxCoalesceMap is the size past which a map is dropped rather than
// cleared: a burst does not keep its memory.
const maxCoalesceMap = 1 << 14

func (c *coalescer) reset() {
	if c.puts == nil || len(c.puts) > maxCoalesceMap || len(c.dels) > maxCoalesceMap || len(c.dropMsg) > maxCoalesceMap {
		*c = coalescer{puts: make(map[dkey]putChain, 1024), dels: make(map[dkey]*deleteDelivery, 1024),
			spoiled: map[dkey]bool{}, sessionGone: map[[idLen]byte]bool{}, dropMsg: make(map[uint64]bool, 1024)}
		return
	}
	clear(c.puts)
	clear(c.dels)
	clear(c.spoiled)
	clear(c.sessionGone)
	clear(c.dropMsg)
}

// lateCoalesce looks, once the batch is applied, at the requests that
// arrived while it was: a request that only deletes deliveries
// (subscribers' acknowledgements) and deletes one this transaction put is
// applied to it now, ahead of its turn, so that neither the delivery nor
// (unless another delivery refers to it) its message is written. The
// request itself is applied and reported in its turn, when the delete
// finds nothing left to do. Applied early, a delete changes nothing a
// later request can see, as long as no request between the put and the
// delete touches that delivery or removes its session, and no request
// before the delete adds a delivery of the same message (which needs the
// message stored): such deliveries are left alone. A crash between the
// two transactions leaves the store without a delivery that the
// subscriber had acknowledged when the transaction was written, which is
// what the acknowledgement asks for. It reports how many ops it left out
// of the disk (the delivery, its delete and, when it went too, the
// message).
func (t *txn) lateCoalesce() (int, error) {
	if len(t.putDlv) == 0 {
		return 0, nil
	}
	t.s.mu.Lock()
	pend := t.s.pending // read below without the lock: see submit
	t.s.mu.Unlock()
	c := &t.s.coal
	touched, gone, msgUsed := c.puts, c.sessionGone, c.dropMsg // reused: coalesce is done with them
	clear(touched)
	clear(gone)
	clear(msgUsed)
	n := 0
	for _, r := range pend {
		onlyDeletes := r.err == nil && len(r.ops) > 0
		for _, op := range r.ops {
			if _, ok := op.(*deleteDelivery); !ok {
				onlyDeletes = false
				break
			}
		}
		for _, op := range r.ops {
			switch o := op.(type) {
			case *deleteDelivery:
				k := dkey(o.key)
				msg, put := t.putDlv[k]
				_, seen := touched[k]
				if onlyDeletes && put && !seen && !gone[[idLen]byte(o.key)] && !msgUsed[msg] {
					if err := t.deleteDelivery(o.key); err != nil {
						return n, err
					}
					n += 2
					if t.refcount(msg) <= 0 {
						n++
					}
				}
				touched[k] = putChain{}
			case *putDelivery:
				touched[dkey(o.key)] = putChain{}
				msgUsed[o.msgID] = true
			case *deleteSession:
				gone[[idLen]byte(o.dlvPrefix)] = true
			}
		}
	}
	return n, nil
}

// opError marks an error of one caller's ops (bad input), as opposed to
// an error of the disk.
type opError struct{ err error }

func (e *opError) Error() string { return e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// afterCommit counts the fsync of a transaction committed without the
// log in SyncAlways and refreshes the counter file when it is due. (Every
// writable store has a log since every mode uses it; this is the path of
// a store without one.)
func (s *Store) afterCommit() {
	if s.cfg.Sync == SyncAlways {
		s.stats.syncs.Add(1)
		s.counterIfDue()
	}
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
