package cluster

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// TestPublishTopic: the topic read from a forwarded PUBLISH (as
// encodeMessage writes it) without decoding it is the decoded message's, for messages with and without
// properties, of any size up to a four-byte remaining length; truncated
// or foreign packets are refused.
func TestPublishTopic(t *testing.T) {
	t.Parallel()
	now := time.Now()
	props := &packet.Properties{}
	props.SetResponseTopic("reply/to")
	cases := []*broker.Message{
		broker.NewMessage(&packet.Publish{Topic: "a", QoS: 1, PacketID: 1}, "", now),
		broker.NewMessage(&packet.Publish{Topic: "dev/7/telemetry", Payload: []byte("x"), QoS: 2, PacketID: 1, Retain: true}, "p", now),
		broker.NewMessage(&packet.Publish{Topic: "$SYS/x", Payload: make([]byte, 200), QoS: 1, PacketID: 1, Properties: *props}, "", now),
		broker.NewMessage(&packet.Publish{Topic: strings.Repeat("t/", 300) + "end", Payload: make([]byte, 70000), QoS: 1, PacketID: 1}, "", now),
		broker.NewMessage(&packet.Publish{Topic: "big", Payload: make([]byte, 3<<20), QoS: 1, PacketID: 1}, "", now),
	}
	for i, m := range cases {
		pkt, err := encodeMessage(m, now)
		if err != nil {
			t.Fatal(err)
		}
		topic, ok := packet.PublishTopic(pkt)
		if !ok || string(topic) != m.Topic {
			t.Fatalf("case %d: %q %v, want %q", i, topic, ok, m.Topic)
		}
		for _, cut := range []int{0, 1, 2, 3, 4} {
			if cut < len(pkt) {
				if _, ok := packet.PublishTopic(pkt[:cut]); ok && cut < 4+len(m.Topic) {
					t.Fatalf("case %d: a packet cut at %d bytes gave a topic", i, cut)
				}
			}
		}
	}
	for _, b := range [][]byte{nil, {0x30}, {0x20, 2, 0, 0}, {0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, {0x30, 3, 0, 0, 0}, {0x30, 3, 0, 5, 'a'}} {
		if topic, ok := packet.PublishTopic(b); ok {
			t.Fatalf("%x gave topic %q", b, topic)
		}
	}
}

// TestReplayTopicMemoBounded: the replay's memo of the topics its
// wildcard filters match stops growing at maxReplayTopics and answers
// the topics past it all the same; a filter without wildcards matches
// its topic alone.
func TestReplayTopicMemoBounded(t *testing.T) {
	t.Parallel()
	rs := &replaySet{}
	rs.setFilters([]string{"dev/+/alarm", "dev/4999/#", "dev/17/telemetry"})
	for round := range 2 {
		for i := range maxReplayTopics + 1000 {
			for _, kind := range []string{"alarm", "telemetry"} {
				topic := "dev/" + strconv.Itoa(i) + "/" + kind
				want := kind == "alarm" || i == 4999 || i == 17
				if got := rs.matchTopic([]byte(topic)); got != want {
					t.Fatalf("round %d: %s matched %v, want %v", round, topic, got, want)
				}
			}
		}
		if len(rs.topics) != maxReplayTopics {
			t.Fatalf("the memo holds %d topics, want %d", len(rs.topics), maxReplayTopics)
		}
	}
}
