package authz

import (
	"fmt"
	"strings"
	"testing"
)

// benchRules builds 10,000 rules: per-device rules, group rules with
// substitutions, rules indexed by their first topic level, wildcard
// patterns and a final deny.
func benchRules(tb testing.TB) *Policy {
	tb.Helper()
	var rules []RuleSpec
	all := []string{"publish", "subscribe", "receive"}
	for i := range 8000 {
		u := fmt.Sprintf("dev%d", i)
		rules = append(rules, RuleSpec{Effect: "allow", Subjects: Subjects{Usernames: []string{u}}, Actions: all,
			Topics: []string{"devices/" + u + "/#", "fleet/+/" + u}})
	}
	for i := range 1000 {
		g := fmt.Sprintf("g%d", i)
		rules = append(rules, RuleSpec{Effect: "allow", Subjects: Subjects{Groups: []string{g}}, Actions: all,
			Topics: []string{"groups/" + g + "/+/status", "groups/" + g + "/%u/#"}})
	}
	for i := range 899 {
		rules = append(rules, RuleSpec{Effect: "allow", Subjects: Subjects{Anonymous: new(false)}, Actions: []string{"read"},
			Topics: []string{fmt.Sprintf("area%d/+/temp", i)}})
	}
	for i := range 100 {
		rules = append(rules, RuleSpec{Effect: "allow", Subjects: Subjects{OU: []string{fmt.Sprintf("unit%d", i)}}, Actions: all,
			Topics: []string{fmt.Sprintf("+/k%d/%%c/#", i), "%{cn}/+/x"}})
	}
	rules = append(rules, RuleSpec{Name: "deny-rest", Effect: "deny", Subjects: Subjects{All: true}, Actions: all, Topics: []string{"#"}})
	if len(rules) != 10000 {
		tb.Fatalf("%d rules", len(rules))
	}
	p, err := New(Options{Rules: rules})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// benchGeneral builds 10,000 rules that select every client, so that no
// subject index narrows them: wildcard patterns with a literal second
// level, literal trees, and the collector's grant last but one.
func benchGeneral(tb testing.TB) *Policy {
	tb.Helper()
	var rules []RuleSpec
	for i := range 4999 {
		rules = append(rules, RuleSpec{Effect: "allow", Subjects: Subjects{All: true}, Actions: []string{"receive"},
			Topics: []string{fmt.Sprintf("+/k%d/%%c/#", i), fmt.Sprintf("area%d/+/temp", i)}})
	}
	for i := range 4999 {
		rules = append(rules, RuleSpec{Effect: "allow", Subjects: Subjects{All: true}, Actions: []string{"publish", "receive"},
			Topics: []string{fmt.Sprintf("site/%d/+/%%u/#", i)}})
	}
	rules = append(rules, RuleSpec{Name: "collector", Effect: "allow", Subjects: Subjects{All: true}, Actions: []string{"subscribe", "receive"},
		Topics: []string{"devices/+/data/#"}})
	rules = append(rules, RuleSpec{Name: "deny-rest", Effect: "deny", Subjects: Subjects{All: true}, Actions: []string{"publish", "subscribe", "receive"}, Topics: []string{"#"}})
	p, err := New(Options{Rules: rules})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func benchACL(tb testing.TB) *Policy {
	tb.Helper()
	var b strings.Builder
	b.WriteString("topic read public/#\n")
	for i := range 3000 {
		fmt.Fprintf(&b, "user dev%d\ntopic readwrite devices/dev%d/#\ntopic deny devices/dev%d/locked\ntopic read fleet/+/dev%d\n", i, i, i, i)
	}
	for i := range 999 {
		fmt.Fprintf(&b, "pattern read p%d/%%u/+/x\n", i)
	}
	return mustACL(tb, b.String())
}

func BenchmarkDecide(b *testing.B) {
	rules, acl, general := benchRules(b), benchACL(b), benchGeneral(b)
	dev := &Subject{Username: "dev5000", ClientID: "dev5000", Groups: []string{"g500"}}
	devACL := &Subject{Username: "dev2000", ClientID: "dev2000"}
	for _, c := range []struct {
		name string
		p    *Policy
		req  Request
		want bool
	}{
		{"rules/publish-own-allowed", rules, Request{Subject: dev, Action: Publish, Topic: "devices/dev5000/sensors/temp", QoS: 1}, true},
		{"rules/receive-group-substitution", rules, Request{Subject: dev, Action: Receive, Topic: "groups/g500/dev5000/a/b"}, true},
		{"rules/receive-literal-first-level", rules, Request{Subject: dev, Action: Receive, Topic: "area700/x/temp"}, true},
		{"rules/publish-denied-by-last-rule", rules, Request{Subject: dev, Action: Publish, Topic: "devices/dev5001/sensors/temp"}, false},
		{"rules/subscribe-wildcard", rules, Request{Subject: dev, Action: Subscribe, Topic: "devices/dev5000/+/temp"}, true},
		{"general/receive-collector", general, Request{Subject: dev, Action: Receive, Topic: "devices/dev7/data/3"}, true},
		{"general/publish-site", general, Request{Subject: dev, Action: Publish, Topic: "site/4000/x/dev5000/y"}, true},
		{"general/subscribe-wildcard", general, Request{Subject: dev, Action: Subscribe, Topic: "devices/+/data/#"}, true},
		{"acl_file/publish-allowed", acl, Request{Subject: devACL, Action: Publish, Topic: "devices/dev2000/sensors/temp"}, true},
		{"acl_file/receive-pattern-miss", acl, Request{Subject: devACL, Action: Receive, Topic: "other/topic"}, false},
	} {
		if d := c.p.Decide(c.req); d.Allow != c.want {
			b.Fatalf("%s: %+v", c.name, d)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.p.Decide(c.req)
			}
		})
	}
	b.Run("cache/hit", func(b *testing.B) {
		h := NewHolder(rules)
		cache := NewCache(0)
		req := Request{Subject: dev, Action: Publish, Topic: "devices/dev5000/sensors/temp", QoS: 1}
		b.ReportAllocs()
		for b.Loop() {
			cache.Decide(h, req)
		}
	})
}
