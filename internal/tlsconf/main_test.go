package tlsconf

import (
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMain fails the package's tests when a goroutine outlives them: every
// Manager, watcher and test responder must be stopped by its owner.
func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }
