package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"
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
}
