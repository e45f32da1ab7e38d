package broker

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/topic"
)

// Read-only views of the server's state for operators (the admin API and
// metrics), and Kick. None of them is on the publish path: they take the
// locks of docs/design/locking.md in its order, one at a time, and copy
// what they return.

// ClientInfo describes one connected client.
type ClientInfo struct {
	// Client is a copy of the client as the hooks see it; its fields do
	// not change once the client is connected. Client.TLS and
	// Client.PeerCertificates read the transport's state.
	Client Client
	// ProtocolLevel is the MQTT protocol level of CONNECT: 3 (3.1),
	// 4 (3.1.1) or 5.
	ProtocolLevel byte
	ConnectedAt   time.Time
	// KeepAlive is the keep alive in force; 0 means none.
	KeepAlive time.Duration
}

// Clients returns the clients connected now (CONNECT accepted, not
// closing), ordered by client ID. Safe for concurrent use.
func (s *Server) Clients() []ClientInfo {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	out := make([]ClientInfo, 0, len(conns))
	for _, c := range conns {
		// established publishes the fields set while CONNECT was
		// handled; none of them changes afterwards.
		if !c.established.Load() || c.closing.Load() {
			continue
		}
		out = append(out, ClientInfo{
			Client:        c.client,
			ProtocolLevel: byte(c.version),
			ConnectedAt:   c.connectedAt,
			KeepAlive:     c.keepAlive,
		})
	}
	slices.SortFunc(out, func(a, b ClientInfo) int { return strings.Compare(a.Client.ClientID, b.Client.ClientID) })
	return out
}

// Kick disconnects the connected client with clientID: a v5 client gets
// DISCONNECT with reason code 0x98 (administrative action) and reason
// first. Its session follows the client's session expiry as on any other
// disconnection. It reports whether such a client was connected. Safe
// for concurrent use.
func (s *Server) Kick(clientID, reason string) bool {
	s.mu.Lock()
	var target *conn
	for c := range s.conns {
		if c.established.Load() && !c.closing.Load() && c.client.ClientID == clientID {
			target = c
			break
		}
	}
	s.mu.Unlock()
	if target == nil {
		return false
	}
	target.log.Info("broker: client disconnected by an operator", "reason", reason)
	target.kill(packet.AdministrativeAction, reason)
	return true
}

// SessionInfo describes one session, connected or not.
type SessionInfo struct {
	ClientID string
	Created  time.Time
	Online   bool
	// Expiry is how long the session outlives its connection; negative
	// means until it is taken over with a clean start.
	Expiry        time.Duration
	Inflight      int // outbound QoS 1/2 messages awaiting acknowledgement
	Queued        int // messages waiting for the client or for room in flight
	Subscriptions int
}

// Sessions returns every session, ordered by client ID. Safe for
// concurrent use.
func (s *Server) Sessions() []SessionInfo {
	var sessions []*session
	s.sessions.Range(func(_, v any) bool {
		sessions = append(sessions, v.(*session))
		return true
	})
	out := make([]SessionInfo, 0, len(sessions))
	for _, sess := range sessions {
		sess.mu.Lock()
		si := SessionInfo{
			ClientID: sess.id, Created: sess.created, Online: sess.conn != nil, Expiry: sess.expiry,
			Inflight: len(sess.inflight), Queued: sess.queue.len(), Subscriptions: int(sess.subs.Load()),
		}
		sess.mu.Unlock()
		if sess.expiry == neverExpires {
			si.Expiry = -1
		}
		out = append(out, si)
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return strings.Compare(a.ClientID, b.ClientID) })
	return out
}

// Subscriptions returns every session's subscriptions, ordered by client
// ID and then filter. Filter is without any $share/group/ prefix; Group
// names the shared subscription group. Safe for concurrent use.
func (s *Server) Subscriptions() []topic.Subscription {
	var ids []string
	s.sessions.Range(func(k, _ any) bool {
		ids = append(ids, k.(string))
		return true
	})
	slices.Sort(ids)
	var out []topic.Subscription
	for _, id := range ids {
		out = append(out, s.index.Subscriptions(id)...)
	}
	return out
}

// RetainedInfo describes one retained message.
type RetainedInfo struct {
	Topic   string
	QoS     byte
	Size    int    // payload bytes
	Preview []byte // the payload's first RetainedPreview bytes
	From    string // the publisher's client ID; "" for the server itself
	Created time.Time
}

// RetainedPreview is how many payload bytes RetainedMatch returns.
const RetainedPreview = 256

// RetainedMatch returns at most limit retained messages whose topic
// matches filter, ordered by topic, and whether more matched. filter
// follows MQTT's matching (# does not match $SYS topics). Safe for
// concurrent use.
func (s *Server) RetainedMatch(filter string, limit int) (msgs []RetainedInfo, more bool) {
	s.cfg.Retained.Match(filter, func(m *Message) bool {
		if len(msgs) == limit {
			more = true
			return false
		}
		p := m.Payload[:min(len(m.Payload), RetainedPreview)]
		msgs = append(msgs, RetainedInfo{
			Topic: m.Topic, QoS: m.QoS, Size: len(m.Payload), Preview: slices.Clone(p), From: m.From, Created: m.Created,
		})
		return true
	})
	slices.SortFunc(msgs, func(a, b RetainedInfo) int { return cmp.Compare(a.Topic, b.Topic) })
	return msgs, more
}

// DeleteRetained removes the retained message of the topic name, as a
// retained PUBLISH with an empty payload would, and reports whether there
// was one. Safe for concurrent use.
func (s *Server) DeleteRetained(name string) bool {
	if packet.ValidTopicName(name) != nil {
		return false
	}
	found := false
	s.cfg.Retained.Match(name, func(*Message) bool { found = true; return false })
	if found {
		m := &Message{Topic: name, Retain: true, Created: s.cfg.Now()}
		s.retained.retain(m, "")
		s.clusterRetained(m)
	}
	return found
}
