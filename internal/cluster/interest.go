package cluster

import (
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Other nodes' interest, looked up per message (docs/cluster.md, "Which
// messages cross"). A QoS 0 message is handed to NATS only when another
// node has a subscription that matches it (its interest markers,
// durable.go) or a shared subscription's group could want it; a QoS 1/2
// message goes into the stream on the same answer (needsStream). The
// answer is cached per topic and stays valid as long as no other node's
// markers changed, which this node checks without looking at the topic:
//
//   - Each node holds one interest version subscription,
//     moat.n.<node>.<boot>.<k>. Before it adds a marker it removes its
//     version k, and after the change it subscribes version k+1, all on
//     one connection: the routes carry the three in that order, so on
//     every other node's server a marker that was added is never there
//     while version k still is. A version, once removed, never returns
//     (k only grows, and a new run has a new boot ID).
//   - A cached answer was computed after the versions it was computed
//     under were seen present; it is used while they still are: then no
//     node added a marker since, and the answer is what a fresh look-up
//     would say (a marker removed since makes it a stale "yes", which
//     costs a message NATS drops, never a lost one).
//   - When a version is gone (or a node is new), the look-up is made
//     afresh, uncached, and the version loop asks that node for its
//     current version (moat.n.<node>.q); the cache starts a new epoch.
//
// So a QoS 0 message goes to another node exactly when a fresh look-up of
// the markers at that moment would send it, as for QoS 1/2: a
// subscription on another node is seen once its marker crossed the routes
// (the SUBACK there does not wait for that).

const (
	versionPrefix = "moat.n."
	versionQuery  = "q" // the last token of a node's version query subject
	// interestCacheSize bounds the topics whose answer is cached;
	// interestCacheTopic the length of a topic cached.
	interestCacheSize  = 1 << 13
	interestCacheTopic = 256
	// versionAskTimeout bounds the wait for another node's version.
	versionAskTimeout = time.Second
	// versionRefreshEvery is the least interval between two refreshes of
	// the other nodes' versions woken by look-ups.
	versionRefreshEvery = 50 * time.Millisecond
)

// interestState is the Node's side of the look-ups.
type interestState struct {
	// This node's version: guarded by Node.subMu.
	ver     uint64
	verSub  *nats.Subscription
	verSubj string
	query   *nats.Subscription

	// The other nodes' versions, as last seen by refreshVersions, which
	// refreshMu serializes; each snapshot has an epoch of its own.
	refreshMu sync.Mutex
	epochs    atomic.Uint64
	snap      atomic.Pointer[versionSnap]
	wake      chan struct{}
	cache     interestCache
}

// versionSnap holds the other nodes' versions for one list of peers.
type versionSnap struct {
	epoch    uint64
	peers    *[]string // the durableState.peers it was made for
	versions []string  // per peer, its version subject; "": unknown
}

// versionsDown removes this node's version before its markers change.
// The caller holds subMu.
func (n *Node) versionsDown() {
	ic := &n.ic
	if ic.verSub != nil {
		_ = ic.verSub.Unsubscribe()
		ic.verSub, ic.verSubj = nil, ""
	}
}

// versionUp subscribes this node's next version, after its markers
// changed (or at start). The caller holds subMu.
func (n *Node) versionUp() {
	if n.srv == nil {
		return
	}
	ic := &n.ic
	n.versionsDown()
	ic.ver++
	boot := n.origin[strings.LastIndexByte(n.origin, '/')+1:]
	subj := versionPrefix + keyOf(n.cfg.Node) + "." + boot + "." + strconv.FormatUint(ic.ver, 10)
	s, err := n.nc.SubscribeSync(subj)
	if err != nil {
		// The other nodes then look this node's interest up afresh for
		// every message: correct, only slower.
		n.logRated(&n.fwdLog, "cluster: interest version not subscribed", "subject", subj, err)
		return
	}
	ic.verSub, ic.verSubj = s, subj
}

// startVersions subscribes this node's first version and answers the
// other nodes' questions for the current one.
func (n *Node) startVersions() {
	if n.srv == nil {
		return
	}
	n.subMu.Lock()
	n.versionUp()
	n.subMu.Unlock()
	q, err := n.nc.Subscribe(versionPrefix+keyOf(n.cfg.Node)+"."+versionQuery, func(m *nats.Msg) {
		n.subMu.Lock()
		subj := n.ic.verSubj
		n.subMu.Unlock()
		if subj != "" {
			// Sent after the version's subscription on the same
			// connection: the asking node's server has it first.
			_ = m.Respond([]byte(subj))
		}
	})
	if err != nil {
		n.log.Warn("cluster: interest version query not subscribed; the other nodes look this node's interest up without cache", "err", err)
	}
	if q != nil {
		n.subMu.Lock()
		n.ic.query = q
		n.subMu.Unlock()
	}
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.versionLoop() }()
}

// versionLoop refreshes the other nodes' versions every second, and at
// once when a look-up found one gone (at most every
// versionRefreshEvery). A goroutine of its own: asking a node that does
// not answer must not hold up the peer monitor.
func (n *Node) versionLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		n.refreshVersions()
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.ic.wake:
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(versionRefreshEvery):
		}
	}
}

// wakeVersions asks the version loop to refresh the other nodes' versions.
func (n *Node) wakeVersions() {
	select {
	case n.ic.wake <- struct{}{}:
	default:
	}
}

// refreshVersions brings the other nodes' versions up to date for the
// current list of peers: a version still present is kept, the others are
// asked for. A change starts a new epoch of the cache.
func (n *Node) refreshVersions() {
	if n.srv == nil {
		return
	}
	n.ic.refreshMu.Lock()
	defer n.ic.refreshMu.Unlock()
	acc := n.srv.GlobalAccount()
	peersPtr := n.dur.peers.Load()
	peers := *peersPtr
	old := n.ic.snap.Load()
	known := map[string]string{}
	if old != nil {
		for i, p := range *old.peers {
			known[p] = old.versions[i]
		}
	}
	changed := old == nil || old.peers != peersPtr
	versions := make([]string, len(peers))
	for i, p := range peers {
		if v := known[p]; v != "" && acc.Interest(v) > 0 {
			versions[i] = v
			continue
		}
		changed = true
		node := strings.TrimSuffix(strings.TrimPrefix(p, markerPrefix), ".")
		reply, err := n.nc.Request(versionPrefix+node+"."+versionQuery, nil, versionAskTimeout)
		if err != nil || n.ctx.Err() != nil {
			continue // unknown: looked up afresh until the next refresh
		}
		v := string(reply.Data)
		if strings.HasPrefix(v, versionPrefix+node+".") && !strings.ContainsAny(v, "*> ") && acc.Interest(v) > 0 {
			versions[i] = v
		}
	}
	if !changed {
		return
	}
	n.ic.snap.Store(&versionSnap{epoch: n.ic.epochs.Add(1), peers: peersPtr, versions: versions})
}

// interestAnswer is what the look-up of a topic found.
type interestAnswer struct {
	yes    bool   // another node subscribes to the topic
	shared string // the topic's subject for the shared subscriptions' groups
}

// interest looks up whether another node has a subscription matching
// topic: from the cache when the other nodes' versions allow it, else
// afresh.
func (n *Node) interest(acc *server.Account, topic string) interestAnswer {
	peersPtr := n.dur.peers.Load()
	snap := n.ic.snap.Load()
	cacheable := len(topic) <= interestCacheTopic
	valid := cacheable && snap != nil && snap.peers == peersPtr
	if valid {
		for _, v := range snap.versions {
			if v == "" || acc.Interest(v) == 0 {
				valid = false
				break
			}
		}
	}
	if valid {
		if a, ok := n.ic.cache.get(topic, snap.epoch); ok {
			return a
		}
	} else if cacheable {
		n.wakeVersions()
	}
	toks := topicTokens(topic)
	a := interestAnswer{shared: sharedPrefix + toks}
	for _, p := range *peersPtr {
		if acc.Interest(p+toks) > 0 {
			a.yes = true
			break
		}
	}
	if valid {
		// Computed after the versions were seen: valid while they are.
		n.ic.cache.put(topic, snap.epoch, a)
	}
	return a
}

// wantsQoS0 tells whether a QoS 0 message on topic must be handed to NATS:
// another node subscribes to it, or a shared subscription's group (on
// any node) could want it. With an external NATS, whose interest is not
// seen, always.
func (n *Node) wantsQoS0(topic string) bool {
	if n.srv == nil {
		return true
	}
	if peers := len(*n.dur.peers.Load()); peers < int(n.dur.expected.Load()) || (peers == 0 && n.srv.NumRoutes() > 0) {
		return true // a node not known yet: its markers are not looked up
	}
	acc := n.srv.GlobalAccount()
	a := n.interest(acc, topic)
	// A group's queue subscriptions are on moat.m (which carries QoS 0
	// messages to it) and, subscribed after it, moat.q: one on moat.q
	// means the other is there. Looked up afresh: the groups have no
	// versions.
	return a.yes || acc.Interest(a.shared) > 0
}

// interestCache caches the answer of remoteInterest per topic, for one
// epoch; shards keep the publishers from contending on one lock. A full
// shard is emptied.
type interestCache struct {
	seed   maphash.Seed // set by Start
	shards [64]interestShard
}

type interestShard struct {
	mu sync.RWMutex
	m  map[string]interestEntry
}

type interestEntry struct {
	epoch uint64
	interestAnswer
}

func (c *interestCache) shard(topic string) *interestShard {
	return &c.shards[maphash.String(c.seed, topic)%uint64(len(c.shards))]
}

func (c *interestCache) get(topic string, epoch uint64) (interestAnswer, bool) {
	s := c.shard(topic)
	s.mu.RLock()
	e, ok := s.m[topic]
	s.mu.RUnlock()
	return e.interestAnswer, ok && e.epoch == epoch
}

func (c *interestCache) put(topic string, epoch uint64, a interestAnswer) {
	s := c.shard(topic)
	s.mu.Lock()
	if s.m == nil || len(s.m) >= interestCacheSize/len(c.shards) {
		s.m = make(map[string]interestEntry)
	}
	s.m[topic] = interestEntry{epoch: epoch, interestAnswer: a}
	s.mu.Unlock()
}
