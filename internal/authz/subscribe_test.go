package authz

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// randomFilter returns a random valid filter over a small alphabet,
// substitutions included.
func randomFilter(r *rand.Rand, subst bool) string {
	levels := []string{"a", "b", "+", "a", "b"}
	if subst {
		levels = append(levels, "%u", "%c")
	}
	n := 1 + r.IntN(3)
	var parts []string
	for i := range n {
		if i == n-1 && r.IntN(3) == 0 {
			parts = append(parts, "#")
			break
		}
		parts = append(parts, levels[r.IntN(len(levels))])
	}
	return strings.Join(parts, "/")
}

// TestSubscribeDecisionsAgainstBruteForce checks the subscribe decision of
// random acl_files and rule lists against brute force over a universe of
// topic names: a refused filter must match no topic the client may
// receive (never refuse what could be delivered), and with at most one
// deny, a granted filter must match at least one (nothing is granted that
// can never deliver).
func TestSubscribeDecisionsAgainstBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	topics := universe([]string{"a", "b", "z", "x"}, 4)
	var filters []string
	for _, f := range universe([]string{"a", "b", "+", "#", "x"}, 3) {
		if ValidFilter(f) == nil {
			filters = append(filters, f)
		}
	}
	subjects := []*Subject{
		{Anonymous: true, ClientID: "x"},
		{Username: "a", ClientID: "b"},
		{Username: "b", ClientID: "x"},
		{Username: "+", ClientID: "a"},
		{Username: "x", ClientID: "a/b"},
	}
	access := []string{"read", "write", "readwrite", "deny", "read", "read"}
	for round := range 300 {
		var text strings.Builder
		var specs []RuleSpec
		denies := 0
		for range 1 + r.IntN(5) {
			acc := access[r.IntN(len(access))]
			if acc == "deny" {
				denies++
			}
			switch r.IntN(4) {
			case 0:
				fmt.Fprintf(&text, "user %s\n", []string{"a", "b", "+"}[r.IntN(3)])
			case 1:
				fmt.Fprintf(&text, "pattern %s %s\n", acc, randomFilter(r, true))
			}
			fmt.Fprintf(&text, "topic %s %s\n", acc, randomFilter(r, false))
			effect := "allow"
			if acc == "deny" {
				effect = "deny"
			}
			specs = append(specs, RuleSpec{Effect: effect, Subjects: Subjects{All: true}, Actions: []string{"read"},
				Topics: []string{randomFilter(r, true)}})
		}
		acl, err := ParseACLFile("r", strings.NewReader(text.String()))
		if err != nil {
			t.Fatalf("round %d: %v\n%s", round, err, text.String())
		}
		aclPolicy, _ := New(Options{ACL: acl})
		rulePolicy, err := New(Options{Rules: specs})
		if err != nil {
			t.Fatal(err)
		}
		for _, pc := range []struct {
			name string
			p    *Policy
		}{{"acl_file", aclPolicy}, {"rules", rulePolicy}} {
			for _, s := range subjects {
				readable := make([]bool, len(topics))
				for i, tp := range topics {
					readable[i] = pc.p.Decide(Request{Subject: s, Action: Receive, Topic: tp}).Allow
				}
				for _, f := range filters {
					some := false
					for i, tp := range topics {
						if readable[i] && MatchFilter(f, tp) {
							some = true
							break
						}
					}
					d := pc.p.Decide(Request{Subject: s, Action: Subscribe, Topic: f})
					if !d.Allow && some {
						t.Fatalf("round %d %s: %+v refused %q (%s), but it can receive a matching topic\n%s%v",
							round, pc.name, s, f, d.Reason, text.String(), specs)
					}
					if d.Allow && !some && denies <= 1 {
						t.Fatalf("round %d %s: %+v granted %q (%s), but no matching topic can be received\n%s%v",
							round, pc.name, s, f, d.Reason, text.String(), specs)
					}
				}
			}
		}
	}
}
