package cluster

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/packet"
)

// v5Props are the properties TestV5FeaturesAcrossNodes publishes with:
// every one a message carries to its subscribers, user properties with
// a repeated key and out of order, and a message expiry.
func v5Props() client.Properties {
	var p client.Properties
	p.SetPayloadFormat(1)
	p.SetContentType("application/json")
	p.SetResponseTopic("v5x/reply")
	p.SetCorrelationData([]byte{0, 1, 2, 255})
	p.User = []packet.UserProperty{{Key: "b", Value: "2"}, {Key: "a", Value: "1"}, {Key: "a", Value: "0"}}
	p.SetMessageExpiry(600)
	return p
}

// checkV5 fails unless m carries v5Props, a message expiry counted down
// from 600 but not to 0, and exactly the subscription identifiers ids.
func checkV5(t *testing.T, what string, m *client.Message, ids ...uint32) {
	t.Helper()
	want, got := v5Props(), m.Properties
	if !got.Has(packet.PropPayloadFormat) || got.PayloadFormat != 1 || got.ContentType != want.ContentType ||
		got.ResponseTopic != want.ResponseTopic || !bytes.Equal(got.CorrelationData, want.CorrelationData) ||
		!slices.Equal(got.User, want.User) {
		t.Errorf("%s: properties %+v, want those published, %+v", what, got, want)
	}
	if !got.Has(packet.PropMessageExpiry) || got.MessageExpiry == 0 || got.MessageExpiry > 600 {
		t.Errorf("%s: message expiry %d (present %v), want 1 to 600", what, got.MessageExpiry, got.Has(packet.PropMessageExpiry))
	}
	gotIDs := slices.Sorted(slices.Values(got.SubscriptionIDs))
	if !slices.Equal(gotIDs, ids) {
		t.Errorf("%s: subscription identifiers %v, want %v", what, gotIDs, ids)
	}
}

// nextNonProbe returns the next message of c that is not a probe.
func nextNonProbe(t *testing.T, c *client.Client, what string) *client.Message {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-c.Messages():
			if !isProbe(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("%s: nothing arrived", what)
		}
	}
}

// TestV5FeaturesAcrossNodes: what MQTT 5 gives a message and a
// subscription holds across nodes as on one, on each path a message
// takes: QoS 0 through core NATS, QoS 1 and 2 through the durable
// stream, and a message replayed to a session that moved while it was
// offline. The publisher on n1 uses topic aliases; the subscriber on n2
// has two overlapping subscriptions with identifiers (7 on v5x/#, with
// Retain As Published; 9 on v5x/+/b). Each message arrives once with
// both identifiers, the publisher's properties (user properties in
// order), its message expiry counted down, and its topic in full; a
// message published with the retain flag keeps it for the subscription
// with Retain As Published.
func TestV5FeaturesAcrossNodes(t *testing.T) {
	nodes := commonCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub, _ := dialSession(t, nodes[1].addr, "v5x-sub", client.V5)
	for _, s := range []struct {
		id  uint32
		sub client.Subscription
	}{
		{7, client.Subscription{Filter: "v5x/#", QoS: 2, RetainAsPublished: true}},
		{9, client.Subscription{Filter: "v5x/+/b", QoS: 2}},
	} {
		var p client.Properties
		p.AddSubscriptionID(s.id)
		if codes, err := sub.SubscribeWith(ctx, p, s.sub); err != nil || len(codes) != 1 || codes[0] != 2 {
			t.Fatalf("subscribe %s: %v %v", s.sub.Filter, codes, err)
		}
	}
	pub, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[0].addr}, ClientID: "v5x-pub", CleanStart: true,
		TopicAliases: true})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	awaitRoute(t, pub, sub, "v5x/probe")
	for _, qos := range []byte{0, 1, 2} {
		topic := "v5x/q" + string('0'+qos) + "/b"
		// Twice: the second time the publisher sends the topic's alias
		// only.
		for i := range 2 {
			if err := pub.Publish(ctx, &client.Message{Topic: topic, QoS: qos, Payload: []byte{byte(i)}, Properties: v5Props()}); err != nil {
				t.Fatal(err)
			}
			m := nextNonProbe(t, sub, topic)
			if m.Topic != topic || !bytes.Equal(m.Payload, []byte{byte(i)}) || m.QoS != qos || m.Retain {
				t.Fatalf("%s: got %s %q QoS %d retain %v", topic, m.Topic, m.Payload, m.QoS, m.Retain)
			}
			checkV5(t, topic, m, 7, 9)
		}
	}
	// Retain As Published, on a topic only subscription 7 matches.
	if err := pub.Publish(ctx, &client.Message{Topic: "v5x/ret", QoS: 1, Retain: true, Payload: []byte("r"), Properties: v5Props()}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Cleared for the tests after this one; bounded, so that a
		// cluster left broken fails them rather than hang here.
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		_ = pub.Publish(cctx, &client.Message{Topic: "v5x/ret", QoS: 1, Retain: true})
	}()
	m := nextNonProbe(t, sub, "v5x/ret")
	if m.Topic != "v5x/ret" || !m.Retain {
		t.Fatalf("v5x/ret: got %s retain %v, want the retain flag as published", m.Topic, m.Retain)
	}
	checkV5(t, "v5x/ret", m, 7)
	// Offline, then resumed on n3: the message comes from the replay.
	disconnect(t, sub)
	if err := pub.Publish(ctx, &client.Message{Topic: "v5x/off/b", QoS: 1, Payload: []byte("o"), Properties: v5Props()}); err != nil {
		t.Fatal(err)
	}
	moved, present := dialSession(t, nodes[2].addr, "v5x-sub", client.V5)
	if !present {
		t.Fatal("the session was not present on n3")
	}
	m = nextNonProbe(t, moved, "v5x/off/b")
	if m.Topic != "v5x/off/b" || string(m.Payload) != "o" || m.QoS != 1 {
		t.Fatalf("v5x/off/b: got %s %q QoS %d", m.Topic, m.Payload, m.QoS)
	}
	checkV5(t, "v5x/off/b (replayed)", m, 7, 9)
	// The session ends with this test: the common cluster keeps no
	// session of it.
	if err := moved.Close(); err != nil {
		t.Log(err)
	}
	end, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[2].addr}, ClientID: "v5x-sub", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	disconnect(t, end)
}
