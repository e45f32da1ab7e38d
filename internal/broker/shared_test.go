package broker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// TestOverloadSharedPrefersMemberUnderMark: a shared subscription with
// one member that reads nothing and one or two that keep up (their
// windows are large enough that their queues stay empty). A publisher
// floods the group. The stalled member takes messages while it is under
// its mark, then is passed over: the others get the rest, in turn, and
// the publisher is never held back (the fake clock never moves, so no
// subscriber is found slow: a hold would last forever). Nothing is
// dropped, each member's messages arrive in order, and the stalled member
// gets what was queued for it once it reads.
func TestOverloadSharedPrefersMemberUnderMark(t *testing.T) {
	const n, mark, window = 400, 5, 1
	for _, fast := range []int{1, 2} {
		t.Run(fmt.Sprintf("fast=%d", fast), func(t *testing.T) {
			// The fast members' in-flight windows take the whole flood,
			// so that they never fall behind; the stalled member's holds
			// one message.
			srv, addr := testServer(t, Config{Clock: newFakeClock(), PushbackMessages: mark, MaxInflight: n})
			stalled := dialRaw(t, addr, packet.V5)
			stalled.connect(connectV5("stalled", true, func(p *packet.Properties) { p.SetReceiveMaximum(window) }))
			subscribe(t, stalled, 1, packet.Subscription{Filter: "$share/g/t", QoS: 1})

			counts := make([]atomic.Int64, fast)
			errs := make(chan error, fast)
			var wg sync.WaitGroup
			defer wg.Wait()
			for i := range fast {
				c := dialRaw(t, addr, packet.V5)
				c.connect(v5connect(fmt.Sprintf("fast%d", i)))
				subscribe(t, c, 1, packet.Subscription{Filter: "$share/g/t", QoS: 1})
				defer c.nc.Close()
				wg.Go(func() {
					last := -1
					for {
						p, err := c.recvErr(10 * time.Second)
						if err != nil {
							return // closed at the end of the test
						}
						pp, ok := p.(*packet.Publish)
						if !ok {
							continue
						}
						b, _ := packet.Append(nil, &packet.Puback{PacketID: pp.PacketID}, packet.V5)
						c.nc.Write(b)
						_, seq, err := parseSeq(pp.Payload)
						if err == nil && seq <= last {
							err = fmt.Errorf("fast%d: message %d after %d", i, seq, last)
						}
						if err != nil {
							errs <- err
							return
						}
						last = seq
						counts[i].Add(1)
					}
				})
			}
			pub := dialRaw(t, addr, packet.V5)
			pub.connect(v5connect("pub"))
			defer flood(t, pub, "t", "p", 1, n, 16)()

			stalledGot := func() int {
				sess := srv.lookup("stalled")
				sess.mu.Lock()
				defer sess.mu.Unlock()
				return sess.queue.len() + len(sess.inflight)
			}
			var got []int64
			testutil.CheckFor(t, 10*time.Second, func() error {
				select {
				case err := <-errs:
					t.Fatal(err)
				default:
				}
				got = got[:0]
				sum := int64(stalledGot())
				for i := range counts {
					got = append(got, counts[i].Load())
					sum += got[i]
				}
				if st := srv.Stats(); st.MessagesReceived != n || sum != n {
					return fmt.Errorf("%d routed, %d received (fast %v), %d held", st.MessagesReceived, sum, got, st.PublishersHeld)
				}
				return nil
			})
			st := srv.Stats()
			if st.Pushbacks != 0 || st.PublishersHeld != 0 || st.DroppedQueueFull != 0 || st.SlowSubscribers != 0 {
				t.Fatalf("pushbacks %d, held %d, dropped %d, slow %d; want none", st.Pushbacks, st.PublishersHeld,
					st.DroppedQueueFull, st.SlowSubscribers)
			}
			s := stalledGot()
			if q, _, _ := backlog(srv, "stalled"); q >= mark {
				t.Fatalf("stalled member's queue at %d, its mark %d", q, mark)
			}
			if fast == 2 && (got[0]-got[1] > 1 || got[1]-got[0] > 1) {
				t.Fatalf("fast members got %v: not in turn", got)
			}
			last := -1
			for range s {
				_, seq := seqOf(t, recvAck(t, stalled))
				if seq <= last {
					t.Fatalf("stalled member: message %d after %d", seq, last)
				}
				last = seq
			}
		})
	}
}
