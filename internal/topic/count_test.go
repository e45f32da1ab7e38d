package topic

import "testing"

// TestSharedCount: shared members are counted apart among all
// subscriptions, through replacement, Unsubscribe and UnsubscribeAll.
func TestSharedCount(t *testing.T) {
	x := NewIndex()
	x.Subscribe(Subscription{ClientID: "a", Filter: "t/#"})
	x.Subscribe(Subscription{ClientID: "a", Filter: "t/#", Group: "g"})
	x.Subscribe(Subscription{ClientID: "b", Filter: "t/#", Group: "g"})
	x.Subscribe(Subscription{ClientID: "b", Filter: "t/#", Group: "g", QoS: 1}) // replaces
	if x.Count() != 3 || x.SharedCount() != 2 {
		t.Fatalf("count %d shared %d, want 3 and 2", x.Count(), x.SharedCount())
	}
	x.Unsubscribe("a", "g", "t/#")
	x.UnsubscribeAll("b")
	if x.Count() != 1 || x.SharedCount() != 0 {
		t.Fatalf("count %d shared %d, want 1 and 0", x.Count(), x.SharedCount())
	}
}
