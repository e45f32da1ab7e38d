package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// NeverExpires is the Session.ExpiryInterval of a session that outlives
// any disconnection (MQTT 5 Session Expiry Interval 0xFFFFFFFF).
const NeverExpires time.Duration = -1

// Session is a persistent MQTT session without its messages. The store
// keeps it under a keyed hash of ClientID; ClientID, Owner and the filters
// are only inside the sealed value.
type Session struct {
	ClientID string
	// Owner names the identity that created the session (the broker's
	// session owner key); OwnerVerified is false for anonymous owners.
	Owner         string
	OwnerVerified bool
	// ProtocolVersion is the MQTT version of the last connection (3, 4 or 5).
	ProtocolVersion byte
	// ExpiryInterval is how long the session outlives its connection;
	// NeverExpires keeps it until a clean start.
	ExpiryInterval time.Duration
	// ExpiresAt is the wall-clock deadline of an offline session (zero
	// while a client is connected, or for NeverExpires). A wall clock, so
	// that expiry continues across restarts.
	ExpiresAt     time.Time
	Created       time.Time
	Subscriptions []Subscription
}

// Subscription is one subscription of a session with its options.
type Subscription struct {
	Filter            string // as subscribed, "$share/group/filter" included
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte
	ID                uint32 // subscription identifier, 0 = none
}

// Properties are the PUBLISH properties that travel with a message.
type Properties struct {
	HasPayloadFormat bool
	PayloadFormat    byte
	ContentType      string
	ResponseTopic    string
	CorrelationData  []byte
	User             []UserProperty
}

// UserProperty is one MQTT 5 user property.
type UserProperty struct{ Key, Value string }

// Message is an application message stored once and referenced by the
// deliveries that owe it to sessions. It is removed with its last
// delivery.
type Message struct {
	ID      uint64 // from [Store.NextID]
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	Props   *Properties // nil: none
	Expires time.Time   // zero: never
	From    string      // publishing client ID, for No Local
	Created time.Time
}

// DeliveryState is where a delivery is in its outbound flow.
type DeliveryState byte

// Delivery states.
const (
	Queued   DeliveryState = iota // waiting for a connection or for room in the window
	Sent                          // PUBLISH sent, no acknowledgement yet
	Released                      // QoS 2: PUBREC received, PUBREL sent
)

func (s DeliveryState) String() string {
	switch s {
	case Queued:
		return "queued"
	case Sent:
		return "sent"
	case Released:
		return "released"
	}
	return fmt.Sprintf("state(%d)", byte(s))
}

// Delivery is one message owed to one session.
type Delivery struct {
	ClientID string
	// Seq orders a session's deliveries (from [Store.NextID]); it is
	// unique per session.
	Seq      uint64
	MsgID    uint64
	QoS      byte
	Retain   bool     // retain flag as sent
	SubIDs   []uint32 // subscription identifiers
	State    DeliveryState
	PacketID uint16 // once in flight
	// Dup is set once the message was sent on some connection; a resend
	// carries the DUP flag.
	Dup bool
	// ShareGroup and ShareFilter name the shared subscription the message
	// came through, if any.
	ShareGroup, ShareFilter string
}

// Retained is a retained message.
type Retained struct {
	Topic   string
	Payload []byte
	QoS     byte
	Props   *Properties
	Expires time.Time // zero: never
	// Owner is the identity charged for it under the retained quotas
	// ("" for the server).
	Owner   string
	Created time.Time
	// Publisher is who published it, for the broker's check that the
	// publisher may still publish it when it is replayed
	// (check_retain_source). nil: unknown (a record written before
	// publishers were kept, or imported without one); the broker then
	// refuses the replay while the check is on.
	Publisher *Publisher

	pubKey []byte // the publisher record's key, as read (see Publisher)
}

// Will is a will message waiting for its delay to run out.
type Will struct {
	ClientID string
	FireAt   time.Time // wall clock
	Owner    string    // identity of the client that set it
	Topic    string
	Payload  []byte
	QoS      byte
	Retain   bool
	Props    *Properties
	// ExpiryInterval is the will's Message Expiry Interval, 0 = none.
	ExpiryInterval time.Duration
	// Publisher is the client that set the will, whose rights the broker
	// checks when it fires. nil: unknown (a record written before
	// publishers were kept); the broker then does not publish it.
	Publisher *Publisher

	pubKey []byte
}

// Publisher is the identity of a client as the broker's authorization
// sees it: what a retained message and a pending will keep of the client
// that published or set them, so that they are authorized after a
// restart as they would have been before. The store keeps each distinct
// publisher once (a record under a keyed hash of its content), referenced
// by the retained messages and wills that name it, and removes it with
// the last of them.
type Publisher struct {
	Listener        string
	Addr            string // IP address without the port ("" unknown): ports change per connection
	ProtocolVersion byte
	ClientID        string
	Username        string // verified; "" anonymous
	Anonymous       bool
	Groups          []string
	Publish         []string // topic filters the credential grants
	Subscribe       []string
	Attributes      map[string]string
	AuthBackend     string
	AuthExpires     time.Time
	// Certs is the verified client certificate chain (DER), leaf first.
	Certs [][]byte
}

// Record type tags: the first byte of every sealed plaintext.
const (
	tagSession  byte = 1
	tagMessage  byte = 2
	tagDelivery byte = 3
	tagInbound  byte = 4
	tagRetained byte = 5
	tagWill     byte = 6
	tagState    byte = 7
	// Since publishers are kept: a retained message and a will carry the
	// key of their publisher's record. Tags 5 and 6 still decode (the
	// publisher is then unknown) and are no longer written.
	tagPublisher byte = 8
	tagRetained2 byte = 9
	tagWill2     byte = 10
)

// inbound is an inbound QoS 2 packet identifier awaiting PUBREL.
type inbound struct {
	ClientID string
	PacketID uint16
}

// state is the sealed header state: the commit counter, the digest of
// every record's (bucket, key, version) and the highest ID handed out.
type state struct {
	Counter uint64
	Digest  [32]byte
	Records uint64
	MaxID   uint64
}

// errDecode is wrapped by every record decoding error.
var errDecode = errors.New("store: malformed record")

// maxList bounds the element count of any list in a record, before
// allocation.
const maxList = 1 << 16

type enc struct{ b []byte }

func (e *enc) u8(v byte)    { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *enc) uv(v uint64)  { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) bytes(v []byte) {
	e.uv(uint64(len(v)))
	e.b = append(e.b, v...)
}
func (e *enc) str(v string) {
	e.uv(uint64(len(v)))
	e.b = append(e.b, v...)
}
func (e *enc) strs(v []string) {
	e.uv(uint64(len(v)))
	for _, s := range v {
		e.str(s)
	}
}
func (e *enc) boolean(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}
func (e *enc) time(t time.Time) {
	if t.IsZero() {
		e.u64(0)
		return
	}
	e.u64(uint64(t.UnixNano()))
}
func (e *enc) props(p *Properties) {
	if p == nil {
		e.u8(0)
		return
	}
	e.u8(1)
	e.boolean(p.HasPayloadFormat)
	e.u8(p.PayloadFormat)
	e.str(p.ContentType)
	e.str(p.ResponseTopic)
	e.bytes(p.CorrelationData)
	e.uv(uint64(len(p.User)))
	for _, u := range p.User {
		e.str(u.Key)
		e.str(u.Value)
	}
}

type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errDecode, what)
	}
}
func (d *dec) need(n int) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) < n {
		d.fail("truncated")
		return false
	}
	return true
}
func (d *dec) u8() byte {
	if !d.need(1) {
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}
func (d *dec) u16() uint16 {
	if !d.need(2) {
		return 0
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}
func (d *dec) u32() uint32 {
	if !d.need(4) {
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}
func (d *dec) u64() uint64 {
	if !d.need(8) {
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}
func (d *dec) uv() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad length")
		return 0
	}
	d.b = d.b[n:]
	return v
}
func (d *dec) length() int {
	n := d.uv()
	if d.err == nil && n > uint64(len(d.b)) {
		d.fail("length beyond record")
		return 0
	}
	return int(n)
}
func (d *dec) bytes() []byte {
	n := d.length()
	if d.err != nil || n == 0 {
		return nil
	}
	v := make([]byte, n)
	copy(v, d.b)
	d.b = d.b[n:]
	return v
}
func (d *dec) str() string {
	n := d.length()
	if d.err != nil {
		return ""
	}
	v := string(d.b[:n])
	d.b = d.b[n:]
	return v
}
func (d *dec) boolean() bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail("bad boolean")
	return false
}
func (d *dec) time() time.Time {
	v := d.u64()
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(v))
}
func (d *dec) count() int {
	n := d.uv()
	if n > maxList || n > uint64(len(d.b)) { // every element takes at least one byte
		d.fail("list too long")
		return 0
	}
	return int(n)
}
func (d *dec) props() *Properties {
	switch d.u8() {
	case 0:
		return nil
	case 1:
	default:
		d.fail("bad properties flag")
		return nil
	}
	p := &Properties{HasPayloadFormat: d.boolean(), PayloadFormat: d.u8()}
	p.ContentType = d.str()
	p.ResponseTopic = d.str()
	p.CorrelationData = d.bytes()
	if n := d.count(); n > 0 {
		p.User = make([]UserProperty, n)
		for i := range p.User {
			p.User[i] = UserProperty{Key: d.str(), Value: d.str()}
		}
	}
	return p
}
func (d *dec) strs() []string {
	n := d.count()
	if n == 0 {
		return nil
	}
	v := make([]string, n)
	for i := range v {
		v[i] = d.str()
	}
	return v
}
func (d *dec) pubKey() []byte {
	k := d.bytes()
	if k != nil && len(k) != idLen {
		d.fail("bad publisher key")
	}
	return k
}
func (d *dec) qos() byte {
	q := d.u8()
	if q > 2 {
		d.fail("bad QoS")
	}
	return q
}

// encodeRecord returns the plaintext of a record: a type tag and the
// fields.
func encodeRecord(r any) []byte { return appendRecord(nil, r) }

// appendRecord appends the plaintext of a record to dst.
func appendRecord(dst []byte, r any) []byte {
	e := enc{b: dst}
	switch v := r.(type) {
	case *Session:
		e.u8(tagSession)
		e.str(v.ClientID)
		e.str(v.Owner)
		e.boolean(v.OwnerVerified)
		e.u8(v.ProtocolVersion)
		e.u64(uint64(v.ExpiryInterval))
		e.time(v.ExpiresAt)
		e.time(v.Created)
		e.uv(uint64(len(v.Subscriptions)))
		for _, s := range v.Subscriptions {
			e.str(s.Filter)
			e.u8(s.QoS)
			e.boolean(s.NoLocal)
			e.boolean(s.RetainAsPublished)
			e.u8(s.RetainHandling)
			e.u32(s.ID)
		}
	case *Message:
		e.u8(tagMessage)
		e.u64(v.ID)
		e.str(v.Topic)
		e.bytes(v.Payload)
		e.u8(v.QoS)
		e.boolean(v.Retain)
		e.props(v.Props)
		e.time(v.Expires)
		e.str(v.From)
		e.time(v.Created)
	case *Delivery:
		e.u8(tagDelivery)
		e.str(v.ClientID)
		e.u64(v.Seq)
		e.u64(v.MsgID)
		e.u8(v.QoS)
		e.boolean(v.Retain)
		e.uv(uint64(len(v.SubIDs)))
		for _, id := range v.SubIDs {
			e.u32(id)
		}
		e.u8(byte(v.State))
		e.u16(v.PacketID)
		e.boolean(v.Dup)
		e.str(v.ShareGroup)
		e.str(v.ShareFilter)
	case *inbound:
		e.u8(tagInbound)
		e.str(v.ClientID)
		e.u16(v.PacketID)
	case *Retained:
		e.u8(tagRetained2)
		e.str(v.Topic)
		e.bytes(v.Payload)
		e.u8(v.QoS)
		e.props(v.Props)
		e.time(v.Expires)
		e.str(v.Owner)
		e.time(v.Created)
		e.bytes(v.pubKey)
	case *Will:
		e.u8(tagWill2)
		e.str(v.ClientID)
		e.time(v.FireAt)
		e.str(v.Owner)
		e.str(v.Topic)
		e.bytes(v.Payload)
		e.u8(v.QoS)
		e.boolean(v.Retain)
		e.props(v.Props)
		e.u64(uint64(v.ExpiryInterval))
		e.bytes(v.pubKey)
	case *Publisher:
		e.u8(tagPublisher)
		e.str(v.Listener)
		e.str(v.Addr)
		e.u8(v.ProtocolVersion)
		e.str(v.ClientID)
		e.str(v.Username)
		e.boolean(v.Anonymous)
		e.strs(v.Groups)
		e.strs(v.Publish)
		e.strs(v.Subscribe)
		// Sorted: equal publishers encode equally (one record for both).
		keys := slices.Sorted(maps.Keys(v.Attributes))
		e.uv(uint64(len(keys)))
		for _, k := range keys {
			e.str(k)
			e.str(v.Attributes[k])
		}
		e.str(v.AuthBackend)
		e.time(v.AuthExpires)
		e.uv(uint64(len(v.Certs)))
		for _, c := range v.Certs {
			e.bytes(c)
		}
	case *TicketKeys:
		encodeTicketKeys(&e, v)
	case *Ban:
		encodeBan(&e, v)
	case *state:
		e.u8(tagState)
		e.u64(v.Counter)
		e.b = append(e.b, v.Digest[:]...)
		e.u64(v.Records)
		e.u64(v.MaxID)
	default:
		panic(fmt.Sprintf("store: encodeRecord: unknown type %T", r))
	}
	return e.b
}

// recordSizeHint is about the encoded size of the records the hot path
// writes (messages and deliveries), so that one allocation holds the
// sealed value; 0 for the others.
func recordSizeHint(r any) int {
	switch v := r.(type) {
	case *Message:
		n := 64 + len(v.Topic) + len(v.Payload) + len(v.From)
		if p := v.Props; p != nil {
			n += 32 + len(p.ContentType) + len(p.ResponseTopic) + len(p.CorrelationData)
			for _, u := range p.User {
				n += 8 + len(u.Key) + len(u.Value)
			}
		}
		return n
	case *Delivery:
		return 48 + len(v.ClientID) + 5*len(v.SubIDs) + len(v.ShareGroup) + len(v.ShareFilter)
	}
	return 0
}

// decodeRecord parses a record's plaintext strictly: a known tag, every
// length inside the record, nothing left over. It returns one of
// *Session, *Message, *Delivery, *inbound, *Retained, *Will, *Publisher,
// *TicketKeys, *Ban, *state.
func decodeRecord(b []byte) (any, error) {
	d := &dec{b: b}
	var r any
	switch tag := d.u8(); tag {
	case tagSession:
		v := &Session{ClientID: d.str(), Owner: d.str(), OwnerVerified: d.boolean(), ProtocolVersion: d.u8()}
		v.ExpiryInterval = time.Duration(d.u64())
		v.ExpiresAt = d.time()
		v.Created = d.time()
		if n := d.count(); n > 0 {
			v.Subscriptions = make([]Subscription, n)
			for i := range v.Subscriptions {
				v.Subscriptions[i] = Subscription{Filter: d.str(), QoS: d.qos(), NoLocal: d.boolean(),
					RetainAsPublished: d.boolean(), RetainHandling: d.u8(), ID: d.u32()}
			}
		}
		r = v
	case tagMessage:
		v := &Message{ID: d.u64(), Topic: d.str(), Payload: d.bytes(), QoS: d.qos(), Retain: d.boolean(), Props: d.props()}
		v.Expires = d.time()
		v.From = d.str()
		v.Created = d.time()
		r = v
	case tagDelivery:
		v := &Delivery{ClientID: d.str(), Seq: d.u64(), MsgID: d.u64(), QoS: d.qos(), Retain: d.boolean()}
		if n := d.count(); n > 0 {
			v.SubIDs = make([]uint32, n)
			for i := range v.SubIDs {
				v.SubIDs[i] = d.u32()
			}
		}
		v.State = DeliveryState(d.u8())
		if v.State > Released {
			d.fail("bad delivery state")
		}
		v.PacketID = d.u16()
		v.Dup = d.boolean()
		v.ShareGroup = d.str()
		v.ShareFilter = d.str()
		r = v
	case tagInbound:
		r = &inbound{ClientID: d.str(), PacketID: d.u16()}
	case tagRetained, tagRetained2:
		v := &Retained{Topic: d.str(), Payload: d.bytes(), QoS: d.qos(), Props: d.props()}
		v.Expires = d.time()
		v.Owner = d.str()
		v.Created = d.time()
		if tag == tagRetained2 {
			v.pubKey = d.pubKey()
		}
		r = v
	case tagWill, tagWill2:
		v := &Will{ClientID: d.str(), FireAt: d.time(), Owner: d.str(), Topic: d.str(), Payload: d.bytes(),
			QoS: d.qos(), Retain: d.boolean(), Props: d.props()}
		v.ExpiryInterval = time.Duration(d.u64())
		if tag == tagWill2 {
			v.pubKey = d.pubKey()
		}
		r = v
	case tagPublisher:
		v := &Publisher{Listener: d.str(), Addr: d.str(), ProtocolVersion: d.u8(), ClientID: d.str(), Username: d.str(),
			Anonymous: d.boolean()}
		v.Groups = d.strs()
		v.Publish = d.strs()
		v.Subscribe = d.strs()
		if n := d.count(); n > 0 {
			v.Attributes = make(map[string]string, n)
			last := ""
			for i := range n {
				k, val := d.str(), d.str()
				if i > 0 && k <= last {
					d.fail("attributes not in order")
				}
				v.Attributes[k], last = val, k
			}
		}
		v.AuthBackend = d.str()
		v.AuthExpires = d.time()
		if n := d.count(); n > 0 {
			v.Certs = make([][]byte, n)
			for i := range v.Certs {
				if v.Certs[i] = d.bytes(); v.Certs[i] == nil {
					d.fail("empty certificate")
				}
			}
		}
		r = v
	case tagTicketKeys:
		r = decodeTicketKeys(d)
	case tagBan:
		r = decodeBan(d)
	case tagState:
		v := &state{Counter: d.u64()}
		if d.need(32) {
			copy(v.Digest[:], d.b)
			d.b = d.b[32:]
		}
		v.Records = d.u64()
		v.MaxID = d.u64()
		r = v
	default:
		d.fail("unknown record type")
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return nil, d.err
	}
	return r, nil
}
