package topic

import (
	"fmt"
	"slices"
	"testing"
)

// matchCases are the matching examples of MQTT 3.1.1 and 5.0 section 4.7
// plus edge cases around empty levels and '$' topics. Every case is run
// against MatchFilter, the subscription Index and the Retained index.
var matchCases = []struct {
	clause string
	filter string
	topic  string
	want   bool
}{
	// 4.7.1.2 multi-level wildcard.
	{"MQTT-4.7.1-2", "sport/tennis/player1/#", "sport/tennis/player1", true},
	{"MQTT-4.7.1-2", "sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
	{"MQTT-4.7.1-2", "sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
	{"MQTT-4.7.1-2", "sport/tennis/player1/#", "sport/tennis/player2", false},
	{"MQTT-4.7.1-2", "sport/#", "sport", true},
	{"MQTT-4.7.1-2", "sport/#", "sport/", true},
	{"MQTT-4.7.1-2", "sport/#", "sports", false},
	{"MQTT-4.7.1-2", "#", "sport", true},
	{"MQTT-4.7.1-2", "#", "/", true},
	{"MQTT-4.7.1-2", "#", "a/b/c/d/e/f", true},
	{"MQTT-4.7.1-2", "a/b/#", "a", false},
	// 4.7.1.3 single-level wildcard.
	{"MQTT-4.7.1-3", "sport/tennis/+", "sport/tennis/player1", true},
	{"MQTT-4.7.1-3", "sport/tennis/+", "sport/tennis/player2", true},
	{"MQTT-4.7.1-3", "sport/tennis/+", "sport/tennis/player1/ranking", false},
	{"MQTT-4.7.1-3", "sport/+", "sport", false},
	{"MQTT-4.7.1-3", "sport/+", "sport/", true},
	{"MQTT-4.7.1-3", "+", "sport", true},
	{"MQTT-4.7.1-3", "+", "/finance", false},
	{"MQTT-4.7.1-3", "+/+", "/finance", true},
	{"MQTT-4.7.1-3", "/+", "/finance", true},
	{"MQTT-4.7.1-3", "+/tennis/#", "sport/tennis/player1", true},
	{"MQTT-4.7.1-3", "sport/+/player1", "sport/tennis/player1", true},
	{"MQTT-4.7.1-3", "+/+/+", "a//", true},
	{"MQTT-4.7.1-3", "+/#", "a", true},
	{"MQTT-4.7.1-3", "+/+/#", "a", false},
	// 4.7.2 topics beginning with '$'.
	{"MQTT-4.7.2-1", "#", "$SYS/broker/clients", false},
	{"MQTT-4.7.2-1", "#", "$SYS", false},
	{"MQTT-4.7.2-1", "+/monitor/Clients", "$SYS/monitor/Clients", false},
	{"MQTT-4.7.2-1", "+", "$SYS", false},
	{"MQTT-4.7.2-1", "+/#", "$SYS/x", false},
	{"MQTT-4.7.2-1", "$SYS/#", "$SYS/monitor/Clients", true},
	{"MQTT-4.7.2-1", "$SYS/#", "$SYS", true},
	{"MQTT-4.7.2-1", "$SYS/monitor/+", "$SYS/monitor/Clients", true},
	{"MQTT-4.7.2-1", "$SYS/+/Clients", "$SYS/monitor/Clients", true},
	{"MQTT-4.7.2-1", "a/#", "a/$SYS", true},
	{"MQTT-4.7.2-1", "+/$x", "a/$x", true},
	// 4.7.3 no normalization: case, empty levels and spaces are significant.
	{"MQTT-4.7.3-4", "ACCOUNTS", "Accounts", false},
	{"MQTT-4.7.3-4", "a/b", "a//b", false},
	{"MQTT-4.7.3-4", "a//b", "a//b", true},
	{"MQTT-4.7.3-4", "a/+/b", "a//b", true},
	{"MQTT-4.7.3-4", "/a", "a", false},
	{"MQTT-4.7.3-4", "/a", "/a", true},
	{"MQTT-4.7.3-4", "a/", "a", false},
	{"MQTT-4.7.3-4", "a", "a/", false},
	{"MQTT-4.7.3-4", "/", "/", true},
	{"MQTT-4.7.3-4", "+/+", "/", true},
	{"MQTT-4.7.3-4", "a b/c", "a b/c", true},
	{"MQTT-4.7.3-4", "ü/ß", "ü/ß", true},
	{"MQTT-4.7.3-4", "a/b", "a/b/c", false},
	{"MQTT-4.7.3-4", "a/b/c", "a/b", false},
}

func caseName(i int, c struct {
	clause string
	filter string
	topic  string
	want   bool
}) string {
	return fmt.Sprintf("%02d_%s/%q~%q", i, c.clause, c.filter, c.topic)
}

func TestMatchFilter(t *testing.T) {
	for i, c := range matchCases {
		t.Run(caseName(i, c), func(t *testing.T) {
			if got := MatchFilter(c.filter, c.topic); got != c.want {
				t.Errorf("MatchFilter(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
			}
			if got := refMatch(c.filter, c.topic); got != c.want {
				t.Errorf("reference matcher(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
			}
		})
	}
}

func TestIndexMatchSpec(t *testing.T) {
	for i, c := range matchCases {
		t.Run(caseName(i, c), func(t *testing.T) {
			x := NewIndex()
			x.Subscribe(Subscription{ClientID: "c", Filter: c.filter, QoS: 1})
			x.Subscribe(Subscription{ClientID: "s", Group: "g", Filter: c.filter})
			dst, groups := x.Match(c.topic, nil, nil)
			if got := len(dst) == 1; got != c.want || len(dst) > 1 {
				t.Errorf("Match(%q) with filter %q: %d subscriptions, want match=%v", c.topic, c.filter, len(dst), c.want)
			}
			if got := len(groups) == 1; got != c.want || len(groups) > 1 {
				t.Errorf("Match(%q) with shared filter %q: %d groups, want match=%v", c.topic, c.filter, len(groups), c.want)
			}
			if c.want && (dst[0] != Subscription{ClientID: "c", Filter: c.filter, QoS: 1}) {
				t.Errorf("Match returned %+v", dst[0])
			}
		})
	}
}

func TestRetainedMatchSpec(t *testing.T) {
	for i, c := range matchCases {
		t.Run(caseName(i, c), func(t *testing.T) {
			r := NewRetained[int]()
			r.Set(c.topic, 7)
			r.Set(c.topic+"/x/y", 8) // a deeper topic must not disturb the answer
			var got []string
			r.Match(c.filter, func(topic string, msg int) bool {
				got = append(got, topic)
				return true
			})
			want := c.want
			if has := slices.Contains(got, c.topic); has != want {
				t.Errorf("Match(%q) = %q, want %q included: %v", c.filter, got, c.topic, want)
			}
			for _, tp := range got {
				if !refMatch(c.filter, tp) {
					t.Errorf("Match(%q) returned non-matching %q", c.filter, tp)
				}
			}
		})
	}
}
