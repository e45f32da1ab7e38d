package broker

import (
	"context"
	"sync"
	"sync/atomic"
)

// routeWatch counts the durable publications (QoS 1/2 under a Cluster
// that keeps them, Server.clusterDurable) whose routing a connection's
// reader has begun, matching them to this node's sessions, and that it
// has not yet handed to the Persistence, which forwards them to the
// other nodes. A reader holds one such publication at a time, but it may
// hold it for long: the wait for a commit slot (persistLimiter) lasts as
// long as the store's commits before it, seconds while a cluster's
// stream elects a leader.
//
// A Cluster that imports a session needs to know when every publication
// matched before the import, and so not delivered to the session, has
// been forwarded (WaitRouted): from then on, what this node forwarded
// before the session was here and what it forwarded after are told apart
// by whether the session holds the message back (LocalReplay.Held), not
// by a forwarding position taken at the import, which a reader waiting
// for its slot passes only later (docs/cluster.md, "Sessions").
//
// The counts are split in two by the parity of an epoch, which only a
// waiter advances: the count of the parity the epoch just left takes no
// new publication, and falls to zero once those counted there end,
// while new publications count in the other one. Waiters share the
// rounds: those that come while one drains are served by the next,
// together, so that a storm of claims under load waits for a few
// rounds, not one each. The counts are sharded as the record of recent
// messages is (a connection's recentShard), so that readers rarely
// share a cache line.
type routeWatch struct {
	mu sync.Mutex
	// drained: every publication counted under an epoch below it has
	// ended. draining: a waiter runs a round; round is closed when it
	// ends. All three guarded by mu. A flip of the epoch from e to e+1
	// happens only once drained is e at least.
	drained  uint64
	draining bool
	round    chan struct{}
	epoch    atomic.Uint64
	waiters  atomic.Int32
	// kick has a token when a count fell to zero while a waiter waited.
	kickOnce sync.Once
	kick     chan struct{}
	shards   [recentShards]routeCount
}

type routeCount struct {
	n [2]atomic.Int64
	_ [48]byte // a cache line of its own
}

func (w *routeWatch) kicks() chan struct{} {
	w.kickOnce.Do(func() { w.kick = make(chan struct{}, 1) })
	return w.kick
}

// begin counts a publication whose routing begins on the reader of
// shard. It returns the epoch to pass to end. The count is taken under
// the epoch it is read with: a waiter that advanced the epoch meanwhile
// would not wait for it, although the routing begins before the wait
// ends, so it is taken again.
func (w *routeWatch) begin(shard uint8) uint64 {
	c := &w.shards[shard%recentShards]
	for {
		e := w.epoch.Load()
		c.n[e&1].Add(1)
		if w.epoch.Load() == e {
			return e
		}
		c.n[e&1].Add(-1)
	}
}

// end reports that the publication begin counted under epoch e was
// handed to the Persistence, or will never be (its connection ended).
func (w *routeWatch) end(shard uint8, e uint64) {
	if w.shards[shard%recentShards].n[e&1].Add(-1) == 0 && w.waiters.Load() > 0 {
		select {
		case w.kicks() <- struct{}{}:
		default:
		}
	}
}

// wait returns once every publication counted before it was called has
// ended, or with ctx's error.
func (w *routeWatch) wait(ctx context.Context) error {
	w.waiters.Add(1)
	defer w.waiters.Add(-1)
	w.mu.Lock()
	defer w.mu.Unlock()
	// What began before now counts under this epoch or an earlier one.
	target := w.epoch.Load() + 1
	for w.drained < target {
		if w.draining {
			r := w.round
			w.mu.Unlock()
			select {
			case <-r:
			case <-ctx.Done():
				w.mu.Lock()
				return ctx.Err()
			}
			w.mu.Lock()
			continue
		}
		w.draining, w.round = true, make(chan struct{})
		w.mu.Unlock()
		err := w.runRound(ctx)
		w.mu.Lock()
		w.draining = false
		close(w.round)
		if err != nil {
			return err
		}
	}
	return nil
}

// runRound drains the epoch in force, and the one before it if no
// round drained it (a round that gave up): it advances the epoch, so
// that new publications count in the other parity, and waits for the
// count of the old one to fall to zero. Only the waiter that set
// draining runs it; it takes mu to record its progress.
func (w *routeWatch) runRound(ctx context.Context) error {
	w.mu.Lock()
	e, drained := w.epoch.Load(), w.drained
	w.mu.Unlock()
	if drained < e {
		// drained is e-1: the round that flipped to e found e-1
		// drained at least to e-1. The parity of e-1 takes nothing new.
		if err := w.drain(ctx, (e-1)&1); err != nil {
			return err
		}
		w.mu.Lock()
		w.drained = e
		w.mu.Unlock()
	}
	w.epoch.Store(e + 1)
	if err := w.drain(ctx, e&1); err != nil {
		return err
	}
	w.mu.Lock()
	w.drained = e + 1
	w.mu.Unlock()
	return nil
}

// drain waits until the count of parity p is zero on every shard.
func (w *routeWatch) drain(ctx context.Context, p uint64) error {
	for {
		left := int64(0)
		for i := range w.shards {
			left += w.shards[i].n[p].Load()
		}
		if left == 0 {
			return nil
		}
		select {
		case <-w.kicks():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitRouted returns once every QoS 1/2 publication that a connection's
// reader had begun to match to this node's sessions when it was called
// has been handed to the Persistence (under a Cluster that keeps durable
// messages, forwarded to the other nodes), or dropped with its
// connection; or with ctx's error. A Cluster that imported a session
// calls it to learn which of its own clients' messages forwarded after
// the import were matched before it (docs/cluster.md, "Sessions"). Safe
// for concurrent use; waiters take turns.
func (s *Server) WaitRouted(ctx context.Context) error {
	return s.routes.wait(ctx)
}
