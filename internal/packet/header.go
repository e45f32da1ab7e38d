package packet

import "unicode/utf8"

// maxVBI is the largest value a variable byte integer can hold, and so the
// largest Remaining Length [MQTT-1.5.5].
const maxVBI = 268435455

// vbiLen returns the number of bytes of the minimal encoding of n
// (0 <= n <= maxVBI).
func vbiLen(n int) int {
	switch {
	case n < 1<<7:
		return 1
	case n < 1<<14:
		return 2
	case n < 1<<21:
		return 3
	}
	return 4
}

// appendVBI appends the minimal variable byte integer encoding of n.
func appendVBI(b []byte, n int) []byte {
	for {
		c := byte(n & 0x7F)
		n >>= 7
		if n == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// vbiStatus tells why parseVBI stopped.
type vbiStatus byte

const (
	vbiOK         vbiStatus = iota
	vbiShort                // b ended before the last byte
	vbiTooLong              // a fifth byte would be needed
	vbiNotMinimal           // valid value, but not the minimum number of bytes
)

// parseVBI decodes the variable byte integer at the start of b. It accepts
// at most 4 bytes and only the minimal encoding: a multi-byte integer whose
// last byte is 0 could have been written shorter [MQTT-1.5.5-1].
func parseVBI(b []byte) (v uint32, n int, st vbiStatus) {
	var shift uint
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, vbiShort
		}
		c := b[i]
		v |= uint32(c&0x7F) << shift
		if c&0x80 == 0 {
			if i > 0 && c == 0 {
				return 0, 0, vbiNotMinimal
			}
			return v, i + 1, vbiOK
		}
		shift += 7
	}
	return 0, 0, vbiTooLong
}

func vbiError(t Type, what string, st vbiStatus) *Error {
	switch st {
	case vbiTooLong:
		return malformed(t, "%s: variable byte integer longer than 4 bytes [MQTT-1.5.5]", what)
	case vbiNotMinimal:
		return malformed(t, "%s: variable byte integer not minimally encoded [MQTT-1.5.5-1]", what)
	}
	return malformed(t, "%s: truncated variable byte integer", what)
}

// checkHeader validates the packet type and the flag bits of the first
// byte of the fixed header [MQTT-2.1.3-1].
func checkHeader(t Type, flags byte, v Version) error {
	switch t {
	case 0:
		return malformed(0, "reserved packet type 0 [MQTT-2.1.2]")
	case PUBLISH:
		qos := (flags >> 1) & 3
		if qos == 3 {
			return malformed(t, "QoS 3 [MQTT-3.3.1-4]")
		}
		if qos == 0 && flags&0x08 != 0 {
			return protocolErr(t, "DUP flag set on a QoS 0 message [MQTT-3.3.1-2]")
		}
		return nil
	case PUBREL, SUBSCRIBE, UNSUBSCRIBE:
		if flags == 0x02 {
			return nil
		}
		// MQTT 3.1 let a retransmitted PUBREL, SUBSCRIBE or UNSUBSCRIBE
		// carry the DUP flag. The flag carries no information, so it is
		// accepted and not kept.
		if v == V31 && flags == 0x0A {
			return nil
		}
		return malformed(t, "fixed header flags 0x%X, must be 0x2 [MQTT-2.1.3-1]", flags)
	case AUTH:
		if v != V5 {
			return malformed(t, "AUTH packet in MQTT %s (reserved type 15)", v)
		}
	}
	if flags != 0 {
		return malformed(t, "fixed header flags 0x%X, must be 0 [MQTT-2.1.3-1]", flags)
	}
	return nil
}

// firstByte returns the first byte of the fixed header of p.
func firstByte(t Type, flags byte) byte { return byte(t)<<4 | flags }

// validStringBytes applies the rules of ValidString to the bytes of an
// encoded string: well-formed UTF-8, hence no surrogate code points
// [MQTT-1.5.4-1], and no U+0000 [MQTT-1.5.4-2].
func validStringBytes(b []byte) bool {
	for i, c := range b {
		if c == 0 {
			return false
		}
		if c >= utf8.RuneSelf {
			rest := b[i:]
			if !utf8.Valid(rest) {
				return false
			}
			for _, c := range rest {
				if c == 0 {
					return false
				}
			}
			return true
		}
	}
	return true
}
