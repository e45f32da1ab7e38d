package authz

import "slices"

// A topicIndex narrows a list of entries (rules, or acl_file lines, by
// their position) to those whose topic patterns can match a request's
// topic, so that a decision does not try every entry of a large policy.
// Entries keep their order: candidates come out in ascending position, and
// the first that decides is the one the policy's order says.
//
// Short lists are not indexed (every entry is a candidate). Longer ones
// are kept in a trie of topic levels: a literal level is a child by name,
// '+' and a substitution that stands for one level (%u, %c, %{cn}, ...)
// are the "any one level" child, and '#' and a substitution whose value
// may hold '/' (%{spiffe}, %{san_uri}) end the walk with an "anything
// below" list. A lookup follows the topic's levels and the "any one
// level" children, so its cost depends on the topic's depth and on how
// many patterns share its prefix, not on the size of the policy. The trie
// gives a superset of the entries that match: each candidate is still
// checked with its own pattern (the substituted values, '$' topics).
type topicIndex struct {
	all  []int32 // every entry, ascending
	root *tnode  // nil: not indexed, every entry is a candidate
}

// tnode is the trie position after some topic levels.
type tnode struct {
	lits map[string]*tnode
	plus *tnode   // '+' or a one-level substitution
	hash []int32  // entries with '#' (or a multi-level substitution) here
	end  []int32  // entries whose pattern ends at this position
	size int      // entries in this subtree's lists, for "#" filters
	subs []*tnode // every child (lits and plus), for '+' and '#' filters
}

// minIndexed is the number of entries from which a list is indexed.
const minIndexed = 16

// indexEntry is one entry and its patterns, given in ascending position.
type indexEntry struct {
	pos      int32
	patterns []*pattern
}

// newTopicIndex indexes entries, which must be in ascending position.
func newTopicIndex(entries []indexEntry) *topicIndex {
	ix := &topicIndex{all: make([]int32, len(entries))}
	for i, e := range entries {
		ix.all[i] = e.pos
	}
	if len(entries) < minIndexed {
		return ix
	}
	ix.root = &tnode{}
	for _, e := range entries {
		for _, p := range e.patterns {
			ix.root.insert(e.pos, p.levels)
		}
	}
	ix.root.finish()
	return ix
}

// appendPos appends pos unless it is already the last element (an entry
// with two patterns ending at the same position).
func appendPos(l []int32, pos int32) []int32 {
	if n := len(l); n > 0 && l[n-1] == pos {
		return l
	}
	return append(l, pos)
}

func (n *tnode) insert(pos int32, levels []plevel) {
	for _, l := range levels {
		switch {
		case l.kind == kHash, l.kind == kTmpl && l.spans():
			n.hash = appendPos(n.hash, pos)
			return
		case l.kind == kLit:
			c := n.lits[l.lit]
			if c == nil {
				if n.lits == nil {
					n.lits = map[string]*tnode{}
				}
				c = &tnode{}
				n.lits[l.lit] = c
			}
			n = c
		default: // '+', or a substitution standing for one level
			if n.plus == nil {
				n.plus = &tnode{}
			}
			n = n.plus
		}
	}
	n.end = appendPos(n.end, pos)
}

// finish fills size and subs, once every entry is inserted.
func (n *tnode) finish() int {
	n.size = len(n.hash) + len(n.end)
	for _, c := range n.lits {
		n.subs = append(n.subs, c)
	}
	if n.plus != nil {
		n.subs = append(n.subs, n.plus)
	}
	for _, c := range n.subs {
		n.size += c.finish()
	}
	return n.size
}

// spans reports whether a substitution level may stand for several topic
// levels: its value may contain '/'.
func (l *plevel) spans() bool {
	for _, sg := range l.segs {
		if sg.v.slashOK() {
			return true
		}
	}
	return false
}

// collect adds to m the entries whose patterns may match a topic name
// (Publish, Receive) or intersect a topic filter (Subscribe).
func (ix *topicIndex) collect(m *merger, topic string, filter bool) {
	switch {
	case ix == nil:
	case ix.root == nil:
		m.add(ix.all)
	case filter:
		// A filter with wildcards may reach much of the trie: when its
		// candidates overflow the merger, every entry is tried instead
		// (no worse than an unindexed list).
		sub := newMerger()
		if !ix.root.collectFilter(&sub, topic, false) {
			m.add(ix.all)
			return
		}
		for _, l := range sub.inline[:sub.n] {
			m.add(l)
		}
	default:
		ix.root.collectTopic(m, topic, false)
	}
}

// collectTopic walks the levels of topic name t from n; done says that no
// level is left. It does not allocate while m has room.
func (n *tnode) collectTopic(m *merger, t string, done bool) {
	for {
		if done {
			m.add(n.end)
			m.add(n.hash) // "a/#" matches "a"
			return
		}
		m.add(n.hash)
		l, rest, more := cutLevel(t)
		if n.plus != nil {
			n.plus.collectTopic(m, rest, !more)
		}
		c := n.lits[l]
		if c == nil {
			return
		}
		n, t, done = c, rest, !more
	}
}

// collectFilter walks the levels of filter f from n: a '+' level follows
// every child, a '#' level takes the whole subtree. It returns false, and
// stops, once m is full (m.more would be used).
func (n *tnode) collectFilter(m *merger, f string, done bool) bool {
	if done {
		m.add(n.end)
		m.add(n.hash)
		return m.more == nil
	}
	m.add(n.hash)
	l, rest, more := cutLevel(f)
	switch l {
	case "#":
		m.add(n.end) // "a/#" matches "a"
		for _, c := range n.subs {
			if !c.collectAll(m) {
				return false
			}
		}
	case "+":
		for _, c := range n.subs {
			if !c.collectFilter(m, rest, !more) {
				return false
			}
		}
	default:
		if c := n.lits[l]; c != nil && !c.collectFilter(m, rest, !more) {
			return false
		}
		if n.plus != nil && !n.plus.collectFilter(m, rest, !more) {
			return false
		}
	}
	return m.more == nil
}

// collectAll adds every entry of the subtree; false once m is full.
func (n *tnode) collectAll(m *merger) bool {
	if n.size == 0 {
		return true
	}
	m.add(n.end)
	m.add(n.hash)
	for _, c := range n.subs {
		if !c.collectAll(m) {
			return false
		}
	}
	return m.more == nil
}

// merger yields the positions of several ascending lists in ascending
// order, each once. Up to len(inline) lists are merged in place, so that a
// decision does not allocate; more (a filter with wildcards against a
// large trie) are flattened and sorted once.
type merger struct {
	inline [16][]int32
	n      int
	more   [][]int32
	ready  bool
	last   int32
}

func newMerger() merger { return merger{last: -1} }

func (m *merger) add(l []int32) {
	switch {
	case len(l) == 0:
	case m.n < len(m.inline):
		m.inline[m.n] = l
		m.n++
	default:
		m.more = append(m.more, l)
	}
}

func (m *merger) next() (int32, bool) {
	if !m.ready {
		m.ready = true
		if len(m.more) > 0 {
			total := 0
			for _, l := range m.inline[:m.n] {
				total += len(l)
			}
			for _, l := range m.more {
				total += len(l)
			}
			flat := make([]int32, 0, total)
			for _, l := range m.inline[:m.n] {
				flat = append(flat, l...)
			}
			for _, l := range m.more {
				flat = append(flat, l...)
			}
			slices.Sort(flat)
			m.inline[0], m.n, m.more = slices.Compact(flat), 1, nil
		}
	}
	for {
		var best *[]int32
		for i := range m.n {
			if l := &m.inline[i]; len(*l) > 0 && (best == nil || (*l)[0] < (*best)[0]) {
				best = l
			}
		}
		if best == nil {
			return 0, false
		}
		idx := (*best)[0]
		*best = (*best)[1:]
		if idx != m.last {
			m.last = idx
			return idx, true
		}
	}
}
