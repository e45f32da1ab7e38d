package jwt

import (
	"fmt"
	"strings"
	"unicode/utf8"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/moatmq/moat/internal/authn"
)

// maxIdentityBytes caps a username taken from a token.

// lookupClaim returns the claim called name, or, when there is none, the
// value reached by reading name as a dotted path into nested objects
// ("realm_access.roles").
func lookupClaim(c gojwt.MapClaims, name string) (any, bool) {
	if v, ok := c[name]; ok {
		return v, true
	}
	var cur any = map[string]any(c)
	for part := range strings.SplitSeq(name, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func claimString(c gojwt.MapClaims, name string) (string, bool) {
	v, ok := lookupClaim(c, name)
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	return s, ok
}

// claimList reads a claim holding an array of strings (or, when spaces is
// true, one string of space-separated values, as OAuth's "scope"). An
// absent claim is an empty list; a claim of another type, or with more
// than maxListEntries entries, is an error (the token is refused rather
// than half-read).
func claimList(c gojwt.MapClaims, name string, spaces bool) ([]string, error) {
	v, ok := lookupClaim(c, name)
	if !ok {
		return nil, nil
	}
	return authn.StringList(v, fmt.Sprintf("claim %q", name), spaces)
}

// validIdentity reports whether s can be an MQTT username.
func validIdentity(s string) bool { return authn.ValidIdentity(s) }

// substitute replaces %u with user and %c with clientID in the topic filter
// f and checks the result. An identity holding "+", "#" or "/" would widen
// the filter (user "#" turns "devices/%u/#" into "devices/#/#", user "a/b"
// reaches into user "a"'s tree), so the filter is dropped instead: why is
// then non-empty.
func substitute(f, user, clientID string) (out, why string) {
	if strings.Contains(f, "%u") {
		if user == "" || strings.ContainsAny(user, "+#/\x00") {
			return "", "username is empty or holds +, # or /"
		}
		f = strings.ReplaceAll(f, "%u", user)
	}
	if strings.Contains(f, "%c") {
		if clientID == "" || strings.ContainsAny(clientID, "+#/\x00") {
			return "", "client ID is empty or holds +, # or /"
		}
		f = strings.ReplaceAll(f, "%c", clientID)
	}
	if err := checkFilter(f); err != "" {
		return "", err
	}
	return f, ""
}

// checkFilter validates an MQTT topic filter [MQTT-4.7.1]: not empty, at
// most 65535 bytes, UTF-8 without NUL, "#" only as the whole last level,
// "+" only as a whole level.
func checkFilter(f string) string {
	if f == "" || len(f) > 65535 || !utf8.ValidString(f) || strings.ContainsRune(f, 0) {
		return "not a valid topic filter"
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return "\"#\" must be the whole last level"
		}
		if strings.Contains(l, "+") && l != "+" {
			return "\"+\" must be a whole level"
		}
	}
	return ""
}
