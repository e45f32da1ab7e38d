package authz

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// Spec is the acl section of Moat's YAML configuration. The caller decodes
// YAML into it (the tags are for go.yaml.in/yaml/v3 or any decoder that
// honours them); this package does not parse YAML itself.
type Spec struct {
	// Rules are tried in order; the first that matches decides.
	Rules []RuleSpec `yaml:"rules" json:"rules"`
	// ACLFile is a Mosquitto acl_file consulted after the rules.
	ACLFile string `yaml:"acl_file" json:"acl_file"`
}

// RuleSpec is one rule as written in YAML:
//
//   - name: devices-own-tree
//     effect: allow
//     subjects: {groups: [devices]}
//     actions: [publish, subscribe, receive]
//     topics: ["devices/%u/#"]
//     max_qos: 1
//
// A rule matches a request when every subject field it sets matches, the
// action is listed, the conditions hold and one of its topics matches.
type RuleSpec struct {
	// Name labels the rule in decisions; default "rules[N]" (N from 1).
	Name string `yaml:"name" json:"name"`
	// Effect is "allow" or "deny"; required.
	Effect   string   `yaml:"effect" json:"effect"`
	Subjects Subjects `yaml:"subjects" json:"subjects"`
	// Actions: publish, subscribe, receive; read (subscribe and receive)
	// and write (publish) are shorthands. Required.
	Actions []string `yaml:"actions" json:"actions"`
	// Topics are topic filters with substitutions: %u (username), %c
	// (client ID), %{cn}, %{o}, %{ou}, %{san_dns}, %{san_uri},
	// %{san_email}, %{spiffe}, %{issuer}, %{username}, %{client_id}.
	// Required.
	Topics []string `yaml:"topics" json:"topics"`
	// MaxQoS, when set, makes the rule match only requests with a QoS up
	// to it (the publish QoS, the requested subscription QoS, the delivery
	// QoS).
	MaxQoS *int `yaml:"max_qos" json:"max_qos"`
	// Retain, when set, makes the rule match only publish and receive
	// requests whose retain flag equals it; it does not restrict
	// subscribe.
	Retain *bool `yaml:"retain" json:"retain"`
}

// Subjects selects clients. Every field that is set must match (AND);
// within a field any value may match (OR). A rule must set at least one
// field; all: true selects every client.
type Subjects struct {
	All bool `yaml:"all" json:"all"`
	// Anonymous: true selects anonymous clients only, false authenticated
	// clients only.
	Anonymous *bool    `yaml:"anonymous" json:"anonymous"`
	Usernames []string `yaml:"usernames" json:"usernames"`
	ClientIDs []string `yaml:"client_ids" json:"client_ids"`
	CN        []string `yaml:"cn" json:"cn"`
	O         []string `yaml:"o" json:"o"`
	OU        []string `yaml:"ou" json:"ou"`
	SANDNS    []string `yaml:"san_dns" json:"san_dns"`
	SANURI    []string `yaml:"san_uri" json:"san_uri"`
	SANEmail  []string `yaml:"san_email" json:"san_email"`
	SPIFFE    []string `yaml:"spiffe" json:"spiffe"`
	Issuer    []string `yaml:"issuer" json:"issuer"`
	Groups    []string `yaml:"groups" json:"groups"`
	// Sources are IP addresses or CIDR prefixes of the client.
	Sources   []string `yaml:"sources" json:"sources"`
	Listeners []string `yaml:"listeners" json:"listeners"`
}

// MaxRules bounds the rules of one policy.
const MaxRules = 1 << 20

type strSet struct {
	list []string
	set  map[string]struct{}
}

func newSet(v []string) strSet {
	if len(v) > 8 {
		m := make(map[string]struct{}, len(v))
		for _, s := range v {
			m[s] = struct{}{}
		}
		return strSet{set: m}
	}
	return strSet{list: v}
}

func (s strSet) empty() bool { return s.set == nil && len(s.list) == 0 }

func (s strSet) has(v string) bool {
	if s.set != nil {
		_, ok := s.set[v]
		return ok
	}
	return slices.Contains(s.list, v)
}

func (s strSet) hasAny(vs []string) bool {
	for _, v := range vs {
		if s.has(v) {
			return true
		}
	}
	return false
}

type rule struct {
	idx      int32
	allow    bool
	actions  uint8 // bit 1<<Action
	anon     *bool
	users    strSet
	clients  strSet
	cn, o    strSet
	ou, dns  strSet
	uri, eml strSet
	spiffe   strSet
	issuer   strSet
	groups   strSet
	listener strSet
	sources  []netip.Prefix
	maxQoS   int // -1: any
	retain   *bool
	topics   []*pattern
	label    string
	reason   string
}

// keyKind is a subject field rules are indexed by.
type keyKind uint8

const (
	keyUser keyKind = iota
	keyClient
	keyCN
	keyGroup
	keyOU
	keyO
	keySPIFFE
	keyListener
	nKeys
)

// ruleSet is a compiled, indexed list of rules.
type ruleSet struct {
	rules []rule
	// by[a] indexes the rules that name action a, so that a decision
	// tries only the rules that apply to its action, select the subject's
	// values or every client, and have a topic that can match.
	by [Receive + 1]ruleIndex
}

// ruleIndex: a rule that selects by one of the indexed subject fields is
// listed under each of its values of the first such field, in byKey; any
// other rule is general. Each list is a topicIndex over the rules' topics.
type ruleIndex struct {
	byKey   [nKeys]map[string]*topicIndex
	used    []keyKind // kinds with entries
	general *topicIndex
}

// keyValues returns the rule's values for an indexed field.
func (sp *RuleSpec) keyValues(k keyKind) []string {
	s := &sp.Subjects
	switch k {
	case keyUser:
		return s.Usernames
	case keyClient:
		return s.ClientIDs
	case keyCN:
		return s.CN
	case keyGroup:
		return s.Groups
	case keyOU:
		return s.OU
	case keyO:
		return s.O
	case keySPIFFE:
		return s.SPIFFE
	case keyListener:
		return s.Listeners
	}
	return nil
}

// addKeys adds the candidates for the subject's values of field k.
func (ri *ruleIndex) addKeys(m *merger, s *Subject, k keyKind, topic string, filter bool) {
	idx := ri.byKey[k]
	one := func(v string) {
		if v != "" {
			idx[v].collect(m, topic, filter)
		}
	}
	many := func(vs []string) {
		for _, v := range vs {
			idx[v].collect(m, topic, filter)
		}
	}
	switch k {
	case keyUser:
		one(s.username())
	case keyClient:
		one(s.ClientID)
	case keyCN:
		one(s.Cert.CN)
	case keyGroup:
		many(s.Groups)
	case keyOU:
		many(s.Cert.OU)
	case keyO:
		many(s.Cert.O)
	case keySPIFFE:
		one(s.Cert.SPIFFE)
	case keyListener:
		one(s.Listener)
	}
}

func compileRules(specs []RuleSpec, source string) (*ruleSet, error) {
	if source == "" {
		source = "rules"
	}
	if len(specs) > MaxRules {
		return nil, fmt.Errorf("authz: %s: %d rules; at most %d", source, len(specs), MaxRules)
	}
	rs := &ruleSet{rules: make([]rule, len(specs))}
	var errs []error
	for i := range specs {
		r, err := compileRule(&specs[i], i, source)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rs.rules[i] = r
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for a := Publish; a <= Receive; a++ {
		rs.by[a] = buildRuleIndex(rs.rules, specs, a)
	}
	return rs, nil
}

// buildRuleIndex indexes the rules that name action a.
func buildRuleIndex(rules []rule, specs []RuleSpec, a Action) ruleIndex {
	var ri ruleIndex
	var keyed [nKeys]map[string][]indexEntry
	var general []indexEntry
	for i := range rules {
		r := &rules[i]
		if r.actions&(1<<a) == 0 {
			continue
		}
		e := indexEntry{pos: r.idx, patterns: r.topics}
		k, vals := indexKey(&specs[i])
		if k == nKeys {
			general = append(general, e)
			continue
		}
		if keyed[k] == nil {
			keyed[k] = map[string][]indexEntry{}
		}
		for _, v := range vals {
			keyed[k][v] = append(keyed[k][v], e)
		}
	}
	for k := range nKeys {
		if len(keyed[k]) == 0 {
			continue
		}
		ri.used = append(ri.used, k)
		ri.byKey[k] = make(map[string]*topicIndex, len(keyed[k]))
		for v, es := range keyed[k] {
			ri.byKey[k][v] = newTopicIndex(es)
		}
	}
	ri.general = newTopicIndex(general)
	return ri
}

// indexKey returns the first indexed subject field the rule sets and its
// distinct values, or nKeys when it sets none.
func indexKey(sp *RuleSpec) (keyKind, []string) {
	for k := range nKeys {
		if vals := sp.keyValues(k); len(vals) > 0 {
			return k, dedup(vals)
		}
	}
	return nKeys, nil
}

func dedup(v []string) []string {
	v = slices.Clone(v)
	slices.Sort(v)
	return slices.Compact(v)
}

func compileRule(sp *RuleSpec, i int, source string) (rule, error) {
	label := sp.Name
	if label == "" {
		label = "rules[" + strconv.Itoa(i+1) + "]"
	}
	where := source + ": " + label
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("authz: %s: "+format, append([]any{where}, args...)...))
	}
	r := rule{idx: int32(i), label: label, maxQoS: -1, retain: sp.Retain}
	switch sp.Effect {
	case "allow":
		r.allow = true
		r.reason = "allowed by rule " + label
	case "deny":
		r.reason = "denied by rule " + label
	default:
		bad("effect %q: want allow or deny", sp.Effect)
	}
	if len(sp.Actions) == 0 {
		bad("no actions (want publish, subscribe, receive, read or write)")
	}
	for _, a := range sp.Actions {
		switch a {
		case "publish", "write":
			r.actions |= 1 << Publish
		case "subscribe":
			r.actions |= 1 << Subscribe
		case "receive":
			r.actions |= 1 << Receive
		case "read":
			r.actions |= 1<<Subscribe | 1<<Receive
		default:
			bad("unknown action %q (want publish, subscribe, receive, read or write)", a)
		}
	}
	if len(sp.Topics) == 0 {
		bad("no topics (write \"#\" for every topic)")
	}
	for _, t := range sp.Topics {
		p, err := compilePattern(t, moat)
		if err != nil {
			bad("topic %q: %v", clip(t), err)
			continue
		}
		r.topics = append(r.topics, p)
	}
	if sp.MaxQoS != nil {
		if *sp.MaxQoS < 0 || *sp.MaxQoS > 2 {
			bad("max_qos %d: want 0, 1 or 2", *sp.MaxQoS)
		}
		r.maxQoS = *sp.MaxQoS
	}
	s := &sp.Subjects
	r.anon = s.Anonymous
	r.users, r.clients, r.cn = newSet(s.Usernames), newSet(s.ClientIDs), newSet(s.CN)
	r.o, r.ou, r.dns, r.uri, r.eml = newSet(s.O), newSet(s.OU), newSet(s.SANDNS), newSet(s.SANURI), newSet(s.SANEmail)
	r.spiffe, r.issuer, r.groups, r.listener = newSet(s.SPIFFE), newSet(s.Issuer), newSet(s.Groups), newSet(s.Listeners)
	for _, src := range s.Sources {
		p, err := netip.ParsePrefix(src)
		if err != nil {
			a, aerr := netip.ParseAddr(src)
			if aerr != nil {
				bad("source %q: want an IP address or CIDR prefix such as 10.0.0.0/8", src)
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		r.sources = append(r.sources, p.Masked())
	}
	if !s.All && s.Anonymous == nil && r.users.empty() && r.clients.empty() && r.cn.empty() && r.o.empty() &&
		r.ou.empty() && r.dns.empty() && r.uri.empty() && r.eml.empty() && r.spiffe.empty() && r.issuer.empty() &&
		r.groups.empty() && r.listener.empty() && len(s.Sources) == 0 {
		bad("no subjects (select clients, or write \"all: true\" for every client)")
	}
	if s.All && (s.Anonymous != nil || !r.users.empty() || !r.clients.empty() || !r.groups.empty()) {
		bad("all: true with other subject fields; remove one")
	}
	if s.Anonymous != nil && *s.Anonymous && !r.users.empty() {
		bad("anonymous: true with usernames never matches (anonymous clients have no username)")
	}
	r.label = where
	return r, errors.Join(errs...)
}

func (r *rule) subjectMatches(s *Subject) bool {
	if r.anon != nil && *r.anon != s.Anonymous {
		return false
	}
	if !r.users.empty() {
		if u := s.username(); u == "" || !r.users.has(u) {
			return false
		}
	}
	if !r.clients.empty() && !r.clients.has(s.ClientID) {
		return false
	}
	c := &s.Cert
	if (!r.cn.empty() && (c.CN == "" || !r.cn.has(c.CN))) ||
		(!r.spiffe.empty() && (c.SPIFFE == "" || !r.spiffe.has(c.SPIFFE))) ||
		(!r.issuer.empty() && (c.Issuer == "" || !r.issuer.has(c.Issuer))) ||
		(!r.o.empty() && !r.o.hasAny(c.O)) || (!r.ou.empty() && !r.ou.hasAny(c.OU)) ||
		(!r.dns.empty() && !r.dns.hasAny(c.DNS)) || (!r.uri.empty() && !r.uri.hasAny(c.URI)) ||
		(!r.eml.empty() && !r.eml.hasAny(c.Email)) ||
		(!r.groups.empty() && !r.groups.hasAny(s.Groups)) ||
		(!r.listener.empty() && !r.listener.has(s.Listener)) {
		return false
	}
	if len(r.sources) > 0 {
		a := s.Addr.Unmap()
		ok := false
		for _, p := range r.sources {
			if a.IsValid() && p.Contains(a) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// conditionsHold checks the action and the conditions.
func (r *rule) conditionsHold(req *Request) bool {
	if r.actions&(1<<req.Action) == 0 {
		return false
	}
	if r.maxQoS >= 0 && int(req.QoS) > r.maxQoS {
		return false
	}
	if r.retain != nil && req.Action != Subscribe && *r.retain != req.Retain {
		return false
	}
	return true
}

// decide returns the first matching rule's decision; ok is false when no
// rule matched.
func (rs *ruleSet) decide(req *Request) (Decision, bool) {
	s := req.Subject
	if req.Topic == "" {
		return Decision{Reason: "empty topic", Rule: "default"}, true
	}
	if req.Action < Publish || req.Action > Receive {
		return Decision{}, false
	}
	ri := &rs.by[req.Action]
	filter := req.Action == Subscribe
	m := newMerger()
	for _, k := range ri.used {
		ri.addKeys(&m, s, k, req.Topic, filter)
	}
	ri.general.collect(&m, req.Topic, filter)
	return rs.decideFrom(req, &m)
}

// decideFrom tries the candidate rules m yields, in order.
func (rs *ruleSet) decideFrom(req *Request, m *merger) (Decision, bool) {
	s := req.Subject
	var subscribeDenies []string
	for {
		idx, ok := m.next()
		if !ok {
			return Decision{}, false
		}
		r := &rs.rules[idx]
		if !r.conditionsHold(req) || !r.subjectMatches(s) {
			continue
		}
		if req.Action != Subscribe {
			for _, p := range r.topics {
				if p.match(s, req.Topic) {
					return Decision{Allow: r.allow, Reason: r.reason, Rule: r.label}, true
				}
			}
			continue
		}
		if d, ok := r.decideSubscribe(s, req.Topic, &subscribeDenies); ok {
			return d, true
		}
	}
}

// decideSubscribe: an allow rule decides when one of its topics can let
// the client receive part of the filter that no earlier deny rule fully
// covers; a deny rule decides only when it covers the whole filter (a deny
// of part of it is left to the receive check and recorded for later allow
// rules).
func (r *rule) decideSubscribe(s *Subject, f string, denies *[]string) (Decision, bool) {
	if !r.allow && r.retain != nil {
		// It denies only some deliveries (retained or not); those are
		// judged one by one.
		return Decision{}, false
	}
	for _, p := range r.topics {
		if f[0] == '$' && !p.dollar {
			continue
		}
		for _, g := range p.expand(s) {
			if r.allow {
				if readable(g, f, *denies) {
					return Decision{Allow: true, Reason: r.reason, Rule: r.label}, true
				}
				continue
			}
			if Covers(g, f) {
				return Decision{Reason: r.reason, Rule: r.label}, true
			}
			if Intersects(g, f) {
				*denies = append(*denies, g)
			}
		}
	}
	return Decision{}, false
}
