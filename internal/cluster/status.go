package cluster

import (
	"sort"
	"strconv"
	"time"

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

	// The operations view (ops.go, heartbeat.go). Healthy is true when
	// Problems is empty: every node known is up, JetStream has a leader
	// and every copy of every stream is current.
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems"`
	// Nodes lists every node known to this one (itself, those it hears
	// heartbeats from, the JetStream peers); NodesUp of them are up, and
	// NodesExpected is the larger of their number and the JetStream
	// cluster size.
	Nodes         []NodeInfo `json:"nodes"`
	NodesUp       int        `json:"nodes_up"`
	NodesExpected int        `json:"nodes_expected"`
	// MetaPeers are the members of the JetStream meta group, as this node
	// knows them (embedded server only).
	MetaPeers []ReplicaState `json:"meta_peers,omitempty"`
	// Streams is the replication state of Moat's JetStream streams as of
	// ReplicationAt; ReplicationError says why the last poll failed.
	Streams          []StreamState `json:"streams"`
	ReplicationAt    time.Time     `json:"replication_at,omitzero"`
	ReplicationError string        `json:"replication_error,omitempty"`
	// PendingWrites are the retained changes and claims waiting for the
	// key-value store; ClaimsPruned and RetainedPurged count the claims
	// and cleared retained topics removed from it.
	PendingWrites  int    `json:"pending_writes"`
	ClaimsPruned   uint64 `json:"claims_pruned"`
	RetainedPurged uint64 `json:"retained_purged"`
	// WritesDropped counts the retained changes and claims given up: the
	// oldest beyond a queue's bound, a claim not written because another
	// node's claim came after its connection (written, it would take
	// over that newer connection), a value the bucket refuses.
	WritesDropped uint64 `json:"writes_dropped"`
	// SecurityPending are the security changes (bans, shared files)
	// waiting for their buckets, one per ban or file; SecurityRefused
	// counts those refused because too many waited (their caller was
	// told) or because the bucket refused the value (too large): they
	// hold on this node only.
	SecurityPending int    `json:"security_pending"`
	SecurityRefused uint64 `json:"security_refused"`
	// The durable stream of QoS 1/2 messages (durable.go): published to
	// it, received from it, publications that failed, redeliveries
	// dropped, publications made because a node was missing (or this
	// node had not settled since it started again: settleStart), and
	// records published again because an earlier one was (persist.go).
	StreamOut         uint64 `json:"stream_out"`
	StreamIn          uint64 `json:"stream_in"`
	StreamErrors      uint64 `json:"stream_errors"`
	StreamDuplicates  uint64 `json:"stream_duplicates"`
	StreamDegraded    uint64 `json:"stream_degraded"`
	StreamRepublished uint64 `json:"stream_republished"`
	// Records answered after waiting stallProbe that made the records
	// after them go again alone (persist.go, endProbe).
	StreamStallProbes uint64 `json:"stream_stall_probes"`
	// Records the node's consumer counted as acknowledged that this node
	// never routed, read from the stream (acks.go, routeUnrouted).
	StreamUnrouted uint64 `json:"stream_unrouted"`
	// Persistent sessions taken from other nodes and handed to them.
	SessionsIn  uint64 `json:"sessions_in"`
	SessionsOut uint64 `json:"sessions_out"`
	// The replays of durable messages into sessions moved or adopted
	// here: stream records read, replays stopped because the session's
	// queue was full (or they held 64 MiB of records), and the messages
	// for those sessions found past the bound and not replayed (the
	// records after them were not read and are not counted).
	ReplayRecords  uint64 `json:"replay_records"`
	ReplaysBounded uint64 `json:"replays_bounded"`
	ReplayDropped  uint64 `json:"replay_dropped"`
	// ReplicaFloors counts the positions of nodes gone (their durable
	// consumer's acknowledgement floor, where a claim or an adoption of
	// their sessions replays from) that this node read from its own copy
	// of the consumer, its leader not answering (the node gone led it).
	ReplicaFloors uint64 `json:"replica_floors"`
	// HomesGone counts the claims that stopped waiting for the answer of
	// a session's former node once that node had had no route here for
	// two seconds (taken as dead: its position is then read as for a
	// node gone).
	HomesGone uint64 `json:"homes_gone"`
	// The catch-ups of sessions (catchup.go), of moved sessions whose
	// replay went past the room of their queue and of connected sessions
	// whose queue had no room for the other nodes' messages (paced, also
	// counted in catch_ups; away: those of them whose session's client
	// was away, also counted in paced): started, ended at the routing position,
	// given up (logged with the reason; counted in replays_bounded too),
	// handed over with their session to another node; the messages they
	// delivered, and the QoS 0 messages dropped for their sessions while
	// they ran.
	CatchUps           uint64 `json:"catch_ups"`
	CatchUpsPaced      uint64 `json:"catch_ups_paced"`
	CatchUpsAway       uint64 `json:"catch_ups_away"`
	CatchUpsLate       uint64 `json:"catch_ups_late"`
	CatchUpsDone       uint64 `json:"catch_ups_done"`
	CatchUpsGaveUp     uint64 `json:"catch_ups_gave_up"`
	CatchUpsHandedOver uint64 `json:"catch_ups_handed_over"`
	CatchUpMessages    uint64 `json:"catch_up_messages"`
	CatchUpQoS0Dropped uint64 `json:"catch_up_qos0_dropped"`
	// The connections whose first QoS 1/2 message waited for this node's
	// routing of the stream or for its sessions' catch-ups (docs/cluster.md,
	// "A publisher that moves"), those of them that waited for a
	// catch-up, those that waited for the node's start (the import of its
	// previous run's sessions), and those whose first message went on
	// before it caught up: past the wait's bound (10 s, or the keep
	// alive), or the stream's end could not be read.
	PublishersWaited        uint64 `json:"publishers_waited"`
	PublishersWaitedCatchUp uint64 `json:"publishers_waited_catch_up"`
	PublishersWaitedStart   uint64 `json:"publishers_waited_start"`
	PublishersNotCaughtUp   uint64 `json:"publishers_not_caught_up"`
	// SessionsAdopted counts the sessions of nodes gone (down for
	// cluster.adopt_after, or removed) that this node adopted (adopt.go).
	SessionsAdopted uint64 `json:"sessions_adopted"`
	// Removed lists the nodes this node knows were taken out of the
	// cluster for good (RemoveNode) since it started.
	Removed []string `json:"removed,omitempty"`
}

// RouteInfo is one route to another node.
type RouteInfo struct {
	Node string `json:"node"`
	Addr string `json:"addr"`
	RTT  string `json:"rtt,omitempty"`
	// Since is when the route came up; Pending the bytes waiting to be
	// sent on it; InMsgs and OutMsgs the messages it carried (NATS's own
	// traffic between the nodes included).
	Since   time.Time `json:"since,omitzero"`
	Pending int       `json:"pending_bytes"`
	InMsgs  int64     `json:"in_msgs"`
	OutMsgs int64     `json:"out_msgs"`
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
				st.Routes = append(st.Routes, RouteInfo{Node: r.RemoteName, Addr: r.IP + ":" + strconv.Itoa(r.Port), RTT: r.RTT,
					Since: r.Start.UTC(), Pending: r.Pending, InMsgs: r.InMsgs, OutMsgs: r.OutMsgs})
			}
			sort.Slice(st.Routes, func(i, j int) bool { return st.Routes[i].Node < st.Routes[j].Node })
		}
		if jz, err := n.srv.Jsz(&server.JSzOptions{}); err == nil && jz.Meta != nil {
			st.MetaLeader, st.MetaSize = jz.Meta.Leader, jz.Meta.Size
			st.MetaPeers = metaPeers(jz.Meta)
		}
	}
	s := &n.stats
	st.Forwarded, st.ForwardErrors, st.Received = s.forwarded.Load(), s.forwardErrors.Load(), s.received.Load()
	st.Duplicates, st.DecodeErrors = s.duplicates.Load(), s.decodeErrors.Load()
	st.RetainedOut, st.RetainedIn, st.Claims, st.Takeovers = s.retainedOut.Load(), s.retainedIn.Load(), s.claims.Load(), s.takeovers.Load()
	n.opsStatus(&st)
	d := &n.dstats
	st.StreamOut, st.StreamIn, st.StreamErrors = d.streamOut.Load(), d.streamIn.Load(), d.streamErrors.Load()
	st.StreamDuplicates, st.StreamDegraded = d.streamDuplicates.Load(), d.streamDegraded.Load()
	st.StreamUnrouted = d.streamUnrouted.Load()
	if n.pub != nil {
		st.StreamRepublished, st.StreamStallProbes = n.pub.republished.Load(), n.pub.stalls.Load()
	}
	st.SessionsIn, st.SessionsOut = d.sessionsIn.Load(), d.sessionsOut.Load()
	st.ReplayRecords, st.ReplaysBounded, st.ReplayDropped = d.replayRead.Load(), d.replaysBounded.Load(), d.replayDropped.Load()
	st.ReplicaFloors = d.replicaFloors.Load()
	st.HomesGone = d.homesGone.Load()
	st.CatchUps, st.CatchUpsDone, st.CatchUpsGaveUp = d.catchUps.Load(), d.catchUpsDone.Load(), d.catchUpsGaveUp.Load()
	st.CatchUpsPaced, st.CatchUpsLate = d.catchUpsPaced.Load(), d.catchUpsLate.Load()
	st.CatchUpsAway = d.catchUpsAway.Load()
	st.CatchUpsHandedOver, st.CatchUpMessages, st.CatchUpQoS0Dropped = d.catchUpsHandedOver.Load(), d.catchUpMessages.Load(), d.catchUpQoS0Dropped.Load()
	g := &n.dur.gate
	g.mu.Lock()
	st.PublishersWaited, st.PublishersNotCaughtUp = g.waited, g.timedOut+g.noEnd
	st.PublishersWaitedCatchUp, st.PublishersWaitedStart = g.waitedCatchUp, g.waitedStart
	g.mu.Unlock()
	st.SessionsAdopted = n.adopt.sessions.Load()
	st.Removed = n.removedNodes()
	return st
}
