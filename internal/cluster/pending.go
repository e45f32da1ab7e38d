package cluster

import (
	"container/list"
	"slices"
	"sync"
)

// pendingQueue holds the changes waiting for a key-value bucket, at most
// one per key: a bucket keeps only the last value of a key, so a change of
// a key that is already waiting replaces the waiting one (and moves to the
// back, behind the changes made before it). The queue is thus bounded by
// the number of distinct keys changed while the bucket was unreachable,
// not by the number of changes.
//
// Beyond limit keys, a new key is refused (push reports false), or, with
// dropOldest, the oldest waiting change makes room for it. Which policy
// fits is the caller's decision: a security change must never be lost
// silently, a retained message may be.
//
// The writer reads the oldest change with front and, once it is stored,
// removes it with done: while it is being written it still counts, and a
// newer change of its key made meanwhile is kept. Safe for concurrent
// use.
type pendingQueue[K comparable, V any] struct {
	limit      int
	dropOldest bool

	mu    sync.Mutex
	seq   uint64
	order list.List // of *pendingChange[K, V], oldest first
	byKey map[K]*list.Element
}

// pendingChange is one waiting change; seq tells a replaced change from
// its replacement.
type pendingChange[K comparable, V any] struct {
	key K
	val V
	seq uint64
}

func newPendingQueue[K comparable, V any](limit int, dropOldest bool) *pendingQueue[K, V] {
	return &pendingQueue[K, V]{limit: max(limit, 1), dropOldest: dropOldest, byKey: make(map[K]*list.Element)}
}

// push adds the change v of key k. It reports whether v was accepted and
// whether the oldest waiting change was dropped for it (dropOldest only).
// A change that replaces a waiting one of the same key is always
// accepted.
func (q *pendingQueue[K, V]) push(k K, v V) (accepted, dropped bool) {
	accepted, old := q.pushEvict(k, v)
	return accepted, old != nil
}

// pushEvict is push that returns the change dropped for v, if any.
func (q *pendingQueue[K, V]) pushEvict(k K, v V) (accepted bool, dropped *pendingChange[K, V]) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pushLocked(k, v)
}

// pushIfAbsent is pushEvict for a key with no waiting change: a change
// queued since the caller looked (a newer one) is not replaced.
func (q *pendingQueue[K, V]) pushIfAbsent(k K, v V) (accepted bool, dropped *pendingChange[K, V]) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.byKey[k]; ok {
		return false, nil
	}
	return q.pushLocked(k, v)
}

func (q *pendingQueue[K, V]) pushLocked(k K, v V) (accepted bool, dropped *pendingChange[K, V]) {
	if e, ok := q.byKey[k]; ok {
		q.order.Remove(e)
		delete(q.byKey, k)
	} else if len(q.byKey) >= q.limit {
		if !q.dropOldest {
			return false, nil
		}
		old := q.order.Front()
		q.order.Remove(old)
		dropped = old.Value.(*pendingChange[K, V])
		delete(q.byKey, dropped.key)
	}
	q.seq++
	q.byKey[k] = q.order.PushBack(&pendingChange[K, V]{key: k, val: v, seq: q.seq})
	return true, dropped
}

// front returns the oldest waiting change without removing it.
func (q *pendingQueue[K, V]) front() (pendingChange[K, V], bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.order.Front()
	if e == nil {
		return pendingChange[K, V]{}, false
	}
	return *e.Value.(*pendingChange[K, V]), true
}

// done removes c (stored, or given up), unless a newer change of its key
// replaced it since front returned it.
func (q *pendingQueue[K, V]) done(c pendingChange[K, V]) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e, ok := q.byKey[c.key]; ok && e.Value.(*pendingChange[K, V]).seq == c.seq {
		q.order.Remove(e)
		delete(q.byKey, c.key)
	}
}

// get returns the waiting change of key k, if any.
func (q *pendingQueue[K, V]) get(k K) (v V, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e, found := q.byKey[k]; found {
		return e.Value.(*pendingChange[K, V]).val, true
	}
	return v, false
}

// change returns the waiting change of key k, if any, for done.
func (q *pendingQueue[K, V]) change(k K) (c pendingChange[K, V], ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e, found := q.byKey[k]; found {
		return *e.Value.(*pendingChange[K, V]), true
	}
	return c, false
}

// len returns the number of waiting changes (distinct keys).
func (q *pendingQueue[K, V]) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.byKey)
}

// since returns the waiting changes queued after the change numbered
// seq, oldest first, and the number of the last change queued. Changes
// are numbered in the order they were queued and kept in that order, so
// the walk stops at the first older one.
func (q *pendingQueue[K, V]) since(seq uint64) ([]V, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var vs []V
	for e := q.order.Back(); e != nil; e = e.Prev() {
		c := e.Value.(*pendingChange[K, V])
		if c.seq <= seq {
			break
		}
		vs = append(vs, c.val)
	}
	slices.Reverse(vs)
	return vs, q.seq
}
