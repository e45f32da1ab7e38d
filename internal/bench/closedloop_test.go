package bench

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

func TestReserveKeepsBacklogExact(t *testing.T) {
	r := &run{cfg: Config{Scenario: FanIn, Subs: 1, MaxBacklog: 3}, room: make(chan struct{}, 16)}
	for i := range 3 {
		if !r.tryReserve() {
			t.Fatalf("reservation %d refused under the limit", i+1)
		}
	}
	if r.tryReserve() {
		t.Fatal("a fourth reservation passed a backlog of 3")
	}
	r.release(1)
	if !r.tryReserve() {
		t.Fatal("no room after a delivery")
	}

	// A fan-out wider than the limit still sends one message at a time.
	w := &run{cfg: Config{Scenario: FanOut, Subs: 10, MaxBacklog: 5}, room: make(chan struct{}, 16)}
	if !w.tryReserve() {
		t.Fatal("first message of a wide fan-out refused")
	}
	if w.tryReserve() {
		t.Fatal("second message passed while the first is outstanding")
	}
}

// TestSequenceGapsReturnReservations feeds a subscriber PUBLISHes of one
// publisher with sequence numbers 1, 2, 5, 3: the jump from 2 to 5 gives
// back the reservations of 3 and 4, and the late 3 gives back nothing.
func TestSequenceGapsReturnReservations(t *testing.T) {
	r := &run{cfg: Config{Scenario: FanIn, Subs: 1, Pubs: 1, MaxBacklog: 100, PayloadSize: 64},
		runID: 42, errs: map[string]int{}, room: make(chan struct{}, 16)}
	c := &client{r: r, lastSeq: make([]uint32, 2)}
	r.pending.Store(5) // the five messages sent
	deliver := func(seq uint32) {
		payload := make([]byte, 64)
		binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
		binary.BigEndian.PutUint64(payload[8:], 42)
		binary.BigEndian.PutUint32(payload[16:], 1) // publisher index
		binary.BigEndian.PutUint32(payload[20:], seq)
		raw, err := packet.Append(nil, &packet.Publish{QoS: 1, PacketID: uint16(seq), Topic: "bench/in/0", Payload: payload}, packet.V311)
		if err != nil {
			t.Fatal(err)
		}
		c.onPublish(raw)
	}
	for _, tc := range []struct {
		seq         uint32
		wantPending int64
	}{{1, 4}, {2, 3}, {5, 0}, {3, 0}} {
		deliver(tc.seq)
		if got := r.pending.Load(); got != tc.wantPending {
			t.Fatalf("after seq %d: pending %d, want %d", tc.seq, got, tc.wantPending)
		}
	}
	if r.outOfOrder.Load() != 1 || r.delivered.Load() != 4 {
		t.Fatalf("out of order %d (want 1), delivered %d (want 4)", r.outOfOrder.Load(), r.delivered.Load())
	}
}

func TestReserveWaitsForDeliveries(t *testing.T) {
	r := &run{cfg: Config{Scenario: FanIn, Subs: 1, MaxBacklog: 2}, room: make(chan struct{}, 16)}
	r.wakeAt = 1
	r.tryReserve()
	r.tryReserve()
	got := make(chan bool)
	go func() {
		got <- r.reserve(make(chan struct{}), time.NewTimer(time.Hour))
	}()
	select {
	case <-got:
		t.Fatal("reserve returned with the backlog full")
	case <-time.After(50 * time.Millisecond):
	}
	r.release(1)
	select {
	case ok := <-got:
		if !ok || r.pending.Load() != 2 {
			t.Fatalf("reserve = %v, pending %d; want true, 2", ok, r.pending.Load())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a delivery did not wake the waiting publisher")
	}
}
