package broker

import "github.com/moatmq/moat/internal/packet"

// A node taken out of its cluster for good (docs/cluster.md, "Removing a
// node") serves nobody: its clients belong on the nodes left, which hold
// their sessions. The cluster tells the broker through Withdraw.

// Withdraw disconnects every client (an MQTT 5 client with DISCONNECT
// 0x9C, Use another server, and reason; an MQTT 3.1.1 client, which has
// no DISCONNECT from the server, by closing its connection) and refuses
// every later connection with CONNACK 0x9C (0x03, Server unavailable,
// for MQTT 3.x) and reason. It cannot be undone: the server must be
// shut down. It returns the number of connections it closed; a second
// call closes none and keeps the first reason. Safe for concurrent use.
func (s *Server) Withdraw(reason string) int {
	if !s.withdrawn.CompareAndSwap(nil, &reason) {
		return 0
	}
	// A connection accepted from now on reads the reason before it
	// attaches a session (connect); one accepted before is in conns.
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		if c.established.Load() {
			c.log.Info("broker: client disconnected: this node left its cluster", "reason", reason)
		}
		c.kill(packet.UseAnotherServer, reason)
	}
	return len(conns)
}

// withdrawal returns the reason of Withdraw, or "" while the server
// serves.
func (s *Server) withdrawal() string {
	if r := s.withdrawn.Load(); r != nil {
		return *r
	}
	return ""
}
