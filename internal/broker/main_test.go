package broker

import (
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMain fails the package's tests when a goroutine is still running
// after all of them: every goroutine the server starts is waited for by
// Shutdown, and every test helper waits for the goroutines it starts.
func TestMain(m *testing.M) {
	testutil.VerifyTestMain(m)
}
