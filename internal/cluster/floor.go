package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The position of a node gone in the durable stream (docs/cluster.md,
// "Sessions"): its consumer's acknowledgement floor, up to which it had
// put the messages of other nodes into its sessions. A claim of one of
// its sessions and an adoption replay from there.
//
// The consumer's leader answers for it. When the node gone led its own
// consumer (it is its main user, so often), nobody answers until
// JetStream elects another leader, 4 to 9 s after the last heartbeat of
// the old one, and more on a busy machine: claims were refused (CONNACK
// 0x88) for 10 to 19 s meanwhile. Every replica of the consumer applies
// the acknowledgements its Raft group commits, so the embedded server's
// own copy of the consumer, when it holds one (the consumer has
// min(nodes, 3) replicas), knows a floor too: the one committed as far
// as this replica has applied, at or behind the floor a new leader
// would report, never ahead (an acknowledgement is applied only once
// committed, and the floor only rises). Replaying from it replays at
// worst the messages acknowledged in the last instant before the node
// died, which the old home had routed: those its sessions still hold
// are passed over (the replay skips the stream IDs a session holds),
// the others come again, at least once, as those routed and not yet
// acknowledged always could.

// floorAsk is how long the leader of a gone node's consumer is asked
// for its floor before this node's copy of the consumer answers
// instead: a leader alive answers in milliseconds.
const floorAsk = 1500 * time.Millisecond

// goneFloor returns the acknowledgement floor of the consumer of the
// node named name, which is gone (no route to it): it asks the
// consumer's leader, and, with the embedded server, uses this node's
// copy of the consumer (replicaFloor) if the leader does not answer
// within floorAsk, or another node's copy (peerFloor) when this node's
// is not usable (more nodes than the consumer has replicas, a copy
// catching up). Without any (an external NATS) it asks the leader again: once within ctx, or (retry) again and again, each
// request bounded, until ctx ends (retryRequest). The error is
// jetstream.ErrConsumerNotFound when the consumer's leader (or the meta
// leader) says the node has none.
func (n *Node) goneFloor(ctx context.Context, name string, retry bool) (uint64, error) {
	var floor uint64
	ask := func(ctx context.Context) error {
		c, err := n.msgStream().Consumer(ctx, "node"+keyOf(name))
		if err == nil {
			floor = c.CachedInfo().AckFloor.Stream
		}
		return err
	}
	if n.srv != nil {
		if f, why, leader := n.replicaFloorLed(name); why == "" && leader == name {
			// The consumer's leader, as this copy last knew it, is the
			// node gone: asking it would wait floorAsk for nothing (or
			// for a new leader, elected seconds later).
			n.dstats.replicaFloors.Add(1)
			n.dstats.floorsUnasked.Add(1)
			n.log.Info("cluster: the position of a node gone read from this node's copy of its consumer, which the node gone led",
				"node", name, "ack_floor", f)
			return f, nil
		}
		actx, cancel := context.WithTimeout(ctx, floorAsk)
		err := ask(actx)
		cancel()
		if err == nil || errors.Is(err, jetstream.ErrConsumerNotFound) {
			// A consumer that is gone is told by the leader: a copy
			// lingering here is not used to replay what the node
			// never had.
			return floor, err
		}
		f, why := n.replicaFloor(name)
		if why == "" {
			n.dstats.replicaFloors.Add(1)
			n.log.Info("cluster: the position of a node gone read from this node's copy of its consumer",
				"node", name, "ack_floor", f, "leader_err", err)
			return f, nil
		}
		if f, ok := n.peerFloor(ctx, name); ok {
			n.dstats.replicaFloors.Add(1)
			n.log.Info("cluster: the position of a node gone read from another node's copy of its consumer",
				"node", name, "ack_floor", f, "leader_err", err, "own_copy", why)
			return f, nil
		}
		n.log.Debug("cluster: no copy of a gone node's consumer usable here or on another node; asking its leader again",
			"node", name, "why", why, "leader_err", err)
		if ctx.Err() != nil {
			return 0, err
		}
	}
	if retry {
		err := n.retryRequest(ctx, ask)
		return floor, err
	}
	return floor, ask(ctx)
}

// Another node's copy. The consumer has min(nodes, 3) replicas: in a
// cluster of more than three nodes, the node asking may hold none while
// another survivor does. Every node of the embedded server answers
// floorQuery, over the routes, with the floor of its own copy of the
// consumer named in the request when replicaFloor would use it, and
// stays silent otherwise; the first answer is taken (any copy's floor is
// at or behind the one a new leader would report: see above).
const (
	floorQuery = "moat.floor.q"
	// peerFloorWait bounds the wait for an answer: a node with a copy
	// answers in milliseconds; without one anywhere, the leader is
	// asked again after it.
	peerFloorWait = time.Second
)

// floorAnswer is a node's answer to floorQuery.
type floorAnswer struct {
	Floor uint64 `json:"floor"`
}

// answerFloors subscribes floorQuery (embedded server only). The
// request's body is the node name (at most maxHBNameLen bytes).
func (n *Node) answerFloors() {
	if n.srv == nil {
		return
	}
	_, err := n.nc.Subscribe(floorQuery, func(m *nats.Msg) {
		name := string(m.Data)
		if m.Reply == "" || name == "" || len(name) > maxHBNameLen || name == n.cfg.Node {
			return
		}
		f, why := n.replicaFloor(name)
		if why != "" {
			return
		}
		data, _ := json.Marshal(floorAnswer{Floor: f})
		_ = m.Respond(data)
	})
	if err != nil {
		n.log.Warn("cluster: the query of this node's copies of consumers not subscribed; other nodes ask the consumers' leaders only",
			"err", err)
	}
}

// peerFloor asks the other nodes for the floor of their copy of the
// consumer of the node named name; ok is false when none answered.
func (n *Node) peerFloor(ctx context.Context, name string) (uint64, bool) {
	ctx, cancel := context.WithTimeout(ctx, peerFloorWait)
	defer cancel()
	m, err := n.nc.RequestWithContext(ctx, floorQuery, []byte(name))
	if err != nil {
		return 0, false
	}
	var a floorAnswer
	if err := json.Unmarshal(m.Data, &a); err != nil {
		return 0, false
	}
	return a.Floor, true
}

// replicaFloor reads the acknowledgement floor of the consumer of the
// node named name from the embedded server's own copy of it. why says
// why there is none to use ("": there is): no copy here (the consumer's
// replicas are on other servers, or it has none), or one whose Raft
// group is catching up, has entries committed that it has not applied
// yet, or failed to write: such a copy may be far behind, and replaying
// from it would replay much that the sessions had (fail closed: the
// leader is asked instead).
func (n *Node) replicaFloor(name string) (floor uint64, why string) {
	floor, why, _ = n.replicaFloorLed(name)
	return floor, why
}

// replicaFloorLed is replicaFloor with the name of the consumer's leader
// as this copy knows it ("" when unknown or this node).
func (n *Node) replicaFloorLed(name string) (floor uint64, why, leader string) {
	now := time.Now()
	fc := &n.floors
	fc.mu.Lock()
	if e, ok := fc.m[name]; ok && now.Sub(e.at) < floorCacheFor {
		fc.mu.Unlock()
		return e.floor, e.why, e.leader
	}
	fc.mu.Unlock()
	floor, why, leader = n.readReplicaFloor(name)
	fc.mu.Lock()
	if fc.m == nil || len(fc.m) >= maxHBNodes {
		fc.m = make(map[string]floorEntry)
	}
	fc.m[name] = floorEntry{floor: floor, why: why, leader: leader, at: now}
	fc.mu.Unlock()
	return floor, why, leader
}

// floorCacheFor is how long replicaFloor's reading is used again: when a
// node dies, every claim of its sessions here and every other node's
// question (answerFloors) wants it at once, and each reading lists the
// account's streams and consumers. A floor read a moment ago is at or
// behind the present one, as any copy's is (see above).
const floorCacheFor = 250 * time.Millisecond

// floorCache holds replicaFloor's last reading per node name.
type floorCache struct {
	mu sync.Mutex
	m  map[string]floorEntry
}

type floorEntry struct {
	floor  uint64
	why    string
	leader string
	at     time.Time
}

// readReplicaFloor is replicaFloor without its cache.
func (n *Node) readReplicaFloor(name string) (floor uint64, why, leader string) {
	acc := n.srv.GlobalAccount().Name
	cons := "node" + keyOf(name)
	ad, err := n.srv.JszAccount(&server.JSzOptions{Account: acc, Streams: true, Consumer: true, RaftGroups: true})
	if err != nil {
		return 0, err.Error(), ""
	}
	var ci *server.ConsumerInfo
	group := ""
	for i := range ad.Streams {
		sd := &ad.Streams[i]
		if sd.Name != streamMsgs {
			continue
		}
		for _, c := range sd.Consumer {
			if c != nil && c.Name == cons {
				ci = c
			}
		}
		for _, g := range sd.ConsumerRaftGroups {
			if g != nil && g.Name == cons {
				group = g.RaftGroup
			}
		}
	}
	if ci == nil {
		return 0, "no copy of the consumer on this server", ""
	}
	if group == "" {
		// A consumer with one replica, or no Raft group yet: nothing
		// tells how current the copy is.
		return 0, "the copy of the consumer has no Raft group", ""
	}
	rz := n.srv.Raftz(&server.RaftzOptions{AccountFilter: acc, GroupFilter: group})
	if rz == nil {
		return 0, "the Raft group of the copy not found", ""
	}
	g, ok := (*rz)[acc][group]
	switch {
	case !ok:
		return 0, "the Raft group of the copy not found", ""
	case g.CatchingUp:
		return 0, "the copy is catching up", ""
	case g.WALError != nil:
		return 0, "the copy's log failed: " + g.WALError.Error(), ""
	case g.Applied < g.Committed:
		return 0, "the copy has applied " + strconv.FormatUint(g.Applied, 10) + " of " +
			strconv.FormatUint(g.Committed, 10) + " committed entries", ""
	}
	if p, ok := g.Peers[g.Leader]; ok {
		leader = p.Name
	}
	return ci.AckFloor.Stream, "", leader
}
