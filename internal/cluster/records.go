package cluster

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// Session records (sessions.go). Each is one subject of the stream
// moat_sessions, keeping its last value: a version byte (1), a kind byte,
// the record's fields as JSON (length-prefixed, uvarint), and for records
// that carry a message, the message as an MQTT 5 PUBLISH (the broker's
// strict codec) without expiry: its deadline, creation time and
// publisher's client ID are absolute values in the JSON. An empty value
// is a removed record.

const recordVersion = 1

// Record kinds.
const (
	kindSession  = 's'
	kindDelivery = 'd'
	kindWill     = 'w'
	kindInbound  = 'i'
)

var errSessionRecord = errors.New("cluster: malformed session record")

// sessionRecord is the record of a session: its home (the origin of the
// node serving it, and that node's name) and the session without its
// messages.
type sessionRecord struct {
	Home      string      `json:"home"`
	Node      string      `json:"node"`
	Owner     string      `json:"owner,omitempty"`
	Verified  bool        `json:"verified,omitempty"`
	Version   byte        `json:"version,omitempty"`
	Expiry    int64       `json:"expiry"` // nanoseconds; -1: never
	ExpiresAt time.Time   `json:"expires_at,omitzero"`
	Created   time.Time   `json:"created,omitzero"`
	Subs      []subRecord `json:"subs,omitempty"`
	// Placeholder: written by a claim before the broker's first record of
	// the session; a session that never got further has ended.
	Placeholder bool `json:"placeholder,omitempty"`
}

type subRecord struct {
	Filter            string `json:"f"`
	QoS               byte   `json:"q,omitempty"`
	NoLocal           bool   `json:"nl,omitempty"`
	RetainAsPublished bool   `json:"rap,omitempty"`
	RetainHandling    byte   `json:"rh,omitempty"`
	ID                uint32 `json:"id,omitempty"`
}

func sessionRecordOf(ss *broker.StoredSession, home, node string) *sessionRecord {
	r := &sessionRecord{Home: home, Node: node, Owner: ss.Owner, Verified: ss.OwnerVerified, Version: ss.Version,
		Expiry: int64(ss.Expiry), ExpiresAt: ss.ExpiresAt, Created: ss.Created}
	for _, s := range ss.Subscriptions {
		r.Subs = append(r.Subs, subRecord{Filter: s.Filter, QoS: s.QoS, NoLocal: s.NoLocal, RetainAsPublished: s.RetainAsPublished,
			RetainHandling: s.RetainHandling, ID: s.ID})
	}
	return r
}

func (r *sessionRecord) stored(clientID string) *broker.StoredSession {
	ss := &broker.StoredSession{ClientID: clientID, Owner: r.Owner, OwnerVerified: r.Verified, Version: r.Version,
		Expiry: time.Duration(r.Expiry), ExpiresAt: r.ExpiresAt, Created: r.Created}
	if r.Placeholder {
		ss.Expiry = 0
	}
	for _, s := range r.Subs {
		ss.Subscriptions = append(ss.Subscriptions, broker.StoredSubscription{Filter: s.Filter, QoS: s.QoS, NoLocal: s.NoLocal,
			RetainAsPublished: s.RetainAsPublished, RetainHandling: s.RetainHandling, ID: s.ID})
	}
	return ss
}

// deliveryRecord is a message owed to a session, with its message.
type deliveryRecord struct {
	Seq         uint64    `json:"seq"`
	MsgID       uint64    `json:"msg"`
	QoS         byte      `json:"qos"`
	Retain      bool      `json:"retain,omitempty"`
	SubIDs      []uint32  `json:"sub_ids,omitempty"`
	State       byte      `json:"state,omitempty"`
	PacketID    uint16    `json:"pid,omitempty"`
	Dup         bool      `json:"dup,omitempty"`
	ShareGroup  string    `json:"share_group,omitempty"`
	ShareFilter string    `json:"share_filter,omitempty"`
	From        string    `json:"from,omitempty"`
	Created     time.Time `json:"created,omitzero"`
	Expires     time.Time `json:"expires,omitzero"`
	// Ref is the message's ID in the durable stream when it came from
	// another node: a session moved after it does not get it twice.
	Ref string `json:"ref,omitempty"`
}

// willRecord is a pending will with its publisher.
type willRecord struct {
	FireAt    time.Time      `json:"fire_at"`
	Owner     string         `json:"owner,omitempty"`
	Publisher *publisherJSON `json:"publisher,omitempty"`
	From      string         `json:"from,omitempty"`
	Created   time.Time      `json:"created,omitzero"`
	Expires   time.Time      `json:"expires,omitzero"`
	// Live: the will of a connection still open (wills.go), fired after
	// Delay (nanoseconds) once its node is gone. A clean session's also
	// names the node holding the connection (Node, and its run, Home).
	Live  bool   `json:"live,omitempty"`
	Delay int64  `json:"delay,omitempty"`
	Node  string `json:"node,omitempty"`
	Home  string `json:"home,omitempty"`
}

// encodeRecord returns a record of kind with fields meta and message msg
// (nil for none).
func encodeRecord(kind byte, meta any, msg *broker.Message) ([]byte, error) {
	js, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	b := []byte{recordVersion, kind}
	b = binary.AppendUvarint(b, uint64(len(js)))
	b = append(b, js...)
	if msg == nil {
		return b, nil
	}
	p := &packet.Publish{Topic: msg.Topic, Payload: msg.Payload, QoS: msg.QoS, Retain: msg.Retain}
	if msg.QoS > 0 {
		p.PacketID = 1 // required by the codec
	}
	if msg.Props != nil {
		p.Properties = *msg.Props
	}
	return packet.Append(b, p, packet.V5)
}

// decodeRecord splits a record into its kind, its JSON fields (decoded
// into meta) and its message (nil when it has none).
func decodeRecord(b []byte, meta any) (kind byte, p *packet.Publish, err error) {
	if len(b) < 2 || b[0] != recordVersion {
		return 0, nil, errSessionRecord
	}
	kind = b[1]
	b = b[2:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return 0, nil, errSessionRecord
	}
	if err := json.Unmarshal(b[k:k+int(n)], meta); err != nil {
		return 0, nil, errSessionRecord
	}
	b = b[k+int(n):]
	if len(b) == 0 {
		return kind, nil, nil
	}
	pk, m, err := packet.Decode(b, packet.V5, maxWirePacket)
	if err != nil {
		return 0, nil, err
	}
	pub, ok := pk.(*packet.Publish)
	if !ok || m != len(b) {
		return 0, nil, errSessionRecord
	}
	if err := packet.ValidTopicName(pub.Topic); err != nil {
		return 0, nil, err
	}
	return kind, pub, nil
}

// recordMessage rebuilds a record's message.
func recordMessage(p *packet.Publish, from string, created, expires time.Time) *broker.Message {
	if p == nil {
		return nil
	}
	m := broker.NewMessage(p, from, created)
	m.Expires = expires
	return m
}

func encodeDelivery(d *broker.StoredDelivery, msg *broker.Message, ref string) ([]byte, error) {
	return encodeRecord(kindDelivery, &deliveryRecord{Seq: d.Seq, MsgID: d.MsgID, QoS: d.QoS, Retain: d.Retain, SubIDs: d.SubIDs,
		State: byte(d.State), PacketID: d.PacketID, Dup: d.Dup, ShareGroup: d.ShareGroup, ShareFilter: d.ShareFilter,
		From: msg.From, Created: msg.Created, Expires: msg.Expires, Ref: ref}, msg)
}

// decodeDelivery returns a delivery record of clientID with its message
// and the message's ID in the durable stream ("" for none).
func decodeDelivery(b []byte, clientID string) (*broker.StoredDelivery, *broker.Message, string, error) {
	var r deliveryRecord
	kind, p, err := decodeRecord(b, &r)
	if err != nil {
		return nil, nil, "", err
	}
	if kind != kindDelivery || p == nil || r.State > byte(broker.DeliveryReleased) || r.QoS > 2 {
		return nil, nil, "", errSessionRecord
	}
	d := &broker.StoredDelivery{ClientID: clientID, Seq: r.Seq, MsgID: r.MsgID, QoS: r.QoS, Retain: r.Retain, SubIDs: r.SubIDs,
		State: broker.DeliveryState(r.State), PacketID: r.PacketID, Dup: r.Dup, ShareGroup: r.ShareGroup, ShareFilter: r.ShareFilter}
	return d, recordMessage(p, r.From, r.Created, r.Expires), r.Ref, nil
}

func encodeWill(w *broker.StoredWill) ([]byte, error) {
	return encodeWillOf(w, "", "")
}

// encodeWillOf encodes w, naming the node (node, run home) holding its
// connection when it is a clean session's.
func encodeWillOf(w *broker.StoredWill, node, home string) ([]byte, error) {
	r := &willRecord{FireAt: w.FireAt, Owner: w.Owner, From: w.Message.From, Created: w.Message.Created, Expires: w.Message.Expires,
		Live: w.Live, Delay: int64(w.Delay), Node: node, Home: home}
	if w.Publisher != nil {
		pj := publisherJSONOf(w.Publisher)
		r.Publisher = &pj
	}
	return encodeRecord(kindWill, r, w.Message)
}

func decodeWill(b []byte, clientID string) (*broker.StoredWill, error) {
	w, _, err := decodeWillRecord(b, clientID)
	return w, err
}

// decodeWillRecord returns a will record of clientID and its fields.
func decodeWillRecord(b []byte, clientID string) (*broker.StoredWill, *willRecord, error) {
	var r willRecord
	kind, p, err := decodeRecord(b, &r)
	if err != nil {
		return nil, nil, err
	}
	if kind != kindWill || p == nil || r.Delay < 0 {
		return nil, nil, errSessionRecord
	}
	w := &broker.StoredWill{ClientID: clientID, FireAt: r.FireAt, Owner: r.Owner,
		Message: recordMessage(p, r.From, r.Created, r.Expires), Live: r.Live, Delay: time.Duration(r.Delay)}
	if r.Publisher != nil {
		// A publisher that does not convert is unknown: the will is
		// then not published (fail closed).
		w.Publisher, _ = r.Publisher.stored()
	}
	return w, &r, nil
}

func decodeSession(b []byte) (*sessionRecord, error) {
	var r sessionRecord
	kind, p, err := decodeRecord(b, &r)
	if err != nil {
		return nil, err
	}
	if kind != kindSession || p != nil || r.Home == "" {
		return nil, errSessionRecord
	}
	return &r, nil
}
