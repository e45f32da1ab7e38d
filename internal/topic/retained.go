package topic

import (
	"sync"
	"sync/atomic"
)

// Retained is an index of retained messages by topic name, generic over the
// message type so the broker stores its own struct. Its zero value is not
// usable; call NewRetained. It is safe for concurrent use: Get, Match,
// Range and Len take no lock and never wait for a writer; Set and Delete
// are serialized by a mutex that readers never take. No lock is held while
// a callback runs, so a callback may call back into the Retained.
//
// T is stored by value: when T holds pointers or slices, the caller owns
// what they point to and must not modify it after Set.
type Retained[T any] struct {
	root  *rnode[T]
	count atomic.Int64

	mu    sync.Mutex // serializes Set and Delete
	nodes int        // trie nodes excluding root, guarded by mu
}

// rnode is one level of the retained trie. kids and val are read
// lock-free; parent and level are guarded by Retained.mu.
type rnode[T any] struct {
	kids levelMap[rnode[T]]
	val  atomic.Pointer[rval[T]]

	parent *rnode[T]
	level  string
}

type rval[T any] struct {
	topic string
	msg   T
}

// NewRetained returns an empty Retained.
func NewRetained[T any]() *Retained[T] {
	return &Retained[T]{root: &rnode[T]{}}
}

// Len reports the number of retained messages.
func (r *Retained[T]) Len() int { return int(r.count.Load()) }

// Set stores msg as the retained message of topic, replacing any previous
// one. topic must be a valid topic name (packet.ValidTopicName). A
// retained PUBLISH with an empty payload removes the retained message
// (MQTT 5 [MQTT-3.3.1-6], 3.1.1 [MQTT-3.3.1-10]): the caller calls Delete
// for it instead of Set.
func (r *Retained[T]) Set(topic string, msg T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.root
	rest := topic
	for {
		lvl, next, more := cutLevel(rest)
		c := n.kids.load(lvl)
		if c == nil {
			c = &rnode[T]{parent: n, level: lvl}
			n.kids.store(lvl, c)
			r.nodes++
		}
		n = c
		if !more {
			break
		}
		rest = next
	}
	if n.val.Swap(&rval[T]{topic: topic, msg: msg}) == nil {
		r.count.Add(1)
	}
}

// find returns topic's node or nil. Lock-free.
func (r *Retained[T]) find(topic string) *rnode[T] {
	n := r.root
	for {
		lvl, next, more := cutLevel(topic)
		if n = n.kids.load(lvl); n == nil || !more {
			return n
		}
		topic = next
	}
}

// Delete removes topic's retained message and reports whether there was
// one. Nodes left empty are removed, so memory follows the number of
// retained messages.
func (r *Retained[T]) Delete(topic string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.find(topic)
	if n == nil || n.val.Swap(nil) == nil {
		return false
	}
	r.count.Add(-1)
	for n != r.root && n.kids.len() == 0 && n.val.Load() == nil {
		p := n.parent
		p.kids.delete(n.level)
		r.nodes--
		n = p
	}
	return true
}

// Get returns topic's retained message.
func (r *Retained[T]) Get(topic string) (msg T, ok bool) {
	if n := r.find(topic); n != nil {
		if v := n.val.Load(); v != nil {
			return v.msg, true
		}
	}
	return msg, false
}

// Match calls fn for every retained message whose topic matches filter,
// until fn returns false. filter must not carry a $share/{group}/ prefix.
// Only the subtrees the filter can reach are visited: an exact level is one
// map lookup, '+' visits the children of one node, '#' the subtree below
// it. Topics starting with '$' are not matched by a filter starting with a
// wildcard [MQTT-4.7.2-1]. The order of calls is unspecified. Messages set
// or deleted concurrently may or may not be seen.
func (r *Retained[T]) Match(filter string, fn func(topic string, msg T) bool) {
	r.match(r.root, filter, true, fn)
}

// match walks the filter levels in rest below n and reports whether to
// continue. root is true while n is the trie root.
func (r *Retained[T]) match(n *rnode[T], rest string, root bool, fn func(string, T) bool) bool {
	lvl, next, more := cutLevel(rest)
	switch {
	case lvl == "#" && !more:
		if v := n.val.Load(); v != nil && !root {
			// "sport/#" matches "sport" [MQTT-4.7.1-2].
			if !fn(v.topic, v.msg) {
				return false
			}
		}
		return n.kids.each(func(l string, c *rnode[T]) bool {
			if root && isDollar(l) {
				return true // [MQTT-4.7.2-1]
			}
			return r.all(c, fn)
		})
	case lvl == "+":
		return n.kids.each(func(l string, c *rnode[T]) bool {
			if root && isDollar(l) {
				return true // [MQTT-4.7.2-1]
			}
			return r.step(c, next, more, fn)
		})
	default:
		c := n.kids.load(lvl)
		return c == nil || r.step(c, next, more, fn)
	}
}

// step continues the match at c, which matched one filter level.
func (r *Retained[T]) step(c *rnode[T], next string, more bool, fn func(string, T) bool) bool {
	if more {
		return r.match(c, next, false, fn)
	}
	if v := c.val.Load(); v != nil {
		return fn(v.topic, v.msg)
	}
	return true
}

// all calls fn for every message in n's subtree.
func (r *Retained[T]) all(n *rnode[T], fn func(string, T) bool) bool {
	if v := n.val.Load(); v != nil && !fn(v.topic, v.msg) {
		return false
	}
	return n.kids.each(func(_ string, c *rnode[T]) bool { return r.all(c, fn) })
}

// Range calls fn for every retained message until fn returns false, for a
// persistence snapshot. The order is unspecified; messages set or deleted
// concurrently may or may not be seen.
func (r *Retained[T]) Range(fn func(topic string, msg T) bool) {
	r.all(r.root, fn)
}

func isDollar(level string) bool { return len(level) > 0 && level[0] == '$' }
