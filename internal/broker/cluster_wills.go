package broker

import (
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// Wills of live connections in a cluster (docs/cluster.md, "Wills of a
// node that dies"). On one node a will is kept in memory while its
// connection is open and is written to the store only when the
// connection ends with a delay still to run. A node of a cluster can die
// with its connections, and then nothing of that is left: so a Cluster
// that implements LiveWillCluster is given the will when the connection
// is accepted (a ChangePutWill with Live set), and told when the
// connection ends whether the will is published or discarded here (a
// ChangeDeleteWill) or waits for its delay (a ChangePutWill as on one
// node). What survives in the cluster after a crash is the will of a
// connection that had not ended; the survivors publish it. detach stays
// the one place that decides the fate of a will whose connection ends
// on a running node, with one exception: a clean session's will that
// detach finds owed is published by the cluster (StoredWill.Publish),
// only if the cluster's removal of its record wins. Other nodes may
// have taken this node for dead while it was cut off from them and
// published the will already; the record's removal decides who
// publishes, so that the will goes once cluster-wide.

// LiveWillCluster is implemented by a Cluster that keeps the wills of
// open connections so that they are published when the node dies with
// them. Its Persistence must call the Publish function of a
// ChangeDeleteWill's Will at most once, when nobody else published the
// will.
type LiveWillCluster interface {
	LiveWills() bool
}

// liveWill returns the will of the connection c to store in the cluster
// with it, or nil: none, or no cluster keeps it. persistent tells
// whether the session outlives the connection (its will then lives with
// the session's records).
func (s *Server) liveWill(c *conn, st *connectState, persistent bool) *StoredWill {
	if c.will == nil || s.persist == nil {
		return nil
	}
	if lw, ok := s.cluster.(LiveWillCluster); !ok || !lw.LiveWills() {
		return nil
	}
	var delay time.Duration
	if c.version == packet.V5 {
		delay = time.Duration(c.will.Properties.WillDelay) * time.Second
	}
	if st.expiry > 0 && delay > st.expiry {
		delay = st.expiry
	}
	if !persistent {
		delay = 0 // the session ends with the connection, and the will goes at once
	}
	from := c.client
	return &StoredWill{ClientID: st.clientID, Owner: st.owner.key, Message: willMessage(c.will, c.client.ClientID, s.cfg.Now()),
		Publisher: storedPublisher(&from), Live: true, Clean: !persistent, Delay: delay}
}

// PublishWill publishes a will the cluster kept for a connection of a
// node that died (its session ended with it), as detach would have: it
// is authorized under its publisher's identity at the time of
// publication, like any will; one that names no publisher is not
// published (fail closed). Safe for concurrent use.
func (s *Server) PublishWill(w *StoredWill) {
	if w == nil || w.Message == nil {
		return
	}
	if w.Publisher == nil {
		s.log.Warn("broker: a will of the cluster names no publisher; it is not published", "client", w.ClientID)
		return
	}
	msg := w.Message
	msg.Publisher = nil
	s.publishWill(msg, w.Publisher.client())
}

// DiscardConnectionWill drops the will of the open connection of
// clientID's session on this node, if any, without touching the
// connection: another node published it or holds it (a cluster node
// that adopted this node's sessions while it was cut off from the
// others), so its end here publishes nothing. Safe for concurrent use.
func (s *Server) DiscardConnectionWill(clientID string) {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	sess := s.lookup(clientID)
	if sess == nil {
		return
	}
	sess.mu.Lock()
	if c := sess.conn; c != nil {
		c.willElsewhere.Store(true)
	}
	sess.mu.Unlock()
}
