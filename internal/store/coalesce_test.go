package store

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/moatmq/moat/internal/testutil"
)

// heldStore opens a store whose committer can be held before a
// transaction, so that the requests submitted meanwhile form one batch.
type heldStore struct {
	*Store
	hold    atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func openHeld(t *testing.T) (*heldStore, Config) {
	t.Helper()
	h := &heldStore{entered: make(chan struct{}), release: make(chan struct{})}
	cfg := testConfig(t)
	cfg.hooks = &hooks{beforeCommit: func(int) {
		if h.hold.CompareAndSwap(true, false) {
			h.entered <- struct{}{}
			<-h.release
		}
	}}
	h.Store = mustOpen(t, cfg)
	return h, cfg
}

// batch commits the requests (each a list of ops) in one transaction: a
// first commit holds the committer until they are all submitted. It
// returns each request's outcome.
func (h *heldStore) batch(t *testing.T, reqs ...[]Op) []error {
	t.Helper()
	h.hold.Store(true)
	go h.CommitAsync(func(error) {})
	<-h.entered
	errs := make([]error, len(reqs))
	var wg sync.WaitGroup
	for i, ops := range reqs {
		wg.Add(1)
		h.CommitAsync(func(err error) { errs[i] = err; wg.Done() }, ops...)
	}
	testutil.WaitFor(t, "the batch to be submitted", 10*time.Second, func() bool { return h.pendingLen() == len(reqs) })
	h.release <- struct{}{}
	wg.Wait()
	return errs
}

func (h *heldStore) count(bucket []byte) int {
	n := 0
	h.syncView(func(tx *bolt.Tx) error { n = tx.Bucket(bucket).Stats().KeyN; return nil })
	return n
}

// A delivery its subscriber acknowledged before the commit that stores it
// is not written, and neither is its message unless another delivery
// refers to it; every request still succeeds, and the store verifies.
// A batch with nothing left to write takes no transaction and no fsync.
func TestCoalesceAcknowledgedBeforeCommit(t *testing.T) {
	h, cfg := openHeld(t)
	mustCommit(t, h.Store, PutSession{&Session{ClientID: "a"}}, PutSession{&Session{ClientID: "b"}})
	m1 := &Message{ID: h.NextID(), Topic: "t", Payload: []byte("one"), QoS: 1}
	m2 := &Message{ID: h.NextID(), Topic: "t", Payload: []byte("two"), QoS: 1}
	s1, s2, s3 := h.NextID(), h.NextID(), h.NextID()
	before := h.Stats()
	errs := h.batch(t,
		[]Op{PutMessage{m1}, PutDelivery{&Delivery{ClientID: "a", Seq: s1, MsgID: m1.ID, QoS: 1}}},
		[]Op{DeleteDelivery{"a", s1}},
		[]Op{PutMessage{m2}, PutDelivery{&Delivery{ClientID: "a", Seq: s2, MsgID: m2.ID, QoS: 1}},
			PutDelivery{&Delivery{ClientID: "b", Seq: s3, MsgID: m2.ID, QoS: 1}}},
		[]Op{PutDelivery{&Delivery{ClientID: "a", Seq: s2, MsgID: m2.ID, QoS: 1, State: Sent, PacketID: 4}}},
		[]Op{DeleteDelivery{"a", s2}},
		nil, // a request without ops (an ordering barrier)
	)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	st := h.Stats()
	if d := st.Coalesced - before.Coalesced; d != 6 {
		t.Errorf("%d ops left out, want 6 (m1, its delivery and delete, a's two puts of s2 and its delete)", d)
	}
	if h.count(bktMessage) != 1 || h.count(bktDelivery) != 1 {
		t.Errorf("%d messages and %d deliveries stored, want m2 and b's delivery", h.count(bktMessage), h.count(bktDelivery))
	}

	// Everything cancels out: no transaction, no fsync.
	m3 := &Message{ID: h.NextID(), Topic: "t", QoS: 1}
	s4 := h.NextID()
	before = h.Stats()
	h.batch(t, []Op{PutMessage{m3}, PutDelivery{&Delivery{ClientID: "a", Seq: s4, MsgID: m3.ID, QoS: 1}}},
		[]Op{DeleteDelivery{"a", s4}})
	if st := h.Stats(); st.Commits != before.Commits || st.Syncs != before.Syncs || st.Requests-before.Requests != 3 {
		t.Errorf("a batch with nothing to write (and the holding request without ops): %d transactions, %d fsyncs",
			st.Commits-before.Commits, st.Syncs-before.Syncs)
	}
	mustClose(t, h.Store)
	if rep, err := Verify(cfg); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify: %v %v", err, rep.Problems)
	}
	s := mustOpen(t, cfg)
	defer mustClose(t, s)
	rec := s.Recovered()
	if d := rec.Sessions["b"].Deliveries; len(d) != 1 || d[0].Seq != s3 || rec.Messages[m2.ID] == nil || len(rec.Sessions["a"].Deliveries) != 0 {
		t.Fatalf("recovered: a %+v, b %+v", rec.Sessions["a"].Deliveries, rec.Sessions["b"].Deliveries)
	}
}

// Only what was not stored before the batch is left out: a stored
// delivery updated and deleted in one batch is deleted, and a session
// deleted in the batch keeps its ops as they are; a delivery of a session
// that is not stored still fails.
func TestCoalesceOnlyNewDeliveries(t *testing.T) {
	h, _ := openHeld(t)
	defer mustClose(t, h.Store)
	m := &Message{ID: h.NextID(), Topic: "t", QoS: 1}
	s1 := h.NextID()
	mustCommit(t, h.Store, PutSession{&Session{ClientID: "a"}}, PutSession{&Session{ClientID: "c"}}, PutMessage{m},
		PutDelivery{&Delivery{ClientID: "a", Seq: s1, MsgID: m.ID, QoS: 1}})
	m2 := &Message{ID: h.NextID(), Topic: "t", QoS: 1}
	s2, s3 := h.NextID(), h.NextID()
	before := h.Stats()
	errs := h.batch(t,
		[]Op{PutDelivery{&Delivery{ClientID: "a", Seq: s1, MsgID: m.ID, QoS: 1, State: Sent, PacketID: 1}}},
		[]Op{DeleteDelivery{"a", s1}},
		[]Op{PutMessage{m2}, PutDelivery{&Delivery{ClientID: "c", Seq: s2, MsgID: m2.ID, QoS: 1}}},
		[]Op{DeleteSession{"c"}},
		[]Op{DeleteDelivery{"c", s2}},
		[]Op{PutMessage{m2}, PutDelivery{&Delivery{ClientID: "nobody", Seq: s3, MsgID: m2.ID, QoS: 1}}},
		[]Op{DeleteDelivery{"nobody", s3}},
	)
	for i, err := range errs {
		if want := i == 5; (err != nil) != want {
			t.Errorf("request %d: %v", i, err)
		}
	}
	if d := h.Stats().Coalesced - before.Coalesced; d != 0 {
		t.Errorf("%d ops left out, want none", d)
	}
	if h.count(bktDelivery) != 0 || h.count(bktMessage) != 0 || h.count(bktSession) != 1 {
		t.Errorf("left: %d deliveries, %d messages, %d sessions", h.count(bktDelivery), h.count(bktMessage), h.count(bktSession))
	}
}
