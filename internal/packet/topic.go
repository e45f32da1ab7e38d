package packet

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Topic name and filter errors, wrapped by the Valid* functions.
var (
	ErrTopicEmpty    = errors.New("packet: topic is empty")
	ErrTopicTooLong  = errors.New("packet: topic longer than 65535 bytes")
	ErrTopicUTF8     = errors.New("packet: topic is not well-formed UTF-8 or contains U+0000")
	ErrTopicWildcard = errors.New("packet: wildcard in topic name")
	ErrFilterSyntax  = errors.New("packet: invalid wildcard placement in topic filter")
	ErrShareSyntax   = errors.New("packet: invalid shared subscription filter")
)

// SharePrefix starts a shared subscription filter: $share/{group}/{filter}.
const SharePrefix = "$share/"

// ValidString reports whether s satisfies the MQTT UTF-8 string rules that
// a receiver must enforce: well-formed UTF-8 (which excludes surrogates) and
// no U+0000 [MQTT-1.5.4-1] [MQTT-1.5.4-2], at most 65535 bytes.
func ValidString(s string) bool {
	if len(s) > 65535 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 0 {
			return false
		}
		if c >= utf8.RuneSelf {
			return utf8.ValidString(s[i:]) && strings.IndexByte(s[i:], 0) < 0
		}
	}
	return true
}

// ValidTopicName checks a topic name used in PUBLISH or a will: non-empty
// [MQTT-4.7.3-1], no wildcards [MQTT-4.7.0-1], valid UTF-8 string.
func ValidTopicName(s string) error {
	if s == "" {
		return ErrTopicEmpty
	}
	if len(s) > 65535 {
		return ErrTopicTooLong
	}
	if !ValidString(s) {
		return ErrTopicUTF8
	}
	if strings.ContainsAny(s, "+#") {
		return ErrTopicWildcard
	}
	return nil
}

// ValidTopicFilter checks a topic filter used in SUBSCRIBE or UNSUBSCRIBE,
// including the $share/{group}/{filter} form: '#' only as the last level
// and alone in it [MQTT-4.7.1-2], '+' alone in its level [MQTT-4.7.1-3].
func ValidTopicFilter(s string) error {
	if s == "" {
		return ErrTopicEmpty
	}
	if len(s) > 65535 {
		return ErrTopicTooLong
	}
	if !ValidString(s) {
		return ErrTopicUTF8
	}
	if strings.HasPrefix(s, SharePrefix) {
		_, f, err := SplitShared(s)
		if err != nil {
			return err
		}
		s = f
	}
	return validFilterLevels(s)
}

func validFilterLevels(s string) error {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '#':
			if i != len(s)-1 || (i > 0 && s[i-1] != '/') {
				return ErrFilterSyntax
			}
		case '+':
			if (i > 0 && s[i-1] != '/') || (i < len(s)-1 && s[i+1] != '/') {
				return ErrFilterSyntax
			}
		}
	}
	return nil
}

// SplitShared splits "$share/group/filter" into group and filter. The group
// must be non-empty without '/', '+' or '#' and the filter must be a valid
// non-empty filter [MQTT-4.8.2-1] [MQTT-4.8.2-2]. For a filter without the
// prefix it returns group "" and the filter unchanged.
func SplitShared(s string) (group, filter string, err error) {
	if !strings.HasPrefix(s, SharePrefix) {
		return "", s, nil
	}
	rest := s[len(SharePrefix):]
	i := strings.IndexByte(rest, '/')
	if i <= 0 {
		return "", "", ErrShareSyntax
	}
	group, filter = rest[:i], rest[i+1:]
	if strings.ContainsAny(group, "+#") || filter == "" {
		return "", "", ErrShareSyntax
	}
	if err := validFilterLevels(filter); err != nil {
		return "", "", err
	}
	return group, filter, nil
}
