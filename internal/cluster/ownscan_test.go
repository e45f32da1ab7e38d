package cluster

import (
	"testing"
	"time"
)

// TestOwnWait: a claim waits for its node's commits and the stream's
// length as long as its client still waits for CONNACK less a second,
// never less than requestAttempt (an old home that took long, an
// adoption) nor more than ownWaitMax (a long connect timeout).
func TestOwnWait(t *testing.T) {
	for _, tc := range []struct {
		left  time.Duration
		known bool
		want  time.Duration
	}{
		{0, false, requestAttempt},
		{10 * time.Second, true, 9 * time.Second}, // the default connect timeout, an old home answering at once
		{8 * time.Second, true, 7 * time.Second},
		{5 * time.Second, true, requestAttempt}, // an old home that took half of it
		{-time.Second, true, requestAttempt},    // past the deadline
		{3 * time.Minute, true, ownWaitMax},
	} {
		if got := ownWait(tc.left, tc.known); got != tc.want {
			t.Errorf("ownWait(%v, %v) = %v, want %v", tc.left, tc.known, got, tc.want)
		}
	}
}
