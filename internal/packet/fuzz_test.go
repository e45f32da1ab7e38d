package packet_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/packet/packettest"
)

var update = flag.Bool("update", false, "rewrite the fuzz seed corpus in testdata/fuzz from packettest.Cases")

// TestWriteCorpus writes testdata/fuzz/FuzzDecode, FuzzReader and
// FuzzParseHeader from the shared table when run with -update.
func TestWriteCorpus(t *testing.T) {
	if !*update {
		t.Skip("run with -update to regenerate the seed corpus")
	}
	for _, target := range []string{"FuzzDecode", "FuzzReader", "FuzzParseHeader"} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, c := range packettest.Cases {
			second := fmt.Sprintf("byte(%q)", rune(c.Version))
			if target != "FuzzDecode" {
				second += fmt.Sprintf("\nuint32(%d)", c.MaxSize)
			}
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n%s\n", c.Raw, second)
			sum := sha256.Sum256([]byte(body))
			name := filepath.Join(dir, hex.EncodeToString(sum[:8]))
			if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func fuzzVersion(b byte) packet.Version {
	return packet.V31 + packet.Version(b%3)
}

// roundTrip checks that a decoded packet re-encodes, that Size agrees,
// and that decoding the encoding gives the same packet and the same bytes.
func roundTrip(t *testing.T, p packet.Packet, v packet.Version) {
	t.Helper()
	ev := encodeVersion(p, v)
	enc, err := packet.Append(nil, p, ev)
	if err != nil {
		t.Fatalf("decoded %#v but Append fails: %v", p, err)
	}
	if n, err := packet.Size(p, ev); err != nil || n != len(enc) {
		t.Fatalf("Size = %d, %v; Append wrote %d bytes", n, err, len(enc))
	}
	p2, n, err := packet.Decode(enc, v, 0)
	if err != nil || n != len(enc) {
		t.Fatalf("Decode(Append(p)) = %d, %v\nenc % x", n, err, enc)
	}
	if !reflect.DeepEqual(p, p2) {
		t.Fatalf("round trip changed the packet\nfirst:  %s\nsecond: %s", dump(p), dump(p2))
	}
	enc2, err := packet.Append(nil, p2, ev)
	if err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("second encoding differs: %v\n% x\n% x", err, enc, enc2)
	}
}

func FuzzDecode(f *testing.F) {
	for _, c := range packettest.Cases {
		f.Add(c.Raw, byte(c.Version))
	}
	f.Fuzz(func(t *testing.T, data []byte, ver byte) {
		v := fuzzVersion(ver)
		p, n, err := packet.Decode(data, v, 0)
		if err != nil {
			if p != nil {
				if _, ok := p.(*packet.Connect); !ok {
					t.Fatalf("packet %T returned with error %v", p, err)
				}
			}
			var pe *packet.Error
			if !errors.As(err, &pe) && err != io.EOF && err != io.ErrUnexpectedEOF {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if n <= 0 || n > len(data) {
			t.Fatalf("Decode used %d of %d bytes", n, len(data))
		}
		roundTrip(t, p, v)
		// Whatever the encoder writes for another version, dropping what
		// that version cannot carry, must decode there.
		for _, ov := range []packet.Version{packet.V31, packet.V311, packet.V5} {
			enc, err := packet.Append(nil, p, ov)
			if err != nil {
				continue
			}
			if _, _, err := packet.Decode(enc, ov, 0); err != nil {
				t.Fatalf("%s encoded for %s does not decode: %v\n% x", dump(p), ov, err, enc)
			}
		}
	})
}

// FuzzReader checks that the streaming Reader, under a size limit,
// agrees with Decode packet by packet.
func FuzzReader(f *testing.F) {
	for _, c := range packettest.Cases {
		f.Add(c.Raw, byte(c.Version), c.MaxSize)
	}
	f.Fuzz(func(t *testing.T, data []byte, ver byte, max uint32) {
		v := fuzzVersion(ver)
		max %= 1 << 16
		r := packet.NewReader(&chunkReader{data: data, step: int(ver%7) + 1}, max)
		r.SetVersion(v)
		// The reserve function sees each body's size before it is
		// allocated, never more than the limit allows.
		reserved := -1
		r.SetReserve(func(size int) error {
			if size <= 0 || (max != 0 && size >= int(max)) {
				t.Fatalf("reserve(%d) with limit %d", size, max)
			}
			reserved = size
			return nil
		})
		rest := data
		for {
			reserved = -1
			buffered := r.BufferedPacket()
			p1, err1 := r.ReadPacket()
			p2, n, err2 := packet.Decode(rest, v, max)
			if buffered > 0 && err2 == nil && buffered != n {
				t.Fatalf("BufferedPacket = %d for a packet of %d bytes", buffered, n)
			}
			if err1 == nil && reserved != -1 && (n < reserved+2 || n > reserved+5) {
				t.Fatalf("reserved %d for a packet of %d bytes", reserved, n)
			}
			if (err1 == nil) != (err2 == nil) || !reflect.DeepEqual(p1, p2) {
				t.Fatalf("Reader: %s, %v\nDecode: %s, %v", dump(p1), err1, dump(p2), err2)
			}
			if err1 != nil {
				if packet.CodeOf(err1) != packet.CodeOf(err2) || errors.Is(err1, io.EOF) != errors.Is(err2, io.EOF) {
					t.Fatalf("Reader error %v, Decode error %v", err1, err2)
				}
				return
			}
			if c, ok := p1.(*packet.Connect); ok {
				v = c.Version
			}
			rest = rest[n:]
		}
	})
}

// FuzzParseHeader: ParseHeader agrees with Reader.ReadPacket on the same
// bytes. A fixed header it refuses is refused by ReadPacket with the same
// code; input that ends inside the fixed header is short for ReadPacket
// too; otherwise ReadPacket consumes exactly the size it reports (whether
// or not the body then decodes), or finds the input short when it is, and
// a packet it returns has the type reported.
func FuzzParseHeader(f *testing.F) {
	for _, c := range packettest.Cases {
		f.Add(c.Raw, byte(c.Version), c.MaxSize)
	}
	f.Fuzz(func(t *testing.T, data []byte, ver byte, max uint32) {
		v := fuzzVersion(ver)
		max %= 1 << 16
		typ, flags, size, err := packet.ParseHeader(data, v, max)
		src := bytes.NewReader(data)
		br := bufio.NewReader(src)
		r := packet.NewReader(br, max)
		r.SetVersion(v)
		p, rerr := r.ReadPacket()
		consumed := len(data) - src.Len() - br.Buffered()
		switch {
		case err == io.EOF:
			if len(data) != 0 || rerr != io.EOF {
				t.Fatalf("ParseHeader: EOF for %d bytes; ReadPacket: %v", len(data), rerr)
			}
		case err == io.ErrUnexpectedEOF:
			if rerr != io.ErrUnexpectedEOF {
				t.Fatalf("ParseHeader: short fixed header; ReadPacket: %v", rerr)
			}
		case err != nil:
			var pe *packet.Error
			if !errors.As(err, &pe) {
				t.Fatalf("ParseHeader: error of type %T: %v", err, err)
			}
			if rerr == nil || packet.CodeOf(err) != packet.CodeOf(rerr) ||
				errors.Is(err, packet.ErrPacketTooLarge) != errors.Is(rerr, packet.ErrPacketTooLarge) {
				t.Fatalf("ParseHeader: %v; ReadPacket: %v", err, rerr)
			}
		default:
			if size < 2 || size > len(data) && rerr != io.ErrUnexpectedEOF {
				t.Fatalf("ParseHeader: size %d of %d bytes; ReadPacket: %v", size, len(data), rerr)
			}
			if typ != packet.Type(data[0]>>4) || flags != data[0]&0x0F {
				t.Fatalf("ParseHeader: type %d flags %#x for first byte %#x", typ, flags, data[0])
			}
			if size <= len(data) && consumed != size {
				t.Fatalf("ParseHeader: size %d; ReadPacket consumed %d (%v)", size, consumed, rerr)
			}
			if p != nil && p.Type() != typ {
				t.Fatalf("ParseHeader: type %s; ReadPacket: %s", typ, p.Type())
			}
		}
	})
}

// chunkReader returns data a few bytes at a time.
type chunkReader struct {
	data []byte
	step int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), c.step, len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// FuzzPublishTopic: PublishTopic never panics, and on any input that
// Decode takes for one MQTT 5 PUBLISH with a topic name it returns that
// topic; a topic it returns lies within the input.
func FuzzPublishTopic(f *testing.F) {
	for _, c := range packettest.Cases {
		f.Add(c.Raw)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		topic, ok := packet.PublishTopic(b)
		if ok && (len(topic) == 0 || len(topic) > len(b)) {
			t.Fatalf("topic of %d bytes from %d", len(topic), len(b))
		}
		p, n, err := packet.Decode(b, packet.V5, 0)
		if err != nil || n != len(b) {
			return
		}
		if pub, isPub := p.(*packet.Publish); isPub && pub.Topic != "" && (!ok || string(topic) != pub.Topic) {
			t.Fatalf("topic %q %v, decoded %q", topic, ok, pub.Topic)
		}
	})
}
