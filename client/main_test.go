package client

import (
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMain fails the package's tests when a goroutine outlives them: a
// closed Client must have stopped its reader, writer and keepalive.
func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }
