package cluster

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/internal/broker"
)

// A publisher that moves (docs/cluster.md, "A publisher that moves").
// A node delivers its own clients' QoS 1/2 messages to its sessions at
// once, and the other nodes' through the durable stream, some
// milliseconds later, or seconds when its consumer lost its leader. A
// publisher whose node died, reconnecting to the subscriber's node at
// once, had its first messages there delivered ahead of its last ones
// through the dead node, still on their way through the stream: 2 to 28
// acknowledged messages in 16 of the 37 runs of an outside kill series
// that killed the node of the publisher that reconnected to the
// subscriber's node (from 20 ms to 10 s late; none in 10 such runs with
// this wait). So a connection's first
// QoS 1/2 PUBLISH waits until this node has routed every record the
// stream held when the wait began (broker.PublishGate): those of its
// client's earlier connection among them, as they were acknowledged
// before it connected here.

// caughtUpWait bounds the wait of a connection's first message, and so
// does its keep alive when shorter (its publisher is not held up longer
// than its keep alive allows). Past it the message goes on, counted and
// logged: an election of this node's consumer's leader takes 4 to 9 s,
// and the routing of a node that restarts or is far behind may take
// longer. It was 5 s: in an outside kill series, 3 of 12 kills of a
// publisher's node had its first message on the subscriber's node go on
// at 5 s and its earlier ones arrive 0.3 to 1.5 s later, behind it.
const caughtUpWait = 10 * time.Second

// streamEndWait bounds one reading of the stream's end. Without an
// answer (a stream without a leader, as when its leader's node died) it
// is read again every endRetry, for up to caughtUpWait: the records the
// dead leader stored last are those a moved publisher's first message
// must not overtake. Until 2026-12-06 the message went on at once, and
// in an outside kill series (the killed node led the stream and was the
// publisher's) 3 acknowledged messages of its publisher through the dead
// node reached the subscriber 7 s later, behind 400 later ones sent
// through the subscriber's node.
const (
	streamEndWait = time.Second
	endRetry      = 250 * time.Millisecond
)

var _ broker.PublishGate = (*Node)(nil)

// publishGate shares the readings of the stream's end among the
// connections that wait at once: a reading serves those that arrived
// before it began, so that each sees every record stored before it
// arrived; those that arrive during a reading share the next one.
type publishGate struct {
	mu      sync.Mutex
	running bool
	next    *endReading // the reading after the running one
	// waited counts the first messages that waited for the routing or
	// a catch-up (or, first, for the node's start: waitedStart),
	// waitedCatchUp those that waited for a catch-up,
	// timedOut those that went on past caughtUpWait, noEnd those whose
	// reading of the stream's end failed for good; endRetries the
	// readings of the stream's end made again.
	waited, waitedStart, waitedCatchUp, timedOut, noEnd, endRetries uint64
	// endFail, when positive, makes that many next readings of the
	// stream's end fail as without a stream leader (tests).
	endFail atomic.Int32
}

// endReading is one reading of the stream's end: done is closed once
// last (ok) is known.
type endReading struct {
	done chan struct{}
	last uint64
	ok   bool
}

// AwaitCaughtUp implements broker.PublishGate: it returns once this
// node's routing has passed the stream's end as read after the call
// began, and the paced catch-ups of the sessions whose filters match
// topic, but clientID's own, have too (catchUpBehind); after
// caughtUpWait or keepAlive if shorter (0: none), when the stream's end
// cannot be read, when closed is closed, or when the node closes.
//
// Before that, while the node starts, it waits until the sessions its
// previous run kept are imported (importHomeSessions). This node's own
// clients' messages reach its sessions live, and its consumer skips
// their records in the stream: one routed before the import missed
// those sessions for good, and a claim of one of them elsewhere replays
// from past its record. Listeners accept clients before the import,
// which waits for the stream (seconds after a restart of the whole
// cluster, whose nodes elect the stream's leader first): in an outside
// series that killed all three nodes under load, 617 acknowledged
// messages a publisher sent through the subscriber's old home before
// its import never reached the subscriber. The wait costs a publisher
// nothing it would not wait for anyway: its QoS 1/2 messages are
// acknowledged once the stream stores them.
func (n *Node) AwaitCaughtUp(closed <-chan struct{}, keepAlive time.Duration, topic, clientID string) {
	limit := caughtUpWait
	if keepAlive > 0 && keepAlive < limit {
		limit = keepAlive
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	g := &n.dur.gate
	counted := false
	select {
	case <-n.sess.ready:
	default:
		counted = true
		g.mu.Lock()
		g.waited++
		g.waitedStart++
		g.mu.Unlock()
		select {
		case <-n.sess.ready:
		case <-timer.C:
			n.gateTimedOut(limit, true)
			return
		case <-closed:
			return
		case <-n.ctx.Done():
			return
		}
	}
	g.mu.Lock()
	if g.next == nil {
		g.next = &endReading{done: make(chan struct{})}
	}
	r := g.next
	if !g.running {
		if n.ctx.Err() != nil {
			g.mu.Unlock()
			return // the node closes
		}
		g.running = true
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.readEnds() }()
	}
	g.mu.Unlock()
	// wait waits for ch; false when the wait is over otherwise.
	wait := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		case <-timer.C:
			n.gateTimedOut(limit, false)
		case <-closed:
		case <-n.ctx.Done():
		}
		return false
	}
	if !wait(r.done) {
		return
	}
	if !r.ok {
		g.mu.Lock()
		g.noEnd++
		g.mu.Unlock()
		return
	}
	d := &n.dur
	countedCatchUp := false
	for {
		// The channel first, then the position: a rise between the two
		// closes the channel taken.
		d.movedMu.Lock()
		if d.moved == nil {
			d.moved = make(chan struct{})
		}
		var moved <-chan struct{} = d.moved
		d.movedMu.Unlock()
		if d.routedNow.Load() >= r.last {
			// Routed; and delivered, unless to a session catching up
			// whose catch-up has not got there yet.
			behind := n.catchUpBehind(topic, clientID, r.last)
			if behind == nil {
				return
			}
			moved = behind
			if !countedCatchUp {
				countedCatchUp = true
				g.mu.Lock()
				g.waitedCatchUp++
				g.mu.Unlock()
			}
		}
		if !counted {
			counted = true
			g.mu.Lock()
			g.waited++
			g.mu.Unlock()
		}
		if !wait(moved) {
			return
		}
	}
}

// readEnds runs the readings of the stream's end while connections wait
// for one.
func (n *Node) readEnds() {
	g := &n.dur.gate
	for {
		g.mu.Lock()
		r := g.next
		if r == nil {
			g.running = false
			g.mu.Unlock()
			return
		}
		g.next = nil
		g.mu.Unlock()
		r.last, r.ok = n.readEnd()
		close(r.done)
	}
}

// readEnd reads the stream's end, again every endRetry while that fails,
// for up to caughtUpWait; false: not read. The connections waiting for
// it go on at their own bound meanwhile (counted and logged as timed
// out); those that come meanwhile wait for the next reading.
func (n *Node) readEnd() (uint64, bool) {
	g := &n.dur.gate
	giveUp := time.Now().Add(caughtUpWait)
	for {
		var err error
		if g.endFail.Load() > 0 && g.endFail.Add(-1) >= 0 {
			err = errFailedForTest
		} else {
			ctx, cancel := context.WithTimeout(n.ctx, streamEndWait)
			var info *jetstream.StreamInfo
			info, err = n.msgStream().Info(ctx)
			cancel()
			if err == nil {
				return info.State.LastSeq, true
			}
		}
		if n.ctx.Err() != nil {
			return 0, false // the node closes
		}
		if !time.Now().Add(endRetry).Before(giveUp) {
			n.log.Info("cluster: the durable stream's end could not be read for a publisher's first message; it goes on", "err", err)
			return 0, false
		}
		g.mu.Lock()
		g.endRetries++
		g.mu.Unlock()
		select {
		case <-n.ctx.Done():
		case <-time.After(endRetry):
		}
	}
}

// gateTimedOut counts and logs a first message that went on before the
// routing caught up (starting: before this node's sessions were
// imported): the first and every 1000th.
func (n *Node) gateTimedOut(limit time.Duration, starting bool) {
	g := &n.dur.gate
	g.mu.Lock()
	g.timedOut++
	k := g.timedOut
	g.mu.Unlock()
	if starting && (k == 1 || k%1000 == 0) {
		n.log.Warn("cluster: a publisher's first message went on before this node imported the sessions of its previous run; "+
			"those sessions may miss it and its connection's later messages sent before the import",
			"wait", limit, "count", k)
		return
	}
	if k == 1 || k%1000 == 0 {
		n.log.Warn("cluster: a publisher's first message went on before this node routed the stream's earlier records, "+
			"or a session's catch-up delivered them; "+
			"it may reach this node's subscribers ahead of its earlier messages through another node",
			"wait", limit, "count", k)
	}
}

// raiseLocked raises the routing position to seq and wakes the first
// messages waiting for it. The caller holds routeMu.
func (d *durableState) raiseLocked(seq uint64) {
	if seq <= d.routed {
		return
	}
	d.routed = seq
	d.routedNow.Store(seq)
	d.movedMu.Lock()
	if d.moved != nil {
		close(d.moved)
		d.moved = nil
	}
	d.movedMu.Unlock()
}
