package packet_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/packet/packettest"
)

type benchCase struct {
	name string
	v    packet.Version
	p    *packet.Publish
}

// benchPublishes are QoS 1 PUBLISH packets with 64 B and 1 KiB payloads,
// for 3.1.1 and for 5.0 with a few typical properties.
func benchPublishes() []benchCase {
	var cs []benchCase
	for _, size := range []int{64, 1024} {
		payload := bytes.Repeat([]byte{'x'}, size)
		cs = append(cs, benchCase{fmt.Sprintf("v3.1.1/%dB", size), packet.V311,
			&packet.Publish{QoS: 1, PacketID: 42, Topic: "factory/line-3/sensor/17/temperature", Payload: payload}})
		props := packettest.NewP().Set(packet.PropPayloadFormat, byte(1)).Set(packet.PropMessageExpiry, uint32(60)).
			Set(packet.PropContentType, "application/json").Set(packet.PropUser, [2]string{"trace", "7f3a9c"}).Build()
		cs = append(cs, benchCase{fmt.Sprintf("v5/%dB", size), packet.V5,
			&packet.Publish{QoS: 1, PacketID: 42, Topic: "factory/line-3/sensor/17/temperature", Payload: payload, Properties: props}})
	}
	return cs
}

func BenchmarkDecodePublish(b *testing.B) {
	for _, c := range benchPublishes() {
		raw, err := packet.Append(nil, c.p, c.v)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, _, err := packet.Decode(raw, c.v, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAppendPublish(b *testing.B) {
	for _, c := range benchPublishes() {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 2048)
			n, _ := packet.Size(c.p, c.v)
			b.SetBytes(int64(n))
			for b.Loop() {
				var err error
				if buf, err = packet.Append(buf[:0], c.p, c.v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

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

func BenchmarkReaderPublish(b *testing.B) {
	for _, c := range benchPublishes() {
		raw, err := packet.Append(nil, c.p, c.v)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			r := packet.NewReader(&loopReader{data: raw}, 0)
			r.SetVersion(c.v)
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := r.ReadPacket(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
