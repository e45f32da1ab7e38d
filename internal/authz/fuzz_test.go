package authz

import (
	"bytes"
	"testing"
)

// FuzzParseACLFile parses arbitrary files; whatever parses must answer
// every request with a reason and a rule, and never panic. Seeds are in
// testdata/fuzz/FuzzParseACLFile.
func FuzzParseACLFile(f *testing.F) {
	f.Add([]byte(interopACL))
	f.Add([]byte("topic read\nuser a b\npattern %u%c%%u/#\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := ParseACLFile("f", bytes.NewReader(data))
		if err != nil {
			return
		}
		p, err := New(Options{ACL: a})
		if err != nil {
			t.Fatal(err)
		}
		subjects := []*Subject{
			{Anonymous: true, ClientID: "c"},
			{Username: "a", ClientID: "+"},
			{Username: "a b", ClientID: "x/y"},
			{Username: "%u", ClientID: "%c"},
		}
		for _, s := range subjects {
			for _, a := range []Action{Publish, Receive, Subscribe} {
				for _, tp := range []string{"a", "a/b", "$SYS/x", "read", "#", "+/b"} {
					if a != Subscribe && (tp == "#" || tp == "+/b") {
						continue
					}
					d := p.Decide(Request{Subject: s, Action: a, Topic: tp})
					if d.Reason == "" || d.Rule == "" {
						t.Fatalf("%+v %s %q: %+v", s, a, tp, d)
					}
				}
			}
		}
	})
}

// FuzzFilterAlgebra checks Intersection and Covers against MatchFilter on
// one topic name.
func FuzzFilterAlgebra(f *testing.F) {
	f.Add("a/#", "+/b", "a/b")
	f.Add("#", "$SYS/#", "$SYS/x")
	f.Add("/+/#", "/#", "/x")
	f.Fuzz(func(t *testing.T, a, b, topic string) {
		if ValidFilter(a) != nil || ValidFilter(b) != nil || ValidFilter(topic) != nil || bytes.ContainsAny([]byte(topic), "+#") {
			return
		}
		ma, mb := MatchFilter(a, topic), MatchFilter(b, topic)
		in, ok := Intersection(a, b)
		if ma && mb && (!ok || !MatchFilter(in, topic)) {
			t.Fatalf("%q matches %q and %q; Intersection = %q, %v", topic, a, b, in, ok)
		}
		if ok && MatchFilter(in, topic) && !(ma && mb) {
			t.Fatalf("Intersection(%q, %q) = %q matches %q, which the filters do not both match", a, b, in, topic)
		}
		if mb && !ma && Covers(a, b) {
			t.Fatalf("Covers(%q, %q) but %q matches only the second", a, b, topic)
		}
	})
}
