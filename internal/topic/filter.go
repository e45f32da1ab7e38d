package topic

import "strings"

// MatchFilter reports whether the topic name matches the topic filter
// according to MQTT section 4.7. The filter must not carry a $share/{group}/
// prefix (strip it with packet.SplitShared). It does not allocate. '#' is a
// wildcard only as the whole last level; elsewhere it is compared literally,
// as are levels like "a+" that a valid filter never contains.
func MatchFilter(filter, topic string) bool {
	if wildFirst(filter) && strings.HasPrefix(topic, "$") {
		return false // [MQTT-4.7.2-1]
	}
	for {
		fl, frest, fmore := cutLevel(filter)
		if fl == "#" && !fmore {
			return true // matches the parent level and every child level [MQTT-4.7.1-2]
		}
		tl, trest, tmore := cutLevel(topic)
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			// The topic ends; only a trailing "#" level can still match
			// ("sport/#" matches "sport").
			return frest == "#"
		case !fmore:
			return false
		}
		filter, topic = frest, trest
	}
}

// wildFirst reports whether the filter's first level is a wildcard.
func wildFirst(filter string) bool {
	return filter == "#" || filter == "+" || strings.HasPrefix(filter, "+/")
}

// cutLevel returns the first level of s, the rest after the separator and
// whether a separator was found (so "a/" yields "a", "", true: an empty
// level follows).
func cutLevel(s string) (level, rest string, more bool) {
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}
