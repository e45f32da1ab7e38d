package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/admin"
	"github.com/moatmq/moat/internal/cluster"
	"github.com/moatmq/moat/internal/metrics"
)

// `moat cluster status` asks a running node, through its admin API
// (GET /api/v1/cluster), how it sees its cluster. Exit status: 0 healthy,
// 1 an error or a node that is not in a cluster, 2 a degraded cluster (a
// node missing, no JetStream leader, a copy of a stream offline or
// lagging): scripts and monitoring can tell the three apart.

type clusterStatusOptions struct {
	dataDir   string
	admin     string
	tokenFile string
	caFile    string
	json      bool
	timeout   time.Duration
}

func init() { register(newClusterCommand) }

func newClusterCommand(stdio Stdio) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Look at the cluster a running node belongs to",
		Long:  "Commands about the cluster of Moat nodes (docs/cluster.md).",
	}
	var o clusterStatusOptions
	status := &cobra.Command{
		Use:   "status --admin ADDR [--token-file FILE] [--cacert FILE] [--json]",
		Short: "Show a node's view of its cluster: nodes, connections, routes, replication",
		Long: `Ask a running node, through its admin API (GET /api/v1/cluster), how it sees
its cluster, and print it: every node (up, down or stopped) with its client
connections and sessions, the routes and their round trip, the JetStream
meta leader, the replication state of each stream (the key-value buckets of
retained messages and client-ID claims among them: which copy leads, which
are current, lagging or offline), the forwarding counters and the problems
found. --json prints the API's answer unchanged.

A viewer token is enough; it is read from the file --token-file names or
from $` + adminTokenEnv + ` (never from the command line). HTTPS is verified
with --cacert, else DIR/ca/ca.pem when it exists; a loopback ADDR without a
scheme is reached over plain HTTP.

Exit status: 0 when the cluster is healthy, 1 on an error or when the node
is not in a cluster, 2 when the node reports a problem (a node missing, no
JetStream leader, a copy of a stream offline or lagging).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return clusterStatus(cmd.Context(), stdio, o)
		},
	}
	f := status.Flags()
	f.StringVar(&o.admin, "admin", "", "admin API `ADDR` of the node to ask (host:port or a URL); required")
	f.StringVar(&o.tokenFile, "token-file", "", "`FILE` holding an admin token (default: $"+adminTokenEnv+")")
	f.StringVar(&o.caFile, "cacert", "", "CA `FILE` to verify the admin API's certificate (default DIR/ca/ca.pem)")
	f.StringVar(&o.dataDir, "data", "moat-data", "data `DIR` of the node (for DIR/ca/ca.pem)")
	f.BoolVar(&o.json, "json", false, "print the API's JSON answer")
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "give up after `DURATION`")
	_ = status.MarkFlagRequired("admin")
	cmd.AddCommand(status, newRemoveNodeCommand(stdio))
	return cmd
}

type removeNodeOptions struct {
	clusterStatusOptions
	force bool
}

func newRemoveNodeCommand(stdio Stdio) *cobra.Command {
	var o removeNodeOptions
	c := &cobra.Command{
		Use:   "remove-node NAME --admin ADDR [--token-file FILE] [--force]",
		Short: "Take a node out of the cluster for good",
		Long: `Take the node NAME (its cluster.node) out of the cluster for good, asking
another node through its admin API (POST /api/v1/cluster/nodes/NAME/remove):
the node leaves the JetStream meta group and its copies of the streams, so
the others stop counting it (the cluster's size shrinks, and QoS 1/2
messages no longer go into the durable stream for it), its persistent
sessions are adopted by the node asked, with their queues, delayed wills
and expiry, and its client-ID claims are removed.

The node must be gone: it is refused while it is alive (heard from within
the last three heartbeats, or with a route to the node asked) unless
--force, which removes it anyway (it loses its JetStream; give its clients
another node). Remove it from every node's cluster.peers too, and do not
start it again on its data directory: a node that comes back after its
removal must join afresh (an empty DATA_DIR/cluster/jetstream).

An operator token is needed; it is read from the file --token-file names
or from $` + adminTokenEnv + ` (never from the command line). HTTPS is
verified as for 'moat cluster status'.

Exit status: 0 removed, 1 an error or a refusal (the node is alive, no
such node, no quorum).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return clusterRemoveNode(cmd.Context(), stdio, args[0], o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.admin, "admin", "", "admin API `ADDR` of a surviving node (host:port or a URL); required")
	f.StringVar(&o.tokenFile, "token-file", "", "`FILE` holding an operator token (default: $"+adminTokenEnv+")")
	f.StringVar(&o.caFile, "cacert", "", "CA `FILE` to verify the admin API's certificate (default DIR/ca/ca.pem)")
	f.StringVar(&o.dataDir, "data", "moat-data", "data `DIR` of the node (for DIR/ca/ca.pem)")
	f.BoolVar(&o.json, "json", false, "print the API's JSON answer")
	f.BoolVar(&o.force, "force", false, "remove the node even though it is alive")
	f.DurationVar(&o.timeout, "timeout", 2*time.Minute, "give up after `DURATION`")
	_ = c.MarkFlagRequired("admin")
	return c
}

func clusterRemoveNode(ctx context.Context, stdio Stdio, name string, o removeNodeOptions) error {
	token, err := adminToken("cluster", o.tokenFile, "an admin token is needed (a viewer's is enough, moat admin token create NAME --role viewer)")
	if err != nil {
		return err
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	path := "/api/v1/cluster/nodes/" + url.PathEscape(name) + "/remove"
	if o.force {
		path += "?force=true"
	}
	code, body, err := adminRequest(ctx, "cluster", http.MethodPost, o.admin, o.dataDir, o.caFile, token, path)
	if err != nil {
		return err
	}
	switch code {
	case http.StatusOK:
	case http.StatusNotImplemented:
		return fmt.Errorf("cluster: the node at %s is not in a cluster (its configuration has no cluster section)", o.admin)
	case http.StatusConflict:
		return fmt.Errorf("%s (add --force to remove it anyway)", apiError(body))
	case http.StatusForbidden:
		return fmt.Errorf("cluster: the node refused the token: removing a node needs an operator's (%s)", apiError(body))
	default:
		return fmt.Errorf("cluster: the node answered HTTP %d: %s", code, apiError(body))
	}
	if o.json {
		_, err := stdio.Out.Write(body)
		return err
	}
	var r cluster.RemoveResult
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("cluster: the node's answer is not a removal's result: %w", err)
	}
	forced := ""
	if r.Forced {
		forced = " (forced: it was alive)"
	}
	meta := "left the JetStream meta group"
	if !r.MetaRemoved {
		meta = "was no longer in the JetStream meta group"
	}
	fmt.Fprintf(stdio.Out, "node %s removed from the cluster%s: it %s; %d of its sessions adopted by the node asked, %d client-ID claims removed\n",
		r.Node, forced, meta, r.SessionsAdopted, r.ClaimsRemoved)
	if len(r.StreamsShrunk) > 0 {
		fmt.Fprintf(stdio.Out, "streams with more copies than the servers left, lowered to them: %s\n", strings.Join(r.StreamsShrunk, ", "))
	}
	fmt.Fprintln(stdio.Out, "remove it from every node's cluster.peers, and do not start it again on its data directory")
	return nil
}

// errDegraded is the exit of a status that found problems.
var errDegraded = errors.New("cluster: degraded")

func clusterStatus(ctx context.Context, stdio Stdio, o clusterStatusOptions) error {
	token, err := adminToken("cluster", o.tokenFile, "an admin token is needed (a viewer's is enough, moat admin token create NAME --role viewer)")
	if err != nil {
		return err
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	code, body, err := adminRequest(ctx, "cluster", http.MethodGet, o.admin, o.dataDir, o.caFile, token, "/api/v1/cluster")
	if err != nil {
		return err
	}
	switch code {
	case http.StatusOK:
	case http.StatusNotImplemented:
		return fmt.Errorf("cluster: the node at %s is not in a cluster (its configuration has no cluster section)", o.admin)
	default:
		return fmt.Errorf("cluster: the node answered HTTP %d: %s", code, apiError(body))
	}
	var st cluster.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("cluster: the node's answer is not a cluster status: %w", err)
	}
	if o.json {
		if _, err := stdio.Out.Write(body); err != nil {
			return err
		}
	} else {
		printClusterStatus(stdio.Out, st, time.Now())
	}
	if !st.Healthy {
		return &quietExit{code: 2, err: errDegraded}
	}
	return nil
}

// printClusterStatus writes st for a person.
func printClusterStatus(w io.Writer, st cluster.Status, now time.Time) {
	state := "healthy"
	if !st.Healthy {
		state = "DEGRADED"
	}
	fmt.Fprintf(w, "cluster %s, asked node %s: %s, %d of %d nodes up\n", st.Cluster, st.Node, state, st.NodesUp, st.NodesExpected)
	switch {
	case st.External:
		fmt.Fprintln(w, "NATS: external cluster")
	case st.MetaLeader != "":
		fmt.Fprintf(w, "JetStream: meta leader %s, cluster size %d\n", st.MetaLeader, st.MetaSize)
	default:
		fmt.Fprintln(w, "JetStream: NO meta leader")
	}
	kv := "in use"
	if !st.Ready {
		kv = "NOT in use yet (no quorum)"
	}
	fmt.Fprintf(w, "key-value store: %s, %d copies, %d writes pending (%d dropped), %d security changes pending (%d refused)\n\n",
		kv, st.Replicas, st.PendingWrites, st.WritesDropped, st.SecurityPending, st.SecurityRefused)

	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tCONNECTIONS\tSESSIONS\tFORWARDED\tRECEIVED\tROUTE\tRTT\tCLOCK\tLAST SEEN\tVERSION")
	for _, n := range st.Nodes {
		name, conns, sess, fwd, recv, seen := n.Node, "-", "-", "-", "-", "never"
		if n.Self {
			name += " (this node)"
			seen = "-"
		} else if !n.LastSeen.IsZero() {
			seen = now.Sub(n.LastSeen).Round(time.Second).String() + " ago"
		}
		if n.State == cluster.StateUp {
			conns, sess, fwd, recv = fmt.Sprint(n.Connections), fmt.Sprint(n.Sessions), fmt.Sprint(n.Forwarded), fmt.Sprint(n.Received)
		}
		route := n.Route
		if route == "" {
			route = "-"
			if !n.Self && !st.External {
				route = "none"
			}
		}
		clock := "-"
		if n.ClockOffsetMS != nil {
			clock = fmt.Sprintf("%+dms", *n.ClockOffsetMS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, strings.ToUpper(n.State), conns, sess, fwd, recv, route,
			dash(n.RTT), clock, seen, dash(n.Version))
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tCOPIES\tLEADER\tMESSAGES\tCOPIES' STATE")
	for _, s := range st.Streams {
		var peers []string
		for _, p := range s.Peers {
			ps := "current"
			switch {
			case p.Leader:
				ps = "leader"
			case p.Offline:
				ps = "OFFLINE"
			case !p.Current:
				ps = fmt.Sprintf("LAGGING %d", p.Lag)
			}
			peers = append(peers, p.Node+" "+ps)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\n", s.Name, s.Replicas, cmp.Or(s.Leader, "NONE"), s.Messages, strings.Join(peers, ", "))
	}
	if len(st.Streams) == 0 {
		fmt.Fprintln(tw, "(none known)\t\t\t\t")
	}
	tw.Flush()
	if st.ReplicationError != "" {
		fmt.Fprintf(w, "replication state as of %s (the last poll failed: %s)\n", st.ReplicationAt.Format(time.RFC3339), st.ReplicationError)
	}

	fmt.Fprintf(w, "\nthis node: forwarded %d (errors %d), received %d (duplicates %d, malformed %d), retained out %d in %d, "+
		"claims %d (pruned %d), takeovers %d, filters %d\n", st.Forwarded, st.ForwardErrors, st.Received, st.Duplicates, st.DecodeErrors,
		st.RetainedOut, st.RetainedIn, st.Claims, st.ClaimsPruned, st.Takeovers, st.Filters)
	if len(st.Problems) > 0 {
		fmt.Fprintln(w, "\nproblems:")
		for _, p := range st.Problems {
			fmt.Fprintln(w, "  - "+p)
		}
	}
}

func dash(s string) string { return cmp.Or(s, "-") }

// adminCluster is the admin API's view of the cluster; nil without one.
func (p *servePlan) adminCluster() func() any {
	if p.cluster == nil {
		return nil
	}
	return func() any { return p.cluster.Status() }
}

// adminRemoveNode is the admin API's removal of a node; nil without a
// cluster.
func (p *servePlan) adminRemoveNode() func(ctx context.Context, node string, force bool) (any, error) {
	if p.cluster == nil {
		return nil
	}
	return func(ctx context.Context, node string, force bool) (any, error) {
		res, err := p.cluster.RemoveNode(ctx, node, force)
		switch {
		case errors.Is(err, cluster.ErrNodeAlive):
			return nil, aliveError{err}
		case errors.Is(err, cluster.ErrRemoveRefused):
			return nil, err
		}
		return res, err
	}
}

// aliveError is a refusal to remove a live node, for the admin API.
type aliveError struct{ error }

func (e aliveError) Is(target error) bool { return target == admin.ErrNodeAlive }

// clusterMetrics adapts the cluster's status to the metrics; nil without
// a cluster.
func (p *servePlan) clusterMetrics() *metrics.Cluster {
	if p.cluster == nil {
		return nil
	}
	st := p.cluster.Status()
	m := &metrics.Cluster{Nodes: st.NodesUp, NodesMissing: st.NodesExpected - st.NodesUp, Routes: len(st.Routes), Ready: st.Ready,
		Healthy: st.Healthy, Forwarded: st.Forwarded, Received: st.Received, Duplicates: st.Duplicates,
		ForwardErrors: st.ForwardErrors, DecodeErrors: st.DecodeErrors, Takeovers: st.Takeovers, Claims: st.Claims,
		ClaimsPruned: st.ClaimsPruned, RetainedOut: st.RetainedOut, RetainedIn: st.RetainedIn, PendingWrites: st.PendingWrites,
		WritesDropped: st.WritesDropped, SecurityPending: st.SecurityPending, SecurityRefused: st.SecurityRefused,
		NodeConnections: map[string]int64{}, NodeClockOffsets: map[string]float64{}}
	for _, n := range st.Nodes {
		if n.State == cluster.StateUp {
			m.NodeConnections[n.Node] = n.Connections
			if n.ClockOffsetMS != nil {
				m.NodeClockOffsets[n.Node] = float64(*n.ClockOffsetMS) / 1000
			}
		}
	}
	for _, s := range st.Streams {
		for _, r := range s.Peers {
			m.Replicas = append(m.Replicas, metrics.Replica{Stream: s.Name, Node: r.Node, Current: r.Current, Lag: r.Lag})
		}
	}
	return m
}
