package topic

import (
	"hash/maphash"
	"sync/atomic"
)

// smallKids is the most children a node keeps in a single bucket, searched
// without hashing. Most trie nodes have a handful of children; only levels
// such as a device identifier have thousands.
const smallKids = 8

// levelMap maps one topic level to a child node: a hash table whose reads
// are lock-free. load and each are safe concurrently with store and
// delete; store and delete must be serialized by the caller (the owning
// index's mutex).
//
// The published state is a kidTable: a power-of-two array of buckets, each
// an atomic pointer to an immutable singly linked list of (level, node)
// entries. store prepends a new entry (one allocation, nothing copied);
// delete copies the entries in front of the removed one and links the copy
// to the rest. When the number of children leaves the table's load range
// the writer builds a resized table and publishes it whole. Readers load the
// table, then the bucket head, and follow the list. A table of one bucket
// (up to smallKids children) is searched without hashing. Amortized cost per
// write is O(1); memory follows the live children (no children: nil table).
//
// Buckets are chosen with hash/maphash and a per-table random seed, so a
// client choosing topic levels cannot force collisions into one bucket.
type levelMap[N any] struct {
	t atomic.Pointer[kidTable[N]]
	n int // number of children; writer-only
}

type kidTable[N any] struct {
	seed    maphash.Seed
	mask    uint64 // len(buckets)-1
	buckets []atomic.Pointer[kid[N]]
}

// kid is one immutable list entry.
type kid[N any] struct {
	level string
	node  *N
	next  *kid[N]
}

func (t *kidTable[N]) bucket(level string) *atomic.Pointer[kid[N]] {
	if t.mask == 0 {
		return &t.buckets[0]
	}
	return &t.buckets[maphash.String(t.seed, level)&t.mask]
}

// load returns the child for level, or nil.
func (l *levelMap[N]) load(level string) *N {
	t := l.t.Load()
	if t == nil {
		return nil
	}
	for k := t.bucket(level).Load(); k != nil; k = k.next {
		if k.level == level {
			return k.node
		}
	}
	return nil
}

// len reports the number of children. Writer side only.
func (l *levelMap[N]) len() int { return l.n }

// bucketsFor returns the bucket count for a table rebuilt with n children:
// one bucket up to smallKids, else a load factor between 1 and 2.
func bucketsFor(n int) int {
	if n <= smallKids {
		return 1
	}
	b := 1
	for b < (n+1)/2 {
		b <<= 1
	}
	return b
}

func newKidTable[N any](buckets int) *kidTable[N] {
	return &kidTable[N]{
		seed:    maphash.MakeSeed(),
		mask:    uint64(buckets - 1),
		buckets: make([]atomic.Pointer[kid[N]], buckets),
	}
}

// store adds the child n for a level that has no child yet.
func (l *levelMap[N]) store(level string, n *N) {
	t := l.t.Load()
	l.n++
	if t == nil {
		t = newKidTable[N](1)
		t.buckets[0].Store(&kid[N]{level: level, node: n})
		l.t.Store(t)
		return
	}
	if nb := len(t.buckets); nb == 1 && l.n > smallKids || nb > 1 && l.n > 4*nb {
		l.rebuild(t, level, n)
		return
	}
	p := t.bucket(level)
	p.Store(&kid[N]{level: level, node: n, next: p.Load()})
}

// delete removes the child for level, which must exist.
func (l *levelMap[N]) delete(level string) {
	t := l.t.Load()
	l.n--
	if l.n == 0 {
		l.t.Store(nil)
		return
	}
	if nb := len(t.buckets); nb > 1 && (l.n <= smallKids/2 || l.n < nb/2) {
		l.rebuild(t, level, nil)
		return
	}
	p := t.bucket(level)
	p.Store(without(p.Load(), level))
}

// without returns the list head minus the entry for level, sharing the
// tail after it and copying the entries before it.
func without[N any](head *kid[N], level string) *kid[N] {
	if head.level == level {
		return head.next
	}
	return &kid[N]{level: head.level, node: head.node, next: without(head.next, level)}
}

// rebuild publishes a table sized for l.n holding old's entries plus
// (level, n) when n is not nil, or minus level when n is nil.
func (l *levelMap[N]) rebuild(old *kidTable[N], level string, n *N) {
	nt := newKidTable[N](bucketsFor(l.n))
	put := func(lvl string, c *N) {
		p := nt.bucket(lvl)
		p.Store(&kid[N]{level: lvl, node: c, next: p.Load()})
	}
	for i := range old.buckets {
		for k := old.buckets[i].Load(); k != nil; k = k.next {
			if n != nil || k.level != level {
				put(k.level, k.node)
			}
		}
	}
	if n != nil {
		put(level, n)
	}
	l.t.Store(nt)
}

// each calls fn for every child until fn returns false; it reports whether
// the iteration ran to the end. Children stored or deleted concurrently may
// or may not be seen.
func (l *levelMap[N]) each(fn func(level string, n *N) bool) bool {
	t := l.t.Load()
	if t == nil {
		return true
	}
	for i := range t.buckets {
		for k := t.buckets[i].Load(); k != nil; k = k.next {
			if !fn(k.level, k.node) {
				return false
			}
		}
	}
	return true
}
