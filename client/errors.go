package client

import (
	"errors"
	"fmt"

	"github.com/moatmq/moat/internal/packet"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrClosed: the Client was closed (Close or Disconnect) or gave up
	// reconnecting.
	ErrClosed = errors.New("client: closed")
	// ErrConnectionLost: the connection broke while an operation that is
	// not resent after a reconnect (SUBSCRIBE, UNSUBSCRIBE) was waiting,
	// or reconnecting is disabled.
	ErrConnectionLost = errors.New("client: connection lost")
	// ErrKeepAliveTimeout: the server did not answer PINGREQ in time.
	ErrKeepAliveTimeout = errors.New("client: keep alive timeout: no PINGRESP from server")
	// ErrRejected: the server answered with a failure reason code; the
	// error is a *ReasonError.
	ErrRejected = errors.New("client: rejected by server")
	// ErrNotSupported: the request needs something the server said it
	// does not support (Maximum QoS, Retain Available, Maximum Packet Size).
	ErrNotSupported = errors.New("client: not supported by server")
)

// ReasonError is a failure the server reported with a reason code: a
// CONNACK refusal, a PUBACK/PUBREC error, a SUBACK failure or a DISCONNECT
// sent by the server. It wraps ErrRejected.
//
// For MQTT 3.x CONNACK return codes, Code holds the equivalent MQTT 5 code
// (1 → 0x84 unsupported protocol version, 2 → 0x85, 3 → 0x88, 4 → 0x86,
// 5 → 0x87) and V3Code the original.
type ReasonError struct {
	Op     string     // "connect", "publish", "subscribe", "unsubscribe", "disconnect", "auth"
	Code   ReasonCode // MQTT 5 reason code
	V3Code byte       // MQTT 3.x CONNACK return code, 0 otherwise
	Reason string     // the server's Reason String property, if any
	Topic  string     // publish: the topic; subscribe: the first failed filter
}

func (e *ReasonError) Error() string {
	s := fmt.Sprintf("client: %s: %s (0x%02X)", e.Op, e.Code, byte(e.Code))
	if e.Topic != "" {
		s += " for " + fmt.Sprintf("%q", e.Topic)
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

func (e *ReasonError) Unwrap() error { return ErrRejected }

// v3ConnackToV5 maps an MQTT 3.x CONNACK return code to MQTT 5.
func v3ConnackToV5(c packet.ReasonCode) packet.ReasonCode {
	switch c {
	case packet.V3Accepted:
		return packet.Success
	case packet.V3UnacceptableProtocolVersion:
		return packet.UnsupportedProtocolVersion
	case packet.V3IdentifierRejected:
		return packet.ClientIDNotValid
	case packet.V3ServerUnavailable:
		return packet.ServerUnavailable
	case packet.V3BadUsernameOrPassword:
		return packet.BadUsernameOrPassword
	case packet.V3NotAuthorized:
		return packet.NotAuthorized
	}
	return packet.UnspecifiedError
}
