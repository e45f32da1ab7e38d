package cluster

import (
	"encoding/json"
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
	// countSubject is subscribed once by every node (startVersions): on
	// a node's server its interest is the number of nodes with such a
	// subscription there, this one and one per node routed to (a route
	// carries a subject's interest once, whatever the subscriptions
	// behind it). A node key starts with '_': no node's subject is it.
	countSubject = versionPrefix + "count"
)

// interestState is the Node's side of the look-ups.
type interestState struct {
	// This node's version: guarded by Node.subMu.
	ver     uint64
	verSub  *nats.Subscription
	verSubj string
	query   *nats.Subscription
	// counted is set once this node's countSubject subscription is
	// there (its own share of the count).
	counted atomic.Bool

	// The other nodes' versions, as last seen by refreshVersions, which
	// refreshMu serializes; each snapshot has an epoch of its own.
	refreshMu sync.Mutex
	epochs    atomic.Uint64
	snap      atomic.Pointer[versionSnap]
	wake      chan struct{}
	cache     interestCache
	// every is the interval of the version loop's refreshes without a
	// wake; 0: 1 s. Tests set it longer before Attach, so that only
	// look-ups wake the loop.
	every time.Duration
}

// versionSnap holds the other nodes' versions for one list of peers.
type versionSnap struct {
	epoch    uint64
	peers    *[]string // the durableState.peers it was made for
	versions []string  // per peer, its version subject; "": unknown
	// gversions are the peers' group versions (groupVersionUp), "" when
	// unknown; queries their version query subjects. A peer's groups
	// were put into the directory before the snapshot was stored.
	gversions []string
	queries   []string
	// old: a peer of an earlier build, without group versions (its
	// groups are known from its announcements only); anyOld: one is.
	old    []bool
	anyOld bool
	// counts: the peer said it subscribed countSubject before its group
	// version. counted is the number of nodes the snapshot accounts for
	// on countSubject: the peers with a group version that said so, this
	// node, and others, the removed nodes still routed to (not peers:
	// durable.go's forgetRemoved).
	counts  []bool
	counted int
	others  int
}

// groupsValid tells whether the groups of the directory are, for the
// other nodes, what their NATS subscriptions on this node's server say:
// every peer's group version is still there, or the peer has no version
// query subscribed (it is not reachable, or has not started: it has no
// queue subscription here either); and no node that is not a peer is
// there: countSubject counts no more nodes than the snapshot accounts
// for. A node subscribes countSubject before its group version and its
// queue subscriptions, on one connection: a node whose groups NATS can
// choose is counted from the moment it could be chosen, and a node this
// one never heard of (the once-a-second check of the routes has not
// seen it yet) makes the directory incomplete. The count is read first:
// a peer counted that leaves afterwards has its group version gone when
// it is looked at. The caller checks snap.peers.
func (snap *versionSnap) groupsValid(acc *server.Account) bool {
	if acc.Interest(countSubject) > snap.counted {
		return false
	}
	for i, gv := range snap.gversions {
		switch {
		case snap.old[i]:
		case gv != "":
			if acc.Interest(gv) == 0 {
				return false
			}
		case acc.Interest(snap.queries[i]) > 0:
			return false
		}
	}
	return true
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

// versionSubject names version k of this run of the node: kind "" for
// its interest, "g" for its shared subscriptions' groups.
func (n *Node) versionSubject(kind string, k uint64) string {
	boot := n.origin[strings.LastIndexByte(n.origin, '/')+1:]
	return versionPrefix + keyOf(n.cfg.Node) + "." + boot + "." + kind + strconv.FormatUint(k, 10)
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
	subj := n.versionSubject("", ic.ver)
	s, err := n.interestOnly(n.nc, subj)
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
	// The count's subscription, then the first group version, before
	// the query: a node that answers it has both (groupsValid). On the
	// groups' connection, so that both come before any queue
	// subscription of a group.
	var counter *nats.Subscription
	if n.gc != nil {
		var err error
		if counter, err = n.interestOnly(n.gc, countSubject); err != nil {
			n.log.Warn("cluster: node count not subscribed; until the other nodes' check of their routes knows this node, its groups may get a QoS 1/2 message at most once", "err", err)
		}
	}
	n.ic.counted.Store(counter != nil)
	n.share.mu.Lock()
	n.groupVersionUp()
	n.share.mu.Unlock()
	if n.gc != nil {
		_ = n.gc.FlushTimeout(5 * time.Second)
	}
	q, err := n.nc.Subscribe(versionPrefix+keyOf(n.cfg.Node)+"."+versionQuery, func(m *nats.Msg) {
		n.subMu.Lock()
		subj := n.ic.verSubj
		n.subMu.Unlock()
		if subj == "" {
			return
		}
		if string(m.Data) != groupsQuery {
			// A node of an earlier build: the version alone.
			_ = m.Respond([]byte(subj))
			return
		}
		// Sent after the versions' subscriptions (the group version on
		// the groups' connection, flushed first): the asking node's
		// server has them first.
		_ = m.Respond(n.versionReply(subj))
	})
	if err != nil {
		n.log.Warn("cluster: interest version query not subscribed; the other nodes look this node's interest up without cache", "err", err)
		if counter != nil {
			// Counted but never asked, this node would keep the
			// others' directory incomplete.
			_ = counter.Unsubscribe()
			n.ic.counted.Store(false)
		}
	}
	if q != nil {
		n.subMu.Lock()
		n.ic.query = q
		n.subMu.Unlock()
		// The query is on this node's server before any queue
		// subscription of a group (groupsValid counts on it).
		_ = n.nc.FlushTimeout(5 * time.Second)
	}
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.versionLoop() }()
}

// versionLoop refreshes the other nodes' versions every second, and at
// once when a look-up found one gone (at most every
// versionRefreshEvery). A goroutine of its own: asking a node that does
// not answer must not hold up the peer monitor.
func (n *Node) versionLoop() {
	every := n.ic.every
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
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
	prev := n.ic.snap.Load()
	self := 0
	if n.ic.counted.Load() {
		self = 1
	}
	// More nodes counted than the last snapshot accounts for: a node
	// the once-a-second check of the routes may not have seen yet. Its
	// routes name it.
	count := acc.Interest(countSubject)
	if prev == nil || count > prev.counted {
		n.refreshPeers(false)
	}
	peersPtr := n.dur.peers.Load()
	peers := *peersPtr
	type known struct {
		v, gv      string
		old, count bool
	}
	knownOf := map[string]known{}
	if prev != nil {
		for i, p := range *prev.peers {
			knownOf[p] = known{prev.versions[i], prev.gversions[i], prev.old[i], prev.counts[i]}
		}
	}
	changed := prev == nil || prev.peers != peersPtr
	snap := &versionSnap{peers: peersPtr, versions: make([]string, len(peers)), gversions: make([]string, len(peers)),
		queries: make([]string, len(peers)), old: make([]bool, len(peers)), counts: make([]bool, len(peers)),
		counted: self}
	for i, p := range peers {
		node := strings.TrimSuffix(strings.TrimPrefix(p, markerPrefix), ".")
		snap.queries[i] = versionPrefix + node + "." + versionQuery
		k := knownOf[p]
		if k.v != "" && acc.Interest(k.v) > 0 && (k.old || k.gv != "" && acc.Interest(k.gv) > 0) {
			snap.versions[i], snap.gversions[i], snap.old[i], snap.counts[i] = k.v, k.gv, k.old, k.count
			snap.anyOld = snap.anyOld || k.old
			if k.count {
				snap.counted++
			}
			continue
		}
		changed = true
		r, ok := n.askVersion(node)
		if !ok || n.ctx.Err() != nil {
			continue // unknown: looked up afresh until the next refresh
		}
		if acc.Interest(r.V) > 0 {
			snap.versions[i] = r.V
		}
		switch {
		case r.old:
			snap.old[i], snap.anyOld = true, true
		case acc.Interest(r.GV) > 0:
			// Its groups are in the directory before the snapshot
			// that names this version is stored.
			n.addGroups(r.Groups)
			snap.gversions[i] = r.GV
			if r.Count {
				snap.counts[i] = true
				snap.counted++
			}
		}
	}
	if count > snap.counted {
		// Removed nodes still routed to are not peers (durable.go's
		// forgetRemoved), and count too.
		snap.others = n.removedRouted(acc)
		snap.counted += snap.others
	}
	if !changed && prev.counted == snap.counted {
		return
	}
	snap.epoch = n.ic.epochs.Add(1)
	n.ic.snap.Store(snap)
	n.resolveRequests()
}

// removedRouted counts the removed nodes this node's server has routes
// to and whose version query is there (a node subscribes countSubject
// before its query).
func (n *Node) removedRouted(acc *server.Account) int {
	c := 0
	for name := range n.routedNodes() {
		if name != "" && name != n.cfg.Node && n.isRemoved(name) && acc.Interest(versionPrefix+keyOf(name)+"."+versionQuery) > 0 {
			c++
		}
	}
	return c
}

// groupsQuery asks a node's version query for its groups too.
const groupsQuery = "g1"

// maxVersionReply bounds a version reply with groups; a node with more
// groups answers without them (Partial), which the asking node then
// knows from the node's announcements only.
const maxVersionReply = 4 << 20

// versionReply is a node's answer to groupsQuery: its interest version,
// its group version and its groups.
type versionReply struct {
	V       string      `json:"v"`
	GV      string      `json:"gv,omitempty"`
	Groups  [][2]string `json:"g,omitempty"`
	Partial bool        `json:"p,omitempty"`
	// Count: the node subscribed countSubject (before GV); a node of
	// an earlier build does not, and is not counted.
	Count bool `json:"c,omitempty"`
	old   bool // an earlier build: the version alone
}

// versionReply encodes this node's answer to groupsQuery, with its
// interest version subj.
func (n *Node) versionReply(subj string) []byte {
	r := versionReply{V: subj, Count: n.ic.counted.Load()}
	sh := &n.share
	sh.mu.Lock()
	r.GV = sh.gverSubj
	size := 0
	for k, g := range sh.groups {
		if !g.leaving.IsZero() {
			continue
		}
		size += len(k.group) + len(k.filter) + 8
		if size > maxVersionReply {
			r.Groups, r.Partial = nil, true
			break
		}
		r.Groups = append(r.Groups, [2]string{k.group, k.filter})
	}
	sh.mu.Unlock()
	data, _ := json.Marshal(r)
	return data
}

// askVersion asks node for its versions and groups.
func (n *Node) askVersion(node string) (versionReply, bool) {
	reply, err := n.nc.Request(versionPrefix+node+"."+versionQuery, []byte(groupsQuery), versionAskTimeout)
	if err != nil {
		return versionReply{}, false
	}
	valid := func(v string) bool {
		return strings.HasPrefix(v, versionPrefix+node+".") && len(v) <= 256 && !strings.ContainsAny(v, "*> \t")
	}
	if len(reply.Data) > 0 && reply.Data[0] != '{' {
		v := string(reply.Data)
		return versionReply{V: v, old: true}, valid(v)
	}
	var r versionReply
	if len(reply.Data) > maxVersionReply+(64<<10) || json.Unmarshal(reply.Data, &r) != nil || !valid(r.V) ||
		r.GV != "" && !valid(r.GV) {
		n.stats.decodeErrors.Add(1)
		return versionReply{}, false
	}
	if r.Partial || r.GV == "" {
		r.old = true // its groups come from its announcements
	}
	return r, true
}

// interestAnswer is what the look-up of a topic found.
type interestAnswer struct {
	yes    bool   // another node subscribes to the topic
	shared string // the topic's subject for the shared subscriptions' groups
	// groups are the queues of the directory's groups whose filter
	// matches the topic, on any node (this one's too), when groupsKnown.
	groups      []string
	groupsKnown bool
	// legacy: a node of an earlier build names no groups with its
	// versions; the directory holds what it announced.
	legacy bool
}

// groupNeed tells a look-up whether the answer's groups matter.
type groupNeed int

const (
	// groupsAlways: a QoS 1/2 message's groups, which it waits for
	// (forwardShared, resolveRequests).
	groupsAlways groupNeed = iota
	// groupsIfNo: a QoS 0 message's, which matter only when no other
	// node subscribes to its topic (wantsQoS0): handed to NATS anyway,
	// it reaches whatever group NATS chooses.
	groupsIfNo
	// groupsNever: the durable stream's, which only other nodes' plain
	// subscriptions need (needsStream).
	groupsNever
)

// interest looks up whether another node has a subscription matching
// topic, and the groups of shared subscriptions that could want it: from
// the cache when the other nodes' versions allow it, else afresh.
func (n *Node) interest(acc *server.Account, topic string) interestAnswer {
	return n.lookup(acc, topic, groupsAlways)
}

// lookup is interest for a caller whose need of the groups is need;
// without it the answer may leave them unknown.
//
// The answer names the groups (groups) when the directory is known to
// hold every group whose queue subscriptions this node's server has:
// each node changes its group version around joining a group, and names
// its groups with its versions (refreshVersions), as for the markers,
// and no node this one does not know is counted (groupsValid). The
// groups are then looked up in the cache too, or, while a node is away
// (its marker version unknown), afresh in the directory. A caller that
// does not need them is spared that check.
func (n *Node) lookup(acc *server.Account, topic string, need groupNeed) interestAnswer {
	peersPtr := n.dur.peers.Load()
	snap := n.ic.snap.Load()
	own := n.share.ownGen.Load()
	cacheable := len(topic) <= interestCacheTopic
	current := snap != nil && snap.peers == peersPtr && len(*peersPtr) >= int(n.dur.expected.Load()) &&
		!(len(*peersPtr) == 0 && n.srv.NumRoutes() > 0)
	valid := current
	if valid {
		for _, v := range snap.versions {
			if v == "" || acc.Interest(v) == 0 {
				valid = false
				break
			}
		}
	}
	if valid && cacheable {
		if a, ok := n.ic.cache.get(topic, snap.epoch, own); ok {
			// An answer is cached only with its groups valid; its yes
			// holds while the versions do.
			if need == groupsNever || need == groupsIfNo && a.yes {
				a.groups, a.groupsKnown = nil, false
				return a
			}
			if !snap.anyOld && snap.groupsValid(acc) {
				return a
			}
		}
	}
	if !valid {
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
	a.legacy = snap != nil && snap.anyOld
	groupsValid := false
	if need == groupsAlways || need == groupsIfNo && !a.yes || valid && cacheable {
		// Also when not needed, for the cache. Checked before the
		// directory is read: a group version seen present had its
		// groups put there first.
		if groupsValid = current && !snap.anyOld && snap.groupsValid(acc); groupsValid {
			a.groups, a.groupsKnown = n.matchingGroups(topic), true
		} else if valid {
			n.wakeVersions()
		}
	}
	if valid && groupsValid && cacheable {
		// Computed after the versions were seen: valid while they are.
		n.ic.cache.put(topic, snap.epoch, own, a)
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
	a := n.lookup(acc, topic, groupsIfNo)
	if a.yes {
		return true
	}
	if a.groupsKnown {
		return len(a.groups) > 0
	}
	// A group's queue subscriptions are on moat.m (which carries QoS 0
	// messages to it) and, subscribed after it, moat.q: one on moat.q
	// means the other is there.
	return acc.Interest(a.shared) > 0
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
	epoch, own uint64
	interestAnswer
}

func (c *interestCache) shard(topic string) *interestShard {
	return &c.shards[maphash.String(c.seed, topic)%uint64(len(c.shards))]
}

// get returns the answer cached for topic under the epoch of the other
// nodes' versions and own, the generation of this node's groups.
func (c *interestCache) get(topic string, epoch, own uint64) (interestAnswer, bool) {
	s := c.shard(topic)
	s.mu.RLock()
	e, ok := s.m[topic]
	s.mu.RUnlock()
	return e.interestAnswer, ok && e.epoch == epoch && e.own == own
}

func (c *interestCache) put(topic string, epoch, own uint64, a interestAnswer) {
	s := c.shard(topic)
	s.mu.Lock()
	if s.m == nil || len(s.m) >= interestCacheSize/len(c.shards) {
		s.m = make(map[string]interestEntry)
	}
	s.m[topic] = interestEntry{epoch: epoch, own: own, interestAnswer: a}
	s.mu.Unlock()
}
