package packet

import "encoding/binary"

// decoder reads the fields of one packet body. Every read checks the
// remaining length first, so a length field can never make the decoder
// slice beyond the body or allocate more than the body holds.
type decoder struct {
	b []byte // unread part of the body
	t Type   // packet being decoded, for errors
}

func (d *decoder) short(what string) error {
	return malformed(d.t, "%s: packet shorter than its fields", what)
}

func (d *decoder) byte(what string) (byte, error) {
	if len(d.b) < 1 {
		return 0, d.short(what)
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c, nil
}

func (d *decoder) u16(what string) (uint16, error) {
	if len(d.b) < 2 {
		return 0, d.short(what)
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v, nil
}

func (d *decoder) u32(what string) (uint32, error) {
	if len(d.b) < 4 {
		return 0, d.short(what)
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v, nil
}

func (d *decoder) vbi(what string) (uint32, error) {
	v, n, st := parseVBI(d.b)
	if st != vbiOK {
		return 0, vbiError(d.t, what, st)
	}
	d.b = d.b[n:]
	return v, nil
}

// bytes reads two-byte-length-prefixed binary data [MQTT-1.5.6]. The
// result aliases the body; it is nil when the length is 0.
func (d *decoder) bytes(what string) ([]byte, error) {
	if len(d.b) < 2 {
		return nil, d.short(what)
	}
	n := int(binary.BigEndian.Uint16(d.b))
	if len(d.b)-2 < n {
		return nil, d.short(what)
	}
	if n == 0 {
		d.b = d.b[2:]
		return nil, nil
	}
	v := d.b[2 : 2+n : 2+n]
	d.b = d.b[2+n:]
	return v, nil
}

// str reads a UTF-8 encoded string [MQTT-1.5.4] and validates it before
// copying it out of the body.
func (d *decoder) str(what string) (string, error) {
	b, err := d.bytes(what)
	if err != nil {
		return "", err
	}
	if !validStringBytes(b) {
		return "", malformed(d.t, "%s: ill-formed UTF-8 or U+0000 [MQTT-1.5.4-1] [MQTT-1.5.4-2]", what)
	}
	return string(b), nil
}

// packetID reads a Packet Identifier, which is never 0 [MQTT-2.2.1-3].
func (d *decoder) packetID() (uint16, error) {
	id, err := d.u16("packet identifier")
	if err != nil {
		return 0, err
	}
	if id == 0 {
		return 0, protocolErr(d.t, "packet identifier 0 [MQTT-2.2.1-3]")
	}
	return id, nil
}

// end reports an error when bytes are left over after the last field.
func (d *decoder) end() error {
	if len(d.b) != 0 {
		return malformed(d.t, "%d bytes after the last field", len(d.b))
	}
	return nil
}

func appendU16(b []byte, v uint16) []byte { return append(b, byte(v>>8), byte(v)) }

func appendU32(b []byte, v uint32) []byte {
	return append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func appendString(b []byte, s string) []byte {
	b = appendU16(b, uint16(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, v []byte) []byte {
	b = appendU16(b, uint16(len(v)))
	return append(b, v...)
}

// checkString validates a string the encoder is about to write.
func checkString(t Type, what, s string) error {
	if !ValidString(s) {
		return protocolErr(t, "%s: not a valid MQTT string (UTF-8, no U+0000, at most 65535 bytes)", what)
	}
	return nil
}

func checkBytes(t Type, what string, b []byte) error {
	if len(b) > 65535 {
		return protocolErr(t, "%s: longer than 65535 bytes", what)
	}
	return nil
}
