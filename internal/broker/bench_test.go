package broker

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// benchSubscriber connects a subscriber on a real loopback TCP connection
// and returns it after SUBACK, with a Reader for what follows.
func benchSubscriber(b *testing.B, addr, id, filter string, qos byte) (net.Conn, *packet.Reader) {
	b.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close() })
	var buf []byte
	buf, _ = packet.Append(buf, &packet.Connect{Version: packet.V311, ClientID: id, CleanStart: true}, packet.V311)
	buf, _ = packet.Append(buf, &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: filter, QoS: qos}}}, packet.V311)
	if _, err := nc.Write(buf); err != nil {
		b.Fatal(err)
	}
	// CONNACK (4 bytes) and SUBACK (5 bytes), read without buffering so
	// that the connection can be handed on as it is.
	var acks [9]byte
	if _, err := io.ReadFull(nc, acks[:]); err != nil || acks[0] != 0x20 || acks[3] != 0 || acks[4] != 0x90 || acks[8] != qos {
		b.Fatalf("subscriber %s: CONNACK/SUBACK % x, %v", id, acks, err)
	}
	r := packet.NewReader(nc, 0)
	r.SetVersion(packet.V311)
	return nc, r
}

// countingWriter counts the bytes a subscriber received.
type countingWriter struct{ n atomic.Int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return len(p), nil
}

// BenchmarkPublishFanout routes QoS 0 messages published in-process to
// N subscribers on loopback TCP connections that read and discard. The
// publisher is held at most a window of messages ahead of the slowest
// subscriber, so the figure is sustained throughput without drops.
func BenchmarkPublishFanout(b *testing.B) {
	for _, subs := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			s, addr := testServer(b, Config{})
			payload := make([]byte, 64)
			pub := &packet.Publish{Topic: "bench/fanout", Payload: payload}
			size, _ := packet.Size(pub, packet.V311)
			counters := make([]*countingWriter, subs)
			for i := range counters {
				nc, _ := benchSubscriber(b, addr, fmt.Sprintf("fan-%d", i), "bench/+", 0)
				w := &countingWriter{}
				counters[i] = w
				go io.Copy(w, nc)
			}
			slowest := func() int64 {
				m := counters[0].n.Load()
				for _, w := range counters[1:] {
					m = min(m, w.n.Load())
				}
				return m / int64(size)
			}
			const window = 2000
			now := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if i%256 == 0 {
					for int64(i)-slowest() > window {
						time.Sleep(20 * time.Microsecond)
					}
				}
				s.publish(newMessage(pub, "bench", now))
			}
			deadline := time.Now().Add(30 * time.Second)
			for slowest() < int64(b.N) {
				if time.Now().After(deadline) {
					b.Fatalf("subscribers received %d of %d messages (dropped %d)", slowest(), b.N, s.Stats().DroppedSlowClient)
				}
				time.Sleep(50 * time.Microsecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)*float64(subs)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}

// BenchmarkRouteQoS1 measures the whole QoS 1 path over loopback TCP: a
// publisher sends QoS 1 PUBLISH packets (its PUBACKs are read and
// discarded), the broker routes them to N subscribers which decode each
// PUBLISH and answer PUBACK. At most 100 messages per subscriber are
// outstanding, well inside the broker's queue.
func BenchmarkRouteQoS1(b *testing.B) {
	for _, subs := range []int{1, 10} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			_, addr := testServer(b, Config{})
			const window = 100
			tokens := make([]chan struct{}, subs)
			received := make([]atomic.Int64, subs)
			for i := range subs {
				tokens[i] = make(chan struct{}, window)
				nc, r := benchSubscriber(b, addr, fmt.Sprintf("q1-%d", i), "bench/q1", 1)
				go func() {
					var ack []byte
					for {
						p, err := r.ReadPacket()
						if err != nil {
							return
						}
						pub, ok := p.(*packet.Publish)
						if !ok {
							continue
						}
						ack, _ = packet.Append(ack[:0], &packet.Puback{PacketID: pub.PacketID}, packet.V311)
						if _, err := nc.Write(ack); err != nil {
							return
						}
						received[i].Add(1)
						<-tokens[i]
					}
				}()
			}
			pc, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { pc.Close() })
			conn, _ := packet.Append(nil, &packet.Connect{Version: packet.V311, ClientID: "q1-pub", CleanStart: true}, packet.V311)
			pc.Write(conn)
			go io.Copy(io.Discard, pc) // CONNACK and PUBACKs
			w := bufio.NewWriterSize(pc, 64<<10)
			payload := make([]byte, 64)
			var buf []byte
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				for _, t := range tokens {
					select {
					case t <- struct{}{}:
					default:
						w.Flush() // let the broker see what is buffered
						t <- struct{}{}
					}
				}
				buf, _ = packet.Append(buf[:0], &packet.Publish{Topic: "bench/q1", QoS: 1, PacketID: uint16(i%65535 + 1), Payload: payload}, packet.V311)
				w.Write(buf)
			}
			w.Flush()
			deadline := time.Now().Add(30 * time.Second)
			for i := range received {
				for received[i].Load() < int64(b.N) {
					if time.Now().After(deadline) {
						b.Fatalf("subscriber %d received %d of %d", i, received[i].Load(), b.N)
					}
					time.Sleep(50 * time.Microsecond)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)*float64(subs)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}

// BenchmarkFanInQoS1 is a closed-loop fan-in like make bench's scenario e
// in one process: P publishers on loopback TCP send QoS 1 messages to one
// subscriber that acknowledges each, with at most window messages of each
// publisher outstanding, far more in all than the subscriber's in-flight
// window: its queue stays long, so publishers are held back at its mark
// (pushback=on) or not (off). The difference is what holding back costs
// per message when it does not change the throughput. The driver and the
// broker share the process, so compare the two only in one run (on a
// shared machine the figures move by a factor of two between runs).
func BenchmarkFanInQoS1(b *testing.B) {
	const pubs, window = 100, 5
	for _, pushback := range []int{-1, 0} {
		name := "pushback=on"
		if pushback < 0 {
			name = "pushback=off"
		}
		b.Run(name, func(b *testing.B) {
			s, addr := testServer(b, Config{PushbackMessages: pushback, MaxQueued: pubs * window})
			tokens := make([]chan struct{}, pubs)
			for i := range tokens {
				tokens[i] = make(chan struct{}, window)
			}
			var received atomic.Int64
			nc, r := benchSubscriber(b, addr, "fanin-sub", "bench/in", 1)
			go func() {
				var ack []byte
				for {
					p, err := r.ReadPacket()
					if err != nil {
						return
					}
					pub, ok := p.(*packet.Publish)
					if !ok {
						continue
					}
					ack, _ = packet.Append(ack[:0], &packet.Puback{PacketID: pub.PacketID}, packet.V311)
					if _, err := nc.Write(ack); err != nil {
						return
					}
					received.Add(1)
					<-tokens[int(pub.Payload[0])<<8|int(pub.Payload[1])]
				}
			}()
			writers := make([]*bufio.Writer, pubs)
			for i := range writers {
				pc, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { pc.Close() })
				conn, _ := packet.Append(nil, &packet.Connect{Version: packet.V311, ClientID: fmt.Sprintf("fanin-%d", i), CleanStart: true}, packet.V311)
				pc.Write(conn)
				go io.Copy(io.Discard, pc) // CONNACK and PUBACKs
				writers[i] = bufio.NewWriterSize(pc, 4<<10)
			}
			payload := make([]byte, 64)
			var buf []byte
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				p := i % pubs
				select {
				case tokens[p] <- struct{}{}:
				default:
					for _, w := range writers {
						w.Flush()
					}
					tokens[p] <- struct{}{}
				}
				payload[0], payload[1] = byte(p>>8), byte(p)
				buf, _ = packet.Append(buf[:0], &packet.Publish{Topic: "bench/in", QoS: 1, PacketID: uint16(i/pubs%65535 + 1), Payload: payload}, packet.V311)
				writers[p].Write(buf)
			}
			for _, w := range writers {
				w.Flush()
			}
			deadline := time.Now().Add(30 * time.Second)
			for received.Load() < int64(b.N) {
				if time.Now().After(deadline) {
					b.Fatalf("subscriber received %d of %d", received.Load(), b.N)
				}
				time.Sleep(50 * time.Microsecond)
			}
			b.StopTimer()
			st := s.Stats()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
			b.ReportMetric(float64(st.Pushbacks)/float64(b.N), "pushbacks/msg")
		})
	}
}
