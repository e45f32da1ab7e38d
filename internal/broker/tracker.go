package broker

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
)

// goKind says what a goroutine of the server does, for the report of a
// Shutdown that could not wait for all of them.
type goKind int

const (
	goConnect goKind = iota // TLS handshake and CONNECT (conn.serve)
	goReader                // a connection's reader (readMain, readQuiet, readWoken)
	goWriter                // a connection's writer (writeLoop)
	goSys                   // the $SYS publisher (sysLoop)
	goTimer                 // a session expiry or will delay timer running
	goPoller                // the poller of parked quiet connections (park_linux.go)
	numGoKinds
)

var goKindNames = [numGoKinds]string{"connecting", "reader", "writer", "$SYS publisher", "timer", "quiet-connection poller"}

// tracker counts the goroutines the server started, by kind, so that
// Shutdown can wait for all of them and, when it cannot, say which are
// left. Every goroutine of the server is started through it (go) or, for
// timers, counted by it (add and done).
//
// After close, the count only falls: a goroutine is started either by a
// tracked goroutine that is still running (its own count keeps the total
// above zero) or by the accept loop and the timers, which check
// Server.closed under Server.mu first, and Shutdown sets closed before it
// calls close. Counters are atomics, as one writer goroutine starts per
// batch of outbound packets.
type tracker struct {
	total    atomic.Int64
	byKind   [numGoKinds]atomic.Int64
	closing  atomic.Bool
	idleOnce sync.Once
	idle     chan struct{} // closed when closing and the total is 0
}

func newTracker() *tracker { return &tracker{idle: make(chan struct{})} }

// goTracked runs f on a new goroutine counted as kind k.
func (t *tracker) goTracked(k goKind, f func()) {
	t.add(k)
	go func() {
		defer t.done(k)
		f()
	}()
}

func (t *tracker) add(k goKind) {
	t.total.Add(1)
	t.byKind[k].Add(1)
}

func (t *tracker) done(k goKind) {
	t.byKind[k].Add(-1)
	if t.total.Add(-1) == 0 && t.closing.Load() {
		t.idleOnce.Do(func() { close(t.idle) })
	}
}

// close marks the end of the server and returns a channel that is closed
// once no tracked goroutine runs.
func (t *tracker) close() <-chan struct{} {
	t.closing.Store(true)
	if t.total.Load() == 0 {
		t.idleOnce.Do(func() { close(t.idle) })
	}
	return t.idle
}

// running describes the goroutines still running, by kind
// ("reader: 2, writer: 1"), or returns "" when none is.
func (t *tracker) running() string {
	var b strings.Builder
	for k := range numGoKinds {
		if n := t.byKind[k].Load(); n > 0 {
			if b.Len() > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s: %d", goKindNames[k], n)
		}
	}
	return b.String()
}
