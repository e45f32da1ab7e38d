package broker

import (
	"sync"
	"time"

	"github.com/moatmq/moat/internal/topic"
)

// SharedCluster is the part of a Cluster that balances shared
// subscriptions ($share/GROUP/filter) across the nodes (docs/cluster.md,
// "Shared subscriptions"). When Config.Cluster implements it, every
// message that reaches other nodes is delivered to each matching group
// once, cluster-wide: the Cluster chooses one node with members of the
// group per message, and that node's DeliverShared chooses one of its
// members. The node that accepted the message then leaves its own members
// out (the Cluster may choose it, through DeliverShared). Messages the
// Cluster does not carry (SharesTopic false: $SYS, topics too long for
// it) are shared among the local members as on a single node.
//
// Without it, each node with members delivers every message to one of its
// own members: once per such node, not once per group.
//
// The methods are called from connection goroutines, concurrently, and
// must not block on the network.
type SharedCluster interface {
	// SharedInterest reports that the shared subscription (group, filter)
	// gained its first member on this node (on) or lost its last (!on).
	// Calls for one (group, filter) are serialized and alternate. Such a
	// filter gets no Interest call of its own: it receives the group's
	// messages only.
	SharedInterest(group, filter string, on bool)
	// SharesTopic reports whether a message on topic reaches the other
	// nodes through the Cluster (Forward carries it), and so whether the
	// Cluster chooses its shared subscriptions' members.
	SharesTopic(topic string) bool
	// HandOn hands msg to the shared subscription (group, filter) alone,
	// for a member on any node: a message of a member whose session ended
	// when no other member here could take it [MQTT 5.0 §4.8.2]. msg
	// must not be modified.
	HandOn(msg *Message, group, filter string)
}

// clusterShares holds the local members of each shared subscription while
// the Cluster is a SharedCluster. Its mutex is taken like
// clusterFilters.mu: after the index's writers are done, never under a
// session lock.
type clusterShares struct {
	mu      sync.Mutex
	members map[shareKey]map[string]struct{} // (group, filter) → client IDs
}

// sharedCluster returns the Cluster as a SharedCluster, nil when there is
// none or it does not balance groups.
func (s *Server) sharedCluster() SharedCluster {
	if s.cluster == nil {
		return nil
	}
	sc, _ := s.cluster.(SharedCluster)
	return sc
}

// clusterDeliversShared reports whether the Cluster, rather than this
// node's routing, picks the members of msg's shared subscriptions.
func (s *Server) clusterDeliversShared(msg *Message) bool {
	sc := s.sharedCluster()
	return sc != nil && !isSys(msg.Topic) && sc.SharesTopic(msg.Topic)
}

// clusterShareSub counts sub, a shared subscription new to the index, as
// a member of its group here; false when the Cluster does not balance
// groups (then the filter counts as a plain interest).
func (s *Server) clusterShareSub(sub topic.Subscription) bool {
	sc := s.sharedCluster()
	if sc == nil {
		return false
	}
	f := &s.clusterShares
	k := shareKey{sub.Group, sub.Filter}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.members == nil {
		f.members = make(map[shareKey]map[string]struct{})
	}
	m := f.members[k]
	if m == nil {
		m = make(map[string]struct{})
		f.members[k] = m
	}
	if _, ok := m[sub.ClientID]; ok {
		return true
	}
	m[sub.ClientID] = struct{}{}
	if len(m) == 1 {
		sc.SharedInterest(sub.Group, sub.Filter, true)
	}
	return true
}

// clusterUnsubscribed tells the cluster that clientID's subscription
// (group, filter) left the index.
func (s *Server) clusterUnsubscribed(clientID, group, filter string) {
	if s.cluster == nil {
		return
	}
	if group != "" {
		if sc := s.sharedCluster(); sc != nil {
			f := &s.clusterShares
			k := shareKey{group, filter}
			f.mu.Lock()
			if m := f.members[k]; m != nil {
				if _, ok := m[clientID]; ok {
					delete(m, clientID)
					if len(m) == 0 {
						delete(f.members, k)
						sc.SharedInterest(group, filter, false)
					}
				}
			}
			f.mu.Unlock()
			return
		}
	}
	s.clusterUnsub(filter)
}

// DeliverShared delivers msg, which the Cluster routed to this node for
// the shared subscription (group, filter), to one local member of that
// group, chosen as for a local message (memberRank: the next member in
// turn that keeps up, else one that is connected and may receive it, else
// the next in turn, whose session queues it or drops it as its policy
// says). msg is another node's message, or
// this node's own that the Cluster chose this node for; it is delivered
// through this group only. It reports whether a member took it; false
// when the group has no member here (any more), and the Cluster may then
// hand it to another node. Safe for concurrent use.
func (s *Server) DeliverShared(msg *Message, group, filter string) bool {
	return s.DeliverSharedDone(msg, group, filter, s.persistLogged)
}

// DeliverSharedDone is DeliverShared for a message whose sender waits
// until a member has it: done runs once the message is in the member's
// session and, for a session the Persistence keeps, committed (or with
// the commit's error). For a session kept in memory only (clean start)
// that is once it is queued or sent, as on one node. done is not called
// when it reports false (no member here) or when the server is shutting
// down (false as well). Safe for concurrent use.
func (s *Server) DeliverSharedDone(msg *Message, group, filter string, done func(error)) bool {
	if s.closing() {
		return false
	}
	if msg.Created.IsZero() {
		msg.Created = s.cfg.Now()
	}
	var b *pbatch
	if s.persist != nil && msg.QoS > 0 {
		msg.id = s.persist.NewID()
		b = &pbatch{}
	}
	msg.arrived = time.Now().UnixNano()
	mb := matchPool.Get().(*matchBuf)
	defer putMatchBuf(mb)
	mb.subs, mb.groups = s.index.Match(msg.Topic, mb.subs[:0], mb.groups[:0])
	for i := range mb.groups {
		g := &mb.groups[i]
		if g.Group != group || g.Filter != filter {
			continue
		}
		mb.enc.reset(msg, nil, clock{now: s.cfg.Now}, 1)
		sub, ok := g.PickRanked(s.memberRank(msg))
		ok = ok && s.deliverTo(&mb.enc, &sub, sub.QoS, sub.RetainAsPublished, idsOf(sub.ID), &shareKey{g.Group, g.Filter}, b, nil)
		switch {
		case ok && (b == nil || len(b.changes) == 0 && len(b.sends) == 0 && len(b.gates) == 0):
			// Nothing to commit (a member without a stored session):
			// it has the message now, as on one node.
			done(nil)
		case b != nil && ok:
			s.submitBatch(b, done)
		case b != nil && len(b.changes) > 0:
			s.submitBatch(b, s.persistLogged)
		}
		return ok
	}
	return false
}

// SharedMembers reports how many members the shared subscription (group,
// filter) has on this node, and how many of them can take messages now:
// connected, not marked slow, with no publisher held for them, their
// queue (QoS 1 and 2) neither full nor at the pushback mark, and their
// QoS 0 backlog under its mark. The Cluster sends a node with more such members a larger
// share of the group's messages. Safe for concurrent use.
func (s *Server) SharedMembers(group, filter string) (members, available int) {
	f := &s.clusterShares
	f.mu.Lock()
	m := f.members[shareKey{group, filter}]
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	f.mu.Unlock()
	for _, id := range ids {
		if sess := s.lookup(id); sess != nil && s.takesShared(sess) {
			available++
		}
	}
	return len(ids), available
}

// takesShared reports whether sess is connected and keeps up (see
// SharedMembers). Lock order: session.mu, then conn.outMu.
func (s *Server) takesShared(sess *session) bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	c := sess.conn
	if c == nil || c.closing.Load() {
		return false
	}
	l := s.limits()
	if sess.gate.slow || len(sess.gate.waiters) > 0 || sess.fullLocked(s) ||
		l.overMark(sess.queue.len(), sess.queueBytes, l.markBytes) {
		return false
	}
	c.outMu.Lock()
	congested := c.q0gate.slow || c.q0CongestedLocked()
	c.outMu.Unlock()
	return !congested
}

// clusterHandOn hands the message of d, which no local member of its
// shared subscription took, to the members on other nodes.
func (s *Server) clusterHandOn(d *delivery) {
	if d.share != nil && s.clusterDeliversShared(d.msg) {
		s.sharedCluster().HandOn(d.msg, d.share.group, d.share.filter)
	}
}
