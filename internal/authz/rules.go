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
	// A rule that selects by one of the indexed subject fields is listed
	// (in rule order) under each of its values of the first such field, in
	// byKey; any other rule is "general" and listed under the literal
	// first level of its topics (genFirst) or, if a topic starts with a
	// wildcard or a substitution, in genWild.
	byKey    [nKeys]map[string][]int32
	used     []keyKind // kinds with entries
	genFirst map[string][]int32
	genWild  []int32
	general  []int32
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

// addKeys adds the candidate lists for the subject's values of field k.
func (rs *ruleSet) addKeys(m *merger, s *Subject, k keyKind) {
	idx := rs.byKey[k]
	one := func(v string) {
		if v != "" {
			m.add(idx[v])
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
		for _, g := range s.Groups {
			m.add(idx[g])
		}
	case keyOU:
		for _, v := range s.Cert.OU {
			m.add(idx[v])
		}
	case keyO:
		for _, v := range s.Cert.O {
			m.add(idx[v])
		}
	case keySPIFFE:
		one(s.Cert.SPIFFE)
	case keyListener:
		one(s.Listener)
	}
}

// merger yields the indexes of several ascending lists in ascending
// order, each once. The first lists are held inline so that a decision
// does not allocate.
type merger struct {
	inline [8][]int32
	n      int
	more   [][]int32
	last   int32
}

func (m *merger) add(l []int32) {
	switch {
	case len(l) == 0:
	case m.n < len(m.inline):
		m.inline[m.n] = l
		m.n++
	default:
		m.more = append(m.more, l)
	}
}

func (m *merger) next() (int32, bool) {
	for {
		var best *[]int32
		for i := range m.n {
			if l := &m.inline[i]; len(*l) > 0 && (best == nil || (*l)[0] < (*best)[0]) {
				best = l
			}
		}
		for i := range m.more {
			if l := &m.more[i]; len(*l) > 0 && (best == nil || (*l)[0] < (*best)[0]) {
				best = l
			}
		}
		if best == nil {
			return 0, false
		}
		idx := (*best)[0]
		*best = (*best)[1:]
		if idx != m.last {
			m.last = idx
			return idx, true
		}
	}
}

func compileRules(specs []RuleSpec, source string) (*ruleSet, error) {
	if source == "" {
		source = "rules"
	}
	if len(specs) > MaxRules {
		return nil, fmt.Errorf("authz: %s: %d rules; at most %d", source, len(specs), MaxRules)
	}
	rs := &ruleSet{rules: make([]rule, len(specs)), genFirst: map[string][]int32{}}
	var errs []error
	for i := range specs {
		r, err := compileRule(&specs[i], i, source)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rs.rules[i] = r
		rs.index(&rs.rules[i], &specs[i])
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for k := range nKeys {
		if len(rs.byKey[k]) > 0 {
			rs.used = append(rs.used, k)
		}
	}
	return rs, nil
}

func (rs *ruleSet) index(r *rule, sp *RuleSpec) {
	for k := range nKeys {
		vals := sp.keyValues(k)
		if len(vals) == 0 {
			continue
		}
		if rs.byKey[k] == nil {
			rs.byKey[k] = map[string][]int32{}
		}
		for _, v := range dedup(vals) {
			rs.byKey[k][v] = append(rs.byKey[k][v], r.idx)
		}
		return
	}
	rs.general = append(rs.general, r.idx)
	var firsts []string
	for _, p := range r.topics {
		if p.first == "" {
			rs.genWild = append(rs.genWild, r.idx)
			return
		}
		firsts = append(firsts, p.first)
	}
	for _, f := range dedup(firsts) {
		rs.genFirst[f] = append(rs.genFirst[f], r.idx)
	}
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
	m := merger{last: -1}
	for _, k := range rs.used {
		rs.addKeys(&m, s, k)
	}
	if first := firstLevel(req.Topic); req.Action == Subscribe && (first == "+" || first == "#") {
		m.add(rs.general)
	} else {
		m.add(rs.genFirst[first])
		m.add(rs.genWild)
	}
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
