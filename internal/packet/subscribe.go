package packet

import "strings"

// Subscription option bits [MQTT 5.0 §3.8.3.1].
const (
	subQoS          = 0x03
	subNoLocal      = 0x04
	subRAP          = 0x08
	subRetainHandle = 0x30
	subReserved5    = 0xC0
	subReserved3    = 0xFC // MQTT 3.x: only the QoS bits are defined
)

// countEntries checks that the payload is a sequence of length-prefixed
// strings each followed by extra bytes, and returns how many there are,
// so the slice can be allocated once and never larger than the body.
func countEntries(b []byte, extra int) (int, bool) {
	n := 0
	for len(b) > 0 {
		if len(b) < 2 {
			return 0, false
		}
		l := 2 + (int(b[0])<<8 | int(b[1])) + extra
		if l > len(b) {
			return 0, false
		}
		b = b[l:]
		n++
	}
	return n, true
}

func decodeSubscribe(d *decoder, v Version) (*Subscribe, error) {
	s := &Subscribe{}
	var err error
	if s.PacketID, err = d.packetID(); err != nil {
		return nil, err
	}
	if v == V5 {
		if err := d.props(&s.Properties, ctxSubscribe); err != nil {
			return nil, err
		}
	}
	n, ok := countEntries(d.b, 1)
	if !ok {
		return nil, malformed(SUBSCRIBE, "payload is not a list of topic filters and options")
	}
	if n == 0 {
		// [MQTT-3.8.3-3] in 3.1.1, [MQTT-3.8.3-2] in 5.0.
		return nil, protocolErr(SUBSCRIBE, "no topic filter [MQTT-3.8.3-3]")
	}
	s.Subscriptions = make([]Subscription, n)
	for i := range s.Subscriptions {
		sub := &s.Subscriptions[i]
		if sub.Filter, err = d.str("topic filter"); err != nil {
			return nil, err
		}
		if err := ValidTopicFilter(sub.Filter); err != nil {
			return nil, protocolErr(SUBSCRIBE, "topic filter %q: %v [MQTT-4.7.1]", clip(sub.Filter), err)
		}
		o, _ := d.byte("subscription options")
		if v != V5 {
			if o&subReserved3 != 0 {
				return nil, malformed(SUBSCRIBE, "reserved subscription option bits set [MQTT-3-8.3-4]")
			}
		} else if o&subReserved5 != 0 {
			return nil, malformed(SUBSCRIBE, "reserved subscription option bits set [MQTT-3.8.3-5]")
		}
		sub.QoS = o & subQoS
		if sub.QoS == 3 {
			if v == V5 {
				return nil, protocolErr(SUBSCRIBE, "Maximum QoS 3 in subscription options [MQTT 5.0 §3.8.3.1]")
			}
			return nil, malformed(SUBSCRIBE, "QoS 3 in subscription options [MQTT-3-8.3-4]")
		}
		sub.NoLocal = o&subNoLocal != 0
		sub.RetainAsPublished = o&subRAP != 0
		sub.RetainHandling = (o & subRetainHandle) >> 4
		if sub.RetainHandling == 3 {
			return nil, protocolErr(SUBSCRIBE, "Retain Handling 3 [MQTT 5.0 §3.8.3.1]")
		}
		if sub.NoLocal && strings.HasPrefix(sub.Filter, SharePrefix) {
			return nil, protocolErr(SUBSCRIBE, "No Local on a shared subscription [MQTT-3.8.3-4]")
		}
	}
	return s, d.end()
}

func (s *Subscribe) bodySize(v Version) (int, error) {
	if s.PacketID == 0 {
		return 0, protocolErr(SUBSCRIBE, "packet identifier 0 [MQTT-2.2.1-3]")
	}
	if len(s.Subscriptions) == 0 {
		return 0, protocolErr(SUBSCRIBE, "no topic filter [MQTT-3.8.3-3]")
	}
	n := 2
	if v == V5 {
		pn, err := s.Properties.size(SUBSCRIBE, ctxSubscribe)
		if err != nil {
			return 0, err
		}
		n += vbiLen(pn) + pn
	}
	for i := range s.Subscriptions {
		sub := &s.Subscriptions[i]
		if err := ValidTopicFilter(sub.Filter); err != nil {
			return 0, protocolErr(SUBSCRIBE, "topic filter %q: %v", clip(sub.Filter), err)
		}
		if sub.QoS > 2 {
			return 0, malformed(SUBSCRIBE, "QoS %d", sub.QoS)
		}
		if v == V5 {
			if sub.RetainHandling > 2 {
				return 0, protocolErr(SUBSCRIBE, "Retain Handling %d", sub.RetainHandling)
			}
			if sub.NoLocal && strings.HasPrefix(sub.Filter, SharePrefix) {
				return 0, protocolErr(SUBSCRIBE, "No Local on a shared subscription [MQTT-3.8.3-4]")
			}
		}
		n += 3 + len(sub.Filter)
	}
	return n, nil
}

// appendBody writes the subscriptions; for 3.x only the QoS of each is
// written, the 5.0 options being dropped like the properties.
func (s *Subscribe) appendBody(b []byte, v Version) []byte {
	b = appendU16(b, s.PacketID)
	if v == V5 {
		b = s.Properties.appendTo(b, s.Properties.length())
	}
	for i := range s.Subscriptions {
		sub := &s.Subscriptions[i]
		b = appendString(b, sub.Filter)
		o := sub.QoS
		if v == V5 {
			if sub.NoLocal {
				o |= subNoLocal
			}
			if sub.RetainAsPublished {
				o |= subRAP
			}
			o |= sub.RetainHandling << 4
		}
		b = append(b, o)
	}
	return b
}

func decodeSuback(d *decoder, v Version) (*Suback, error) {
	s := &Suback{}
	var err error
	if s.PacketID, err = d.packetID(); err != nil {
		return nil, err
	}
	set := &v3SubackReasons
	if v == V5 {
		if err := d.props(&s.Properties, ctxAck); err != nil {
			return nil, err
		}
		set = &subackReasons
	}
	if len(d.b) == 0 {
		return nil, protocolErr(SUBACK, "no return code [MQTT-3.9.3-1]")
	}
	s.ReasonCodes = make([]ReasonCode, len(d.b))
	for i, c := range d.b {
		if !set.has(ReasonCode(c)) {
			return nil, malformed(SUBACK, "return code 0x%02X not valid in SUBACK", c)
		}
		s.ReasonCodes[i] = ReasonCode(c)
	}
	d.b = nil
	return s, nil
}

// v3SubackCode maps a reason code for a 3.x SUBACK: codes of 0x80 and
// above become 0x80 (Failure) [MQTT-3.9.3-2].
func v3SubackCode(c ReasonCode) ReasonCode {
	if c >= 0x80 {
		return V3SubackFailure
	}
	return c
}

func (s *Suback) bodySize(v Version) (int, error) {
	if s.PacketID == 0 {
		return 0, protocolErr(SUBACK, "packet identifier 0 [MQTT-2.2.1-3]")
	}
	if len(s.ReasonCodes) == 0 {
		return 0, protocolErr(SUBACK, "no return code [MQTT-3.9.3-1]")
	}
	n := 2 + len(s.ReasonCodes)
	for _, c := range s.ReasonCodes {
		if v != V5 {
			c = v3SubackCode(c)
			if !v3SubackReasons.has(c) {
				return 0, malformed(SUBACK, "return code 0x%02X not valid in MQTT %s SUBACK", byte(c), v)
			}
		} else if err := checkReason(SUBACK, c); err != nil {
			return 0, err
		}
	}
	if v == V5 {
		pn, err := s.Properties.size(SUBACK, ctxAck)
		if err != nil {
			return 0, err
		}
		n += vbiLen(pn) + pn
	}
	return n, nil
}

func (s *Suback) appendBody(b []byte, v Version) []byte {
	b = appendU16(b, s.PacketID)
	if v == V5 {
		b = s.Properties.appendTo(b, s.Properties.length())
		for _, c := range s.ReasonCodes {
			b = append(b, byte(c))
		}
		return b
	}
	for _, c := range s.ReasonCodes {
		b = append(b, byte(v3SubackCode(c)))
	}
	return b
}

func decodeUnsubscribe(d *decoder, v Version) (*Unsubscribe, error) {
	u := &Unsubscribe{}
	var err error
	if u.PacketID, err = d.packetID(); err != nil {
		return nil, err
	}
	if v == V5 {
		if err := d.props(&u.Properties, ctxUnsubscribe); err != nil {
			return nil, err
		}
	}
	n, ok := countEntries(d.b, 0)
	if !ok {
		return nil, malformed(UNSUBSCRIBE, "payload is not a list of topic filters")
	}
	if n == 0 {
		return nil, protocolErr(UNSUBSCRIBE, "no topic filter [MQTT-3.10.3-2]")
	}
	u.Filters = make([]string, n)
	for i := range u.Filters {
		if u.Filters[i], err = d.str("topic filter"); err != nil {
			return nil, err
		}
		if err := ValidTopicFilter(u.Filters[i]); err != nil {
			return nil, protocolErr(UNSUBSCRIBE, "topic filter %q: %v [MQTT-4.7.1]", clip(u.Filters[i]), err)
		}
	}
	return u, d.end()
}

func (u *Unsubscribe) bodySize(v Version) (int, error) {
	if u.PacketID == 0 {
		return 0, protocolErr(UNSUBSCRIBE, "packet identifier 0 [MQTT-2.2.1-3]")
	}
	if len(u.Filters) == 0 {
		return 0, protocolErr(UNSUBSCRIBE, "no topic filter [MQTT-3.10.3-2]")
	}
	n := 2
	if v == V5 {
		pn, err := u.Properties.size(UNSUBSCRIBE, ctxUnsubscribe)
		if err != nil {
			return 0, err
		}
		n += vbiLen(pn) + pn
	}
	for _, f := range u.Filters {
		if err := ValidTopicFilter(f); err != nil {
			return 0, protocolErr(UNSUBSCRIBE, "topic filter %q: %v", clip(f), err)
		}
		n += 2 + len(f)
	}
	return n, nil
}

func (u *Unsubscribe) appendBody(b []byte, v Version) []byte {
	b = appendU16(b, u.PacketID)
	if v == V5 {
		b = u.Properties.appendTo(b, u.Properties.length())
	}
	for _, f := range u.Filters {
		b = appendString(b, f)
	}
	return b
}

func decodeUnsuback(d *decoder, v Version) (*Unsuback, error) {
	u := &Unsuback{}
	var err error
	if u.PacketID, err = d.packetID(); err != nil {
		return nil, err
	}
	if v != V5 {
		return u, d.end()
	}
	if err := d.props(&u.Properties, ctxAck); err != nil {
		return nil, err
	}
	if len(d.b) == 0 {
		return nil, protocolErr(UNSUBACK, "no reason code [MQTT-3.11.3-1]")
	}
	u.ReasonCodes = make([]ReasonCode, len(d.b))
	for i, c := range d.b {
		if err := checkReason(UNSUBACK, ReasonCode(c)); err != nil {
			return nil, err
		}
		u.ReasonCodes[i] = ReasonCode(c)
	}
	d.b = nil
	return u, nil
}

// bodySize: in 3.x UNSUBACK has no reason codes and they are dropped.
func (u *Unsuback) bodySize(v Version) (int, error) {
	if u.PacketID == 0 {
		return 0, protocolErr(UNSUBACK, "packet identifier 0 [MQTT-2.2.1-3]")
	}
	if v != V5 {
		return 2, nil
	}
	if len(u.ReasonCodes) == 0 {
		return 0, protocolErr(UNSUBACK, "no reason code [MQTT-3.11.3-1]")
	}
	for _, c := range u.ReasonCodes {
		if err := checkReason(UNSUBACK, c); err != nil {
			return 0, err
		}
	}
	pn, err := u.Properties.size(UNSUBACK, ctxAck)
	if err != nil {
		return 0, err
	}
	return 2 + vbiLen(pn) + pn + len(u.ReasonCodes), nil
}

func (u *Unsuback) appendBody(b []byte, v Version) []byte {
	b = appendU16(b, u.PacketID)
	if v != V5 {
		return b
	}
	b = u.Properties.appendTo(b, u.Properties.length())
	for _, c := range u.ReasonCodes {
		b = append(b, byte(c))
	}
	return b
}
