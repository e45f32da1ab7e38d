package broker

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Broker-wide memory limits: the default connection cap, the read budget
// and the accounting of retained messages.

// fdReserve is kept out of the connection cap for listeners, the store,
// log files and outgoing connections (OCSP, CRL).
const fdReserve = 64

// noFileFallback is the connection cap when the open-file limit cannot be
// read or is unlimited.
const noFileFallback = 65536

// DefaultMaxConnections is the connection cap used when
// Config.MaxConnections is 0: RLIMIT_NOFILE less 64, at least 64 (65536
// where the limit is unknown or unlimited). Past the open-file limit,
// accept fails anyway, and every descriptor also costs memory.
func DefaultMaxConnections() int {
	n := openFileLimit()
	if n == 0 || n > 1<<30 {
		return noFileFallback
	}
	return int(max(n, 2*fdReserve) - fdReserve)
}

// readBudgetThreshold: packet bodies up to this size are read without
// reserving budget (the read buffer alone is 1 KiB, and each connection
// may hold one such body; the connection cap bounds their sum).
const readBudgetThreshold = 4 << 10

// errBudgetWait is returned when a connection gave up waiting for read
// budget: it is closing, the server is shutting down, or the connect
// deadline passed.
var errBudgetWait = errors.New("broker: gave up waiting for read budget")

// byteBudget is a counting semaphore of bytes, granted in FIFO order so
// that a large request is not starved by small ones. Safe for concurrent
// use.
type byteBudget struct {
	size int64

	mu      sync.Mutex
	used    int64
	waiters []*budgetWaiter

	inUse   atomic.Int64 // mirror of used, for Stats
	maxUsed atomic.Int64 // highest used so far
	waits   atomic.Int64 // acquisitions that had to wait
}

type budgetWaiter struct {
	n     int64
	ready chan struct{} // closed once granted
}

// acquire reserves n bytes (at most the whole budget) and returns the
// amount reserved, which the caller must release. It waits while the
// budget is spent, until deadline (zero: none) or until closed or
// shutdown is closed.
func (b *byteBudget) acquire(n int64, deadline time.Time, closed, shutdown <-chan struct{}) (int64, error) {
	n = min(n, b.size)
	b.mu.Lock()
	if len(b.waiters) == 0 && b.used+n <= b.size {
		b.grantLocked(n)
		b.mu.Unlock()
		return n, nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	b.waits.Add(1)

	var timeout <-chan time.Time
	if !deadline.IsZero() {
		// The system clock, not Config.Clock: deadline is the
		// connection's connect deadline, which its socket measures on
		// the system clock too.
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-w.ready:
		return n, nil
	case <-timeout:
	case <-closed:
	case <-shutdown:
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready:
		// Granted while giving up: hand it back.
		b.releaseLocked(n)
	default:
		for i, x := range b.waiters {
			if x == w {
				b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
				break
			}
		}
		b.wakeLocked() // the head may have changed
	}
	return 0, errBudgetWait
}

// release returns n bytes reserved by acquire.
func (b *byteBudget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.releaseLocked(n)
	b.mu.Unlock()
}

func (b *byteBudget) releaseLocked(n int64) {
	b.used -= n
	b.inUse.Store(b.used)
	b.wakeLocked()
}

func (b *byteBudget) grantLocked(n int64) {
	b.used += n
	b.inUse.Store(b.used)
	if b.used > b.maxUsed.Load() {
		b.maxUsed.Store(b.used)
	}
}

// wakeLocked grants waiting requests in order while they fit.
func (b *byteBudget) wakeLocked() {
	for len(b.waiters) > 0 && b.used+b.waiters[0].n <= b.size {
		w := b.waiters[0]
		b.waiters[0] = nil
		b.waiters = b.waiters[1:]
		b.grantLocked(w.n)
		close(w.ready)
	}
}

// waiting returns the number of requests waiting.
func (b *byteBudget) waiting() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.waiters)
}
