package broker

import "time"

// Clock is the server's source of time for what the protocol times: the
// time stamps of messages and sessions, message expiry, and the timers of
// session expiry, will delay and the wait for a taken-over connection.
// Implementations must be safe for concurrent use. Socket deadlines (the
// connect timeout, keep alive, write timeout, the close grace) are not
// taken from it: the network poller measures them on the system clock.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// AfterFunc calls f on a goroutine of its own once d has passed, as
	// time.AfterFunc does, unless the returned Timer is stopped first.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending call of Clock.AfterFunc. *time.Timer implements it.
type Timer interface {
	// Stop prevents the call if it has not started and reports whether
	// it did so, as time.Timer.Stop does.
	Stop() bool
}

// systemClock is the default Clock: now (time.Now, or Config.Now) and the
// runtime's timers.
type systemClock struct{ now func() time.Time }

func (c systemClock) Now() time.Time { return c.now() }

func (systemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

var _ Clock = systemClock{}

// afterFunc runs f once d has passed on the server's clock, counted by
// the goroutine tracker like every goroutine of the server. A timer that
// fires once Shutdown has begun does nothing: Shutdown stops the timers
// and publishes no wills.
func (s *Server) afterFunc(d time.Duration, f func()) Timer {
	return s.cfg.Clock.AfterFunc(d, func() {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		// Counted under mu, so that Shutdown, which sets closed under
		// mu before it waits, either waits for f or f never runs.
		s.goroutines.add(goTimer)
		s.mu.Unlock()
		defer s.goroutines.done(goTimer)
		f()
	})
}

// wait waits until d has passed on the server's clock, or until stop or
// stop2 is closed (either may be nil), and reports whether d passed.
func (s *Server) wait(d time.Duration, stop, stop2 <-chan struct{}) bool {
	passed := make(chan struct{})
	t := s.cfg.Clock.AfterFunc(d, func() { close(passed) })
	defer t.Stop()
	select {
	case <-passed:
		return true
	case <-stop:
	case <-stop2:
	}
	return false
}
