package audit

import (
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMain fails the package's tests when a goroutine outlives them: a
// closed Log must have stopped its writer and shipper goroutines.
func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }
