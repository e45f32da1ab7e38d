package authz

import (
	"net/netip"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// exampleRules is the example of docs/access-control.md.
const exampleRules = `
rules:
  - name: no-firmware-writes
    effect: deny
    subjects: {anonymous: false}
    actions: [publish]
    topics: ["firmware/#"]
  - name: operators
    effect: allow
    subjects: {groups: [operators], sources: [10.0.0.0/8]}
    actions: [publish, read]
    topics: ["#", "$SYS/#"]
  - name: devices-own-tree
    effect: allow
    subjects: {ou: [devices]}
    actions: [publish, subscribe, receive]
    topics: ["devices/%{cn}/#"]
    max_qos: 1
  - name: devices-no-retained-alarms
    effect: deny
    subjects: {ou: [devices]}
    actions: [publish]
    topics: ["alarms/#"]
    retain: true
  - name: devices-alarms
    effect: allow
    subjects: {ou: [devices]}
    actions: [publish]
    topics: ["alarms/%{cn}"]
  - name: broadcast
    effect: allow
    subjects: {all: true}
    actions: [read]
    topics: ["broadcast/#"]
  - name: hide-broadcast-secrets
    effect: deny
    subjects: {all: true}
    actions: [read]
    topics: ["broadcast/secret/#"]
  - name: spiffe-workloads
    effect: allow
    subjects: {spiffe: ["spiffe://example.org/ns/prod/sa/api"]}
    actions: [publish]
    topics: ["svc/%{spiffe}/out"]
  - name: alice
    effect: allow
    subjects: {usernames: [alice], listeners: [internal]}
    actions: [write]
    topics: ["users/%u/#"]
  - name: tenants
    effect: allow
    subjects: {o: [acme, globex]}
    actions: [receive]
    topics: ["tenants/%{o}/#"]
`

func mustRules(t testing.TB, text string) *Policy {
	t.Helper()
	var spec Spec
	if err := yaml.Unmarshal([]byte(text), &spec); err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Rules: spec.Rules, RulesSource: "moat.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRules(t *testing.T) {
	p := mustRules(t, exampleRules)
	dev := &Subject{Username: "s1", ClientID: "s1", Cert: Cert{CN: "s1", OU: []string{"devices"}, O: []string{"globex"}}}
	op := &Subject{Username: "ops", ClientID: "o", Groups: []string{"operators"}, Addr: netip.MustParseAddr("10.1.2.3")}
	opOutside := &Subject{Username: "ops", ClientID: "o", Groups: []string{"operators"}, Addr: netip.MustParseAddr("192.0.2.1")}
	opMapped := &Subject{Username: "ops", ClientID: "o", Groups: []string{"operators"}, Addr: netip.MustParseAddr("::ffff:10.1.2.3")}
	anon := &Subject{Anonymous: true, ClientID: "a"}
	api := &Subject{Username: "api", ClientID: "api", Cert: Cert{SPIFFE: "spiffe://example.org/ns/prod/sa/api"}}
	alice := &Subject{Username: "alice", ClientID: "x", Listener: "internal"}
	aliceOutside := &Subject{Username: "alice", ClientID: "x", Listener: "public"}
	for _, c := range []struct {
		s      *Subject
		action Action
		topic  string
		qos    byte
		retain bool
		want   bool
		rule   string
	}{
		{dev, Publish, "devices/s1/temp", 1, false, true, "moat.yaml: devices-own-tree"},
		{dev, Publish, "devices/s1/temp", 2, false, false, "default"}, // max_qos
		{dev, Publish, "devices/s2/temp", 0, false, false, "default"},
		{dev, Subscribe, "devices/s1/#", 1, false, true, "moat.yaml: devices-own-tree"},
		{dev, Subscribe, "devices/+/cmd", 0, false, true, "moat.yaml: devices-own-tree"},
		{dev, Subscribe, "devices/s2/#", 0, false, false, "default"},
		{dev, Publish, "firmware/x", 0, false, false, "moat.yaml: no-firmware-writes"},
		{dev, Publish, "alarms/s1", 0, true, false, "moat.yaml: devices-no-retained-alarms"},
		{dev, Publish, "alarms/s1", 0, false, true, "moat.yaml: devices-alarms"},
		{dev, Receive, "broadcast/news", 0, false, true, "moat.yaml: broadcast"},
		// First match wins: broadcast comes before its deny.
		{dev, Receive, "broadcast/secret/x", 0, false, true, "moat.yaml: broadcast"},
		{dev, Receive, "tenants/globex/x", 0, false, true, "moat.yaml: tenants"},
		{dev, Receive, "tenants/acme/x", 0, false, false, "default"},
		{anon, Receive, "broadcast/news", 0, false, true, "moat.yaml: broadcast"},
		{anon, Publish, "firmware/x", 0, false, false, "default"},
		{anon, Subscribe, "#", 0, false, true, "moat.yaml: broadcast"},
		{anon, Subscribe, "devices/#", 0, false, false, "default"},
		{op, Publish, "firmware/x", 0, false, false, "moat.yaml: no-firmware-writes"},
		{op, Publish, "anything/at/all", 2, true, true, "moat.yaml: operators"},
		{op, Receive, "$SYS/broker/uptime", 0, false, true, "moat.yaml: operators"},
		{op, Subscribe, "$SYS/#", 0, false, true, "moat.yaml: operators"},
		{opMapped, Receive, "x", 0, false, true, "moat.yaml: operators"},
		{opOutside, Receive, "x", 0, false, false, "default"},
		{api, Publish, "svc/spiffe://example.org/ns/prod/sa/api/out", 0, false, true, "moat.yaml: spiffe-workloads"},
		{api, Publish, "svc/spiffe://example.org/ns/prod/sa/other/out", 0, false, false, "default"},
		{alice, Publish, "users/alice/x", 0, false, true, "moat.yaml: alice"},
		{aliceOutside, Publish, "users/alice/x", 0, false, false, "default"},
	} {
		d := p.Decide(Request{Subject: c.s, Action: c.action, Topic: c.topic, QoS: c.qos, Retain: c.retain})
		if d.Allow != c.want || d.Rule != c.rule || d.Reason == "" {
			t.Errorf("%s/%s %s %q qos %d retain %v = %v by %q (%s); want %v by %q",
				c.s.Username, c.s.ClientID, c.action, c.topic, c.qos, c.retain, d.Allow, d.Rule, d.Reason, c.want, c.rule)
		}
	}
}

// TestRulesSubscribeDenyCoverage: a deny rule refuses a subscription only
// when it covers the whole filter; a partial deny is left to each delivery
// and does not stop a later allow.
func TestRulesSubscribeDenyCoverage(t *testing.T) {
	p := mustRules(t, `
rules:
  - {effect: deny, subjects: {all: true}, actions: [read], topics: ["a/secret/#"]}
  - {effect: allow, subjects: {all: true}, actions: [read], topics: ["a/#"]}
`)
	s := &Subject{Username: "u", ClientID: "c"}
	for _, c := range []struct {
		action Action
		topic  string
		want   bool
	}{
		{Subscribe, "a/#", true},
		{Subscribe, "a/secret/#", false},
		{Subscribe, "a/secret/x", false},
		{Subscribe, "a/+/x", true},
		{Receive, "a/secret/x", false},
		{Receive, "a/public/x", true},
		{Subscribe, "b/#", false},
	} {
		if d := p.Decide(Request{Subject: s, Action: c.action, Topic: c.topic}); d.Allow != c.want {
			t.Errorf("%s %q = %v (%s), want %v", c.action, c.topic, d.Allow, d.Reason, c.want)
		}
	}
}

// TestRulesRetainConditionOnSubscribe: a deny of retained messages alone
// refuses their deliveries, not the subscription.
func TestRulesRetainConditionOnSubscribe(t *testing.T) {
	p := mustRules(t, `
rules:
  - {name: no-retained, effect: deny, subjects: {all: true}, actions: [read], topics: ["x/#"], retain: true}
  - {name: x, effect: allow, subjects: {all: true}, actions: [read], topics: ["x/#"]}
`)
	s := &Subject{Username: "u", ClientID: "c"}
	for _, c := range []struct {
		action Action
		retain bool
		want   bool
		rule   string
	}{
		{Subscribe, false, true, "moat.yaml: x"},
		{Receive, true, false, "moat.yaml: no-retained"},
		{Receive, false, true, "moat.yaml: x"},
	} {
		d := p.Decide(Request{Subject: s, Action: c.action, Topic: "x/a", Retain: c.retain})
		if d.Allow != c.want || d.Rule != c.rule {
			t.Errorf("%s retain %v = %v by %q, want %v by %q", c.action, c.retain, d.Allow, d.Rule, c.want, c.rule)
		}
	}
}

// TestSecurityHashDoesNotGrantDollar: an operator writes "#" meaning "every
// application topic"; it must not give access to the broker's $SYS and
// $moat trees, which MQTT keeps out of reach of a leading wildcard.
func TestSecurityHashDoesNotGrantDollar(t *testing.T) {
	p := mustRules(t, `
rules:
  - {effect: allow, subjects: {all: true}, actions: [publish, subscribe, receive], topics: ["#", "+/#", "%u/#", "%c/#"]}
`)
	for _, s := range []*Subject{{Username: "$SYS", ClientID: "$moat"}, {Anonymous: true, ClientID: "c"}} {
		for _, a := range []Action{Publish, Receive} {
			for _, tp := range []string{"$SYS/broker/uptime", "$moat/acl", "$SYS", "$moat"} {
				if d := p.Decide(Request{Subject: s, Action: a, Topic: tp}); d.Allow {
					t.Errorf("%q/%q %s %q allowed by %s", s.Username, s.ClientID, a, tp, d.Rule)
				}
			}
		}
		for _, f := range []string{"$SYS/#", "$moat/#", "$SYS/+", "$moat"} {
			if d := p.Decide(Request{Subject: s, Action: Subscribe, Topic: f}); d.Allow {
				t.Errorf("%q/%q subscribe %q allowed by %s", s.Username, s.ClientID, f, d.Rule)
			}
		}
	}
}

// TestSecurityRuleSubstitutionInjection: identities with '+', '#' or '/'
// substituted into a rule's topic would reach other identities' trees.
func TestSecurityRuleSubstitutionInjection(t *testing.T) {
	p := mustRules(t, `
rules:
  - {effect: allow, subjects: {all: true}, actions: [publish, read], topics: ["devices/%u/#", "clients/%c/#", "cn/%{cn}/#", "ou/%{ou}/x"]}
`)
	for _, c := range []struct {
		s     *Subject
		topic string
	}{
		{&Subject{Username: "+", ClientID: "c"}, "devices/bob/x"},
		{&Subject{Username: "#", ClientID: "c"}, "devices/bob/x"},
		{&Subject{Username: "bob/x", ClientID: "c"}, "devices/bob/x/y"},
		{&Subject{Username: "u", ClientID: "victim/secret"}, "clients/victim/secret/x"},
		{&Subject{Username: "u", ClientID: "c", Cert: Cert{CN: "a/b"}}, "cn/a/b/x"},
		{&Subject{Username: "u", ClientID: "c", Cert: Cert{OU: []string{"+"}}}, "ou/anything/x"},
	} {
		for _, a := range []Action{Publish, Receive} {
			if d := p.Decide(Request{Subject: c.s, Action: a, Topic: c.topic}); d.Allow {
				t.Errorf("%+v %s %q allowed by %s", c.s, a, c.topic, d.Rule)
			}
		}
		if d := p.Decide(Request{Subject: c.s, Action: Subscribe, Topic: c.topic}); d.Allow {
			t.Errorf("%+v subscribe %q allowed by %s", c.s, c.topic, d.Rule)
		}
	}
	ok := &Subject{Username: "bob", ClientID: "c", Cert: Cert{OU: []string{"x", "eng"}}}
	if d := p.Decide(Request{Subject: ok, Action: Publish, Topic: "ou/eng/x"}); !d.Allow {
		t.Errorf("multi-valued %%{ou}: %s", d.Reason)
	}
	if d := p.Decide(Request{Subject: ok, Action: Subscribe, Topic: "ou/+/x"}); !d.Allow {
		t.Errorf("multi-valued %%{ou} subscribe: %s", d.Reason)
	}
}

func TestRulesErrors(t *testing.T) {
	bad := []RuleSpec{
		{Effect: "permit", Subjects: Subjects{All: true}, Actions: []string{"publish"}, Topics: []string{"a"}},
		{Effect: "allow", Actions: []string{"publish"}, Topics: []string{"a"}},
		{Effect: "allow", Subjects: Subjects{All: true}, Actions: []string{"pub"}, Topics: []string{"a"}},
		{Effect: "allow", Subjects: Subjects{All: true}, Actions: []string{"publish"}},
		{Effect: "allow", Subjects: Subjects{All: true}, Actions: []string{"publish"}, Topics: []string{"a/#/b"}},
		{Effect: "allow", Subjects: Subjects{All: true}, Actions: []string{"publish"}, Topics: []string{"a/%{nope}"}},
		{Effect: "allow", Subjects: Subjects{All: true}, Actions: []string{"publish"}, Topics: []string{"a/%{cn"}},
		{Effect: "allow", Subjects: Subjects{Sources: []string{"10.0.0.0/33"}}, Actions: []string{"publish"}, Topics: []string{"a"}},
		{Name: "qos", Effect: "allow", Subjects: Subjects{All: true}, Actions: []string{"publish"}, Topics: []string{"a"}, MaxQoS: new(3)},
	}
	_, err := New(Options{Rules: bad, RulesSource: "f.yaml"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{`rules[1]: effect "permit"`, "rules[2]: no subjects", `rules[3]: unknown action "pub"`,
		"rules[4]: no topics", `rules[5]: topic "a/#/b"`, "unknown substitution %{nope}", "unterminated %{",
		`rules[8]: source "10.0.0.0/33"`, "f.yaml: qos: max_qos 3"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// TestCredentialGrants: a token's own topic lists apply when no rule
// matched, and never override a deny rule.
func TestCredentialGrants(t *testing.T) {
	p := mustRules(t, `
rules:
  - {effect: deny, subjects: {all: true}, actions: [publish, read], topics: ["locked/#"]}
`)
	s := &Subject{Username: "t", ClientID: "c", CredentialPublish: []string{"up/t/#", "locked/x", "a/#/b"}, CredentialSubscribe: []string{"down/t/+"}}
	for _, c := range []struct {
		action Action
		topic  string
		want   bool
		rule   string
	}{
		{Publish, "up/t/x", true, "credential"},
		{Publish, "locked/x", false, "moat.yaml: rules[1]"},
		{Publish, "down/t/x", false, "default"},
		{Receive, "down/t/x", true, "credential"},
		{Subscribe, "down/#", true, "credential"},
		{Subscribe, "up/#", false, "default"},
		{Receive, "$SYS/x", false, "default"},
	} {
		d := p.Decide(Request{Subject: s, Action: c.action, Topic: c.topic})
		if d.Allow != c.want || d.Rule != c.rule {
			t.Errorf("%s %q = %v by %q, want %v by %q", c.action, c.topic, d.Allow, d.Rule, c.want, c.rule)
		}
	}
}

func TestRulesBeforeACLFile(t *testing.T) {
	a, err := ParseACLFile("acl", strings.NewReader("topic read #\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{ACL: a, Rules: []RuleSpec{{Effect: "deny", Subjects: Subjects{All: true}, Actions: []string{"read"}, Topics: []string{"x/#"}}}})
	if err != nil {
		t.Fatal(err)
	}
	s := &Subject{Anonymous: true, ClientID: "c"}
	if d := p.Decide(Request{Subject: s, Action: Receive, Topic: "x/y"}); d.Allow || d.Rule != "rules: rules[1]" {
		t.Errorf("rule did not come first: %+v", d)
	}
	if d := p.Decide(Request{Subject: s, Action: Receive, Topic: "y"}); !d.Allow || d.Rule != "acl:1" {
		t.Errorf("acl_file not consulted after the rules: %+v", d)
	}
}

func TestHolder(t *testing.T) {
	allow := mustRules(t, "rules: [{effect: allow, subjects: {all: true}, actions: [receive], topics: ['#']}]")
	deny := mustRules(t, "rules: [{effect: deny, subjects: {all: true}, actions: [receive], topics: ['#']}]")
	h := NewHolder(allow)
	req := Request{Subject: &Subject{Anonymous: true, ClientID: "c"}, Action: Receive, Topic: "a"}
	g1 := h.Generation()
	if !h.Decide(req).Allow {
		t.Fatal("allow policy denied")
	}
	g2 := h.Swap(deny)
	if g2 == g1 || h.Generation() != g2 {
		t.Fatalf("generation %d -> %d (now %d)", g1, g2, h.Generation())
	}
	if h.Decide(req).Allow {
		t.Fatal("swapped-in deny policy allowed")
	}
	if k := req.Key(); k.Topic != "a" || k.Action != Receive {
		t.Errorf("Key() = %+v", k)
	}
}
