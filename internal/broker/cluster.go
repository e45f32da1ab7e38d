package broker

import (
	"sync"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/topic"
)

// Cluster connects the broker to the other nodes of a cluster
// (internal/cluster, docs/cluster.md). The broker declares it; nil
// Config.Cluster is a single node, and then none of this file's code runs
// on the publish or subscribe path beyond a nil check.
//
// The broker tells the Cluster which topic filters its local sessions
// subscribe to, counted per distinct filter (many clients subscribing
// the same filter cause one Interest call), and hands it every accepted
// message for forwarding. The Cluster hands messages of other nodes back
// through Server.DeliverRemote, which delivers them to local subscribers
// only: a remote message is never forwarded again.
//
// The methods are called from connection goroutines, concurrently, and
// must not block on the network: the publish path waits for them.
type Cluster interface {
	// Interest reports that filter (without a $share/GROUP/ prefix)
	// gained its first local subscription (on) or lost its last (!on).
	// Calls for one filter are serialized and alternate.
	Interest(filter string, on bool)
	// Forward hands over a message a local client (or a will) published,
	// after it was authorized and delivered locally. Calls by one
	// publisher arrive in publication order. msg must not be modified.
	Forward(msg *Message)
	// Retained reports that a local client set (non-empty payload) or
	// cleared (empty payload) the retained message of msg.Topic.
	Retained(msg *Message)
	// Connected reports that a client with clientID connected here, owned
	// by the identity owner (an opaque key): connections with the same
	// client ID on other nodes are to be taken over (TakeoverRemote).
	Connected(clientID, owner string)
}

// clusterFilters counts the local subscriptions per filter for
// Cluster.Interest. Its mutex is taken after the index's writers are done
// and never with a session lock held by callers that could wait for it
// (see docs/design/locking.md).
type clusterFilters struct {
	mu    sync.Mutex
	count map[string]int
}

// clusterSub counts one more subscription to filter.
func (s *Server) clusterSub(filter string) {
	if s.cluster == nil {
		return
	}
	f := &s.clusterFilters
	f.mu.Lock()
	if f.count == nil {
		f.count = make(map[string]int)
	}
	f.count[filter]++
	if f.count[filter] == 1 {
		s.cluster.Interest(filter, true)
	}
	f.mu.Unlock()
}

// clusterUnsub counts one subscription to filter less.
func (s *Server) clusterUnsub(filter string) {
	if s.cluster == nil {
		return
	}
	f := &s.clusterFilters
	f.mu.Lock()
	if n := f.count[filter]; n > 1 {
		f.count[filter] = n - 1
	} else if n == 1 {
		delete(f.count, filter)
		s.cluster.Interest(filter, false)
	}
	f.mu.Unlock()
}

// unsubscribeAll removes every subscription of clientID from the index
// and from the cluster's counts.
func (s *Server) unsubscribeAll(clientID string) {
	if s.cluster == nil {
		s.index.UnsubscribeAll(clientID)
		return
	}
	subs := s.index.Subscriptions(clientID)
	s.index.UnsubscribeAll(clientID)
	for _, sub := range subs {
		s.clusterUnsubscribed(clientID, sub.Group, sub.Filter)
	}
}

// clusterForward hands msg to the cluster; $SYS topics are each node's
// own and stay local.
func (s *Server) clusterForward(msg *Message) {
	s.clusterForwardIn(msg, nil)
}

// clusterRetained reports a local retained change to the cluster.
func (s *Server) clusterRetained(msg *Message) {
	if s.cluster != nil && !isSys(msg.Topic) {
		s.cluster.Retained(msg)
	}
}

func isSys(t string) bool { return len(t) >= 4 && t[:4] == "$SYS" }

// DeliverRemote delivers a message that another node of the cluster
// accepted to the local subscribers of msg.Topic, with the same
// authorization of each receiving client as a local message. It is never
// forwarded again and reported nowhere else. msg.Topic, Payload, QoS,
// Retain, Props, Expires and From are the publisher's; DeliverRemote
// sets Created when it is zero. It returns the number of local sessions
// that matched. Safe for concurrent use; the Cluster calls it in the
// order a node's messages arrived.
func (s *Server) DeliverRemote(msg *Message) int {
	if s.closing() {
		return 0
	}
	if msg.Created.IsZero() {
		msg.Created = s.cfg.Now()
	}
	if s.persist != nil && msg.QoS > 0 {
		msg.id = s.persist.NewID()
	}
	shard := s.recent.shardFor()
	msg.arrived = time.Now().UnixNano()
	msg.remote = true
	s.recent.add(shard, msg)
	return s.deliver(msg, nil)
}

// RetainRemote applies a retained message that another node set (or
// cleared, with an empty payload) to the local retained store, which is
// the cluster's cache on this node. pub is its publisher, checked again
// on replay when Config.CheckRetainSource is on; nil means unknown, and
// then the replay is refused while the check is on (fail closed). Over a
// local retained limit the message is not kept here (logged and counted
// as any refusal). Safe for concurrent use.
func (s *Server) RetainRemote(msg *Message, pub *StoredPublisher) {
	if s.closing() {
		return
	}
	msg.Retain = true
	if msg.Created.IsZero() {
		msg.Created = s.cfg.Now()
	}
	owner := ""
	if len(msg.Payload) > 0 {
		if pub != nil {
			msg.Publisher = pub.client()
			owner = retainedOwner(msg.Publisher)
		} else {
			msg.publisherUnknown = true
		}
	}
	if reason := s.retained.retain(msg, owner); reason != "" {
		s.retained.refused.Add(1)
		s.log.Debug("broker: retained message of another node refused", "topic", msg.Topic, "reason", reason)
		return
	}
	if s.persist != nil {
		s.persistAsync(retainChange(msg, owner))
	}
}

// RetainedMessages returns the retained messages held here whose topics
// do not begin with '$' (those a "#" subscription sees), for the
// cluster's comparison of this node's store with its own at start. The
// messages are the store's: read only.
func (s *Server) RetainedMessages() []*Message {
	var msgs []*Message
	s.cfg.Retained.Match("#", func(m *Message) bool {
		msgs = append(msgs, m)
		return true
	})
	return msgs
}

// RetainedMessage returns the retained message of topic held here, or
// nil: for the cluster's check at start that the bucket's record of a
// topic is not older than this node's. The message is the store's: read
// only.
func (s *Server) RetainedMessage(topic string) *Message {
	var found *Message
	s.cfg.Retained.Match(topic, func(m *Message) bool {
		if m.Topic == topic {
			found = m
			return false
		}
		return true
	})
	return found
}

// TakeoverRemote ends the local connection of clientID because a client
// with the same ID connected on another node, with DISCONNECT 0x8E
// (Session taken over) for MQTT 5 clients [MQTT-3.1.4-3]. owner is the
// new client's identity key (Cluster.Connected): a client of another
// identity may not end the owner's connection, as on one node (see
// Server.ownerCheck), except that a verified identity replaces an
// anonymous one. The session itself stays on this node. It reports
// whether a connection was ended (taken), and whether one was kept under
// that rule (refused): the cluster then still ends it on a later claim
// of its own identity. Safe for concurrent use.
func (s *Server) TakeoverRemote(clientID, owner string) (taken, refused bool) {
	sess := s.lookup(clientID)
	if sess == nil {
		return false, false
	}
	sess.mu.Lock()
	c, local := sess.conn, sess.owner
	sess.mu.Unlock()
	if c == nil {
		return false, false
	}
	if !s.cfg.IgnoreSessionOwner && local.key != owner && !(!local.verified && ownerVerified(owner)) {
		c.log.Warn("broker: client ID connected on another node by another identity; connection kept",
			"owner", local.String(), "identity", clipOwner(owner))
		return false, true
	}
	c.log.Info("broker: session taken over by a connection on another node")
	c.takenOver.Store(true)
	c.kill(packet.SessionTakenOver, "session taken over on another node")
	return true, false
}

// ownerVerified tells from an owner key whether the identity was verified
// (sessionOwner.verified): anonymous owners are "anon:".
func ownerVerified(key string) bool { return key != "" && !hasPrefix(key, "anon:") }

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

// clipOwner shortens a peer-supplied owner key for a log line.
func clipOwner(k string) string {
	if len(k) > 200 {
		return k[:200] + "…"
	}
	return k
}

// StoredPublisherOf returns what the cluster sends along with a retained
// message about its publisher (nil when the server published it or it is
// unknown).
func StoredPublisherOf(msg *Message) *StoredPublisher {
	if msg.Publisher == nil {
		return nil
	}
	return storedPublisher(msg.Publisher)
}

// clusterSubscribed tells the cluster of a subscription installed in the
// index; existed is Index.Subscribe's answer (a replaced subscription is
// already counted).
func (s *Server) clusterSubscribed(sub topic.Subscription, existed bool) {
	if !existed && (sub.Group == "" || !s.clusterShareSub(sub)) {
		s.clusterSub(sub.Filter)
	}
}

// NewMessage returns the Message of a PUBLISH received at now from the
// client from, keeping the properties that travel with a message and its
// expiry, as the broker does for its own clients. For the Cluster, which
// rebuilds messages of other nodes.
func NewMessage(p *packet.Publish, from string, now time.Time) *Message {
	return newMessage(p, from, now)
}
