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
// The counts are split in two by the parity of an epoch, which a waiter
// advances: it then waits for the count of the old parity to fall to
// zero, while new publications count in the other one. They are sharded
// as the record of recent messages is (a connection's recentShard), so
// that readers rarely share a cache line.
type routeWatch struct {
	mu sync.Mutex // one waiter at a time: a waiter drains one parity
	// left: a wait gave up before leftParity drained (guarded by mu).
	left       bool
	leftParity uint64
	epoch      atomic.Uint64
	waiters    atomic.Int32
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
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waiters.Add(1)
	defer w.waiters.Add(-1)
	if w.left {
		// An earlier wait gave up before its parity drained: what it
		// counts began before this wait too.
		if err := w.drain(ctx, w.leftParity); err != nil {
			return err
		}
		w.left = false
	}
	// The epoch's earlier value is the parity to drain: the other one
	// is drained (by the wait before), and begin counts nothing under
	// the old epoch once the new one is visible.
	old := w.epoch.Add(1) - 1
	if err := w.drain(ctx, old&1); err != nil {
		w.left, w.leftParity = true, old&1
		return err
	}
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
