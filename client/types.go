package client

import "github.com/moatmq/moat/internal/packet"

// Aliases of codec types, exported here so that programs outside Moat can
// name them.
type (
	// Version is an MQTT protocol level: V31, V311 or V5.
	Version = packet.Version
	// ReasonCode is an MQTT 5 reason code (for 3.x sessions: the return
	// code mapped to its MQTT 5 equivalent, see ReasonError).
	ReasonCode = packet.ReasonCode
	// Properties holds MQTT 5 properties; see its Has and Mark methods.
	Properties = packet.Properties
	// UserProperty is one MQTT 5 user property.
	UserProperty = packet.UserProperty
	// Subscription is one topic filter with its options.
	Subscription = packet.Subscription
	// Will is a will message sent in CONNECT.
	Will = packet.Will
	// AuthPacket is an MQTT 5 AUTH packet, exchanged with an Authenticator.
	AuthPacket = packet.Auth
)

// Protocol versions.
const (
	V31  = packet.V31
	V311 = packet.V311
	V5   = packet.V5
)

// Property identifiers most often set by applications; see packet.PropID
// values for the others.
const (
	PropPayloadFormat   = packet.PropPayloadFormat
	PropMessageExpiry   = packet.PropMessageExpiry
	PropContentType     = packet.PropContentType
	PropResponseTopic   = packet.PropResponseTopic
	PropCorrelationData = packet.PropCorrelationData
	PropSessionExpiry   = packet.PropSessionExpiry
)

// Message is an application message, published or received.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte // 0, 1 or 2
	Retain  bool

	// Duplicate is set on received messages that the server marked as
	// possible redeliveries (DUP flag). Ignored when publishing.
	Duplicate bool

	// Properties are the MQTT 5 PUBLISH properties (ignored for 3.x).
	// On received messages a Topic Alias has already been resolved into
	// Topic and removed; SubscriptionIDs tells which subscriptions matched.
	Properties Properties

	// For Client.Ack (received QoS 1 and 2 messages).
	ackConn *conn
	ackID   uint16
}

// PacketID returns the packet identifier of a received QoS 1 or 2
// message, 0 for QoS 0 and for messages being published.
func (m *Message) PacketID() uint16 { return m.ackID }
