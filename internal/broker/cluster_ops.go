package broker

// What the cluster's operations side (internal/cluster: heartbeats,
// status, housekeeping) needs of the broker, beyond the Cluster interface.

// ClusterSessionEnds is an optional interface of a Cluster, found by type
// assertion: SessionEnded reports that the session of clientID ended on
// this node (a clean session's connection closed, an offline session
// expired, or a clean start replaced it) and nothing of it is left here,
// so the cluster may forget the client ID's claim. It is called with the
// broker's session table locked: it must only queue work, never block.
// A session of the same client ID may start again at once (HasSession
// tells, later, whether one exists).
type ClusterSessionEnds interface {
	SessionEnded(clientID string)
}

// clusterSessionEnded tells the cluster that sess ended, when it wants to
// know. The caller holds sessMu.
func (s *Server) clusterSessionEnded(sess *session) {
	if ce, ok := s.cluster.(ClusterSessionEnds); ok {
		ce.SessionEnded(sess.id)
	}
}

// HasSession reports whether a session of clientID, connected or offline,
// exists on this node now. Safe for concurrent use.
func (s *Server) HasSession(clientID string) bool { return s.lookup(clientID) != nil }

// ClientCounts returns the live connections and the sessions (connected
// and offline) of this node, without the walk over the sessions that
// Stats makes: what the cluster's heartbeat reports every few seconds.
// Safe for concurrent use.
func (s *Server) ClientCounts() (connections, sessions int64) {
	return s.stats.clientsConnected.Load(), s.sessionCount.Load()
}
