package cluster

import (
	"testing"
)

// TestDescribeRecord: a batch record and a single record of an earlier
// build are described with their IDs, origin and messages in order; a
// malformed one is an error.
func TestDescribeRecord(t *testing.T) {
	t.Parallel()
	const origin = "n1/abc"
	b := batchRecord(origin, []*fwdMsg{fwdOf(t, 7, "a/b", "x", "c1"), fwdOf(t, 8, "a/c", "y", "c2")})
	ri, err := DescribeRecord(b.Subject, b.Header, b.Data)
	if err != nil {
		t.Fatal(err)
	}
	if ri.ID != origin+"/b7" || ri.Origin != origin || len(ri.Messages) != 2 {
		t.Fatalf("batch: %+v", ri)
	}
	for i, want := range []struct{ ref, topic, payload, from string }{{origin + "/7", "a/b", "x", "c1"}, {origin + "/8", "a/c", "y", "c2"}} {
		m := ri.Messages[i]
		if m.Ref != want.ref || m.Topic != want.topic || string(m.Payload) != want.payload || m.From != want.from || m.Sent.IsZero() {
			t.Errorf("batch message %d: %+v, want %+v", i, m, want)
		}
	}
	s := singleRecord(origin, fwdOf(t, 9, "a/d", "z", "c3"))
	ri, err = DescribeRecord(s.Subject, s.Header, s.Data)
	if err != nil {
		t.Fatal(err)
	}
	if ri.ID != origin+"/9" || len(ri.Messages) != 1 || ri.Messages[0].Ref != origin+"/9" || ri.Messages[0].Topic != "a/d" ||
		string(ri.Messages[0].Payload) != "z" || ri.Messages[0].From != "c3" {
		t.Fatalf("single: %+v", ri)
	}
	if _, err := DescribeRecord(b.Subject, b.Header, b.Data[:len(b.Data)-1]); err == nil {
		t.Fatal("a cut batch record described without an error")
	}
	if _, err := DescribeRecord(s.Subject, nil, s.Data); err == nil {
		t.Fatal("a single record without headers described without an error")
	}
}
