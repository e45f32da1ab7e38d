package broker

import (
	"sync"
	"time"
)

// Paced delivery of the other nodes' durable messages (docs/cluster.md,
// "A connected session that cannot keep up"). A message of another node
// has no publisher on this node to hold back: when a connected session's
// queue is full, routing would drop it (enqueueLocked). But a QoS 1 or 2
// message of another node is in the cluster's stream already, and the
// session can be given it later, in order, as its client acknowledges.
// A session whose client is away gets that once per absence: its
// catch-up waits for the client (the Cluster gives it up after its idle
// bound), and a claim of the session on another node replays from the
// catch-up's position. Its client reconnecting somewhere within that
// bound loses nothing (a node restarted under load routes the backlog of
// its stream into its sessions before their clients, connecting
// elsewhere meanwhile, have claimed them); one away for longer loses
// what did not fit in the queue, as on one node.
// DeliverRemoteBatchPaced lets a routing pass do that: the first message
// of the pass a connected session has no room for switches the session
// to a catch-up, under its lock, so that routing skips every later
// message of other nodes on its non-shared filters (the catch-up reads
// them from the stream, oldest first), and the Cluster is told which
// message it was. This node's own messages and QoS 0 messages keep
// reaching the session live: they are not in what the catch-up reads,
// and a session takes messages of different publishers in any order.

// PacedSession is a session a routing pass switched to a catch-up: it
// had no room for Msg, the first message of the pass it did not take,
// and routing skips the other nodes' QoS 1/2 messages on Filters (its
// non-shared filters then) until Replay.EndCatchUp.
type PacedSession struct {
	ClientID string
	Msg      *Message
	Filters  []string
	Replay   *LocalReplay
	// Away: the session's client was away (no connection, no claim
	// bringing one).
	Away bool
}

// pacedPass is one routing pass of DeliverRemoteBatchPaced. Its messages
// point to it (Message.pace) for good; once the pass is over (closed), a
// delivery of them made later (one a SUBSCRIBE held back, released on
// another goroutine) falls back to the queue's limits.
type pacedPass struct {
	mu      sync.Mutex
	closed  bool
	reserve func(clientID string, away bool) bool
	started []PacedSession
}

// DeliverRemoteBatchPaced is DeliverRemoteBatchDone for a Cluster that
// can deliver later, from its stream, what a connected session (or one
// resuming after a claim, its client on its way, or once per absence one
// whose client is away) has no room for now.
// reserve is asked, for a session whose queue is full, and under that
// session's lock, whether the Cluster takes its catch-up (away: the
// session's client is away; it must not call into the Server); when it
// does, the session is
// switched as described above and returned. The Cluster must end each
// catch-up returned (LocalReplay.EndCatchUp, then Deliver), or routing
// skips those messages for the session for good.
func (s *Server) DeliverRemoteBatchPaced(msgs []*Message, reserve func(clientID string, away bool) bool, done func(error)) (int, []PacedSession) {
	p := &pacedPass{reserve: reserve}
	for _, m := range msgs {
		if m.QoS > 0 {
			m.pace = p
		}
	}
	n := s.DeliverRemoteBatchDone(msgs, done)
	p.mu.Lock()
	p.closed = true
	started := p.started
	p.started = nil
	p.mu.Unlock()
	return n, started
}

// paceLocked switches sess (s.mu held), whose queue has no room for d, a
// delivery of a paced routing pass, to a catch-up, if it can: sess is
// connected, or its client is on its way (resuming: its claim imported
// it, and the client is attached a moment later), or away with no
// catch-up started since it left (awayPaced), d is a QoS 1/2
// delivery through a non-shared subscription,
// sess has no fence holding deliveries back or catching up already, and
// the Cluster reserves the catch-up. It reports whether it did: d is not
// queued then, nor dropped.
func (s *session) paceLocked(srv *Server, d *delivery) bool {
	p := d.msg.pace
	away := s.conn == nil && !s.resuming
	if p == nil || d.share != nil || d.qos == 0 || away && s.awayPaced || s.conn != nil && s.conn.closing.Load() {
		return false
	}
	if f := s.fence; f != nil && (f.holding || f.catchUp != nil) {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || !p.reserve(s.id, away) {
		return false
	}
	s.awayPaced = s.awayPaced || away
	filters := s.plainFiltersLocked(srv)
	now := time.Now().UnixNano()
	f := s.fenceLocked(now)
	f.catchUp, f.paced = filters, true
	p.started = append(p.started, PacedSession{ClientID: s.id, Msg: d.msg, Filters: filters, Away: away,
		Replay: &LocalReplay{s: srv, sess: s, f: f, now: now, paced: true}})
	return true
}
