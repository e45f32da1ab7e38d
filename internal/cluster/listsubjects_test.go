package cluster

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestListSubjectsMatchesScan: a session's records read in parallel,
// one get per subject found in the stream's information (listSubjects),
// are the records one get after the other finds (listRecords): the same
// subjects, sequences, origins and data, in stream order, a removed
// record's tombstone included, and no record of another session.
func TestListSubjectsMatchesScan(t *testing.T) {
	nodes := commonCluster(t)
	n := nodes[1].node
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Client IDs of this run only: the cluster is shared, and a run
	// again (-count) finds the records of the one before.
	id := fmt.Sprintf("lsubj%d", time.Now().UnixNano())
	var seqs []uint64
	for i := range 60 {
		seq, err := n.putRecord(ctx, sessSubject(id, fmt.Sprintf("d.%d", i)), []byte(fmt.Sprintf("rec-%d", i)), 0)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	// Rewritten, then removed: the last record of each subject counts.
	if _, err := n.putRecord(ctx, sessSubject(id, "d.3"), []byte("again"), seqs[3]); err != nil {
		t.Fatal(err)
	}
	if _, err := n.putRecord(ctx, sessSubject(id, "d.7"), nil, seqs[7]); err != nil {
		t.Fatal(err)
	}
	if _, err := n.putRecord(ctx, sessSubject(id+"other", "d.1"), []byte("other"), 0); err != nil {
		t.Fatal(err)
	}
	filter := sessPrefix + keyOf(id) + ".>"
	want, err := n.listRecords(ctx, filter)
	if err != nil {
		t.Fatal(err)
	}
	got, err := n.listSubjects(ctx, n.sess.stream, filter)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 60 || len(got) != len(want) {
		t.Fatalf("%d records in parallel, %d one after the other; want 60", len(got), len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		if w.subject != g.subject || w.seq != g.seq || w.origin != g.origin || string(w.data) != string(g.data) {
			t.Fatalf("record %d: %s %d %q %q; want %s %d %q %q", i, g.subject, g.seq, g.origin, g.data, w.subject, w.seq, w.origin, w.data)
		}
	}
	if none, err := n.listSubjects(ctx, n.sess.stream, sessPrefix+keyOf(id+"none")+".>"); err != nil || len(none) != 0 {
		t.Fatalf("%d records of a session without any (%v)", len(none), err)
	}
	// Overlapping filters name a record once.
	both, err := n.listSubjects(ctx, n.sess.stream, filter, sessSubject(id, "d.*"), sessSubject(id+"other", "d.1"))
	if err != nil || len(both) != 61 {
		t.Fatalf("%d records of overlapping filters (%v); want 61", len(both), err)
	}

	// By subject (getRecords): the same records for the subjects named,
	// a subject never written left out, a removed record empty.
	var subjects []string
	for i := 59; i >= 0; i -= 2 {
		subjects = append(subjects, sessSubject(id, fmt.Sprintf("d.%d", i)))
	}
	subjects = append(subjects, sessSubject(id, "d.none"))
	named, err := n.getRecords(ctx, subjects)
	if err != nil {
		t.Fatal(err)
	}
	var odd []storedRecord
	for _, r := range want {
		var i int
		if _, err := fmt.Sscanf(r.subject, sessPrefix+keyOf(id)+".d.%d", &i); err == nil && i%2 == 1 {
			odd = append(odd, r)
		}
	}
	if len(named) != 30 || len(odd) != 30 {
		t.Fatalf("%d records by subject; want %d", len(named), len(odd))
	}
	for i := range odd {
		w, g := odd[i], named[i]
		if w.subject != g.subject || w.seq != g.seq || w.origin != g.origin || string(w.data) != string(g.data) {
			t.Fatalf("record %d by subject: %s %d %q %q; want %s %d %q %q", i, g.subject, g.seq, g.origin, g.data, w.subject, w.seq, w.origin, w.data)
		}
	}
	removed := slices.IndexFunc(named, func(r storedRecord) bool { return r.subject == sessSubject(id, "d.7") })
	if removed < 0 || len(named[removed].data) != 0 {
		t.Fatalf("the removed record not read as empty (%d)", removed)
	}
}

// BenchmarkSessionListing: reading the session records of 1,000 client
// IDs (one record each) from a three-node cluster's moat_sessions, one
// get after the other over a pattern (how a node checked its sessions
// after a cut, adopted and imported before), by pattern in parallel
// (listSubjects), and by subject in parallel (getRecords, the check
// after a cut now). ns/op is one whole reading.
func BenchmarkSessionListing(b *testing.B) {
	nodes := startBenchCluster(b)
	n := nodes[1].node
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := n.awaitSessions(ctx); err != nil {
		b.Fatal(err)
	}
	run := "bl-"
	const count = 1000
	subjects := make([]string, count)
	for i := range count {
		subjects[i] = sessSubject(fmt.Sprintf("%s%d", run, i), "x")
		if _, err := n.putRecord(ctx, subjects[i], []byte("rec"), 0); err != nil {
			b.Fatal(err)
		}
	}
	pattern := sessPrefix + "*.x"
	check := func(b *testing.B, records []storedRecord, err error) {
		if err != nil {
			b.Fatal(err)
		}
		if len(records) != count {
			b.Fatalf("%d records; want %d", len(records), count)
		}
	}
	b.Run("scan", func(b *testing.B) {
		for b.Loop() {
			records, err := n.listRecords(ctx, pattern)
			check(b, records, err)
		}
	})
	b.Run("listSubjects", func(b *testing.B) {
		for b.Loop() {
			records, err := n.listSubjects(ctx, n.sess.stream, pattern)
			check(b, records, err)
		}
	})
	b.Run("getRecords", func(b *testing.B) {
		for b.Loop() {
			records, err := n.getRecords(ctx, subjects)
			check(b, records, err)
		}
	})
}

// listRecords reads the last value of every subject matching one of
// filters, one get after the other (scan): how the node listed records
// before listSubjects and getRecords, kept as the tests' reference.
func (n *Node) listRecords(ctx context.Context, filters ...string) ([]storedRecord, error) {
	var out []storedRecord
	for _, f := range filters {
		msgs, err := n.scan(ctx, n.sess.stream, f, 1, 0)
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			out = append(out, storedRecord{subject: m.Subject, seq: m.Sequence, origin: m.Header.Get(hdrOrigin), data: m.Data})
		}
	}
	return out, nil
}

// scan returns the messages of st matching filter with sequences from
// from to to (0: the end), one get after the other (getNext).
func (n *Node) scan(ctx context.Context, st jetstream.Stream, filter string, from, to uint64) ([]*jetstream.RawStreamMsg, error) {
	var out []*jetstream.RawStreamMsg
	for seq := max(from, 1); ; {
		m, err := n.getNext(ctx, st, filter, seq, to)
		if err != nil {
			return nil, err
		}
		if m == nil {
			return out, nil
		}
		out = append(out, m)
		seq = m.Sequence + 1
	}
}
