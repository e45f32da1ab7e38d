package broker

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
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

// fanoutRig is n QoS 0 subscribers to bench/+ on loopback TCP
// connections that read and discard, for the fan-out benchmarks.
type fanoutRig struct {
	s        *Server
	addr     string
	size     int64 // bytes of one PUBLISH as the subscribers receive it
	counters []*countingWriter
}

func newFanoutRig(b *testing.B, subs int, pub *packet.Publish) *fanoutRig {
	s, addr := testServer(b, Config{})
	size, _ := packet.Size(pub, packet.V311)
	r := &fanoutRig{s: s, addr: addr, size: int64(size), counters: make([]*countingWriter, subs)}
	var wg sync.WaitGroup
	b.Cleanup(wg.Wait) // after the connections are closed (cleanups run last first)
	for i := range r.counters {
		nc, _ := benchSubscriber(b, addr, fmt.Sprintf("fan-%d", i), "bench/+", 0)
		w := &countingWriter{}
		r.counters[i] = w
		wg.Go(func() { io.Copy(w, nc) })
	}
	return r
}

// slowest returns the messages received by the subscriber that received
// fewest.
func (r *fanoutRig) slowest() int64 {
	m := r.counters[0].n.Load()
	for _, w := range r.counters[1:] {
		m = min(m, w.n.Load())
	}
	return m / r.size
}

// run measures n messages sent by send, which is called with the number
// of the message; send is held at most window messages ahead of the
// slowest subscriber (waiting calls flush first), so the figures are
// sustained throughput with nothing dropped.
func (r *fanoutRig) run(b *testing.B, window int64, send func(i int), flush func()) {
	b.ReportAllocs()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0, w0 := cpuTime(), writeCalls()
	b.ResetTimer()
	for i := range b.N {
		if i%64 == 0 && int64(i)-r.slowest() > window {
			flush()
			for int64(i)-r.slowest() > window {
				time.Sleep(20 * time.Microsecond)
			}
		}
		send(i)
	}
	flush()
	deadline := time.Now().Add(30 * time.Second)
	for r.slowest() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("subscribers received %d of %d messages (dropped %d)", r.slowest(), b.N, r.s.Stats().DroppedSlowClient)
		}
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	cpu, writes := cpuTime()-cpu0, writeCalls()-w0
	runtime.ReadMemStats(&ms1)
	deliveries := float64(b.N) * float64(len(r.counters))
	b.ReportMetric(deliveries/b.Elapsed().Seconds(), "deliveries/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
	// CPU of the whole process (broker, publisher and subscribers) per
	// delivery, which unlike the wall time does not count the
	// publisher's waits for the slowest subscriber.
	b.ReportMetric(float64(cpu.Nanoseconds())/deliveries, "cpu-ns/delivery")
	// Every allocation of the process while the timer ran, the
	// subscribers' reads included, divided by the deliveries.
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/deliveries, "allocs/delivery")
	if writes > 0 {
		// write system calls of the process (the broker's, and a few
		// of the publisher's) per delivery.
		b.ReportMetric(float64(writes)/deliveries, "writes/delivery")
	}
}

// BenchmarkPublishFanout routes QoS 0 messages published in-process to
// N subscribers on loopback TCP connections that read and discard. The
// publisher is held at most a window of messages ahead of the slowest
// subscriber, so the figure is sustained throughput without drops.
func BenchmarkPublishFanout(b *testing.B) {
	for _, subs := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			pub := &packet.Publish{Topic: "bench/fanout", Payload: make([]byte, 64)}
			r := newFanoutRig(b, subs, pub)
			now := time.Now()
			r.run(b, 2000, func(int) { r.s.publish(newMessage(pub, "bench", now)) }, func() {})
		})
	}
}

// BenchmarkFanoutTCP is the whole QoS 0 fan-out path: a publisher client
// sends 64-byte QoS 0 PUBLISH packets over loopback TCP as fast as the
// window allows (the broker's reader decodes and routes them), and N
// subscribers read and discard, as in scenario d and h of the side-by-side
// benchmark. The publisher is held at most 1,000 messages (2 MiB) ahead of
// the slowest subscriber. size=8192: a payload written in place (writev).
func BenchmarkFanoutTCP(b *testing.B) {
	for _, tc := range []struct{ subs, size int }{{100, 64}, {1000, 64}, {100, 8 << 10}} {
		b.Run(fmt.Sprintf("subs=%d/size=%d", tc.subs, tc.size), func(b *testing.B) {
			subs := tc.subs
			pub := &packet.Publish{Topic: "bench/fanout", Payload: make([]byte, tc.size)}
			r := newFanoutRig(b, subs, pub)
			pc, err := net.Dial("tcp", r.addr)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { pc.Close() })
			conn, _ := packet.Append(nil, &packet.Connect{Version: packet.V311, ClientID: "fan-pub", CleanStart: true}, packet.V311)
			if _, err := pc.Write(conn); err != nil {
				b.Fatal(err)
			}
			var ack [4]byte
			if _, err := io.ReadFull(pc, ack[:]); err != nil || ack[0] != 0x20 {
				b.Fatalf("CONNACK % x, %v", ack, err)
			}
			w := bufio.NewWriterSize(pc, 16<<10)
			enc, _ := packet.Append(nil, pub, packet.V311)
			// Within the QoS 0 backlog a connection may hold
			// (MaxOutboundBytes), so that nothing is dropped.
			window := min(1000, int64(DefaultMaxOutboundBytes/2/len(enc)))
			r.run(b, window, func(int) { w.Write(enc) }, func() { w.Flush() })
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
			cpu0, w0, r0 := cpuTime(), writeCalls(), readCalls()
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
			cpu, writes, reads := cpuTime()-cpu0, writeCalls()-w0, readCalls()-r0
			st := s.Stats()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
			b.ReportMetric(float64(st.Pushbacks)/float64(b.N), "pushbacks/msg")
			// CPU of the whole process (broker, publishers and subscriber)
			// and its write system calls, per message.
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/msg")
			if writes > 0 {
				b.ReportMetric(float64(writes)/float64(b.N), "writes/msg")
				b.ReportMetric(float64(reads)/float64(b.N), "reads/msg")
			}
		})
	}
}
