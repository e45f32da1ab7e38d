package store

import (
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// lateBatch commits first as one transaction while the requests of later
// wait behind it: the committer is held after it took first, later are
// submitted, then it is released. It returns every request's outcome,
// first's then later's.
func (h *heldStore) lateBatch(t *testing.T, first []Op, later ...[]Op) []error {
	t.Helper()
	h.hold.Store(true)
	errs := make([]error, 1+len(later))
	var wg sync.WaitGroup
	wg.Add(1 + len(later))
	h.CommitAsync(func(err error) { errs[0] = err; wg.Done() }, first...)
	<-h.entered
	for i, ops := range later {
		h.CommitAsync(func(err error) { errs[1+i] = err; wg.Done() }, ops...)
	}
	testutil.WaitFor(t, "the later requests to be submitted", 10*time.Second, func() bool { return h.pendingLen() == len(later) })
	h.release <- struct{}{}
	wg.Wait()
	return errs
}

// A subscriber's acknowledgement that arrives while the transaction
// storing its delivery is being applied is applied to that transaction:
// neither the delivery nor its message reaches the disk, the
// acknowledgement's own request still succeeds in its turn, and the
// store verifies. Deliveries that a request between the put and the
// acknowledgement touches, and requests that do more than delete
// deliveries, are left to their turn.
func TestLateCoalesce(t *testing.T) {
	h, cfg := openHeld(t)
	mustCommit(t, h.Store, PutSession{&Session{ClientID: "a"}}, PutSession{&Session{ClientID: "b"}})
	m1 := &Message{ID: h.NextID(), Topic: "t", Payload: []byte("one"), QoS: 1}
	m2 := &Message{ID: h.NextID(), Topic: "t", Payload: []byte("two"), QoS: 1}
	m3 := &Message{ID: h.NextID(), Topic: "t", Payload: []byte("three"), QoS: 1}
	m4 := &Message{ID: h.NextID(), Topic: "t", Payload: []byte("four"), QoS: 1}
	s1, s2, s3, s4, s5 := h.NextID(), h.NextID(), h.NextID(), h.NextID(), h.NextID()
	before := h.Stats()
	errs := h.lateBatch(t,
		[]Op{PutMessage{m1}, PutDelivery{&Delivery{ClientID: "a", Seq: s1, MsgID: m1.ID, QoS: 1}},
			PutMessage{m2}, PutDelivery{&Delivery{ClientID: "a", Seq: s2, MsgID: m2.ID, QoS: 1}},
			PutMessage{m3}, PutDelivery{&Delivery{ClientID: "b", Seq: s3, MsgID: m3.ID, QoS: 1}},
			PutMessage{m4}, PutDelivery{&Delivery{ClientID: "b", Seq: s5, MsgID: m4.ID, QoS: 1}}},
		// s1: acknowledged; applied early, m1 goes with it.
		[]Op{DeleteDelivery{"a", s1}},
		// s2: put in flight, then acknowledged: left to their turn.
		[]Op{PutDelivery{&Delivery{ClientID: "a", Seq: s2, MsgID: m2.ID, QoS: 1, State: Sent, PacketID: 7}}},
		[]Op{DeleteDelivery{"a", s2}},
		// A delivery of m3 to a, then b's acknowledgement of m3: the
		// acknowledgement waits its turn, m3 stays stored for a.
		[]Op{PutDelivery{&Delivery{ClientID: "a", Seq: s4, MsgID: m3.ID, QoS: 1}}},
		[]Op{DeleteDelivery{"b", s3}},
		// s5: acknowledged in a request that also changes a session.
		[]Op{DeleteDelivery{"b", s5}, PutSession{&Session{ClientID: "b", Owner: "user:b"}}},
	)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if d := h.Stats().Coalesced - before.Coalesced; d != 3 {
		t.Errorf("%d ops left out, want 3 (s1's put and delete, m1)", d)
	}
	if n := h.count(bktDelivery); n != 1 {
		t.Errorf("%d deliveries stored, want a's s4", n)
	}
	if n := h.count(bktMessage); n != 1 {
		t.Errorf("%d messages stored, want m3", n)
	}
	mustClose(t, h.Store)
	if rep, err := Verify(cfg); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify: %v %v", err, rep.Problems)
	}
	s := mustOpen(t, cfg)
	defer mustClose(t, s)
	rec := s.Recovered()
	if d := rec.Sessions["a"].Deliveries; len(d) != 1 || d[0].Seq != s4 || rec.Messages[m3.ID] == nil ||
		len(rec.Sessions["b"].Deliveries) != 0 || rec.Sessions["b"].Session.Owner != "user:b" {
		t.Fatalf("recovered: a %+v, b %+v", rec.Sessions["a"].Deliveries, rec.Sessions["b"])
	}
}
