package topic_test

import (
	"fmt"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/topic"
)

func ExampleIndex() {
	x := topic.NewIndex()

	// The broker validates and splits each SUBSCRIBE filter first.
	for _, sub := range []struct{ client, filter string }{
		{"sensor-ui", "factory/+/temperature"},
		{"auditor", "factory/#"},
		{"worker-1", "$share/ingest/factory/+/temperature"},
		{"worker-2", "$share/ingest/factory/+/temperature"},
	} {
		if err := packet.ValidTopicFilter(sub.filter); err != nil {
			panic(err)
		}
		group, filter, _ := packet.SplitShared(sub.filter)
		x.Subscribe(topic.Subscription{ClientID: sub.client, Group: group, Filter: filter, QoS: 1})
	}

	// On PUBLISH: reuse the slices across calls to avoid allocation.
	var subs []topic.Subscription
	var groups []topic.SharedGroup
	subs, groups = x.Match("factory/line1/temperature", subs[:0], groups[:0])
	for _, s := range subs {
		fmt.Println("deliver to", s.ClientID, "via", s.Filter)
	}
	for i := range groups {
		// Each shared subscription delivers to one member, in rotation.
		m, _ := groups[i].Pick(nil)
		fmt.Println("deliver to", m.ClientID, "for $share/"+groups[i].Group+"/"+groups[i].Filter)
	}
	// Unordered output:
	// deliver to sensor-ui via factory/+/temperature
	// deliver to auditor via factory/#
	// deliver to worker-1 for $share/ingest/factory/+/temperature
}

func ExampleRetained() {
	type message struct {
		payload []byte
		qos     byte
	}
	r := topic.NewRetained[message]()
	r.Set("factory/line1/state", message{[]byte("running"), 1})
	r.Set("factory/line2/state", message{[]byte("stopped"), 1})
	r.Set("$SYS/broker/uptime", message{[]byte("42"), 0})

	// A new subscription to "#" receives every retained message except the
	// '$' topics [MQTT-4.7.2-1].
	n := 0
	r.Match("#", func(t string, m message) bool {
		n++
		return true
	})
	fmt.Println(n, "of", r.Len())

	// A retained PUBLISH with an empty payload deletes.
	r.Delete("factory/line2/state")
	m, ok := r.Get("factory/line1/state")
	fmt.Println(string(m.payload), ok, r.Len())
	// Output:
	// 2 of 3
	// running true 2
}
