package authn

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Bounds on what a credential (a token's claims, an introspection answer)
// may hand the broker as an identity or a list.
const (
	// MaxIdentityBytes is the longest username a backend accepts.
	MaxIdentityBytes = 1024
	// MaxListEntries is the most entries a group or topic list may hold;
	// a longer one refuses the credential rather than half-reading it.
	MaxListEntries = 256
)

// ValidIdentity reports whether s can be an MQTT username taken from a
// credential: valid UTF-8, no control character (C0, DEL, C1), at most
// MaxIdentityBytes.
func ValidIdentity(s string) bool {
	if len(s) > MaxIdentityBytes || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// StringList reads a decoded JSON value holding an array of strings (or,
// when spaces is true, one string of space-separated values, as OAuth's
// "scope"). nil is an empty list; any other type, or more than
// MaxListEntries entries, is an error naming what (e.g. `claim "groups"`).
func StringList(v any, what string, spaces bool) ([]string, error) {
	var out []string
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		if spaces {
			out = strings.Fields(v)
		} else {
			out = []string{v}
		}
	case []any:
		if len(v) > MaxListEntries {
			return nil, fmt.Errorf("%s has %d entries (at most %d)", what, len(v), MaxListEntries)
		}
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%s holds a %T; want strings", what, e)
			}
			out = append(out, s)
		}
	default:
		return nil, fmt.Errorf("%s holds a %T; want a list of strings", what, v)
	}
	if len(out) > MaxListEntries {
		return nil, fmt.Errorf("%s has %d entries (at most %d)", what, len(out), MaxListEntries)
	}
	return out, nil
}
