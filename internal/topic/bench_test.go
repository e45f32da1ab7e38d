package topic

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchFilter returns the i-th filter of the benchmark workload: a fleet
// of devices in 100 sites, 80% exact command subscriptions, 15% '+'
// subscriptions and 5% '#' subscriptions.
func benchFilter(i int) string {
	site := i % 100
	switch i % 20 {
	case 0:
		return fmt.Sprintf("fleet/%d/dev/%d/#", site, i)
	case 1, 2, 3:
		return fmt.Sprintf("fleet/%d/+/%d/state", site, i)
	default:
		return fmt.Sprintf("fleet/%d/dev/%d/cmd", site, i)
	}
}

func benchTopics(n int) []string {
	rng := rand.New(rand.NewPCG(1, 1))
	topics := make([]string, 1024)
	for i := range topics {
		d := rng.IntN(n)
		leaf := "cmd"
		if i%2 == 1 {
			leaf = "state"
		}
		topics[i] = fmt.Sprintf("fleet/%d/dev/%d/%s", d%100, d, leaf)
	}
	return topics
}

func benchIndex(n int) *Index {
	x := NewIndex()
	for i := range n {
		x.Subscribe(Subscription{ClientID: fmt.Sprint("dev", i), Filter: benchFilter(i), QoS: 1})
	}
	// A few shared backend consumers of all state messages.
	for i := range 4 {
		x.Subscribe(Subscription{ClientID: fmt.Sprint("backend", i), Group: "ingest", Filter: "fleet/+/dev/+/state"})
	}
	return x
}

func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		x := benchIndex(n)
		topics := benchTopics(n)
		b.Run(fmt.Sprintf("subs=%dk", n/1000), func(b *testing.B) {
			dst := make([]Subscription, 0, 64)
			groups := make([]SharedGroup, 0, 8)
			matched := 0
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				dst, groups = x.Match(topics[i&1023], dst[:0], groups[:0])
				matched += len(dst) + len(groups)
				i++
			}
			b.ReportMetric(float64(matched)/float64(i), "matches/op")
		})
		b.Run(fmt.Sprintf("subs=%dk/parallel", n/1000), func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				dst := make([]Subscription, 0, 64)
				groups := make([]SharedGroup, 0, 8)
				i := 0
				for pb.Next() {
					dst, groups = x.Match(topics[i&1023], dst[:0], groups[:0])
					i++
				}
			})
		})
	}
}

// BenchmarkMatchDuringChurn measures Match while another goroutine keeps
// subscribing and unsubscribing in the same index. The allocations shown
// are the churning goroutine's (Subscribe allocates); Match itself does not.
func BenchmarkMatchDuringChurn(b *testing.B) {
	const n = 100_000
	x := benchIndex(n)
	topics := benchTopics(n)
	churn := make([]Subscription, 1000)
	for i := range churn {
		churn[i] = Subscription{ClientID: fmt.Sprint("churn", i), Filter: benchFilter(i * 97)}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s := churn[i%len(churn)]
			x.Subscribe(s)
			x.Unsubscribe(s.ClientID, "", s.Filter)
		}
	}()
	dst := make([]Subscription, 0, 64)
	groups := make([]SharedGroup, 0, 8)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		dst, groups = x.Match(topics[i&1023], dst[:0], groups[:0])
		i++
	}
	b.StopTimer()
	close(stop)
	<-done
}

// BenchmarkMatchFanout measures a topic every subscriber wants (a fleet
// broadcast): the cost is copying the subscriptions out.
func BenchmarkMatchFanout(b *testing.B) {
	x := NewIndex()
	for i := range 10_000 {
		x.Subscribe(Subscription{ClientID: fmt.Sprint("dev", i), Filter: "fleet/broadcast"})
	}
	dst := make([]Subscription, 0, 10_000)
	b.ReportAllocs()
	for b.Loop() {
		dst, _ = x.Match("fleet/broadcast", dst[:0], nil)
	}
}

// BenchmarkSubscribe measures one Subscribe plus one Unsubscribe of a new
// filter in an index of 100k subscriptions (nodes are created and pruned).
func BenchmarkSubscribe(b *testing.B) {
	const n = 100_000
	x := benchIndex(n)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		f := benchFilter(n + i%n)
		x.Subscribe(Subscription{ClientID: "new", Filter: f})
		x.Unsubscribe("new", "", f)
		i++
	}
}

// BenchmarkSubscribeSameFilter adds subscribers to one filter: the cost per
// subscription stays flat as the set grows (amortized O(1)).
func BenchmarkSubscribeSameFilter(b *testing.B) {
	ids := make([]string, 100_000)
	for i := range ids {
		ids[i] = fmt.Sprint("dev", i)
	}
	b.ReportAllocs()
	var x *Index
	i := 0
	for b.Loop() {
		if i%len(ids) == 0 {
			x = NewIndex()
		}
		x.Subscribe(Subscription{ClientID: ids[i%len(ids)], Filter: "fleet/broadcast"})
		i++
	}
}

func benchRetained(n int) *Retained[int] {
	r := NewRetained[int]()
	for i := range n {
		r.Set(fmt.Sprintf("fleet/%d/dev/%d/state", i%100, i), i)
	}
	return r
}

func BenchmarkRetainedMatch(b *testing.B) {
	const n = 100_000
	r := benchRetained(n)
	for _, c := range []struct{ name, filter string }{
		{"exact", "fleet/42/dev/4242/state"},
		{"plus-1k", "fleet/42/dev/+/state"},
		{"hash-1k", "fleet/42/#"},
		{"all-100k", "#"},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			got := 0
			for b.Loop() {
				r.Match(c.filter, func(string, int) bool { got++; return true })
			}
		})
	}
}

func BenchmarkRetainedSet(b *testing.B) {
	const n = 100_000
	r := benchRetained(n)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r.Set(fmt.Sprintf("fleet/%d/dev/%d/state", i%100, i%n), i)
		i++
	}
}
