package store

import "testing"

// A delivery replaced or deleted by a later transaction is taken out of
// the digest with what the committer remembers of it when it wrote it
// (its element and message), without opening it; one it does not
// remember (written before a restart, or forgotten) is opened as before.
// Either way the store verifies and the messages are released.
func TestRecentRecordsKeepTheDigest(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	mustCommit(t, s, PutSession{&Session{ClientID: "a"}})
	m1 := &Message{ID: s.NextID(), Topic: "t", Payload: []byte("one"), QoS: 1}
	m2 := &Message{ID: s.NextID(), Topic: "t", Payload: []byte("two"), QoS: 1}
	d1 := &Delivery{ClientID: "a", Seq: s.NextID(), MsgID: m1.ID, QoS: 1}
	d2 := &Delivery{ClientID: "a", Seq: s.NextID(), MsgID: m2.ID, QoS: 1}
	mustCommit(t, s, PutMessage{m1}, PutDelivery{d1}, PutMessage{m2}, PutDelivery{d2})
	if len(s.recent.dlv) != 2 || len(s.recent.msg) != 2 {
		t.Fatalf("remembered %d deliveries and %d messages, want 2 and 2", len(s.recent.dlv), len(s.recent.msg))
	}
	// Replaced (remembered), then deleted (the replacement remembered).
	mustCommit(t, s, PutDelivery{&Delivery{ClientID: "a", Seq: d1.Seq, MsgID: m1.ID, QoS: 1, State: Sent, PacketID: 3}})
	mustCommit(t, s, DeleteDelivery{"a", d1.Seq})
	// Forgotten: opened to find its message.
	s.recent = recentRecords{}
	mustCommit(t, s, DeleteDelivery{"a", d2.Seq})
	if n := countBucket(t, s, bktDelivery) + countBucket(t, s, bktMessage); n != 0 {
		t.Fatalf("%d deliveries and messages left, want none", n)
	}
	mustClose(t, s)
	if rep, err := Verify(cfg); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify: %v %v", err, rep.Problems)
	}
	// After a restart nothing is remembered; the records written before
	// it are opened.
	s = mustOpen(t, cfg)
	m3 := &Message{ID: s.NextID(), Topic: "t", Payload: []byte("three"), QoS: 1}
	d3 := &Delivery{ClientID: "a", Seq: s.NextID(), MsgID: m3.ID, QoS: 1}
	mustCommit(t, s, PutMessage{m3}, PutDelivery{d3})
	mustClose(t, s)
	s = mustOpen(t, cfg)
	mustCommit(t, s, DeleteDelivery{"a", d3.Seq})
	mustClose(t, s)
	if rep, err := Verify(cfg); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify after the restart: %v %v", err, rep.Problems)
	}
}
