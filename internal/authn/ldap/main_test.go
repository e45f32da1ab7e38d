package ldap

import (
	"testing"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMain fails the package's tests when a goroutine outlives them: a
// closed backend must have closed its pooled connections and their
// readers.
func TestMain(m *testing.M) { testutil.VerifyTestMain(m) }
