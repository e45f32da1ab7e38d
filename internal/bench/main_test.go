package bench_test

import (
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMain fails the package's tests when a goroutine outlives them: a
// finished Run must have closed every client connection it opened.
func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }
