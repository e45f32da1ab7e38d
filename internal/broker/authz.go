package broker

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/moatmq/moat/internal/packet"
)

// authzCacheSize bounds the decisions cached per connection. A key holds
// a topic of up to MaxTopicLength bytes, so a client cycling through
// topics costs at most this many topics; a full cache is emptied rather
// than grown.
const authzCacheSize = 256

// maxDenyLogs is how many denials of one connection are logged at info
// level; later ones go to debug, so a client cannot flood the log.
const maxDenyLogs = 20

// authzState is one connection's authorization state. It is shared by the
// connection's Client and the session's snapshot of it (session.client),
// so that an offline session's queued messages are judged with the same
// cache.
type authzState struct {
	mu  sync.Mutex
	gen uint64 // Server.authzGen the entries were decided at
	m   map[authzKey]Decision

	denials atomic.Int32

	memoOnce sync.Once
	memo     any
}

type authzKey struct {
	action Action
	topic  string
	qos    byte
	retain bool
}

func newAuthzState() *authzState {
	return &authzState{m: make(map[authzKey]Decision)}
}

// Memo returns the value build makes for this client, building it once
// per connection: an Authorizer keeps what it derives from the client
// (its policy subject) here rather than per request. A Client without
// connection state (a snapshot of an offline publisher, a Client built by
// a test) builds it on every call.
func (c *Client) Memo(build func(*Client) any) any {
	if c.az == nil {
		return build(c)
	}
	c.az.memoOnce.Do(func() { c.az.memo = build(c) })
	return c.az.memo
}

// authorize asks the Authorizer, through c's decision cache. A decision
// is cached with the server's authorization generation and used only
// while it holds: Reevaluate moves the generation on before it re-checks
// anything, so no decision taken under an older policy is served after.
func (s *Server) authorize(c *Client, a Action, topic string, qos byte, retain bool, group string) Decision {
	az := c.az
	if az == nil || az.m == nil {
		req := &AuthzRequest{Client: c, Action: a, Topic: topic, ShareGroup: group, QoS: qos, Retain: retain}
		return s.authorizer.Authorize(req)
	}
	gen := s.authzGen.Load()
	k := authzKey{action: a, topic: topic, qos: qos, retain: retain}
	az.mu.Lock()
	if az.gen != gen {
		clear(az.m)
		az.gen = gen
	}
	d, ok := az.m[k]
	az.mu.Unlock()
	if ok {
		return d
	}
	req := &AuthzRequest{Client: c, Action: a, Topic: topic, ShareGroup: group, QoS: qos, Retain: retain}
	d = s.authorizer.Authorize(req)
	az.mu.Lock()
	if az.gen == gen {
		if len(az.m) >= authzCacheSize {
			clear(az.m)
		}
		az.m[k] = d
	}
	az.mu.Unlock()
	return d
}

// retainSourceAllowed checks, on retained replay, that the message's
// publisher may still publish it (Config.CheckRetainSource). Messages the
// server published ($SYS) have no publisher and pass.
func (s *Server) retainSourceAllowed(m *Message) (Decision, bool) {
	if !s.cfg.CheckRetainSource || m.Publisher == nil {
		return Decision{}, true
	}
	// Not through a cache: the publisher snapshot has none (m is nil).
	d := s.authorizer.Authorize(&AuthzRequest{Client: m.Publisher, Action: ActionPublish, Topic: m.Topic, QoS: m.QoS, Retain: true, RetainSource: true})
	return d, d.Allow
}

// denied counts and logs a refusal. Denials of one connection are logged
// at info level up to maxDenyLogs, then at debug level; receive denials
// (one per message a subscription matched) are always at debug level.
func (s *Server) denied(c *Client, a Action, topic string, d Decision, what string) {
	s.stats.authzDenied.Add(1)
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
// withState is set.
func (c *Client) snapshot(withState bool) *Client {
	cp := *c
	cp.peerCerts = c.PeerCertificates()
	cp.Conn = nil
	if !withState {
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
	// closed (MQTT 5: DISCONNECT 0x87 with Reason). Without it, the
	// selected sessions' subscriptions, queued and in-flight messages are
	// re-checked against the Authorizer (the policy changed).
	Disconnect bool
	// Reason is logged with every step and sent in the DISCONNECT.
	Reason string
}

// ReevaluateResult counts what Reevaluate did.
type ReevaluateResult struct {
	Disconnected int // connections closed
	Unsubscribed int // subscriptions removed
	Dropped      int // queued and in-flight messages dropped
}

// Reevaluate is the one path of loss of access: every trigger (policy
// reloaded, password removed or changed, certificate revoked, ban, token
// expiry, group change) calls it. It first invalidates every cached
// decision of every connection, then, for each session r.Match selects:
// with r.Disconnect it closes the live connection; otherwise it removes
// the subscriptions the Authorizer no longer allows and drops the queued
// and not yet delivered in-flight messages the client may no longer
// receive. Every step is logged with r.Reason and counted in Stats. Safe
// for concurrent use; it must not be called from an Authorizer.
func (s *Server) Reevaluate(r Reevaluation) ReevaluateResult {
	s.authzGen.Add(1)
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
			if c != nil && c.loseAccess(r.Reason) {
				res.Disconnected++
			}
			return true
		}
		s.recheckSession(sess, cl, r.Reason, &res)
		return true
	})
	if res != (ReevaluateResult{}) || r.Disconnect {
		s.log.Info("broker: access re-evaluated", "reason", r.Reason, "disconnected", res.Disconnected,
			"unsubscribed", res.Unsubscribed, "dropped", res.Dropped)
	}
	return res
}

// loseAccess closes the connection because its authentication no longer
// holds. It reports false when the connection was already closing.
func (c *conn) loseAccess(reason string) bool {
	if c.closing.Load() {
		return false
	}
	c.log.Warn("broker: client lost access; disconnecting", "reason", reason)
	c.srv.stats.revokedDisconnects.Add(1)
	c.kill(packet.NotAuthorized, reason)
	return true
}

// recheckSession removes the subscriptions of sess that cl may no longer
// make and drops the messages it may no longer receive.
func (s *Server) recheckSession(sess *session, cl *Client, reason string, res *ReevaluateResult) {
	for _, sub := range s.index.Subscriptions(sess.id) {
		d := s.authorize(cl, ActionSubscribe, sub.Filter, sub.QoS, false, sub.Group)
		if d.Allow {
			continue
		}
		if !s.index.Unsubscribe(sess.id, sub.Group, sub.Filter) {
			continue
		}
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
	kept := sess.queue[:0]
	dropped := 0
	for _, d := range sess.queue {
		if s.mayReceive(cl, d) {
			kept = append(kept, d)
			continue
		}
		sess.queueBytes -= d.size()
		dropped++
	}
	clear(sess.queue[len(kept):])
	sess.queue = kept
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

// eligibleFor returns the shared-subscription member filter for msg: an
// online member that may receive it. A member refused by the policy is
// passed over, so that a group with one member the policy excludes still
// delivers to the others.
func (s *Server) eligibleFor(msg *Message) func(clientID string) bool {
	return func(id string) bool {
		sess := s.lookup(id)
		if sess == nil {
			return false
		}
		sess.mu.Lock()
		cl, online := sess.client, sess.conn != nil
		sess.mu.Unlock()
		if !online {
			return false
		}
		return cl == nil || s.authorize(cl, ActionReceive, msg.Topic, msg.QoS, msg.Retain, "").Allow
	}
}
