package store

import (
	"testing"

	bolt "go.etcd.io/bbolt"
)

// counterRecord writes a record the way stores did before seal IDs: sealed
// on the committer with the transaction's commit counter as its version.
type counterRecord struct{ bucket, key, plaintext []byte }

func (o counterRecord) apply(t *txn) error {
	old, inEngine, plain := t.lookup(o.bucket, o.key)
	if old != nil {
		t.forget(o.bucket, o.key, old, plain)
	}
	v, err := t.s.keys.seal(o.bucket, o.key, t.st.Counter, o.plaintext)
	if err != nil {
		return err
	}
	if t.ovl != nil && !inEngine && overlaid(o.bucket) {
		t.ovl.put(o.bucket, o.key, ovlRec{v: v})
	} else if err := t.tx.Bucket(o.bucket).Put(o.key, v); err != nil {
		return err
	}
	t.logPut(o.bucket, o.key, v)
	xorInto(&t.st.Digest, t.s.keys.element(o.bucket, o.key, t.st.Counter))
	t.st.Records++
	return nil
}

// versions returns the version of every record in bucket.
func versions(t *testing.T, s *Store, bucket []byte) []uint64 {
	t.Helper()
	var out []uint64
	s.syncView(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(_, v []byte) error {
			out = append(out, beUint64(v))
			return nil
		})
	})
	return out
}

// Records are sealed before their transaction under a seal ID, which the
// transaction notes as issued and covers with the commit counter: every
// version stays at or below the counter (what stores written before seal
// IDs, and earlier versions of Moat, check), and IDs continue above the
// counter after a restart, so a seal ID never repeats an older version. A
// store whose records carry commit counters (written before seal IDs)
// opens, verifies, and takes updates and deletes of those records.
func TestSealIDsAndCommitCounterRecords(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	m := &Message{ID: s.NextID(), Topic: "t", Payload: []byte("old"), QoS: 1}
	d := &Delivery{ClientID: "c", Seq: s.NextID(), MsgID: m.ID, QoS: 1}
	sess := &Session{ClientID: "c", Owner: "user:c"}
	mustCommit(t, s, counterRecord{bktSession, s.keys.sessionKey("c"), encodeRecord(sess)})
	// The message and delivery of the old form need their ID noted and
	// their reference counted, as PutMessage and PutDelivery do.
	mustCommit(t, s, PutMessage{m}, PutDelivery{d})
	mustCommit(t, s, counterRecord{bktMessage, messageKey(m.ID), encodeRecord(m)},
		counterRecord{bktDelivery, s.keys.deliveryKey("c", d.Seq), encodeRecord(d)})
	old := s.st.Counter
	for _, b := range [][]byte{bktSession, bktMessage, bktDelivery} {
		if vs := versions(t, s, b); len(vs) != 1 || vs[0] > old {
			t.Fatalf("%s: versions %d, want one commit counter up to %d", b, vs, old)
		}
	}
	mustClose(t, s)
	if rep, err := Verify(cfg); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify of records with commit counters: %v %v", err, rep.Problems)
	}

	s = mustOpen(t, cfg)
	st := s.Recovered()
	if ss := st.Sessions["c"]; ss == nil || ss.Session.Owner != "user:c" || len(ss.Deliveries) != 1 || st.Messages[m.ID] == nil {
		t.Fatalf("recovered %+v", st)
	}
	// Replace the session (a seal ID now), delete the old delivery (its
	// message goes with it) and queue a new one.
	m2 := &Message{ID: s.NextID(), Topic: "t", Payload: []byte("new"), QoS: 1}
	d2 := &Delivery{ClientID: "c", Seq: s.NextID(), MsgID: m2.ID, QoS: 1}
	mustCommit(t, s, PutSession{&Session{ClientID: "c", Owner: "user:c2"}}, DeleteDelivery{"c", d.Seq}, PutMessage{m2}, PutDelivery{d2})
	counter := s.st.Counter
	if s.st.MaxID > counter {
		t.Fatalf("highest ID %d above the commit counter %d", s.st.MaxID, counter)
	}
	for _, b := range [][]byte{bktSession, bktMessage, bktDelivery} {
		if vs := versions(t, s, b); len(vs) != 1 || vs[0] <= old || vs[0] > counter {
			t.Fatalf("%s: versions %d, want one seal ID above %d and up to %d", b, vs, old, counter)
		}
	}
	mustClose(t, s)
	if rep, err := Verify(cfg); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify after the update: %v %v", err, rep.Problems)
	}
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	st = s.Recovered()
	if ss := st.Sessions["c"]; ss.Session.Owner != "user:c2" || len(ss.Deliveries) != 1 || ss.Deliveries[0].Seq != d2.Seq ||
		st.Messages[m.ID] != nil || st.Messages[m2.ID] == nil {
		t.Fatalf("recovered after the update %+v", st)
	}
	if id := s.NextID(); id <= s.st.Counter {
		t.Fatalf("NextID %d after reopening, want above the commit counter %d", id, s.st.Counter)
	}
}

// A sealing key seals at most maxSealsPerKey records; the next is drawn
// under a new salt, and records of both open.
func TestSealingKeyRotates(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("1")}})
	first := s.keys.sealing.Load()
	first.uses.Store(maxSealsPerKey)
	mustCommit(t, s, PutRetained{&Retained{Topic: "b", Payload: []byte("2")}})
	if s.keys.sealing.Load() == first {
		t.Fatal("the sealing key was not replaced after maxSealsPerKey seals")
	}
	salts := map[string]bool{}
	s.syncView(func(tx *bolt.Tx) error {
		return tx.Bucket(bktRetained).ForEach(func(_, v []byte) error {
			salts[string(v[versionLen:versionLen+saltLen])] = true
			return nil
		})
	})
	if len(salts) != 2 {
		t.Fatalf("%d salts among the two records, want 2", len(salts))
	}
	mustClose(t, s)
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if n := len(s.Recovered().Retained); n != 2 {
		t.Fatalf("%d retained recovered, want 2", n)
	}
}
