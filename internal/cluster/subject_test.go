package cluster

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

func TestTopicTokensRoundTrip(t *testing.T) {
	t.Parallel()
	for _, topic := range []string{"a", "a/b", "/", "//", "a/", "/a", "a.b/*/>", "with space/tab\t", "ünï/кириллица/日本", "$SYS/x", "#+"} {
		tok := topicTokens(topic)
		if strings.ContainsAny(tok, " \t*>") || strings.Contains(tok, "..") || strings.HasPrefix(tok, ".") || strings.HasSuffix(tok, ".") {
			t.Errorf("%q: token %q is not a valid literal subject", topic, tok)
		}
		back, err := tokensTopic(tok)
		if err != nil || back != topic {
			t.Errorf("%q: round trip gave %q, %v", topic, back, err)
		}
	}
}

func TestFilterSubjects(t *testing.T) {
	t.Parallel()
	a, b := topicTokens("a"), topicTokens("b")
	for _, tc := range []struct {
		filter string
		want   []string
	}{
		{"#", []string{"moat.m.>"}},
		{"a/#", []string{"moat.m." + a, "moat.m." + a + ".>"}},
		{"a/+/b", []string{"moat.m." + a + ".*." + b}},
		{"+", []string{"moat.m.*"}},
		{"a/b", []string{"moat.m." + a + "." + b}},
	} {
		if got := filterSubjects(tc.filter); !slices.Equal(got, tc.want) {
			t.Errorf("%q: %v, want %v", tc.filter, got, tc.want)
		}
	}
}

func FuzzDecodeRetained(f *testing.F) {
	now := time.Unix(1e9, 0)
	good, err := encodeRetained(retainedRecord{origin: "n1/00", pub: &broker.StoredPublisher{ClientID: "c", Username: "u"},
		msg: broker.NewMessage(&packet.Publish{Topic: "a/b", Payload: []byte("x"), QoS: 1, PacketID: 1}, "c", now)}, now)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRetained(b, now)
		if err != nil {
			return
		}
		again, err := encodeRetained(r, now)
		if err != nil {
			t.Fatalf("re-encoding a decoded record: %v", err)
		}
		r2, err := decodeRetained(again, now)
		if err != nil || r2.msg.Topic != r.msg.Topic || string(r2.msg.Payload) != string(r.msg.Payload) || r2.origin != r.origin {
			t.Fatalf("decode → encode → decode changed the record: %v", err)
		}
	})
}
