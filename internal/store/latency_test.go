package store

import (
	"fmt"
	"testing"
	"time"
)

// TestCommitLatency: every transaction is timed once, into the bucket of
// its duration.
func TestCommitLatency(t *testing.T) {
	s := mustOpen(t, testConfig(t))
	defer mustClose(t, s)
	for i := range 5 {
		mustCommit(t, s, PutRetained{&Retained{Topic: fmt.Sprintf("t/%d", i), Payload: []byte("x")}})
	}
	st := s.Stats()
	h := st.CommitLatency
	if got := h.Count(); got != uint64(st.Commits) || got != 5 {
		t.Fatalf("%d transactions timed, %d committed; want 5", got, st.Commits)
	}
	if h.Sum <= 0 || len(h.Counts) != len(h.Bounds)+1 {
		t.Fatalf("histogram %+v", h)
	}
	for i := 1; i < len(h.Bounds); i++ {
		if h.Bounds[i] <= h.Bounds[i-1] {
			t.Fatalf("bounds not ascending: %v", h.Bounds)
		}
	}
}

// TestLatencyBuckets: a duration goes to the first bucket whose bound it
// does not exceed; one beyond the last bound to the overflow count.
func TestLatencyBuckets(t *testing.T) {
	var l latency
	for _, d := range []time.Duration{50 * time.Microsecond, 100 * time.Microsecond, 101 * time.Microsecond, 3 * time.Millisecond, time.Minute} {
		l.observe(d)
	}
	h := l.snapshot()
	want := map[int]uint64{0: 2, 1: 1, 5: 1, len(h.Bounds): 1}
	for i, c := range h.Counts {
		if c != want[i] {
			t.Errorf("bucket %d (<= %v s): %d, want %d", i, append(h.Bounds, 0)[i], c, want[i])
		}
	}
	if got := time.Duration(h.Sum * 1e9); got < time.Minute || got > time.Minute+10*time.Millisecond {
		t.Errorf("sum %v", got)
	}
}
