package cluster

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

// drainQueue takes every waiting change, in order, as the writer does.
func drainQueue(q *pendingQueue[string, int]) []string {
	var out []string
	for {
		c, ok := q.front()
		if !ok {
			return out
		}
		out = append(out, fmt.Sprintf("%s=%d", c.key, c.val))
		q.done(c)
	}
}

func TestPendingQueueCoalesces(t *testing.T) {
	t.Parallel()
	q := newPendingQueue[string, int](3, false)
	for i, k := range []string{"a", "b", "a", "c", "b", "a"} {
		if ok, dropped := q.push(k, i); !ok || dropped {
			t.Fatalf("push %s: accepted %v, dropped %v", k, ok, dropped)
		}
	}
	if q.len() != 3 {
		t.Fatalf("len %d, want 3 (one per key)", q.len())
	}
	// The latest change of each key, in the order of the latest changes.
	if got, want := drainQueue(q), []string{"c=3", "b=4", "a=5"}; !slices.Equal(got, want) {
		t.Fatalf("drained %v, want %v", got, want)
	}
	if q.len() != 0 {
		t.Fatalf("len %d after draining", q.len())
	}
}

func TestPendingQueueRefusesNewKeyWhenFull(t *testing.T) {
	t.Parallel()
	q := newPendingQueue[string, int](2, false)
	q.push("a", 1)
	q.push("b", 2)
	if ok, dropped := q.push("c", 3); ok || dropped {
		t.Fatalf("a third key: accepted %v, dropped %v; want refused, nothing dropped", ok, dropped)
	}
	// A key already waiting is still accepted: it takes no room.
	if ok, _ := q.push("a", 4); !ok {
		t.Fatal("a change of a waiting key was refused")
	}
	if got, want := drainQueue(q), []string{"b=2", "a=4"}; !slices.Equal(got, want) {
		t.Fatalf("drained %v, want %v", got, want)
	}
}

func TestPendingQueueDropsOldestWhenAsked(t *testing.T) {
	t.Parallel()
	q := newPendingQueue[string, int](2, true)
	q.push("a", 1)
	q.push("b", 2)
	if ok, dropped := q.push("c", 3); !ok || !dropped {
		t.Fatalf("a third key: accepted %v, dropped %v; want accepted, oldest dropped", ok, dropped)
	}
	if ok, dropped := q.pushEvict("d", 4); !ok || dropped == nil || dropped.key != "b" || dropped.val != 2 {
		t.Fatalf("a fourth key: accepted %v, dropped %+v; want accepted, b=2 dropped", ok, dropped)
	}
	if got, want := drainQueue(q), []string{"c=3", "d=4"}; !slices.Equal(got, want) {
		t.Fatalf("drained %v, want %v", got, want)
	}
}

// TestPendingQueuePushIfAbsent: a change queued only if its key has none
// waiting keeps the waiting one; on a full queue it drops the oldest
// like pushEvict.
func TestPendingQueuePushIfAbsent(t *testing.T) {
	t.Parallel()
	q := newPendingQueue[string, int](2, true)
	q.push("a", 1)
	if ok, dropped := q.pushIfAbsent("a", 2); ok || dropped != nil {
		t.Fatalf("a waiting key: accepted %v, dropped %+v; want refused", ok, dropped)
	}
	if ok, dropped := q.pushIfAbsent("b", 3); !ok || dropped != nil {
		t.Fatalf("a new key: accepted %v, dropped %+v; want accepted", ok, dropped)
	}
	if ok, dropped := q.pushIfAbsent("c", 4); !ok || dropped == nil || dropped.key != "a" {
		t.Fatalf("a third key: accepted %v, dropped %+v; want accepted, a dropped", ok, dropped)
	}
	if got, want := drainQueue(q), []string{"b=3", "c=4"}; !slices.Equal(got, want) {
		t.Fatalf("drained %v, want %v", got, want)
	}
}

// TestPendingQueueReplacedWhileWriting: a change made while the previous
// change of its key is being written is not removed with it.
func TestPendingQueueReplacedWhileWriting(t *testing.T) {
	t.Parallel()
	q := newPendingQueue[string, int](4, false)
	q.push("a", 1)
	q.push("b", 2)
	c, _ := q.front() // a=1 is being written
	q.push("a", 3)    // meanwhile a changes again
	q.done(c)         // a=1 stored
	if got, want := drainQueue(q), []string{"b=2", "a=3"}; !slices.Equal(got, want) {
		t.Fatalf("drained %v, want %v", got, want)
	}
	// A change that failed stays at the front (done is not called).
	q.push("x", 1)
	q.push("y", 2)
	if c, _ := q.front(); c.key != "x" {
		t.Fatalf("front %s", c.key)
	}
	if c, _ := q.front(); c.key != "x" {
		t.Fatalf("front after a failed write %s, want x again", c.key)
	}
}

func TestPendingQueueConcurrent(t *testing.T) {
	t.Parallel()
	q := newPendingQueue[string, int](1000, false)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 500 {
				q.push(fmt.Sprintf("k%d", i%100), w*1000+i)
			}
		})
	}
	wg.Wait()
	if q.len() != 100 {
		t.Fatalf("len %d, want 100", q.len())
	}
	if n := len(drainQueue(q)); n != 100 {
		t.Fatalf("drained %d, want 100", n)
	}
}
