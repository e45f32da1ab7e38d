package cluster

import (
	"sort"
	"strconv"

	"github.com/nats-io/nats-server/v2/server"
)

// Status describes a Node's view of the cluster, for `moat cluster status`
// and the admin API.
type Status struct {
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	// External is true when the Node uses an external NATS cluster; the
	// route and JetStream fields are then empty.
	External  bool        `json:"external,omitempty"`
	RouteAddr string      `json:"route_addr,omitempty"`
	Routes    []RouteInfo `json:"routes"`
	// Ready tells whether the key-value buckets are in use.
	Ready      bool   `json:"ready"`
	Replicas   int    `json:"replicas"`
	MetaLeader string `json:"meta_leader,omitempty"`
	MetaSize   int    `json:"meta_cluster_size,omitempty"`
	Filters    int    `json:"filters"` // distinct local filters with a NATS subscription

	Forwarded     uint64 `json:"forwarded"`
	ForwardErrors uint64 `json:"forward_errors"`
	Received      uint64 `json:"received"`
	Duplicates    uint64 `json:"duplicates"`
	DecodeErrors  uint64 `json:"decode_errors"`
	RetainedOut   uint64 `json:"retained_out"`
	RetainedIn    uint64 `json:"retained_in"`
	Claims        uint64 `json:"claims"`
	Takeovers     uint64 `json:"takeovers"`

	// The durable stream of QoS 1/2 messages (durable.go): published to
	// it, received from it, publications that failed, redeliveries
	// dropped, and publications made because a node was missing.
	StreamOut        uint64 `json:"stream_out"`
	StreamIn         uint64 `json:"stream_in"`
	StreamErrors     uint64 `json:"stream_errors"`
	StreamDuplicates uint64 `json:"stream_duplicates"`
	StreamDegraded   uint64 `json:"stream_degraded"`
	// Persistent sessions taken from other nodes and handed to them.
	SessionsIn  uint64 `json:"sessions_in"`
	SessionsOut uint64 `json:"sessions_out"`
}

// RouteInfo is one route to another node.
type RouteInfo struct {
	Node string `json:"node"`
	Addr string `json:"addr"`
	RTT  string `json:"rtt,omitempty"`
}

// Status returns the Node's current view. Safe for concurrent use.
func (n *Node) Status() Status {
	st := Status{Cluster: n.cfg.Name, Node: n.cfg.Node, External: n.srv == nil, RouteAddr: n.RouteAddr(),
		Replicas: n.replicas, Routes: []RouteInfo{}}
	select {
	case <-n.ready:
		st.Ready = true
	default:
	}
	n.subMu.Lock()
	st.Filters = len(n.subs)
	n.subMu.Unlock()
	if n.srv != nil {
		if rz, err := n.srv.Routez(&server.RoutezOptions{}); err == nil {
			seen := map[string]bool{}
			for _, r := range rz.Routes {
				// Several connections (pooled routes) may join two nodes.
				if seen[r.RemoteName] {
					continue
				}
				seen[r.RemoteName] = true
				st.Routes = append(st.Routes, RouteInfo{Node: r.RemoteName, Addr: r.IP + ":" + strconv.Itoa(r.Port), RTT: r.RTT})
			}
			sort.Slice(st.Routes, func(i, j int) bool { return st.Routes[i].Node < st.Routes[j].Node })
		}
		if jz, err := n.srv.Jsz(&server.JSzOptions{}); err == nil && jz.Meta != nil {
			st.MetaLeader, st.MetaSize = jz.Meta.Leader, jz.Meta.Size
		}
	}
	s := &n.stats
	st.Forwarded, st.ForwardErrors, st.Received = s.forwarded.Load(), s.forwardErrors.Load(), s.received.Load()
	st.Duplicates, st.DecodeErrors = s.duplicates.Load(), s.decodeErrors.Load()
	st.RetainedOut, st.RetainedIn, st.Claims, st.Takeovers = s.retainedOut.Load(), s.retainedIn.Load(), s.claims.Load(), s.takeovers.Load()
	d := &n.dstats
	st.StreamOut, st.StreamIn, st.StreamErrors = d.streamOut.Load(), d.streamIn.Load(), d.streamErrors.Load()
	st.StreamDuplicates, st.StreamDegraded = d.streamDuplicates.Load(), d.streamDegraded.Load()
	st.SessionsIn, st.SessionsOut = d.sessionsIn.Load(), d.sessionsOut.Load()
	return st
}
