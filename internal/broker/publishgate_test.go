package broker

import (
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// gateCluster is a cluster whose PublishGate holds a connection's first
// QoS 1/2 message until the test releases it.
type gateCluster struct {
	localCluster
	entered, release chan struct{}
	once             sync.Once
}

func (g *gateCluster) Persistence(local Persistence) Persistence { return local }

func (g *gateCluster) AwaitCaughtUp(closed <-chan struct{}, _ time.Duration, _, _ string) {
	g.once.Do(func() { close(g.entered) })
	select {
	case <-g.release:
	case <-closed:
	}
}

// TestGatedPublishArrivesAtRelease: a connection's first QoS 1 message
// that waited in the cluster's publish gate, and the message read behind
// it meanwhile, are recorded as arriving when the wait ended, in their
// order. A session claimed here during the wait finds in the record of
// recent messages what arrived after its claim began (FindLocal): with
// the time their bytes came in, these two were passed over, though they
// were routed after the claim began, to no node (an outside run that
// killed a whole cluster lost a publisher's first message so).
func TestGatedPublishArrivesAtRelease(t *testing.T) {
	g := &gateCluster{entered: make(chan struct{}), release: make(chan struct{})}
	srv, addr := testServer(t, Config{Cluster: g, Persistence: newModel()})
	c := dialRaw(t, addr, packet.V5)
	if ack := c.connect(connectV5("gated", true, nil)); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	var b []byte
	for i, payload := range []string{"first", "second"} {
		var err error
		b, err = packet.Append(b, &packet.Publish{Topic: "g/x", QoS: 1, PacketID: uint16(i + 1), Payload: []byte(payload)}, packet.V5)
		if err != nil {
			t.Fatal(err)
		}
	}
	c.write(b) // both in one write: the second is read while the first waits
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the first message did not reach the publish gate")
	}
	// A claim that begins now, while the message waits.
	began := time.Now().UnixNano()
	close(g.release)
	for range 2 {
		if _, ok := c.recv().(*packet.Puback); !ok {
			t.Fatal("want PUBACK")
		}
	}
	found := srv.recent.search(began, 0, []string{"g/#"}, nil)
	if len(found) != 2 {
		t.Fatalf("the record holds %d messages that arrived after the wait began, want 2", len(found))
	}
	if string(found[0].msg.Payload) != "first" || string(found[1].msg.Payload) != "second" || found[1].at < found[0].at {
		t.Fatalf("recorded %q at %d, %q at %d: not in their order", found[0].msg.Payload, found[0].at, found[1].msg.Payload, found[1].at)
	}
}
