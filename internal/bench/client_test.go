package bench

import (
	"bufio"
	"encoding/binary"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// loopReader serves the same bytes forever.
type loopReader struct {
	data []byte
	off  int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], l.data[l.off:])
		n += c
		l.off = (l.off + c) % len(l.data)
	}
	return n, nil
}

// BenchmarkClientReceive measures the load generator's per-message cost
// on the subscriber side: framing, timestamp, histogram, counters, PUBACK.
func BenchmarkClientReceive(b *testing.B) {
	r := &run{cfg: Config{PayloadSize: 64}, runID: 42, errs: map[string]int{}}
	payload := make([]byte, 64)
	binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
	binary.BigEndian.PutUint64(payload[8:], 42)
	raw, err := packet.Append(nil, &packet.Publish{QoS: 1, PacketID: 7, Topic: "bench/p2p/17", Payload: payload}, packet.V311)
	if err != nil {
		b.Fatal(err)
	}
	c := &client{r: r, br: bufio.NewReaderSize(&loopReader{data: raw}, readBufSize(64))}
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		f, err := c.frame()
		if err != nil {
			b.Fatal(err)
		}
		c.onPublish(f)
		c.br.Discard(len(f))
		c.ack = c.ack[:0]
	}
	if r.delivered.Load() == 0 {
		b.Fatal("nothing delivered")
	}
}

// BenchmarkClientEncode measures the publisher side: timestamp and
// encoding of one QoS 1 PUBLISH into a reused batch buffer.
func BenchmarkClientEncode(b *testing.B) {
	plain := make([]byte, 64)
	p := &packet.Publish{QoS: 1, Topic: "bench/p2p/17", Payload: plain}
	out := make([]byte, 0, 64<<10)
	b.ReportAllocs()
	for b.Loop() {
		binary.BigEndian.PutUint64(plain, uint64(time.Now().UnixNano()))
		if p.PacketID++; p.PacketID == 0 {
			p.PacketID = 1
		}
		var err error
		if out, err = packet.Append(out[:0], p, packet.V311); err != nil {
			b.Fatal(err)
		}
	}
}
