package broker

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// BenchmarkScenarioE is make bench's scenario e in one process: 1,000
// publishers on loopback TCP send 64-byte QoS 1 messages to one topic,
// one subscriber with an in-flight window of 20 and a queue of 1,000
// acknowledges each, and the publishers pause while more than 500
// messages are outstanding (the load generator's --max-backlog 500), so
// the loop bounds itself as it does there. Each publisher sends five
// messages in a row, so that the broker reads several packets per read,
// as under the load generator (about five). The defense and the access
// policy that cmd/moat adds are not here.
//
// It uses only what the broker had before overload control (545dce4):
// with cpu_unix_test.go beside it, the same file runs on both builds and
// compares them per message: allocations and bytes, the process's CPU
// (publishers and subscriber included; user and system apart), and its
// read and write system calls (recvmsg is not counted as a read).
func BenchmarkScenarioE(b *testing.B) {
	const pubs, burst, backlog = 1000, 5, 500
	_, addr := testServer(b, Config{MaxInflight: 20, MaxQueued: 1000})
	var wg sync.WaitGroup
	b.Cleanup(wg.Wait) // after the connections are closed (cleanups run last first)
	var received atomic.Int64
	nc, r := benchSubscriber(b, addr, "e-sub", "bench/e", 1)
	wg.Go(func() {
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
		}
	})
	writers := make([]*bufio.Writer, pubs)
	for i := range writers {
		pc, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { pc.Close() })
		conn, _ := packet.Append(nil, &packet.Connect{Version: packet.V311, ClientID: fmt.Sprintf("e-%d", i), CleanStart: true}, packet.V311)
		if _, err := pc.Write(conn); err != nil {
			b.Fatal(err)
		}
		var ack [4]byte
		if _, err := io.ReadFull(pc, ack[:]); err != nil || ack[0] != 0x20 {
			b.Fatalf("publisher %d: CONNACK % x, %v", i, ack, err)
		}
		wg.Go(func() { io.Copy(io.Discard, pc) }) // PUBACKs
		writers[i] = bufio.NewWriterSize(pc, 512)
	}
	flush := func() {
		for _, w := range writers {
			if w.Buffered() > 0 {
				w.Flush()
			}
		}
	}
	payload := make([]byte, 64)
	var buf []byte
	b.ReportAllocs()
	u0, s0 := cpuSplit()
	r0, w0 := readCalls(), writeCalls()
	b.ResetTimer()
	for i := range b.N {
		if int64(i)-received.Load() > backlog {
			flush()
			for int64(i)-received.Load() > backlog {
				time.Sleep(20 * time.Microsecond)
			}
		}
		p := i / burst % pubs
		buf, _ = packet.Append(buf[:0], &packet.Publish{Topic: "bench/e", QoS: 1, PacketID: uint16(i%65535 + 1), Payload: payload}, packet.V311)
		writers[p].Write(buf)
		if p == pubs-1 && i%burst == burst-1 {
			flush()
		}
	}
	flush()
	deadline := time.Now().Add(30 * time.Second)
	for received.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("subscriber received %d of %d", received.Load(), b.N)
		}
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	u1, s1 := cpuSplit()
	reads, writes := readCalls()-r0, writeCalls()-w0
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	// The kernel's share (system calls, the loopback's TCP path) apart
	// from the Go code's.
	b.ReportMetric(float64((u1-u0+s1-s0).Nanoseconds())/float64(b.N), "cpu-ns/msg")
	b.ReportMetric(float64((u1-u0).Nanoseconds())/float64(b.N), "user-ns/msg")
	b.ReportMetric(float64((s1-s0).Nanoseconds())/float64(b.N), "sys-ns/msg")
	if writes > 0 {
		// read and write system calls of the process per message
		b.ReportMetric(float64(reads)/float64(b.N), "reads/msg")
		b.ReportMetric(float64(writes)/float64(b.N), "writes/msg")
	}
}
