package broker

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// localCluster is an in-process Cluster: it records the filters this
// node is interested in and the messages it would forward. The test
// plays the other node by calling DeliverRemote.
type localCluster struct {
	mu       sync.Mutex
	interest map[string]bool
	forwards int
}

var _ Cluster = (*localCluster)(nil)

func (lc *localCluster) Interest(filter string, on bool) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.interest == nil {
		lc.interest = map[string]bool{}
	}
	lc.interest[filter] = on
}

func (lc *localCluster) Forward(*Message) {
	lc.mu.Lock()
	lc.forwards++
	lc.mu.Unlock()
}

func (lc *localCluster) Retained(*Message)        {}
func (lc *localCluster) Connected(string, string) {}

func (lc *localCluster) interested(filter string) bool {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.interest[filter]
}

// remoteMessage is a message of another node, as the Cluster rebuilds it.
func remoteMessage(topic string, qos byte, i, size int) *Message {
	payload := []byte("r " + strconv.Itoa(i))
	if len(payload) < size {
		payload = append(payload, strings.Repeat(".", size-len(payload))...)
	}
	return NewMessage(&packet.Publish{Topic: topic, QoS: qos, Payload: payload}, "remote-pub", time.Now())
}

// TestOverloadRemoteFloodBounded: messages of another node have no
// publisher here to hold back. A flood of them at a subscriber that
// reads nothing stays within that subscriber's limits, under either
// queue-full policy: QoS 1 messages queue to MaxQueued and the rest are
// dropped and counted (QueueBlock included, which would otherwise queue
// without end), QoS 0 messages wait up to MaxOutboundBytes and the oldest
// are dropped; DeliverRemote never waits, and nobody is held back. The
// subscriber then receives its window and its queue, in order.
func TestOverloadRemoteFloodBounded(t *testing.T) {
	const n, maxQueued, window = 500, 20, 2
	const n0, size0, maxOut = 2000, 8 << 10, 64 << 10
	for _, policy := range []QueuePolicy{QueueDrop, QueueBlock} {
		t.Run(policy.String(), func(t *testing.T) {
			lc := &localCluster{}
			srv, addr := testServer(t, Config{Clock: newFakeClock(), Cluster: lc, MaxQueued: maxQueued,
				QueueFullPolicy: policy, MaxOutboundBytes: maxOut})
			sub1 := dialRaw(t, addr, packet.V5)
			sub1.connect(connectV5("sub1", true, func(p *packet.Properties) { p.SetReceiveMaximum(window) }))
			subscribe(t, sub1, 1, packet.Subscription{Filter: "t/1", QoS: 1})
			sub0 := dialRaw(t, addr, packet.V5)
			sub0.connect(v5connect("sub0"))
			subscribe(t, sub0, 1, packet.Subscription{Filter: "t/0", QoS: 0})
			if !lc.interested("t/1") || !lc.interested("t/0") {
				t.Fatal("the cluster was not told of the subscriptions")
			}

			for i := range n {
				if got := srv.DeliverRemote(remoteMessage("t/1", 1, i, 16)); got != 1 {
					t.Fatalf("message %d matched %d sessions", i, got)
				}
			}
			for i := range n0 {
				srv.DeliverRemote(remoteMessage("t/0", 0, i, size0))
			}
			st := srv.Stats()
			if q, _, _ := backlog(srv, "sub1"); q != maxQueued || st.DroppedQueueFull != n-window-maxQueued {
				t.Fatalf("queue %d, dropped %d; want %d and %d", q, st.DroppedQueueFull, maxQueued, n-window-maxQueued)
			}
			if st.Pushbacks != 0 || st.PublishersHeld != 0 {
				t.Fatalf("%d pushbacks, %d held: nobody is there to hold", st.Pushbacks, st.PublishersHeld)
			}
			c0 := srv.lookup("sub0").conn
			c0.outMu.Lock()
			out := c0.outBytes
			c0.outMu.Unlock()
			if out > maxOut || st.DroppedSlowClient == 0 {
				t.Fatalf("QoS 0 backlog %d bytes (limit %d), %d dropped", out, maxOut, st.DroppedSlowClient)
			}
			for i := range window + maxQueued {
				if _, seq := seqOf(t, recvAck(t, sub1)); seq != i {
					t.Fatalf("message %d arrived as number %d", seq, i)
				}
			}
			expectNone(t, sub1)
			last := -1
			testutil.CheckFor(t, 10*time.Second, func() error {
				for last != n0-1 {
					p, err := sub0.recvErr(5 * time.Second)
					if err != nil {
						return err
					}
					_, seq := seqOf(t, p.(*packet.Publish))
					if seq <= last {
						t.Fatalf("QoS 0 message %d after %d", seq, last)
					}
					last = seq
				}
				return nil
			})
			if lc.forwards != 0 {
				t.Fatalf("%d messages of another node forwarded again", lc.forwards)
			}
		})
	}
}

// TestOverloadBlockWithoutPublisher: under QueueBlock a full queue is
// exceeded only for a message whose publisher is held back for it. A
// client subscribed to what it publishes is never held by its own session
// (its reader reads the acknowledgements that drain it), so its messages
// to itself follow the drop policy at a full queue instead of growing it;
// so do the broker's own messages (a will).
func TestOverloadBlockWithoutPublisher(t *testing.T) {
	const maxQueued = 5
	srv, addr := testServer(t, Config{Clock: newFakeClock(), MaxQueued: maxQueued, MaxInflight: 1,
		QueueFullPolicy: QueueBlock, PushbackMessages: -1})
	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("self"))
	subscribe(t, c, 1, packet.Subscription{Filter: "t", QoS: 1})
	const n = 50
	for i := range n {
		c.send(&packet.Publish{Topic: "t", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("x")})
	}
	for acks := 0; acks < n; {
		if _, ok := c.recv().(*packet.Puback); ok {
			acks++
		}
	}
	st := srv.Stats()
	if q, _, _ := backlog(srv, "self"); q != maxQueued || st.DroppedQueueFull != n-1-maxQueued {
		t.Fatalf("queue %d, dropped %d; want %d and %d", q, st.DroppedQueueFull, maxQueued, n-1-maxQueued)
	}

	// A will for the same full queue.
	w := dialRaw(t, addr, packet.V5)
	cp := v5connect("dies")
	cp.Will = &packet.Will{Topic: "t", QoS: 1, Payload: []byte("will")}
	w.connect(cp)
	w.nc.Close()
	testutil.CheckFor(t, 5*time.Second, func() error {
		if d := srv.Stats().DroppedQueueFull; d != n-maxQueued {
			return fmt.Errorf("dropped %d", d)
		}
		return nil
	})
	if q, _, _ := backlog(srv, "self"); q != maxQueued {
		t.Fatalf("queue %d after the will", q)
	}
}
