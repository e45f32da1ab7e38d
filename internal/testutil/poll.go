package testutil

import (
	"errors"
	"testing"
	"time"
)

// CheckFor calls f until it returns nil, waiting a little longer between
// calls each time (1 ms doubling up to 50 ms). When d has passed it fails
// the test with f's last error. Use it instead of a fixed sleep whenever a
// test waits for another goroutine or process.
func CheckFor(t testing.TB, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	wait := time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", d, err)
		}
		time.Sleep(wait)
		if wait < 50*time.Millisecond {
			wait *= 2
		}
	}
}

// WaitFor is CheckFor for a condition without an error of its own: it
// fails the test with "timed out waiting for what" when cond has not held
// within d.
func WaitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	CheckFor(t, d, func() error {
		if cond() {
			return nil
		}
		return errors.New("timed out waiting for " + what)
	})
}
