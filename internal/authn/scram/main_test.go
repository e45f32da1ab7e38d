package scram

import (
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMain fails the package's tests when a goroutine outlives them.
func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }
