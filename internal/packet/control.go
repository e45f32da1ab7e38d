package packet

func (*Pingreq) bodySize(Version) (int, error)          { return 0, nil }
func (*Pingresp) bodySize(Version) (int, error)         { return 0, nil }
func (*Pingreq) appendBody(b []byte, _ Version) []byte  { return b }
func (*Pingresp) appendBody(b []byte, _ Version) []byte { return b }

// decodeReasonProps decodes the body of a 5.0 DISCONNECT or AUTH: empty
// means Success without properties; a lone reason code means no
// properties [MQTT 5.0 §3.14.2.1, §3.15.2.1].
func decodeReasonProps(d *decoder, code *ReasonCode, props *Properties, c propCtx) error {
	if len(d.b) == 0 {
		return nil
	}
	rc, _ := d.byte("reason code")
	if err := checkReason(d.t, ReasonCode(rc)); err != nil {
		return err
	}
	*code = ReasonCode(rc)
	if len(d.b) == 0 {
		return nil
	}
	if err := d.props(props, c); err != nil {
		return err
	}
	return d.end()
}

func decodeDisconnect(d *decoder, v Version) (*Disconnect, error) {
	p := &Disconnect{}
	if v != V5 {
		return p, d.end()
	}
	if err := decodeReasonProps(d, &p.ReasonCode, &p.Properties, ctxDisconnect); err != nil {
		return nil, err
	}
	return p, nil
}

// bodySize: in 3.x DISCONNECT is empty; reason code and properties are
// dropped. In 5.0 the reason code is always written, even Normal
// disconnection, which the specification lets a sender omit: some clients
// (paho.golang) cannot read a DISCONNECT without it.
func (p *Disconnect) bodySize(v Version) (int, error) {
	if v != V5 {
		return 0, nil
	}
	if err := checkReason(DISCONNECT, p.ReasonCode); err != nil {
		return 0, err
	}
	pn, err := p.Properties.size(DISCONNECT, ctxDisconnect)
	if err != nil {
		return 0, err
	}
	if pn > 0 {
		return 1 + vbiLen(pn) + pn, nil
	}
	return 1, nil
}

func (p *Disconnect) appendBody(b []byte, v Version) []byte {
	if v != V5 {
		return b
	}
	pn := p.Properties.length()
	b = append(b, byte(p.ReasonCode))
	if pn == 0 {
		return b
	}
	return p.Properties.appendTo(b, pn)
}

func decodeAuth(d *decoder) (*Auth, error) {
	p := &Auth{}
	if err := decodeReasonProps(d, &p.ReasonCode, &p.Properties, ctxAuth); err != nil {
		return nil, err
	}
	return p, nil
}

// bodySize: the reason code and the property length are always written;
// the empty form the specification allows for Success without properties
// is not, because some clients (paho.golang) cannot read it.
func (p *Auth) bodySize(v Version) (int, error) {
	if v != V5 {
		return 0, malformed(AUTH, "AUTH does not exist in MQTT %s", v)
	}
	if err := checkReason(AUTH, p.ReasonCode); err != nil {
		return 0, err
	}
	pn, err := p.Properties.size(AUTH, ctxAuth)
	if err != nil {
		return 0, err
	}
	return 1 + vbiLen(pn) + pn, nil
}

func (p *Auth) appendBody(b []byte, _ Version) []byte {
	pn := p.Properties.length()
	b = append(b, byte(p.ReasonCode))
	return p.Properties.appendTo(b, pn)
}
