package broker

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock for tests: its time moves only when advance is
// called, which runs the timers that fall due, in order of their time, on
// the caller's goroutine, so a test that advances past a session's expiry
// finds the session gone when advance returns.
type fakeClock struct {
	mu     sync.Mutex
	t      time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *fakeClock
	when time.Time
	f    func()
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, when: c.t.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

// Stop removes the timer if it has not fired.
func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i < 0 {
		return false
	}
	t.c.timers = slices.Delete(t.c.timers, i, i+1)
	return true
}

// pending returns the number of timers that have not fired.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// advance moves the time forward by d, running every timer that falls
// due at its own time (a timer may set new ones, which run too if due).
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	end := c.t.Add(d)
	for {
		i := -1
		for j, t := range c.timers {
			if !t.when.After(end) && (i < 0 || t.when.Before(c.timers[i].when)) {
				i = j
			}
		}
		if i < 0 {
			break
		}
		t := c.timers[i]
		c.timers = slices.Delete(c.timers, i, i+1)
		if t.when.After(c.t) {
			c.t = t.when
		}
		c.mu.Unlock()
		t.f() // without the lock: f may read the clock or set a timer
		c.mu.Lock()
	}
	c.t = end
	c.mu.Unlock()
}

func TestFakeClock(t *testing.T) {
	c := newFakeClock()
	start := c.Now()
	var fired []time.Duration
	at := func(d time.Duration) func() {
		return func() { fired = append(fired, c.Now().Sub(start)) }
	}
	c.AfterFunc(3*time.Second, at(3*time.Second))
	c.AfterFunc(time.Second, func() {
		at(time.Second)()
		c.AfterFunc(time.Second, at(2*time.Second)) // due at 2 s
	})
	stopped := c.AfterFunc(2500*time.Millisecond, at(0))
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop of a pending timer must report true once")
	}
	c.advance(2500 * time.Millisecond)
	if !slices.Equal(fired, []time.Duration{time.Second, 2 * time.Second}) || c.Now().Sub(start) != 2500*time.Millisecond {
		t.Fatalf("fired at %v, now %v", fired, c.Now().Sub(start))
	}
	c.advance(time.Second)
	if len(fired) != 3 || fired[2] != 3*time.Second || c.pending() != 0 {
		t.Fatalf("fired at %v, %d pending", fired, c.pending())
	}
}

func TestConfigClockAndNow(t *testing.T) {
	_, err := New(Config{Clock: newFakeClock(), Now: time.Now, Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "Clock and Now") {
		t.Fatalf("New with Clock and Now: %v", err)
	}
	// Now alone still sets the time of the system clock.
	c := newFakeClock()
	s, err := New(Config{Now: c.Now, SysInterval: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	if got := s.cfg.Clock.Now(); !got.Equal(c.Now()) {
		t.Fatalf("Clock.Now = %v, want Now's %v", got, c.Now())
	}
}
