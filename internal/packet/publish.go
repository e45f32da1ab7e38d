package packet

import "unicode/utf8"

func decodePublish(d *decoder, flags byte, v Version) (*Publish, error) {
	p := &Publish{
		Dup:    flags&0x08 != 0,
		QoS:    (flags >> 1) & 3,
		Retain: flags&0x01 != 0,
	}
	var err error
	if p.Topic, err = d.str("topic name"); err != nil {
		return nil, err
	}
	if p.QoS > 0 {
		if p.PacketID, err = d.packetID(); err != nil {
			return nil, err
		}
	}
	if v == V5 {
		if err := d.props(&p.Properties, ctxPublish); err != nil {
			return nil, err
		}
	}
	// With a Topic Alias the topic name may be empty [MQTT 5.0 §3.3.2.3.4];
	// otherwise it is a non-empty name without wildcards [MQTT-3.3.2-2]
	// [MQTT-4.7.3-1].
	if p.Topic != "" || v != V5 || !p.Properties.Has(PropTopicAlias) {
		if err := ValidTopicName(p.Topic); err != nil {
			return nil, protocolErr(PUBLISH, "topic name %q: %v [MQTT-3.3.2-2]", clip(p.Topic), err)
		}
	}
	if len(d.b) > 0 {
		p.Payload = d.b[:len(d.b):len(d.b)]
		d.b = nil
	}
	return p, nil
}

func (p *Publish) flags() byte {
	f := p.QoS << 1
	if p.Dup {
		f |= 0x08
	}
	if p.Retain {
		f |= 0x01
	}
	return f
}

func (p *Publish) bodySize(v Version) (int, error) {
	if p.QoS > 2 {
		return 0, malformed(PUBLISH, "QoS %d [MQTT-3.3.1-4]", p.QoS)
	}
	if p.QoS == 0 {
		if p.Dup {
			return 0, protocolErr(PUBLISH, "DUP flag on a QoS 0 message [MQTT-3.3.1-2]")
		}
		if p.PacketID != 0 {
			return 0, protocolErr(PUBLISH, "packet identifier on a QoS 0 message [MQTT-2.2.1-2]")
		}
	} else if p.PacketID == 0 {
		return 0, protocolErr(PUBLISH, "packet identifier 0 [MQTT-2.2.1-3]")
	}
	if p.Topic != "" || v != V5 || !p.Properties.Has(PropTopicAlias) {
		if err := ValidTopicName(p.Topic); err != nil {
			return 0, protocolErr(PUBLISH, "topic name %q: %v", clip(p.Topic), err)
		}
	}
	n := 2 + len(p.Topic) + len(p.Payload)
	if p.QoS > 0 {
		n += 2
	}
	if v == V5 {
		pn, err := p.Properties.size(PUBLISH, ctxPublish)
		if err != nil {
			return 0, err
		}
		n += vbiLen(pn) + pn
	}
	return n, nil
}

func (p *Publish) appendBody(b []byte, v Version) []byte {
	b = appendString(b, p.Topic)
	if p.QoS > 0 {
		b = appendU16(b, p.PacketID)
	}
	if v == V5 {
		b = p.Properties.appendTo(b, p.Properties.length())
	}
	return append(b, p.Payload...)
}

// CheckPayloadFormat reports an *Error with code PayloadFormatInvalid when
// props has Payload Format Indicator 1 (UTF-8) and payload is not valid
// UTF-8. The decoder does not check this itself: validating the payload is
// the receiver's choice [MQTT-3.3.2-4] (a server MAY answer PUBACK, PUBREC
// or DISCONNECT with 0x99). Use it for PUBLISH payloads and will payloads.
func CheckPayloadFormat(props *Properties, payload []byte) error {
	if props.Has(PropPayloadFormat) && props.PayloadFormat == 1 && !utf8.Valid(payload) {
		return &Error{Code: PayloadFormatInvalid, Type: PUBLISH,
			Reason: "payload is not valid UTF-8 but Payload Format Indicator is 1", Err: ErrProtocol}
	}
	return nil
}

// ack is the common body of PUBACK, PUBREC, PUBREL and PUBCOMP.
type ack struct {
	id    *uint16
	code  *ReasonCode
	props *Properties
}

func (p *Puback) ack() ack  { return ack{&p.PacketID, &p.ReasonCode, &p.Properties} }
func (p *Pubrec) ack() ack  { return ack{&p.PacketID, &p.ReasonCode, &p.Properties} }
func (p *Pubrel) ack() ack  { return ack{&p.PacketID, &p.ReasonCode, &p.Properties} }
func (p *Pubcomp) ack() ack { return ack{&p.PacketID, &p.ReasonCode, &p.Properties} }

// decodeAck decodes a PUBACK, PUBREC, PUBREL or PUBCOMP body. In 5.0 the
// reason code is omitted when the remaining length is 2 (Success) and the
// property length when it is less than 4 [MQTT 5.0 §3.4.2.1, §3.4.2.2].
func decodeAck(d *decoder, a ack, v Version) error {
	var err error
	if *a.id, err = d.packetID(); err != nil {
		return err
	}
	if v != V5 || len(d.b) == 0 {
		return d.end()
	}
	c, _ := d.byte("reason code")
	if err := checkReason(d.t, ReasonCode(c)); err != nil {
		return err
	}
	*a.code = ReasonCode(c)
	if len(d.b) == 0 {
		return nil
	}
	if err := d.props(a.props, ctxAck); err != nil {
		return err
	}
	return d.end()
}

// ackSize returns the canonical body length: the reason code is written
// only when it is not Success or properties follow; properties only when
// there are some.
func ackSize(t Type, a ack, v Version) (int, error) {
	if *a.id == 0 {
		return 0, protocolErr(t, "packet identifier 0 [MQTT-2.2.1-3]")
	}
	if v != V5 {
		return 2, nil
	}
	if err := checkReason(t, *a.code); err != nil {
		return 0, err
	}
	pn, err := a.props.size(t, ctxAck)
	if err != nil {
		return 0, err
	}
	switch {
	case pn > 0:
		return 3 + vbiLen(pn) + pn, nil
	case *a.code != Success:
		return 3, nil
	}
	return 2, nil
}

func appendAck(b []byte, a ack, v Version) []byte {
	b = appendU16(b, *a.id)
	if v != V5 {
		return b
	}
	pn := a.props.length()
	if pn == 0 && *a.code == Success {
		return b
	}
	b = append(b, byte(*a.code))
	if pn == 0 {
		return b
	}
	return a.props.appendTo(b, pn)
}

func (p *Puback) bodySize(v Version) (int, error)        { return ackSize(PUBACK, p.ack(), v) }
func (p *Pubrec) bodySize(v Version) (int, error)        { return ackSize(PUBREC, p.ack(), v) }
func (p *Pubrel) bodySize(v Version) (int, error)        { return ackSize(PUBREL, p.ack(), v) }
func (p *Pubcomp) bodySize(v Version) (int, error)       { return ackSize(PUBCOMP, p.ack(), v) }
func (p *Puback) appendBody(b []byte, v Version) []byte  { return appendAck(b, p.ack(), v) }
func (p *Pubrec) appendBody(b []byte, v Version) []byte  { return appendAck(b, p.ack(), v) }
func (p *Pubrel) appendBody(b []byte, v Version) []byte  { return appendAck(b, p.ack(), v) }
func (p *Pubcomp) appendBody(b []byte, v Version) []byte { return appendAck(b, p.ack(), v) }
