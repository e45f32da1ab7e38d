package cluster

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/store/brokerstore"
)

// TestSameRetainedThroughStore: a retained message that went to the
// cluster's bucket and, as a node applied it, to that node's store on
// disk is the same message (sameRetained) when the node reads its store
// back at a restart, whatever properties it carries; a restarted node
// would otherwise take every such message for a change of its own and
// write it to the cluster again. A change of one carried property is a
// change.
func TestSameRetainedThroughStore(t *testing.T) {
	t.Parallel()
	full := &packet.Properties{}
	full.SetPayloadFormat(1)
	full.SetContentType("application/json")
	full.SetResponseTopic("reply/here")
	full.SetCorrelationData([]byte{0, 1, 2})
	full.User = []packet.UserProperty{{Key: "b", Value: "2"}, {Key: "a", Value: "1"}, {Key: "a", Value: "0"}}
	zeroFormat := &packet.Properties{}
	zeroFormat.SetPayloadFormat(0)
	cases := map[string]*packet.Properties{
		"rs/none":       nil,
		"rs/empty":      {},
		"rs/full":       full,
		"rs/zeroformat": zeroFormat,
		"rs/user":       {User: []packet.UserProperty{{Key: "k", Value: ""}}},
	}
	now := time.Now()
	var changes []broker.Change
	records := map[string]*broker.Message{}
	for topic, props := range cases {
		m := broker.NewMessage(&packet.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte("p")}, "c", now)
		if props != nil {
			m.Props = props
		}
		// The bucket's record of it, as another node decodes it.
		val, err := encodeRetained(retainedRecord{origin: "o", pub: &broker.StoredPublisher{ClientID: "c"}, msg: m}, now)
		if err != nil {
			t.Fatal(err)
		}
		r, err := decodeRetained(val, now)
		if err != nil {
			t.Fatal(err)
		}
		records[topic] = r.msg
		changes = append(changes, broker.Change{Kind: broker.ChangePutRetained, Message: r.msg})
	}
	dir := t.TempDir()
	cfg := store.Config{Dir: dir, KeyFile: filepath.Join(dir, store.KeyFile)}
	st, err := store.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	brokerstore.New(st).Persist(changes, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err = store.Open(cfg); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec, err := brokerstore.New(st).Recover()
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Retained) != len(cases) {
		t.Fatalf("%d retained messages read back, want %d", len(rec.Retained), len(cases))
	}
	for _, r := range rec.Retained {
		m, want := r.Message, records[r.Message.Topic]
		if want == nil {
			t.Fatalf("unknown topic %q read back", m.Topic)
		}
		if !sameRetained(m, want) {
			t.Errorf("%s: read back %+v, not the same as the record's %+v", m.Topic, m.Props, want.Props)
			continue
		}
		if m.Topic != "rs/full" {
			continue
		}
		// Each carried property on its own makes a change.
		for what, change := range map[string]func(p *packet.Properties){
			"payload format":   func(p *packet.Properties) { p.SetPayloadFormat(0) },
			"content type":     func(p *packet.Properties) { p.SetContentType("text/plain") },
			"response topic":   func(p *packet.Properties) { p.SetResponseTopic("reply/there") },
			"correlation data": func(p *packet.Properties) { p.SetCorrelationData([]byte{0, 1}) },
			"user properties":  func(p *packet.Properties) { p.User = p.User[:2] },
			"user order":       func(p *packet.Properties) { p.User[1], p.User[2] = p.User[2], p.User[1] },
		} {
			changed := *m
			p := *m.Props
			p.User = append([]packet.UserProperty(nil), m.Props.User...)
			change(&p)
			changed.Props = &p
			if sameRetained(&changed, want) {
				t.Errorf("a change of the %s passed for the same message", what)
			}
		}
	}
}
