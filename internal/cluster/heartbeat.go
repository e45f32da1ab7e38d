package cluster

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// Every node publishes a heartbeat on a core NATS subject every
// HeartbeatInterval: its name, its run (origin), its connection and
// session counts and its forwarding counters. Each node keeps the last
// heartbeat of every other node in memory; that is how the status of any
// node lists every node's connections, and how it notices a node that
// stopped talking. Core NATS rather than a key-value bucket: heartbeats
// need no quorum and no disk, and what a node hears is what it can reach,
// which is what matters in a partition.

// hbSubject is the heartbeats' subject; forwarded messages live under
// msgPrefix ("moat.m."), so no MQTT filter ever matches it.
const hbSubject = "moat.hb"

// Bounds on what other nodes send: a heartbeat is a few hundred bytes.
const (
	maxHeartbeat  = 4 << 10
	maxHBNodes    = 1024 // nodes remembered; more are ignored (and logged once)
	maxHBNameLen  = 256
	hbVersion     = 1
	hbMissedLimit = 3 // intervals without a heartbeat before a node is down
)

// defaultHeartbeat is Config.HeartbeatInterval's default.
const defaultHeartbeat = 2 * time.Second

// heartbeat is the JSON a node publishes.
type heartbeat struct {
	V           int       `json:"v"`
	Node        string    `json:"node"`
	Origin      string    `json:"origin"`
	Version     string    `json:"version,omitempty"`
	Started     time.Time `json:"started"`
	IntervalMS  int64     `json:"interval_ms"`
	Connections int64     `json:"connections"`
	Sessions    int64     `json:"sessions"`
	Filters     int       `json:"filters"`
	Forwarded   uint64    `json:"forwarded"`
	Received    uint64    `json:"received"`
	// Leaving is set in the last heartbeat of a node that is stopping.
	Leaving bool `json:"leaving,omitempty"`
	// Sent is the node's clock when it sent the heartbeat: the others
	// estimate from it how far its clock is from theirs (clockOffset).
	// Zero from a node of a build before 2026-12-07.
	Sent time.Time `json:"sent,omitzero"`
	// Adopted names the runs of other nodes whose sessions this node
	// adopted (adopt.go), the most recent first: a run still alive
	// that hears it was taken for dead and checks its sessions.
	Adopted []adoptNotice `json:"adopted,omitempty"`
}

// adoptNotice tells that the sessions of the run Origin were adopted;
// K counts the adopter's adoptions of that run, so that a second one is
// told apart from the first.
type adoptNotice struct {
	Origin string `json:"o"`
	K      uint64 `json:"k"`
}

// Bounds of a heartbeat's adoption notices: sent, the most recent that
// fit in maxNoticeBytes; received, more than maxNotices or an origin
// longer than a heartbeat's own are ignored.
const (
	maxNotices     = 64
	maxNoticeBytes = 1 << 10
)

var errHeartbeat = errors.New("cluster: malformed heartbeat")

// decodeHeartbeat parses and checks another node's heartbeat.
func decodeHeartbeat(b []byte) (heartbeat, error) {
	var h heartbeat
	if len(b) > maxHeartbeat {
		return h, errHeartbeat
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, errHeartbeat
	}
	if h.V != hbVersion || h.Node == "" || len(h.Node) > maxHBNameLen || !utf8.ValidString(h.Node) ||
		!strings.HasPrefix(h.Origin, h.Node+"/") || len(h.Origin) > 2*maxHBNameLen || len(h.Version) > maxHBNameLen ||
		h.IntervalMS <= 0 || h.IntervalMS > int64(time.Hour/time.Millisecond) || h.Connections < 0 || h.Sessions < 0 || h.Filters < 0 {
		return h, errHeartbeat
	}
	// In UTC: a time given with a zero offset ("+00:00") would otherwise
	// keep a zone of its own, and a zero one would not survive encoding.
	h.Started, h.Sent = h.Started.UTC(), h.Sent.UTC()
	if len(h.Adopted) == 0 || len(h.Adopted) > maxNotices || slices.ContainsFunc(h.Adopted, func(a adoptNotice) bool { return len(a.Origin) > 2*maxHBNameLen }) {
		h.Adopted = nil
	}
	return h, nil
}

// peerBeat is the last heartbeat heard from one node.
type peerBeat struct {
	hb   heartbeat
	seen time.Time // when it arrived, by this node's clock
	// offsets are the last heartbeats' Sent less their arrival, newest
	// at offsets[(next-1)%len]; n of them are valid.
	offsets [clockSamples]time.Duration
	next, n int
	// skewed: the estimate last logged was beyond maxClockOffset;
	// loggedAt is when it was logged.
	skewed   bool
	loggedAt time.Time
}

// The clock offset of another node is estimated from its heartbeats: a
// heartbeat's Sent less its arrival is the offset less the time it
// travelled, which is never negative, so the largest of the last
// clockSamples is the best estimate (a heartbeat held up by a busy node
// or network only lowers its own sample). It is known after
// clockMinSamples heartbeats. An offset beyond maxClockOffset is a
// problem of the status and logged: where two nodes change the same
// retained topic, ban or shared file, the later change by their clocks
// wins, and bans expire by each node's clock.
const (
	clockSamples    = 8
	clockMinSamples = 3
	maxClockOffset  = time.Second
	// clockLogEvery bounds how often a node's offset going beyond
	// maxClockOffset or back is logged: an estimate that swings about
	// the bound (or a node sending made-up times) would otherwise log a
	// line per heartbeat. The status always shows the present estimate.
	clockLogEvery = time.Minute
)

// clockOffset returns the estimated offset of the node's clock from this
// node's (positive: ahead), and whether it is known.
func (pb *peerBeat) clockOffset() (time.Duration, bool) {
	if pb.n < clockMinSamples {
		return 0, false
	}
	best := pb.offsets[0]
	for _, o := range pb.offsets[1:pb.n] {
		best = max(best, o)
	}
	return best, true
}

// beats holds the other nodes' last heartbeats, by node name.
type beats struct {
	mu    sync.Mutex
	nodes map[string]peerBeat
	full  bool // maxHBNodes reached once (logged)
}

// record keeps h, received at now. It reports false when the table is
// full and h is of a node not in it, the node's clock offset when known,
// and whether it went beyond maxClockOffset or came back within it since
// that was last reported, at most once per clockLogEvery (changed).
func (b *beats) record(h heartbeat, now time.Time) (ok bool, offset time.Duration, changed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.nodes == nil {
		b.nodes = make(map[string]peerBeat)
	}
	pb, known := b.nodes[h.Node]
	if !known && len(b.nodes) >= maxHBNodes {
		first := !b.full
		b.full = true
		return !first, 0, false
	}
	if pb.hb.Origin != h.Origin {
		pb = peerBeat{skewed: pb.skewed, loggedAt: pb.loggedAt} // another run: its clock may be another machine's
	}
	pb.hb, pb.seen = h, now
	if !h.Sent.IsZero() {
		pb.offsets[pb.next] = h.Sent.Sub(now)
		pb.next = (pb.next + 1) % clockSamples
		pb.n = min(pb.n+1, clockSamples)
	}
	if o, known := pb.clockOffset(); known {
		offset = o
		if skewed := o.Abs() > maxClockOffset; skewed != pb.skewed && (pb.loggedAt.IsZero() || now.Sub(pb.loggedAt) >= clockLogEvery) {
			changed = true
			pb.skewed, pb.loggedAt = skewed, now
		}
	}
	b.nodes[h.Node] = pb
	return true, offset, changed
}

// snapshot returns a copy of the table.
func (b *beats) snapshot() map[string]peerBeat {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]peerBeat, len(b.nodes))
	for k, v := range b.nodes {
		out[k] = v
	}
	return out
}

// Node states in Status.Nodes.
const (
	StateUp      = "up"      // heard from within three heartbeat intervals (or this node)
	StateDown    = "down"    // not heard from for longer, or a JetStream peer never heard from
	StateStopped = "stopped" // said it was stopping in its last heartbeat
)

// NodeInfo is one node of the cluster as this node sees it.
type NodeInfo struct {
	Node  string `json:"node"`
	State string `json:"state"`
	// Self is true for the node that answered.
	Self    bool   `json:"self,omitempty"`
	Version string `json:"version,omitempty"`
	// Connections and Sessions are the node's live client connections
	// and its sessions (connected and offline), from its last heartbeat.
	Connections int64 `json:"connections"`
	Sessions    int64 `json:"sessions"`
	// Filters is the number of distinct filters the node subscribes to
	// in NATS; Forwarded and Received its forwarding counters.
	Filters   int       `json:"filters"`
	Forwarded uint64    `json:"forwarded"`
	Received  uint64    `json:"received"`
	Started   time.Time `json:"started,omitzero"`
	// LastSeen is when this node last heard from it (zero: never since
	// this node started); for Self, now.
	LastSeen time.Time `json:"last_seen,omitzero"`
	// ClockOffsetMS is how far the node's clock is ahead of this node's
	// (negative: behind), in milliseconds, estimated from its last
	// heartbeats; absent for this node, a node of an earlier build, and
	// until three heartbeats were heard.
	ClockOffsetMS *int64 `json:"clock_offset_ms,omitempty"`
	// Route is the address of the route to it, when one is connected.
	Route string `json:"route,omitempty"`
	RTT   string `json:"rtt,omitempty"`
}

// localBeat is this node's own heartbeat now.
func (n *Node) localBeat(leaving bool) heartbeat {
	h := heartbeat{V: hbVersion, Node: n.cfg.Node, Origin: n.origin, Version: n.cfg.Version, Started: n.started,
		IntervalMS: n.hbInterval().Milliseconds(), Forwarded: n.stats.forwarded.Load(), Received: n.stats.received.Load(),
		Leaving: leaving, Sent: n.now()}
	if c, ok := n.b.(clientCounter); ok {
		h.Connections, h.Sessions = c.ClientCounts()
	}
	n.subMu.Lock()
	h.Filters = len(n.subs)
	n.subMu.Unlock()
	h.Adopted = n.adoptNotices()
	return h
}

// clientCounter is what the heartbeat asks the broker (*broker.Server).
type clientCounter interface {
	ClientCounts() (connections, sessions int64)
}

func (n *Node) hbInterval() time.Duration {
	if n.cfg.HeartbeatInterval > 0 {
		return n.cfg.HeartbeatInterval
	}
	return defaultHeartbeat
}

// publishBeat publishes this node's heartbeat. Once the leaving one is
// published none follows: a regular heartbeat of the loop's tick, sent
// after it, would make the other nodes report this node down after three
// intervals instead of stopped at once. Publications are serialized, so
// they leave in this order on the one connection.
func (n *Node) publishBeat(leaving bool) error {
	n.beatMu.Lock()
	defer n.beatMu.Unlock()
	if n.saidGoodbye {
		return nil
	}
	data, err := json.Marshal(n.localBeat(leaving))
	if err != nil {
		return err
	}
	if err := n.nc.Publish(hbSubject, data); err != nil {
		return err
	}
	n.saidGoodbye = leaving
	return nil
}

// heartbeatLoop publishes this node's heartbeat every interval and
// records the others'. It ends with the Node's context.
func (n *Node) heartbeatLoop() {
	in := make(chan *nats.Msg, 256)
	sub, err := n.nc.ChanSubscribe(hbSubject, in)
	if err != nil {
		n.log.Error("cluster: heartbeats unavailable; the status shows this node only", "err", err)
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	tick := time.NewTicker(n.hbInterval())
	defer tick.Stop()
	_ = n.publishBeat(false)
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
			if err := n.publishBeat(false); err != nil && n.ctx.Err() == nil {
				n.log.Debug("cluster: heartbeat not published", "err", err)
			}
		case m := <-in:
			h, err := decodeHeartbeat(m.Data)
			if err != nil {
				n.stats.decodeErrors.Add(1)
				continue
			}
			if h.Node == n.cfg.Node {
				if h.Origin != n.origin {
					n.sameName(h)
				}
				continue
			}
			n.heardNotices(h)
			ok, offset, changed := n.beats.record(h, n.now())
			if !ok {
				n.log.Warn("cluster: heartbeats of more than the nodes a status lists; the others are ignored", "limit", maxHBNodes)
			}
			switch {
			case changed && offset.Abs() > maxClockOffset:
				n.log.Warn("cluster: another node's clock differs from this node's by more than "+maxClockOffset.String()+
					"; the later of two changes of a retained topic, ban or shared file is chosen by the nodes' clocks, "+
					"and bans expire by them: synchronise the clocks (NTP)", "node", clip(h.Node), "offset", offset.Round(time.Millisecond))
			case changed:
				n.log.Info("cluster: another node's clock is within "+maxClockOffset.String()+" of this node's again",
					"node", clip(h.Node), "offset", offset.Round(time.Millisecond))
			}
		}
	}
}

// sameName logs, at most once a minute, another node that uses this
// node's name: two nodes with one name confuse JetStream and the status.
func (n *Node) sameName(h heartbeat) {
	now := time.Now()
	n.opsMu.Lock()
	due := now.Sub(n.dupWarned) >= time.Minute
	if due {
		n.dupWarned = now
	}
	n.opsMu.Unlock()
	if due {
		n.log.Error("cluster: another node uses this node's name; give every node its own cluster.node", "node", h.Node)
	}
}

// sayGoodbye tells the other nodes that this node is stopping, so that
// they report it stopped at once rather than down after three intervals.
func (n *Node) sayGoodbye() {
	if n.nc == nil || n.b == nil || n.nc.IsClosed() {
		return
	}
	if err := n.publishBeat(true); err == nil {
		_ = n.nc.FlushTimeout(time.Second)
	}
}

// nodeList merges this node, the other nodes' heartbeats, the routes
// and the JetStream peers into one list, sorted by name, at now.
func (n *Node) nodeList(now time.Time, routes []RouteInfo, jsPeers []string) []NodeInfo {
	self := n.localBeat(false)
	list := []NodeInfo{{Node: self.Node, State: StateUp, Self: true, Version: self.Version, Connections: self.Connections,
		Sessions: self.Sessions, Filters: self.Filters, Forwarded: self.Forwarded, Received: self.Received,
		Started: self.Started, LastSeen: now}}
	for name, pb := range n.beats.snapshot() {
		h := pb.hb
		ni := NodeInfo{Node: name, Version: h.Version, Connections: h.Connections, Sessions: h.Sessions, Filters: h.Filters,
			Forwarded: h.Forwarded, Received: h.Received, Started: h.Started, LastSeen: pb.seen}
		if o, ok := pb.clockOffset(); ok {
			ms := o.Milliseconds()
			ni.ClockOffsetMS = &ms
		}
		switch {
		case h.Leaving:
			ni.State = StateStopped
		case now.Sub(pb.seen) <= hbMissedLimit*time.Duration(h.IntervalMS)*time.Millisecond:
			ni.State = StateUp
		default:
			ni.State = StateDown
		}
		if ni.State != StateUp {
			// The counts are the last known, not the present ones.
			ni.Connections, ni.Sessions, ni.Filters = 0, 0, 0
		}
		list = append(list, ni)
	}
	for _, p := range jsPeers {
		if !slices.ContainsFunc(list, func(ni NodeInfo) bool { return ni.Node == p }) {
			list = append(list, NodeInfo{Node: p, State: StateDown})
		}
	}
	for i := range list {
		for _, r := range routes {
			if r.Node == list[i].Node {
				list[i].Route, list[i].RTT = r.Addr, r.RTT
			}
		}
	}
	slices.SortFunc(list, func(a, b NodeInfo) int { return strings.Compare(a.Node, b.Node) })
	return list
}

// startOps starts the heartbeat, the replication poll, the sweep of
// old claims, the adoption of the sessions of nodes gone and the watch
// for this node's own stored removal (Attach).
func (n *Node) startOps() {
	n.wg.Add(5)
	go func() { defer n.wg.Done(); n.watchRemoval() }()
	go func() { defer n.wg.Done(); n.adoptLoop() }()
	go func() { defer n.wg.Done(); n.heartbeatLoop() }()
	go func() { defer n.wg.Done(); n.replicationLoop() }()
	go func() { defer n.wg.Done(); n.sweepClaims() }()
}
