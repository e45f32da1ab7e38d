package authz

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// linearDecide is the reference the indexes must agree with: every rule
// tried in order.
func (rs *ruleSet) linearDecide(req *Request) (Decision, bool) {
	all := make([]int32, len(rs.rules))
	for i := range all {
		all[i] = int32(i)
	}
	m := newMerger()
	m.add(all)
	return rs.decideFrom(req, &m)
}

func (l *aclList) linearCheck(s *Subject, t string, want uint8) (Decision, bool) {
	all := &topicIndex{all: l.index.all}
	saved := l.index
	l.index = all
	defer func() { l.index = saved }()
	return l.check(s, t, want)
}

// randomLevel draws a topic level from a small alphabet, so that random
// rules and topics meet often.
func indexLevel(r *rand.Rand, wild bool) string {
	lits := []string{"a", "b", "c", "", "dev1", "$SYS"}
	if wild {
		switch r.IntN(8) {
		case 0:
			return "+"
		case 1:
			return "%u"
		case 2:
			return "%{spiffe}"
		case 3:
			return "x%c"
		}
	}
	return lits[r.IntN(len(lits))]
}

func indexFilter(r *rand.Rand, wild bool) string {
	n := 1 + r.IntN(4)
	var lv []string
	for i := range n {
		l := indexLevel(r, wild)
		if l == "$SYS" && i > 0 {
			l = "a"
		}
		if !wild && strings.Contains(l, "%") {
			l = "b"
		}
		lv = append(lv, l)
	}
	if wild && r.IntN(4) == 0 {
		lv = append(lv, "#")
	}
	if f := strings.Join(lv, "/"); f != "" {
		return f
	}
	return "a"
}

func indexSubject(r *rand.Rand) *Subject {
	users := []string{"dev1", "a", "b", "+", ""}
	s := &Subject{Username: users[r.IntN(len(users))], ClientID: []string{"1", "c", "a/b"}[r.IntN(3)]}
	s.Anonymous = s.Username == ""
	if r.IntN(2) == 0 {
		s.Groups = []string{"g1"}
	}
	if r.IntN(3) == 0 {
		s.Cert.SPIFFE = "spiffe://x/a/b"
	}
	return s
}

// TestIndexAgreesWithLinearScan: for random policies large enough to be
// indexed, every decision equals the one of trying each rule in order.
func TestIndexAgreesWithLinearScan(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	decided, asked, indexed := 0, 0, 0
	for round := range 40 {
		var specs []RuleSpec
		n := 10 + r.IntN(200)
		for range n {
			sp := RuleSpec{Effect: []string{"allow", "deny"}[r.IntN(2)], Actions: []string{[]string{"publish", "subscribe", "receive", "read"}[r.IntN(4)]}}
			switch r.IntN(4) {
			case 0:
				sp.Subjects.Usernames = []string{"dev1"}
			case 1:
				sp.Subjects.Groups = []string{"g1"}
			default:
				sp.Subjects.All = true
			}
			for range 1 + r.IntN(2) {
				sp.Topics = append(sp.Topics, indexFilter(r, true))
			}
			if r.IntN(10) == 0 {
				sp.Retain = new(r.IntN(2) == 0)
			}
			specs = append(specs, sp)
		}
		rs, err := compileRules(specs, "t")
		if err != nil {
			t.Fatal(err)
		}
		if rs.by[Receive].general.root != nil {
			indexed++
		}
		for range 400 {
			req := Request{Subject: indexSubject(r), Action: Action(1 + r.IntN(3)), Retain: r.IntN(2) == 0}
			req.Topic = indexFilter(r, req.Action == Subscribe)
			if req.Action == Subscribe && ValidFilter(req.Topic) != nil {
				continue
			}
			got, gok := rs.decide(&req)
			want, wok := rs.linearDecide(&req)
			asked++
			if wok {
				decided++
			}
			if got != want || gok != wok {
				t.Fatalf("round %d: %s %q by %+v: indexed %+v %v, linear %+v %v", round, req.Action, req.Topic, req.Subject, got, gok, want, wok)
			}
		}
	}
	// The test means something only if rules match often and the lists
	// are large enough to be indexed.
	if decided < asked/4 || indexed < 20 {
		t.Fatalf("%d of %d requests decided by a rule, %d of 40 policies indexed", decided, asked, indexed)
	}
	t.Logf("%d of %d requests decided by a rule", decided, asked)
}

// TestACLIndexAgreesWithLinearScan does the same for acl_file lines.
func TestACLIndexAgreesWithLinearScan(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 40 {
		var b strings.Builder
		for range 10 + r.IntN(100) {
			kw := []string{"topic", "pattern"}[r.IntN(2)]
			acc := []string{"read", "write", "readwrite", "deny"}[r.IntN(4)]
			f := indexFilter(r, true)
			f = strings.NewReplacer("%{spiffe}", "%u", "x%c", "%c").Replace(f)
			fmt.Fprintf(&b, "%s %s %s\n", kw, acc, f)
		}
		a, err := ParseACLFile("acl", strings.NewReader(b.String()))
		if err != nil {
			t.Fatal(err)
		}
		for range 400 {
			s := indexSubject(r)
			topic := indexFilter(r, false)
			want := []uint8{accessRead, accessWrite}[r.IntN(2)]
			for _, l := range []*aclList{a.anon, &a.patterns} {
				if l == nil {
					continue
				}
				got, gok := l.check(s, topic, want)
				ref, rok := l.linearCheck(s, topic, want)
				if got != ref || gok != rok {
					t.Fatalf("round %d: %q by %+v: indexed %+v %v, linear %+v %v", round, topic, s, got, gok, ref, rok)
				}
			}
		}
	}
}

// FuzzIndex checks one indexed decision against the linear scan for
// rules built from the fuzzer's filters.
func FuzzIndex(f *testing.F) {
	f.Add("a/+/#", "%u/b", "+/%{spiffe}/c", "a/b/c", "a/+")
	f.Add("#", "$SYS/#", "x/%c/#", "$SYS/a", "+/+")
	f.Fuzz(func(t *testing.T, p1, p2, p3, topic, filter string) {
		var specs []RuleSpec
		for i := range minIndexed + 2 {
			tp := []string{p1, p2, p3}[i%3]
			if ValidFilter(tp) != nil {
				return
			}
			specs = append(specs, RuleSpec{Effect: []string{"allow", "deny"}[i%2], Subjects: Subjects{All: true},
				Actions: []string{[]string{"publish", "read"}[i/3%2]}, Topics: []string{tp}})
		}
		rs, err := compileRules(specs, "f")
		if err != nil {
			return
		}
		s := &Subject{Username: "u", ClientID: "c", Cert: Cert{SPIFFE: "spiffe://d/x"}}
		for _, req := range []Request{
			{Subject: s, Action: Publish, Topic: topic},
			{Subject: s, Action: Receive, Topic: topic},
			{Subject: s, Action: Subscribe, Topic: filter},
		} {
			if req.Topic == "" || ValidFilter(req.Topic) != nil || (req.Action != Subscribe && strings.ContainsAny(req.Topic, "+#")) {
				continue
			}
			got, gok := rs.decide(&req)
			want, wok := rs.linearDecide(&req)
			if got != want || gok != wok {
				t.Fatalf("%s %q: indexed %+v %v, linear %+v %v", req.Action, req.Topic, got, gok, want, wok)
			}
		}
	})
}
