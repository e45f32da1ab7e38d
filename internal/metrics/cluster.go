package metrics

import "github.com/prometheus/client_golang/prometheus"

// Cluster is a cluster node's part of a Snapshot (docs/cluster.md).
// Snapshot.Cluster nil: clustering is off, no moat_cluster_* series.
type Cluster struct {
	// Nodes is the number of nodes up (this one included), NodesMissing
	// the nodes known (heard from before, or JetStream peers) that are
	// not; Routes the routes to other nodes.
	Nodes, NodesMissing, Routes int
	// Ready is true once the replicated key-value store is in use;
	// Healthy when the status reports no problem.
	Ready, Healthy bool
	// Forwarding counters: messages this node published to the others,
	// messages it received from them, copies dropped as duplicates,
	// messages not forwarded (ForwardErrors) and messages of other nodes
	// dropped as malformed (DecodeErrors).
	Forwarded, Received, Duplicates, ForwardErrors, DecodeErrors uint64
	// Takeovers are local connections ended because the client connected
	// on another node; Claims the client-ID claims written, ClaimsPruned
	// those removed when their session ended.
	Takeovers, Claims, ClaimsPruned uint64
	// RetainedOut and RetainedIn count retained changes written to the
	// cluster and applied from it.
	RetainedOut, RetainedIn uint64
	// PendingWrites are the changes waiting for the key-value store;
	// WritesDropped those given up.
	PendingWrites int
	WritesDropped uint64
	// SecurityPending are the security changes (bans, shared files)
	// waiting for the key-value store; SecurityRefused those refused
	// because too many waited (in force on this node only).
	SecurityPending int
	SecurityRefused uint64
	// NodeConnections are the live connections of every node up, by
	// node name (from the heartbeats).
	NodeConnections map[string]int64
	// NodeClockOffsets are how far the clock of every other node up is
	// ahead of this node's, in seconds (negative: behind), by node, once
	// known (cluster.NodeInfo.ClockOffsetMS).
	NodeClockOffsets map[string]float64
	// Replicas are the copies of the JetStream streams.
	Replicas []Replica
}

// Replica is one copy of a JetStream stream.
type Replica struct {
	Stream, Node string
	Current      bool
	Lag          uint64 // operations behind the stream's leader
}

var (
	dClNodes      = desc("cluster_nodes", "Nodes of the cluster up, this one included, as this node sees them.")
	dClMissing    = desc("cluster_nodes_missing", "Nodes of the cluster known to this node (heard from before, or JetStream peers) that are not up.")
	dClRoutes     = desc("cluster_routes", "Routes from this node to other nodes.")
	dClReady      = desc("cluster_ready", "1 when the replicated key-value store (retained messages, client-ID claims) is in use.")
	dClHealthy    = desc("cluster_healthy", "1 when this node's cluster status reports no problem.")
	dClForwarded  = desc("cluster_forwarded_total", "Messages this node forwarded to the other nodes (once per message, whatever the number of nodes).")
	dClReceived   = desc("cluster_received_total", "Messages of other nodes this node delivered to its subscribers.")
	dClDuplicates = desc("cluster_duplicates_total", "Copies of other nodes' messages dropped because they arrived through overlapping filters.")
	dClErrors     = desc("cluster_errors_total", "Messages not forwarded (kind forward) and messages, records and heartbeats of other nodes dropped as malformed (kind decode).", "kind")
	dClTakeovers  = desc("cluster_takeovers_total", "Local connections ended because their client connected on another node.")
	dClClaims     = desc("cluster_claims_total", "Client-ID claims this node wrote to the cluster.")
	dClPruned     = desc("cluster_claims_pruned_total", "Client-ID claims this node removed because their session ended.")
	dClRetained   = desc("cluster_retained_changes_total", "Retained changes written to the cluster (direction out) and applied from other nodes (direction in).", "direction")
	dClPending    = desc("cluster_pending_writes", "Retained changes and claims waiting for the key-value store.")
	dClDropped    = desc("cluster_writes_dropped_total", "Retained changes and claims given up: the oldest beyond a queue's bound, a claim another node's later claim superseded, a value the key-value store refuses.")
	dClSecPending = desc("cluster_security_pending", "Security changes (bans, shared access files) waiting for the key-value store, one per ban or file.")
	dClSecRefused = desc("cluster_security_refused_total", "Security changes refused for the cluster because too many waited for the key-value store: in force on this node only.")
	dClNodeConns  = desc("cluster_node_connections", "Live client connections of each node up, from its heartbeat.", "node")
	dClNodeClock  = desc("cluster_node_clock_offset_seconds", "How far each other node's clock is ahead of this node's (negative: behind), estimated from its heartbeats.", "node")
	dClCurrent    = desc("cluster_replica_current", "1 when the copy of a JetStream stream on a node is caught up with the stream's leader.", "stream", "node")
	dClLag        = desc("cluster_replication_lag", "Operations the copy of a JetStream stream on a node is behind the stream's leader.", "stream", "node")
	clusterDescs  = []*prometheus.Desc{dClNodes, dClMissing, dClRoutes, dClReady, dClHealthy, dClForwarded, dClReceived,
		dClDuplicates, dClErrors, dClTakeovers, dClClaims, dClPruned, dClRetained, dClPending, dClDropped,
		dClSecPending, dClSecRefused, dClNodeConns, dClNodeClock, dClCurrent, dClLag}
)

// The cluster's metrics are described with every other metric.
func init() { allDescs = append(allDescs, clusterDescs...) }

// collectCluster sends the cluster's metrics; none when c is nil.
func collectCluster(ch chan<- prometheus.Metric, c *Cluster) {
	if c == nil {
		return
	}
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	n := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	g(dClNodes, float64(c.Nodes))
	g(dClMissing, float64(c.NodesMissing))
	g(dClRoutes, float64(c.Routes))
	g(dClReady, b(c.Ready))
	g(dClHealthy, b(c.Healthy))
	n(dClForwarded, c.Forwarded)
	n(dClReceived, c.Received)
	n(dClDuplicates, c.Duplicates)
	n(dClErrors, c.ForwardErrors, "forward")
	n(dClErrors, c.DecodeErrors, "decode")
	n(dClTakeovers, c.Takeovers)
	n(dClClaims, c.Claims)
	n(dClPruned, c.ClaimsPruned)
	n(dClRetained, c.RetainedOut, "out")
	n(dClRetained, c.RetainedIn, "in")
	g(dClPending, float64(c.PendingWrites))
	n(dClDropped, c.WritesDropped)
	g(dClSecPending, float64(c.SecurityPending))
	n(dClSecRefused, c.SecurityRefused)
	for node, v := range c.NodeConnections {
		g(dClNodeConns, float64(v), node)
	}
	for node, v := range c.NodeClockOffsets {
		g(dClNodeClock, v, node)
	}
	seen := map[[2]string]bool{}
	for _, r := range c.Replicas {
		k := [2]string{r.Stream, r.Node}
		if seen[k] {
			continue // one series per label set, or the scrape fails
		}
		seen[k] = true
		g(dClCurrent, b(r.Current), r.Stream, r.Node)
		g(dClLag, float64(r.Lag), r.Stream, r.Node)
	}
}
