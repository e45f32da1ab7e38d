package topic

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Subscription is one client's subscription to one filter. Values are
// copied in and out of the Index; the Index never retains the caller's
// pointer.
type Subscription struct {
	ClientID          string // subscriber (session) identifier
	Filter            string // topic filter WITHOUT any $share/group/ prefix
	Group             string // shared subscription group, "" when not shared
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte
	ID                uint32 // subscription identifier, 0 = none
	// Owner is kept and returned with the subscription and never looked
	// at: the subscriber's state, for the caller (the broker keeps the
	// session there, so that routing a message needs no lookup by
	// client ID). nil when not set.
	Owner any
}

// SharedGroup is one shared subscription matched by a topic: all members of
// group Group subscribed to Filter. The same group name with two different
// filters ("$share/g/a/+" and "$share/g/a/#") is two distinct shared
// subscriptions and yields two SharedGroup values (MQTT 5.0 §4.8.2).
type SharedGroup struct {
	Group  string
	Filter string
	// Members lists the group's subscriptions in subscription order. It
	// aliases an immutable snapshot owned by the Index (copy-on-write: a
	// membership change publishes a new slice, it never edits this one).
	// Read it freely, never write to it; its capacity equals its length, so
	// an append by the caller copies instead of scribbling on the snapshot.
	Members []Subscription

	g *group // round-robin state in the Index; nil for a hand-built value
}

// Pick chooses the member that receives one message, rotating through the
// members with a counter kept in the Index so consecutive publishes (from
// any goroutine) go to consecutive members. Starting at the rotation point it
// returns the first member for which online(ClientID) reports true; a nil
// online treats every member as online. When no member is online it returns
// the member at the rotation point, so the broker can queue the message in
// that member's session or drop it as its policy says. ok is false only when
// Members is empty. Safe for concurrent use; online is called without any
// Index lock held.
func (g *SharedGroup) Pick(online func(clientID string) bool) (s Subscription, ok bool) {
	n := uint64(len(g.Members))
	if n == 0 {
		return Subscription{}, false
	}
	var start uint64
	if g.g != nil {
		start = g.g.next.Add(1) - 1
	}
	if online != nil {
		for i := range n {
			m := &g.Members[(start+i)%n]
			if online(m.ClientID) {
				return *m, true
			}
		}
	}
	return g.Members[start%n], true
}

// Member ranks for PickRanked: how suitable a member is to receive one
// message.
const (
	// Unfit members (offline, or not allowed the message) are passed
	// over while any member is fit.
	Unfit = iota
	// Fit members may receive the message.
	Fit
	// Preferred members are chosen over fit ones (the broker prefers
	// members whose backlog is under its mark).
	Preferred
)

// PickRanked chooses the member that receives one message by rank (Unfit,
// Fit or Preferred, as rank says of each): starting at the rotation
// point, the first Preferred member; when none is, the first Fit one;
// when none is fit either, the member at the rotation point, as Pick
// does. The rotation then moves past the members passed over for the one
// chosen, so that the members chosen take turns evenly: with Pick's
// rotation, which moves by one, the member after one passed over would
// take that member's turns as well as its own. rank is called without any
// Index lock held, at most once per member, and not after a Preferred
// member. ok is false only when Members is empty. Safe for concurrent
// use.
func (g *SharedGroup) PickRanked(rank func(*Subscription) int) (s Subscription, ok bool) {
	n := uint64(len(g.Members))
	if n == 0 {
		return Subscription{}, false
	}
	var start uint64
	if g.g != nil {
		start = g.g.next.Add(1) - 1
	}
	best, bestRank, at := start%n, Unfit, uint64(0)
	for i := range n {
		j := (start + i) % n
		if r := rank(&g.Members[j]); r > bestRank {
			best, bestRank, at = j, r, i
			if r == Preferred {
				break
			}
		}
	}
	if bestRank > Unfit && at > 0 && g.g != nil {
		g.g.next.Add(at)
	}
	return g.Members[best], true
}

// group is the Index's record of one shared subscription (Group, Filter)
// on a trie node.
type group struct {
	name    string
	filter  string
	members atomic.Pointer[[]Subscription] // immutable snapshot, never empty once published
	next    atomic.Uint64                  // round-robin counter for Pick
}

// node kinds: how a node hangs from its parent.
const (
	kindExact = iota
	kindPlus
	kindHash
)

// node is one level of the subscription trie. The fields above the blank
// line are read lock-free by Match; the fields below are writer-only and
// guarded by Index.mu.
type node struct {
	kids   levelMap[node]           // children by exact level
	plus   atomic.Pointer[node]     // "+" child
	hash   atomic.Pointer[node]     // "#" child (a leaf)
	subs   subList                  // non-shared subscriptions ending here
	shared atomic.Pointer[[]*group] // shared subscriptions ending here, copy-on-write

	parent *node
	level  string
	kind   uint8
}

func (n *node) empty() bool {
	return n.kids.len() == 0 && n.plus.Load() == nil && n.hash.Load() == nil &&
		n.subs.len() == 0 && n.shared.Load() == nil
}

// subKey identifies one subscription in the Index.
type subKey struct{ client, group, filter string }

// clientSub is the writer-side record of one subscription, guarded by
// Index.mu.
type clientSub struct {
	rec  *Subscription // published immutable record; replaced, never modified
	node *node         // the node the subscription ends on; not pruned while it exists
	slot int           // index in node.subs (non-shared subscriptions)
	ci   int           // index in Index.byClient[rec.ClientID]
}

// Index is the subscription index. Its zero value is not usable; call
// NewIndex. It is safe for concurrent use: Match takes no lock and never
// waits for a writer, so it may run from many goroutines at once;
// Subscribe, Unsubscribe, UnsubscribeAll and Subscriptions are serialized
// by a mutex that Match never takes.
type Index struct {
	root   *node
	count  atomic.Int64
	shared atomic.Int64 // the shared subscriptions' members among count

	mu       sync.Mutex // serializes writers; never held by Match
	subs     map[subKey]*clientSub
	byClient map[string][]*clientSub // a client's subscriptions, in no order
	nodes    int                     // trie nodes excluding root, for tests of bounded memory
}

// NewIndex returns an empty Index.
func NewIndex() *Index {
	return &Index{
		root:     &node{},
		subs:     make(map[subKey]*clientSub),
		byClient: make(map[string][]*clientSub),
	}
}

// Count reports the number of subscriptions, shared members included.
func (x *Index) Count() int { return int(x.count.Load()) }

// SharedCount reports the number of shared subscriptions' members.
func (x *Index) SharedCount() int { return int(x.shared.Load()) }

// Subscribe adds s, or replaces the subscription with the same (ClientID,
// Group, Filter), and reports whether it replaced one (what Retain
// Handling 1 needs [MQTT-3.3.1-10]). s.Filter must be a valid filter
// without the $share/{group}/ prefix (see packet.SplitShared).
func (x *Index) Subscribe(s Subscription) (existed bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	rec := &s // s is our copy; it is immutable once published
	key := subKey{s.ClientID, s.Group, s.Filter}
	if cs, ok := x.subs[key]; ok {
		cs.rec = rec
		if s.Group == "" {
			cs.node.subs.replace(cs)
		} else {
			x.attachShared(cs.node, s)
		}
		return true
	}
	cs := &clientSub{rec: rec, node: x.descend(s.Filter)}
	if s.Group == "" {
		cs.node.subs.add(cs)
	} else {
		x.attachShared(cs.node, s)
	}
	x.subs[key] = cs
	list := x.byClient[s.ClientID]
	cs.ci = len(list)
	x.byClient[s.ClientID] = append(list, cs)
	x.count.Add(1)
	if s.Group != "" {
		x.shared.Add(1)
	}
	return false
}

// descend returns the node for filter, creating missing nodes. x.mu held.
func (x *Index) descend(filter string) *node {
	n := x.root
	for {
		lvl, rest, more := cutLevel(filter)
		var c *node
		switch {
		case lvl == "+":
			if c = n.plus.Load(); c == nil {
				c = &node{parent: n, level: lvl, kind: kindPlus}
				n.plus.Store(c)
				x.nodes++
			}
		case lvl == "#" && !more:
			if c = n.hash.Load(); c == nil {
				c = &node{parent: n, level: lvl, kind: kindHash}
				n.hash.Store(c)
				x.nodes++
			}
		default:
			if c = n.kids.load(lvl); c == nil {
				c = &node{parent: n, level: lvl, kind: kindExact}
				n.kids.store(lvl, c)
				x.nodes++
			}
		}
		n = c
		if !more {
			return n
		}
		filter = rest
	}
}

// attachShared adds or replaces s in its shared group on n. x.mu held.
func (x *Index) attachShared(n *node, s Subscription) {
	var gs []*group
	if p := n.shared.Load(); p != nil {
		gs = *p
	}
	for _, g := range gs {
		if g.name != s.Group {
			continue
		}
		old := *g.members.Load()
		i := slices.IndexFunc(old, func(m Subscription) bool { return m.ClientID == s.ClientID })
		var nm []Subscription
		if i >= 0 {
			nm = slices.Clone(old)
			nm[i] = s
		} else {
			nm = append(slices.Clone(old), s)
		}
		nm = slices.Clip(nm)
		g.members.Store(&nm)
		return
	}
	g := &group{name: s.Group, filter: s.Filter}
	m := []Subscription{s}
	g.members.Store(&m)
	ngs := append(slices.Clone(gs), g)
	n.shared.Store(&ngs)
}

// detachShared removes clientID from group grp on n. x.mu held.
func (x *Index) detachShared(n *node, clientID, grp string) {
	gs := *n.shared.Load()
	gi := slices.IndexFunc(gs, func(g *group) bool { return g.name == grp })
	g := gs[gi]
	old := *g.members.Load()
	if len(old) == 1 {
		if len(gs) == 1 {
			n.shared.Store(nil)
			return
		}
		ngs := slices.Delete(slices.Clone(gs), gi, gi+1)
		n.shared.Store(&ngs)
		return
	}
	i := slices.IndexFunc(old, func(m Subscription) bool { return m.ClientID == clientID })
	nm := slices.Clip(slices.Delete(slices.Clone(old), i, i+1))
	g.members.Store(&nm)
}

// prune removes n and its ancestors while they are empty. x.mu held.
// A concurrent Match that already reached a pruned node sees it empty.
func (x *Index) prune(n *node) {
	for n != x.root && n.empty() {
		p := n.parent
		switch n.kind {
		case kindPlus:
			p.plus.Store(nil)
		case kindHash:
			p.hash.Store(nil)
		default:
			p.kids.delete(n.level)
		}
		x.nodes--
		n = p
	}
}

// Unsubscribe removes clientID's subscription to filter in group ("" for a
// non-shared subscription) and reports whether it existed.
func (x *Index) Unsubscribe(clientID, group, filter string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	cs, ok := x.subs[subKey{clientID, group, filter}]
	if !ok {
		return false
	}
	x.remove(cs)
	list := x.byClient[clientID]
	last := len(list) - 1
	list[cs.ci] = list[last]
	list[cs.ci].ci = cs.ci
	list[last] = nil
	if last == 0 {
		delete(x.byClient, clientID)
	} else {
		x.byClient[clientID] = list[:last]
	}
	return true
}

// remove takes cs out of the trie and the key map; the caller fixes
// byClient. x.mu held.
func (x *Index) remove(cs *clientSub) {
	s := cs.rec
	if s.Group == "" {
		cs.node.subs.remove(cs)
	} else {
		x.detachShared(cs.node, s.ClientID, s.Group)
	}
	x.prune(cs.node)
	delete(x.subs, subKey{s.ClientID, s.Group, s.Filter})
	x.count.Add(-1)
	if s.Group != "" {
		x.shared.Add(-1)
	}
}

// UnsubscribeAll removes every subscription of clientID, as when its session
// ends, and returns how many there were.
func (x *Index) UnsubscribeAll(clientID string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	list := x.byClient[clientID]
	for _, cs := range list {
		x.remove(cs)
	}
	delete(x.byClient, clientID)
	return len(list)
}

// Subscriptions returns a copy of clientID's subscriptions, ordered by
// Filter then Group, for session persistence and inspection. It takes the
// writer mutex (not for the publish path).
func (x *Index) Subscriptions(clientID string) []Subscription {
	x.mu.Lock()
	list := x.byClient[clientID]
	out := make([]Subscription, 0, len(list))
	for _, cs := range list {
		out = append(out, *cs.rec)
	}
	x.mu.Unlock()
	slices.SortFunc(out, func(a, b Subscription) int {
		if c := strings.Compare(a.Filter, b.Filter); c != 0 {
			return c
		}
		return strings.Compare(a.Group, b.Group)
	})
	return out
}

// Match appends to dst every non-shared subscription whose filter matches
// the topic name, and to groups one SharedGroup per matching shared
// subscription (Group, Filter) with all its members; it returns both
// slices. A client with overlapping subscriptions appears once per matching
// subscription: aggregating them is the caller's job. Match takes no lock
// and does not allocate when dst and groups have enough capacity, so callers
// should reuse them (dst[:0], groups[:0]). A Subscribe or Unsubscribe that
// runs concurrently may or may not be reflected.
func (x *Index) Match(topic string, dst []Subscription, groups []SharedGroup) ([]Subscription, []SharedGroup) {
	m := matcher{dst: dst, groups: groups}
	// [MQTT-4.7.2-1]: a filter starting with a wildcard does not match a
	// topic name starting with '$'; the root's '+' and '#' are skipped.
	m.walk(x.root, topic, false, len(topic) > 0 && topic[0] == '$')
	return m.dst, m.groups
}

type matcher struct {
	dst    []Subscription
	groups []SharedGroup
}

// walk matches the topic levels in rest against the subtree of n. end
// means every level has been consumed (n matched the last one).
func (m *matcher) walk(n *node, rest string, end, noWild bool) {
	if end {
		m.emit(n)
		if h := n.hash.Load(); h != nil {
			m.emit(h) // "sport/#" matches "sport" [MQTT-4.7.1-2]
		}
		return
	}
	lvl, next, more := cutLevel(rest)
	if !noWild {
		if h := n.hash.Load(); h != nil {
			m.emit(h)
		}
		if p := n.plus.Load(); p != nil {
			m.walk(p, next, !more, false)
		}
	}
	if c := n.kids.load(lvl); c != nil {
		m.walk(c, next, !more, false)
	}
}

func (m *matcher) emit(n *node) {
	m.dst = n.subs.appendTo(m.dst)
	p := n.shared.Load()
	if p == nil {
		return
	}
	for _, g := range *p {
		mem := *g.members.Load()
		m.groups = append(m.groups, SharedGroup{Group: g.name, Filter: g.filter, Members: mem, g: g})
	}
}
