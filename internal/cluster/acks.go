package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Cumulative acknowledgements of the durable stream (docs/cluster.md,
// "Acknowledgements"). A node's consumer acknowledges with AckAll: one
// acknowledgement of a record covers every record of the stream before
// it. A replicated consumer writes each acknowledgement it receives into
// its own Raft log, on every replica, so acknowledging a run of records
// at once saves one replicated write per record.
//
// The guarantee stays that of an acknowledgement per record: a record is
// covered only once it and every record before it that the consumer
// delivers are in the local sessions and committed. Records are known by
// their stream sequence, which a record delivered again keeps. The
// records the consumer had delivered before this node bound it (up to
// its delivered sequence then, past its acknowledgement floor: those of
// a node that died before acknowledging them) are waited for until they
// are delivered again; past that sequence the consumer delivers in
// stream order, so a sequence skipped while a later one arrived is none
// of the consumer's (not in the stream). A node that dies before the
// acknowledgement is sent gets the uncovered records again when it comes
// back: delivered twice at worst, never skipped.
const (
	// ackEvery is the most records one acknowledgement waits for, and
	// ackWindow the longest a finished run waits for more.
	ackEvery  = 128
	ackWindow = 20 * time.Millisecond
	// ackCheck is how often records held back are looked at (run).
	ackCheck = time.Second
)

type ackEntry struct {
	m            jetstream.Msg
	done, failed bool
}

// ackQueue tracks the records delivered to this node's consumer and not
// yet covered by an acknowledgement, by stream sequence.
type ackQueue struct {
	mu      sync.Mutex
	floor   uint64 // every record up to this one is finished or covered
	barrier uint64 // the consumer's delivered sequence when bound
	highest uint64 // the highest sequence delivered since
	entries map[uint64]*ackEntry
	last    jetstream.Msg // the record at floor, if its acknowledgement is owed
	owed    int           // finished records the owed acknowledgement covers
	kick    chan struct{}
}

func newAckQueue() *ackQueue {
	return &ackQueue{entries: make(map[uint64]*ackEntry), kick: make(chan struct{}, 1)}
}

// bind (re)starts the reading of the consumer, as its leader knows it
// now: its acknowledgement floor, and the last sequence it delivered
// (records up to it may be in flight to nowhere and are delivered again
// after the consumer's AckWait). It is called each time the node starts
// reading the consumer.
func (q *ackQueue) bind(ci *jetstream.ConsumerInfo) {
	q.mu.Lock()
	q.floor = max(q.floor, ci.AckFloor.Stream)
	q.barrier = max(q.barrier, ci.Delivered.Stream)
	q.highest = q.floor
	for seq := range q.entries {
		if seq <= q.floor {
			delete(q.entries, seq)
		}
	}
	q.mu.Unlock()
}

// admit tells whether the record m, of stream sequence seq, is to be
// routed: not when an earlier delivery of the same record is being
// routed (its acknowledgement follows) or is finished (idem). A record
// already covered (its acknowledgement was lost, or is owed) is
// acknowledged again at once: everything up to it is finished.
func (q *ackQueue) admit(m jetstream.Msg, seq uint64) bool {
	q.mu.Lock()
	q.highest = max(q.highest, seq)
	if seq <= q.floor {
		q.mu.Unlock()
		_ = m.Ack()
		return false
	}
	if e, ok := q.entries[seq]; ok {
		if !e.failed {
			q.mu.Unlock()
			return false
		}
		e.m, e.failed = m, false
		q.mu.Unlock()
		return true
	}
	q.entries[seq] = &ackEntry{m: m}
	q.mu.Unlock()
	return true
}

// finish ends the routing of record seq. A record that failed is asked
// again after a while (NAK), and holds the floor until it is finished;
// one that succeeded may move the floor, and the floor's acknowledgement
// is sent once ackEvery records wait for it, or by run after ackWindow.
func (q *ackQueue) finish(seq uint64, ok bool) {
	q.mu.Lock()
	e := q.entries[seq]
	if seq != 0 && (e == nil || e.done) {
		q.mu.Unlock()
		return
	}
	switch {
	case e == nil:
		// adopt: only the floor moves.
	case !ok:
		e.failed = true
		m := e.m
		q.mu.Unlock()
		_ = m.NakWithDelay(time.Second)
		return
	default:
		e.done = true
	}
	for {
		next := q.floor + 1
		f := q.entries[next]
		switch {
		case f != nil && f.done:
			delete(q.entries, next)
			q.floor = next
			q.last = f.m
			q.owed++
			continue
		case f == nil && next > q.barrier && next < q.highest:
			// Past what was in flight when bound, and a later record
			// came: not one of the consumer's.
			q.floor = next
			continue
		}
		break
	}
	if q.owed >= ackEvery {
		m := q.last
		q.last, q.owed = nil, 0
		q.mu.Unlock()
		_ = m.Ack()
		return
	}
	owed := q.owed > 0
	q.mu.Unlock()
	if owed {
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
}

// flush sends the owed acknowledgement, if any.
func (q *ackQueue) flush() {
	q.mu.Lock()
	m := q.last
	q.last, q.owed = nil, 0
	q.mu.Unlock()
	if m != nil {
		_ = m.Ack()
	}
}

// adopt moves the floor up to the consumer's acknowledgement floor as
// its leader reports it: records up to it were acknowledged (by this
// node: nothing else acknowledges its consumer) or are not in the
// stream any more, and none of them is waited for.
func (q *ackQueue) adopt(floor uint64) {
	q.mu.Lock()
	if floor > q.floor {
		q.floor = floor
		for seq := range q.entries {
			if seq <= floor {
				delete(q.entries, seq)
			}
		}
	}
	q.mu.Unlock()
	q.finish(0, true) // move on past what is finished after it
}

// stalled tells whether records wait behind one not delivered again yet.
func (q *ackQueue) stalled(last uint64) (uint64, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.floor, q.floor == last && len(q.entries) > 0
}

// run sends the owed acknowledgement ackWindow after a run of records
// finished, until ctx ends (then once more). Every ackCheck while
// records wait behind one that does not come, it asks the consumer's
// acknowledgement floor (info) and adopts it: the records the consumer
// had in flight when bound may have left the stream (its limits) or been
// acknowledged before the consumer's state reached its leader.
func (q *ackQueue) run(ctx context.Context, info func(context.Context) (*jetstream.ConsumerInfo, error)) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	check := time.NewTicker(ackCheck)
	defer check.Stop()
	defer q.flush()
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-check.C:
			floor, stalled := q.stalled(last)
			last = floor
			if stalled && info != nil {
				ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
				ci, err := info(ictx)
				cancel()
				if err == nil {
					q.adopt(ci.AckFloor.Stream)
				}
			}
			continue
		case <-q.kick:
		}
		t.Reset(ackWindow)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		q.flush()
	}
}
