package packet

import (
	"fmt"
	"io"
)

// MaxPacketSizeLimit is the largest packet MQTT can express: a 4-byte
// remaining length of 268,435,455 plus the 5-byte fixed header.
const MaxPacketSizeLimit = 268435455 + 5

// encoder is implemented by every packet struct.
type encoder interface {
	Packet
	// bodySize validates the packet for version v and returns the length
	// of its body (the Remaining Length).
	bodySize(v Version) (int, error)
	// appendBody appends the body; only called after bodySize succeeded.
	appendBody(b []byte, v Version) []byte
}

// checkVersion maps 0 to V311 and rejects unknown versions.
func checkVersion(v Version) (Version, error) {
	switch v {
	case 0:
		return V311, nil
	case V31, V311, V5:
		return v, nil
	}
	return 0, fmt.Errorf("packet: unknown protocol version %d", byte(v))
}

func tooLarge(t Type, size, max uint64) *Error {
	return &Error{Code: PacketTooLarge, Type: t,
		Reason: fmt.Sprintf("packet of %d bytes exceeds the maximum of %d", size, max), Err: ErrPacketTooLarge}
}

// Decode decodes the single packet at the start of b and returns it with
// the number of bytes it used. v is the session's protocol version (ignored
// for CONNECT; 0 means V311); maxPacketSize as for NewReader.
//
// Byte slices in the returned packet (Payload, Password, CorrelationData,
// ...) alias b; strings are copies. Decode returns io.EOF when b is empty
// and io.ErrUnexpectedEOF when b holds only part of a packet. Errors are
// as for Reader.ReadPacket, including the partial *Connect returned with a
// CONNECT error.
func Decode(b []byte, v Version, maxPacketSize uint32) (Packet, int, error) {
	v, err := checkVersion(v)
	if err != nil {
		return nil, 0, err
	}
	t, flags, hlen, total, err := parseHeader(b, v, maxPacketSize)
	if err != nil {
		return nil, 0, err
	}
	if len(b) < total {
		return nil, 0, io.ErrUnexpectedEOF
	}
	body := b[hlen:total:total]
	p, err := decodeBody(t, flags, body, v)
	return p, total, err
}

// PublishTopic returns the topic name of the PUBLISH packet at the start
// of b without decoding the rest of it (a reader that picks a few
// messages among many by topic); the result aliases b. It reports false
// when b does not start with a PUBLISH fixed header that Decode accepts
// under MQTT 5's rules, followed, within the packet, by a non-empty topic
// name (a PUBLISH that names its topic by alias only). It checks the
// framing only: a packet it passes may still be refused by Decode, which
// the caller must run before it uses the message.
func PublishTopic(b []byte) ([]byte, bool) {
	t, _, hlen, total, err := parseHeader(b, V5, 0)
	if err != nil || t != PUBLISH {
		return nil, false
	}
	body := b[hlen:min(total, len(b))]
	if len(body) < 2 {
		return nil, false
	}
	n := int(body[0])<<8 | int(body[1])
	if n == 0 || len(body)-2 < n {
		return nil, false
	}
	return body[2 : 2+n], true
}

// ParseHeader decodes the fixed header at the start of b as Decode and
// Reader.ReadPacket do, without reading the body: it returns the packet's
// type and flags and its size, fixed header included, of which b may
// hold only a part. It returns io.EOF when b is empty,
// io.ErrUnexpectedEOF when b ends inside the fixed header, and the *Error
// Decode returns for a fixed header it refuses: a malformed remaining
// length, a reserved type, wrong flags [MQTT-2.1.3-1], or a packet larger
// than maxPacketSize (0 means MaxPacketSizeLimit). v is the session's
// protocol version; values other than V31 and V5 apply the rules of
// V311, as for Reader.SetVersion. The header of a packet whose body is
// malformed passes: only decoding the body finds that.
func ParseHeader(b []byte, v Version, maxPacketSize uint32) (t Type, flags byte, size int, err error) {
	if v != V31 && v != V5 {
		v = V311
	}
	t, flags, _, size, err = parseHeader(b, v, maxPacketSize)
	return t, flags, size, err
}

// parseHeader is ParseHeader for a checked version; hlen is the length
// of the fixed header.
func parseHeader(b []byte, v Version, maxPacketSize uint32) (t Type, flags byte, hlen, size int, err error) {
	if len(b) == 0 {
		return 0, 0, 0, 0, io.EOF
	}
	t, flags = Type(b[0]>>4), b[0]&0x0F
	rl, n, st := parseVBI(b[1:])
	switch st {
	case vbiShort:
		return 0, 0, 0, 0, io.ErrUnexpectedEOF
	case vbiOK:
	default:
		return 0, 0, 0, 0, vbiError(t, "remaining length", st)
	}
	if err := checkHeader(t, flags, v); err != nil {
		return 0, 0, 0, 0, err
	}
	total := 1 + uint64(n) + uint64(rl)
	if max := limit(maxPacketSize); total > uint64(max) {
		return 0, 0, 0, 0, tooLarge(t, total, uint64(max))
	}
	return t, flags, 1 + n, int(total), nil
}

func limit(max uint32) uint32 {
	if max == 0 || max > MaxPacketSizeLimit {
		return MaxPacketSizeLimit
	}
	return max
}

// decodeBody decodes the body of a packet whose fixed header passed
// checkHeader. Byte slices in the result alias body.
func decodeBody(t Type, flags byte, body []byte, v Version) (Packet, error) {
	d := &decoder{b: body, t: t}
	// Each case returns a nil interface on error (never a typed nil),
	// except CONNECT, which returns the partial packet.
	switch t {
	case CONNECT:
		c, err := decodeConnect(d)
		switch {
		case c == nil:
			return nil, err
		case err != nil:
			// Only what identifies the protocol, never half a packet.
			return &Connect{ProtocolName: c.ProtocolName, Version: c.Version}, err
		}
		return c, nil
	case CONNACK:
		return ret(decodeConnack(d, v))
	case PUBLISH:
		return ret(decodePublish(d, flags, v))
	case PUBACK:
		p := &Puback{}
		return ret(p, decodeAck(d, p.ack(), v))
	case PUBREC:
		p := &Pubrec{}
		return ret(p, decodeAck(d, p.ack(), v))
	case PUBREL:
		p := &Pubrel{}
		return ret(p, decodeAck(d, p.ack(), v))
	case PUBCOMP:
		p := &Pubcomp{}
		return ret(p, decodeAck(d, p.ack(), v))
	case SUBSCRIBE:
		return ret(decodeSubscribe(d, v))
	case SUBACK:
		return ret(decodeSuback(d, v))
	case UNSUBSCRIBE:
		return ret(decodeUnsubscribe(d, v))
	case UNSUBACK:
		return ret(decodeUnsuback(d, v))
	case PINGREQ:
		return ret(&Pingreq{}, d.end())
	case PINGRESP:
		return ret(&Pingresp{}, d.end())
	case DISCONNECT:
		return ret(decodeDisconnect(d, v))
	case AUTH:
		return ret(decodeAuth(d))
	}
	return nil, malformed(t, "unknown packet type")
}

// ret converts a decoder's result, dropping the packet on error.
func ret[P Packet](p P, err error) (Packet, error) {
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Append appends the canonical encoding of p for protocol version v to dst.
// It returns an *Error when p cannot be expressed in v or breaks a rule the
// encoder can check (invalid topic, property not allowed in this packet).
// On error dst is returned unchanged. Append does not modify p, so one
// packet may be encoded concurrently for several connections.
//
// The encoding is canonical: properties in ascending identifier order,
// user properties in their given order, minimal variable byte integers,
// and the optional reason code and property length of PUBACK, PUBREC,
// PUBREL and PUBCOMP omitted whenever the specification allows it. The
// reason code of a 5.0 DISCONNECT and the reason code and property length
// of AUTH are always written, since widespread clients cannot read the
// shorter forms.
//
// For CONNECT, p's own Version is used when it is non-zero; v otherwise.
//
// For MQTT 3.1 and 3.1.1 everything that only exists in 5.0 is dropped,
// because the broker forwards messages from 5.0 publishers to 3.x
// subscribers: Properties of every packet, reason codes of PUBACK, PUBREC,
// PUBREL, PUBCOMP, UNSUBACK and DISCONNECT, and the No Local, Retain As
// Published and Retain Handling subscription options, and for 3.1 the
// Session Present flag of CONNACK. SUBACK codes of 0x80
// and above become 0x80, and CONNACK codes above 5 are mapped with
// V3ConnackCode. AUTH cannot be encoded for 3.x.
func Append(dst []byte, p Packet, v Version) ([]byte, error) {
	e, v, n, err := prepare(p, v)
	if err != nil {
		return dst, err
	}
	dst = append(dst, firstByte(e.Type(), flagsOf(e)))
	dst = appendVBI(dst, n)
	return e.appendBody(dst, v), nil
}

// Size returns the length in bytes of the encoding of p for version v, the
// figure compared with a peer's Maximum Packet Size. It returns the errors
// Append would.
func Size(p Packet, v Version) (int, error) {
	_, _, n, err := prepare(p, v)
	if err != nil {
		return 0, err
	}
	return 1 + vbiLen(n) + n, nil
}

// prepare validates p for v and returns it with its body length.
func prepare(p Packet, v Version) (encoder, Version, int, error) {
	e, ok := p.(encoder)
	if !ok || isNil(p) {
		return nil, 0, 0, fmt.Errorf("packet: cannot encode %T", p)
	}
	if c, ok := p.(*Connect); ok && c.Version != 0 {
		v = c.Version
	}
	v, err := checkVersion(v)
	if err != nil {
		return nil, 0, 0, err
	}
	n, err := e.bodySize(v)
	if err != nil {
		return nil, 0, 0, err
	}
	if n > maxVBI {
		return nil, 0, 0, tooLarge(e.Type(), uint64(1+4+n), MaxPacketSizeLimit)
	}
	return e, v, n, nil
}

func isNil(p Packet) bool {
	switch p := p.(type) {
	case *Connect:
		return p == nil
	case *Connack:
		return p == nil
	case *Publish:
		return p == nil
	case *Puback:
		return p == nil
	case *Pubrec:
		return p == nil
	case *Pubrel:
		return p == nil
	case *Pubcomp:
		return p == nil
	case *Subscribe:
		return p == nil
	case *Suback:
		return p == nil
	case *Unsubscribe:
		return p == nil
	case *Unsuback:
		return p == nil
	case *Pingreq:
		return p == nil
	case *Pingresp:
		return p == nil
	case *Disconnect:
		return p == nil
	case *Auth:
		return p == nil
	}
	return p == nil
}

// flagsOf returns the low nibble of the first byte [MQTT-2.1.3-1].
func flagsOf(p Packet) byte {
	switch p := p.(type) {
	case *Publish:
		return p.flags()
	case *Pubrel, *Subscribe, *Unsubscribe:
		return 0x02
	}
	return 0
}
