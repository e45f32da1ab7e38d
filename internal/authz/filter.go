package authz

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Limits on topics in policies, as MQTT and Mosquitto have them.
const (
	maxTopicLen    = 65535 // MQTT UTF-8 string limit
	maxTopicLevels = 201   // Mosquitto refuses filters with more than 200 separators
)

// ValidFilter reports whether f is a valid MQTT topic filter: not empty,
// valid UTF-8 without U+0000, at most 65,535 bytes and 201 levels, '+' only
// as a whole level and '#' only as the whole last level.
func ValidFilter(f string) error {
	if f == "" {
		return errors.New("empty topic filter")
	}
	if len(f) > maxTopicLen {
		return errors.New("topic filter longer than 65535 bytes")
	}
	if !utf8.ValidString(f) || strings.IndexByte(f, 0) >= 0 {
		return errors.New("topic filter is not valid UTF-8 or contains U+0000")
	}
	if strings.Count(f, "/") >= maxTopicLevels {
		return errors.New("topic filter has more than 201 levels")
	}
	rest := f
	for {
		l, r, more := cutLevel(rest)
		if l != "+" && l != "#" && strings.ContainsAny(l, "+#") {
			return errors.New("'+' and '#' must stand alone in a topic level")
		}
		if l == "#" && more {
			return errors.New("'#' must be the last topic level")
		}
		if !more {
			return nil
		}
		rest = r
	}
}

// MatchFilter reports whether topic name t matches filter f (MQTT 4.7): '+'
// matches one level, a trailing '#' the parent level and any number of
// levels below it, and a filter whose first level is a wildcard never
// matches a topic that starts with '$' [MQTT-4.7.2-1]. It does not allocate.
func MatchFilter(f, t string) bool {
	if t == "" || f == "" {
		return false
	}
	if t[0] == '$' && wildFirst(f) {
		return false
	}
	for {
		fl, frest, fmore := cutLevel(f)
		if fl == "#" && !fmore {
			return true
		}
		tl, trest, tmore := cutLevel(t)
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			return frest == "#"
		case !fmore:
			return false
		}
		f, t = frest, trest
	}
}

// Intersects reports whether some topic name matches both filters a and b:
// whether a subscription to b can ever be sent a message that a covers. Both
// must be valid filters.
func Intersects(a, b string) bool {
	_, ok := Intersection(a, b)
	return ok
}

// Intersection returns the filter that matches exactly the topic names both
// a and b match, and false when there are none. Both must be valid filters.
func Intersection(a, b string) (string, bool) {
	if a == "" || b == "" || dollarClash(a, b) {
		return "", false
	}
	var out strings.Builder
	first := true
	add := func(l string) {
		if !first {
			out.WriteByte('/')
		}
		first = false
		out.WriteString(l)
	}
	for {
		al, arest, amore := cutLevel(a)
		bl, brest, bmore := cutLevel(b)
		switch {
		case al == "#":
			add(b)
			return out.String(), true
		case bl == "#":
			add(a)
			return out.String(), true
		case al == "+":
			add(bl)
		case bl == "+" || al == bl:
			add(al)
		default:
			return "", false
		}
		switch {
		case !amore && !bmore:
			return out.String(), true
		case !amore:
			// a ends here; only a trailing '#' of b matches no further
			// level. The empty string is no topic name.
			return out.String(), brest == "#" && out.Len() > 0
		case !bmore:
			return out.String(), arest == "#" && out.Len() > 0
		}
		a, b = arest, brest
	}
}

// Covers reports whether filter d matches every topic name that filter f
// matches. Both must be valid filters.
func Covers(d, f string) bool {
	if d == "" || f == "" {
		return false
	}
	if wildFirst(d) && f[0] == '$' {
		return false // f matches '$' topics that d cannot
	}
	// noParent: the levels passed so far form the empty string, which is
	// no topic name, so a '#' of f matches no "parent" topic here.
	noParent := true
	for i := 0; ; i++ {
		dl, drest, dmore := cutLevel(d)
		fl, frest, fmore := cutLevel(f)
		if dl == "#" {
			return true
		}
		if fl == "#" {
			// f matches every deeper level, and its parent topic if
			// there is one; d covers that only as "+/#" with no parent.
			return noParent && dl == "+" && dmore && drest == "#"
		}
		if dl != "+" && dl != fl {
			return false
		}
		switch {
		case !dmore && !fmore:
			return true
		case !fmore:
			return drest == "#"
		case !dmore:
			return false
		}
		noParent = i == 0 && fl == ""
		d, f = drest, frest
	}
}

// dollarClash reports whether one filter starts with a wildcard level and
// the other with a '$' level: no topic matches both.
func dollarClash(a, b string) bool {
	return (wildFirst(a) && b[0] == '$') || (wildFirst(b) && a[0] == '$')
}

// wildFirst reports whether a filter's first level is a wildcard.
func wildFirst(f string) bool {
	return f == "#" || f == "+" || strings.HasPrefix(f, "+/")
}

// cutLevel returns the first level of s, the rest after the separator and
// whether a separator was found.
func cutLevel(s string) (level, rest string, more bool) {
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}
