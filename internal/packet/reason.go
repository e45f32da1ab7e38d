package packet

import "fmt"

// ReasonCode is an MQTT 5 reason code, or an MQTT 3.x CONNACK return code /
// SUBACK return code when the packet belongs to a 3.x session.
type ReasonCode byte

// MQTT 5.0 reason codes [MQTT 5.0 §2.4].
const (
	Success                     ReasonCode = 0x00 // also Normal disconnection, Granted QoS 0
	GrantedQoS0                 ReasonCode = 0x00 // same value as Success, for SUBACK
	GrantedQoS1                 ReasonCode = 0x01
	GrantedQoS2                 ReasonCode = 0x02
	DisconnectWithWill          ReasonCode = 0x04
	NoMatchingSubscribers       ReasonCode = 0x10
	NoSubscriptionExisted       ReasonCode = 0x11
	ContinueAuthentication      ReasonCode = 0x18
	ReAuthenticate              ReasonCode = 0x19
	UnspecifiedError            ReasonCode = 0x80
	MalformedPacket             ReasonCode = 0x81
	ProtocolError               ReasonCode = 0x82
	ImplementationSpecific      ReasonCode = 0x83
	UnsupportedProtocolVersion  ReasonCode = 0x84
	ClientIDNotValid            ReasonCode = 0x85
	BadUsernameOrPassword       ReasonCode = 0x86
	NotAuthorized               ReasonCode = 0x87
	ServerUnavailable           ReasonCode = 0x88
	ServerBusy                  ReasonCode = 0x89
	Banned                      ReasonCode = 0x8A
	ServerShuttingDown          ReasonCode = 0x8B
	BadAuthenticationMethod     ReasonCode = 0x8C
	KeepAliveTimeout            ReasonCode = 0x8D
	SessionTakenOver            ReasonCode = 0x8E
	TopicFilterInvalid          ReasonCode = 0x8F
	TopicNameInvalid            ReasonCode = 0x90
	PacketIDInUse               ReasonCode = 0x91
	PacketIDNotFound            ReasonCode = 0x92
	ReceiveMaximumExceeded      ReasonCode = 0x93
	TopicAliasInvalid           ReasonCode = 0x94
	PacketTooLarge              ReasonCode = 0x95
	MessageRateTooHigh          ReasonCode = 0x96
	QuotaExceeded               ReasonCode = 0x97
	AdministrativeAction        ReasonCode = 0x98
	PayloadFormatInvalid        ReasonCode = 0x99
	RetainNotSupported          ReasonCode = 0x9A
	QoSNotSupported             ReasonCode = 0x9B
	UseAnotherServer            ReasonCode = 0x9C
	ServerMoved                 ReasonCode = 0x9D
	SharedSubNotSupported       ReasonCode = 0x9E
	ConnectionRateExceeded      ReasonCode = 0x9F
	MaximumConnectTime          ReasonCode = 0xA0
	SubscriptionIDsNotSupported ReasonCode = 0xA1
	WildcardSubsNotSupported    ReasonCode = 0xA2
)

// MQTT 3.1 / 3.1.1 CONNACK return codes.
const (
	V3Accepted                    ReasonCode = 0x00
	V3UnacceptableProtocolVersion ReasonCode = 0x01
	V3IdentifierRejected          ReasonCode = 0x02
	V3ServerUnavailable           ReasonCode = 0x03
	V3BadUsernameOrPassword       ReasonCode = 0x04
	V3NotAuthorized               ReasonCode = 0x05
)

// V3SubackFailure is the MQTT 3.1.1 SUBACK failure return code.
const V3SubackFailure ReasonCode = 0x80

var reasonNames = map[ReasonCode]string{
	Success: "success", GrantedQoS1: "granted QoS 1", GrantedQoS2: "granted QoS 2",
	DisconnectWithWill: "disconnect with will message", NoMatchingSubscribers: "no matching subscribers",
	NoSubscriptionExisted: "no subscription existed", ContinueAuthentication: "continue authentication",
	ReAuthenticate: "re-authenticate", UnspecifiedError: "unspecified error", MalformedPacket: "malformed packet",
	ProtocolError: "protocol error", ImplementationSpecific: "implementation specific error",
	UnsupportedProtocolVersion: "unsupported protocol version", ClientIDNotValid: "client identifier not valid",
	BadUsernameOrPassword: "bad user name or password", NotAuthorized: "not authorized",
	ServerUnavailable: "server unavailable", ServerBusy: "server busy", Banned: "banned",
	ServerShuttingDown: "server shutting down", BadAuthenticationMethod: "bad authentication method",
	KeepAliveTimeout: "keep alive timeout", SessionTakenOver: "session taken over",
	TopicFilterInvalid: "topic filter invalid", TopicNameInvalid: "topic name invalid",
	PacketIDInUse: "packet identifier in use", PacketIDNotFound: "packet identifier not found",
	ReceiveMaximumExceeded: "receive maximum exceeded", TopicAliasInvalid: "topic alias invalid",
	PacketTooLarge: "packet too large", MessageRateTooHigh: "message rate too high",
	QuotaExceeded: "quota exceeded", AdministrativeAction: "administrative action",
	PayloadFormatInvalid: "payload format invalid", RetainNotSupported: "retain not supported",
	QoSNotSupported: "QoS not supported", UseAnotherServer: "use another server", ServerMoved: "server moved",
	SharedSubNotSupported: "shared subscriptions not supported", ConnectionRateExceeded: "connection rate exceeded",
	MaximumConnectTime: "maximum connect time", SubscriptionIDsNotSupported: "subscription identifiers not supported",
	WildcardSubsNotSupported: "wildcard subscriptions not supported",
}

// String returns the MQTT 5 name of the reason code in lower case.
func (c ReasonCode) String() string {
	if s, ok := reasonNames[c]; ok {
		return s
	}
	return fmt.Sprintf("reason code 0x%02X", byte(c))
}

// IsError reports whether c signals failure (0x80 and above).
func (c ReasonCode) IsError() bool { return c >= 0x80 }

// V3ConnackCode maps an MQTT 5 CONNACK reason code to the nearest MQTT 3.x
// connect return code.
func V3ConnackCode(c ReasonCode) ReasonCode {
	switch c {
	case Success:
		return V3Accepted
	case UnsupportedProtocolVersion:
		return V3UnacceptableProtocolVersion
	case ClientIDNotValid:
		return V3IdentifierRejected
	case BadUsernameOrPassword, BadAuthenticationMethod:
		return V3BadUsernameOrPassword
	case NotAuthorized, Banned:
		return V3NotAuthorized
	default:
		return V3ServerUnavailable
	}
}
