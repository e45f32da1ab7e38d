package topic

import "sync/atomic"

// subList is the set of non-shared subscriptions on one trie node. Readers
// (appendTo) take no lock; writers (add, replace, remove) must be
// serialized by the caller (Index.mu).
//
// The published state is a slotArray: a fixed-capacity array of atomic
// pointers to immutable Subscription records and an atomic count n of the
// slots in use. A reader loads the array, then n, then the slots below n;
// a nil slot is a removed subscription. The writer only ever
//   - stores a new record into a slot below n (replacement) or nil (removal),
//   - fills slot n and then increments n (append while capacity remains), or
//   - publishes a new, compacted array (growth, or when more than half of
//     the used slots are dead).
//
// A slot below n is never reused for another client within one array, so a
// reader sees, for each slot, either the old or the new record of the same
// subscription. Subscribe and Unsubscribe cost amortized O(1) even when
// 100k clients share one filter, and a reader never waits for a writer.
type subList struct {
	arr atomic.Pointer[slotArray]

	// Writer-only state, guarded by Index.mu. owners[i] is the
	// subscription in slot i of arr (nil when dead); len(owners) == arr.n.
	owners []*clientSub
	dead   int
}

type slotArray struct {
	n     atomic.Int64
	slots []atomic.Pointer[Subscription]
}

// len reports the number of live subscriptions. Writer side only.
func (l *subList) len() int { return len(l.owners) - l.dead }

// add appends cs (not yet in the list) and sets cs.slot.
func (l *subList) add(cs *clientSub) {
	a := l.arr.Load()
	if a == nil || len(l.owners) == len(a.slots) {
		a = l.compact(max(2, 2*(l.len()+1)))
	}
	n := len(l.owners)
	a.slots[n].Store(cs.rec)
	cs.slot = n
	l.owners = append(l.owners, cs)
	a.n.Store(int64(n + 1)) // publishes the slot to readers that load n afterwards
}

// replace publishes cs.rec, the new record of a subscription in the list.
func (l *subList) replace(cs *clientSub) {
	l.arr.Load().slots[cs.slot].Store(cs.rec)
}

// remove deletes cs, which is in the list.
func (l *subList) remove(cs *clientSub) {
	l.arr.Load().slots[cs.slot].Store(nil)
	l.owners[cs.slot] = nil
	l.dead++
	switch live := l.len(); {
	case live == 0:
		l.arr.Store(nil)
		l.owners, l.dead = nil, 0 // memory follows the live set
	case l.dead > live:
		l.compact(max(2, 2*live))
	}
}

// compact publishes a new array of the given capacity holding the live
// records in their current order, updates owners and slot indices, and
// returns the new array.
func (l *subList) compact(capacity int) *slotArray {
	na := &slotArray{slots: make([]atomic.Pointer[Subscription], capacity)}
	owners := make([]*clientSub, 0, capacity)
	for _, cs := range l.owners {
		if cs != nil {
			cs.slot = len(owners)
			na.slots[cs.slot].Store(cs.rec)
			owners = append(owners, cs)
		}
	}
	na.n.Store(int64(len(owners)))
	l.owners, l.dead = owners, 0
	l.arr.Store(na)
	return na
}

// appendTo appends a copy of every live subscription to dst. Lock-free.
func (l *subList) appendTo(dst []Subscription) []Subscription {
	a := l.arr.Load()
	if a == nil {
		return dst
	}
	n := a.n.Load()
	for i := range n {
		if s := a.slots[i].Load(); s != nil {
			dst = append(dst, *s)
		}
	}
	return dst
}
