package broker

import (
	"errors"
	"time"
)

// Durable forwarding between the nodes of a cluster (docs/cluster.md,
// "Durable QoS 1 and 2"). A Cluster that also implements
// ClusterPersistence wraps the broker's Persistence: New installs the
// wrapper, and the broker then hands every QoS 1 and 2 message for the
// other nodes to it as a change of the publisher's commit
// (ChangeForward), so that the publisher's PUBACK or PUBREC waits for the
// cluster's acknowledgement exactly as it waits for the store, without
// holding up the reader. Messages of other nodes come back through
// DeliverRemoteDone, whose done function runs once they are in the local
// sessions and committed.

// ChangeForward hands a QoS 1 or 2 message (Message) to the cluster for
// the other nodes. Only a ClusterPersistence receives it; its value lies
// outside the iota block of the other kinds so that they keep theirs.
const ChangeForward ChangeKind = 64

// ClusterPersistence is implemented by a Cluster that keeps the durable
// state of a clustered broker. New calls Persistence once with
// Config.Persistence (nil when the node has no store of its own) and uses
// the Persistence it returns instead: the cluster receives every change,
// including ChangeForward, passes to local what stays on this node and
// reports each Persist call's done in submission order.
type ClusterPersistence interface {
	Persistence(local Persistence) Persistence
}

// PublishGate is implemented by a ClusterPersistence whose nodes route
// one another's QoS 1/2 messages through a stream, while a node delivers
// its own clients' messages to its sessions at once. A publisher that
// comes to this node from another (its node died, or it moved) would
// otherwise have its first messages here delivered ahead of its last
// ones through the other node, still on their way through the stream to
// this node's sessions [MQTT-4.6.0-6]. So a connection's first QoS 1/2
// PUBLISH, on topic, from the client of clientID, waits in AwaitCaughtUp
// until this node has routed what the stream held when it asked, and
// delivered it to the sessions whose subscriptions match topic, the
// client's own excepted (docs/cluster.md, "A publisher that moves"); the
// Cluster bounds the wait, by keepAlive too, the connection's keep alive
// (0: none): its client, whose PINGREQ is not read meanwhile, waits for
// the PINGRESP about that long. closed ends it early: the connection is
// closing. Its reader reads nothing meanwhile.
type PublishGate interface {
	AwaitCaughtUp(closed <-chan struct{}, keepAlive time.Duration, topic, clientID string)
}

// errShuttingDown is reported to the Cluster for a message of another
// node that arrives while the server shuts down: it is not in any
// session, so the cluster must deliver it again later.
var errShuttingDown = errors.New("broker: server shutting down")

// clusterForwardIn hands msg to the cluster: a QoS 1 or 2 message as a
// change of b (the publisher's commit; nil: submitted on its own, for a
// will), a QoS 0 message to Forward. $SYS topics stay local.
func (s *Server) clusterForwardIn(msg *Message, b *pbatch) {
	if s.cluster == nil || isSys(msg.Topic) {
		return
	}
	if s.clusterDurable && msg.QoS > 0 {
		ch := Change{Kind: ChangeForward, Message: msg}
		if b != nil {
			b.changes = append(b.changes, ch)
		} else {
			s.persistAsync(ch)
		}
		return
	}
	s.cluster.Forward(msg)
}

// DeliverRemoteDone is DeliverRemote for a message the cluster keeps until
// this node has it: done runs once the message is in every matching local
// session and, for the sessions the Persistence keeps, committed (or
// failed: then the cluster must deliver it again). It runs at once when
// nothing had to be committed, and with an error when the server is
// shutting down. It returns the number of local sessions that matched.
// Safe for concurrent use; the Cluster calls it in the order a stream
// delivers messages.
func (s *Server) DeliverRemoteDone(msg *Message, done func(error)) int {
	if s.closing() {
		done(errShuttingDown)
		return 0
	}
	if msg.Created.IsZero() {
		msg.Created = s.cfg.Now()
	}
	var b *pbatch
	if s.persist != nil && msg.QoS > 0 {
		msg.id = s.persist.NewID()
		b = &pbatch{}
	}
	shard := s.recent.shardFor()
	msg.arrived = time.Now().UnixNano()
	msg.remote = true
	s.recent.add(shard, msg)
	n := s.deliver(msg, b)
	if b == nil {
		done(nil)
		return n
	}
	s.submitBatch(b, done)
	return n
}

// DeliverRemoteBatchDone is DeliverRemoteDone for the messages of one
// record of the cluster, in order, as ONE commit: done runs once every
// message is in every matching local session and the commit holding them
// all is durable (or failed: then the cluster must deliver the whole
// record again). A record of many messages thus costs one request to the
// Persistence instead of one per message. It returns the number of
// local sessions that matched, summed over the messages.
func (s *Server) DeliverRemoteBatchDone(msgs []*Message, done func(error)) int {
	if s.closing() {
		done(errShuttingDown)
		return 0
	}
	var b *pbatch
	if s.persist != nil {
		b = &pbatch{}
	}
	shard := s.recent.shardFor()
	n, stored := 0, false
	for _, msg := range msgs {
		if msg.Created.IsZero() {
			msg.Created = s.cfg.Now()
		}
		var mb *pbatch
		if b != nil && msg.QoS > 0 {
			msg.id = s.persist.NewID()
			// The batch puts each message once, with its first delivery.
			b.msgPut = false
			mb, stored = b, true
		}
		msg.arrived = time.Now().UnixNano()
		msg.remote = true // never replayed as this node's own (ReplayLocal)
		s.recent.add(shard, msg)
		n += s.deliver(msg, mb)
	}
	if !stored {
		done(nil)
		return n
	}
	s.submitBatch(b, done)
	return n
}
