package topic

import "strings"

// refMatch is the brute-force reference matcher used to check the tries:
// it splits both strings into levels and compares them one by one, written
// independently of MatchFilter and of the trie walks.
func refMatch(filter, topic string) bool {
	f := strings.Split(filter, "/")
	t := strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (f[0] == "+" || f[0] == "#") {
		return false
	}
	for i, fl := range f {
		if fl == "#" && i == len(f)-1 {
			return len(t) >= i // '#' also matches the parent level
		}
		if i >= len(t) {
			return false
		}
		if fl != "+" && fl != t[i] {
			return false
		}
	}
	return len(f) == len(t)
}
