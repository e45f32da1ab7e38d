package broker

import (
	"slices"
	"testing"
	"time"
)

// TestMsgQueue checks the queue against a plain slice through pushes,
// pops from the front and filters, and that a queue held at a constant
// length while messages pass through it keeps a bounded buffer: the space
// before the head is reused instead of the buffer growing without end.
func TestMsgQueue(t *testing.T) {
	var q msgQueue
	var model []*delivery
	check := func(step string) {
		t.Helper()
		if q.len() != len(model) || !slices.Equal(q.items(), model) {
			t.Fatalf("%s: queue %d items, model %d", step, q.len(), len(model))
		}
		for _, d := range q.buf[:q.head] {
			if d != nil {
				t.Fatalf("%s: a taken delivery is still referenced before the head", step)
			}
		}
	}
	ds := make([]*delivery, 5000)
	for i := range ds {
		ds[i] = &delivery{pid: uint16(i), msg: &Message{Topic: "t"}}
	}
	next := 0
	push := func(n int) {
		for range n {
			d := ds[next%len(ds)]
			next++
			q.push(d)
			model = append(model, d)
		}
	}
	push(300)
	check("pushed")
	q.popFront(100)
	model = model[100:]
	check("popped")
	// Held at 200 while 100,000 messages pass: one in, one out.
	maxCap := 0
	for i := range 100_000 {
		push(1)
		q.popFront(1)
		model = model[1:]
		maxCap = max(maxCap, cap(q.buf))
		if i%9973 == 0 {
			check("steady")
		}
	}
	check("steady")
	if maxCap > 4*200 {
		t.Fatalf("buffer grew to %d for a queue of 200", maxCap)
	}
	removed := q.filter(func(d *delivery) bool { return d.pid%3 != 0 })
	var kept []*delivery
	for _, d := range model {
		if d.pid%3 != 0 {
			kept = append(kept, d)
		}
	}
	if removed != len(model)-len(kept) {
		t.Fatalf("filter removed %d, want %d", removed, len(model)-len(kept))
	}
	model = kept
	check("filtered")
	q.popFront(q.len())
	model = nil
	check("emptied")
	if q.head != 0 || len(q.buf) != 0 {
		t.Fatalf("an empty queue starts over: head %d, len %d", q.head, len(q.buf))
	}
	// A backlog that drained lets its large buffer go.
	push(2000)
	q.popFront(2000)
	model = nil
	check("drained")
	if cap(q.buf) > keepQueueCap {
		t.Fatalf("an emptied queue keeps a buffer of %d", cap(q.buf))
	}
}

// TestMsgQueueExpiry: the queue knows when a message in it may have
// expired, so that a full queue is searched for expired messages only
// then; never too late, and exactly again after a search.
func TestMsgQueueExpiry(t *testing.T) {
	t0 := time.Now()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	d := func(expires int) *delivery {
		m := &Message{Topic: "t"}
		if expires > 0 {
			m.Expires = at(expires)
		}
		return &delivery{msg: m}
	}
	var q msgQueue
	q.push(d(0))
	if q.mayHaveExpired(at(1000)) {
		t.Fatal("a queue of messages that never expire may have expired ones")
	}
	q.push(d(30))
	q.push(d(10))
	q.push(d(20))
	if q.mayHaveExpired(at(9)) || !q.mayHaveExpired(at(10)) {
		t.Fatal("the earliest expiry is not 10 s")
	}
	// The search removes the expired message; the next expiry is exact.
	now := at(15)
	if n := q.filter(func(d *delivery) bool { return !d.msg.expired(now) }); n != 1 {
		t.Fatalf("removed %d", n)
	}
	if q.mayHaveExpired(at(19)) || !q.mayHaveExpired(at(20)) {
		t.Fatal("after the search the earliest expiry is not 20 s")
	}
	// Taking from the front may leave the bound early, never late.
	q.popFront(2) // the message that never expires and the one at 30 s
	if !q.mayHaveExpired(at(20)) {
		t.Fatal("the message expiring at 20 s is not seen")
	}
	q.popFront(1)
	if q.mayHaveExpired(at(1000)) {
		t.Fatal("an empty queue may have expired messages")
	}
}
