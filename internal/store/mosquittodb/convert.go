package mosquittodb

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/moatmq/moat/internal/store"
)

// neverExpires is Mosquitto's (and MQTT 5's) session expiry interval for
// a session that never expires; every MQTT 3.1.1 persistent session has it.
const neverExpires = 0xFFFFFFFF

// ImportOptions tune Convert.
type ImportOptions struct {
	// Now is the import time: expired messages are dropped, imported
	// records are created now. Required.
	Now time.Time
	// NextID hands out message IDs and delivery sequence numbers
	// (store.Store.NextID). Required.
	NextID func() uint64
	// HaveSession and HaveRetained report what the target store already
	// holds; such sessions and retained topics are left as they are (the
	// store's copy wins) and counted as skipped. Nil: nothing.
	HaveSession  func(clientID string) bool
	HaveRetained func(topic string) bool
	// Listeners names the Moat listener of each port Mosquitto listened
	// on: a retained message keeps its publisher (client ID, username,
	// listener) only when the port it arrived on is named here. Nil: no
	// retained message keeps its publisher.
	Listeners map[uint16]string
}

// Summary counts what Convert carried over and what it left behind.
type Summary struct {
	Sessions      int
	Subscriptions int
	Retained      int
	// RetainedUnknownPublisher counts the imported retained messages
	// whose publisher is unknown (no client ID in the file, or a port no
	// listener of ImportOptions.Listeners has): the broker refuses their
	// replay while check_retain_source is on.
	RetainedUnknownPublisher int
	Messages                 int // queued and in-flight messages owed to sessions
	// Skipped counts what was not imported, by reason.
	Skipped map[string]int
	// Notes are the parser's notes (chunks skipped, unknown usernames).
	Notes []string
}

// SkippedTotal is the number of records not imported.
func (s *Summary) SkippedTotal() int {
	n := 0
	for _, c := range s.Skipped {
		n += c
	}
	return n
}

// Reasons lists the skip reasons in a stable order.
func (s *Summary) Reasons() []string {
	r := make([]string, 0, len(s.Skipped))
	for k := range s.Skipped {
		r = append(r, k)
	}
	sort.Strings(r)
	return r
}

// Skip reasons.
const (
	skipSessionExists   = "session already in the store (kept as it is, with its subscriptions and messages)"
	skipSessionEnds     = "session with expiry interval 0 (it ends at disconnection)"
	skipNoClient        = "subscription or message of a client that has no session in the file"
	skipRetainedExists  = "retained topic already in the store (kept as it is)"
	skipNoMessage       = "reference to a message that is not in the file"
	skipSys             = "$SYS message (never stored)"
	skipExpired         = "message expired"
	skipQoS0            = "QoS 0 message (never stored)"
	skipInbound         = "inbound QoS 2 message awaiting PUBREL (Mosquitto delivers it only on PUBREL)"
	skipUnexpectedState = "outgoing message in an inbound state"
	skipPacketID        = "in-flight message with a packet identifier already in use"
)

// Convert turns a parsed file into store operations, to be committed
// together (one transaction: the import is all or nothing).
//
//   - Each persistent session becomes a Session with its subscriptions
//     (filter, QoS, No Local, Retain As Published, identifier; Mosquitto
//     keeps no Retain Handling). The owner is the session's username
//     ("user:NAME", verified) when the file names one; without a username
//     (or when the file's username is unreliable, see
//     Client.UsernameUnknown) the session has no owner. A finite expiry
//     keeps the deadline the file records when it lies ahead (by at most
//     the interval), else it starts again at the import (Mosquitto 2.0
//     leaves the deadline of a client connected at the save at 0 or at an
//     old value).
//   - Outgoing QoS 1 and 2 messages owed to a session become a Message
//     (stored once) and a Delivery each: queued, sent (the packet
//     identifier is kept and the resend carries DUP) or released (PUBREL
//     sent). Inbound QoS 2 messages awaiting PUBREL are skipped: Mosquitto
//     delivers them only when PUBREL arrives, Moat on PUBLISH.
//   - Retained messages keep topic, payload, QoS, expiry and the
//     properties the store represents (payload format, content type,
//     response topic, correlation data, user properties), charged to
//     "user:NAME" of the publisher when the file names one. Their
//     publisher is what Mosquitto's own check_retain_source judges: the
//     client ID, the username (anonymous without one) and the listener of
//     the port the message arrived on (ImportOptions.Listeners); without
//     a client ID or a known listener it is unknown.
//
// Expired messages, QoS 0 messages and $SYS messages are skipped and
// counted.
func Convert(db *DB, o ImportOptions) ([]store.Op, *Summary) {
	sum := &Summary{Skipped: map[string]int{}, Notes: db.Notes}
	skip := func(why string) { sum.Skipped[why]++ }
	now := o.Now
	var ops []store.Op

	subs := map[string][]store.Subscription{}
	v5 := map[string]bool{}
	for _, s := range db.Subscriptions {
		sub := store.Subscription{Filter: s.Filter, QoS: s.QoS, NoLocal: s.NoLocal, RetainAsPublished: s.RetainAsPublished, ID: s.Identifier}
		list := subs[s.ClientID]
		// A filter subscribed again replaces the earlier subscription.
		list = slices.DeleteFunc(list, func(o store.Subscription) bool { return o.Filter == s.Filter })
		subs[s.ClientID] = append(list, sub)
		if s.Identifier != 0 || s.NoLocal || s.RetainAsPublished {
			v5[s.ClientID] = true
		}
	}
	imported := map[string]bool{}
	seen := map[string]bool{}
	for _, c := range db.Clients {
		if seen[c.ID] {
			continue // a client written twice: its first record counts
		}
		seen[c.ID] = true
		switch {
		case o.HaveSession != nil && o.HaveSession(c.ID):
			skip(skipSessionExists)
			continue
		case c.SessionExpiryInterval == 0:
			skip(skipSessionEnds)
			continue
		}
		s := &store.Session{ClientID: c.ID, Created: now, Subscriptions: subs[c.ID], ProtocolVersion: 4}
		if c.Username != "" {
			s.Owner, s.OwnerVerified = "user:"+c.Username, true
		}
		if c.SessionExpiryInterval == neverExpires {
			s.ExpiryInterval = store.NeverExpires
		} else {
			// Only MQTT 5 sets a finite expiry interval.
			s.ProtocolVersion = 5
			s.ExpiryInterval = time.Duration(c.SessionExpiryInterval) * time.Second
			s.ExpiresAt = now.Add(s.ExpiryInterval)
			if at := time.Unix(c.SessionExpiryTime, 0); c.SessionExpiryTime > 0 && at.After(now) && at.Before(s.ExpiresAt) {
				s.ExpiresAt = at
			}
		}
		if v5[c.ID] {
			s.ProtocolVersion = 5
		}
		ops = append(ops, store.PutSession{Session: s})
		imported[c.ID] = true
		sum.Sessions++
		sum.Subscriptions += len(s.Subscriptions)
	}
	for _, s := range db.Subscriptions {
		if !seen[s.ClientID] {
			skip(skipNoClient)
		} else if !imported[s.ClientID] && o.HaveSession != nil && o.HaveSession(s.ClientID) {
			skip(skipSessionExists)
		}
	}

	msgIDs := map[uint64]uint64{}            // store ID → Moat message ID
	inFlight := map[string]map[uint16]bool{} // packet IDs in use per session
	for _, cm := range db.ClientMessages {
		m := db.Messages[cm.StoreID]
		var state store.DeliveryState
		var pid uint16
		switch {
		case !imported[cm.ClientID]:
			if !seen[cm.ClientID] {
				skip(skipNoClient)
			} else {
				skip(skipSessionExists)
			}
			continue
		case cm.Direction == In:
			skip(skipInbound)
			continue
		case m == nil:
			skip(skipNoMessage)
			continue
		case isSys(m.Topic):
			skip(skipSys)
			continue
		case cm.QoS == 0 || m.QoS == 0 || cm.State == StatePublishQoS0:
			skip(skipQoS0)
			continue
		case expired(m, now):
			skip(skipExpired)
			continue
		}
		switch cm.State {
		case StatePublishQoS1, StatePublishQoS2, StateQueued:
			state = store.Queued
		case StateWaitForPuback, StateWaitForPubrec:
			state, pid = store.Sent, cm.MID
		case StateResendPubrel, StateWaitForPubcomp:
			state, pid = store.Released, cm.MID
		default:
			skip(skipUnexpectedState)
			continue
		}
		if pid != 0 {
			if inFlight[cm.ClientID] == nil {
				inFlight[cm.ClientID] = map[uint16]bool{}
			}
			if inFlight[cm.ClientID][pid] {
				skip(skipPacketID)
				continue
			}
			inFlight[cm.ClientID][pid] = true
		}
		id, ok := msgIDs[cm.StoreID]
		if !ok {
			id = o.NextID()
			msgIDs[cm.StoreID] = id
			ops = append(ops, store.PutMessage{Message: &store.Message{ID: id, Topic: m.Topic, Payload: m.Payload,
				QoS: m.QoS, Retain: m.Retain, Props: storeProps(&m.Props), Expires: expiry(m), From: m.SourceID, Created: now}})
		}
		ops = append(ops, store.PutDelivery{Delivery: &store.Delivery{ClientID: cm.ClientID, Seq: o.NextID(), MsgID: id,
			QoS: cm.QoS, Retain: cm.Retain, SubIDs: cm.Props.SubscriptionIDs, State: state, PacketID: pid,
			Dup: cm.Dup || state != store.Queued}})
		sum.Messages++
	}

	retained := map[string]int{} // topic → index in ops (a later record replaces)
	for _, sid := range db.Retained {
		m := db.Messages[sid]
		switch {
		case m == nil:
			skip(skipNoMessage)
			continue
		case isSys(m.Topic):
			skip(skipSys)
			continue
		case expired(m, now):
			skip(skipExpired)
			continue
		case o.HaveRetained != nil && o.HaveRetained(m.Topic):
			skip(skipRetainedExists)
			continue
		}
		r := &store.Retained{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Props: storeProps(&m.Props),
			Expires: expiry(m), Created: now, Publisher: publisher(m, o.Listeners)}
		if m.SourceUsername != "" {
			r.Owner = "user:" + m.SourceUsername
		}
		if i, dup := retained[m.Topic]; dup {
			if ops[i].(store.PutRetained).Retained.Publisher == nil {
				sum.RetainedUnknownPublisher--
			}
			ops[i] = store.PutRetained{Retained: r}
		} else {
			retained[m.Topic] = len(ops)
			ops = append(ops, store.PutRetained{Retained: r})
			sum.Retained++
		}
		if r.Publisher == nil {
			sum.RetainedUnknownPublisher++
		}
	}
	return ops, sum
}

// publisher is the publisher of a retained message as Mosquitto saved
// it, nil when the file names no client ID or the port's listener is not
// known. Mosquitto keeps no certificate or address of it: rules on those
// do not match an imported publisher.
func publisher(m *Message, listeners map[uint16]string) *store.Publisher {
	ln, ok := listeners[m.SourcePort]
	if m.SourceID == "" || !ok || m.SourcePort == 0 {
		return nil
	}
	return &store.Publisher{Listener: ln, ClientID: m.SourceID, Username: m.SourceUsername, Anonymous: m.SourceUsername == ""}
}

func isSys(topic string) bool { return topic == "$SYS" || strings.HasPrefix(topic, "$SYS/") }

func expired(m *Message, now time.Time) bool {
	return m.ExpiryTime > 0 && !time.Unix(m.ExpiryTime, 0).After(now)
}

func expiry(m *Message) time.Time {
	if m.ExpiryTime == 0 {
		return time.Time{}
	}
	return time.Unix(m.ExpiryTime, 0)
}

// storeProps keeps the properties the store represents; nil for none.
// The topic alias belongs to a connection and the message expiry is kept
// as the message's deadline.
func storeProps(p *Properties) *store.Properties {
	sp := &store.Properties{ContentType: p.ContentType, ResponseTopic: p.ResponseTopic, CorrelationData: p.CorrelationData}
	if p.PayloadFormat != nil {
		sp.HasPayloadFormat, sp.PayloadFormat = true, *p.PayloadFormat
	}
	for _, u := range p.User {
		sp.User = append(sp.User, store.UserProperty{Key: u[0], Value: u[1]})
	}
	if !sp.HasPayloadFormat && sp.ContentType == "" && sp.ResponseTopic == "" && sp.CorrelationData == nil && len(sp.User) == 0 {
		return nil
	}
	return sp
}

// String is a one-line summary.
func (s *Summary) String() string {
	return fmt.Sprintf("%d sessions, %d subscriptions, %d retained messages, %d queued or in-flight messages; %d skipped",
		s.Sessions, s.Subscriptions, s.Retained, s.Messages, s.SkippedTotal())
}
