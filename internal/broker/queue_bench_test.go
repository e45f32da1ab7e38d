package broker

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// BenchmarkQueueAck is the refill of a session's in-flight window from its
// queue when an acknowledgement arrives (session.ack → fillLocked), with
// the queue held at a constant length: each operation acknowledges the one
// message in flight, which moves the oldest queued message into flight,
// and queues one more. A client that reconnects to a session with
// thousands of messages queued (up to max_queued_messages) goes through
// this once per message; the cost per acknowledgement must not grow with
// the queue. The subscriber's Receive Maximum is 1 and its connection
// reads and discards what it is sent.
func BenchmarkQueueAck(b *testing.B) {
	for _, queued := range []int{100, 10_000, 100_000} {
		b.Run(fmt.Sprintf("queued=%d", queued), func(b *testing.B) {
			srv, addr := testServer(b, Config{MaxQueued: queued + 1, PushbackMessages: -1})
			sub := dialRaw(b, addr, packet.V5)
			sub.connect(connectV5("sub", true, func(p *packet.Properties) { p.SetReceiveMaximum(1) }))
			done := make(chan struct{})
			go func() {
				defer close(done)
				sub.nc.SetReadDeadline(time.Time{})
				io.Copy(io.Discard, sub.nc)
			}()
			b.Cleanup(func() {
				sub.nc.Close()
				<-done
			})
			sess := srv.lookup("sub")
			msg := &Message{Topic: "q", Payload: make([]byte, 64), QoS: 1, Created: time.Now()}
			for range queued + 1 { // one in flight, the rest queued
				sess.deliver(srv, &delivery{msg: msg, qos: 1}, nil, nil)
			}
			if q, _, _ := backlog(srv, "sub"); q != queued {
				b.Fatalf("queue %d, want %d", q, queued)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				sess.mu.Lock()
				pid := sess.inflight[0].pid
				sess.mu.Unlock()
				if !sess.ack(srv, pid, 1) {
					b.Fatal("acknowledgement refused")
				}
				sess.deliver(srv, &delivery{msg: msg, qos: 1}, nil, nil)
			}
			b.StopTimer()
			if q, _, _ := backlog(srv, "sub"); q != queued {
				b.Fatalf("queue %d, want %d", q, queued)
			}
		})
	}
}

// BenchmarkQueueFullDrop is a message for a full queue under the drop
// policy (a flood at a stalled subscriber, or from another node): each
// operation delivers one message that the queue, at max_queued_messages,
// drops. Before dropping, the queue is searched for expired messages to
// make room; with none that can expire, that search must not cost a pass
// over the whole queue per message.
func BenchmarkQueueFullDrop(b *testing.B) {
	for _, queued := range []int{100, 10_000, 100_000} {
		b.Run(fmt.Sprintf("queued=%d", queued), func(b *testing.B) {
			srv, addr := testServer(b, Config{MaxQueued: queued, PushbackMessages: -1})
			sub := dialRaw(b, addr, packet.V5)
			sub.connect(connectV5("sub", true, func(p *packet.Properties) { p.SetReceiveMaximum(1) }))
			sess := srv.lookup("sub")
			msg := &Message{Topic: "q", Payload: make([]byte, 64), QoS: 1, Created: time.Now()}
			for range queued + 1 { // one in flight, the rest queued
				sess.deliver(srv, &delivery{msg: msg, qos: 1}, nil, nil)
			}
			dropped := srv.Stats().DroppedQueueFull
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				sess.deliver(srv, &delivery{msg: msg, qos: 1}, nil, nil)
			}
			b.StopTimer()
			if d := srv.Stats().DroppedQueueFull - dropped; d != int64(b.N) {
				b.Fatalf("%d dropped of %d", d, b.N)
			}
		})
	}
}
