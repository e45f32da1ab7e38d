package guard

import (
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMain fails the package's tests when a goroutine outlives them: a
// closed Guard must have stopped its sweeper.
func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }
