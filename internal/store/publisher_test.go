package store

import (
	"testing"

	bolt "go.etcd.io/bbolt"
)

func countBucket(t *testing.T, s *Store, bucket []byte) int {
	t.Helper()
	n := 0
	s.syncView(func(tx *bolt.Tx) error { n = tx.Bucket(bucket).Stats().KeyN; return nil })
	return n
}

// A publisher named by several retained messages and a will is stored
// once; it goes with the last record that names it, also when that is a
// replaced retained message or a deleted session's will, and the counts
// are rebuilt at Open.
func TestPublisherStoredOnce(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	p := samplePublisher()
	same := samplePublisher() // equal content, another pointer
	other := &Publisher{Listener: "tcp-1883", ClientID: "other", Anonymous: true}
	ret := func(topic string, p *Publisher) *Retained {
		return &Retained{Topic: topic, Payload: []byte("v"), Publisher: p}
	}
	mustCommit(t, s, PutSession{&Session{ClientID: "c"}}, PutRetained{ret("a", p)}, PutRetained{ret("b", same)},
		PutWill{&Will{ClientID: "c", Topic: "w", Publisher: p}}, PutRetained{ret("c", other)}, PutRetained{ret("d", nil)})
	if n := countBucket(t, s, bktPublisher); n != 2 {
		t.Fatalf("%d publisher records for 2 distinct publishers", n)
	}
	mustClose(t, s)

	s = mustOpen(t, cfg)
	st := s.Recovered()
	byTopic := map[string]*Retained{}
	for _, r := range st.Retained {
		byTopic[r.Topic] = r
	}
	if byTopic["a"].Publisher == nil || byTopic["a"].Publisher != byTopic["b"].Publisher || st.Wills[0].Publisher != byTopic["a"].Publisher {
		t.Fatal("records of one publisher do not share its recovered value")
	}
	if !sameRecord(byTopic["a"].Publisher, p) || !sameRecord(byTopic["c"].Publisher, other) || byTopic["d"].Publisher != nil {
		t.Fatalf("publishers after reopen: %+v %+v %+v", byTopic["a"].Publisher, byTopic["c"].Publisher, byTopic["d"].Publisher)
	}
	// Replacing "c" with another publisher releases "other".
	mustCommit(t, s, PutRetained{ret("c", p)})
	if n := countBucket(t, s, bktPublisher); n != 1 {
		t.Fatalf("%d publisher records after the last reference to one was replaced", n)
	}
	mustCommit(t, s, DeleteRetained{"a"}, DeleteRetained{"b"}, DeleteRetained{"c"})
	if n := countBucket(t, s, bktPublisher); n != 1 {
		t.Fatal("publisher removed while the will still names it")
	}
	mustCommit(t, s, DeleteSession{"c"}) // with its will
	if n := countBucket(t, s, bktPublisher); n != 0 {
		t.Fatalf("%d publisher records after the last reference went", n)
	}
	mustClose(t, s)
	if rep, err := Verify(cfg); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify: %v %v", err, rep.Problems)
	}
}

// oldRecord writes a record in the form of an earlier version, bypassing
// the current encoder: a store written before publishers were kept.
type oldRecord struct {
	bucket, key, plaintext []byte
}

func (o oldRecord) apply(t *txn) error { return t.put(o.bucket, o.key, o.plaintext) }

// v1 turns the encoding of a retained message or will without publisher
// into the form written before publishers were kept (tags 5 and 6, no
// publisher key).
func v1(r any) []byte {
	b := encodeRecord(r)
	switch r.(type) {
	case *Retained:
		b[0] = tagRetained
	case *Will:
		b[0] = tagWill
	}
	return b[:len(b)-1] // the empty publisher key
}

// A store written before publishers were kept (retained messages and
// wills of the old form, no publisher bucket) opens, verifies, recovers
// them with an unknown publisher and takes new ones.
func TestStoreWithoutPublishers(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	r := &Retained{Topic: "old/topic", Payload: []byte("v"), QoS: 1, Owner: "user:a", Created: t0}
	w := &Will{ClientID: "c", Topic: "old/will", FireAt: t0, Owner: "user:a"}
	mustCommit(t, s, PutSession{&Session{ClientID: "c"}},
		oldRecord{bktRetained, s.keys.retainedKey(r.Topic), v1(r)}, oldRecord{bktWill, s.keys.willKey(w.ClientID), v1(w)})
	mustClose(t, s)
	editDB(t, cfg, func(tx *bolt.Tx) error { return tx.DeleteBucket(bktPublisher) })

	if rep, err := Verify(cfg); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify of a store without the publisher bucket: %v %v", err, rep.Problems)
	}
	s = mustOpen(t, cfg)
	st := s.Recovered()
	if len(st.Retained) != 1 || st.Retained[0].Publisher != nil || !sameRecord(st.Retained[0], r) {
		t.Fatalf("old retained message: %+v", st.Retained)
	}
	if len(st.Wills) != 1 || st.Wills[0].Publisher != nil || !sameRecord(st.Wills[0], w) {
		t.Fatalf("old will: %+v", st.Wills)
	}
	// Replacing the old record with a publisher works, and so does
	// deleting an old one.
	mustCommit(t, s, PutRetained{&Retained{Topic: "old/topic", Payload: []byte("new"), Publisher: samplePublisher()}},
		DeleteWill{"c"})
	mustClose(t, s)
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if st := s.Recovered(); len(st.Retained) != 1 || st.Retained[0].Publisher == nil || len(st.Wills) != 0 {
		t.Fatalf("after the update: %+v %+v", st.Retained, st.Wills)
	}
}

// TestSecurityTamperPublisherSwapped: the attacker replaces the publisher
// record a retained message names with another one from the same store
// (a publisher with more rights), hoping its replay passes the check of
// its publisher. The record's key is a keyed hash of its content, so the
// swapped record sits under the wrong key and is detected.
func TestSecurityTamperPublisherSwapped(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	weak := &Publisher{Listener: "l", ClientID: "weak", Username: "weak"}
	strong := &Publisher{Listener: "l", ClientID: "admin", Username: "admin"}
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("x"), Publisher: weak}},
		PutRetained{&Retained{Topic: "b", Payload: []byte("y"), Publisher: strong}})
	wk := s.keys.publisherKey(encodeRecord(weak))
	sk := s.keys.publisherKey(encodeRecord(strong))
	mustClose(t, s)
	editDB(t, cfg, func(tx *bolt.Tx) error {
		b := tx.Bucket(bktPublisher)
		return b.Put(wk, append([]byte(nil), b.Get(sk)...))
	})
	wantOpenErr(t, cfg, ErrCorrupt)
}
