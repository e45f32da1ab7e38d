package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// The operations side of a Node: the replication state of the JetStream
// streams (the key-value buckets are streams too), polled in the
// background so that a status, an API call or a metrics scrape never
// waits for the network, and the problems a status reports.

// StreamState is the replication state of one JetStream stream.
type StreamState struct {
	Name string `json:"name"`
	// Replicas is the number of copies the stream is configured with.
	Replicas int    `json:"replicas"`
	Leader   string `json:"leader"`
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	// Peers are the copies, the leader's first.
	Peers []ReplicaState `json:"peers"`
}

// ReplicaState is one copy of a stream, or one member of the JetStream
// meta group.
type ReplicaState struct {
	Node   string `json:"node"`
	Leader bool   `json:"leader,omitempty"`
	// Current is true when the copy is caught up with the leader and was
	// heard from recently; Offline when the group considers it gone.
	Current bool `json:"current"`
	Offline bool `json:"offline,omitempty"`
	// Lag is how many operations it is behind the leader.
	Lag uint64 `json:"lag,omitempty"`
	// Active is how long ago the leader heard from it.
	Active string `json:"active,omitempty"`
}

// replication is the last poll of the streams' state.
type replication struct {
	streams []StreamState
	err     string
	at      time.Time
	// lagging holds "stream\x00node" of copies not current at the last
	// poll: a copy is reported lagging only when it was at two polls in
	// a row, so that the normal lag of a busy stream does not count.
	lagging map[string]bool
	late    map[string]bool // not current at this poll and the one before
}

// streamOfMoat tells whether a stream is Moat's: on an external NATS the
// account may hold others', which are not this cluster's business.
func streamOfMoat(name string) bool { return strings.Contains(strings.ToLower(name), "moat") }

// replicationLoop polls the streams' state every heartbeat interval (at
// least every second).
func (n *Node) replicationLoop() {
	js, err := jetstream.New(n.nc)
	if err != nil {
		n.setReplication(nil, err)
		return
	}
	every := max(n.hbInterval(), 250*time.Millisecond)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(n.ctx, max(every, 2*time.Second))
		streams, err := listStreams(ctx, js)
		cancel()
		if n.ctx.Err() != nil {
			return
		}
		n.setReplication(streams, err)
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// listStreams returns the state of Moat's streams, sorted by name. The
// names come from the meta layer, each stream's state from its leader:
// a list of stream infos, which the meta leader gathers from every stream
// leader within a deadline of its own, silently leaves out the streams
// whose leaders were slow to answer.
func listStreams(ctx context.Context, js jetstream.JetStream) ([]StreamState, error) {
	names := js.StreamNames(ctx)
	var list []string
	for name := range names.Name() {
		if streamOfMoat(name) {
			list = append(list, name)
		}
	}
	if err := names.Err(); err != nil {
		return nil, err
	}
	slices.Sort(list)
	out := make([]StreamState, 0, len(list))
	var errs []error
	for _, name := range list {
		s, err := js.Stream(ctx, name)
		var si *jetstream.StreamInfo
		if err == nil {
			si, err = s.Info(ctx)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", name, err))
			out = append(out, StreamState{Name: name, Peers: []ReplicaState{}})
			continue
		}
		ss := StreamState{Name: name, Replicas: si.Config.Replicas, Messages: si.State.Msgs, Bytes: si.State.Bytes,
			Peers: []ReplicaState{}}
		if ci := si.Cluster; ci != nil {
			ss.Leader = ci.Leader
			if ci.Leader != "" {
				ss.Peers = append(ss.Peers, ReplicaState{Node: ci.Leader, Leader: true, Current: true})
			}
			for _, p := range ci.Replicas {
				if p == nil {
					continue
				}
				ss.Peers = append(ss.Peers, ReplicaState{Node: p.Name, Current: p.Current, Offline: p.Offline, Lag: p.Lag,
					Active: p.Active.Round(time.Millisecond).String()})
			}
		}
		out = append(out, ss)
	}
	return out, errors.Join(errs...)
}

func (n *Node) setReplication(streams []StreamState, err error) {
	n.opsMu.Lock()
	defer n.opsMu.Unlock()
	r := &n.repl
	r.at = time.Now()
	r.err = ""
	if err != nil {
		r.err = err.Error()
		if streams == nil {
			return // keep the last known state, marked by err
		}
	}
	now := map[string]bool{}
	r.late = map[string]bool{}
	for _, s := range streams {
		for _, p := range s.Peers {
			if !p.Current {
				k := s.Name + "\x00" + p.Node
				now[k] = true
				if r.lagging[k] {
					r.late[k] = true
				}
			}
		}
	}
	r.streams, r.lagging = streams, now
}

// opsStatus completes st (Status) with the nodes, the streams and the
// problems found.
func (n *Node) opsStatus(st *Status) {
	now := n.now()
	var jsPeers []string
	for _, p := range st.MetaPeers {
		if p.Node != n.cfg.Node {
			jsPeers = append(jsPeers, p.Node)
		}
	}
	st.Nodes = n.nodeList(now, st.Routes, jsPeers)
	n.opsMu.Lock()
	st.Streams = slices.Clone(n.repl.streams)
	replErr, replAt, late := n.repl.err, n.repl.at, n.repl.late
	n.opsMu.Unlock()
	if st.Streams == nil {
		st.Streams = []StreamState{}
	}
	if !replAt.IsZero() {
		st.ReplicationAt = replAt.UTC()
	}
	st.ReplicationError = replErr
	kv := n.kvs() // n.kv is made on first use, under subMu
	st.PendingWrites = kv.ret.writes.len() + kv.cl.writes.len()
	st.WritesDropped = n.stats.writesDropped.Load()
	st.SecurityPending = n.sec.writes.len()
	st.SecurityRefused = n.stats.secRefused.Load()
	st.ClaimsPruned = n.stats.claimsPruned.Load()
	st.RetainedPurged = n.stats.retainedPurged.Load()

	var probs []string
	up := 0
	for _, ni := range st.Nodes {
		switch ni.State {
		case StateUp:
			up++
			if o := ni.ClockOffsetMS; o != nil {
				if d := (time.Duration(*o) * time.Millisecond).Abs(); d > maxClockOffset {
					probs = append(probs, fmt.Sprintf("node %s's clock differs from this node's by %s: the later of two changes of a retained topic, "+
						"ban or shared file is chosen by the nodes' clocks; synchronise them (NTP)", ni.Node, d))
				}
			}
		case StateStopped:
			probs = append(probs, fmt.Sprintf("node %s stopped (its last heartbeat, %s ago, said so)", ni.Node, ago(now, ni.LastSeen)))
		default:
			if ni.LastSeen.IsZero() {
				probs = append(probs, fmt.Sprintf("node %s is down: a JetStream peer this node has not heard from since it started", ni.Node))
			} else {
				probs = append(probs, fmt.Sprintf("node %s is down: no heartbeat for %s", ni.Node, ago(now, ni.LastSeen)))
			}
		}
	}
	st.NodesUp = up
	st.NodesExpected = max(len(st.Nodes), st.MetaSize)
	if st.MetaSize > len(st.Nodes) {
		probs = append(probs, fmt.Sprintf("JetStream expects %d nodes; %d are known to this node", st.MetaSize, len(st.Nodes)))
	}
	if !st.External && st.MetaLeader == "" {
		probs = append(probs, "JetStream has no meta leader: fewer than a quorum of the nodes reach each other (or the cluster is starting)")
	}
	if !st.Ready {
		probs = append(probs, "the replicated key-value store is not in use yet: retained messages and takeover stay local until the cluster has a quorum")
	}
	if replErr != "" {
		probs = append(probs, "replication state unknown: "+replErr)
	}
	for _, s := range st.Streams {
		if s.Leader == "" && s.Replicas > 0 { // Replicas 0: its state is unknown (replErr says why)
			probs = append(probs, fmt.Sprintf("stream %s has no leader: it accepts no writes", s.Name))
		}
		if s.Replicas > 0 && len(s.Peers) < s.Replicas && s.Leader != "" {
			probs = append(probs, fmt.Sprintf("stream %s has %d of its %d copies", s.Name, len(s.Peers), s.Replicas))
		}
		for _, p := range s.Peers {
			switch {
			case p.Offline:
				probs = append(probs, fmt.Sprintf("stream %s: the copy on %s is offline", s.Name, p.Node))
			case !p.Current && late[s.Name+"\x00"+p.Node]:
				probs = append(probs, fmt.Sprintf("stream %s: the copy on %s is lagging (%d operations behind)", s.Name, p.Node, p.Lag))
			}
		}
	}
	if probs == nil {
		probs = []string{}
	}
	st.Problems = probs
	st.Healthy = len(probs) == 0
}

// ago is now - t for a message, in whole seconds at least.
func ago(now, t time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < time.Second {
		d = time.Second
	}
	return d.String()
}

// metaPeers lists the JetStream meta group's members other than this
// node, from the embedded server's view.
func metaPeers(m *server.MetaClusterInfo) []ReplicaState {
	var out []ReplicaState
	for _, p := range m.Replicas {
		if p == nil {
			continue
		}
		out = append(out, ReplicaState{Node: p.Name, Leader: p.Name == m.Leader, Current: p.Current, Offline: p.Offline, Lag: p.Lag,
			Active: p.Active.Round(time.Millisecond).String()})
	}
	return out
}
