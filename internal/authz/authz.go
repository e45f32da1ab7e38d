// Package authz decides what an authenticated client may do with a topic.
//
// A Policy is compiled once from Moat's ordered rules (RuleSpec, first match
// wins) and/or a Mosquitto acl_file (ParseACLFile, Mosquitto 2.0 semantics),
// is immutable, and answers Decide(Request) with a Decision that names the
// rule that made it. Nothing matched is a deny. A Holder keeps the current
// Policy and a generation number, so that callers can cache decisions per
// connection and drop the cache when the policy is swapped.
//
// The package uses the standard library only: the caller decodes YAML into
// the plain Spec structs and converts certificates into Subject fields.
package authz

import (
	"net/netip"
	"strings"
	"sync/atomic"
)

// Action is what a client asks to do with a topic.
type Action uint8

// Actions.
const (
	Publish   Action = iota + 1 // publish to a topic name (will messages included)
	Subscribe                   // subscribe to a topic filter
	Receive                     // be sent a message published on a topic name
)

func (a Action) String() string {
	switch a {
	case Publish:
		return "publish"
	case Subscribe:
		return "subscribe"
	case Receive:
		return "receive"
	}
	return "unknown"
}

// ParseAction parses "publish", "subscribe" or "receive".
func ParseAction(s string) (Action, bool) {
	switch s {
	case "publish":
		return Publish, true
	case "subscribe":
		return Subscribe, true
	case "receive":
		return Receive, true
	}
	return 0, false
}

// Cert holds the fields of a verified client certificate that rules can
// select on and substitute. Empty fields mean "absent".
type Cert struct {
	CN     string
	O, OU  []string
	DNS    []string // DNS SANs
	URI    []string // URI SANs (the SPIFFE ID included)
	Email  []string // email SANs
	SPIFFE string   // the spiffe:// URI SAN, if exactly one
	Issuer string   // the issuer's distinguished name (RFC 2253 form)
}

// Subject is the client a Request is made for. The broker builds one per
// connection after authentication and must not modify it afterwards (build
// a new one on re-authentication). Every field comes from something the
// broker verified; nothing here is taken from the client's word except
// ClientID (which is as trustworthy as the listener's client-ID binding).
type Subject struct {
	// Username is the verified identity; empty for anonymous clients.
	Username string
	// Anonymous is true when the listener's anonymous policy admitted the
	// client. Username is ignored when it is set.
	Anonymous bool
	ClientID  string
	Cert      Cert
	// Groups are the identity's groups (LDAP, JWT).
	Groups []string
	// Addr is the client's address (the real one behind a PROXY header).
	Addr netip.Addr
	// Listener is the name of the listener the client connected to.
	Listener string
	// CredentialPublish and CredentialSubscribe are topic filters granted
	// by the credential itself (JWT ACL claims, %u and %c already
	// substituted). They are consulted only when no rule and no acl_file
	// line matched. Nil grants nothing.
	CredentialPublish, CredentialSubscribe []string
}

// username returns the identity's username for rules, "" when anonymous.
func (s *Subject) username() string {
	if s == nil || s.Anonymous {
		return ""
	}
	return s.Username
}

// Request is one authorization question.
type Request struct {
	// Subject is the client; a nil Subject is denied.
	Subject *Subject
	Action  Action
	// Topic is the topic name (Publish, Receive; after topic-alias
	// resolution) or the topic filter (Subscribe) with any $share/GROUP/
	// prefix removed.
	Topic string
	// ShareGroup is the GROUP of a shared subscription ("" otherwise). It
	// is for logs; rules judge the filter.
	ShareGroup string
	QoS        byte
	Retain     bool
}

// CacheKey is the part of a Request a per-connection decision cache must
// key on: a connection's Subject is fixed, so two requests with the same
// key get the same Decision from the same Policy generation.
type CacheKey struct {
	Action Action
	Topic  string
	QoS    byte
	Retain bool
}

// Key returns the request's cache key.
func (r *Request) Key() CacheKey {
	return CacheKey{Action: r.Action, Topic: r.Topic, QoS: r.QoS, Retain: r.Retain}
}

// Decision is the answer to a Request.
type Decision struct {
	Allow bool
	// Reason explains the decision for logs and the audit trail.
	Reason string
	// Rule names what decided: "FILE:LINE" for an acl_file line, the rule's
	// name or "rules[N]" for a Moat rule, "credential" for a token grant,
	// "default" when nothing matched.
	Rule string
}

var (
	denyNoSubject = Decision{Reason: "authz: no client identity; denied", Rule: "default"}
	denyNoPolicy  = Decision{Reason: "authz: no access policy loaded; denied", Rule: "default"}
	denyDefault   = Decision{Reason: "no rule matches; denied by default", Rule: "default"}
	denyBadAction = Decision{Reason: "authz: unknown action; denied", Rule: "default"}
	denyBadTopic  = Decision{Reason: "authz: empty topic or invalid topic filter; denied", Rule: "default"}
	allowCred     = Decision{Allow: true, Reason: "granted by the client's credential", Rule: "credential"}
)

// Policy is a compiled, immutable access policy. It is safe for concurrent
// use. The zero Policy denies everything.
type Policy struct {
	rules *ruleSet
	acl   *ACLFile
}

// Options selects what a Policy is compiled from. Both may be set: the
// rules are tried first (first match wins), then the acl_file, then the
// credential's own grants; nothing matched is a deny.
type Options struct {
	Rules []RuleSpec
	// RulesSource names where the rules came from, for Decision.Rule and
	// errors (a file name). Empty means "rules".
	RulesSource string
	ACL         *ACLFile
}

// New compiles a Policy. It returns every problem of the rules at once.
func New(o Options) (*Policy, error) {
	p := &Policy{acl: o.ACL}
	if len(o.Rules) > 0 {
		rs, err := compileRules(o.Rules, o.RulesSource)
		if err != nil {
			return nil, err
		}
		p.rules = rs
	}
	return p, nil
}

// Decide answers req. Publish and receive decisions do not allocate.
func (p *Policy) Decide(req Request) Decision {
	s := req.Subject
	if s == nil {
		return denyNoSubject
	}
	if req.Action < Publish || req.Action > Receive {
		return denyBadAction
	}
	if p == nil {
		return denyNoPolicy
	}
	if req.Topic == "" || (req.Action == Subscribe && ValidFilter(req.Topic) != nil) {
		return denyBadTopic
	}
	if p.rules != nil {
		if d, ok := p.rules.decide(&req); ok {
			return d
		}
	}
	if p.acl != nil {
		if d, ok := p.acl.decide(&req); ok {
			return d
		}
	}
	if credentialAllows(&req) {
		return allowCred
	}
	return denyDefault
}

// credentialAllows checks the credential's own grants.
func credentialAllows(req *Request) bool {
	var list []string
	if req.Action == Publish {
		list = req.Subject.CredentialPublish
	} else {
		list = req.Subject.CredentialSubscribe
	}
	for _, f := range list {
		if ValidFilter(f) != nil {
			continue
		}
		if req.Action == Subscribe {
			if Intersects(f, req.Topic) {
				return true
			}
		} else if MatchFilter(f, req.Topic) {
			return true
		}
	}
	return false
}

// Holder holds the current Policy and its generation. Load, Swap and
// Decide are safe for concurrent use. The zero Holder holds no policy and
// denies everything.
type Holder struct {
	cur atomic.Pointer[held]
}

type held struct {
	p   *Policy
	gen uint64
}

// NewHolder returns a Holder holding p at generation 1.
func NewHolder(p *Policy) *Holder {
	h := &Holder{}
	h.cur.Store(&held{p: p, gen: 1})
	return h
}

// Load returns the current policy and its generation (0 and nil when none
// was ever stored).
func (h *Holder) Load() (*Policy, uint64) {
	c := h.cur.Load()
	if c == nil {
		return nil, 0
	}
	return c.p, c.gen
}

// Generation returns the current generation. It changes on every Swap, so
// a cached decision taken at another generation must not be used.
func (h *Holder) Generation() uint64 {
	_, g := h.Load()
	return g
}

// Swap installs p and returns the new generation. Callers must then
// re-evaluate live sessions (subscriptions, queued messages) against it.
func (h *Holder) Swap(p *Policy) uint64 {
	for {
		old := h.cur.Load()
		var g uint64 = 1
		if old != nil {
			g = old.gen + 1
		}
		if h.cur.CompareAndSwap(old, &held{p: p, gen: g}) {
			return g
		}
	}
}

// Decide answers req with the current policy.
func (h *Holder) Decide(req Request) Decision {
	p, _ := h.Load()
	if p == nil {
		return denyNoPolicy
	}
	return p.Decide(req)
}

// SplitShared returns the share group and the filter of a
// "$share/GROUP/FILTER" subscription, or "" and the filter unchanged.
func SplitShared(filter string) (group, f string) {
	const pre = "$share/"
	if !strings.HasPrefix(filter, pre) {
		return "", filter
	}
	g, rest, ok := strings.Cut(filter[len(pre):], "/")
	if !ok || g == "" || rest == "" {
		return "", filter
	}
	return g, rest
}
