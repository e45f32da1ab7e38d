package packet

// PropID is an MQTT 5 property identifier.
type PropID byte

// Property identifiers [MQTT 5.0 §2.2.2.2].
const (
	PropPayloadFormat        PropID = 0x01
	PropMessageExpiry        PropID = 0x02
	PropContentType          PropID = 0x03
	PropResponseTopic        PropID = 0x08
	PropCorrelationData      PropID = 0x09
	PropSubscriptionID       PropID = 0x0B
	PropSessionExpiry        PropID = 0x11
	PropAssignedClientID     PropID = 0x12
	PropServerKeepAlive      PropID = 0x13
	PropAuthMethod           PropID = 0x15
	PropAuthData             PropID = 0x16
	PropRequestProblemInfo   PropID = 0x17
	PropWillDelay            PropID = 0x18
	PropRequestResponseInfo  PropID = 0x19
	PropResponseInfo         PropID = 0x1A
	PropServerReference      PropID = 0x1C
	PropReasonString         PropID = 0x1F
	PropReceiveMaximum       PropID = 0x21
	PropTopicAliasMaximum    PropID = 0x22
	PropTopicAlias           PropID = 0x23
	PropMaximumQoS           PropID = 0x24
	PropRetainAvailable      PropID = 0x25
	PropUser                 PropID = 0x26
	PropMaximumPacketSize    PropID = 0x27
	PropWildcardSubAvailable PropID = 0x28
	PropSubscriptionIDAvail  PropID = 0x29
	PropSharedSubAvailable   PropID = 0x2A
)

// Properties holds the MQTT 5 properties of a packet. A property is present
// when its bit is set in Present (see Has and Set...); the field alone does
// not say so, because zero is a meaningful value for several properties
// (Maximum QoS 0, Retain Available 0, ...). User properties and
// subscription identifiers are present when their slices are non-empty.
//
// Decoding sets Present; encoding writes exactly the present properties, in
// ascending identifier order, which makes the encoding canonical.
type Properties struct {
	Present uint64 // bit i set: property with identifier i is present

	PayloadFormat        byte           // 0x01: 0 unspecified bytes, 1 UTF-8
	MessageExpiry        uint32         // 0x02: seconds
	ContentType          string         // 0x03
	ResponseTopic        string         // 0x08
	CorrelationData      []byte         // 0x09
	SubscriptionIDs      []uint32       // 0x0B: one in SUBSCRIBE, one or more in PUBLISH to a client
	SessionExpiry        uint32         // 0x11: seconds; 0xFFFFFFFF never expires
	AssignedClientID     string         // 0x12
	ServerKeepAlive      uint16         // 0x13
	AuthMethod           string         // 0x15
	AuthData             []byte         // 0x16
	RequestProblemInfo   byte           // 0x17: default 1
	WillDelay            uint32         // 0x18: seconds
	RequestResponseInfo  byte           // 0x19: default 0
	ResponseInfo         string         // 0x1A
	ServerReference      string         // 0x1C
	ReasonString         string         // 0x1F
	ReceiveMaximum       uint16         // 0x21: default 65535, 0 is a protocol error
	TopicAliasMaximum    uint16         // 0x22: default 0
	TopicAlias           uint16         // 0x23: 0 is a protocol error
	MaximumQoS           byte           // 0x24: default 2
	RetainAvailable      byte           // 0x25: default 1
	User                 []UserProperty // 0x26
	MaximumPacketSize    uint32         // 0x27: default no limit, 0 is a protocol error
	WildcardSubAvailable byte           // 0x28: default 1
	SubIDAvailable       byte           // 0x29: default 1
	SharedSubAvailable   byte           // 0x2A: default 1
}

// Has reports whether property id is present.
func (p *Properties) Has(id PropID) bool {
	switch id {
	case PropUser:
		return len(p.User) > 0
	case PropSubscriptionID:
		return len(p.SubscriptionIDs) > 0
	}
	return p.Present&(1<<uint(id)) != 0
}

// Mark records that property id is present; its field must hold the value.
func (p *Properties) Mark(id PropID) { p.Present |= 1 << uint(id) }

// Unmark removes property id; the field keeps its value but is not encoded.
func (p *Properties) Unmark(id PropID) { p.Present &^= 1 << uint(id) }

// SetMessageExpiry sets the Message Expiry Interval property.
func (p *Properties) SetMessageExpiry(s uint32) { p.MessageExpiry = s; p.Mark(PropMessageExpiry) }

// SetTopicAlias sets the Topic Alias property.
func (p *Properties) SetTopicAlias(a uint16) { p.TopicAlias = a; p.Mark(PropTopicAlias) }

// SetReasonString sets the Reason String property.
func (p *Properties) SetReasonString(s string) { p.ReasonString = s; p.Mark(PropReasonString) }

// SetPayloadFormat sets the Payload Format Indicator (0 bytes, 1 UTF-8).
func (p *Properties) SetPayloadFormat(f byte) { p.PayloadFormat = f; p.Mark(PropPayloadFormat) }

// SetContentType sets the Content Type property.
func (p *Properties) SetContentType(s string) { p.ContentType = s; p.Mark(PropContentType) }

// SetResponseTopic sets the Response Topic property.
func (p *Properties) SetResponseTopic(s string) { p.ResponseTopic = s; p.Mark(PropResponseTopic) }

// SetCorrelationData sets the Correlation Data property; b is not copied.
func (p *Properties) SetCorrelationData(b []byte) { p.CorrelationData = b; p.Mark(PropCorrelationData) }

// AddSubscriptionID appends a Subscription Identifier (1..268435455).
func (p *Properties) AddSubscriptionID(id uint32) { p.SubscriptionIDs = append(p.SubscriptionIDs, id) }

// AddUser appends a User Property.
func (p *Properties) AddUser(key, value string) {
	p.User = append(p.User, UserProperty{Key: key, Value: value})
}

// SetSessionExpiry sets the Session Expiry Interval property.
func (p *Properties) SetSessionExpiry(s uint32) { p.SessionExpiry = s; p.Mark(PropSessionExpiry) }

// SetAssignedClientID sets the Assigned Client Identifier property.
func (p *Properties) SetAssignedClientID(s string) {
	p.AssignedClientID = s
	p.Mark(PropAssignedClientID)
}

// SetServerKeepAlive sets the Server Keep Alive property.
func (p *Properties) SetServerKeepAlive(s uint16) { p.ServerKeepAlive = s; p.Mark(PropServerKeepAlive) }

// SetAuthMethod sets the Authentication Method property.
func (p *Properties) SetAuthMethod(s string) { p.AuthMethod = s; p.Mark(PropAuthMethod) }

// SetAuthData sets the Authentication Data property; b is not copied.
func (p *Properties) SetAuthData(b []byte) { p.AuthData = b; p.Mark(PropAuthData) }

// SetRequestProblemInfo sets the Request Problem Information property.
func (p *Properties) SetRequestProblemInfo(v byte) {
	p.RequestProblemInfo = v
	p.Mark(PropRequestProblemInfo)
}

// SetWillDelay sets the Will Delay Interval property.
func (p *Properties) SetWillDelay(s uint32) { p.WillDelay = s; p.Mark(PropWillDelay) }

// SetRequestResponseInfo sets the Request Response Information property.
func (p *Properties) SetRequestResponseInfo(v byte) {
	p.RequestResponseInfo = v
	p.Mark(PropRequestResponseInfo)
}

// SetResponseInfo sets the Response Information property.
func (p *Properties) SetResponseInfo(s string) { p.ResponseInfo = s; p.Mark(PropResponseInfo) }

// SetServerReference sets the Server Reference property.
func (p *Properties) SetServerReference(s string) { p.ServerReference = s; p.Mark(PropServerReference) }

// SetReceiveMaximum sets the Receive Maximum property (not 0).
func (p *Properties) SetReceiveMaximum(n uint16) { p.ReceiveMaximum = n; p.Mark(PropReceiveMaximum) }

// SetTopicAliasMaximum sets the Topic Alias Maximum property.
func (p *Properties) SetTopicAliasMaximum(n uint16) {
	p.TopicAliasMaximum = n
	p.Mark(PropTopicAliasMaximum)
}

// SetMaximumQoS sets the Maximum QoS property (0 or 1).
func (p *Properties) SetMaximumQoS(q byte) { p.MaximumQoS = q; p.Mark(PropMaximumQoS) }

// SetRetainAvailable sets the Retain Available property.
func (p *Properties) SetRetainAvailable(b bool) {
	p.RetainAvailable = b2u(b)
	p.Mark(PropRetainAvailable)
}

// SetMaximumPacketSize sets the Maximum Packet Size property (not 0).
func (p *Properties) SetMaximumPacketSize(n uint32) {
	p.MaximumPacketSize = n
	p.Mark(PropMaximumPacketSize)
}

// SetWildcardSubAvailable sets the Wildcard Subscription Available property.
func (p *Properties) SetWildcardSubAvailable(b bool) {
	p.WildcardSubAvailable = b2u(b)
	p.Mark(PropWildcardSubAvailable)
}

// SetSubIDAvailable sets the Subscription Identifier Available property.
func (p *Properties) SetSubIDAvailable(b bool) {
	p.SubIDAvailable = b2u(b)
	p.Mark(PropSubscriptionIDAvail)
}

// SetSharedSubAvailable sets the Shared Subscription Available property.
func (p *Properties) SetSharedSubAvailable(b bool) {
	p.SharedSubAvailable = b2u(b)
	p.Mark(PropSharedSubAvailable)
}

func b2u(b bool) byte {
	if b {
		return 1
	}
	return 0
}
