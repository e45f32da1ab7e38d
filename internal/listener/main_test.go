package listener

import (
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMain fails the package's tests when a goroutine outlives them: a
// closed Listener must have stopped its accept loop and handshakes.
func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }
