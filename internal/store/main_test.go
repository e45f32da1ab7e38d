package store

import (
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMain fails the package's tests when a goroutine outlives them: a
// closed Store must have stopped its committer and sync ticker.
func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }
