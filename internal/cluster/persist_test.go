package cluster

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A publication whose commit deadline has passed is not handed to the
// library (which refuses a stall wait that is not positive with an error
// naming no cause): it fails at once as a deadline, which the publisher
// counts as a failed commit and the client sends again.
func TestPublishByPastDeadline(t *testing.T) {
	t.Parallel()
	paf, err := publishBy(nil, nil, time.Now().Add(-time.Millisecond))
	if paf != nil || !errors.Is(err, errCommitDeadline) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publishBy past its deadline = %v, %v; want errCommitDeadline", paf, err)
	}
}
