package packet

import (
	"errors"
	"fmt"
)

// Sentinel errors wrapped by *Error; test with errors.Is.
var (
	// ErrMalformed: the bytes do not form a valid packet (reason 0x81).
	ErrMalformed = errors.New("packet: malformed packet")
	// ErrProtocol: a well-formed packet breaks a protocol rule (reason 0x82).
	ErrProtocol = errors.New("packet: protocol error")
	// ErrPacketTooLarge: the packet exceeds the maximum size (reason 0x95).
	ErrPacketTooLarge = errors.New("packet: packet too large")
	// ErrUnsupportedVersion: CONNECT names an unknown protocol (reason 0x84).
	ErrUnsupportedVersion = errors.New("packet: unsupported protocol version")
)

// Error is a decoding or encoding failure. Code is the reason code a server
// should send (in CONNACK or DISCONNECT) before closing the connection.
type Error struct {
	Code   ReasonCode
	Type   Type   // packet being decoded, 0 if unknown
	Reason string // what exactly was wrong, for logs
	Err    error  // one of the sentinel errors
}

func (e *Error) Error() string {
	if e.Type != 0 {
		return fmt.Sprintf("packet: %s: %s (%s)", e.Type, e.Reason, e.Code)
	}
	return fmt.Sprintf("packet: %s (%s)", e.Reason, e.Code)
}

func (e *Error) Unwrap() error { return e.Err }

func malformed(t Type, format string, args ...any) *Error {
	return &Error{Code: MalformedPacket, Type: t, Reason: fmt.Sprintf(format, args...), Err: ErrMalformed}
}

func protocolErr(t Type, format string, args ...any) *Error {
	return &Error{Code: ProtocolError, Type: t, Reason: fmt.Sprintf(format, args...), Err: ErrProtocol}
}

// CodeOf returns the reason code carried by err, or UnspecifiedError.
func CodeOf(err error) ReasonCode {
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	return UnspecifiedError
}

// clip shortens a peer-controlled string quoted in an error message, so a
// 64 KiB topic does not end up in the logs.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
