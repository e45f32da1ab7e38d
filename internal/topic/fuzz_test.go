package topic

import (
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/packet"
)

// FuzzMatch compares the subscription trie, the retained trie and
// MatchFilter with the brute-force reference matcher for one topic name and
// one filter. Invalid pairs (as packet validation would reject them) must
// still not panic.
func FuzzMatch(f *testing.F) {
	for _, c := range matchCases {
		f.Add(c.topic, c.filter)
	}
	f.Fuzz(func(t *testing.T, topic, filter string) {
		valid := packet.ValidTopicName(topic) == nil && packet.ValidTopicFilter(filter) == nil &&
			!strings.HasPrefix(filter, packet.SharePrefix)

		x := NewIndex()
		x.Subscribe(Subscription{ClientID: "c", Filter: filter})
		x.Subscribe(Subscription{ClientID: "s", Group: "g", Filter: filter})
		dst, groups := x.Match(topic, nil, nil)

		r := NewRetained[int]()
		r.Set(topic, 1)
		n := 0
		r.Match(filter, func(tp string, _ int) bool {
			if tp != topic {
				t.Fatalf("retained Match(%q) returned %q, only %q is stored", filter, tp, topic)
			}
			n++
			return true
		})
		got := MatchFilter(filter, topic)

		if x.UnsubscribeAll("c")+x.UnsubscribeAll("s") != 2 || x.nodes != 0 {
			t.Fatalf("index not empty after UnsubscribeAll: nodes %d", x.nodes)
		}
		if !r.Delete(topic) || r.nodes != 0 {
			t.Fatalf("retained not empty after Delete: nodes %d", r.nodes)
		}
		if !valid {
			return
		}
		want := refMatch(filter, topic)
		if got != want {
			t.Errorf("MatchFilter(%q, %q) = %v, reference %v", filter, topic, got, want)
		}
		if (len(dst) == 1) != want || len(dst) > 1 || (len(groups) == 1) != want || len(groups) > 1 {
			t.Errorf("Index.Match(%q) with filter %q: %d subs %d groups, reference %v", topic, filter, len(dst), len(groups), want)
		}
		if (n == 1) != want || n > 1 {
			t.Errorf("Retained.Match(%q) with topic %q: %d results, reference %v", filter, topic, n, want)
		}
	})
}
