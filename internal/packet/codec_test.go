package packet_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
	"testing/iotest"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/packet/packettest"
)

// checkErr compares a decoding error with the case's expectation.
func checkErr(t *testing.T, c packettest.Case, err error) {
	t.Helper()
	if c.Err == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error, want %v", c.Err)
	}
	if !errors.Is(err, c.Err) {
		t.Fatalf("error %v, want %v", err, c.Err)
	}
	var pe *packet.Error
	if errors.As(err, &pe) {
		if pe.Code != c.Code {
			t.Fatalf("error %v has code %s, want %s", err, pe.Code, c.Code)
		}
	} else if c.Err != io.ErrUnexpectedEOF {
		t.Fatalf("error %v is not a *packet.Error", err)
	}
}

func checkPacket(t *testing.T, got, want packet.Packet) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("packet mismatch\n got: %s\nwant: %s", dump(got), dump(want))
	}
}

func dump(p packet.Packet) string {
	if c, ok := p.(*packet.Connect); ok && c != nil && c.Will != nil {
		return fmt.Sprintf("%#v will=%#v", *c, *c.Will)
	}
	return fmt.Sprintf("%#v", p)
}

func TestDecodeTable(t *testing.T) {
	for _, c := range packettest.Cases {
		t.Run(c.Name, func(t *testing.T) {
			p, n, err := packet.Decode(c.Raw, c.Version, c.MaxSize)
			checkErr(t, c, err)
			checkPacket(t, p, c.Packet)
			if err == nil && n != len(c.Raw) {
				t.Fatalf("Decode used %d bytes of %d", n, len(c.Raw))
			}
		})
	}
}

func TestReaderTable(t *testing.T) {
	for _, c := range packettest.Cases {
		t.Run(c.Name, func(t *testing.T) {
			r := packet.NewReader(iotest.HalfReader(bytes.NewReader(c.Raw)), c.MaxSize)
			r.SetVersion(c.Version)
			p, err := r.ReadPacket()
			checkErr(t, c, err)
			checkPacket(t, p, c.Packet)
			if err == nil {
				if _, err := r.ReadPacket(); err != io.EOF {
					t.Fatalf("after the packet: %v, want io.EOF", err)
				}
			}
		})
	}
}

// TestParseHeader: the fixed header of every valid packet of the table
// gives its type and whole size; truncated and refused headers give the
// errors Decode gives.
func TestParseHeader(t *testing.T) {
	for _, c := range packettest.Cases {
		if c.Err != nil {
			continue // FuzzParseHeader compares the refusals with the Reader's
		}
		t.Run(c.Name, func(t *testing.T) {
			typ, _, size, err := packet.ParseHeader(c.Raw, c.Version, c.MaxSize)
			if err != nil || typ != c.Packet.Type() || size != len(c.Raw) {
				t.Fatalf("ParseHeader = %s, %d, %v; want %s, %d", typ, size, err, c.Packet.Type(), len(c.Raw))
			}
		})
	}
	for _, c := range []struct {
		name string
		raw  []byte
		v    packet.Version
		max  uint32
		typ  packet.Type
		size int
		err  error
		code packet.ReasonCode
	}{
		{name: "empty", err: io.EOF},
		{name: "first byte only", raw: []byte{0xC0}, err: io.ErrUnexpectedEOF},
		{name: "remaining length continues", raw: []byte{0x30, 0x80}, err: io.ErrUnexpectedEOF},
		{name: "PINGREQ", raw: []byte{0xC0, 0x00}, typ: packet.PINGREQ, size: 2},
		{name: "PINGREQ with a byte of the next packet", raw: []byte{0xC0, 0x00, 0x30}, typ: packet.PINGREQ, size: 2},
		{name: "PUBLISH body not here yet", raw: []byte{0x32, 0xFF, 0x01}, typ: packet.PUBLISH, size: 3 + 255},
		{name: "larger than the maximum", raw: []byte{0x32, 0xFF, 0x01}, max: 100, err: packet.ErrPacketTooLarge, code: packet.PacketTooLarge},
		{name: "MQTT-1.5.5 five-byte remaining length", raw: []byte{0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}, err: packet.ErrMalformed, code: packet.MalformedPacket},
		{name: "MQTT-1.5.5-1 remaining length not minimal", raw: []byte{0x30, 0x80, 0x00}, err: packet.ErrMalformed, code: packet.MalformedPacket},
		{name: "MQTT-2.1.3-1 PINGREQ flags", raw: []byte{0xC1, 0x00}, err: packet.ErrMalformed, code: packet.MalformedPacket},
		{name: "reserved type 0", raw: []byte{0x00, 0x00}, err: packet.ErrMalformed, code: packet.MalformedPacket},
		{name: "AUTH before MQTT 5", raw: []byte{0xF0, 0x00}, v: packet.V311, err: packet.ErrMalformed, code: packet.MalformedPacket},
		{name: "AUTH in MQTT 5", raw: []byte{0xF0, 0x00}, v: packet.V5, typ: packet.AUTH, size: 2},
		{name: "unknown version as 3.1.1", raw: []byte{0xF0, 0x00}, v: 9, err: packet.ErrMalformed, code: packet.MalformedPacket},
	} {
		t.Run(c.name, func(t *testing.T) {
			typ, _, size, err := packet.ParseHeader(c.raw, c.v, c.max)
			if !errors.Is(err, c.err) || c.err == nil && err != nil {
				t.Fatalf("error %v, want %v", err, c.err)
			}
			if c.code != 0 && packet.CodeOf(err) != c.code {
				t.Fatalf("error %v has code %s, want %s", err, packet.CodeOf(err), c.code)
			}
			if err == nil && (typ != c.typ || size != c.size) {
				t.Fatalf("ParseHeader = %s, %d; want %s, %d", typ, size, c.typ, c.size)
			}
		})
	}
}

// encodeVersion is the version a decoded packet is encoded back with.
func encodeVersion(p packet.Packet, v packet.Version) packet.Version {
	if c, ok := p.(*packet.Connect); ok {
		return c.Version
	}
	return v
}

func TestEncodeTable(t *testing.T) {
	for _, c := range packettest.Cases {
		if c.Err != nil {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			v := encodeVersion(c.Packet, c.Version)
			prefix := []byte("prefix")
			b, err := packet.Append(prefix, c.Packet, v)
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if !bytes.Equal(b[:len(prefix)], prefix) {
				t.Fatal("Append changed dst")
			}
			b = b[len(prefix):]
			if !c.NonCanonical && !bytes.Equal(b, c.Raw) {
				t.Fatalf("Append\n got: % x\nwant: % x", b, c.Raw)
			}
			if c.NonCanonical && bytes.Equal(b, c.Raw) {
				t.Fatalf("case marked non-canonical but Append reproduces it")
			}
			n, err := packet.Size(c.Packet, v)
			if err != nil || n != len(b) {
				t.Fatalf("Size = %d, %v; Append wrote %d bytes", n, err, len(b))
			}
			p, _, err := packet.Decode(b, c.Version, 0)
			if err != nil {
				t.Fatalf("Decode(Append): %v", err)
			}
			checkPacket(t, p, c.Packet)
		})
	}
}

func TestEncodeErrors(t *testing.T) {
	for _, c := range packettest.EncodeCases {
		t.Run(c.Name, func(t *testing.T) {
			dst := []byte{1, 2, 3}
			b, err := packet.Append(dst, c.Packet, c.Version)
			if err == nil {
				t.Fatalf("Append succeeded: % x", b)
			}
			if c.Err != nil && !errors.Is(err, c.Err) {
				t.Fatalf("Append error %v, want %v", err, c.Err)
			}
			if !bytes.Equal(b, dst) {
				t.Fatalf("Append changed dst on error")
			}
			if _, err2 := packet.Size(c.Packet, c.Version); err2 == nil {
				t.Fatalf("Size succeeded where Append failed with %v", err)
			}
		})
	}
}

// Every strict prefix of a valid packet is incomplete, never malformed.
func TestDecodeIncomplete(t *testing.T) {
	for _, c := range packettest.Cases {
		if c.Err != nil {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			for i := range len(c.Raw) {
				_, _, err := packet.Decode(c.Raw[:i], c.Version, 0)
				want := io.ErrUnexpectedEOF
				if i == 0 {
					want = io.EOF
				}
				if err != want {
					t.Fatalf("prefix of %d bytes: %v, want %v", i, err, want)
				}
				r := packet.NewReader(bytes.NewReader(c.Raw[:i]), 0)
				r.SetVersion(c.Version)
				if _, err := r.ReadPacket(); err != want {
					t.Fatalf("Reader, prefix of %d bytes: %v, want %v", i, err, want)
				}
			}
		})
	}
}

// Packets of a 5.0 session forwarded to 3.x peers lose what 3.x cannot
// carry, silently.
func TestEncodeDowngrade(t *testing.T) {
	props := packettest.NewP().Set(packet.PropTopicAlias, uint16(2)).Set(packet.PropUser, [2]string{"a", "b"}).
		Set(packet.PropReasonString, "x").Build()
	tests := []struct {
		name string
		p    packet.Packet
		v    packet.Version
		want []byte
	}{
		{"PUBLISH properties dropped", &packet.Publish{QoS: 1, PacketID: 1, Topic: "t", Payload: []byte("p"),
			Properties: packettest.NewP().Set(packet.PropMessageExpiry, uint32(5)).Build()},
			packet.V311, packettest.Pkt(0x32, packettest.S("t"), 0, 1, "p")},
		{"PUBACK reason code and properties dropped", &packet.Puback{PacketID: 1, ReasonCode: packet.NotAuthorized,
			Properties: packettest.NewP().Set(packet.PropReasonString, "x").Build()},
			packet.V311, packettest.Pkt(0x40, 0, 1)},
		{"PUBREL reason code dropped", &packet.Pubrel{PacketID: 1, ReasonCode: packet.PacketIDNotFound},
			packet.V31, packettest.Pkt(0x62, 0, 1)},
		{"MQTT-3.9.3-2 SUBACK codes of 0x80 and above become 0x80", &packet.Suback{PacketID: 1,
			ReasonCodes: []packet.ReasonCode{packet.GrantedQoS2, packet.NotAuthorized, packet.QuotaExceeded}},
			packet.V311, packettest.Pkt(0x90, 0, 1, 2, 0x80, 0x80)},
		{"UNSUBACK codes dropped", &packet.Unsuback{PacketID: 1, ReasonCodes: []packet.ReasonCode{packet.Success}},
			packet.V311, packettest.Pkt(0xB0, 0, 1)},
		{"CONNACK 5.0 code mapped", &packet.Connack{ReasonCode: packet.Banned}, packet.V311, packettest.Pkt(0x20, 0, 5)},
		{"CONNACK unsupported version mapped", &packet.Connack{ReasonCode: packet.UnsupportedProtocolVersion},
			packet.V31, packettest.Pkt(0x20, 0, 1)},
		{"CONNACK 3.1 has no Session Present", &packet.Connack{SessionPresent: true}, packet.V31, packettest.Pkt(0x20, 0, 0)},
		{"CONNACK 3.x code kept", &packet.Connack{ReasonCode: packet.V3IdentifierRejected}, packet.V311, packettest.Pkt(0x20, 0, 2)},
		{"SUBSCRIBE 5.0 options dropped", &packet.Subscribe{PacketID: 1, Properties: props,
			Subscriptions: []packet.Subscription{{Filter: "a", QoS: 1, NoLocal: true, RetainAsPublished: true, RetainHandling: 2}}},
			packet.V311, packettest.Pkt(0x82, 0, 1, packettest.S("a"), 1)},
		{"DISCONNECT reason dropped", &packet.Disconnect{ReasonCode: packet.ServerShuttingDown}, packet.V311, packettest.Pkt(0xE0)},
		{"CONNECT zero Version uses v", &packet.Connect{ClientID: "c", Properties: props}, packet.V31,
			packettest.Pkt(0x10, packettest.S("MQIsdp"), 3, 0, 0, 0, packettest.S("c"))},
	}
	_ = props
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := packet.Append(nil, tt.p, tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, tt.want) {
				t.Fatalf("got % x, want % x", b, tt.want)
			}
		})
	}
}

func TestReaderStream(t *testing.T) {
	var stream []byte
	var want []packet.Packet
	for _, c := range packettest.Cases {
		if c.Err == nil && c.Version == packet.V5 && c.MaxSize == 0 {
			if _, ok := c.Packet.(*packet.Connect); ok {
				continue
			}
			stream = append(stream, c.Raw...)
			want = append(want, c.Packet)
		}
	}
	// A 5.0 CONNECT first switches the Reader to 5.0.
	connect := packettest.Pkt(0x10, packettest.S("MQTT"), 5, 2, 0, 0, 0, packettest.S("c"))
	stream = append(connect, stream...)
	r := packet.NewReader(iotest.OneByteReader(bytes.NewReader(stream)), 0)
	if _, err := r.ReadPacket(); err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		p, err := r.ReadPacket()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		checkPacket(t, p, w)
	}
	if _, err := r.ReadPacket(); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestReaderLimits(t *testing.T) {
	t.Run("MQTT 5.0 §3.1.2.11.4 too large refused from the header", func(t *testing.T) {
		// Header of a 200 MB PUBLISH followed by endless zeros: the Reader
		// must refuse it without reading the body.
		hdr := []byte{0x30, 0x80, 0x80, 0x80, 0x60}
		cr := &countingReader{r: io.MultiReader(bytes.NewReader(hdr), zeros{})}
		r := packet.NewReader(cr, 1<<20)
		_, err := r.ReadPacket()
		if !errors.Is(err, packet.ErrPacketTooLarge) || packet.CodeOf(err) != packet.PacketTooLarge {
			t.Fatalf("err = %v", err)
		}
		if cr.n > 4096+len(hdr) {
			t.Fatalf("read %d bytes before refusing", cr.n)
		}
	})
	t.Run("default limit is the protocol maximum", func(t *testing.T) {
		r := packet.NewReader(bytes.NewReader([]byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F}), 0)
		if _, err := r.ReadPacket(); err != io.ErrUnexpectedEOF {
			t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("SetMaxPacketSize", func(t *testing.T) {
		raw := packettest.Pkt(0x30, packettest.S("t"), packettest.Repeat('x', 100))
		r := packet.NewReader(bytes.NewReader(append(append([]byte{}, raw...), raw...)), 0)
		if _, err := r.ReadPacket(); err != nil {
			t.Fatal(err)
		}
		r.SetMaxPacketSize(50)
		if _, err := r.ReadPacket(); !errors.Is(err, packet.ErrPacketTooLarge) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("large body read in growing chunks", func(t *testing.T) {
		payload := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320 kB
		raw, err := packet.Append(nil, &packet.Publish{Topic: "big", Payload: payload}, packet.V311)
		if err != nil {
			t.Fatal(err)
		}
		r := packet.NewReader(iotest.HalfReader(bytes.NewReader(raw)), 0)
		p, err := r.ReadPacket()
		if err != nil {
			t.Fatal(err)
		}
		pub := p.(*packet.Publish)
		if !bytes.Equal(pub.Payload, payload) || cap(pub.Payload) != len(payload) {
			t.Fatalf("payload len %d cap %d", len(pub.Payload), cap(pub.Payload))
		}
		// Truncated large body.
		r = packet.NewReader(bytes.NewReader(raw[:len(raw)-1]), 0)
		if _, err := r.ReadPacket(); err != io.ErrUnexpectedEOF {
			t.Fatalf("truncated: %v", err)
		}
	})
	t.Run("read errors pass through", func(t *testing.T) {
		boom := errors.New("boom")
		r := packet.NewReader(iotest.ErrReader(boom), 0)
		if _, err := r.ReadPacket(); err != boom {
			t.Fatalf("err = %v", err)
		}
		r = packet.NewReader(io.MultiReader(bytes.NewReader([]byte{0x30, 5, 0}), iotest.ErrReader(boom)), 0)
		if _, err := r.ReadPacket(); err != boom {
			t.Fatalf("mid-packet err = %v", err)
		}
	})
	t.Run("bodies are not reused", func(t *testing.T) {
		a := packettest.Pkt(0x30, packettest.S("t"), "first")
		b := packettest.Pkt(0x30, packettest.S("t"), "other")
		r := packet.NewReader(bytes.NewReader(append(append([]byte{}, a...), b...)), 0)
		p1, _ := r.ReadPacket()
		p2, _ := r.ReadPacket()
		if string(p1.(*packet.Publish).Payload) != "first" || string(p2.(*packet.Publish).Payload) != "other" {
			t.Fatal("payloads overwritten")
		}
	})
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestReaderVersion(t *testing.T) {
	// A 3.1.1 CONNECT keeps 3.1.1 rules: a PUBLISH with what would be a
	// property length is read as payload.
	raw := append(packettest.Pkt(0x10, packettest.S("MQTT"), 4, 2, 0, 0, packettest.S("c")),
		packettest.Pkt(0x30, packettest.S("t"), 0)...)
	r := packet.NewReader(bytes.NewReader(raw), 0)
	r.SetVersion(packet.V5)
	if _, err := r.ReadPacket(); err != nil {
		t.Fatal(err)
	}
	p, err := r.ReadPacket()
	if err != nil {
		t.Fatal(err)
	}
	if pub := p.(*packet.Publish); len(pub.Payload) != 1 {
		t.Fatalf("payload %q: Reader did not switch to 3.1.1", pub.Payload)
	}
	// An unsupported CONNECT does not change the version.
	raw = packettest.Pkt(0x10, packettest.S("MQTT"), 9, 2, 0, 0, packettest.S("c"))
	r = packet.NewReader(bytes.NewReader(raw), 0)
	p, err = r.ReadPacket()
	if !errors.Is(err, packet.ErrUnsupportedVersion) || packet.CodeOf(err) != packet.UnsupportedProtocolVersion {
		t.Fatalf("err = %v", err)
	}
	if c, ok := p.(*packet.Connect); !ok || c.Version != 9 {
		t.Fatalf("partial CONNECT = %#v", p)
	}
}

func TestCheckPayloadFormat(t *testing.T) {
	utf8 := packettest.NewP().Set(packet.PropPayloadFormat, byte(1)).Build()
	bytesFmt := packettest.NewP().Set(packet.PropPayloadFormat, byte(0)).Build()
	tests := []struct {
		name    string
		props   packet.Properties
		payload []byte
		ok      bool
	}{
		{"MQTT-3.3.2-4 UTF-8 indicator, valid", utf8, []byte("héllo"), true},
		{"MQTT-3.3.2-4 UTF-8 indicator, invalid", utf8, []byte{0xC3}, false},
		{"bytes indicator", bytesFmt, []byte{0xC3}, true},
		{"no indicator", packet.Properties{}, []byte{0xC3}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := packet.CheckPayloadFormat(&tt.props, tt.payload)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v", err)
			}
			if err != nil && packet.CodeOf(err) != packet.PayloadFormatInvalid {
				t.Fatalf("code %s", packet.CodeOf(err))
			}
		})
	}
}

func TestPropertyTables(t *testing.T) {
	if !packet.PropertyAllowed(packet.PUBLISH, packet.PropTopicAlias) || packet.PropertyAllowed(packet.CONNECT, packet.PropTopicAlias) {
		t.Error("Topic Alias placement")
	}
	if !packet.WillPropertyAllowed(packet.PropWillDelay) || packet.WillPropertyAllowed(packet.PropSessionExpiry) {
		t.Error("will properties")
	}
	if packet.PropertyAllowed(packet.PINGREQ, packet.PropUser) || packet.PropertyAllowed(packet.PUBLISH, 200) {
		t.Error("PINGREQ or unknown identifier")
	}
	if !packet.ValidReasonCode(packet.SUBACK, packet.GrantedQoS2) || packet.ValidReasonCode(packet.PUBREL, packet.NotAuthorized) {
		t.Error("reason code sets")
	}
	if packet.PropTopicAlias.String() != "Topic Alias" || packet.PropID(0x7F).String() != "property 0x7F" {
		t.Error("PropID.String")
	}
}

func TestPropertySetters(t *testing.T) {
	var p packet.Properties
	p.SetPayloadFormat(1)
	p.SetMessageExpiry(5)
	p.SetContentType("c")
	p.SetResponseTopic("r")
	p.SetCorrelationData([]byte("d"))
	p.AddSubscriptionID(7)
	p.AddUser("k", "v")
	p.SetTopicAlias(1)
	pub := &packet.Publish{Topic: "t", Properties: p}
	b, err := packet.Append(nil, pub, packet.V5)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := packet.Decode(b, packet.V5, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkPacket(t, got, pub)

	var c packet.Properties
	c.SetSessionExpiry(1)
	c.SetAssignedClientID("a")
	c.SetServerKeepAlive(2)
	c.SetAuthMethod("m")
	c.SetAuthData([]byte("x"))
	c.SetResponseInfo("i")
	c.SetServerReference("s")
	c.SetReasonString("r")
	c.SetReceiveMaximum(3)
	c.SetTopicAliasMaximum(4)
	c.SetMaximumQoS(1)
	c.SetRetainAvailable(false)
	c.SetMaximumPacketSize(100)
	c.SetWildcardSubAvailable(true)
	c.SetSubIDAvailable(false)
	c.SetSharedSubAvailable(true)
	ack := &packet.Connack{Properties: c}
	if b, err = packet.Append(nil, ack, packet.V5); err != nil {
		t.Fatal(err)
	}
	if got, _, err = packet.Decode(b, packet.V5, 0); err != nil {
		t.Fatal(err)
	}
	checkPacket(t, got, ack)

	var w packet.Properties
	w.SetWillDelay(9)
	w.SetRequestProblemInfo(0)
	if _, err := packet.Append(nil, &packet.Connect{ClientID: "c", Will: &packet.Will{Topic: "t", Properties: w}}, packet.V5); err == nil {
		t.Fatal("Request Problem Information accepted in will properties")
	}
	w.Unmark(packet.PropRequestProblemInfo)
	var cp packet.Properties
	cp.SetRequestProblemInfo(0)
	cp.SetRequestResponseInfo(1)
	conn := &packet.Connect{Version: packet.V5, ProtocolName: "MQTT", ClientID: "c", Properties: cp,
		Will: &packet.Will{Topic: "t", Properties: w}}
	if b, err = packet.Append(nil, conn, packet.V311); err != nil {
		t.Fatal(err)
	}
	if got, _, err = packet.Decode(b, packet.V311, 0); err != nil {
		t.Fatal(err)
	}
	checkPacket(t, got, conn)
}

// TestReaderBufferedPacket checks BufferedPacket against the bytes
// buffered: the next packet's length once all of it is there, 0 before.
func TestReaderBufferedPacket(t *testing.T) {
	var stream []byte
	var lens []int
	for _, c := range packettest.Cases {
		if c.Err == nil {
			stream = append(stream, c.Raw...)
			lens = append(lens, len(c.Raw))
		}
	}
	for cut := 0; cut <= len(stream) && cut < 600; cut++ {
		br := bufio.NewReaderSize(bytes.NewReader(stream[:cut]), len(stream)+16)
		br.Peek(cut)
		r := packet.NewReader(br, 0)
		want := 0
		if cut >= lens[0] {
			want = lens[0]
		}
		if got := r.BufferedPacket(); got != want {
			t.Fatalf("%d bytes buffered: BufferedPacket = %d, want %d", cut, got, want)
		}
	}
	br := bufio.NewReaderSize(bytes.NewReader(stream), len(stream)+16)
	br.Peek(len(stream))
	r := packet.NewReader(br, 0)
	for i, n := range lens {
		if got := r.BufferedPacket(); got != n {
			t.Fatalf("packet %d: BufferedPacket = %d, want %d", i, got, n)
		}
		if _, err := br.Discard(n); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.BufferedPacket(); got != 0 {
		t.Fatalf("empty buffer: BufferedPacket = %d", got)
	}
	// A remaining length that is not minimal or too long is left to
	// ReadPacket, which reports it.
	for _, b := range [][]byte{{0x30, 0x80, 0x00}, {0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}} {
		br := bufio.NewReader(bytes.NewReader(b))
		br.Peek(len(b))
		if got := packet.NewReader(br, 0).BufferedPacket(); got != 0 {
			t.Fatalf("% x: BufferedPacket = %d", b, got)
		}
	}
}
