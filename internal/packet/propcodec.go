package packet

import (
	"fmt"
	"math/bits"
)

// propKind is the data type of a property value [MQTT 5.0 §2.2.2.2].
type propKind byte

const (
	kindByte propKind = iota + 1
	kindU16
	kindU32
	kindVBI
	kindString
	kindBinary
	kindPair
)

var propKinds = [...]propKind{
	PropPayloadFormat:        kindByte,
	PropMessageExpiry:        kindU32,
	PropContentType:          kindString,
	PropResponseTopic:        kindString,
	PropCorrelationData:      kindBinary,
	PropSubscriptionID:       kindVBI,
	PropSessionExpiry:        kindU32,
	PropAssignedClientID:     kindString,
	PropServerKeepAlive:      kindU16,
	PropAuthMethod:           kindString,
	PropAuthData:             kindBinary,
	PropRequestProblemInfo:   kindByte,
	PropWillDelay:            kindU32,
	PropRequestResponseInfo:  kindByte,
	PropResponseInfo:         kindString,
	PropServerReference:      kindString,
	PropReasonString:         kindString,
	PropReceiveMaximum:       kindU16,
	PropTopicAliasMaximum:    kindU16,
	PropTopicAlias:           kindU16,
	PropMaximumQoS:           kindByte,
	PropRetainAvailable:      kindByte,
	PropUser:                 kindPair,
	PropMaximumPacketSize:    kindU32,
	PropWildcardSubAvailable: kindByte,
	PropSubscriptionIDAvail:  kindByte,
	PropSharedSubAvailable:   kindByte,
}

var propNames = [...]string{
	PropPayloadFormat:        "Payload Format Indicator",
	PropMessageExpiry:        "Message Expiry Interval",
	PropContentType:          "Content Type",
	PropResponseTopic:        "Response Topic",
	PropCorrelationData:      "Correlation Data",
	PropSubscriptionID:       "Subscription Identifier",
	PropSessionExpiry:        "Session Expiry Interval",
	PropAssignedClientID:     "Assigned Client Identifier",
	PropServerKeepAlive:      "Server Keep Alive",
	PropAuthMethod:           "Authentication Method",
	PropAuthData:             "Authentication Data",
	PropRequestProblemInfo:   "Request Problem Information",
	PropWillDelay:            "Will Delay Interval",
	PropRequestResponseInfo:  "Request Response Information",
	PropResponseInfo:         "Response Information",
	PropServerReference:      "Server Reference",
	PropReasonString:         "Reason String",
	PropReceiveMaximum:       "Receive Maximum",
	PropTopicAliasMaximum:    "Topic Alias Maximum",
	PropTopicAlias:           "Topic Alias",
	PropMaximumQoS:           "Maximum QoS",
	PropRetainAvailable:      "Retain Available",
	PropUser:                 "User Property",
	PropMaximumPacketSize:    "Maximum Packet Size",
	PropWildcardSubAvailable: "Wildcard Subscription Available",
	PropSubscriptionIDAvail:  "Subscription Identifier Available",
	PropSharedSubAvailable:   "Shared Subscription Available",
}

// String returns the specification's name of the property.
func (id PropID) String() string {
	if int(id) < len(propNames) && propNames[id] != "" {
		return propNames[id]
	}
	return fmt.Sprintf("property 0x%02X", byte(id))
}

const (
	bitPayloadFormat        = uint64(1) << PropPayloadFormat
	bitMessageExpiry        = uint64(1) << PropMessageExpiry
	bitContentType          = uint64(1) << PropContentType
	bitResponseTopic        = uint64(1) << PropResponseTopic
	bitCorrelationData      = uint64(1) << PropCorrelationData
	bitSubscriptionID       = uint64(1) << PropSubscriptionID
	bitSessionExpiry        = uint64(1) << PropSessionExpiry
	bitAssignedClientID     = uint64(1) << PropAssignedClientID
	bitServerKeepAlive      = uint64(1) << PropServerKeepAlive
	bitAuthMethod           = uint64(1) << PropAuthMethod
	bitAuthData             = uint64(1) << PropAuthData
	bitRequestProblemInfo   = uint64(1) << PropRequestProblemInfo
	bitWillDelay            = uint64(1) << PropWillDelay
	bitRequestResponseInfo  = uint64(1) << PropRequestResponseInfo
	bitResponseInfo         = uint64(1) << PropResponseInfo
	bitServerReference      = uint64(1) << PropServerReference
	bitReasonString         = uint64(1) << PropReasonString
	bitReceiveMaximum       = uint64(1) << PropReceiveMaximum
	bitTopicAliasMaximum    = uint64(1) << PropTopicAliasMaximum
	bitTopicAlias           = uint64(1) << PropTopicAlias
	bitMaximumQoS           = uint64(1) << PropMaximumQoS
	bitRetainAvailable      = uint64(1) << PropRetainAvailable
	bitUser                 = uint64(1) << PropUser
	bitMaximumPacketSize    = uint64(1) << PropMaximumPacketSize
	bitWildcardSubAvailable = uint64(1) << PropWildcardSubAvailable
	bitSubIDAvailable       = uint64(1) << PropSubscriptionIDAvail
	bitSharedSubAvailable   = uint64(1) << PropSharedSubAvailable

	// The properties each packet may carry [MQTT 5.0 §2.2.2.2].
	connectProps = bitSessionExpiry | bitReceiveMaximum | bitMaximumPacketSize | bitTopicAliasMaximum |
		bitRequestResponseInfo | bitRequestProblemInfo | bitUser | bitAuthMethod | bitAuthData
	willProps = bitWillDelay | bitPayloadFormat | bitMessageExpiry | bitContentType | bitResponseTopic |
		bitCorrelationData | bitUser
	connackProps = bitSessionExpiry | bitReceiveMaximum | bitMaximumQoS | bitRetainAvailable |
		bitMaximumPacketSize | bitAssignedClientID | bitTopicAliasMaximum | bitReasonString | bitUser |
		bitWildcardSubAvailable | bitSubIDAvailable | bitSharedSubAvailable | bitServerKeepAlive |
		bitResponseInfo | bitServerReference | bitAuthMethod | bitAuthData
	publishProps = bitPayloadFormat | bitMessageExpiry | bitTopicAlias | bitResponseTopic |
		bitCorrelationData | bitUser | bitSubscriptionID | bitContentType
	ackProps         = bitReasonString | bitUser // PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK
	subscribeProps   = bitSubscriptionID | bitUser
	unsubscribeProps = bitUser
	disconnectProps  = bitSessionExpiry | bitReasonString | bitUser | bitServerReference
	authProps        = bitAuthMethod | bitAuthData | bitReasonString | bitUser
)

func allowedProps(t Type) uint64 {
	switch t {
	case CONNECT:
		return connectProps
	case CONNACK:
		return connackProps
	case PUBLISH:
		return publishProps
	case PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK:
		return ackProps
	case SUBSCRIBE:
		return subscribeProps
	case UNSUBSCRIBE:
		return unsubscribeProps
	case DISCONNECT:
		return disconnectProps
	case AUTH:
		return authProps
	}
	return 0
}

// PropertyAllowed reports whether an MQTT 5 packet of type t may carry
// property id [MQTT 5.0 §2.2.2.2]. Will properties are checked with
// WillPropertyAllowed.
func PropertyAllowed(t Type, id PropID) bool {
	return id < 64 && allowedProps(t)&(1<<id) != 0
}

// WillPropertyAllowed reports whether property id may appear among the
// Will Properties of a CONNECT packet [MQTT 5.0 §3.1.3.2].
func WillPropertyAllowed(id PropID) bool { return id < 64 && willProps&(1<<id) != 0 }

// propCtx says where a property list sits, for the rules that depend on it.
type propCtx struct {
	allowed  uint64
	multiSub bool // several Subscription Identifiers allowed (PUBLISH)
	where    string
}

var (
	ctxConnect     = propCtx{allowed: connectProps, where: "CONNECT"}
	ctxWill        = propCtx{allowed: willProps, where: "will"}
	ctxConnack     = propCtx{allowed: connackProps, where: "CONNACK"}
	ctxPublish     = propCtx{allowed: publishProps, multiSub: true, where: "PUBLISH"}
	ctxAck         = propCtx{allowed: ackProps, where: "acknowledgement"}
	ctxSubscribe   = propCtx{allowed: subscribeProps, where: "SUBSCRIBE"}
	ctxUnsubscribe = propCtx{allowed: unsubscribeProps, where: "UNSUBSCRIBE"}
	ctxDisconnect  = propCtx{allowed: disconnectProps, where: "DISCONNECT"}
	ctxAuth        = propCtx{allowed: authProps, where: "AUTH"}
)

// props decodes a property list: its length, then the properties
// [MQTT 5.0 §2.2.2]. Unknown identifiers and identifiers not allowed in
// this packet make it malformed [MQTT 5.0 §2.2.2.2]; a repeated property
// (other than User Property, and Subscription Identifier in PUBLISH) and
// out-of-range values are protocol errors.
func (d *decoder) props(p *Properties, c propCtx) error {
	n, err := d.vbi("property length")
	if err != nil {
		return err
	}
	if uint64(n) > uint64(len(d.b)) {
		return malformed(d.t, "property length %d exceeds the remaining %d bytes", n, len(d.b))
	}
	pd := decoder{b: d.b[:n], t: d.t}
	d.b = d.b[n:]
	var seen uint64
	for len(pd.b) > 0 {
		// The identifier is a variable byte integer; every defined
		// identifier fits in one byte, so a continuation bit means either
		// an unknown identifier or a non-minimal encoding.
		raw := pd.b[0]
		pd.b = pd.b[1:]
		if int(raw) >= len(propKinds) || propKinds[raw] == 0 {
			return malformed(d.t, "unknown property identifier 0x%02X", raw)
		}
		id := PropID(raw)
		bit := uint64(1) << id
		if c.allowed&bit == 0 {
			return malformed(d.t, "%s not allowed in %s properties [MQTT 5.0 §2.2.2.2]", id, c.where)
		}
		if seen&bit != 0 && id != PropUser && (id != PropSubscriptionID || !c.multiSub) {
			return protocolErr(d.t, "%s included more than once", id)
		}
		seen |= bit
		if err := pd.prop(p, id); err != nil {
			return err
		}
	}
	if p.Has(PropAuthData) && !p.Has(PropAuthMethod) {
		return protocolErr(d.t, "Authentication Data without Authentication Method")
	}
	return nil
}

func (d *decoder) prop(p *Properties, id PropID) error {
	what := propNames[id]
	var (
		b   byte
		u16 uint16
		u32 uint32
		s   string
		bin []byte
		err error
	)
	switch propKinds[id] {
	case kindByte:
		b, err = d.byte(what)
	case kindU16:
		u16, err = d.u16(what)
	case kindU32:
		u32, err = d.u32(what)
	case kindVBI:
		u32, err = d.vbi(what)
	case kindString:
		s, err = d.str(what)
	case kindBinary:
		bin, err = d.bytes(what)
	case kindPair:
		// Name and value are copied in one allocation, the value's length
		// prefix included.
		start := d.b
		var k, v []byte
		if k, err = d.bytes("User Property name"); err != nil {
			return err
		}
		if v, err = d.bytes("User Property value"); err != nil {
			return err
		}
		if !validStringBytes(k) || !validStringBytes(v) {
			return malformed(d.t, "User Property: ill-formed UTF-8 or U+0000 [MQTT-1.5.7-1]")
		}
		pair := string(start[2 : 4+len(k)+len(v)])
		p.User = append(p.User, UserProperty{Key: pair[:len(k)], Value: pair[len(k)+2:]})
		return nil
	}
	if err != nil {
		return err
	}
	if id == PropSubscriptionID {
		if u32 == 0 {
			return protocolErr(d.t, "Subscription Identifier 0 [MQTT 5.0 §3.3.2.3.8]")
		}
		p.SubscriptionIDs = append(p.SubscriptionIDs, u32)
		return nil
	}
	if propKinds[id] == kindByte && b > 1 && id != PropMaximumQoS {
		return protocolErr(d.t, "%s %d, must be 0 or 1", id, b)
	}
	switch id {
	case PropPayloadFormat:
		p.PayloadFormat = b
	case PropMessageExpiry:
		p.MessageExpiry = u32
	case PropContentType:
		p.ContentType = s
	case PropResponseTopic:
		if ValidTopicName(s) != nil {
			return protocolErr(d.t, "Response Topic %q is not a valid topic name [MQTT-3.3.2-14]", clip(s))
		}
		p.ResponseTopic = s
	case PropCorrelationData:
		p.CorrelationData = bin
	case PropSessionExpiry:
		p.SessionExpiry = u32
	case PropAssignedClientID:
		p.AssignedClientID = s
	case PropServerKeepAlive:
		p.ServerKeepAlive = u16
	case PropAuthMethod:
		p.AuthMethod = s
	case PropAuthData:
		p.AuthData = bin
	case PropRequestProblemInfo:
		p.RequestProblemInfo = b
	case PropWillDelay:
		p.WillDelay = u32
	case PropRequestResponseInfo:
		p.RequestResponseInfo = b
	case PropResponseInfo:
		p.ResponseInfo = s
	case PropServerReference:
		p.ServerReference = s
	case PropReasonString:
		p.ReasonString = s
	case PropReceiveMaximum:
		if u16 == 0 {
			return protocolErr(d.t, "Receive Maximum 0 [MQTT 5.0 §3.1.2.11.3]")
		}
		p.ReceiveMaximum = u16
	case PropTopicAliasMaximum:
		p.TopicAliasMaximum = u16
	case PropTopicAlias:
		if u16 == 0 {
			return protocolErr(d.t, "Topic Alias 0 [MQTT-3.3.2-8]")
		}
		p.TopicAlias = u16
	case PropMaximumQoS:
		if b > 1 {
			return protocolErr(d.t, "Maximum QoS %d, must be 0 or 1 [MQTT 5.0 §3.2.2.3.4]", b)
		}
		p.MaximumQoS = b
	case PropRetainAvailable:
		p.RetainAvailable = b
	case PropMaximumPacketSize:
		if u32 == 0 {
			return protocolErr(d.t, "Maximum Packet Size 0 [MQTT 5.0 §3.1.2.11.4]")
		}
		p.MaximumPacketSize = u32
	case PropWildcardSubAvailable:
		p.WildcardSubAvailable = b
	case PropSubscriptionIDAvail:
		p.SubIDAvailable = b
	case PropSharedSubAvailable:
		p.SharedSubAvailable = b
	}
	p.Mark(id)
	return nil
}

// size validates p for encoding in context c and returns the length of the
// property list without its length prefix.
func (p *Properties) size(t Type, c propCtx) (int, error) {
	const listBits = bitUser | bitSubscriptionID // presence given by slices
	if extra := p.Present &^ listBits &^ c.allowed; extra != 0 {
		for id := PropID(0); id < 64; id++ {
			if extra&(1<<id) != 0 {
				return 0, protocolErr(t, "%s not allowed in %s properties", id, c.where)
			}
		}
	}
	n := 0
	if len(p.User) > 0 {
		if c.allowed&bitUser == 0 {
			return 0, protocolErr(t, "User Property not allowed in %s properties", c.where)
		}
		for _, u := range p.User {
			if err := checkString(t, "User Property name", u.Key); err != nil {
				return 0, err
			}
			if err := checkString(t, "User Property value", u.Value); err != nil {
				return 0, err
			}
			n += 5 + len(u.Key) + len(u.Value)
		}
	}
	if len(p.SubscriptionIDs) > 0 {
		if c.allowed&bitSubscriptionID == 0 {
			return 0, protocolErr(t, "Subscription Identifier not allowed in %s properties", c.where)
		}
		if len(p.SubscriptionIDs) > 1 && !c.multiSub {
			return 0, protocolErr(t, "more than one Subscription Identifier in %s", c.where)
		}
		for _, s := range p.SubscriptionIDs {
			if s == 0 || s > maxVBI {
				return 0, protocolErr(t, "Subscription Identifier %d out of range 1..268435455", s)
			}
			n += 1 + vbiLen(int(s))
		}
	}
	present := p.Present &^ listBits
	for present != 0 {
		id := PropID(bits.TrailingZeros64(present))
		present &^= 1 << id
		switch propKinds[id] {
		case kindByte:
			v := p.byteProp(id)
			if v > 1 {
				return 0, protocolErr(t, "%s %d, must be 0 or 1", id, v)
			}
			n += 2
		case kindU16:
			if (id == PropReceiveMaximum && p.ReceiveMaximum == 0) || (id == PropTopicAlias && p.TopicAlias == 0) {
				return 0, protocolErr(t, "%s 0", id)
			}
			n += 3
		case kindU32:
			if id == PropMaximumPacketSize && p.MaximumPacketSize == 0 {
				return 0, protocolErr(t, "%s 0", id)
			}
			n += 5
		case kindString:
			s := p.stringProp(id)
			if err := checkString(t, id.String(), s); err != nil {
				return 0, err
			}
			if id == PropResponseTopic && ValidTopicName(s) != nil {
				return 0, protocolErr(t, "Response Topic %q is not a valid topic name [MQTT-3.3.2-14]", clip(s))
			}
			n += 3 + len(s)
		case kindBinary:
			b := p.CorrelationData
			if id == PropAuthData {
				b = p.AuthData
			}
			if err := checkBytes(t, id.String(), b); err != nil {
				return 0, err
			}
			n += 3 + len(b)
		}
	}
	if p.Has(PropAuthData) && !p.Has(PropAuthMethod) {
		return 0, protocolErr(t, "Authentication Data without Authentication Method")
	}
	if n > maxVBI {
		return 0, &Error{Code: PacketTooLarge, Type: t, Reason: "properties too long", Err: ErrPacketTooLarge}
	}
	return n, nil
}

// length returns the length of the property list without its length
// prefix, for properties that size has already validated.
func (p *Properties) length() int {
	n := 0
	for _, u := range p.User {
		n += 5 + len(u.Key) + len(u.Value)
	}
	for _, s := range p.SubscriptionIDs {
		n += 1 + vbiLen(int(s))
	}
	present := p.Present &^ (bitUser | bitSubscriptionID)
	for present != 0 {
		id := PropID(bits.TrailingZeros64(present))
		present &^= 1 << id
		switch propKinds[id] {
		case kindByte:
			n += 2
		case kindU16:
			n += 3
		case kindU32:
			n += 5
		case kindString:
			n += 3 + len(p.stringProp(id))
		case kindBinary:
			if id == PropAuthData {
				n += 3 + len(p.AuthData)
			} else {
				n += 3 + len(p.CorrelationData)
			}
		}
	}
	return n
}

func (p *Properties) byteProp(id PropID) byte {
	switch id {
	case PropPayloadFormat:
		return p.PayloadFormat
	case PropRequestProblemInfo:
		return p.RequestProblemInfo
	case PropRequestResponseInfo:
		return p.RequestResponseInfo
	case PropMaximumQoS:
		return p.MaximumQoS
	case PropRetainAvailable:
		return p.RetainAvailable
	case PropWildcardSubAvailable:
		return p.WildcardSubAvailable
	case PropSubscriptionIDAvail:
		return p.SubIDAvailable
	case PropSharedSubAvailable:
		return p.SharedSubAvailable
	}
	return 0
}

func (p *Properties) stringProp(id PropID) string {
	switch id {
	case PropContentType:
		return p.ContentType
	case PropResponseTopic:
		return p.ResponseTopic
	case PropAssignedClientID:
		return p.AssignedClientID
	case PropAuthMethod:
		return p.AuthMethod
	case PropResponseInfo:
		return p.ResponseInfo
	case PropServerReference:
		return p.ServerReference
	case PropReasonString:
		return p.ReasonString
	}
	return ""
}

// appendProps writes the property length n (from size) and the properties
// in ascending identifier order, user properties in their given order.
func (p *Properties) appendTo(b []byte, n int) []byte {
	b = appendVBI(b, n)
	if n == 0 {
		return b
	}
	present := p.Present &^ (bitUser | bitSubscriptionID)
	if len(p.User) > 0 {
		present |= bitUser
	}
	if len(p.SubscriptionIDs) > 0 {
		present |= bitSubscriptionID
	}
	for present != 0 {
		id := PropID(bits.TrailingZeros64(present))
		present &^= 1 << id
		if id == PropSubscriptionID {
			for _, s := range p.SubscriptionIDs {
				b = append(b, byte(id))
				b = appendVBI(b, int(s))
			}
			continue
		}
		if id == PropUser {
			for _, u := range p.User {
				b = append(b, byte(id))
				b = appendString(b, u.Key)
				b = appendString(b, u.Value)
			}
			continue
		}
		b = append(b, byte(id))
		switch propKinds[id] {
		case kindByte:
			b = append(b, p.byteProp(id))
		case kindU16:
			switch id {
			case PropServerKeepAlive:
				b = appendU16(b, p.ServerKeepAlive)
			case PropReceiveMaximum:
				b = appendU16(b, p.ReceiveMaximum)
			case PropTopicAliasMaximum:
				b = appendU16(b, p.TopicAliasMaximum)
			case PropTopicAlias:
				b = appendU16(b, p.TopicAlias)
			}
		case kindU32:
			switch id {
			case PropMessageExpiry:
				b = appendU32(b, p.MessageExpiry)
			case PropSessionExpiry:
				b = appendU32(b, p.SessionExpiry)
			case PropWillDelay:
				b = appendU32(b, p.WillDelay)
			case PropMaximumPacketSize:
				b = appendU32(b, p.MaximumPacketSize)
			}
		case kindString:
			b = appendString(b, p.stringProp(id))
		case kindBinary:
			if id == PropAuthData {
				b = appendBytes(b, p.AuthData)
			} else {
				b = appendBytes(b, p.CorrelationData)
			}
		}
	}
	return b
}
