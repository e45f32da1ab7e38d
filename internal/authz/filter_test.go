package authz

import (
	"strings"
	"testing"
)

func TestValidFilter(t *testing.T) {
	for _, f := range []string{"a", "#", "+", "a/+/b", "a/#", "/", "a//b", "$SYS/#", "+/+", strings.Repeat("a/", 200) + "a"} {
		if err := ValidFilter(f); err != nil {
			t.Errorf("ValidFilter(%q) = %v, want nil", f, err)
		}
	}
	for _, f := range []string{"", "a+", "a/#/b", "#a", "a/b#", "+a/b", "a\x00", "\xff", strings.Repeat("a/", 201) + "a", strings.Repeat("x", 65536)} {
		if ValidFilter(f) == nil {
			t.Errorf("ValidFilter(%q) = nil, want an error", clip(f))
		}
	}
}

func TestMatchFilter(t *testing.T) {
	for _, c := range []struct {
		f, t string
		want bool
	}{
		{"a/b", "a/b", true},
		{"a/+", "a/b", true},
		{"a/+", "a", false},
		{"a/+", "a/", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/+/#", "a/b", true},
		{"a/+/#", "a", false},
		{"#", "$SYS/x", false},       // [MQTT-4.7.2-1]
		{"+/x", "$SYS/x", false},     // [MQTT-4.7.2-1]
		{"$SYS/#", "$SYS/x", true},   // explicit
		{"$SYS/#", "$SYSx", false},   // a different level
		{"+", "", false},             // no topic
		{"a/b", "a/b/c", false},      // longer topic
		{"/+", "/x", true},           // empty first level
		{"+/+", "/", true},           // two empty levels
		{"a/b/c", "a/b", false},      // shorter topic
		{"sport/#", "sportx", false}, // not a level boundary
		{"sport/+", "sport/x/y", false},
	} {
		if got := MatchFilter(c.f, c.t); got != c.want {
			t.Errorf("MatchFilter(%q, %q) = %v, want %v", c.f, c.t, got, c.want)
		}
	}
}

// universe enumerates topic names and filters over a small alphabet so that
// Intersects, Intersection and Covers can be checked against brute force.
func universe(levels []string, depth int) []string {
	var out []string
	var walk func(prefix string, d int)
	walk = func(prefix string, d int) {
		for _, l := range levels {
			s := l
			if d > 0 {
				s = prefix + "/" + l
			}
			out = append(out, s)
			if d+1 < depth {
				walk(s, d+1)
			}
		}
	}
	walk("", 0)
	return out
}

func TestFilterAlgebraAgainstBruteForce(t *testing.T) {
	topics := universe([]string{"a", "b", "$s", "", "z"}, 5)
	var filters []string
	for _, f := range universe([]string{"a", "$s", "", "+", "#"}, 3) {
		if ValidFilter(f) == nil {
			filters = append(filters, f)
		}
	}
	matches := make(map[string][]bool, len(filters))
	for _, f := range filters {
		m := make([]bool, len(topics))
		for i, tp := range topics {
			m[i] = MatchFilter(f, tp)
		}
		matches[f] = m
	}
	for _, a := range filters {
		for _, b := range filters {
			ma, mb := matches[a], matches[b]
			both, covered := false, true
			for i := range topics {
				if ma[i] && mb[i] {
					both = true
				}
				if mb[i] && !ma[i] {
					covered = false
				}
			}
			if got := Intersects(a, b); got != both {
				t.Fatalf("Intersects(%q, %q) = %v, brute force %v", a, b, got, both)
			}
			if got := Covers(a, b); got != covered {
				t.Fatalf("Covers(%q, %q) = %v, brute force %v", a, b, got, covered)
			}
			in, ok := Intersection(a, b)
			if !ok {
				continue
			}
			if err := ValidFilter(in); err != nil {
				t.Fatalf("Intersection(%q, %q) = %q, not a valid filter: %v", a, b, in, err)
			}
			for i, tp := range topics {
				if MatchFilter(in, tp) != (ma[i] && mb[i]) {
					t.Fatalf("Intersection(%q, %q) = %q; on %q it says %v, the filters %v and %v", a, b, in, tp, MatchFilter(in, tp), ma[i], mb[i])
				}
			}
		}
	}
}

func TestSplitShared(t *testing.T) {
	for _, c := range []struct{ in, g, f string }{
		{"$share/g/a/b", "g", "a/b"},
		{"$share/g/#", "g", "#"},
		{"$share/g", "", "$share/g"},
		{"$share//a", "", "$share//a"},
		{"a/b", "", "a/b"},
	} {
		if g, f := SplitShared(c.in); g != c.g || f != c.f {
			t.Errorf("SplitShared(%q) = %q, %q; want %q, %q", c.in, g, f, c.g, c.f)
		}
	}
}
