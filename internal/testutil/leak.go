package testutil

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// VerifyTestMain runs the package's tests and then fails the run when a
// goroutine the tests started is still running: every goroutine has an
// owner that waits for it. Call it from TestMain:
//
//	func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }
//
// Goroutines of third-party libraries that cannot be stopped are ignored
// here, one option per library with the reason; there are none today.
//
// cleanups run after the tests and the leak check, before the process
// exits with the tests' status: they remove what TestMain made (a binary
// it built).
func VerifyTestMain(m *testing.M, cleanups ...func()) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		for _, c := range cleanups {
			c()
		}
		os.Exit(code)
	}))
}

// CheckNoLeaks checks, when t ends, that every goroutine started during t
// has ended (goroutines running before the call are ignored). It names the
// leaking test where VerifyTestMain only names the package. Call it first
// in the test so that its check runs after the test's other cleanups, and
// do not use it in tests that run in parallel with others.
func CheckNoLeaks(t *testing.T) {
	t.Helper()
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if err := goleak.Find(before); err != nil {
			t.Errorf("goroutine leak: %v", err)
		}
	})
}
