// Package packet is Moat's MQTT codec: the control packets of MQTT 3.1,
// 3.1.1 and 5.0, their properties and reason codes, a strict decoder and a
// canonical encoder.
//
// The package uses only the standard library. Decoding is strict: every rule
// of the specifications that can be checked on a single packet is checked
// (reserved flag bits, variable byte integers, UTF-8 rules, duplicate and
// misplaced properties, topic name and filter syntax), and a packet's length
// is checked against the configured maximum before its body is allocated.
// Errors are *Error values carrying the reason code a server should answer
// with, and wrap ErrMalformed, ErrProtocol or ErrPacketTooLarge.
//
// Decoded packets own their memory: byte slices in a decoded packet alias
// the body buffer the Reader allocated for that packet alone, and are never
// reused by the Reader. Zero-length binary fields and payloads decode as
// nil.
//
// # Error classes
//
// The reason code in an *Error follows the MQTT 5.0 rules (§4.13): the
// packet is malformed (0x81) when its bytes cannot be parsed as the
// specification defines them: bad fixed header flags, variable byte
// integers longer than 4 bytes or not minimal, lengths beyond the packet,
// ill-formed UTF-8 or U+0000, unknown property identifiers or properties
// not defined for the packet type (§2.2.2.2), reserved bits, QoS 3 in a
// PUBLISH or a will, reason codes not defined for the packet type, bytes
// left over. It is a protocol error (0x82) when a well-formed packet breaks
// a rule: a repeated property, a property value out of range (Receive
// Maximum 0, Topic Alias 0, a boolean above 1, ...), packet identifier 0, a
// topic name with wildcards or empty without a Topic Alias, a topic filter
// with misplaced wildcards, No Local on a shared subscription, a SUBSCRIBE
// or UNSUBSCRIBE without filters. A packet over the size limit carries
// 0x95 and an unknown protocol name or level 0x84. For MQTT 3.x sessions
// the codes only tell the server to close the connection (and, for a
// CONNECT with an unknown level, to answer return code 0x01; see
// V3ConnackCode).
//
// Rules that need session state are left to the caller: Topic Alias
// Maximum, Receive Maximum, a Subscription Identifier in a PUBLISH from a
// client [MQTT-3.3.4-6], the Payload Format Indicator of a payload (see
// CheckPayloadFormat), client identifier rules.
//
// # Leniency
//
// The decoder accepts the optional short forms of MQTT 5.0 (acknowledgements
// without reason code or property length, DISCONNECT and AUTH with only a
// reason code), properties in any order, the DUP flag that MQTT 3.1
// allowed on retransmitted PUBREL, SUBSCRIBE and UNSUBSCRIBE, and any value
// of the unused first byte of an MQTT 3.1 CONNACK (3.1 has no Session
// Present flag). The encoder never writes them (see Append).
package packet

// Type is the MQTT control packet type, the high nibble of the first byte.
type Type byte

// Control packet types.
const (
	CONNECT     Type = 1
	CONNACK     Type = 2
	PUBLISH     Type = 3
	PUBACK      Type = 4
	PUBREC      Type = 5
	PUBREL      Type = 6
	PUBCOMP     Type = 7
	SUBSCRIBE   Type = 8
	SUBACK      Type = 9
	UNSUBSCRIBE Type = 10
	UNSUBACK    Type = 11
	PINGREQ     Type = 12
	PINGRESP    Type = 13
	DISCONNECT  Type = 14
	AUTH        Type = 15 // MQTT 5.0 only
)

var typeNames = [...]string{"RESERVED", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
	"SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH"}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return "INVALID"
}

// Version is the protocol level carried in CONNECT.
type Version byte

// Protocol versions.
const (
	V31  Version = 3 // MQTT 3.1, protocol name "MQIsdp"
	V311 Version = 4 // MQTT 3.1.1
	V5   Version = 5 // MQTT 5.0
)

func (v Version) String() string {
	switch v {
	case V31:
		return "3.1"
	case V311:
		return "3.1.1"
	case V5:
		return "5.0"
	}
	return "unknown"
}

// Packet is implemented by every control packet struct in this package
// (*Connect, *Connack, *Publish, ...).
type Packet interface {
	Type() Type
}

// UserProperty is one MQTT 5 user property (a UTF-8 string pair). Names may
// repeat and their order is significant [MQTT-3.3.2-18].
type UserProperty struct {
	Key, Value string
}

// Connect is the CONNECT packet.
type Connect struct {
	ProtocolName string  // "MQTT" (3.1.1, 5.0) or "MQIsdp" (3.1)
	Version      Version // protocol level
	CleanStart   bool    // Clean Session in 3.1.x, Clean Start in 5.0
	KeepAlive    uint16  // seconds; 0 disables keep alive
	ClientID     string  // may be empty (rules depend on version)

	UsernameFlag bool
	Username     string
	PasswordFlag bool
	Password     []byte

	Will *Will // nil when the Will Flag is 0

	Properties Properties
}

// Will is the will message of a CONNECT packet.
type Will struct {
	Topic      string
	Payload    []byte
	QoS        byte
	Retain     bool
	Properties Properties // will properties (MQTT 5.0)
}

// Connack is the CONNACK packet. For MQTT 3.x ReasonCode holds the
// connect return code (0..5); for 5.0 a reason code.
type Connack struct {
	SessionPresent bool
	ReasonCode     ReasonCode
	Properties     Properties
}

// Publish is the PUBLISH packet.
type Publish struct {
	Dup        bool
	QoS        byte
	Retain     bool
	Topic      string // may be empty in 5.0 when a topic alias is used
	PacketID   uint16 // 0 for QoS 0
	Properties Properties
	Payload    []byte
}

// Puback is the PUBACK packet (QoS 1 acknowledgement).
type Puback struct {
	PacketID   uint16
	ReasonCode ReasonCode // 5.0 only; Success when absent
	Properties Properties
}

// Pubrec is the PUBREC packet (QoS 2, step 1).
type Pubrec struct {
	PacketID   uint16
	ReasonCode ReasonCode
	Properties Properties
}

// Pubrel is the PUBREL packet (QoS 2, step 2).
type Pubrel struct {
	PacketID   uint16
	ReasonCode ReasonCode
	Properties Properties
}

// Pubcomp is the PUBCOMP packet (QoS 2, step 3).
type Pubcomp struct {
	PacketID   uint16
	ReasonCode ReasonCode
	Properties Properties
}

// Subscription is one topic filter and its options in a SUBSCRIBE packet.
type Subscription struct {
	Filter            string // as sent, including any "$share/group/" prefix
	QoS               byte   // maximum QoS
	NoLocal           bool   // 5.0
	RetainAsPublished bool   // 5.0
	RetainHandling    byte   // 5.0: 0 send at subscribe, 1 only if new, 2 never
}

// Subscribe is the SUBSCRIBE packet.
type Subscribe struct {
	PacketID      uint16
	Properties    Properties
	Subscriptions []Subscription
}

// Suback is the SUBACK packet; one reason code per subscription. In 3.1.1
// the codes are 0x00..0x02 (granted QoS) and 0x80 (failure).
type Suback struct {
	PacketID    uint16
	Properties  Properties
	ReasonCodes []ReasonCode
}

// Unsubscribe is the UNSUBSCRIBE packet.
type Unsubscribe struct {
	PacketID   uint16
	Properties Properties
	Filters    []string
}

// Unsuback is the UNSUBACK packet. ReasonCodes is empty for MQTT 3.x.
type Unsuback struct {
	PacketID    uint16
	Properties  Properties
	ReasonCodes []ReasonCode
}

// Pingreq is the PINGREQ packet.
type Pingreq struct{}

// Pingresp is the PINGRESP packet.
type Pingresp struct{}

// Disconnect is the DISCONNECT packet. ReasonCode and Properties are 5.0
// only.
type Disconnect struct {
	ReasonCode ReasonCode
	Properties Properties
}

// Auth is the AUTH packet (5.0 enhanced authentication).
type Auth struct {
	ReasonCode ReasonCode
	Properties Properties
}

func (*Connect) Type() Type     { return CONNECT }
func (*Connack) Type() Type     { return CONNACK }
func (*Publish) Type() Type     { return PUBLISH }
func (*Puback) Type() Type      { return PUBACK }
func (*Pubrec) Type() Type      { return PUBREC }
func (*Pubrel) Type() Type      { return PUBREL }
func (*Pubcomp) Type() Type     { return PUBCOMP }
func (*Subscribe) Type() Type   { return SUBSCRIBE }
func (*Suback) Type() Type      { return SUBACK }
func (*Unsubscribe) Type() Type { return UNSUBSCRIBE }
func (*Unsuback) Type() Type    { return UNSUBACK }
func (*Pingreq) Type() Type     { return PINGREQ }
func (*Pingresp) Type() Type    { return PINGRESP }
func (*Disconnect) Type() Type  { return DISCONNECT }
func (*Auth) Type() Type        { return AUTH }
