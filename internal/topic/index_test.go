package topic

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func clientIDs(subs []Subscription) []string {
	ids := make([]string, 0, len(subs))
	for _, s := range subs {
		ids = append(ids, s.ClientID+"@"+s.Filter)
	}
	slices.Sort(ids)
	return ids
}

func TestIndexSubscribeReplace(t *testing.T) {
	x := NewIndex()
	s := Subscription{ClientID: "c1", Filter: "a/+", QoS: 0, ID: 1}
	if x.Subscribe(s) {
		t.Fatal("first Subscribe reported an existing subscription")
	}
	s.QoS, s.ID, s.RetainHandling = 2, 9, 1
	// [MQTT-3.3.1-10] Retain Handling 1 needs to know the subscription existed.
	if !x.Subscribe(s) {
		t.Fatal("second Subscribe to the same filter did not report a replacement [MQTT-3.8.4-3]")
	}
	if x.Count() != 1 {
		t.Fatalf("Count = %d after a replacement, want 1", x.Count())
	}
	dst, _ := x.Match("a/b", nil, nil)
	if len(dst) != 1 || dst[0] != s {
		t.Fatalf("Match = %+v, want only the replacement %+v", dst, s)
	}
	// A shared subscription to the same filter is a different subscription.
	if x.Subscribe(Subscription{ClientID: "c1", Group: "g", Filter: "a/+"}) {
		t.Fatal("shared Subscribe reported the non-shared one as existing")
	}
	if got := x.Subscriptions("c1"); len(got) != 2 || got[0].Group != "" || got[1].Group != "g" {
		t.Fatalf("Subscriptions = %+v", got)
	}
	if x.Unsubscribe("c1", "", "a/#") || x.Unsubscribe("c2", "", "a/+") || x.Unsubscribe("c1", "h", "a/+") {
		t.Fatal("Unsubscribe of a missing subscription reported true")
	}
	if !x.Unsubscribe("c1", "", "a/+") {
		t.Fatal("Unsubscribe of an existing subscription reported false")
	}
	dst, groups := x.Match("a/b", nil, nil)
	if len(dst) != 0 || len(groups) != 1 {
		t.Fatalf("after Unsubscribe Match = %+v, %+v", dst, groups)
	}
	if n := x.UnsubscribeAll("c1"); n != 1 {
		t.Fatalf("UnsubscribeAll = %d, want 1", n)
	}
	if x.Count() != 0 || x.nodes != 0 || len(x.byClient)+len(x.subs) != 0 {
		t.Fatalf("after UnsubscribeAll: count %d nodes %d clients %d", x.Count(), x.nodes, len(x.byClient)+len(x.subs))
	}
	if got := x.Subscriptions("c1"); len(got) != 0 {
		t.Fatalf("Subscriptions after UnsubscribeAll = %+v", got)
	}
}

func TestIndexOverlapping(t *testing.T) {
	// The broker aggregates overlapping subscriptions of one client itself
	// [MQTT-3.3.4-2]; Match returns every matching subscription.
	x := NewIndex()
	for _, f := range []string{"a/b", "a/+", "a/#", "#", "+/b", "+/+", "a/b/#", "a/c"} {
		x.Subscribe(Subscription{ClientID: "c", Filter: f})
	}
	x.Subscribe(Subscription{ClientID: "d", Filter: "a/b"})
	dst, _ := x.Match("a/b", nil, nil)
	want := []string{"c@#", "c@+/+", "c@+/b", "c@a/#", "c@a/+", "c@a/b", "c@a/b/#", "d@a/b"}
	if got := clientIDs(dst); !slices.Equal(got, want) {
		t.Fatalf("Match(a/b) = %v, want %v", got, want)
	}
}

func TestIndexSharedGroups(t *testing.T) {
	x := NewIndex()
	// The same group name on two filters is two shared subscriptions
	// (MQTT 5.0 §4.8.2); members come from many clients.
	for _, c := range []string{"w1", "w2", "w3"} {
		x.Subscribe(Subscription{ClientID: c, Group: "g", Filter: "a/+"})
	}
	x.Subscribe(Subscription{ClientID: "w1", Group: "g", Filter: "a/#"})
	x.Subscribe(Subscription{ClientID: "w9", Group: "h", Filter: "a/+"})
	x.Subscribe(Subscription{ClientID: "plain", Filter: "a/+"})
	dst, groups := x.Match("a/b", nil, nil)
	if len(dst) != 1 || dst[0].ClientID != "plain" {
		t.Fatalf("non-shared = %+v", dst)
	}
	var got []string
	for _, g := range groups {
		var ms []string
		for _, m := range g.Members {
			if m.Group != g.Group || m.Filter != g.Filter {
				t.Errorf("member %+v in group %s %s", m, g.Group, g.Filter)
			}
			ms = append(ms, m.ClientID)
		}
		got = append(got, g.Group+" "+g.Filter+" "+strings.Join(ms, ","))
	}
	slices.Sort(got)
	want := []string{"g a/# w1", "g a/+ w1,w2,w3", "h a/+ w9"}
	if !slices.Equal(got, want) {
		t.Fatalf("groups = %q, want %q", got, want)
	}
	if x.Count() != 6 {
		t.Fatalf("Count = %d, want 6", x.Count())
	}
	// Members is a snapshot: a later Unsubscribe does not change it, and
	// its capacity is clipped so an append by the caller copies.
	var g *SharedGroup
	for i := range groups {
		if groups[i].Group == "g" && groups[i].Filter == "a/+" {
			g = &groups[i]
		}
	}
	snapshot := slices.Clone(g.Members)
	if cap(g.Members) != len(g.Members) {
		t.Errorf("Members cap %d != len %d", cap(g.Members), len(g.Members))
	}
	x.Unsubscribe("w2", "g", "a/+")
	if !slices.Equal(g.Members, snapshot) {
		t.Fatalf("Members changed under the caller: %+v", g.Members)
	}
	_, groups = x.Match("a/b", nil, groups[:0])
	for _, g := range groups {
		if g.Group == "g" && g.Filter == "a/+" && len(g.Members) != 2 {
			t.Fatalf("after Unsubscribe members = %+v", g.Members)
		}
	}
	x.UnsubscribeAll("w1")
	x.UnsubscribeAll("w3")
	x.UnsubscribeAll("w9")
	x.UnsubscribeAll("plain")
	if x.Count() != 0 || x.nodes != 0 {
		t.Fatalf("count %d nodes %d after removing everything", x.Count(), x.nodes)
	}
}

func TestSharedGroupPick(t *testing.T) {
	x := NewIndex()
	members := []string{"w0", "w1", "w2", "w3"}
	for _, c := range members {
		x.Subscribe(Subscription{ClientID: c, Group: "g", Filter: "jobs/#"})
	}
	pick := func(online func(string) bool) string {
		// A fresh Match per publish, as the broker does: the rotation lives
		// in the Index, not in the returned value.
		_, groups := x.Match("jobs/1", nil, nil)
		if len(groups) != 1 {
			t.Fatalf("groups = %+v", groups)
		}
		s, ok := groups[0].Pick(online)
		if !ok {
			t.Fatal("Pick on a non-empty group returned false")
		}
		return s.ClientID
	}
	t.Run("rotates", func(t *testing.T) {
		counts := map[string]int{}
		for range 400 {
			counts[pick(nil)]++
		}
		for _, c := range members {
			if counts[c] != 100 {
				t.Fatalf("round robin counts = %v, want 100 each", counts)
			}
		}
	})
	t.Run("prefers online", func(t *testing.T) {
		online := func(id string) bool { return id == "w1" || id == "w3" }
		counts := map[string]int{}
		for range 400 {
			counts[pick(online)]++
		}
		if counts["w0"] != 0 || counts["w2"] != 0 || counts["w1"] == 0 || counts["w3"] == 0 {
			t.Fatalf("counts with w1, w3 online = %v", counts)
		}
	})
	t.Run("none online", func(t *testing.T) {
		counts := map[string]int{}
		for range 400 {
			counts[pick(func(string) bool { return false })]++
		}
		if len(counts) != 4 {
			t.Fatalf("with nobody online the rotation should still spread: %v", counts)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		counts := map[string]int{}
		for range 8 {
			wg.Go(func() {
				local := map[string]int{}
				for range 500 {
					_, groups := x.Match("jobs/1", nil, nil)
					s, _ := groups[0].Pick(nil)
					local[s.ClientID]++
				}
				mu.Lock()
				for k, v := range local {
					counts[k] += v
				}
				mu.Unlock()
			})
		}
		wg.Wait()
		for _, c := range members {
			if counts[c] != 1000 {
				t.Fatalf("concurrent round robin counts = %v, want 1000 each", counts)
			}
		}
	})
	t.Run("empty and hand-built", func(t *testing.T) {
		var g SharedGroup
		if _, ok := g.Pick(nil); ok {
			t.Fatal("Pick on an empty group returned ok")
		}
		g.Members = []Subscription{{ClientID: "a"}, {ClientID: "b"}}
		if s, ok := g.Pick(func(id string) bool { return id == "b" }); !ok || s.ClientID != "b" {
			t.Fatalf("Pick = %+v %v", s, ok)
		}
	})
}

// TestSharedGroupPickRanked: preferred members are chosen over fit ones,
// fit ones over unfit ones, and the members chosen take turns evenly
// whichever members are passed over.
func TestSharedGroupPickRanked(t *testing.T) {
	x := NewIndex()
	members := []string{"w0", "w1", "w2", "w3", "w4"}
	for _, c := range members {
		x.Subscribe(Subscription{ClientID: c, Group: "g", Filter: "jobs/#"})
	}
	pick := func(ranks map[string]int) string {
		_, groups := x.Match("jobs/1", nil, nil)
		calls := map[string]int{}
		s, ok := groups[0].PickRanked(func(m *Subscription) int {
			calls[m.ClientID]++
			return ranks[m.ClientID]
		})
		if !ok {
			t.Fatal("PickRanked on a non-empty group returned false")
		}
		for id, n := range calls {
			if n > 1 {
				t.Fatalf("rank of %s asked %d times", id, n)
			}
		}
		return s.ClientID
	}
	for _, tc := range []struct {
		name  string
		ranks map[string]int
		want  []string // chosen evenly; the others never
	}{
		// w0 and w1 (adjacent) are over their marks: w2, w3 and w4 take
		// turns, w2 not twice as often as the others.
		{"preferred over fit", map[string]int{"w0": Fit, "w1": Fit, "w2": Preferred, "w3": Preferred, "w4": Preferred}, []string{"w2", "w3", "w4"}},
		{"preferred over unfit", map[string]int{"w1": Preferred, "w4": Preferred}, []string{"w1", "w4"}},
		{"fit over unfit", map[string]int{"w0": Fit, "w3": Fit}, []string{"w0", "w3"}},
		{"all preferred", map[string]int{"w0": Preferred, "w1": Preferred, "w2": Preferred, "w3": Preferred, "w4": Preferred}, members},
	} {
		t.Run(tc.name, func(t *testing.T) {
			counts := map[string]int{}
			rounds := 60 * len(tc.want)
			for range rounds {
				counts[pick(tc.ranks)]++
			}
			for _, id := range tc.want {
				if counts[id] < 60-1 || counts[id] > 60+1 {
					t.Fatalf("counts %v: want %v about 60 each", counts, tc.want)
				}
			}
		})
	}
	t.Run("none fit", func(t *testing.T) {
		counts := map[string]int{}
		for range 500 {
			counts[pick(nil)]++
		}
		if len(counts) != len(members) {
			t.Fatalf("with nobody fit the rotation should still spread: %v", counts)
		}
	})
	t.Run("empty", func(t *testing.T) {
		var g SharedGroup
		if _, ok := g.PickRanked(func(*Subscription) int { return Preferred }); ok {
			t.Fatal("PickRanked on an empty group returned ok")
		}
	})
}

func TestIndexMatchNoAlloc(t *testing.T) {
	x := NewIndex()
	for i := range 100 {
		x.Subscribe(Subscription{ClientID: fmt.Sprint("c", i), Filter: fmt.Sprintf("site/%d/+/temp", i%10)})
		x.Subscribe(Subscription{ClientID: fmt.Sprint("c", i), Filter: "site/#"})
		x.Subscribe(Subscription{ClientID: fmt.Sprint("c", i), Group: "g", Filter: "site/+/+/temp"})
	}
	dst := make([]Subscription, 0, 256)
	groups := make([]SharedGroup, 0, 8)
	allocs := testing.AllocsPerRun(100, func() {
		dst, groups = x.Match("site/3/dev7/temp", dst[:0], groups[:0])
	})
	if allocs != 0 {
		t.Fatalf("Match allocated %.1f times per call with capacity available", allocs)
	}
	if len(dst) != 110 || len(groups) != 1 || len(groups[0].Members) != 100 {
		t.Fatalf("Match returned %d subscriptions, %d groups", len(dst), len(groups))
	}
}

// TestIndexChurnBounded subscribes and unsubscribes random filters many
// times and checks that once everything is unsubscribed no trie node, no
// client record and no slot array is left: memory follows the live
// subscriptions, not the history.
func TestIndexChurnBounded(t *testing.T) {
	x := NewIndex()
	rng := rand.New(rand.NewPCG(1, 2))
	type key struct{ c, g, f string }
	live := map[key]bool{}
	maxNodes := 0
	for i := range 20000 {
		k := key{fmt.Sprint("c", rng.IntN(10)), "", randFilter(rng)}
		if rng.IntN(4) == 0 {
			k.g = fmt.Sprint("g", rng.IntN(3))
		}
		if live[k] {
			if !x.Unsubscribe(k.c, k.g, k.f) {
				t.Fatalf("Unsubscribe(%v) = false for a live subscription", k)
			}
			delete(live, k)
		} else {
			if x.Subscribe(Subscription{ClientID: k.c, Group: k.g, Filter: k.f}) {
				t.Fatalf("Subscribe(%v) reported existing", k)
			}
			live[k] = true
		}
		if i%2000 == 0 {
			if x.Count() != len(live) {
				t.Fatalf("Count = %d, want %d", x.Count(), len(live))
			}
			// The trie agrees with the model after arbitrary churn.
			for range 10 {
				tp := randTopic(rng)
				dst, groups := x.Match(tp, nil, nil)
				var got, want []string
				for _, s := range dst {
					got = append(got, s.ClientID+" "+s.Group+" "+s.Filter)
				}
				for _, g := range groups {
					for _, m := range g.Members {
						got = append(got, m.ClientID+" "+m.Group+" "+m.Filter)
					}
				}
				for k := range live {
					if refMatch(k.f, tp) {
						want = append(want, k.c+" "+k.g+" "+k.f)
					}
				}
				slices.Sort(got)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Fatalf("step %d: Match(%q) = %q, model %q", i, tp, got, want)
				}
			}
		}
		maxNodes = max(maxNodes, x.nodes)
	}
	t.Logf("peak trie nodes %d, live subscriptions before drain %d", maxNodes, len(live))
	for k := range live {
		if rng.IntN(2) == 0 {
			x.Unsubscribe(k.c, k.g, k.f)
		} else {
			x.UnsubscribeAll(k.c)
		}
	}
	if x.Count() != 0 || x.nodes != 0 || len(x.byClient)+len(x.subs) != 0 {
		t.Fatalf("after drain: count %d nodes %d clients %d", x.Count(), x.nodes, len(x.byClient)+len(x.subs))
	}
	if x.root.kids.len() != 0 || x.root.plus.Load() != nil || x.root.hash.Load() != nil {
		t.Fatal("root still has children")
	}
	n := 0
	x.root.kids.each(func(string, *node) bool { n++; return true })
	if n != 0 {
		t.Fatalf("root map still holds %d children", n)
	}
}

// TestSubListCompaction checks the slot array of one node under heavy
// churn: dead slots are reclaimed and the array shrinks.
func TestSubListCompaction(t *testing.T) {
	x := NewIndex()
	for i := range 1000 {
		x.Subscribe(Subscription{ClientID: fmt.Sprint(i), Filter: "fan/out"})
	}
	for i := range 990 {
		x.Unsubscribe(fmt.Sprint(i), "", "fan/out")
	}
	n := x.root.kids.load("fan").kids.load("out")
	a := n.subs.arr.Load()
	if len(a.slots) > 64 || n.subs.dead > n.subs.len() {
		t.Fatalf("slot array cap %d, dead %d, live %d after churn", len(a.slots), n.subs.dead, n.subs.len())
	}
	dst, _ := x.Match("fan/out", nil, nil)
	var ids []string
	for _, s := range dst {
		ids = append(ids, s.ClientID)
	}
	want := []string{"990", "991", "992", "993", "994", "995", "996", "997", "998", "999"}
	if !slices.Equal(ids, want) {
		t.Fatalf("Match after churn = %v", ids)
	}
}

// TestIndexConcurrent runs many Match calls while other goroutines
// subscribe and unsubscribe (run with -race). Stable subscriptions that
// exist for the whole test must be returned by every Match; churning ones
// must never be returned for a topic they do not match.
func TestIndexConcurrent(t *testing.T) {
	x := NewIndex()
	topics := []string{"a/b/c", "a/b", "a", "x/y/z", "$SYS/load", "a//c", "/"}
	for i, tp := range topics {
		x.Subscribe(Subscription{ClientID: fmt.Sprint("stable", i), Filter: tp})
		x.Subscribe(Subscription{ClientID: fmt.Sprint("stable", i), Group: "sg", Filter: tp})
	}
	var stop atomic.Bool
	var writers, readers sync.WaitGroup
	for w := range 4 {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			for i := 0; i < 3000; i++ {
				c := fmt.Sprint("churn", w, "-", rng.IntN(20))
				f := randFilter(rng)
				g := ""
				if rng.IntN(3) == 0 {
					g = "cg"
				}
				switch rng.IntN(5) {
				case 0:
					x.UnsubscribeAll(c)
				case 1, 2:
					x.Unsubscribe(c, g, f)
				default:
					x.Subscribe(Subscription{ClientID: c, Group: g, Filter: f, QoS: byte(rng.IntN(3))})
				}
			}
		})
	}
	for r := range 4 {
		readers.Go(func() {
			var dst []Subscription
			var groups []SharedGroup
			for i := 0; !stop.Load() || i < 100; i++ {
				tp := topics[(i+r)%len(topics)]
				dst, groups = x.Match(tp, dst[:0], groups[:0])
				found := false
				for _, s := range dst {
					if !MatchFilter(s.Filter, tp) {
						t.Errorf("Match(%q) returned %+v", tp, s)
						return
					}
					if strings.HasPrefix(s.ClientID, "stable") && s.Filter == tp {
						found = true
					}
				}
				if !found {
					t.Errorf("Match(%q) lost the stable subscription", tp)
					return
				}
				for _, g := range groups {
					if len(g.Members) == 0 || !MatchFilter(g.Filter, tp) {
						t.Errorf("Match(%q) returned group %+v", tp, g)
						return
					}
					g.Pick(func(string) bool { return true })
				}
			}
		})
	}
	writers.Wait()
	stop.Store(true)
	readers.Wait()
	// Remove churn and check the trie shrank back to the stable set.
	for w := range 4 {
		for i := range 20 {
			x.UnsubscribeAll(fmt.Sprint("churn", w, "-", i))
		}
	}
	for i := range topics {
		x.UnsubscribeAll(fmt.Sprint("stable", i))
	}
	if x.Count() != 0 || x.nodes != 0 {
		t.Fatalf("count %d nodes %d after removing everything", x.Count(), x.nodes)
	}
}

// levels used by the random generators: empty levels, '$' levels and
// near-duplicates exercise the rules that are easy to get wrong.
var randLevels = []string{"a", "b", "", "$SYS", "$x", "ab", "A"}

// wideLevels has more distinct levels than a node keeps in its single
// bucket, so the property tests also exercise the hashed table.
var wideLevels = append([]string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"}, randLevels...)

func randTopic(rng *rand.Rand) string { return randTopicFrom(rng, randLevels) }

func randFilter(rng *rand.Rand) string { return randFilterFrom(rng, randLevels) }

func randTopicFrom(rng *rand.Rand, levels []string) string {
	n := 1 + rng.IntN(4)
	parts := make([]string, n)
	for i := range parts {
		parts[i] = levels[rng.IntN(len(levels))]
	}
	return strings.Join(parts, "/")
}

func randFilterFrom(rng *rand.Rand, levels []string) string {
	n := 1 + rng.IntN(4)
	parts := make([]string, n)
	for i := range parts {
		switch rng.IntN(6) {
		case 0:
			parts[i] = "+"
		case 1:
			if i == n-1 {
				parts[i] = "#"
				continue
			}
			fallthrough
		default:
			parts[i] = levels[rng.IntN(len(levels))]
		}
	}
	return strings.Join(parts, "/")
}

// TestIndexMatchProperty compares Match with the brute-force reference
// matcher for random filters and topics.
func TestIndexMatchProperty(t *testing.T) {
	t.Run("narrow", func(t *testing.T) { testIndexMatchProperty(t, randLevels) })
	t.Run("wide", func(t *testing.T) { testIndexMatchProperty(t, wideLevels) })
}

func testIndexMatchProperty(t *testing.T, levels []string) {
	rng := rand.New(rand.NewPCG(42, 4242))
	for round := range 10 {
		x := NewIndex()
		var filters []string
		for i := range 300 {
			f := randFilterFrom(rng, levels)
			filters = append(filters, f)
			g := ""
			if i%5 == 0 {
				g = "g"
			}
			x.Subscribe(Subscription{ClientID: fmt.Sprint(i), Group: g, Filter: f})
		}
		if len(levels) > 2*smallKids && len(x.root.kids.t.Load().buckets) == 1 {
			t.Fatal("wide alphabet did not switch the root to a hashed table")
		}
		var dst []Subscription
		var groups []SharedGroup
		for range 200 {
			tp := randTopicFrom(rng, levels)
			dst, groups = x.Match(tp, dst[:0], groups[:0])
			var got []string
			for _, s := range dst {
				got = append(got, s.ClientID)
			}
			for _, g := range groups {
				for _, m := range g.Members {
					got = append(got, m.ClientID)
				}
			}
			var want []string
			for i, f := range filters {
				if refMatch(f, tp) {
					want = append(want, fmt.Sprint(i))
				}
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("round %d: Match(%q) = %v, reference %v", round, tp, got, want)
			}
		}
	}
}

func TestIndexInvalidFilterNoPanic(t *testing.T) {
	// The broker validates with packet.ValidTopicFilter first; the index
	// must still not panic on garbage, and '#' not at the end is literal.
	x := NewIndex()
	for _, f := range []string{"", "#/a", "a/#/b", "a+", "+#", "//", "$share/g/x"} {
		x.Subscribe(Subscription{ClientID: "c", Filter: f})
	}
	dst, _ := x.Match("a/x/b", nil, nil)
	if len(dst) != 0 {
		t.Fatalf("invalid filters matched: %+v", dst)
	}
	if n := x.UnsubscribeAll("c"); n != 7 || x.nodes != 0 {
		t.Fatalf("UnsubscribeAll = %d, nodes %d", n, x.nodes)
	}
}
