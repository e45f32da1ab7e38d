package broker

import (
	"errors"
	"slices"
	"strconv"
	"sync/atomic"

	"github.com/moatmq/moat/internal/packet"
)

// Overload control (docs/design/broker.md, "Overload control"): when the
// messages a publisher sends back up at a connected subscriber, the
// publisher's reader stops reading until the backlog goes down, so that
// the publisher's own in-flight window fills instead of the broker's
// memory. A subscriber's backlog is two things: its session's queue of
// QoS 1 and 2 messages waiting for room in the in-flight window
// (session.gate, under session.mu), and its connection's QoS 0 messages
// waiting to be written (conn.q0gate, under conn.outMu).
//
// Routing puts the publisher in line at each subscriber found over its
// mark (or with publishers in line already), under the lock that guards
// that backlog, and notes it in the publisher's hold list; once the
// reader's next read from the socket returns input, the input waits until
// each of those gates let the publisher go (source.Read, conn.awaitHolds).
// Every delivery that leaves a backlog wakes the longest-waiting
// publisher, so the backlog stays near its mark and publishers sharing a
// subscriber take turns. A subscriber that keeps a publisher waiting
// longer than Config.PushbackWait while that publisher's other messages
// reach subscribers that keep up, or that takes nothing from its backlog
// in that time, is marked slow: it holds nobody back until its backlog is
// down to half the mark, and its messages go to its queue's limits and
// Config.QueueFullPolicy (QoS 0: the oldest are dropped past
// MaxOutboundBytes).

// QueuePolicy says what happens to a QoS 1 or 2 message for a connected
// client whose queue is full (Config.MaxQueued, Config.MaxQueuedBytes).
// Messages for offline sessions are dropped when the queue is full, except
// for a session whose client is being attached after a cluster claim
// (session.resuming), which holds publishers back as under QueueBlock.
type QueuePolicy byte

const (
	// QueueDrop drops the message for that client; the drop is counted
	// (Stats.DroppedQueueFull) and logged. Mosquitto's behaviour.
	QueueDrop QueuePolicy = iota
	// QueueBlock queues the message all the same and holds its publisher
	// back until the queue has room, for as long as the client stays
	// connected: nothing is lost, and a queue exceeds its limit by at most
	// what each publisher held had read (its 1 KiB read buffer, or one
	// larger packet). A client that stops acknowledging stops its
	// publishers. A message with no publisher to hold back (from another
	// cluster node, a will, the broker's own, a client's to itself) is
	// dropped as under QueueDrop.
	QueueBlock
)

// String returns the policy's configuration name.
func (p QueuePolicy) String() string {
	switch p {
	case QueueDrop:
		return "drop"
	case QueueBlock:
		return "block"
	}
	return "QueuePolicy(" + strconv.Itoa(int(p)) + ")"
}

// flowGate is where publishers wait for one subscriber's backlog to go
// down. Its owner's lock (session.mu or conn.outMu) guards every field.
type flowGate struct {
	// waiters are the publishers held back, woken oldest first.
	waiters []*waiter
	// progress counts the deliveries that left the backlog.
	progress uint64
	// slow is set when the subscriber held publishers back too long (see
	// checkLocked); cleared when its backlog is down to half the mark,
	// or when it goes offline or reconnects.
	slow bool
	// cycle is set when publishers held for room in the full queue under
	// QueueBlock were let go because the subscriber itself waits for one
	// of them (session.checkGate): the queue drops as under QueueDrop
	// until it has room again. Session gates only.
	cycle bool
	// timer runs checkLocked every PushbackWait while publishers wait:
	// one timer per gate, not per wait, which would cost a timer for
	// every message a held publisher sends. epoch counts its periods (a
	// waiter that joined in an earlier one has waited at least a
	// period); atTick is progress when the period began.
	timer  Timer
	epoch  uint64
	atTick uint64
}

// waiter is one place of a publisher in a gate's line. ch (capacity 1)
// is empty whenever the waiter is in the line: a token is sent only when
// it is taken off the line, under the owner's lock, and the publisher
// receives it before the waiter is used again.
type waiter struct {
	ch     chan struct{}
	queued bool   // in a gate's line; guarded by that gate's owner lock
	epoch  uint64 // the gate's epoch when it joined; guarded likewise
	// feeds: its publisher also gave messages to subscribers under their
	// marks since it last waited. Set by the reader before it waits,
	// read by the gate's timer.
	feeds atomic.Bool
}

// join puts w in line. It reports whether no timer runs: the caller
// then starts one and sets g.timer. (Not a function to call instead: a
// closure made per join would be allocated for every message a held
// publisher sends, where a timer starts once per period.)
func (g *flowGate) join(w *waiter) (arm bool) {
	w.queued = true
	w.epoch = g.epoch
	g.waiters = append(g.waiters, w)
	if g.timer != nil {
		return false
	}
	g.epoch++ // w will have waited a whole period at the first check
	g.atTick = g.progress
	return true
}

// wake wakes up to n waiters, oldest first.
func (g *flowGate) wake(n int) {
	for ; n > 0 && len(g.waiters) > 0; n-- {
		w := g.waiters[0]
		g.waiters[0] = nil
		g.waiters = g.waiters[1:]
		w.queued = false
		select {
		case w.ch <- struct{}{}:
		default: // cannot happen (see waiter); never block under a lock
		}
	}
}

func (g *flowGate) wakeAll() { g.wake(len(g.waiters)) }

// release lets everyone go and forgets that the subscriber was slow: it
// went offline, reconnected, or its connection is closing.
func (g *flowGate) release() {
	g.wakeAll()
	g.slow, g.cycle = false, false
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
}

// remove takes w off the line; false when it was woken meanwhile (its
// token is then in w.ch).
func (g *flowGate) remove(w *waiter) bool {
	if !w.queued {
		return false
	}
	if i := slices.Index(g.waiters, w); i >= 0 {
		g.waiters = slices.Delete(g.waiters, i, i+1)
	}
	w.queued = false
	return true
}

// checkLocked runs from the gate's timer every PushbackWait while
// publishers wait. The subscriber is too slow to hold them back any
// longer when it took nothing from its backlog for the whole period
// (stuck), or when a publisher that also feeds subscribers that keep up
// has waited a whole period; unless they wait for room in a full queue
// (forRoom), which only room ends. A subscriber whose client is on its
// way (away: a session a cluster claim resumes) is not counted stuck:
// nothing can be taken from it yet. It reports whether the subscriber
// was marked slow (everyone in line is let go) and whether it was stuck;
// otherwise, while publishers still wait, it starts the next period. The
// caller holds the owner's lock.
func (g *flowGate) checkLocked(forRoom, away bool, arm func() Timer) (slow, stuck bool) {
	g.timer = nil
	if len(g.waiters) == 0 {
		return false, false
	}
	stuck = g.progress == g.atTick && !away
	overdue := stuck
	for _, w := range g.waiters {
		overdue = overdue || w.epoch < g.epoch && w.feeds.Load()
	}
	if overdue && !forRoom {
		g.slow = true
		g.wakeAll()
		return true, stuck
	}
	g.epoch++
	g.atTick = g.progress
	g.timer = arm()
	return false, false
}

// publisher is what routing notes about the client whose PUBLISH it
// routes, for holding that client back. Reader-owned (conn.pub).
type publisher struct {
	self  *session // the publisher's own session: never waited for
	holds []hold   // the gates it is in line at
	// free holds up to two distinct subscribers that took a message
	// without being over their mark since the publisher last waited: a
	// publisher that feeds others is not kept waiting long by one.
	free [2]*session
	// waiters are reused: holds[i] uses waiters[i].
	waiters []*waiter
	// lines indexes holds once there are many (a fan-out).
	lines map[lineKey]struct{}
	// hold0, waiter0 and waiterRef0 hold the first hold and its waiter:
	// a publisher feeding one subscriber (a fan-in) is never in more than
	// one line, and keeps no slice or waiter of its own beside them, only
	// the waiter's channel. More holds move holds and waiters to arrays
	// of their own (append).
	hold0      [1]hold
	waiterRef0 [1]*waiter
	waiter0    waiter
}

// lineKey names a gate: a session's queue, or (c set) the QoS 0 backlog
// of a connection.
type lineKey struct {
	sess *session
	c    *conn
}

// holding reports whether the publisher is in line at the gate already.
func (p *publisher) holding(s *session, c *conn) bool {
	if p.lines != nil {
		_, ok := p.lines[lineKey{s, c}]
		return ok
	}
	for _, h := range p.holds {
		if h.sess == s && h.c == c {
			return true
		}
	}
	return false
}

// addHold notes a gate the publisher is in line at.
func (p *publisher) addHold(h hold) {
	if p.holds == nil {
		p.holds = p.hold0[:0]
	}
	p.holds = append(p.holds, h)
	switch {
	case p.lines != nil:
		p.lines[lineKey{h.sess, h.c}] = struct{}{}
	case len(p.holds) > 16:
		p.lines = make(map[lineKey]struct{}, 2*len(p.holds))
		for _, h := range p.holds {
			p.lines[lineKey{h.sess, h.c}] = struct{}{}
		}
	}
}

// clearHolds forgets the holds once waited for or left.
func (p *publisher) clearHolds() {
	clear(p.holds)
	p.holds = p.holds[:0]
	p.lines = nil
}

// hold is one gate a publisher is in line at: its session's queue, or (c
// set) the QoS 0 backlog of its connection c.
type hold struct {
	sess *session
	c    *conn
	w    *waiter
}

// nextWaiter returns the waiter for the next hold.
func (p *publisher) nextWaiter() *waiter {
	i := len(p.holds)
	switch {
	case i == 0 && p.waiters == nil:
		p.waiter0.ch = make(chan struct{}, 1)
		p.waiterRef0[0] = &p.waiter0
		p.waiters = p.waiterRef0[:]
	case i == len(p.waiters):
		p.waiters = append(p.waiters, &waiter{ch: make(chan struct{}, 1)})
	}
	return p.waiters[i]
}

func (p *publisher) noteFree(s *session) {
	switch {
	case p.free[0] == nil:
		p.free[0] = s
	case p.free[0] != s && p.free[1] == nil:
		p.free[1] = s
	}
}

// feedsOthers reports whether a subscriber other than s took a message
// from the publisher without being over its mark since it last waited.
func (p *publisher) feedsOthers(s *session) bool {
	return p.free[0] != nil && p.free[0] != s || p.free[1] != nil && p.free[1] != s
}

// notePublisherLocked puts the publisher of a message just given to s in
// line at s's gate when s holds it back. The caller holds s.mu.
func (s *session) notePublisherLocked(srv *Server, pub *publisher) {
	if pub == nil || pub.self == s {
		// A client is never held back by its own session: its reader
		// is what reads the acknowledgements that would drain it.
		return
	}
	if pub.holding(s, nil) {
		return // in line already, for a message read with this one
	}
	if s.holdsBackLocked(srv) || len(s.gate.waiters) > 0 {
		// Over the mark, or publishers wait already: this one waits
		// behind them, so that they take turns.
		w := pub.nextWaiter()
		if s.gate.join(w) {
			s.gate.timer = s.armGate(srv)
		}
		pub.addHold(hold{sess: s, w: w})
	} else {
		pub.noteFree(s)
	}
}

// notePublisherQoS0 is notePublisherLocked for a QoS 0 message given to
// c, whose backlog sendQoS0 found over its mark (congested) or not. The
// caller holds s.mu.
func (s *session) notePublisherQoS0(c *conn, pub *publisher, congested bool) {
	if pub == nil || pub.self == s || pub.holding(s, c) {
		return
	}
	if !congested {
		pub.noteFree(s)
		return
	}
	// Checked again under outMu: the writer may have taken the backlog
	// since sendQoS0 released it.
	c.outMu.Lock()
	if c.q0CongestedLocked() {
		w := pub.nextWaiter()
		if c.q0gate.join(w) {
			c.q0gate.timer = c.armQ0Check()
		}
		pub.addHold(hold{sess: s, c: c, w: w})
	}
	c.outMu.Unlock()
}

// checkGate is the timer of s's gate (flowGate.checkLocked). Publishers
// waiting for room in the full queue under QueueBlock wait on, however
// long, unless the subscriber took nothing from its queue for the whole
// period and its own client is held back, directly or through others, at
// the queue of one of them: then nobody can make room (each waits for the
// other's reader to read the acknowledgements that would), and the
// publishers are let go; the queue drops as under QueueDrop until it has
// room again.
func (s *session) checkGate(srv *Server) {
	s.mu.Lock()
	g := &s.gate
	forRoom := srv.limits().QueueFullPolicy == QueueBlock && s.fullLocked(srv)
	if forRoom && len(g.waiters) > 0 && g.progress == g.atTick && s.waitCycleLocked() {
		g.timer = nil
		g.cycle, g.slow = true, true
		g.wakeAll()
		s.mu.Unlock()
		srv.holdCycle(s.id)
		return
	}
	// A session awaiting its client after a cluster claim takes nothing
	// until the client is there (the claim is bounded by the connect
	// timeout): that does not make it slow. A publisher that also feeds
	// others is let go after PushbackWait all the same.
	slow, stuck := s.gate.checkLocked(forRoom, s.awaitingLocked(), func() Timer { return s.armGate(srv) })
	s.mu.Unlock()
	if slow {
		srv.slowSubscriber(s.id, false, stuck)
	}
}

// armGate starts the timer of s's gate (checkGate).
func (s *session) armGate(srv *Server) Timer {
	return srv.afterFunc(srv.limits().PushbackWait, func() { s.checkGate(srv) })
}

// maxWaitChain bounds the sessions waitCycleLocked follows: a chain of
// held publishers longer than this is not taken for a cycle.
const maxWaitChain = 1024

// waitCycleLocked reports whether the client of s waits, directly or
// through a chain of held publishers, at the queue of a session whose
// client waits at s: following waitingOn from s comes back to s. Only
// atomics of other sessions are read, so no lock is taken. The caller
// holds s.mu.
func (s *session) waitCycleLocked() bool {
	x := s.waitingOn.Load()
	for range maxWaitChain {
		if x == nil {
			return false
		}
		if x == s {
			return true
		}
		x = x.waitingOn.Load()
	}
	return false
}

// holdCycle counts and logs a cycle of held publishers broken at the full
// queue of client: the first and then every 1000th.
func (srv *Server) holdCycle(client string) {
	n := srv.stats.holdCycles.Add(1)
	if n != 1 && n%1000 != 0 {
		return
	}
	srv.log.Warn("broker: publishers held for a full queue under queue_full_policy block wait for each other; "+
		"they are let go and the queue drops until it has room", "client", client, "wait", srv.limits().PushbackWait,
		"cycles_total", n)
}

func (c *conn) armQ0Check() Timer {
	return c.srv.afterFunc(c.srv.limits().PushbackWait, c.checkQ0Gate)
}

// checkQ0Gate is the timer of c's QoS 0 gate (flowGate.checkLocked).
func (c *conn) checkQ0Gate() {
	c.outMu.Lock()
	slow, stuck := c.q0gate.checkLocked(false, false, c.armQ0Check)
	c.outMu.Unlock()
	if slow {
		c.srv.slowSubscriber(c.client.ClientID, true, stuck)
	}
}

// size is what a delivery counts for in the byte limits of queues and
// backlogs: its topic and payload.
func (d *delivery) size() int64 { return int64(len(d.msg.Topic) + len(d.msg.Payload)) }

// PacedSpare is the share of a queue (1/PacedSpare of its limits) that
// the other nodes' messages a cluster can deliver later leave free for
// this node's own publishers (enqueueLocked); the cluster's catch-ups
// leave the same share.
const PacedSpare = 4

// spareTakenLocked reports whether s's queue reaches into the share that
// PacedSpare leaves free. The caller holds s.mu.
func (s *session) spareTakenLocked(srv *Server) bool {
	lim := srv.limits()
	return s.queue.len() >= lim.MaxQueued-lim.MaxQueued/PacedSpare ||
		lim.MaxQueuedBytes > 0 && s.queueBytes >= lim.MaxQueuedBytes-lim.MaxQueuedBytes/PacedSpare
}

// fullLocked reports whether s's queue is at its limits. The caller
// holds s.mu.
func (s *session) fullLocked(srv *Server) bool {
	lim := srv.limits()
	return s.queue.len() >= lim.MaxQueued || lim.MaxQueuedBytes > 0 && s.queueBytes >= lim.MaxQueuedBytes
}

// overMark reports whether a backlog of n messages and b bytes is at the
// pushback mark, whose byte mark is markBytes (l.markBytes for a queue,
// l.markQ0Bytes for a QoS 0 backlog).
func (l *liveLimits) overMark(n int, b, markBytes int64) bool {
	return l.markMsgs > 0 && (int64(n) >= l.markMsgs || markBytes > 0 && b >= markBytes)
}

// underLow reports whether a backlog is down to half the mark, where a
// slow subscriber holds publishers back again.
func (l *liveLimits) underLow(n int, b, markBytes int64) bool {
	return int64(n) <= l.markMsgs/2 && (markBytes <= 0 || b <= markBytes/2)
}

// holdsBackLocked reports whether a publisher of a message just given to
// s must wait before it reads on: s is connected and its queue is over
// the mark (unless s is slow), or full under QueueBlock. The caller holds
// s.mu.
func (s *session) holdsBackLocked(srv *Server) bool {
	c := s.conn
	if c == nil && !s.resuming && !s.awayCatchingLocked() || c != nil && c.closing.Load() {
		return false
	}
	l := srv.limits()
	if s.blocksLocked(srv) && !s.gate.cycle && s.fullLocked(srv) {
		return true
	}
	return !s.gate.slow && l.overMark(s.queue.len(), s.queueBytes, l.markBytes)
}

// blocksLocked reports whether s's full queue holds a publisher back
// rather than dropping its message: under QueueBlock, and, whatever the
// policy, while s resumes after a cluster claim (session.resuming):
// waiting for its client, and then, its client attached, until the queue
// the claim filled is under its limit; unless it was found slow (it kept
// a publisher that feeds others waiting, or, attached, took nothing for
// PushbackWait). So does it while its client is away and the catch-up
// of this absence runs (awayCatchingLocked), until it is found slow
// (it took nothing for PushbackWait). The caller holds s.mu.
func (s *session) blocksLocked(srv *Server) bool {
	return srv.limits().QueueFullPolicy == QueueBlock || (s.resuming || s.awayCatchingLocked()) && !s.gate.slow
}

// awayCatchingLocked reports whether s has no connection, no claim
// bringing its client, and the paced catch-up of this absence under way
// (cluster_paced.go). Its client may be on its way to another node, whose
// claim takes the session with its queue: this node's own publishers'
// messages, which are not in the cluster's stream when no other node
// wants them, are held back at the full queue for up to PushbackWait,
// as for a connected client, rather than dropped at once as for an
// offline one (in an outside kill of a whole cluster, a publisher on the
// subscriber's restarted old home lost 1,692 acknowledged messages there
// in the 0.4 s before the subscriber's claim on another node took the
// session). The caller holds s.mu.
func (s *session) awayCatchingLocked() bool {
	f := s.fence
	return s.conn == nil && !s.resuming && s.awayPaced && f != nil && f.catchUp != nil && f.paced
}

// awaitingLocked reports whether s has no connection and its client is
// on its way (a cluster claim of its client ID is under way on this
// node). The caller holds s.mu.
func (s *session) awaitingLocked() bool { return s.resuming && s.conn == nil }

// behindLocked reports whether one more message of qos and size bytes
// (topic and payload) for s, which is connected, would reach the
// pushback mark of the backlog it joins, or finds publishers waiting
// there already, or (QoS 1 and 2) finds the queue full; a shared
// subscription passes such a member over while another keeps up
// (memberRank). A message that goes straight into flight joins no
// backlog. The caller holds s.mu.
func (s *session) behindLocked(srv *Server, qos byte, size int64) bool {
	l := srv.limits()
	if qos > 0 {
		if s.queue.len() == 0 && len(s.inflight) < s.inflightLimit {
			return false
		}
		return len(s.gate.waiters) > 0 || s.fullLocked(srv) || l.overMark(s.queue.len()+1, s.queueBytes+size, l.markBytes)
	}
	c := s.conn
	c.outMu.Lock()
	defer c.outMu.Unlock()
	return len(c.q0gate.waiters) > 0 || l.overMark(c.outQ0+1, int64(c.outBytes)+size, l.markQ0Bytes)
}

// drainedLocked runs when n deliveries left s's queue, or when an
// acknowledgement found it empty while publishers wait: while the queue
// is under its mark it wakes one held publisher per delivery, and every
// one once it is down to half the mark. The caller holds s.mu.
func (s *session) drainedLocked(srv *Server, n int) {
	g := &s.gate
	g.progress += uint64(n)
	l := srv.limits()
	low := l.underLow(s.queue.len(), s.queueBytes, l.markBytes)
	if low {
		g.slow = false
	}
	if g.cycle && !s.fullLocked(srv) {
		g.cycle = false
	}
	if s.resuming && s.conn != nil && !s.fullLocked(srv) {
		s.resuming = false // the queue the claim filled has room again
	}
	if len(g.waiters) == 0 || s.holdsBackLocked(srv) {
		return
	}
	if low {
		g.wakeAll()
	} else {
		g.wake(n)
	}
}

// releaseGateLocked wakes every publisher waiting for s, which went
// offline or connected anew; the caller holds s.mu.
func (s *session) releaseGateLocked() { s.gate.release() }

// q0CongestedLocked reports whether c's QoS 0 backlog holds publishers
// back: it is over its mark, or publishers wait already. The caller holds
// c.outMu.
func (c *conn) q0CongestedLocked() bool {
	return !c.final && !c.q0gate.slow && (c.q0OverMarkLocked() || len(c.q0gate.waiters) > 0)
}

// q0OverMarkLocked reports whether c's QoS 0 backlog is at its mark. The
// caller holds c.outMu.
func (c *conn) q0OverMarkLocked() bool {
	l := c.srv.limits()
	return l.overMark(c.outQ0, int64(c.outBytes), l.markQ0Bytes)
}

// q0DrainedLocked runs when the writer takes the queued packets: the QoS
// 0 backlog is being written, and every publisher waiting for it may go
// on. The caller holds c.outMu.
func (c *conn) q0DrainedLocked() {
	g := &c.q0gate
	if c.outQ0 == 0 && len(g.waiters) == 0 && !g.slow {
		return
	}
	g.progress += uint64(c.outQ0)
	if l := c.srv.limits(); l.underLow(c.outQ0, int64(c.outBytes), l.markQ0Bytes) {
		g.slow = false
	}
	c.outQ0 = 0
	g.wakeAll()
}

// dropOldestQoS0Locked makes room for a QoS 0 message of size bytes in
// c's backlog by dropping the oldest QoS 0 messages waiting: a quarter of
// MaxOutboundBytes more than needed, so that a slow consumer's queue is
// not compacted at every message. Control packets and QoS 1/2 messages
// stay. It reports false when the message cannot fit at all. The caller
// holds c.outMu.
func (c *conn) dropOldestQoS0Locked(size int) bool {
	limit := c.srv.cfg.MaxOutboundBytes
	if size > limit {
		return false
	}
	target := limit - limit/4 - size
	kept := c.out[:0]
	dropped := 0
	for _, p := range c.out {
		if n := qos0Size(p); n >= 0 && c.outBytes > target {
			c.outBytes -= n
			c.outQ0--
			dropped++
			continue
		}
		kept = append(kept, p)
	}
	clear(c.out[len(kept):])
	c.out = kept
	c.srv.droppedSlow(c, dropped)
	return c.outBytes+size <= limit
}

// qos0Size returns the size (topic and payload) of a queued QoS 0
// PUBLISH, as sendQoS0 counted it, or -1 for any other packet. A QoS 0
// message is queued as a shared *pubEnc or as a *delivery; an outPublish
// is counted too, should one carry a QoS 0 delivery.
func qos0Size(p packet.Packet) int {
	var d *delivery
	switch p := p.(type) {
	case *pubEnc:
		if p.qos != 0 {
			return -1
		}
		return len(p.msg.Topic) + len(p.msg.Payload)
	case *delivery:
		d = p
	case outPublish:
		d = p.d
	default:
		return -1
	}
	if d.qos != 0 {
		return -1
	}
	return int(d.size())
}

// droppedSlow counts and logs QoS 0 messages dropped for a client whose
// backlog is full: the first and then every 1000th, so that a flood does
// not flood the log.
func (srv *Server) droppedSlow(c *conn, n int) {
	if n <= 0 {
		return
	}
	total := srv.stats.droppedSlow.Add(int64(n))
	c.limitDrops.Add(int64(n)) // its reader reports it (LimitQueueFull)
	if total == int64(n) || total/1000 != (total-int64(n))/1000 {
		c.log.Warn("broker: client reads too slowly; oldest QoS 0 messages dropped", "dropped", n,
			"max_outbound_bytes", srv.cfg.MaxOutboundBytes, "dropped_total", total)
	}
}

// awaitHolds runs on the reader when a read from the socket returned
// input (source.Read), before that input is handled: it waits until each
// gate that routing put the client in line at lets it go. Packets already
// in the read buffer are handled first, so a client waits at most once
// per read rather than once per message, and the acknowledgements of
// those packets go out in one write before, as they do when nobody is
// held back; and a client waits only when it sent more before its turn
// came, not while the broker waits for its input anyway (waiting per
// message cost a goroutine switch and a write each, and tripled the CPU
// per message of a closed-loop fan-in). The time spent waiting is not the
// client's: the keep-alive deadline starts again before the next read
// that may wait (conn.rearm). It reports
// whether it had to wait, and ok false when the connection or the server
// is closing.
func (c *conn) awaitHolds() (waited, ok bool) {
	// Writers this reader held back are started before it waits: the
	// subscribers it waits for may be among them (conn.kickWriters).
	c.kickWriters()
	p := &c.pub
	ok = true
	for i, h := range p.holds {
		p.holds[i] = hold{}
		if ok {
			var w bool
			w, ok = c.awaitHold(h)
			waited = waited || w
		} else {
			h.leave()
		}
	}
	p.clearHolds()
	p.free = [2]*session{}
	if ok && waited {
		// Set again only before the next read that may wait
		// (source.Read): most waits end with the input that follows
		// already buffered, and moving the deadline is a timer update.
		c.rearm = true
	}
	return waited, ok
}

// awaitHold waits until h's gate lets the publisher go: a delivery left
// the backlog, or the subscriber was found slow. It reports whether it
// had to wait, and false when the connection or the server is closing.
func (c *conn) awaitHold(h hold) (waited, ok bool) {
	if h.w.taken() {
		return false, true // let go already
	}
	srv := c.srv
	h.w.feeds.Store(c.pub.feedsOthers(h.sess))
	srv.stats.pushbacks.Add(1)
	srv.stats.held.Add(1)
	defer srv.stats.held.Add(-1)
	if h.c == nil {
		// For the gates' cycle check (session.checkGate); a QoS 0
		// backlog's gate never waits for room, and lets go by itself.
		c.sess.waitingOn.Store(h.sess)
		defer c.sess.waitingOn.Store(nil)
	}
	// Not the server's context as well: Shutdown kills every connection
	// (closing c.killed), and a select on a channel that every held
	// reader shares locks it for each wait.
	if h.w.block(c.killed) {
		return true, true
	}
	h.leave()
	return true, false
}

// taken reports whether w was let go, and takes its token if so.
func (w *waiter) taken() bool {
	select {
	case <-w.ch:
		return true
	default:
		return false
	}
}

// block waits until w is let go, and reports false if killed closes
// first: the caller must then leave the line (hold.leave), which takes
// the token should one have come meanwhile.
func (w *waiter) block(killed <-chan struct{}) bool {
	select {
	case <-w.ch:
		return true
	case <-killed:
		return false
	}
}

// errHeldClosed ends a read that waited for a held client's turn when the
// connection or the server closed meanwhile.
var errHeldClosed = errors.New("broker: connection closed while held back")

// leaveHolds takes the publisher out of the lines it is still in: its
// reader stopped before it waited (finish).
func (c *conn) leaveHolds() {
	p := &c.pub
	for _, h := range p.holds {
		h.leave()
	}
	p.clearHolds()
}

// lockGate locks the owner's lock of h's gate and returns the gate.
func (h hold) lockGate() *flowGate {
	if h.c != nil {
		h.c.outMu.Lock()
		return &h.c.q0gate
	}
	h.sess.mu.Lock()
	return &h.sess.gate
}

func (h hold) unlock() {
	if h.c != nil {
		h.c.outMu.Unlock()
	} else {
		h.sess.mu.Unlock()
	}
}

// leave takes h's waiter out of line, or takes the token it was let go
// with.
func (h hold) leave() {
	g := h.lockGate()
	woken := !g.remove(h.w)
	h.unlock()
	if woken {
		<-h.w.ch
	}
}

// slowSubscriber counts and logs a subscriber found slow: the first and
// then every 1000th.
func (srv *Server) slowSubscriber(client string, qos0, stuck bool) {
	n := srv.stats.slowSubscribers.Add(1)
	if n != 1 && n%1000 != 0 {
		return
	}
	why := "its publishers also feed subscribers that keep up"
	if stuck {
		why = "it took nothing from its backlog"
	}
	l := srv.limits()
	then := "QoS 1/2 messages queue up to max_queued_messages, then the queue_full_policy applies (" + l.QueueFullPolicy.String() + ")"
	if qos0 {
		then = "QoS 0 messages wait up to max_outbound_bytes, then the oldest are dropped"
	}
	srv.log.Warn("broker: subscriber too slow; its publishers are no longer held back for it", "client", client,
		"wait", l.PushbackWait, "why", why, "then", then, "slow_total", n)
}
