package topic

import (
	"sync"
	"sync/atomic"
)

// smallKids is the most children a node keeps in its immutable slice before
// it switches to a concurrent hash map. Most trie nodes have a handful of
// children; only levels such as a device identifier have thousands.
const smallKids = 8

// levelMap maps one topic level to a child node. load and each are
// lock-free and safe concurrently with store and delete; store and delete
// must be serialized by the caller (the owning index's mutex).
//
// The published state is one immutable kidTable. While a node has at most
// smallKids children the table is a small slice that store and delete
// replace (copy-on-write, at most smallKids entries copied). Past that the
// table points to a sync.Map (a concurrent hash trie since Go 1.24, whose
// Load does not allocate for a string key), updated in place; it goes back
// to a slice when the children drop to smallKids/2, so memory follows the
// live children.
type levelMap[N any] struct {
	t atomic.Pointer[kidTable[N]]
	n int // number of children; writer-only
}

type kidTable[N any] struct {
	small []kid[N]  // used when big is nil
	big   *sync.Map // string → *N
}

type kid[N any] struct {
	level string
	node  *N
}

// load returns the child for level, or nil.
func (l *levelMap[N]) load(level string) *N {
	t := l.t.Load()
	if t == nil {
		return nil
	}
	if t.big != nil {
		if v, ok := t.big.Load(level); ok {
			return v.(*N)
		}
		return nil
	}
	for i := range t.small {
		if t.small[i].level == level {
			return t.small[i].node
		}
	}
	return nil
}

// len reports the number of children. Writer side only.
func (l *levelMap[N]) len() int { return l.n }

// store adds the child n for a level that has no child yet.
func (l *levelMap[N]) store(level string, n *N) {
	t := l.t.Load()
	l.n++
	switch {
	case t != nil && t.big != nil:
		t.big.Store(level, n)
	case l.n <= smallKids:
		var small []kid[N]
		if t != nil {
			small = make([]kid[N], len(t.small), len(t.small)+1)
			copy(small, t.small)
		}
		small = append(small, kid[N]{level, n})
		l.t.Store(&kidTable[N]{small: small})
	default:
		big := new(sync.Map)
		for _, k := range t.small {
			big.Store(k.level, k.node)
		}
		big.Store(level, n)
		l.t.Store(&kidTable[N]{big: big})
	}
}

// delete removes the child for level, which must exist.
func (l *levelMap[N]) delete(level string) {
	t := l.t.Load()
	l.n--
	switch {
	case l.n == 0:
		l.t.Store(nil)
	case t.big != nil && l.n > smallKids/2:
		t.big.Delete(level)
	case t.big != nil:
		small := make([]kid[N], 0, l.n)
		t.big.Range(func(k, v any) bool {
			if k.(string) != level {
				small = append(small, kid[N]{k.(string), v.(*N)})
			}
			return true
		})
		l.t.Store(&kidTable[N]{small: small})
	default:
		small := make([]kid[N], 0, l.n)
		for _, k := range t.small {
			if k.level != level {
				small = append(small, k)
			}
		}
		l.t.Store(&kidTable[N]{small: small})
	}
}

// each calls fn for every child until fn returns false; it reports whether
// the iteration ran to the end. Children stored or deleted concurrently may
// or may not be seen.
func (l *levelMap[N]) each(fn func(level string, n *N) bool) bool {
	t := l.t.Load()
	if t == nil {
		return true
	}
	if t.big == nil {
		for _, k := range t.small {
			if !fn(k.level, k.node) {
				return false
			}
		}
		return true
	}
	done := true
	t.big.Range(func(k, v any) bool {
		done = fn(k.(string), v.(*N))
		return done
	})
	return done
}
