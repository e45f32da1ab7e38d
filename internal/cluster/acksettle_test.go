package cluster

import (
	"context"
	"testing"
	"time"
)

// TestCleanStopSettlesFloor: at a clean stop the acknowledgement floor
// is confirmed by the consumer's leader, both when an acknowledgement is
// still owed and when the last one sent never reached the leader.
func TestCleanStopSettlesFloor(t *testing.T) {
	js, _, c := ackTestStream(t)
	q := newAckQueue()
	q.cons = c
	route := func(from, to int) uint64 {
		t.Helper()
		publishAckTest(t, js, from, to)
		var last uint64
		for _, m := range fetch(t, c, to-from, 10*time.Second) {
			seq := streamSeq(t, m)
			if !q.admit(m, seq) {
				t.Fatalf("record %d not admitted", seq)
			}
			q.finish(seq, true)
			last = seq
		}
		return last
	}
	settle := func(want uint64, what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		q.settle(ctx, js.Conn())
		if got := ackInfo(t, c).AckFloor.Stream; got != want {
			t.Fatalf("%s: floor %d after settling, want %d", what, got, want)
		}
	}

	// Owed: fewer records than one acknowledgement waits for, and no
	// run to send it after its window.
	last := route(0, 5)
	if got := ackInfo(t, c).AckFloor.Stream; got != 0 {
		t.Fatalf("floor %d before settling, want 0 (nothing sent yet)", got)
	}
	settle(last, "owed")

	// Sent and lost on its way: noted as sent, never delivered.
	last = route(5, 10)
	q.mu.Lock()
	q.takeOwedLocked()
	q.mu.Unlock()
	if got := ackInfo(t, c).AckFloor.Stream; got >= last {
		t.Fatalf("floor %d before settling, want below %d", got, last)
	}
	settle(last, "lost")
}
