package cluster

import (
	"context"
	"sync"
	"time"
)

// A request to a stream's leader that reaches it as it dies is never
// answered: its attempt runs out its time (3 s for a session record),
// and the one made after it goes to the new leader. Elections end at any
// point of an attempt, so a claim waiting for `moat_sessions` went on
// 1.3 to 3.9 s after the election in an outside kill series, and once
// past its client's wait for CONNACK. An attempt made with
// electionWatch.attempt ends as soon as this node hears of the stream's
// next election (the advisory publisher.watchLeaders subscribes to),
// and the request is made again at once to the new leader. Without the
// advisories (an external NATS that does not allow them) attempts run
// their time as before.

// electionWatch ends the attempts under way of requests to a stream's
// leader when it elects another.
type electionWatch struct {
	mu   sync.Mutex
	next uint64
	// waiting holds, per stream, the cancel functions of the attempts
	// under way by their numbers.
	waiting map[string]map[uint64]context.CancelFunc
	// ended counts the attempts an election ended.
	ended uint64
}

// attempt returns a context for one request to stream's leader: ended
// by ctx, after d, or at the stream's next election, whichever comes
// first. done releases it.
func (w *electionWatch) attempt(ctx context.Context, stream string, d time.Duration) (actx context.Context, done func()) {
	actx, cancel := context.WithTimeout(ctx, d)
	w.mu.Lock()
	if w.waiting == nil {
		w.waiting = make(map[string]map[uint64]context.CancelFunc)
	}
	m := w.waiting[stream]
	if m == nil {
		m = make(map[uint64]context.CancelFunc)
		w.waiting[stream] = m
	}
	w.next++
	k := w.next
	m[k] = cancel
	w.mu.Unlock()
	return actx, func() {
		w.mu.Lock()
		delete(m, k)
		w.mu.Unlock()
		cancel()
	}
}

// elected ends the attempts under way of requests to stream's leader:
// a new one was elected.
func (w *electionWatch) elected(stream string) {
	w.mu.Lock()
	m := w.waiting[stream]
	w.ended += uint64(len(m))
	var cancels []context.CancelFunc
	for k, cancel := range m {
		cancels = append(cancels, cancel)
		delete(m, k)
	}
	w.mu.Unlock()
	for _, cancel := range cancels {
		cancel()
	}
}

// endedAttempts returns how many attempts elections ended.
func (w *electionWatch) endedAttempts() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ended
}
