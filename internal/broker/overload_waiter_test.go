package broker

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestOverloadWaiterNoLostWakeUp races held readers against the code
// that lets them go, on one gate, with many goroutines: a reader joins
// the line under the gate's lock and then, without it, either finds its
// token already (waiter.taken), or waits for it (waiter.block), or is
// killed while waiting, or leaves before waiting (hold.leave); wakers let
// one, two or everyone go, or release the gate. A lost wake-up leaves a
// reader waiting with nobody in line to wake it: the readers then do not
// finish, and the test aborts their waits and fails (or, if the reader
// was killed and waits in hold.leave for a token that never comes, runs
// into go test's timeout). A token left in a waiter's channel after use
// would let its next wait end early: each use must leave it empty. (It
// was written for a waiter let go by an atomic flag, with the channel
// only for a reader that blocked, which it also passed; see
// docs/performance.md, "Scenario e: the hand-over of a held publisher's
// turn".)
func TestOverloadWaiterNoLostWakeUp(t *testing.T) {
	readers, rounds := 32, 3000
	if testing.Short() {
		rounds = 300
	}
	s := &session{}
	abort := make(chan struct{})
	killed := make(chan struct{})
	close(killed)
	var lost, tokensLeft, stillQueued atomic.Int64

	var rw sync.WaitGroup
	for r := range readers {
		rw.Add(1)
		go func() {
			defer rw.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			w := &waiter{ch: make(chan struct{}, 1)}
			h := hold{sess: s, w: w}
			for range rounds {
				s.mu.Lock()
				s.gate.join(w)
				s.mu.Unlock()
				if rng.IntN(4) == 0 {
					runtime.Gosched() // let the wakers get ahead
				}
				switch rng.IntN(8) {
				case 0: // the reader stops before it waits (leaveHolds)
					h.leave()
				case 1: // killed while in line (awaitHold)
					if !w.taken() && !w.block(killed) {
						h.leave()
					}
				default: // waits for its turn
					if !w.taken() && !w.block(abort) {
						// Not h.leave: a waiter let go without a
						// token would block it too.
						lost.Add(1)
						s.mu.Lock()
						s.gate.remove(w)
						s.mu.Unlock()
						return
					}
				}
				if len(w.ch) != 0 {
					tokensLeft.Add(1)
					<-w.ch
				}
				s.mu.Lock()
				if w.queued {
					stillQueued.Add(1)
					s.gate.remove(w)
				}
				s.mu.Unlock()
			}
		}()
	}
	readersDone := make(chan struct{})
	go func() {
		rw.Wait()
		close(readersDone)
	}()

	var ww sync.WaitGroup
	for k := range 3 {
		ww.Add(1)
		go func() {
			defer ww.Done()
			rng := rand.New(rand.NewPCG(uint64(k), 2))
			for {
				select {
				case <-readersDone:
					return
				default:
				}
				s.mu.Lock()
				switch n := rng.IntN(16); {
				case n == 0:
					s.gate.release()
				case n == 1:
					s.gate.wakeAll()
				default:
					s.gate.wake(1 + n%2)
				}
				s.mu.Unlock()
				runtime.Gosched()
			}
		}()
	}

	// Not a timing assertion: the rounds take seconds even under the
	// race detector on a loaded machine; only a reader nobody can wake
	// any more takes this long.
	select {
	case <-readersDone:
	case <-time.After(2 * time.Minute):
		close(abort)
		<-readersDone
	}
	ww.Wait()
	if n := lost.Load(); n > 0 {
		t.Errorf("%d readers were never let go (a lost wake-up)", n)
	}
	if n := tokensLeft.Load(); n > 0 {
		t.Errorf("%d uses of a waiter left a token in its channel", n)
	}
	if n := stillQueued.Load(); n > 0 {
		t.Errorf("%d readers went on while still in line", n)
	}
	if len(s.gate.waiters) != 0 {
		t.Errorf("%d waiters left in line", len(s.gate.waiters))
	}
}

// TestPublisherFirstHoldStorage: a publisher in one line (a fan-in's)
// allocates only its waiter's channel, once; a second line at the same
// time gets its own waiter, and the first keeps its own.
func TestPublisherFirstHoldStorage(t *testing.T) {
	p := &publisher{}
	s1, s2 := &session{}, &session{}
	w := p.nextWaiter()
	p.addHold(hold{sess: s1, w: w})
	p.clearHolds()
	if n := testing.AllocsPerRun(100, func() {
		if p.nextWaiter() != w {
			t.Fatal("the first hold got another waiter")
		}
		p.addHold(hold{sess: s1, w: w})
		p.clearHolds()
	}); n != 0 {
		t.Errorf("a publisher's first hold, again: %v allocations, want 0", n)
	}
	fresh := &publisher{}
	if n := testing.AllocsPerRun(1, func() {
		*fresh = publisher{}
		fresh.addHold(hold{sess: s1, w: fresh.nextWaiter()})
	}); n != 1 {
		t.Errorf("a publisher's first hold: %v allocations, want 1 (the waiter's channel)", n)
	}
	p.addHold(hold{sess: s1, w: p.nextWaiter()})
	w2 := p.nextWaiter()
	if w2 == w {
		t.Fatal("a second line shares the first one's waiter")
	}
	p.addHold(hold{sess: s2, w: w2})
	if !p.holding(s1, nil) || !p.holding(s2, nil) || p.holds[0].w != w || p.holds[1].w != w2 {
		t.Fatalf("holds %+v", p.holds)
	}
}
