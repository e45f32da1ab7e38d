package broker

import (
	"slices"

	"github.com/moatmq/moat/internal/packet"
)

// A message routed to many subscribers is encoded once per distinct
// PUBLISH, not once per subscriber. Two subscribers get the same bytes
// when their packets agree in everything the encoding depends on: the
// protocol family (3.1 and 3.1.1 encode a PUBLISH alike; 5.0 adds
// properties), QoS, the retain flag as sent, and in 5.0 the subscription
// identifiers and the Message Expiry Interval. QoS 1 and 2 packets differ
// further only in the packet identifier and the DUP flag, which the writer
// patches into its own copy (packet.PatchPublish). What differs per
// connection in other ways (an outbound topic alias, an expiry interval
// that moved on while the packet waited) is encoded for that connection
// alone, from the same fields, into the writer's buffer.
//
// The encodings of one message are made during its routing pass
// (encSet), by the publisher's goroutine alone; each is immutable from
// then on and shared read-only by the writers of every connection it was
// queued for. The garbage collector reclaims it once the last queued
// packet referring to it is written or dropped: nothing is pooled, so no
// reference count can be got wrong, and a message kept for later (a
// retained message, a queue of an offline session) keeps no encoding.

// pubEnc is one message's PUBLISH encoded for every connection with the
// same options. A QoS 0 PUBLISH is queued as the *pubEnc itself; a QoS 1
// or 2 delivery refers to it (delivery.enc). All fields are set before
// the pubEnc is shared and never change.
type pubEnc struct {
	msg *Message
	// b is the packet; for QoS 1 and 2 its packet identifier (at idAt)
	// and DUP flag are placeholders that each copy gets patched.
	b    []byte
	idAt int
	v5   bool
	qos  byte
	// retain is the retain flag as sent.
	retain bool
	// subIDs are the subscription identifiers (5.0 only), owned by the
	// pubEnc. expiry is the Message Expiry Interval written (5.0, and a
	// message that has an expiry).
	subIDs []uint32
	expiry uint32
}

// Type implements packet.Packet: a queued QoS 0 PUBLISH.
func (*pubEnc) Type() packet.Type { return packet.PUBLISH }

// fill sets p to the PUBLISH this encoding stands for, with the Message
// Expiry Interval expiry (when the message has one) and packet
// identifier pid, overwriting all of p. It is used where a connection
// needs other bytes than the shared ones.
func (e *pubEnc) fill(p *packet.Publish, expiry uint32, pid uint16, dup bool) {
	fillPublish(p, e.msg, e.qos, e.retain, e.subIDs, expiry, pid, dup)
}

// fillPublish sets p to the PUBLISH of msg with these options,
// overwriting all of it.
func fillPublish(p *packet.Publish, msg *Message, qos byte, retain bool, subIDs []uint32, expiry uint32, pid uint16, dup bool) {
	*p = packet.Publish{
		Dup:      dup && qos > 0,
		QoS:      qos,
		Retain:   retain,
		Topic:    msg.Topic,
		PacketID: pid,
		Payload:  msg.Payload,
	}
	if msg.Props != nil {
		p.Properties = *msg.Props
	}
	if len(subIDs) > 0 {
		p.Properties.SubscriptionIDs = subIDs
	}
	if !msg.Expires.IsZero() {
		p.Properties.SetMessageExpiry(expiry)
	}
}

// maxEncodings bounds the distinct encodings one routing pass shares. A
// message whose subscribers ask for more (5.0 subscribers with many
// different subscription identifiers) has the rest encoded per
// connection, so a pass never searches a long list.
const maxEncodings = 16

// encSet holds the shared encodings of one message during its routing
// pass. It belongs to the routing goroutine; the encodings it hands out
// outlive it.
type encSet struct {
	msg *Message
	// from is the connection whose reader routes the message, which
	// may hold the receivers' writers back (conn.wakeWriterLocked); nil
	// for routing elsewhere (wills, $SYS, redistribution).
	from *conn
	clk  clock
	encs []*pubEnc
	// share is set when the pass has more than one receiver: a message
	// for one subscriber is encoded by its writer straight into the
	// write buffer, which costs less than encoding it apart and copying.
	share bool
	// failed: the message could not be encoded for some options; those
	// deliveries are encoded (and the error reported) by their writers.
	failed bool
}

// reset prepares s for a routing pass of msg. The encodings of the last
// pass are released.
func (s *encSet) reset(msg *Message, from *conn, clk clock, receivers int) {
	s.release()
	s.msg, s.from, s.clk, s.failed, s.share = msg, from, clk, false, receivers > 1
}

// release drops the references of the last pass, so that a pooled set
// keeps no message alive.
func (s *encSet) release() {
	clear(s.encs)
	s.encs = s.encs[:0]
	s.msg, s.from = nil, nil
}

// get returns the shared encoding of the message for a connection of
// version v with the given QoS, retain flag and subscription identifiers,
// encoding it on first use. It returns nil when the pass already holds
// maxEncodings others or the message cannot be encoded with these
// options: the caller then leaves the encoding to the writer.
func (s *encSet) get(v packet.Version, qos byte, retain bool, subIDs []uint32) *pubEnc {
	if s == nil || !s.share {
		return nil
	}
	v5 := v == packet.V5
	var expiry uint32
	if v5 {
		if !s.msg.Expires.IsZero() {
			expiry = s.msg.remainingExpiry(s.clk.get())
		}
	} else {
		subIDs = nil // not part of a 3.x packet
	}
	for _, e := range s.encs {
		if e.v5 == v5 && e.qos == qos && e.retain == retain && e.expiry == expiry && slices.Equal(e.subIDs, subIDs) {
			return e
		}
	}
	if len(s.encs) >= maxEncodings || s.failed {
		return nil
	}
	e := &pubEnc{msg: s.msg, v5: v5, qos: qos, retain: retain, subIDs: slices.Clone(subIDs), expiry: expiry}
	var p packet.Publish
	var pid uint16
	if qos > 0 {
		pid = 1 // a placeholder: every copy gets its own
	}
	e.fill(&p, expiry, pid, false)
	b, idAt, err := packet.AppendPublishTemplate(make([]byte, 0, encodedSizeHint(&p, v5)), &p, v)
	if err != nil {
		s.failed = true
		return nil
	}
	e.b, e.idAt = b, idAt
	s.encs = append(s.encs, e)
	return e
}

// encodedSizeHint is a capacity for the encoding of p that is rarely too
// small, so that encoding it allocates once.
func encodedSizeHint(p *packet.Publish, v5 bool) int {
	n := 16 + len(p.Topic) + len(p.Payload)
	if v5 {
		pr := &p.Properties
		n += 32 + len(pr.ContentType) + len(pr.ResponseTopic) + len(pr.CorrelationData) + 5*len(pr.SubscriptionIDs)
		for _, u := range pr.User {
			n += 5 + len(u.Key) + len(u.Value)
		}
	}
	return n
}
