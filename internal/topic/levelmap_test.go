package topic

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// TestLevelMapModes grows a levelMap past the single-bucket limit and shrinks
// it back, checking every entry after every step and the representation at
// the boundaries.
func TestLevelMapModes(t *testing.T) {
	type leaf struct{ v int }
	var l levelMap[leaf]
	check := func(live map[string]*leaf) {
		t.Helper()
		if l.len() != len(live) {
			t.Fatalf("len = %d, want %d", l.len(), len(live))
		}
		for k, v := range live {
			if got := l.load(k); got != v {
				t.Fatalf("load(%q) = %v, want %v", k, got, v)
			}
		}
		if l.load("absent") != nil {
			t.Fatal("load(absent) found something")
		}
		seen := 0
		l.each(func(k string, n *leaf) bool {
			if live[k] != n {
				t.Fatalf("each yielded %q=%v, want %v", k, n, live[k])
			}
			seen++
			return true
		})
		if seen != len(live) {
			t.Fatalf("each yielded %d entries, want %d", seen, len(live))
		}
	}
	live := map[string]*leaf{}
	for i := range 40 {
		k := fmt.Sprint("k", i)
		live[k] = &leaf{i}
		l.store(k, live[k])
		check(live)
		if hashed := len(l.t.Load().buckets) > 1; hashed != (i+1 > smallKids) {
			t.Fatalf("with %d children hashed = %v", i+1, hashed)
		}
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for len(live) > 0 {
		var k string
		for k = range live {
			break
		}
		if rng.IntN(4) == 0 { // occasionally re-add to cross the boundary both ways
			nk := fmt.Sprint("r", rng.IntN(1000))
			if live[nk] == nil {
				live[nk] = &leaf{-1}
				l.store(nk, live[nk])
				check(live)
			}
		}
		delete(live, k)
		l.delete(k)
		check(live)
	}
	if l.t.Load() != nil {
		t.Fatal("empty levelMap still holds a table")
	}
}

// TestLevelMapConcurrent reads a stable entry while a writer moves the
// map across the single-bucket/hashed boundary and through resizes (run
// with -race).
func TestLevelMapConcurrent(t *testing.T) {
	type leaf struct{ v int }
	var l levelMap[leaf]
	stable := &leaf{1}
	l.store("stable", stable)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				if l.load("stable") != stable {
					t.Error("stable entry lost")
					return
				}
				l.each(func(string, *leaf) bool { return true })
			}
		})
	}
	for round := range 200 {
		n := 1 + round%80 // up to 80 children: several table resizes
		for i := range n {
			l.store(fmt.Sprint(i), &leaf{i})
		}
		for i := range n {
			l.delete(fmt.Sprint(i))
		}
	}
	stop.Store(true)
	wg.Wait()
}
