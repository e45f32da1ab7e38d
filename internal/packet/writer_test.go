package packet_test

import (
	"bytes"
	"errors"
	"runtime"
	"testing"

	"github.com/moatmq/moat/internal/packet"
)

func TestWriter(t *testing.T) {
	var out bytes.Buffer
	w := packet.NewWriter(&out)
	w.SetVersion(packet.V5)
	pub := &packet.Publish{Topic: "a", Payload: bytes.Repeat([]byte{'x'}, 100)}
	if err := w.WritePacket(pub); err != nil {
		t.Fatal(err)
	}
	p, n, err := packet.Decode(out.Bytes(), packet.V5, 0)
	if err != nil || n != out.Len() {
		t.Fatalf("Decode: %d %v", n, err)
	}
	checkPacket(t, p, pub)

	t.Run("MQTT-3.1.2-24 larger than the peer's maximum", func(t *testing.T) {
		out.Reset()
		w.SetMaxPacketSize(50)
		err := w.WritePacket(pub)
		if !errors.Is(err, packet.ErrPacketTooLarge) || out.Len() != 0 {
			t.Fatalf("err = %v, wrote %d bytes", err, out.Len())
		}
		if err := w.WritePacket(&packet.Pingresp{}); err != nil || out.Len() != 2 {
			t.Fatalf("small packet after refusal: %v", err)
		}
	})
	t.Run("invalid packet", func(t *testing.T) {
		if err := w.WritePacket(&packet.Publish{Topic: "#"}); !errors.Is(err, packet.ErrProtocol) {
			t.Fatalf("err = %v", err)
		}
	})
}

// A peer that announces huge packets costs the Reader almost nothing: the
// size check happens before any allocation for the body.
func TestReaderNoAllocationBeforeLimit(t *testing.T) {
	hdr := []byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F} // PUBLISH of 256 MB
	src := &loopReader{data: hdr}
	r := packet.NewReader(src, 1<<20)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const n = 1000
	for range n {
		if _, err := r.ReadPacket(); !errors.Is(err, packet.ErrPacketTooLarge) {
			t.Fatalf("err = %v", err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / n; per > 1024 {
		t.Fatalf("%d bytes allocated per refused packet", per)
	}
}

// Append only reads the packet: one *Publish can be encoded for many
// subscribers at once (run with -race).
func TestAppendConcurrent(t *testing.T) {
	pub := &packet.Publish{QoS: 1, PacketID: 3, Topic: "a/b", Payload: []byte("x")}
	pub.Properties.SetContentType("text/plain")
	pub.Properties.AddUser("k", "v")
	want, err := packet.Append(nil, pub, packet.V5)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	for i := range 4 {
		go func() {
			v := []packet.Version{packet.V31, packet.V311, packet.V5, packet.V5}[i]
			for range 200 {
				b, err := packet.Append(nil, pub, v)
				if err == nil && v == packet.V5 && !bytes.Equal(b, want) {
					err = errors.New("different encoding")
				}
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
