package cluster

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/broker"
)

// A moved session's catch-up (docs/cluster.md, "The replay follows the
// client"). A claim replays into the session the durable messages that
// reached the stream while it had no home, up to the room its queue has
// (take, replaySet). When there are more, the replay does not stop
// there: the session is imported with broker.ClusterSession.CatchUp,
// and a goroutine of this node (catchUp.run) goes on reading the stream
// from where the replay stopped, as the client acknowledges and the
// queue drains, oldest first, until it reaches this node's routing
// position. Meanwhile routing drops the other nodes' QoS 1/2 messages
// for the session (they are in the stream, and the catch-up brings
// them in order) and QoS 0 messages (at most once: holding them back
// would take memory without bound), and holds back this node's own
// QoS 1/2 messages, whose publishers' acknowledgements wait for them.
// Once the reading is at the routing position, under routeMu (as take's
// last reading), routing delivers to the session again, and what it
// held back is released after the catch-up's messages.
//
// Memory: the messages read and not yet delivered are at most the room
// of the queue when they were read plus one record's; the reading holds
// no more than maxReplayBytes of records.

// The position of a catch-up is kept in the session's record c (the
// stream sequence up to which the session has every message of other
// nodes, in decimal): routing skips the later ones for it, and this
// node's consumer acknowledges them, so that if this node dies while
// the session catches up, its acknowledgement floor is past what the
// session got. The claim or adoption that follows replays from the
// lower of the two (caughtUpTo). The record is written before the
// import, moved on at most every catchUpMark as the messages are
// committed to the session, and removed when the catch-up ends.
const catchUpMark = time.Second

// catchUpIdle is how long a catch-up waits, by default
// (Config.CatchUpIdle), while the session's queue
// takes nothing (its client gone, or not acknowledging) before it gives
// up: it reaches the routing position without the rest, which is logged
// and counted.
const catchUpIdle = 30 * time.Second

// catchUpMax bounds how long a catch-up runs by default
// (Config.CatchUpMax): this node's publishers of
// messages for the session wait for it meanwhile.
const catchUpMax = 10 * time.Minute

// catchUpHeld bounds the deliveries the session holds back while it
// catches up (this node's own QoS 1/2 messages, a subscription made
// meanwhile): past it, the catch-up gives up.
const catchUpHeld = 4096

// maxCatchUpFailures bounds the readings holding routeMu that may fail
// (each within requestAttempt) before the catch-up gives up: each holds
// this node's routing up meanwhile.
const maxCatchUpFailures = 3

// catchUpPoll is how often a catch-up waiting for room in the queue
// looks at it again.
const catchUpPoll = 20 * time.Millisecond

// catchUp is the catch-up of one session. Its goroutine owns it; once
// done is closed, whoever stopped it does.
type catchUp struct {
	n     *Node
	id    string
	rs    *replaySet
	local *broker.LocalReplay
	skip  func(*broker.Message) bool
	// ref names what local found by its stream ID (the claim's noteOwn,
	// kept as the claim ended), for the session's records (deliverFound).
	ref func(*broker.Message) string
	// ownTo: this node's own messages in records up to ownTo are
	// replayed from the stream; later ones reach the session live (held
	// back) or through local, except those forwarded up to fwdAt (once
	// what was matched before the import was forwarded, routedAt) that
	// neither local found nor the session holds back (localRefs):
	// routed here before the session was, they are replayed from the
	// stream too (lateOwn).
	ownTo     uint64
	fwdAt     uint64
	localRefs map[string]bool
	// lateTo: the stream's end once the commits submitted as the
	// catch-up began were done (lateEnd); it ends only once routing
	// passed it, so that it read the records of the late own messages.
	// lateBy, when set, is when those commits are done for sure (their
	// deadline, for a claim whose first wait for them ran out): lateEnd
	// waits until then rather than ownWaitMax.
	lateTo uint64
	lateBy time.Time
	// started is n.now() when it began; delivered counts the messages
	// it delivered.
	started   time.Time
	delivered int
	failures  int // readings under routeMu that failed (finish)
	// partSeq is the record the catch-up delivered part of (0: none),
	// partRefs the stream IDs of the messages of it delivered.
	partSeq  uint64
	partRefs []string
	// marked is the position record c holds, and when it was written.
	marked   uint64
	markedAt time.Time

	// paced: started by a routing pass for a session whose queue was
	// full (startPaced), not by a claim. away: for one whose client was
	// away then (it counts in sess.pacedAway); clientAway: its client
	// was away at the last look (run), and new publishers do not wait
	// for it (catchUpBehind).
	paced      bool
	away       bool
	clientAway atomic.Bool
	// For a paced catch-up, once started: through is the stream
	// position up to which its session got the other nodes' messages
	// (progressed), filters (set under cuMu) its session's filters. A
	// connection's first message on a topic they match waits until
	// through passes what the stream held (AwaitCaughtUp).
	through atomic.Uint64
	filters []string

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	ended  bool // set before done is closed: run finished it
}

// gateCatchUpAge is how long a paced catch-up holds new publishers'
// first messages on its session's topics (catchUpBehind).
const gateCatchUpAge = 10 * time.Second

// catchUpSpare is the share of a session's queue a catch-up leaves free
// (1/catchUpSpare of max_queued_messages and of max_queued_bytes): the
// messages that reach the session live meanwhile and right after it
// ends find room there. This node's own clients' messages do (they are
// not in what the catch-up reads), and under the default queue policy a
// full queue drops them. A catch-up that filled the queue to its limit
// left it full as it ended, and an outside test that killed a node under
// QoS 1 load lost such messages at the moved session (docs/cluster.md,
// "Full queues that still drop"). It is the broker's share, which the
// other nodes' messages leave free before a session catches up.
const catchUpSpare = broker.PacedSpare

// leaveRoom returns what a catch-up fills of a queue that has room
// messages and roomBytes bytes (-1: no byte limit) of room under lim:
// that less the share it leaves free (catchUpSpare).
func leaveRoom(lim broker.Limits, room int, roomBytes int64) (int, int64) {
	room = max(room-lim.MaxQueued/catchUpSpare, 0)
	if roomBytes >= 0 && lim.MaxQueuedBytes > 0 {
		roomBytes = max(roomBytes-lim.MaxQueuedBytes/catchUpSpare, 0)
	}
	return room, roomBytes
}

// maxPacedCatchUps bounds the catch-ups routing passes run at once on a
// node: each reads the stream on its own. Past it, a connected session's
// full queue drops the other nodes' messages, as on one node.
const maxPacedCatchUps = 64

// maxAwayCatchUps bounds those of them for sessions whose client is
// away, which wait for their client up to the idle bound: a node with
// many sessions away (a fleet offline behind a busy topic) keeps the
// rest for the clients that are connected.
const maxAwayCatchUps = maxPacedCatchUps / 2

// pacedNear is how many records behind the routing position a catch-up
// reads under routeMu, holding this node's routing up meanwhile
// (finish); further behind, it reads without it.
const pacedNear = 32

// startCatchUp starts the catch-up of the session of id, imported with
// CatchUp, whose replay rs stopped at the bound; local holds what this
// node's own clients published during the claim and what the session
// holds back, skip what of it the session got.
func (n *Node) startCatchUp(id string, rs *replaySet, local *broker.LocalReplay, skip func(*broker.Message) bool,
	ref func(*broker.Message) string, ownTo, fwdAt uint64, localRefs map[string]bool, lateBy time.Time) {
	if n.ctx.Err() != nil {
		// The node closes: its broker is shut down already.
		n.deliverFound(local, skip, ref)
		return
	}
	if old := n.stopCatchUp(id); old != nil {
		// The session of the old one was replaced by the import: it
		// has nothing left to deliver to.
		n.dstats.catchUpsGaveUp.Add(1)
	}
	c := n.newCatchUp(id, false)
	c.rs, c.local, c.skip, c.ref, c.ownTo, c.marked = rs, local, skip, ref, ownTo, rs.pos.seq
	c.fwdAt, c.localRefs, c.lateBy = fwdAt, localRefs, lateBy
	n.sess.cuMu.Lock()
	if n.sess.catchUps == nil {
		n.sess.catchUps = make(map[string]*catchUp)
	}
	n.sess.catchUps[id] = c
	n.sess.cuMu.Unlock()
	n.dstats.catchUps.Add(1)
	n.log.Info("cluster: a moved session missed more durable messages than its queue takes; they follow as it drains",
		"client", id, "room", rs.room, "read_to", rs.to)
	n.runCatchUp(c)
}

func (n *Node) newCatchUp(id string, paced bool) *catchUp {
	ctx, cancel := context.WithCancel(n.ctx)
	now := n.now()
	return &catchUp{n: n, id: id, paced: paced, started: now, markedAt: now, ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// runCatchUp starts the goroutine of c, in n.sess.catchUps.
func (n *Node) runCatchUp(c *catchUp) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(c.done)
		defer c.cancel()
		if c.ended = c.run(); c.ended {
			n.sess.cuMu.Lock()
			n.dropCatchUpLocked(c)
			n.sess.cuMu.Unlock()
		}
	}()
}

// dropCatchUpLocked removes c from n.sess.catchUps, if there; the caller
// holds cuMu.
func (n *Node) dropCatchUpLocked(c *catchUp) {
	if n.sess.catchUps[c.id] != c {
		return
	}
	delete(n.sess.catchUps, c.id)
	if c.paced {
		n.sess.paced--
		if c.away {
			n.sess.pacedAway--
		}
		n.catchUpMovedLocked()
	}
}

// catchUpMovedLocked wakes the first messages waiting for the paced
// catch-ups (catchUpBehind). The caller holds cuMu.
func (n *Node) catchUpMovedLocked() {
	if n.sess.cuMoved != nil {
		close(n.sess.cuMoved)
		n.sess.cuMoved = nil
	}
}

// progressed notes how far the session of a paced catch-up got the
// other nodes' messages: every message read before the first one not
// delivered yet (as mark), and wakes the first messages waiting for it.
// Only the catch-up's goroutine, or the caller that stopped it, calls
// it.
func (c *catchUp) progressed() {
	if !c.paced {
		return
	}
	to := c.rs.to
	if len(c.rs.msgs) > 0 {
		to = c.rs.msgs[0].seq - 1
	}
	if to <= c.through.Load() {
		return
	}
	c.through.Store(to)
	c.n.sess.cuMu.Lock()
	c.n.catchUpMovedLocked()
	c.n.sess.cuMu.Unlock()
}

// catchUpBehind returns a channel closed when a paced catch-up moves on
// or ends, if one of a session whose filters match topic has not got
// the other nodes' messages up to last yet; nil when none lags so. A
// publisher that comes to this node from another finds its earlier
// messages, through the other node, in the stream up to last: a session
// catching up gets them from its catch-up, behind the messages this
// node's clients send it live (docs/cluster.md, "A publisher that
// moves").
//
// A catch-up under way for longer than gateCatchUpAge is not waited
// for, nor one whose session's client is away (it moves on only once
// the client is back): its session's client cannot keep up, and a slow
// or absent subscriber must
// not hold publishers up (docs/design/broker.md, "Overload control"):
// waiting for it would delay every new publisher's first message on its
// topics to the gate's bound for as long as it lags. A catch-up after a
// node's death or a move is over within seconds.
//
// The publisher's own session (clientID) is not waited for: its
// catch-up moves on as that client acknowledges what it is sent, which
// the connection's reader, waiting here, does not read.
func (n *Node) catchUpBehind(topic, clientID string, last uint64) <-chan struct{} {
	now := n.now()
	maxAge := gateCatchUpAge
	if d := n.sess.gateAgeFor.Load(); d != 0 {
		maxAge = time.Duration(d)
	}
	n.sess.cuMu.Lock()
	defer n.sess.cuMu.Unlock()
	for _, c := range n.sess.catchUps {
		if !c.paced || c.filters == nil || c.id == clientID || c.through.Load() >= last || c.clientAway.Load() ||
			now.Sub(c.started) > maxAge || !matchesAny(c.filters, topic) {
			continue
		}
		if n.sess.cuMoved == nil {
			n.sess.cuMoved = make(chan struct{})
		}
		return n.sess.cuMoved
	}
	return nil
}

// stopCatchUp stops the catch-up of the session of id, if any, and
// waits for its goroutine: the caller owns it then and finishes it (nil:
// none, or it ended meanwhile). The caller must not hold routeMu: the
// goroutine may be waiting for it, or (paced) not started yet by the
// routing pass that holds it.
func (n *Node) stopCatchUp(id string) *catchUp {
	n.sess.cuMu.Lock()
	c := n.sess.catchUps[id]
	if c != nil {
		n.dropCatchUpLocked(c)
	}
	n.sess.cuMu.Unlock()
	if c == nil {
		return nil
	}
	c.cancel()
	<-c.done
	if c.ended {
		return nil
	}
	return c
}

// markReleasing notes (on) or forgets that the session of id is being
// given up to another node (handleRelease): no routing pass starts a
// catch-up for it meanwhile, which the release would not hand over.
func (n *Node) markReleasing(id string, on bool) {
	n.sess.cuMu.Lock()
	defer n.sess.cuMu.Unlock()
	if on {
		if n.sess.releasing == nil {
			n.sess.releasing = make(map[string]int)
		}
		n.sess.releasing[id]++
		return
	}
	if n.sess.releasing[id]--; n.sess.releasing[id] <= 0 {
		delete(n.sess.releasing, id)
	}
}

// reservePaced is asked by the broker, for a connected session of id
// (or one whose client a claim is attaching, or, away, one whose client
// is away) whose queue has no room for a message of another node that a routing
// pass delivers, whether this node catches it up (startPaced) instead
// of dropping the message: when no catch-up of it is under way, it is
// not being given up, and fewer than maxPacedCatchUps run (of them
// fewer than maxAwayCatchUps for sessions away, for one away). It
// reserves the catch-up then. The broker calls it holding the session's
// lock: it takes cuMu alone.
func (n *Node) reservePaced(id string, away bool) bool {
	s := &n.sess
	s.cuMu.Lock()
	defer s.cuMu.Unlock()
	if s.noCatchUp || n.ctx.Err() != nil || s.catchUps[id] != nil || s.releasing[id] > 0 || s.paced >= maxPacedCatchUps ||
		away && s.pacedAway >= maxAwayCatchUps {
		return false
	}
	if s.catchUps == nil {
		s.catchUps = make(map[string]*catchUp)
	}
	c := n.newCatchUp(id, true)
	if away {
		c.away = true
		c.clientAway.Store(true)
		s.pacedAway++
	}
	s.catchUps[id] = c
	if s.reserved == nil {
		s.reserved = make(map[string]*catchUp)
	}
	s.reserved[id] = c
	s.paced++
	return true
}

// startPaced starts the catch-ups the routing pass of the record seq
// reserved (reservePaced) for the sessions in started, which had no room
// for one of its messages (msgs, their stream IDs refs; ids are the IDs
// of every message of the record, in order). Each reads the stream from
// that record on, for the messages the session has not got: those of
// the record before that message were delivered. The caller holds
// routeMu; part returns a done function for each write the record's
// acknowledgement must wait for: the position record of each catch-up,
// without which this node's acknowledgement floor could pass messages
// the session never got.
func (n *Node) startPaced(seq uint64, msgs []*broker.Message, refs, ids []string, started []broker.PacedSession, part func() func(error)) {
	for _, ps := range started {
		// Taken from the reservations, not from catchUps: a release
		// may have stopped it there already (stopCatchUp), and waits
		// for its goroutine, which finds it stopped and hands it over.
		n.sess.cuMu.Lock()
		c := n.sess.reserved[ps.ClientID]
		delete(n.sess.reserved, ps.ClientID)
		n.sess.cuMu.Unlock()
		if c == nil {
			// Impossible: the broker returns the sessions reserved.
			ps.Replay.Deliver(nil)
			n.log.Error("cluster: a session's catch-up was not reserved; the message it had no room for is dropped", "client", ps.ClientID)
			continue
		}
		have := make(map[string]bool)
		var part0 []string
		for i, m := range msgs {
			if m != ps.Msg {
				continue
			}
			for _, id := range ids {
				if id == refs[i] {
					break
				}
				have[id] = true
				part0 = append(part0, id)
			}
			break
		}
		rs := &replaySet{id: ps.ClientID, pos: position{seq: seq - 1, replay: true}, self: n.origin, have: have,
			reached: make(map[string]bool), paced: true, to: seq - 1}
		rs.setFilters(ps.Filters)
		c.rs, c.local, c.marked = rs, ps.Replay, seq-1
		c.through.Store(seq - 1)
		n.sess.cuMu.Lock()
		c.filters = rs.filters
		n.sess.cuMu.Unlock()
		c.partSeq, c.partRefs = seq, part0
		n.markCatchUp(ps.ClientID, seq-1, part())
		n.dstats.catchUps.Add(1)
		n.dstats.catchUpsPaced.Add(1)
		if c.away {
			n.dstats.catchUpsAway.Add(1)
			n.log.Info("cluster: a session whose client is away has no room for the other nodes' messages; they follow from the stream if it comes back in time",
				"client", ps.ClientID, "from", seq, "idle_bound", c.idle())
		} else {
			n.log.Info("cluster: a connected session has no room for the other nodes' messages; they follow from the stream as it drains",
				"client", ps.ClientID, "from", seq)
		}
		n.runCatchUp(c)
	}
}

// run delivers the rest of the replay as the queue makes room, until
// the reading is at the routing position. It returns true when the
// catch-up ended (done, given up, or the session left this node), false
// when it was stopped (stopCatchUp: the stopper finishes it; the node
// shuts down: nothing is).
func (c *catchUp) run() bool {
	n, rs := c.n, c.rs
	c.lateEnd()
	idle := n.now()
	t := time.NewTicker(catchUpPoll)
	defer t.Stop()
	wait := func() bool {
		select {
		case <-c.ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	b := n.b.(sessionBroker)
	last := -1 // the queue's room at the last look
	for c.ctx.Err() == nil {
		raw, rawBytes, held, online, here := c.local.QueueRoom()
		c.clientAway.Store(!online)
		room, roomBytes := leaveRoom(b.Limits(), raw, rawBytes)
		if keepsUp(room, roomBytes, raw, last) {
			idle = n.now()
		}
		last = raw
		switch {
		case !here:
			// Ended (expired), replaced by a clean start, or given up
			// to another node's claim: nothing to deliver to.
			n.unmarkCatchUp(c.id)
			n.dstats.catchUpsDone.Add(1)
			n.log.Info("cluster: a session's catch-up ended: the session left", "client", c.id, "read_to", rs.to)
			return true
		case held > catchUpHeld:
			c.giveUp("too many deliveries held back for it")
			return true
		case n.now().Sub(c.started) > c.max():
			c.giveUp("it took too long")
			return true
		}
		if len(rs.msgs) > 0 {
			if c.deliverSome(room, roomBytes) > 0 {
				c.mark()
				continue
			}
		} else {
			n.dur.routeMu.Lock()
			routed := n.dur.routed
			n.dur.routeMu.Unlock()
			if room > 0 && roomBytes != 0 && routed > rs.to+pacedNear && routed >= c.ownTo && routed >= c.lateTo {
				// Far behind the routing position: read without holding
				// the routing up (finish does, for the last records).
				if ok, ended := c.readTo(routed, room, roomBytes); !ok {
					return ended
				}
				continue
			}
			if routed >= rs.to && routed >= c.ownTo && routed >= c.lateTo {
				done, err := c.finish(room, roomBytes)
				if done {
					return true
				}
				if err != nil {
					if c.ctx.Err() != nil {
						return false
					}
					if c.failures++; c.failures >= maxCatchUpFailures {
						c.giveUp("reading the stream failed: " + err.Error())
						return true
					}
				}
				if len(rs.msgs) > 0 {
					continue
				}
			} else if room > 0 && roomBytes != 0 && rs.to < routed {
				if ok, ended := c.readTo(routed, room, roomBytes); !ok {
					return ended
				}
				continue
			}
		}
		if n.now().Sub(idle) > c.idle() {
			reason := "the client takes no messages"
			if !online {
				reason = "the client is away"
			}
			c.giveUp(reason)
			return true
		}
		if !wait() {
			return false
		}
	}
	return false
}

// keepsUp tells whether a catch-up's client keeps up, from the room
// the catch-up may fill (room, roomBytes) and the queue's whole room
// now (raw) and at the last look (last, -1 for none): the catch-up may
// fill some, or the client took messages since the last look. Live
// messages (this node's own clients') may keep the queue past what the
// catch-up fills while its client takes them: that client is not idle.
func keepsUp(room int, roomBytes int64, raw, last int) bool {
	return room > 0 && roomBytes != 0 || last >= 0 && raw > last
}

// readTo reads, without holding routeMu, the records up to routed, as
// far as the room of the queue goes. It reports false when the reading
// failed, and then whether the catch-up ended (it gave up) rather than
// was stopped (see run).
func (c *catchUp) readTo(routed uint64, room int, roomBytes int64) (ok, ended bool) {
	c.rs.next(room, roomBytes)
	if err := c.rs.read(c.ctx, c.n, routed, routed); err != nil {
		if c.ctx.Err() != nil {
			return false, false
		}
		c.giveUp("reading the stream failed: " + err.Error())
		return false, true
	}
	c.progressed()
	return true, false
}

func (c *catchUp) idle() time.Duration {
	if d := c.n.cfg.CatchUpIdle; d != 0 {
		return d
	}
	return catchUpIdle
}

func (c *catchUp) max() time.Duration {
	if d := c.n.cfg.CatchUpMax; d != 0 {
		return d
	}
	return catchUpMax
}

// next readies rs to read another chunk: what the queue has room for.
func (rs *replaySet) next(room int, roomBytes int64) {
	rs.room, rs.roomBytes = room, roomBytes
	rs.counted, rs.countedBytes, rs.held = 0, 0, 0
	rs.full = false
}

// deliverSome delivers the oldest messages read, as many as the queue
// has room for (like the queue, one more while the bytes are below the
// room), and waits until they are committed. It returns how many it
// delivered.
func (c *catchUp) deliverSome(room int, roomBytes int64) int {
	k, size := 0, int64(0)
	for k < len(c.rs.msgs) && k < room && (roomBytes < 0 || size < roomBytes) {
		m := c.rs.msgs[k].msg
		size += int64(len(m.Topic) + len(m.Payload))
		k++
	}
	if k == 0 {
		return 0
	}
	c.deliver(k)()
	return k
}

// deliver delivers the first k messages read and returns a function
// that waits until they are committed. This node's own messages past
// ownTo are not: the session gets them live or from local.
func (c *catchUp) deliver(k int) (wait func()) {
	n, rs := c.n, c.rs
	b := n.b.(sessionBroker)
	var wg sync.WaitGroup
	for _, r := range rs.msgs[:k] {
		if r.origin == n.origin {
			if r.seq > c.ownTo && !c.lateOwn(r.ref) || rs.reached[r.ref] {
				continue
			}
			rs.reached[r.ref] = true // for skip
		}
		wg.Add(1)
		c.delivered++
		n.dur.refs.Store(r.msg, r.ref)
		b.DeliverToSession(c.id, r.msg, func(error) { wg.Done() })
		n.dur.refs.Delete(r.msg)
	}
	if k < len(rs.msgs) && rs.msgs[k].seq == rs.msgs[k-1].seq {
		// Stopped within a record: its first messages are delivered.
		if c.partSeq != rs.msgs[k].seq {
			c.partSeq, c.partRefs = rs.msgs[k].seq, nil
		}
		for _, r := range rs.msgs[:k] {
			if r.seq == c.partSeq {
				c.partRefs = append(c.partRefs, r.ref)
			}
		}
	}
	clear(rs.msgs[:k])
	rs.msgs = rs.msgs[k:]
	if len(rs.msgs) == 0 {
		rs.msgs = nil
	}
	c.progressed()
	return wg.Wait
}

// lateOwn tells whether this node's own message of stream ID ref, in a
// record past ownTo, is one the catch-up replays: forwarded up to fwdAt,
// neither found by local nor held back by the session (so routed here
// before the session was). A connection's reader that waited for a
// commit slot while the stream had no leader goes on with its client's
// messages during the claim, after the claim's wait for this node's
// commits: their records land past ownTo, and they arrived before the
// claim began, so local does not hold them (as replayOwnLate for a claim
// without a catch-up).
func (c *catchUp) lateOwn(ref string) bool {
	if c.fwdAt == 0 || c.localRefs[ref] {
		return false
	}
	i := strings.LastIndexByte(ref, '/')
	if i < 0 {
		return false
	}
	seq, err := strconv.ParseUint(ref[i+1:], 10, 64)
	return err == nil && seq <= c.fwdAt
}

// lateEnd sets lateTo when the catch-up replays late own messages: it
// waits (ownWaitMax at most, or until lateBy) until the commits
// submitted so far are done, this node's forwarding up to fwdAt among
// them, and takes the stream's end then. Past the wait the late
// messages whose records routing has not passed when the catch-up ends
// are missing (logged).
func (c *catchUp) lateEnd() {
	if c.fwdAt == 0 {
		return
	}
	end, ok := c.n.ownEnd(c.ctx, c.n.persistence(), c.rs.to, max(ownWaitMax, time.Until(c.lateBy)))
	if !ok {
		if c.ctx.Err() == nil {
			c.n.log.Warn("cluster: this node's messages forwarded while a session moved here could not be waited for; some may be missing from it",
				"client", c.id)
		}
		return
	}
	c.lateTo = end
}

// finish reads, holding routeMu, what was routed since the last reading
// and, if the queue has room for it, delivers it and lets routing
// deliver to the session again, then releases what the session held
// back. It returns false, with what it read kept, when the queue has no
// room for it, or the reading failed within requestAttempt (err): the
// catch-up goes on.
func (c *catchUp) finish(room int, roomBytes int64) (bool, error) {
	n, rs := c.n, c.rs
	n.dur.routeMu.Lock()
	routed := n.dur.routed
	rs.next(room, roomBytes)
	rctx, cancel := context.WithTimeout(c.ctx, requestAttempt)
	err := rs.read(rctx, n, routed, routed)
	cancel()
	if err != nil || rs.full {
		n.dur.routeMu.Unlock()
		return false, err
	}
	wait := c.deliver(len(rs.msgs))
	qos0 := c.local.EndCatchUp()
	c.endMark()
	c.forget()
	n.dur.routeMu.Unlock()
	if f := n.sess.afterCatchUpEnd.Load(); f != nil {
		(*f)(c.id)
	}
	wait()
	// A routing pass may have started the session's next catch-up by
	// now (reservePaced, once forget ran): Deliver does not end it.
	own := c.n.deliverFound(c.local, c.skip, c.ref)
	n.dstats.catchUpsDone.Add(1)
	n.dstats.catchUpMessages.Add(uint64(c.delivered))
	n.dstats.catchUpQoS0Dropped.Add(uint64(qos0))
	n.log.Info("cluster: a session caught up with the durable messages it missed",
		"client", c.id, "count", c.delivered, "own", own, "to", routed, "qos0_dropped", qos0,
		"took", n.now().Sub(c.started).Round(time.Millisecond))
	return true, nil
}

// endMark removes the session's position record (c) as the catch-up
// ends, with routeMu held, before forget: once routing is let go, a
// routing pass may start the session's next catch-up, which writes its
// own (startPaced); removed after that, as it was, the record went
// missing while the next catch-up ran, and a claim after this node died
// then would have replayed from the node's acknowledgement floor, past
// messages routing had skipped for the session. The deliveries of the
// catch-up's last messages were submitted before it, and the node's
// writes are stored in the order they are submitted, so the record
// goes only once they are in the session's records.
func (c *catchUp) endMark() { c.n.unmarkCatchUp(c.id) }

// forget removes the catch-up from n.sess.catchUps as routing delivers
// to its session again (the caller holds routeMu): from the next
// routing pass on, a full queue can start the session's next catch-up
// (reservePaced). Left there until its goroutine ended, it made the
// passes in between drop the other nodes' messages the queue had no
// room for, as if no catch-up could be had.
func (c *catchUp) forget() {
	c.n.sess.cuMu.Lock()
	c.n.dropCatchUpLocked(c)
	c.n.sess.cuMu.Unlock()
}

// giveUp ends the catch-up without the rest: routing delivers to the
// session again from its position now, the messages read are delivered
// (the queue limit drops what it has no room for, as on one node), and
// those in the records after the reading's position up to the routing
// position are not replayed (logged). The messages read are handed to
// the session before routing is let go, as finish does: delivered
// after, one could land behind a later message routing delivered in
// between. Once routing is let go, a routing pass may start the
// session's next catch-up before local.Deliver runs; Deliver leaves it
// standing (LocalReplay.EndCatchUp acts once), as in finish.
func (c *catchUp) giveUp(reason string) {
	n, rs := c.n, c.rs
	n.dur.routeMu.Lock()
	wait := c.deliver(len(rs.msgs))
	qos0 := c.local.EndCatchUp()
	c.endMark()
	c.forget()
	routed := n.dur.routed
	n.dur.routeMu.Unlock()
	wait()
	c.n.deliverFound(c.local, c.skip, c.ref)
	n.dstats.catchUpsGaveUp.Add(1)
	n.dstats.catchUpMessages.Add(uint64(c.delivered))
	n.dstats.catchUpQoS0Dropped.Add(uint64(qos0))
	n.dstats.replaysBounded.Add(1)
	n.log.Warn("cluster: a session's catch-up gave up; durable messages for it after read_to were not replayed",
		"client", c.id, "reason", reason, "replayed", c.delivered, "read_to", rs.to, "routed_to", routed, "qos0_dropped", qos0)
}

// handOver ends a catch-up stopped (stopCatchUp) because its session is
// given up to another node, with routeMu held: routing delivers to it
// again, and what it held back is released, so that the records of the
// session hold them (committed before the release is answered). It
// returns the stream position up to which the session got the other
// nodes' messages, and the stream IDs of those it got of the record
// after it (delivered in part): the new home replays from there. The
// messages read and not delivered (the queue had no room) are left to
// it: delivered here, the queue limit would drop them.
func (c *catchUp) handOver() (uint64, []string) {
	n, rs := c.n, c.rs
	to, skip := rs.to, []string(nil)
	if len(rs.msgs) > 0 {
		to = rs.msgs[0].seq - 1
		if c.partSeq == rs.msgs[0].seq {
			skip = c.partRefs
		}
	} else if c.partSeq == to+1 {
		// A paced catch-up stopped before it read the record whose
		// first messages routing delivered (startPaced).
		skip = c.partRefs
	}
	qos0 := c.local.EndCatchUp()
	c.n.deliverFound(c.local, c.skip, c.ref)
	n.unmarkCatchUp(c.id) // the new home has the position
	n.dstats.catchUpsHandedOver.Add(1)
	n.dstats.catchUpMessages.Add(uint64(c.delivered))
	n.dstats.catchUpQoS0Dropped.Add(uint64(qos0))
	n.log.Info("cluster: a session catching up moved on; its new node replays the rest",
		"client", c.id, "replayed", c.delivered, "from", to)
	return to, skip
}

// markSubject is the subject of the record of id's catch-up position.
func markSubject(id string) string { return sessSubject(id, "c") }

// markCatchUp writes the record of the catch-up position seq of the
// session of id; wait, when set, is told when it is stored.
func (n *Node) markCatchUp(id string, seq uint64, wait func(error)) {
	n.writeMark(id, seq, false, wait)
}

// unmarkCatchUp removes the record of the catch-up position of the
// session of id.
func (n *Node) unmarkCatchUp(id string) { n.writeMark(id, 0, true, nil) }

func (n *Node) writeMark(id string, seq uint64, remove bool, wait func(error)) {
	p := n.persistence()
	if p == nil {
		if wait != nil {
			wait(errClosed)
		}
		return
	}
	if wait == nil {
		wait = func(error) {}
	}
	c := p.begin(wait)
	if remove {
		p.publish(c, n.tombstone(markSubject(id)))
	} else {
		p.publish(c, n.record(markSubject(id), []byte(strconv.FormatUint(seq, 10))))
	}
	p.finish(c, nil)
}

// mark moves the position record on to what the session has for sure
// now: every message read before the first one not delivered yet (its
// record may have been delivered in part: those come again after a
// crash, at least once), at most every catchUpMark.
func (c *catchUp) mark() {
	to := c.rs.to
	if len(c.rs.msgs) > 0 {
		to = c.rs.msgs[0].seq - 1
	}
	if to <= c.marked || c.n.now().Sub(c.markedAt) < catchUpMark {
		return
	}
	c.marked, c.markedAt = to, c.n.now()
	c.n.markCatchUp(c.id, to, nil)
}

// caughtUpTo lowers pos, the acknowledgement floor of the session's node
// gone, to the position of a catch-up of the session that node had
// under way (its record c), if lower: the messages after it were skipped
// for the session there. A record that cannot be read leaves pos as it
// is (logged).
func (n *Node) caughtUpTo(ctx context.Context, id string, pos position) position {
	if !pos.replay {
		return pos
	}
	r, err := n.getRecord(ctx, markSubject(id))
	if err != nil {
		n.log.Warn("cluster: the catch-up position of a session could not be read; its replay starts at its node's position",
			"client", id, "err", err)
		return pos
	}
	if r == nil || len(r.data) == 0 {
		return pos
	}
	seq, err := strconv.ParseUint(string(r.data), 10, 64)
	if err != nil {
		n.stats.decodeErrors.Add(1)
		return pos
	}
	if seq < pos.seq {
		n.log.Info("cluster: a session was catching up on its node gone; replayed from the catch-up's position",
			"client", id, "from", seq, "node_position", pos.seq)
		pos.seq = seq
	}
	return pos
}
