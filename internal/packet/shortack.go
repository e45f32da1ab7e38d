package packet

// The short acknowledgement is the form almost every PUBACK, PUBREC,
// PUBREL and PUBCOMP takes: a fixed header with remaining length 2 and the
// packet identifier, nothing else (in MQTT 5.0, Success without
// properties [MQTT 5.0 §3.4.2.1]). A broker receives and sends one per
// QoS 1 message, so it is worth reading and writing without a packet
// struct. Both functions below agree byte for byte with Decode and Append.

// ParseShortAck reports whether b starts with a PUBACK, PUBREC, PUBREL or
// PUBCOMP in the 4-byte form, and returns its type and packet identifier.
// The form means the same in every protocol version; only its canonical
// bytes are taken (a PUBREL of MQTT 3.1 with the DUP flag, which the
// decoder accepts, is not). Anything else,
// including an acknowledgement Decode would refuse (wrong fixed header
// flags, packet identifier 0) or one that carries a reason code, returns
// ok false: decode it with Decode or a Reader, which report the error.
func ParseShortAck(b []byte) (t Type, pid uint16, ok bool) {
	if len(b) < 4 || b[1] != 2 {
		return 0, 0, false
	}
	t = Type(b[0] >> 4)
	flags := b[0] & 0x0F
	switch t {
	case PUBACK, PUBREC, PUBCOMP:
		if flags != 0 {
			return 0, 0, false
		}
	case PUBREL:
		if flags != 0x02 { // [MQTT-3.6.1-1]
			return 0, 0, false
		}
	default:
		return 0, 0, false
	}
	pid = uint16(b[2])<<8 | uint16(b[3])
	if pid == 0 { // [MQTT-2.2.1-3]
		return 0, 0, false
	}
	return t, pid, true
}

// PeekShortAck takes a short acknowledgement (see ParseShortAck) from the
// start of the Reader's buffered input without a packet struct, and
// reports ok false, consuming nothing, when the buffered input does not
// start with one. It never reads from the underlying reader.
func (r *Reader) PeekShortAck() (t Type, pid uint16, ok bool) {
	if r.r.Buffered() < 4 {
		return 0, 0, false
	}
	b, _ := r.r.Peek(4)
	if t, pid, ok = ParseShortAck(b); ok {
		r.r.Discard(4)
	}
	return t, pid, ok
}

// AppendShortAck appends a PUBACK, PUBREC, PUBREL or PUBCOMP (t) without
// properties for version v, the bytes Append writes for the same packet:
// the reason code is left out when it is Success, and always before MQTT
// 5.0 [MQTT-3.4.2-1]. t must be one of the four types and pid non-zero;
// the reason code is not checked against t, as Append would.
func AppendShortAck(dst []byte, t Type, pid uint16, code ReasonCode, v Version) []byte {
	first := byte(t) << 4
	if t == PUBREL {
		first |= 0x02 // [MQTT-3.6.1-1]
	}
	if v == V5 && code != Success {
		return append(dst, first, 3, byte(pid>>8), byte(pid), byte(code))
	}
	return append(dst, first, 2, byte(pid>>8), byte(pid))
}
