package topic

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

func collect[T any](r *Retained[T], filter string) []string {
	var got []string
	r.Match(filter, func(topic string, _ T) bool {
		got = append(got, topic)
		return true
	})
	slices.Sort(got)
	return got
}

func TestRetainedSetGetDelete(t *testing.T) {
	type msg struct {
		payload string
		qos     byte
	}
	r := NewRetained[msg]()
	r.Set("a/b", msg{"1", 0})
	r.Set("a/b", msg{"2", 1}) // replaces
	r.Set("a", msg{"3", 0})
	r.Set("a//b", msg{"4", 0})
	if r.Len() != 3 {
		t.Fatalf("Len = %d, want 3", r.Len())
	}
	if m, ok := r.Get("a/b"); !ok || m != (msg{"2", 1}) {
		t.Fatalf("Get(a/b) = %+v %v", m, ok)
	}
	for _, missing := range []string{"a/b/c", "a/", "b", "a/c", "/a"} {
		if _, ok := r.Get(missing); ok {
			t.Fatalf("Get(%q) found a message", missing)
		}
	}
	if r.Delete("a/c") || r.Delete("a/b/c") {
		t.Fatal("Delete of a missing topic reported true")
	}
	if !r.Delete("a") {
		t.Fatal("Delete(a) = false")
	}
	if r.Delete("a") {
		t.Fatal("second Delete(a) = true")
	}
	if _, ok := r.Get("a/b"); !ok {
		t.Fatal("deleting the parent topic removed a child")
	}
	r.Delete("a/b")
	r.Delete("a//b")
	if r.Len() != 0 || r.nodes != 0 {
		t.Fatalf("Len %d nodes %d after deleting everything", r.Len(), r.nodes)
	}
}

func TestRetainedMatchWildcards(t *testing.T) {
	r := NewRetained[int]()
	topics := []string{"sport", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
		"sport/", "sports", "/finance", "$SYS/broker/load", "$SYS", "a//b", "a/$x"}
	for i, tp := range topics {
		r.Set(tp, i)
	}
	cases := []struct {
		clause, filter string
		want           []string
	}{
		{"MQTT-4.7.1-2", "sport/#", []string{"sport", "sport/", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking"}},
		{"MQTT-4.7.1-2", "#", []string{"/finance", "a/$x", "a//b", "sport", "sport/", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking", "sports"}},
		{"MQTT-4.7.1-3", "sport/+", []string{"sport/", "sport/tennis"}},
		{"MQTT-4.7.1-3", "+", []string{"sport", "sports"}},
		{"MQTT-4.7.1-3", "+/+", []string{"/finance", "a/$x", "sport/", "sport/tennis"}},
		{"MQTT-4.7.1-3", "+/tennis/#", []string{"sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking"}},
		{"MQTT-4.7.2-1", "$SYS/#", []string{"$SYS", "$SYS/broker/load"}},
		{"MQTT-4.7.2-1", "+/broker/+", nil},
		{"MQTT-4.7.2-1", "$SYS/+/load", []string{"$SYS/broker/load"}},
		{"MQTT-4.7.2-1", "a/+", []string{"a/$x"}},
		{"MQTT-4.7.3-4", "a/+/b", []string{"a//b"}},
		{"MQTT-4.7.3-4", "sport/tennis", []string{"sport/tennis"}},
		{"MQTT-4.7.3-4", "nothing/here/#", nil},
	}
	for _, c := range cases {
		t.Run(c.clause+"/"+c.filter, func(t *testing.T) {
			if got := collect(r, c.filter); !slices.Equal(got, c.want) {
				t.Fatalf("Match(%q) = %q, want %q", c.filter, got, c.want)
			}
		})
	}
	t.Run("stop", func(t *testing.T) {
		for _, f := range []string{"#", "sport/#", "+/+", "sport/tennis"} {
			n := 0
			r.Match(f, func(string, int) bool { n++; return false })
			if n != 1 {
				t.Fatalf("Match(%q) called fn %d times after it returned false", f, n)
			}
		}
		n := 0
		r.Range(func(string, int) bool { n++; return n < 3 })
		if n != 3 {
			t.Fatalf("Range called fn %d times, want 3", n)
		}
	})
	t.Run("range", func(t *testing.T) {
		var got []string
		r.Range(func(tp string, _ int) bool { got = append(got, tp); return true })
		slices.Sort(got)
		want := slices.Sorted(slices.Values(topics))
		if !slices.Equal(got, want) {
			t.Fatalf("Range = %q, want %q", got, want)
		}
	})
	t.Run("callback may write", func(t *testing.T) {
		// No lock is held across fn: deleting from inside Match must not
		// deadlock.
		r2 := NewRetained[int]()
		r2.Set("q/1", 1)
		r2.Set("q/2", 2)
		r2.Match("q/+", func(tp string, _ int) bool { r2.Delete(tp); return true })
		if r2.Len() != 0 {
			t.Fatalf("Len = %d after deleting from the callback", r2.Len())
		}
	})
}

// TestRetainedMatchSubtreeOnly checks that a specific filter does not walk
// the whole set: wildcard filters visit only the subtree they name.
func TestRetainedMatchSubtreeOnly(t *testing.T) {
	r := NewRetained[int]()
	for i := range 1000 {
		r.Set(fmt.Sprintf("other/%d/x", i), i)
	}
	r.Set("dev/1/state", 1)
	r.Set("dev/2/state", 2)
	// The walk for "dev/+/state" enumerates only the children of "dev"
	// (the 1000 "other" topics live in a sibling subtree it never enters).
	got := collect(r, "dev/+/state")
	if !slices.Equal(got, []string{"dev/1/state", "dev/2/state"}) {
		t.Fatalf("Match = %q", got)
	}
	sub := r.root.kids.load("dev")
	n := 0
	var walk func(*rnode[int])
	walk = func(x *rnode[int]) {
		n++
		x.kids.each(func(_ string, c *rnode[int]) bool { walk(c); return true })
	}
	walk(sub)
	if n != 5 {
		t.Fatalf("dev subtree has %d nodes, want 5", n)
	}
	allocs := testing.AllocsPerRun(50, func() {
		r.Match("dev/1/state", func(string, int) bool { return true })
	})
	if allocs > 1 {
		t.Fatalf("exact Match allocated %.1f times", allocs)
	}
}

// TestRetainedProperty compares Match with the reference matcher on random
// topics and filters, and checks churn leaves no node behind.
func TestRetainedProperty(t *testing.T) {
	t.Run("narrow", func(t *testing.T) { testRetainedProperty(t, randLevels) })
	t.Run("wide", func(t *testing.T) { testRetainedProperty(t, wideLevels) })
}

func testRetainedProperty(t *testing.T, levels []string) {
	rng := rand.New(rand.NewPCG(7, 77))
	r := NewRetained[string]()
	live := map[string]bool{}
	for round := range 15 {
		for range 150 {
			tp := randTopicFrom(rng, levels)
			if live[tp] && rng.IntN(2) == 0 {
				if !r.Delete(tp) {
					t.Fatalf("Delete(%q) = false", tp)
				}
				delete(live, tp)
				continue
			}
			r.Set(tp, tp)
			live[tp] = true
		}
		if r.Len() != len(live) {
			t.Fatalf("Len = %d, want %d", r.Len(), len(live))
		}
		for range 50 {
			f := randFilterFrom(rng, levels)
			var want []string
			for tp := range live {
				if refMatch(f, tp) {
					want = append(want, tp)
				}
			}
			slices.Sort(want)
			if got := collect(r, f); !slices.Equal(got, want) {
				t.Fatalf("round %d: Match(%q) = %q, reference %q", round, f, got, want)
			}
		}
	}
	for tp := range live {
		r.Delete(tp)
	}
	if r.Len() != 0 || r.nodes != 0 {
		t.Fatalf("Len %d nodes %d after deleting everything", r.Len(), r.nodes)
	}
}

func TestRetainedConcurrent(t *testing.T) {
	r := NewRetained[int]()
	r.Set("stable/1", 1)
	var stop atomic.Bool
	var writers, readers sync.WaitGroup
	for w := range 4 {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 5))
			for range 3000 {
				tp := randTopic(rng)
				if rng.IntN(2) == 0 {
					r.Set(tp, w)
				} else {
					r.Delete(tp)
				}
			}
		})
	}
	for range 4 {
		readers.Go(func() {
			rng := rand.New(rand.NewPCG(3, 3))
			for i := 0; !stop.Load() || i < 100; i++ {
				f := randFilter(rng)
				r.Match(f, func(tp string, _ int) bool {
					if !refMatch(f, tp) {
						t.Errorf("Match(%q) returned %q", f, tp)
					}
					return true
				})
				if _, ok := r.Get("stable/1"); !ok {
					t.Error("stable message lost")
					return
				}
				r.Range(func(string, int) bool { return true })
				_ = r.Len()
			}
		})
	}
	writers.Wait()
	stop.Store(true)
	readers.Wait()
}
