package topic

import "sync/atomic"

// subList is the set of non-shared subscriptions on one trie node, keyed by
// client identifier. Readers (appendTo) take no lock; writers (put, remove)
// must be serialized by the caller (Index.mu).
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
// client. Subscribe and Unsubscribe cost amortized O(1) even when 100k
// clients share one filter, and a reader never waits for a writer.
type subList struct {
	arr atomic.Pointer[slotArray]

	// Writer-only state, guarded by Index.mu.
	pos  map[string]int // client ID → slot index in arr
	dead int            // nil slots below n in arr
}

type slotArray struct {
	n     atomic.Int64
	slots []atomic.Pointer[Subscription]
}

// len reports the number of live subscriptions. Writer side only.
func (l *subList) len() int { return len(l.pos) }

// put adds or replaces the subscription of s.ClientID. The record s must
// not be modified after the call.
func (l *subList) put(s *Subscription) (existed bool) {
	if i, ok := l.pos[s.ClientID]; ok {
		l.arr.Load().slots[i].Store(s)
		return true
	}
	a := l.arr.Load()
	if a == nil || int(a.n.Load()) == len(a.slots) {
		a = l.compact(max(4, 2*(len(l.pos)+1)))
	}
	n := a.n.Load()
	a.slots[n].Store(s)
	if l.pos == nil {
		l.pos = make(map[string]int)
	}
	l.pos[s.ClientID] = int(n)
	a.n.Store(n + 1) // publishes the slot to readers that load n afterwards
	return false
}

// remove deletes clientID's subscription and reports whether it existed.
func (l *subList) remove(clientID string) bool {
	i, ok := l.pos[clientID]
	if !ok {
		return false
	}
	delete(l.pos, clientID)
	if len(l.pos) == 0 {
		l.arr.Store(nil)
		l.pos, l.dead = nil, 0 // drop the map so memory shrinks under churn
		return true
	}
	l.arr.Load().slots[i].Store(nil)
	l.dead++
	if l.dead > len(l.pos) {
		l.compact(max(4, 2*len(l.pos)))
	}
	return true
}

// compact publishes a new array of the given capacity holding the live
// records in their current order, rebuilds pos and returns the new array.
func (l *subList) compact(capacity int) *slotArray {
	na := &slotArray{slots: make([]atomic.Pointer[Subscription], capacity)}
	pos := make(map[string]int, len(l.pos))
	var n int64
	if a := l.arr.Load(); a != nil {
		used := a.n.Load()
		for i := range used {
			if s := a.slots[i].Load(); s != nil {
				na.slots[n].Store(s)
				pos[s.ClientID] = int(n)
				n++
			}
		}
	}
	na.n.Store(n)
	l.pos, l.dead = pos, 0
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

// each calls fn for every live subscription. Writer side (or any side:
// it is lock-free too).
func (l *subList) each(fn func(*Subscription)) {
	a := l.arr.Load()
	if a == nil {
		return
	}
	n := a.n.Load()
	for i := range n {
		if s := a.slots[i].Load(); s != nil {
			fn(s)
		}
	}
}
