package cluster

import (
	"encoding/base32"
	"errors"
	"strings"
)

// NATS subjects are dot-separated tokens that may not be empty or hold
// '.', '*', '>' or white space; MQTT topic levels may be empty and hold
// any of them. Each MQTT level therefore becomes one token: '_' followed
// by the level in base32 ("extended hex" alphabet 0-9A-V, no padding).
// '_' makes the empty level a token and can never be a wildcard; the
// alphabet has none of NATS's special characters and suits KV keys too.

// msgPrefix is the subject prefix of forwarded messages.
const msgPrefix = "moat.m."

var levelEnc = base32.HexEncoding.WithPadding(base32.NoPadding)

// appendLevel appends the token of one MQTT level.
func appendLevel(b []byte, level string) []byte {
	b = append(b, '_')
	return levelEnc.AppendEncode(b, []byte(level))
}

// topicTokens returns the tokens of an MQTT topic name joined by dots.
func topicTokens(topic string) string {
	b := make([]byte, 0, 2*len(topic)+8)
	for i, level := range strings.Split(topic, "/") {
		if i > 0 {
			b = append(b, '.')
		}
		b = appendLevel(b, level)
	}
	return string(b)
}

// topicSubject is the subject a message on topic is published on.
func topicSubject(topic string) string { return msgPrefix + topicTokens(topic) }

// filterSubjects returns the subjects a node subscribes to for an MQTT
// filter: '+' becomes '*', and a trailing '#' becomes '>' plus the parent
// level alone, which '#' also matches [MQTT-4.7.1-2] ("a/#" matches "a").
// The filter "#" is every topic: "moat.m.>".
func filterSubjects(filter string) []string {
	levels := strings.Split(filter, "/")
	b := make([]byte, 0, 2*len(filter)+16)
	b = append(b, msgPrefix...)
	for i, level := range levels {
		switch level {
		case "#":
			if i == 0 {
				return []string{string(append(b, '>'))}
			}
			parent := string(b[:len(b)-1]) // without the trailing dot
			return []string{parent, string(append(b, '>'))}
		case "+":
			b = append(b, '*')
		default:
			b = appendLevel(b, level)
		}
		if i < len(levels)-1 {
			b = append(b, '.')
		}
	}
	return []string{string(b)}
}

var errToken = errors.New("cluster: malformed subject token")

// tokensTopic decodes dot-joined tokens back to the MQTT topic.
func tokensTopic(tokens string) (string, error) {
	var sb strings.Builder
	for i, tok := range strings.Split(tokens, ".") {
		if len(tok) == 0 || tok[0] != '_' {
			return "", errToken
		}
		level, err := levelEnc.DecodeString(tok[1:])
		if err != nil {
			return "", errToken
		}
		if i > 0 {
			sb.WriteByte('/')
		}
		sb.Write(level)
	}
	return sb.String(), nil
}

// keyOf is the KV key of a string (a client ID): one token.
func keyOf(s string) string { return string(appendLevel(nil, s)) }

// keyString decodes keyOf.
func keyString(key string) (string, error) {
	if len(key) == 0 || key[0] != '_' {
		return "", errToken
	}
	b, err := levelEnc.DecodeString(key[1:])
	if err != nil {
		return "", errToken
	}
	return string(b), nil
}
