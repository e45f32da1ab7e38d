package packet_test

import (
	"bufio"
	"bytes"
	"io"
	"reflect"
	"testing"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/packet/packettest"
)

// plainAck returns the type, identifier and reason code of an
// acknowledgement without properties; ok is false for anything else.
func plainAck(p packet.Packet) (t packet.Type, pid uint16, code packet.ReasonCode, ok bool) {
	var props *packet.Properties
	switch a := p.(type) {
	case *packet.Puback:
		pid, code, props = a.PacketID, a.ReasonCode, &a.Properties
	case *packet.Pubrec:
		pid, code, props = a.PacketID, a.ReasonCode, &a.Properties
	case *packet.Pubrel:
		pid, code, props = a.PacketID, a.ReasonCode, &a.Properties
	case *packet.Pubcomp:
		pid, code, props = a.PacketID, a.ReasonCode, &a.Properties
	default:
		return 0, 0, 0, false
	}
	if props.Present != 0 || len(props.User) > 0 {
		return 0, 0, 0, false
	}
	return p.Type(), pid, code, true
}

// checkShortAck checks ParseShortAck on b against Decode in version v:
// it must take exactly the 4-byte acknowledgements Decode accepts as
// Success without properties, and agree on type and identifier.
func checkShortAck(t *testing.T, b []byte, v packet.Version) {
	t.Helper()
	typ, pid, ok := packet.ParseShortAck(b)
	p, n, err := packet.Decode(b, v, 0)
	dt, dpid, code, plain := plainAck(p)
	// Only the canonical bytes: a 3.1 PUBREL with the DUP flag, which
	// Decode accepts, is left to the decoder.
	want := err == nil && n == 4 && plain && code == packet.Success &&
		bytes.Equal(packet.AppendShortAck(nil, dt, dpid, code, v), b[:4])
	if ok != want {
		t.Fatalf("ParseShortAck(% x) ok = %v; Decode in %s: %v, %d bytes, %v", b, ok, v, dump(p), n, err)
	}
	if ok && (typ != dt || pid != dpid) {
		t.Fatalf("ParseShortAck(% x) = %s %d; Decode: %s %d", b, typ, pid, dt, dpid)
	}
	if ok {
		if enc := packet.AppendShortAck(nil, typ, pid, packet.Success, v); !bytes.Equal(enc, b[:4]) {
			t.Fatalf("AppendShortAck(%s, %d) = % x, parsed from % x", typ, pid, enc, b[:4])
		}
	}
}

func TestParseShortAckTable(t *testing.T) {
	for _, c := range packettest.Cases {
		t.Run(c.Name, func(t *testing.T) {
			checkShortAck(t, c.Raw, c.Version)

			// The Reader takes the same packets, only from its buffer, and
			// leaves everything else to ReadPacket.
			br := bufio.NewReader(bytes.NewReader(c.Raw))
			br.Peek(len(c.Raw))
			r := packet.NewReader(br, 0)
			r.SetVersion(c.Version)
			typ, pid, ok := r.PeekShortAck()
			t2, pid2, ok2 := packet.ParseShortAck(c.Raw)
			if typ != t2 || pid != pid2 || ok != ok2 {
				t.Fatalf("PeekShortAck = %s %d %v, ParseShortAck = %s %d %v", typ, pid, ok, t2, pid2, ok2)
			}
			want, _, wantErr := packet.Decode(c.Raw, c.Version, 0)
			if ok {
				want, wantErr = nil, io.EOF
				if len(c.Raw) > 4 {
					want, _, wantErr = packet.Decode(c.Raw[4:], c.Version, 0)
				}
			}
			got, err := r.ReadPacket()
			if !reflect.DeepEqual(got, want) || (err == nil) != (wantErr == nil) {
				t.Fatalf("after PeekShortAck, ReadPacket = %s, %v; want %s, %v", dump(got), err, dump(want), wantErr)
			}
		})
	}
}

func TestPeekShortAckUnbuffered(t *testing.T) {
	// Nothing buffered yet: PeekShortAck must not read (it would block on
	// a network connection).
	r := packet.NewReader(bytes.NewReader([]byte{0x40, 2, 0, 1}), 0)
	if _, _, ok := r.PeekShortAck(); ok {
		t.Fatal("PeekShortAck read from the underlying reader")
	}
	p, err := r.ReadPacket()
	if pa, ok := p.(*packet.Puback); !ok || pa.PacketID != 1 || err != nil {
		t.Fatalf("ReadPacket = %s, %v", dump(p), err)
	}
}

// TestAppendShortAck checks AppendShortAck against Append for every
// acknowledgement type, reason code and version Append accepts, and
// against the table's acknowledgements without properties.
func TestAppendShortAck(t *testing.T) {
	mk := map[packet.Type]func(pid uint16, code packet.ReasonCode) packet.Packet{
		packet.PUBACK: func(pid uint16, c packet.ReasonCode) packet.Packet {
			return &packet.Puback{PacketID: pid, ReasonCode: c}
		},
		packet.PUBREC: func(pid uint16, c packet.ReasonCode) packet.Packet {
			return &packet.Pubrec{PacketID: pid, ReasonCode: c}
		},
		packet.PUBREL: func(pid uint16, c packet.ReasonCode) packet.Packet {
			return &packet.Pubrel{PacketID: pid, ReasonCode: c}
		},
		packet.PUBCOMP: func(pid uint16, c packet.ReasonCode) packet.Packet {
			return &packet.Pubcomp{PacketID: pid, ReasonCode: c}
		},
	}
	prefix := []byte("prefix")
	for typ, f := range mk {
		for code := range 256 {
			for _, v := range []packet.Version{packet.V31, packet.V311, packet.V5} {
				for _, pid := range []uint16{1, 0x1234, 0xFFFF} {
					want, err := packet.Append(prefix, f(pid, packet.ReasonCode(code)), v)
					if err != nil {
						continue // a code not defined for typ
					}
					got := packet.AppendShortAck(prefix, typ, pid, packet.ReasonCode(code), v)
					if !bytes.Equal(got, want) {
						t.Fatalf("%s 0x%02X %s: AppendShortAck % x, Append % x", typ, code, v, got, want)
					}
				}
			}
		}
	}
	for _, c := range packettest.Cases {
		typ, pid, code, ok := plainAck(c.Packet)
		if c.Err != nil || c.NonCanonical || !ok {
			continue
		}
		if got := packet.AppendShortAck(nil, typ, pid, code, c.Version); !bytes.Equal(got, c.Raw) {
			t.Errorf("%s: AppendShortAck % x, table % x", c.Name, got, c.Raw)
		}
	}
}

// FuzzShortAck checks that ParseShortAck agrees with Decode in every
// version, and AppendShortAck with what was parsed.
func FuzzShortAck(f *testing.F) {
	for _, c := range packettest.Cases {
		f.Add(c.Raw)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range []packet.Version{packet.V31, packet.V311, packet.V5} {
			checkShortAck(t, data, v)
		}
	})
}
