package broker

import (
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// Message is an application message inside the broker. A Message is
// immutable once routed: every subscriber's PUBLISH is built from it, and
// its Payload and property slices are shared read-only.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	// publisherUnknown marks a recovered retained message whose record
	// names no publisher (an earlier version's, or imported without
	// one): its replay is refused while the check is on (fail closed).
	// (The flags sit beside QoS and Retain: a Message is allocated per
	// PUBLISH, and padding after each would put it in a larger size
	// class.)
	publisherUnknown bool
	// remote: another node's message, routed here by the Cluster
	// (ReplayLocal replays this node's own only).
	remote bool
	// Props holds the publisher's properties that travel with the message
	// (payload format, content type, response topic, correlation data, user
	// properties); topic alias, subscription identifiers and message
	// expiry are not kept here. nil when the publisher sent none of them,
	// as with every MQTT 3 client: the property block is large, and most
	// messages would carry it empty.
	Props *packet.Properties
	// Expires is when the message expires (Message Expiry Interval); zero
	// means never.
	Expires time.Time
	// From is the publishing client's ID ("" for the server itself), used
	// for No Local.
	From string
	// Created is when the broker received the message.
	Created time.Time
	// Publisher is a snapshot of the publishing client's identity, kept
	// for retained messages (nil otherwise, and for the server's own) so
	// that a replay can check the publisher's right to have written it
	// (Config.CheckRetainSource). The Persistence keeps it
	// (StoredPublisher), so a retained message recovered after a restart
	// is checked as before.
	Publisher *Client
	// id names the message in the Persistence; 0 when it is never stored
	// ($SYS, or persistence off).
	id uint64
	// arrived is when the PUBLISH reached the host (Unix nanoseconds,
	// arrival.go); recentID names it in the record of recent messages
	// (recent.go), 0 when it is not recorded. Both are set before the
	// message is routed.
	arrived  int64
	recentID uint64
	// pace is the paced routing pass of another node's message
	// (cluster_paced.go), set before it is routed; nil otherwise.
	pace *pacedPass
}

// forwardedProps is the set of PUBLISH properties forwarded unchanged to
// subscribers [MQTT-3.3.2-4] [MQTT-3.3.2-17] [MQTT-3.3.2-20].
const forwardedProps = 1<<packet.PropPayloadFormat | 1<<packet.PropContentType |
	1<<packet.PropResponseTopic | 1<<packet.PropCorrelationData

func newMessage(p *packet.Publish, from string, now time.Time) *Message {
	m := &Message{
		Topic:   p.Topic,
		Payload: p.Payload,
		QoS:     p.QoS,
		Retain:  p.Retain,
		From:    from,
		Created: now,
	}
	if p.Properties.Present&forwardedProps != 0 || len(p.Properties.User) > 0 {
		m.Props = &packet.Properties{
			Present:         p.Properties.Present & forwardedProps,
			PayloadFormat:   p.Properties.PayloadFormat,
			ContentType:     p.Properties.ContentType,
			ResponseTopic:   p.Properties.ResponseTopic,
			CorrelationData: p.Properties.CorrelationData,
			User:            p.Properties.User,
		}
	}
	if p.Properties.Has(packet.PropMessageExpiry) {
		m.Expires = now.Add(time.Duration(p.Properties.MessageExpiry) * time.Second)
	}
	return m
}

// expired reports whether the message has expired at now.
func (m *Message) expired(now time.Time) bool {
	return !m.Expires.IsZero() && !now.Before(m.Expires)
}

// remainingExpiry returns the Message Expiry Interval to send at now,
// rounded up so that a message is never shown as expired before it is
// [MQTT-3.3.2-6].
func (m *Message) remainingExpiry(now time.Time) uint32 {
	d := m.Expires.Sub(now)
	if d <= 0 {
		return 0
	}
	return uint32((d + time.Second - 1) / time.Second)
}

// delivery is one message on its way to one session with the options of
// the subscriptions that matched it.
type delivery struct {
	// The fields are ordered by size: a delivery is allocated per message
	// and subscriber, and padding between them would put it in a larger
	// size class.
	msg    *Message
	subIDs []uint32  // subscription identifiers (v5)
	share  *shareKey // the shared subscription it came through, or nil
	// enc is the shared encoding of the routing pass that put the
	// delivery straight in flight on a connection, or nil (see
	// outpub.go). Set before the delivery is shared; cleared only by
	// enqueueLocked, before the delivery is queued.
	enc *pubEnc
	// seq names the delivery in the Persistence (0: not stored); pstate
	// orders its first put before its delete (see pbatch).
	seq    uint64
	pstate atomic.Uint32
	// expiry is the Message Expiry Interval sent the first time the
	// message went out in flight (expiryFixed): resends carry the same
	// value, since the message stopped waiting in the server when its
	// onward delivery started [MQTT-3.3.2-5] [MQTT-3.3.2-6], and a message
	// in flight is resent even after it expired [MQTT-4.3.3-7].
	expiry      uint32
	pid         uint16 // packet identifier once in flight
	qos         byte
	retain      bool // retain flag as sent
	released    bool // QoS 2: PUBREC received, PUBREL sent
	sent        bool // sent at least once on some connection (DUP on resend)
	pending     bool // in flight, but not yet resent on the current connection
	expiryFixed bool
	// owed: accepted for the session while it was held back (a move, a
	// catch-up), released or replayed now; a full queue takes it past
	// its limit (enqueueLocked).
	owed bool
}

// shareKey names a shared subscription: group and filter.
type shareKey struct{ group, filter string }

// clock reads the server's clock once, when first asked: most deliveries
// never need the time (no expiry, no size limit), and reading it per
// message shows at full load.
type clock struct {
	now  func() time.Time
	t    time.Time
	read bool
}

func (c *clock) get() time.Time {
	if !c.read {
		c.t, c.read = c.now(), true
	}
	return c.t
}

// publishPacket builds the PUBLISH for this delivery. The clock is read
// only for a message with an expiry interval.
func (d *delivery) publishPacket(clk *clock, dup bool) *packet.Publish {
	p := new(packet.Publish)
	d.fillPublish(p, clk, dup)
	return p
}

// fillPublish sets p to the PUBLISH for this delivery, overwriting all of
// it.
func (d *delivery) fillPublish(p *packet.Publish, clk *clock, dup bool) {
	fillPublish(p, d.msg, d.qos, d.retain, d.subIDs, d.expiryAt(clk), d.pid, dup)
}

// expiryAt returns the Message Expiry Interval to send for d: the one
// fixed when it first went out in flight, or what remains at the clock's
// time.
func (d *delivery) expiryAt(clk *clock) uint32 {
	if d.expiryFixed || d.msg.Expires.IsZero() {
		return d.expiry
	}
	return d.msg.remainingExpiry(clk.get())
}

// Type implements packet.Packet: a delivery queued on a connection is
// its PUBLISH, sent for the first time (without DUP). The writer builds
// the packet when it encodes it, so queueing a message allocates nothing
// beyond the delivery. Only fields of d that do not change once it is in
// flight or queued are read (message, QoS, retain, subscription
// identifiers, packet identifier, expiry, enc).
func (*delivery) Type() packet.Type { return packet.PUBLISH }

// outPublish is a PUBLISH resent with the DUP flag: the delivery it comes
// from and the flag (see delivery.Type for first sends).
type outPublish struct {
	d   *delivery
	dup bool
}

// Type implements packet.Packet.
func (outPublish) Type() packet.Type { return packet.PUBLISH }

// shortAck is a PUBACK, PUBREC, PUBREL or PUBCOMP without properties, the
// form almost every acknowledgement takes. Queued as a value it costs a
// few bytes instead of a whole packet struct with its property block,
// which matters at one acknowledgement per message.
type shortAck struct {
	typ  packet.Type
	code packet.ReasonCode
	pid  uint16
}

// Type implements packet.Packet.
func (a shortAck) Type() packet.Type { return a.typ }
