package cluster

import (
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/netip"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// A forwarded message travels as an MQTT 5 PUBLISH packet (internal/packet,
// the broker's own strict and fuzzed codec): topic, QoS, retain flag,
// payload, the properties that travel with a message and the remaining
// Message Expiry Interval. The publishing node's ID, its sequence number
// and the publisher's client ID (for No Local) are NATS headers.

// Header names of forwarded messages.
const (
	hdrOrigin = "Moat-Origin"
	hdrSeq    = "Moat-Seq"
	hdrFrom   = "Moat-From"
)

// maxWirePacket bounds a decoded packet: the largest MQTT packet.
const maxWirePacket = 268435455

var errExpired = errors.New("cluster: message expired")

// encodeMessage returns the PUBLISH of msg, or errExpired.
func encodeMessage(msg *broker.Message, now time.Time) ([]byte, error) {
	p := &packet.Publish{Topic: msg.Topic, Payload: msg.Payload, QoS: msg.QoS, Retain: msg.Retain}
	if msg.QoS > 0 {
		p.PacketID = 1 // required by the codec; meaningless between nodes
	}
	if msg.Props != nil {
		p.Properties = *msg.Props
	}
	if !msg.Expires.IsZero() {
		left := msg.Expires.Sub(now)
		if left <= 0 {
			return nil, errExpired
		}
		p.Properties.SetMessageExpiry(uint32((left + time.Second - 1) / time.Second))
	}
	return packet.Append(nil, p, packet.V5)
}

// decodeMessage rebuilds a message forwarded by another node.
func decodeMessage(b []byte, from string, now time.Time) (*broker.Message, error) {
	pk, n, err := packet.Decode(b, packet.V5, maxWirePacket)
	if err != nil {
		return nil, err
	}
	p, ok := pk.(*packet.Publish)
	if !ok || n != len(b) {
		return nil, errors.New("cluster: not one PUBLISH packet")
	}
	if err := packet.ValidTopicName(p.Topic); err != nil {
		return nil, err
	}
	return broker.NewMessage(p, from, now), nil
}

// retainedRecord is the value of a retained message in the KV bucket:
// version 1, the origin node, the publisher's identity (JSON, may be
// empty), then the PUBLISH. A cleared topic is purged from the bucket
// instead (housekeeping.go); a record with an empty payload, which
// earlier versions wrote for it, still clears the topic.
type retainedRecord struct {
	origin string
	pub    *broker.StoredPublisher
	msg    *broker.Message
}

func encodeRetained(r retainedRecord, now time.Time) ([]byte, error) {
	var pubJSON []byte
	if r.pub != nil {
		var err error
		if pubJSON, err = json.Marshal(publisherJSONOf(r.pub)); err != nil {
			return nil, err
		}
	}
	pk, err := encodeMessage(r.msg, now)
	if err != nil {
		return nil, err
	}
	b := []byte{1}
	b = binary.AppendUvarint(b, uint64(len(r.origin)))
	b = append(b, r.origin...)
	b = binary.AppendUvarint(b, uint64(len(pubJSON)))
	b = append(b, pubJSON...)
	return append(b, pk...), nil
}

var errRecord = errors.New("cluster: malformed retained record")

func decodeRetained(b []byte, now time.Time) (retainedRecord, error) {
	var r retainedRecord
	if len(b) < 1 || b[0] != 1 {
		return r, errRecord
	}
	b = b[1:]
	field := func() ([]byte, error) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, errRecord
		}
		f := b[k : k+int(n)]
		b = b[k+int(n):]
		return f, nil
	}
	origin, err := field()
	if err != nil {
		return r, err
	}
	pubJSON, err := field()
	if err != nil {
		return r, err
	}
	r.origin = string(origin)
	if len(pubJSON) > 0 {
		var pj publisherJSON
		if err := json.Unmarshal(pubJSON, &pj); err != nil {
			return r, errRecord
		}
		if r.pub, err = pj.stored(); err != nil {
			return r, err
		}
	}
	from := ""
	if r.pub != nil {
		from = r.pub.ClientID
	}
	r.msg, err = decodeMessage(b, from, now)
	return r, err
}

// publisherJSON is broker.StoredPublisher on the wire; certificates as DER.
type publisherJSON struct {
	Listener    string            `json:"listener,omitempty"`
	Addr        netip.Addr        `json:"addr,omitzero"`
	Version     packet.Version    `json:"version,omitempty"`
	ClientID    string            `json:"client_id,omitempty"`
	Username    string            `json:"username,omitempty"`
	Anonymous   bool              `json:"anonymous,omitempty"`
	Attributes  map[string]string `json:"attributes,omitempty"`
	Groups      []string          `json:"groups,omitempty"`
	Publish     []string          `json:"publish,omitempty"`
	Subscribe   []string          `json:"subscribe,omitempty"`
	AuthBackend string            `json:"auth_backend,omitempty"`
	AuthExpires time.Time         `json:"auth_expires,omitzero"`
	Certs       [][]byte          `json:"certs,omitempty"`
}

func publisherJSONOf(p *broker.StoredPublisher) publisherJSON {
	j := publisherJSON{Listener: p.Listener, Addr: p.Addr, Version: p.Version, ClientID: p.ClientID, Username: p.Username,
		Anonymous: p.Anonymous, Attributes: p.Attributes, Groups: p.Groups, Publish: p.Publish, Subscribe: p.Subscribe,
		AuthBackend: p.AuthBackend, AuthExpires: p.AuthExpires}
	for _, c := range p.Certs {
		j.Certs = append(j.Certs, c.Raw)
	}
	return j
}

func (j publisherJSON) stored() (*broker.StoredPublisher, error) {
	p := &broker.StoredPublisher{Listener: j.Listener, Addr: j.Addr, Version: j.Version, ClientID: j.ClientID,
		Username: j.Username, Anonymous: j.Anonymous, Attributes: j.Attributes, Groups: j.Groups, Publish: j.Publish,
		Subscribe: j.Subscribe, AuthBackend: j.AuthBackend, AuthExpires: j.AuthExpires}
	for _, der := range j.Certs {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, errRecord
		}
		p.Certs = append(p.Certs, c)
	}
	return p, nil
}
