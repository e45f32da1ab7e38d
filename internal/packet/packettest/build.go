// Package packettest holds a table of raw MQTT packets and the packets
// they decode to (or the error they must produce), shared by the tests of
// the codec and of the broker. It is for tests only; nothing in the
// product imports it.
//
// Case names start with the specification clause they exercise where
// there is one, e.g. "MQTT-3.1.2-3 reserved connect flag".
package packettest

import "github.com/moatmq/moat/internal/packet"

// Case is one raw packet with its expected decoding.
type Case struct {
	Name    string
	Version packet.Version // session version passed to the decoder
	Raw     []byte

	// Packet is the expected result of decoding Raw. For failures it is
	// nil, except for CONNECT errors after the protocol level, where the
	// decoder returns the partial *Connect.
	Packet packet.Packet

	// Err is nil for a valid packet, otherwise the error errors.Is must
	// find: packet.ErrMalformed, packet.ErrProtocol,
	// packet.ErrPacketTooLarge, packet.ErrUnsupportedVersion or
	// io.ErrUnexpectedEOF. Code is then the reason code the error carries
	// (unused for io errors).
	Err  error
	Code packet.ReasonCode

	// MaxSize is the maximum packet size given to the decoder (0: none).
	MaxSize uint32

	// NonCanonical marks a valid Raw that Append does not reproduce byte
	// for byte (an optional form, another property order); Append of
	// Packet must then decode to Packet again.
	NonCanonical bool
}

// EncodeCase is a packet the encoder must refuse for Version.
type EncodeCase struct {
	Name    string
	Version packet.Version
	Packet  packet.Packet
	Err     error // sentinel for errors.Is; nil: any error
}

// Cat concatenates its arguments into bytes: a byte or an int is one byte,
// a rune (ASCII) is one byte, a []byte is copied, a string is copied raw (see S for a prefixed one).
func Cat(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b = append(b, p)
		case int:
			b = append(b, byte(p))
		case rune:
			b = append(b, byte(p))
		case []byte:
			b = append(b, p...)
		case string:
			b = append(b, p...)
		default:
			panic("packettest: Cat: unsupported part")
		}
	}
	return b
}

// S returns s as an MQTT string: a two-byte big-endian length, then s.
func S(s string) []byte {
	return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...)
}

// Pkt returns a packet with first byte first and the body made of parts
// (as for Cat), the Remaining Length computed and minimally encoded.
func Pkt(first byte, parts ...any) []byte {
	body := Cat(parts...)
	b := []byte{first}
	n := len(body)
	for {
		c := byte(n & 0x7F)
		n >>= 7
		if n > 0 {
			c |= 0x80
		}
		b = append(b, c)
		if n == 0 {
			break
		}
	}
	return append(b, body...)
}

// Props returns a property list: the length (one byte, so the list must
// be shorter than 128 bytes), then parts.
func Props(parts ...any) []byte {
	body := Cat(parts...)
	if len(body) > 127 {
		panic("packettest: Props: list too long for this helper")
	}
	return append([]byte{byte(len(body))}, body...)
}

// U16 returns v big-endian.
func U16(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }

// U32 returns v big-endian.
func U32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

// Repeat returns n copies of c.
func Repeat(c byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = c
	}
	return b
}

// P builds Properties; each call of a With... method marks the property.
type P struct{ packet.Properties }

// NewP returns an empty property builder.
func NewP() *P { return &P{} }

// Build returns the properties built so far.
func (p *P) Build() packet.Properties { return p.Properties }

// Set sets property id to v (byte, uint16, uint32, string or []byte
// according to the property) and marks it present.
func (p *P) Set(id packet.PropID, v any) *P {
	q := &p.Properties
	switch id {
	case packet.PropPayloadFormat:
		q.PayloadFormat = v.(byte)
	case packet.PropMessageExpiry:
		q.MessageExpiry = v.(uint32)
	case packet.PropContentType:
		q.ContentType = v.(string)
	case packet.PropResponseTopic:
		q.ResponseTopic = v.(string)
	case packet.PropCorrelationData:
		q.CorrelationData = v.([]byte)
	case packet.PropSubscriptionID:
		q.SubscriptionIDs = append(q.SubscriptionIDs, v.(uint32))
		return p
	case packet.PropSessionExpiry:
		q.SessionExpiry = v.(uint32)
	case packet.PropAssignedClientID:
		q.AssignedClientID = v.(string)
	case packet.PropServerKeepAlive:
		q.ServerKeepAlive = v.(uint16)
	case packet.PropAuthMethod:
		q.AuthMethod = v.(string)
	case packet.PropAuthData:
		q.AuthData = v.([]byte)
	case packet.PropRequestProblemInfo:
		q.RequestProblemInfo = v.(byte)
	case packet.PropWillDelay:
		q.WillDelay = v.(uint32)
	case packet.PropRequestResponseInfo:
		q.RequestResponseInfo = v.(byte)
	case packet.PropResponseInfo:
		q.ResponseInfo = v.(string)
	case packet.PropServerReference:
		q.ServerReference = v.(string)
	case packet.PropReasonString:
		q.ReasonString = v.(string)
	case packet.PropReceiveMaximum:
		q.ReceiveMaximum = v.(uint16)
	case packet.PropTopicAliasMaximum:
		q.TopicAliasMaximum = v.(uint16)
	case packet.PropTopicAlias:
		q.TopicAlias = v.(uint16)
	case packet.PropMaximumQoS:
		q.MaximumQoS = v.(byte)
	case packet.PropRetainAvailable:
		q.RetainAvailable = v.(byte)
	case packet.PropUser:
		kv := v.([2]string)
		q.User = append(q.User, packet.UserProperty{Key: kv[0], Value: kv[1]})
		return p
	case packet.PropMaximumPacketSize:
		q.MaximumPacketSize = v.(uint32)
	case packet.PropWildcardSubAvailable:
		q.WildcardSubAvailable = v.(byte)
	case packet.PropSubscriptionIDAvail:
		q.SubIDAvailable = v.(byte)
	case packet.PropSharedSubAvailable:
		q.SharedSubAvailable = v.(byte)
	default:
		panic("packettest: unknown property")
	}
	q.Mark(id)
	return p
}
