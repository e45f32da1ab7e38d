package broker

import "time"

// msgQueue is a session's queue of deliveries waiting for a connection or
// for room in the in-flight window, oldest first. Messages leave from
// the front, one per acknowledgement while the client catches up, so the
// front is taken by moving a head index rather than by copying the rest
// of the queue down: a client that reconnects to max_queued_messages
// waiting would otherwise copy the whole queue once per message
// (BenchmarkQueueAck). The space before the head is reused when the
// slice is full and at least half of it lies before the head, which
// costs one copy of what is left: at most one copy per message taken
// since the last time, so every operation is O(1) amortized. The owning
// session's mu guards it; the zero value is an empty queue.
//
// It also keeps the earliest expiry of the messages queued, so that a
// full queue is searched for expired messages only when one may have
// expired (session.dropExpiredLocked): otherwise every message for a full
// queue of max_queued_messages would cost a pass over all of them.
type msgQueue struct {
	buf  []*delivery // buf[head:] is the queue
	head int
	// expiry is no later than the earliest Message.Expires of the
	// messages queued, zero when none of them expires: exact after push
	// and filter, possibly earlier than needed once the earliest left.
	expiry time.Time
}

// keepQueueCap is the capacity an emptied queue keeps for reuse; a
// larger buffer, left by a backlog that drained, is let go.
const keepQueueCap = 256

// len returns the number of deliveries queued.
func (q *msgQueue) len() int { return len(q.buf) - q.head }

// items returns the deliveries queued, oldest first: a view to read,
// valid until the queue changes.
func (q *msgQueue) items() []*delivery { return q.buf[q.head:] }

// push appends d.
func (q *msgQueue) push(d *delivery) {
	if len(q.buf) == cap(q.buf) && q.head > 0 && q.head >= len(q.buf)/2 {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	q.buf = append(q.buf, d)
	if e := d.msg.Expires; !e.IsZero() && (q.expiry.IsZero() || e.Before(q.expiry)) {
		q.expiry = e
	}
}

// mayHaveExpired reports whether a message queued may have expired at
// now; false means none has.
func (q *msgQueue) mayHaveExpired(now time.Time) bool {
	return !q.expiry.IsZero() && !now.Before(q.expiry)
}

// popFront removes the n oldest deliveries (n at most len).
func (q *msgQueue) popFront(n int) {
	clear(q.buf[q.head : q.head+n])
	q.head += n
	q.emptied()
}

// filter keeps, in order, the deliveries for which keep reports true and
// returns how many it removed. keep may act on those it refuses.
func (q *msgQueue) filter(keep func(*delivery) bool) int {
	items := q.items()
	kept := items[:0]
	q.expiry = time.Time{}
	for _, d := range items {
		if keep(d) {
			kept = append(kept, d)
			if e := d.msg.Expires; !e.IsZero() && (q.expiry.IsZero() || e.Before(q.expiry)) {
				q.expiry = e
			}
		}
	}
	clear(items[len(kept):])
	q.buf = q.buf[:q.head+len(kept)]
	q.emptied()
	return len(items) - len(kept)
}

// reset empties the queue and lets its buffer go.
func (q *msgQueue) reset() { *q = msgQueue{} }

// emptied starts the buffer over from its beginning once nothing is
// queued.
func (q *msgQueue) emptied() {
	if q.head < len(q.buf) {
		return
	}
	if cap(q.buf) > keepQueueCap {
		q.reset()
		return
	}
	q.buf, q.head, q.expiry = q.buf[:0], 0, time.Time{}
}
