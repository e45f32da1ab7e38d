package metrics

import (
	"strings"
	"testing"
)

func fullCluster() *Cluster {
	return &Cluster{Nodes: 2, NodesMissing: 1, Routes: 2, Ready: true, Healthy: false,
		Forwarded: 10, Received: 20, Duplicates: 3, ForwardErrors: 1, DecodeErrors: 2, Takeovers: 1, Claims: 5, ClaimsPruned: 4,
		RetainedOut: 6, RetainedIn: 7, PendingWrites: 8, WritesDropped: 9, SecurityPending: 2, SecurityRefused: 5, NodeConnections: map[string]int64{"n1": 3, "n2": 4},
		NodeClockOffsets: map[string]float64{"n2": -0.25},
		Replicas: []Replica{{"KV_moat_retained", "n1", true, 0}, {"KV_moat_retained", "n3", false, 12},
			{"KV_moat_retained", "n3", false, 12}}}
}

func TestClusterMetrics(t *testing.T) {
	body := string(scrape(t, fullSnapshot()))
	for _, want := range []string{
		"moat_cluster_nodes 2", "moat_cluster_nodes_missing 1", "moat_cluster_routes 2", "moat_cluster_ready 1",
		"moat_cluster_healthy 0", "moat_cluster_forwarded_total 10", "moat_cluster_received_total 20",
		"moat_cluster_duplicates_total 3", `moat_cluster_errors_total{kind="forward"} 1`, `moat_cluster_errors_total{kind="decode"} 2`,
		"moat_cluster_takeovers_total 1", "moat_cluster_claims_total 5", "moat_cluster_claims_pruned_total 4",
		`moat_cluster_retained_changes_total{direction="out"} 6`, `moat_cluster_retained_changes_total{direction="in"} 7`,
		"moat_cluster_pending_writes 8", "moat_cluster_writes_dropped_total 9", "moat_cluster_security_pending 2",
		"moat_cluster_security_refused_total 5", `moat_cluster_node_connections{node="n2"} 4`,
		`moat_cluster_node_clock_offset_seconds{node="n2"} -0.25`,
		`moat_cluster_replica_current{node="n3",stream="KV_moat_retained"} 0`,
		`moat_cluster_replication_lag{node="n3",stream="KV_moat_retained"} 12`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	s := fullSnapshot()
	s.Cluster = nil
	if body := string(scrape(t, s)); strings.Contains(body, "moat_cluster_nodes ") {
		t.Error("cluster series exposed without a cluster")
	}
}
