package broker

import (
	"context"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/moatmq/moat/internal/packet"
)

// authzCacheSize bounds the decisions cached per connection. A connection
// starts with authzCacheMin slots and doubles them, up to this, when two
// of its topics collide, so a device with a few topics costs a few slots
// and a collector reading many topics gets the whole table. An entry
// holds a topic of up to MaxTopicLength bytes, so a client cycling
// through topics costs at most this many topics.
const (
	authzCacheSize = 256
	authzCacheMin  = 8
)

// maxDenyLogs is how many denials of one connection are logged at info
// level; later ones go to debug, so a client cannot flood the log.
const maxDenyLogs = 20

// authzState is one connection's authorization state. It is shared by the
// connection's Client and the session's snapshot of it (session.client),
// so that an offline session's queued messages are judged with the same
// cache and identity.
type authzState struct {
	// tab is the decision cache, made by the first decision that is
	// looked up in it (table): a connection whose every decision is
	// uniform, as under an allow-all policy, never makes one. Always nil
	// when caches is false.
	tab atomic.Pointer[authzTable]
	// id is the identity decisions are taken for; a re-authentication
	// that changes the grants replaces it, which also retires every
	// cached decision and the Authorizer's memo.
	id atomic.Pointer[authzIdentity]

	denials atomic.Int32
	// caches: decisions are cached in tab. False for a state that caches
	// nothing (a retained message's publisher, a stored one): the zero
	// value caches nothing, so no decision outlives what it was made for
	// by default.
	caches bool
	// uniform holds, per action, whether the Authorizer said that all
	// of the connection's requests for it get one decision
	// (UniformAuthorizer), for the generation and identity it was asked
	// at: an entry with uniform set is that decision, one without says
	// to decide per topic. Nil: not asked yet.
	uniform [numActions]atomic.Pointer[authzEntry]
	// id0 is the identity of CONNECT, kept in the state rather than in
	// an object of its own; a re-authentication that changes the grants
	// stores a new one in id.
	id0 authzIdentity
}

// authzIdentity is what decisions of a connection are taken for: the
// grants of CONNECT (grants nil: the Client's own fields) or of the last
// re-authentication that changed them, and the Authorizer's memo built
// from them. It is replaced as a whole, never modified (but for the memo,
// built once).
type authzIdentity struct {
	grants   *Grants
	memoOnce sync.Once
	memo     any
}

// Grants are what the authentication of a connection grants by itself:
// the identity's groups, the topic filters its credential allows, and the
// backend that vouched for it.
type Grants struct {
	Groups             []string
	Publish, Subscribe []string
	Backend            string
}

// authzTable is a four-way set-associative table of decisions: a key may
// sit in any slot of the set of authzWays its hash selects. Entries are immutable
// and read without a lock; a stale one (older policy generation or
// identity) is never used and is the first to be overwritten.
type authzTable struct {
	mask  uint64 // of the slot index
	slots []atomic.Pointer[authzEntry]
}

// authzWays is the number of slots a key may take.
const authzWays = 4

type authzEntry struct {
	hash   uint64
	gen    uint64         // Server.authzGen the decision was taken at
	id     *authzIdentity // the identity it was taken for
	action Action
	qos    byte
	retain bool
	topic  string
	d      Decision
	// uniform: the decision holds for every topic (authzState.uniform).
	uniform bool
}

func newAuthzTable(n int) *authzTable {
	return &authzTable{mask: uint64(n - 1), slots: make([]atomic.Pointer[authzEntry], n)}
}

// newAuthzState returns a connection's state: decisions cached, the
// table itself made when the first of them needs it.
func newAuthzState() *authzState {
	az := &authzState{caches: true}
	az.id.Store(&az.id0)
	return az
}

// table returns the decision cache, making it on first use. Two callers
// racing to make it keep the same one: the loser's table is dropped
// before anything is stored in it.
func (az *authzState) table() *authzTable {
	if t := az.tab.Load(); t != nil {
		return t
	}
	az.tab.CompareAndSwap(nil, newAuthzTable(authzCacheMin))
	return az.tab.Load()
}

// authzSeed keys the cache's hash; per process, so a peer cannot choose
// topics that collide.
var authzSeed = maphash.MakeSeed()

func authzHash(a Action, topic string, qos byte, retain bool) uint64 {
	h := maphash.String(authzSeed, topic)
	k := uint64(a)<<3 | uint64(qos)<<1
	if retain {
		k |= 1
	}
	return h ^ k*0x9e3779b97f4a7c15
}

func (e *authzEntry) is(h uint64, a Action, topic string, qos byte, retain bool) bool {
	return e.hash == h && e.action == a && e.qos == qos && e.retain == retain && e.topic == topic
}

// set returns the slots h may sit in.
func (t *authzTable) set(h uint64) []atomic.Pointer[authzEntry] {
	i := h & t.mask &^ (authzWays - 1)
	return t.slots[i : i+authzWays]
}

// lookup returns the cached decision, if it was taken at gen for id.
func (t *authzTable) lookup(h, gen uint64, id *authzIdentity, a Action, topic string, qos byte, retain bool) (Decision, bool) {
	set := t.set(h)
	for i := range set {
		if e := set[i].Load(); e != nil && e.gen == gen && e.id == id && e.is(h, a, topic, qos, retain) {
			return e.d, true
		}
	}
	return Decision{}, false
}

// put stores e in a free, stale or same-key slot of its set, and reports
// false when all hold other live decisions.
func (t *authzTable) put(e *authzEntry) bool {
	set := t.set(e.hash)
	for i := range set {
		if o := set[i].Load(); o == nil || o.gen != e.gen || o.id != e.id || o.is(e.hash, e.action, e.topic, e.qos, e.retain) {
			set[i].Store(e)
			return true
		}
	}
	return false
}

// store caches e. When every slot of its set holds another live
// decision, the table doubles (up to authzCacheSize) or, at full size,
// one of them (chosen by the hash's top bits) is replaced. A store racing with another may be lost, which costs one
// decision later, never a wrong one.
func (az *authzState) store(e *authzEntry) {
	t := az.table()
	if t.put(e) {
		return
	}
	if len(t.slots) >= authzCacheSize {
		t.set(e.hash)[e.hash>>62].Store(e)
		return
	}
	nt := newAuthzTable(2 * len(t.slots))
	for i := range t.slots {
		if o := t.slots[i].Load(); o != nil && o.gen == e.gen && o.id == e.id {
			nt.put(o)
		}
	}
	nt.put(e)
	az.tab.CompareAndSwap(t, nt)
}

// Memo returns the value build makes for this client, building it once
// per connection and identity: an Authorizer keeps what it derives from
// the client (its policy subject) here rather than per request. A
// re-authentication that changes the grants starts a new memo. A Client
// without connection state (a snapshot of an offline publisher, a Client
// built by a test) builds it on every call.
func (c *Client) Memo(build func(*Client) any) any {
	if c.az == nil {
		return build(c)
	}
	id := c.az.id.Load()
	id.memoOnce.Do(func() { id.memo = build(c) })
	return id.memo
}

// Grants returns what the connection's authentication grants now: the
// fields Groups, Publish, Subscribe and AuthBackend as of CONNECT, or what
// the latest re-authentication that changed them returned.
func (c *Client) Grants() Grants {
	if c.az != nil {
		if g := c.az.id.Load().grants; g != nil {
			return *g
		}
	}
	return Grants{Groups: c.Groups, Publish: c.Publish, Subscribe: c.Subscribe, Backend: c.AuthBackend}
}

// authorize asks the Authorizer, through c's decision cache. A decision
// is cached with the server's authorization generation and the
// connection's identity, and used only while both hold: Reevaluate moves
// the generation on, and a re-authentication that changes the grants
// replaces the identity, before anything is re-checked, so no decision
// taken under an older policy or older grants is served after. A hit
// takes no lock and does not allocate.
func (s *Server) authorize(c *Client, a Action, topic string, qos byte, retain bool, group string) Decision {
	az := c.az
	if az == nil || !az.caches {
		req := &AuthzRequest{Client: c, Action: a, Topic: topic, ShareGroup: group, QoS: qos, Retain: retain}
		return s.authorizer.Authorize(req)
	}
	// The generation and the identity are read before deciding: a
	// decision racing with a change is stored under the old ones, and
	// never used.
	gen := s.authzGen.Load()
	id := az.id.Load()
	if s.uniform != nil && int(a) < numActions {
		e := az.uniform[a].Load()
		if e == nil || e.gen != gen || e.id != id {
			d, ok := s.uniform.Uniform(c, a)
			e = &authzEntry{gen: gen, id: id, action: a, d: d, uniform: ok}
			az.uniform[a].Store(e)
			if ok {
				s.stats.countDecision(a, d)
			}
		}
		if e.uniform {
			return e.d
		}
	}
	h := authzHash(a, topic, qos, retain)
	if d, ok := az.table().lookup(h, gen, id, a, topic, qos, retain); ok {
		return d
	}
	req := &AuthzRequest{Client: c, Action: a, Topic: topic, ShareGroup: group, QoS: qos, Retain: retain}
	d := s.authorizer.Authorize(req)
	az.store(&authzEntry{hash: h, gen: gen, id: id, action: a, qos: qos, retain: retain, topic: topic, d: d})
	return d
}

// publishMemo is the last publish decision of a connection, kept on its
// reader (conn.pubMemo) under the same generation and identity rules as
// the connection's cache. A client publishing one topic after another
// (a sensor, a fan-in) is then decided from memory its reader touches
// anyway, rather than from the shared cache's entry, which a broker with
// thousands of publishers has to fetch from main memory for every
// message.
type publishMemo struct {
	gen    uint64
	id     *authzIdentity
	topic  string
	qos    byte
	retain bool
	d      Decision
}

// authorizePublish is authorize for a PUBLISH the connection's reader
// handles: its last decision when the topic, QoS, retain flag,
// generation and identity are the same. As in authorize, the generation
// and identity are read before deciding, so a decision racing with a
// change is kept under the old ones and never used.
func (c *conn) authorizePublish(topic string, qos byte, retain bool) Decision {
	s, az := c.srv, c.client.az
	if az == nil || !az.caches {
		return s.authorize(&c.client, ActionPublish, topic, qos, retain, "")
	}
	gen, id := s.authzGen.Load(), az.id.Load()
	m := &c.pubMemo
	if m.id == id && m.gen == gen && m.topic == topic && m.qos == qos && m.retain == retain {
		return m.d
	}
	d := s.authorize(&c.client, ActionPublish, topic, qos, retain, "")
	*m = publishMemo{gen: gen, id: id, topic: topic, qos: qos, retain: retain, d: d}
	return d
}

// retainSourceAllowed checks, on retained replay, that the message's
// publisher may still publish it (Config.CheckRetainSource). Messages the
// server published ($SYS) have no publisher and pass; a recovered message
// whose publisher the store did not keep is refused. A refusal's Reason
// names the publisher, for the subscriber's log line.
func (s *Server) retainSourceAllowed(m *Message) (Decision, bool) {
	if !s.cfg.CheckRetainSource {
		return Decision{}, true
	}
	if m.publisherUnknown {
		return Decision{Reason: "its publisher is unknown (stored before the store kept publishers, or imported without one)",
			Rule: "check_retain_source"}, false
	}
	if m.Publisher == nil {
		return Decision{}, true
	}
	// Not through a cache: the publisher snapshot has none (m is nil).
	d := s.authorizer.Authorize(&AuthzRequest{Client: m.Publisher, Action: ActionPublish, Topic: m.Topic, QoS: m.QoS, Retain: true, RetainSource: true})
	if !d.Allow {
		d.Reason = "its publisher " + m.Publisher.Username + " (" + m.Publisher.ClientID + ") may no longer publish it: " + d.Reason
	}
	return d, d.Allow
}

// denied counts and logs a refusal. Denials of one connection are logged
// at info level up to maxDenyLogs, then at debug level; receive denials
// (one per message a subscription matched) are always at debug level.
func (s *Server) denied(c *Client, a Action, topic string, d Decision, what string) {
	s.stats.authzDenied.Add(1)
	s.stats.countDenial(what, d)
	level := slog.LevelInfo
	if a == ActionReceive {
		level = slog.LevelDebug
	}
	if c.az != nil {
		switch n := c.az.denials.Add(1); {
		case n == maxDenyLogs+1:
			s.log.Info("broker: further denials of this client are logged at debug level", "listener", c.Listener, "client", c.ClientID)
			level = slog.LevelDebug
		case n > maxDenyLogs:
			level = slog.LevelDebug
		}
	}
	if !s.log.Enabled(context.Background(), level) {
		return
	}
	s.log.Log(context.Background(), level, "broker: "+what+" not authorized", "listener", c.Listener, "client", c.ClientID,
		"username", c.Username, "action", a.String(), "topic", clipTopic(topic), "rule", d.Rule, "reason", d.Reason)
}

// clipTopic shortens a peer-controlled topic for a log line.
func clipTopic(s string) string {
	const maxLen = 256
	if len(s) > maxLen {
		return s[:maxLen] + "…"
	}
	return s
}

// snapshot returns a copy of c that outlives its connection: no Conn
// (the certificate chain is kept), the authorization state shared when
// withState is set; without it, the copy carries the grants in force now.
func (c *Client) snapshot(withState bool) *Client {
	cp := *c
	cp.peerCerts = c.PeerCertificates()
	cp.Conn = nil
	if !withState {
		g := c.Grants()
		cp.Groups, cp.Publish, cp.Subscribe, cp.AuthBackend = g.Groups, g.Publish, g.Subscribe, g.Backend
		cp.az = nil
	}
	return &cp
}

// publisherSnapshot returns the identity a retained message keeps of its
// publisher: a snapshot with its own Memo (the Authorizer's subject is
// built once per publishing connection, not per replay) and no decision
// cache (RetainSource requests are not cached).
func (c *Client) publisherSnapshot() *Client {
	cp := c.snapshot(false)
	cp.az = &authzState{}
	cp.az.id.Store(&authzIdentity{})
	return cp
}

// Reevaluation says which sessions lost access and how.
type Reevaluation struct {
	// Match selects the clients concerned by their identity (the Client
	// of the session's latest connection); nil selects every session.
	Match func(*Client) bool
	// Disconnect says the authentication of the selected clients no
	// longer holds (password removed or changed, certificate revoked, ban,
	// token expired, directory account gone): their connections are
	// closed (MQTT 5: DISCONNECT with Code and Reason). Without it, the
	// selected sessions' subscriptions, queued and in-flight messages are
	// re-checked against the Authorizer (the policy changed).
	Disconnect bool
	// Regrant, when set (without Disconnect), gives each selected session
	// new grants, computed from those in force (a directory's re-check
	// found other groups): they become the connection's identity, which
	// retires its cached decisions, and the session is re-checked against
	// them. The connection stays.
	Regrant func(Grants) Grants
	// Code is the DISCONNECT reason code sent to MQTT 5 clients; default
	// 0x87 Not authorized. An operator's ban uses 0x98 Administrative
	// action (MQTT 5 has no Banned code in DISCONNECT).
	Code packet.ReasonCode
	// Reason is logged with every step and sent in the DISCONNECT.
	Reason string
}

// ReevaluateResult counts what Reevaluate did, and lists the sessions it
// acted on (for the audit trail).
type ReevaluateResult struct {
	Disconnected int // connections closed
	Unsubscribed int // subscriptions removed
	Dropped      int // queued and in-flight messages dropped
	Clients      []ReevaluatedClient
}

// ReevaluatedClient is one session Reevaluate acted on.
type ReevaluatedClient struct {
	// Client is the identity of the session's latest connection (a
	// snapshot: its Conn is nil).
	Client       *Client
	Disconnected bool
	Unsubscribed int
	Dropped      int
}

// Reevaluate is the one path of loss of access: every trigger (policy
// reloaded, password removed or changed, certificate revoked, ban, token
// expiry, group change) calls it. For each session r.Match selects: with
// r.Disconnect it closes the live connection; otherwise, after
// invalidating every cached decision of every connection, it removes the
// subscriptions the Authorizer no longer allows and drops the queued and
// not yet delivered in-flight messages the client may no longer receive.
// Every step is logged with r.Reason and counted in Stats. Safe for
// concurrent use; it must not be called from an Authorizer.
func (s *Server) Reevaluate(r Reevaluation) ReevaluateResult {
	if !r.Disconnect && r.Regrant == nil {
		// A changed policy retires everyone's decisions. A closed
		// connection's die with it, and new grants retire those of the
		// sessions they are given to.
		s.authzGen.Add(1)
	}
	code := r.Code
	if code == 0 {
		code = packet.NotAuthorized
	}
	var res ReevaluateResult
	s.sessions.Range(func(_, v any) bool {
		sess := v.(*session)
		sess.mu.Lock()
		cl, c := sess.client, sess.conn
		sess.mu.Unlock()
		if cl == nil || (r.Match != nil && !r.Match(cl)) {
			return true
		}
		if r.Disconnect {
			if c != nil && c.loseAccessCode(code, r.Reason) {
				res.Disconnected++
				res.Clients = append(res.Clients, ReevaluatedClient{Client: cl, Disconnected: true})
			}
			return true
		}
		if r.Regrant != nil {
			s.regrantSession(sess, cl, r.Regrant(cl.Grants()), r.Reason, &res)
			return true
		}
		s.recheckSession(sess, cl, r.Reason, &res)
		return true
	})
	if len(res.Clients) > 0 || r.Disconnect {
		s.log.Info("broker: access re-evaluated", "reason", r.Reason, "disconnected", res.Disconnected,
			"unsubscribed", res.Unsubscribed, "dropped", res.Dropped)
	}
	return res
}

// loseAccess closes the connection because its authentication no longer
// holds (MQTT 5: DISCONNECT 0x87 Not authorized). It reports false when
// the connection was already closing.
func (c *conn) loseAccess(reason string) bool {
	return c.loseAccessCode(packet.NotAuthorized, reason)
}

// loseAccessCode is loseAccess with another DISCONNECT reason code.
func (c *conn) loseAccessCode(code packet.ReasonCode, reason string) bool {
	if c.closing.Load() {
		return false
	}
	c.log.Warn("broker: client lost access; disconnecting", "code", code, "reason", reason)
	c.srv.stats.revokedDisconnects.Add(1)
	c.kill(code, reason)
	return true
}

// regrant installs the groups and grants of a re-authentication that
// changed them, on the loss-of-access path (see regrantSession). Called by
// the reader.
func (c *conn) regrant(res *AuthResult) {
	s := c.srv
	before := c.client.Grants()
	g := Grants{Groups: res.Groups, Publish: res.Publish, Subscribe: res.Subscribe, Backend: res.Backend}
	const reason = "re-authentication changed the groups or grants"
	var out ReevaluateResult
	sess := s.lookup(c.client.ClientID)
	var cl *Client
	if sess != nil {
		sess.mu.Lock()
		if sess.conn == c {
			cl = sess.client
		}
		sess.mu.Unlock()
	}
	if cl == nil {
		// No session of its own (being taken over): the identity
		// changes all the same for what the connection still does.
		c.client.az.id.Store(&authzIdentity{grants: &g})
	} else {
		s.regrantSession(sess, cl, g, reason, &out)
	}
	c.log.Info("broker: re-authentication changed the groups or grants; applied", "username", c.client.Username,
		"groups", len(g.Groups), "publish_grants", len(g.Publish), "subscribe_grants", len(g.Subscribe),
		"unsubscribed", out.Unsubscribed, "dropped", out.Dropped)
	c.regranted(GrantChange{Before: before, After: g, Reason: reason, Unsubscribed: out.Unsubscribed, Dropped: out.Dropped})
}

// regrantSession makes g the identity of sess's connection (cl is its
// snapshot, sharing the connection's authorization state) and re-checks
// the session against it as Reevaluate does after a policy change:
// subscriptions g no longer allows are removed, queued and not yet
// delivered in-flight messages it no longer allows are dropped. The new
// identity retires every decision cached for the old one, and the
// Authorizer's memo, before anything is re-checked.
func (s *Server) regrantSession(sess *session, cl *Client, g Grants, reason string, res *ReevaluateResult) {
	if cl.az != nil {
		cl.az.id.Store(&authzIdentity{grants: &g})
	}
	s.recheckSession(sess, cl, reason, res)
}

// recheckSession removes the subscriptions of sess that cl may no longer
// make and drops the messages it may no longer receive.
func (s *Server) recheckSession(sess *session, cl *Client, reason string, res *ReevaluateResult) {
	before := ReevaluateResult{Unsubscribed: res.Unsubscribed, Dropped: res.Dropped}
	defer func() {
		if u, d := res.Unsubscribed-before.Unsubscribed, res.Dropped-before.Dropped; u > 0 || d > 0 {
			res.Clients = append(res.Clients, ReevaluatedClient{Client: cl, Unsubscribed: u, Dropped: d})
		}
	}()
	for _, sub := range s.index.Subscriptions(sess.id) {
		d := s.authorize(cl, ActionSubscribe, sub.Filter, sub.QoS, false, sub.Group)
		if d.Allow {
			continue
		}
		if !s.index.Unsubscribe(sess.id, sub.Group, sub.Filter) {
			continue
		}
		s.clusterUnsubscribed(sess.id, sub.Group, sub.Filter)
		n := len(sub.Filter)
		if sub.Group != "" {
			n += len("$share/") + len(sub.Group) + 1
		}
		sess.subs.Add(-1)
		sess.subBytes.Add(-int64(n))
		s.stats.subsRevoked.Add(1)
		res.Unsubscribed++
		s.log.Info("broker: subscription removed: no longer authorized", "client", sess.id, "filter", sub.Filter,
			"group", sub.Group, "rule", d.Rule, "reason", d.Reason, "trigger", reason)
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	online := sess.conn != nil && !sess.conn.closing.Load()
	dropped := sess.queue.filter(func(d *delivery) bool {
		if s.mayReceive(cl, d) {
			return true
		}
		sess.queueBytes -= d.size()
		return false
	})
	s.stats.queued.Add(-int64(dropped))
	if dropped > 0 {
		sess.drainedLocked(s, dropped)
	}
	// In-flight messages the client already holds (sent on its current
	// connection, or released QoS 2) cannot be taken back; the others
	// would be resent, and are dropped.
	for i := 0; i < len(sess.inflight); {
		d := sess.inflight[i]
		if d.released || (online && !d.pending) || s.mayReceive(cl, d) {
			i++
			continue
		}
		sess.removeInflight(i)
		dropped++
	}
	if dropped > 0 {
		s.stats.droppedUnauthorized.Add(int64(dropped))
		res.Dropped += dropped
		s.log.Info("broker: messages dropped: no longer authorized", "client", sess.id, "count", dropped, "trigger", reason)
		if online {
			sess.resumeResendLocked(s)
			sess.fillLocked(s)
		}
	}
}

// mayReceive checks that cl may receive d's message.
func (s *Server) mayReceive(cl *Client, d *delivery) bool {
	dec := s.authorize(cl, ActionReceive, d.msg.Topic, d.msg.QoS, d.msg.Retain, "")
	if !dec.Allow {
		s.denied(cl, ActionReceive, d.msg.Topic, dec, "delivery")
	}
	return dec.Allow
}
