package packet

import "fmt"

// Protocol names carried in CONNECT [MQTT-3.1.2-1].
const (
	protocolMQTT   = "MQTT"   // 3.1.1 and 5.0
	protocolMQIsdp = "MQIsdp" // 3.1
)

func protocolName(v Version) string {
	if v == V31 {
		return protocolMQIsdp
	}
	return protocolMQTT
}

// Connect flag bits [MQTT 5.0 §3.1.2.3].
const (
	connReserved   = 0x01
	connCleanStart = 0x02
	connWill       = 0x04
	connWillQoS    = 0x18
	connWillRetain = 0x20
	connPassword   = 0x40
	connUsername   = 0x80
)

// decodeConnect decodes a CONNECT body. Once the protocol level has been
// read, the returned *Connect is non-nil even on error, holding at least
// ProtocolName and Version, so that a server can answer with a CONNACK of
// the client's version.
func decodeConnect(d *decoder) (*Connect, error) {
	name, err := d.bytes("protocol name")
	if err != nil {
		return nil, err
	}
	level, err := d.byte("protocol level")
	if err != nil {
		return nil, err
	}
	c := &Connect{Version: Version(level)}
	if validStringBytes(name) {
		c.ProtocolName = string(name)
	}
	switch {
	case string(name) == protocolMQTT && (level == byte(V311) || level == byte(V5)):
	case string(name) == protocolMQIsdp && level == byte(V31):
	default:
		// [MQTT-3.1.2-1] [MQTT-3.1.2-2]: a 3.x server answers with return
		// code 0x01, a 5.0 server with reason code 0x84.
		return c, &Error{Code: UnsupportedProtocolVersion, Type: CONNECT,
			Reason: fmt.Sprintf("unsupported protocol name %q level %d [MQTT-3.1.2-1] [MQTT-3.1.2-2]", clip(string(name)), level),
			Err:    ErrUnsupportedVersion}
	}
	v := c.Version
	flags, err := d.byte("connect flags")
	if err != nil {
		return c, err
	}
	if flags&connReserved != 0 {
		return c, malformed(CONNECT, "reserved connect flag set [MQTT-3.1.2-3]")
	}
	c.CleanStart = flags&connCleanStart != 0
	c.UsernameFlag = flags&connUsername != 0
	c.PasswordFlag = flags&connPassword != 0
	willQoS := (flags & connWillQoS) >> 3
	willRetain := flags&connWillRetain != 0
	if flags&connWill == 0 {
		if willQoS != 0 {
			// [MQTT-3.1.2-11] in 5.0, [MQTT-3.1.2-13] in 3.1.1.
			return c, malformed(CONNECT, "will QoS %d without will flag [MQTT-3.1.2-11]", willQoS)
		}
		if willRetain {
			// [MQTT-3.1.2-13] in 5.0, [MQTT-3.1.2-15] in 3.1.1.
			return c, malformed(CONNECT, "will retain without will flag [MQTT-3.1.2-13]")
		}
	} else if willQoS == 3 {
		// [MQTT-3.1.2-12] in 5.0, [MQTT-3.1.2-14] in 3.1.1.
		return c, malformed(CONNECT, "will QoS 3 [MQTT-3.1.2-12]")
	}
	if v != V5 && c.PasswordFlag && !c.UsernameFlag {
		return c, protocolErr(CONNECT, "password flag without user name flag [MQTT-3.1.2-22]")
	}
	if c.KeepAlive, err = d.u16("keep alive"); err != nil {
		return c, err
	}
	if v == V5 {
		if err := d.props(&c.Properties, ctxConnect); err != nil {
			return c, err
		}
	}
	// Payload: client identifier, will properties, will topic, will
	// payload, user name, password [MQTT-3.1.3-1].
	if c.ClientID, err = d.str("client identifier"); err != nil {
		return c, err
	}
	if flags&connWill != 0 {
		w := &Will{QoS: willQoS, Retain: willRetain}
		if v == V5 {
			if err := d.props(&w.Properties, ctxWill); err != nil {
				return c, err
			}
		}
		if w.Topic, err = d.str("will topic"); err != nil {
			return c, err
		}
		if err := ValidTopicName(w.Topic); err != nil {
			return c, protocolErr(CONNECT, "will topic: %v [MQTT-3.1.3-11]", err)
		}
		if w.Payload, err = d.bytes("will payload"); err != nil {
			return c, err
		}
		c.Will = w
	}
	if c.UsernameFlag {
		if c.Username, err = d.str("user name"); err != nil {
			return c, err
		}
	}
	if c.PasswordFlag {
		if c.Password, err = d.bytes("password"); err != nil {
			return c, err
		}
	}
	return c, d.end()
}

// version returns the version a CONNECT is encoded with: its own, or v.
func (c *Connect) version(v Version) Version {
	if c.Version != 0 {
		return c.Version
	}
	return v
}

func (c *Connect) bodySize(v Version) (int, error) {
	v = c.version(v)
	if c.ProtocolName != "" && c.ProtocolName != protocolName(v) {
		return 0, protocolErr(CONNECT, "protocol name %q does not match MQTT %s", clip(c.ProtocolName), v)
	}
	n := 2 + len(protocolName(v)) + 1 + 1 + 2 // name, level, flags, keep alive
	if v == V5 {
		pn, err := c.Properties.size(CONNECT, ctxConnect)
		if err != nil {
			return 0, err
		}
		n += vbiLen(pn) + pn
	}
	if err := checkString(CONNECT, "client identifier", c.ClientID); err != nil {
		return 0, err
	}
	n += 2 + len(c.ClientID)
	if w := c.Will; w != nil {
		if w.QoS > 2 {
			return 0, malformed(CONNECT, "will QoS %d", w.QoS)
		}
		if err := ValidTopicName(w.Topic); err != nil {
			return 0, protocolErr(CONNECT, "will topic: %v", err)
		}
		if err := checkBytes(CONNECT, "will payload", w.Payload); err != nil {
			return 0, err
		}
		n += 2 + len(w.Topic) + 2 + len(w.Payload)
		if v == V5 {
			pn, err := w.Properties.size(CONNECT, ctxWill)
			if err != nil {
				return 0, err
			}
			n += vbiLen(pn) + pn
		}
	}
	if !c.UsernameFlag && c.Username != "" {
		return 0, protocolErr(CONNECT, "user name set but user name flag clear")
	}
	if !c.PasswordFlag && len(c.Password) > 0 {
		return 0, protocolErr(CONNECT, "password set but password flag clear")
	}
	if v != V5 && c.PasswordFlag && !c.UsernameFlag {
		return 0, protocolErr(CONNECT, "password without user name in MQTT %s [MQTT-3.1.2-22]", v)
	}
	if c.UsernameFlag {
		if err := checkString(CONNECT, "user name", c.Username); err != nil {
			return 0, err
		}
		n += 2 + len(c.Username)
	}
	if c.PasswordFlag {
		if err := checkBytes(CONNECT, "password", c.Password); err != nil {
			return 0, err
		}
		n += 2 + len(c.Password)
	}
	return n, nil
}

func (c *Connect) appendBody(b []byte, v Version) []byte {
	v = c.version(v)
	b = appendString(b, protocolName(v))
	b = append(b, byte(v))
	var flags byte
	if c.CleanStart {
		flags |= connCleanStart
	}
	if w := c.Will; w != nil {
		flags |= connWill | w.QoS<<3
		if w.Retain {
			flags |= connWillRetain
		}
	}
	if c.PasswordFlag {
		flags |= connPassword
	}
	if c.UsernameFlag {
		flags |= connUsername
	}
	b = append(b, flags)
	b = appendU16(b, c.KeepAlive)
	if v == V5 {
		pn := c.Properties.length()
		b = c.Properties.appendTo(b, pn)
	}
	b = appendString(b, c.ClientID)
	if w := c.Will; w != nil {
		if v == V5 {
			pn := w.Properties.length()
			b = w.Properties.appendTo(b, pn)
		}
		b = appendString(b, w.Topic)
		b = appendBytes(b, w.Payload)
	}
	if c.UsernameFlag {
		b = appendString(b, c.Username)
	}
	if c.PasswordFlag {
		b = appendBytes(b, c.Password)
	}
	return b
}

func decodeConnack(d *decoder, v Version) (*Connack, error) {
	flags, err := d.byte("acknowledge flags")
	if err != nil {
		return nil, err
	}
	switch {
	case v == V31:
		// MQTT 3.1 has no Session Present flag: the byte is reserved and
		// unused, and is ignored.
		flags = 0
	case flags&^1 != 0:
		// [MQTT-3.2.2-1] in 3.1.1; reserved bits in 5.0 §3.2.2.1.
		return nil, malformed(CONNACK, "reserved acknowledge flags set [MQTT-3.2.2-1]")
	}
	code, err := d.byte("return code")
	if err != nil {
		return nil, err
	}
	c := &Connack{SessionPresent: flags&1 != 0, ReasonCode: ReasonCode(code)}
	if v == V5 {
		if err := checkReason(CONNACK, c.ReasonCode); err != nil {
			return nil, err
		}
		if err := d.props(&c.Properties, ctxConnack); err != nil {
			return nil, err
		}
	} else if code > byte(V3NotAuthorized) {
		return nil, malformed(CONNACK, "connect return code %d (reserved)", code)
	}
	if c.SessionPresent && c.ReasonCode != Success {
		// [MQTT-3.2.2-4] in 3.1.1, [MQTT-3.2.2-6] in 5.0.
		return nil, protocolErr(CONNACK, "session present with a non-zero return code [MQTT-3.2.2-6]")
	}
	return c, d.end()
}

// v3code returns the return code written for 3.x: codes above 5 are MQTT 5
// reason codes and are mapped with V3ConnackCode.
func (c *Connack) v3code() ReasonCode {
	if c.ReasonCode <= V3NotAuthorized {
		return c.ReasonCode
	}
	return V3ConnackCode(c.ReasonCode)
}

// bodySize: MQTT 3.1 has no Session Present flag; it is dropped.
func (c *Connack) bodySize(v Version) (int, error) {
	code := c.ReasonCode
	if v != V5 {
		code = c.v3code()
	} else if err := checkReason(CONNACK, code); err != nil {
		return 0, err
	}
	if c.SessionPresent && code != Success && v != V31 {
		return 0, protocolErr(CONNACK, "session present with a non-zero return code [MQTT-3.2.2-6]")
	}
	if v != V5 {
		return 2, nil
	}
	pn, err := c.Properties.size(CONNACK, ctxConnack)
	if err != nil {
		return 0, err
	}
	return 2 + vbiLen(pn) + pn, nil
}

func (c *Connack) appendBody(b []byte, v Version) []byte {
	var flags byte
	if c.SessionPresent && v != V31 {
		flags = 1
	}
	if v != V5 {
		return append(b, flags, byte(c.v3code()))
	}
	b = append(b, flags, byte(c.ReasonCode))
	pn := c.Properties.length()
	return c.Properties.appendTo(b, pn)
}
