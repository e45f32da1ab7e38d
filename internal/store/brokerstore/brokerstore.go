// Package brokerstore implements the broker's Persistence with the
// embedded, encrypted store: it converts the broker's changes into store
// operations and what the store recovered into the broker's types. See
// docs/design/store.md, "The broker side".
package brokerstore

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/store"
)

// Persistence is a broker.Persistence backed by a *store.Store. The
// caller opens and closes the store; Persistence only uses it.
type Persistence struct {
	st *store.Store
}

var _ broker.Persistence = (*Persistence)(nil)

// New returns the broker's Persistence over st. Recover must be called
// (broker.New does) before st is used by other goroutines.
func New(st *store.Store) *Persistence { return &Persistence{st: st} }

// NewID implements broker.Persistence.
func (p *Persistence) NewID() uint64 { return p.st.NextID() }

// Persist implements broker.Persistence: the changes are one CommitAsync,
// reported in submission order on the store's committer.
func (p *Persistence) Persist(changes []broker.Change, done func(error)) {
	ops := make([]store.Op, 0, len(changes))
	for i := range changes {
		op, err := toOp(&changes[i])
		if err != nil {
			done(err)
			return
		}
		ops = append(ops, op)
	}
	p.st.CommitAsync(done, ops...)
}

func toOp(c *broker.Change) (store.Op, error) {
	switch c.Kind {
	case broker.ChangePutSession:
		return store.PutSession{Session: toSession(c.Session)}, nil
	case broker.ChangeDeleteSession:
		return store.DeleteSession{ClientID: c.ClientID}, nil
	case broker.ChangePutMessage:
		m := c.Message
		return store.PutMessage{Message: &store.Message{ID: c.MsgID, Topic: m.Topic, Payload: m.Payload, QoS: m.QoS,
			Retain: m.Retain, Props: toProps(m.Props), Expires: m.Expires, From: m.From, Created: m.Created}}, nil
	case broker.ChangePutDelivery:
		d := c.Delivery
		return store.PutDelivery{Delivery: &store.Delivery{ClientID: d.ClientID, Seq: d.Seq, MsgID: d.MsgID, QoS: d.QoS,
			Retain: d.Retain, SubIDs: d.SubIDs, State: store.DeliveryState(d.State), PacketID: d.PacketID, Dup: d.Dup,
			ShareGroup: d.ShareGroup, ShareFilter: d.ShareFilter}}, nil
	case broker.ChangeDeleteDelivery:
		return store.DeleteDelivery{ClientID: c.ClientID, Seq: c.Seq}, nil
	case broker.ChangePutInbound:
		return store.PutInbound{ClientID: c.ClientID, PacketID: c.PacketID}, nil
	case broker.ChangeDeleteInbound:
		return store.DeleteInbound{ClientID: c.ClientID, PacketID: c.PacketID}, nil
	case broker.ChangePutRetained:
		m := c.Message
		return store.PutRetained{Retained: &store.Retained{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS,
			Props: toProps(m.Props), Expires: m.Expires, Owner: c.Owner, Created: m.Created,
			Publisher: toPublisher(c.Publisher)}}, nil
	case broker.ChangeDeleteRetained:
		return store.DeleteRetained{Topic: c.Topic}, nil
	case broker.ChangePutWill:
		w, m := c.Will, c.Will.Message
		var exp time.Duration
		if !m.Expires.IsZero() {
			exp = max(m.Expires.Sub(m.Created), time.Second)
		}
		return store.PutWill{Will: &store.Will{ClientID: w.ClientID, FireAt: w.FireAt, Owner: w.Owner, Topic: m.Topic,
			Payload: m.Payload, QoS: m.QoS, Retain: m.Retain, Props: toProps(m.Props), ExpiryInterval: exp,
			Publisher: toPublisher(w.Publisher)}}, nil
	case broker.ChangeDeleteWill:
		return store.DeleteWill{ClientID: c.ClientID}, nil
	}
	return nil, fmt.Errorf("brokerstore: unknown change kind %d", c.Kind)
}

func toPublisher(p *broker.StoredPublisher) *store.Publisher {
	if p == nil {
		return nil
	}
	out := &store.Publisher{Listener: p.Listener, ProtocolVersion: byte(p.Version), ClientID: p.ClientID,
		Username: p.Username, Anonymous: p.Anonymous, Groups: p.Groups, Publish: p.Publish, Subscribe: p.Subscribe,
		Attributes: p.Attributes, AuthBackend: p.AuthBackend, AuthExpires: p.AuthExpires}
	if p.Addr.IsValid() {
		out.Addr = p.Addr.String()
	}
	for _, c := range p.Certs {
		out.Certs = append(out.Certs, c.Raw)
	}
	return out
}

// publishers converts the store's publishers, each once (the records of
// one publisher share it).
type publishers map[*store.Publisher]*broker.StoredPublisher

func (ps publishers) get(p *store.Publisher) *broker.StoredPublisher {
	if p == nil {
		return nil
	}
	if bp, ok := ps[p]; ok {
		return bp
	}
	bp := fromPublisher(p)
	ps[p] = bp
	return bp
}

// fromPublisher converts a stored publisher; a record that does not
// convert (a certificate that no longer parses, an address that does not)
// gives nil, an unknown publisher, which the broker treats as refused
// rather than judging a publisher with part of its identity missing.
func fromPublisher(p *store.Publisher) *broker.StoredPublisher {
	out := &broker.StoredPublisher{Listener: p.Listener, Version: packet.Version(p.ProtocolVersion), ClientID: p.ClientID,
		Username: p.Username, Anonymous: p.Anonymous, Groups: p.Groups, Publish: p.Publish, Subscribe: p.Subscribe,
		Attributes: p.Attributes, AuthBackend: p.AuthBackend, AuthExpires: p.AuthExpires}
	if p.Addr != "" {
		a, err := netip.ParseAddr(p.Addr)
		if err != nil {
			return nil
		}
		out.Addr = a
	}
	for _, der := range p.Certs {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil
		}
		out.Certs = append(out.Certs, c)
	}
	return out
}

func toSession(s *broker.StoredSession) *store.Session {
	out := &store.Session{ClientID: s.ClientID, Owner: s.Owner, OwnerVerified: s.OwnerVerified,
		ProtocolVersion: s.Version, ExpiryInterval: s.Expiry, ExpiresAt: s.ExpiresAt, Created: s.Created,
		Subscriptions: make([]store.Subscription, len(s.Subscriptions))}
	if s.Expiry < 0 {
		out.ExpiryInterval = store.NeverExpires
	}
	for i, sub := range s.Subscriptions {
		out.Subscriptions[i] = store.Subscription{Filter: sub.Filter, QoS: sub.QoS, NoLocal: sub.NoLocal,
			RetainAsPublished: sub.RetainAsPublished, RetainHandling: sub.RetainHandling, ID: sub.ID}
	}
	return out
}

func toProps(p *packet.Properties) *store.Properties {
	if p == nil {
		return nil
	}
	out := &store.Properties{HasPayloadFormat: p.Has(packet.PropPayloadFormat), PayloadFormat: p.PayloadFormat,
		ContentType: p.ContentType, ResponseTopic: p.ResponseTopic, CorrelationData: p.CorrelationData}
	for _, u := range p.User {
		out.User = append(out.User, store.UserProperty{Key: u.Key, Value: u.Value})
	}
	return out
}

func fromProps(p *store.Properties) *packet.Properties {
	if p == nil {
		return nil
	}
	out := &packet.Properties{}
	if p.HasPayloadFormat {
		out.SetPayloadFormat(p.PayloadFormat)
	}
	if p.ContentType != "" {
		out.SetContentType(p.ContentType)
	}
	if p.ResponseTopic != "" {
		out.SetResponseTopic(p.ResponseTopic)
	}
	if p.CorrelationData != nil {
		out.SetCorrelationData(p.CorrelationData)
	}
	for _, u := range p.User {
		out.User = append(out.User, packet.UserProperty{Key: u.Key, Value: u.Value})
	}
	return out
}

// Recover implements broker.Persistence with what the store read at Open.
func (p *Persistence) Recover() (*broker.Recovered, error) {
	st := p.st.Recovered()
	if st == nil {
		return nil, nil
	}
	r := &broker.Recovered{Messages: make(map[uint64]*broker.Message, len(st.Messages))}
	for id, m := range st.Messages {
		r.Messages[id] = &broker.Message{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain,
			Props: fromProps(m.Props), Expires: m.Expires, From: m.From, Created: m.Created}
	}
	for _, ss := range st.Sessions {
		s := ss.Session
		if s == nil {
			continue
		}
		bs := &broker.StoredSession{ClientID: s.ClientID, Owner: s.Owner, OwnerVerified: s.OwnerVerified,
			Version: s.ProtocolVersion, Expiry: s.ExpiryInterval, ExpiresAt: s.ExpiresAt, Created: s.Created}
		for _, sub := range s.Subscriptions {
			bs.Subscriptions = append(bs.Subscriptions, broker.StoredSubscription{Filter: sub.Filter, QoS: sub.QoS,
				NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished, RetainHandling: sub.RetainHandling, ID: sub.ID})
		}
		rs := broker.RecoveredSession{Session: bs, Inbound: ss.Inbound}
		for _, d := range ss.Deliveries {
			rs.Deliveries = append(rs.Deliveries, &broker.StoredDelivery{ClientID: d.ClientID, Seq: d.Seq, MsgID: d.MsgID,
				QoS: d.QoS, Retain: d.Retain, SubIDs: d.SubIDs, State: broker.DeliveryState(d.State), PacketID: d.PacketID,
				Dup: d.Dup, ShareGroup: d.ShareGroup, ShareFilter: d.ShareFilter})
		}
		r.Sessions = append(r.Sessions, rs)
	}
	pubs := publishers{}
	for _, m := range st.Retained {
		r.Retained = append(r.Retained, broker.RecoveredRetained{Owner: m.Owner, Publisher: pubs.get(m.Publisher),
			Message: &broker.Message{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: true, Props: fromProps(m.Props),
				Expires: m.Expires, Created: m.Created}})
	}
	for _, w := range st.Wills {
		m := &broker.Message{Topic: w.Topic, Payload: w.Payload, QoS: w.QoS, Retain: w.Retain, Props: fromProps(w.Props),
			From: w.ClientID, Created: w.FireAt}
		if w.ExpiryInterval > 0 {
			m.Expires = w.FireAt.Add(w.ExpiryInterval)
		}
		r.Wills = append(r.Wills, &broker.StoredWill{ClientID: w.ClientID, FireAt: w.FireAt, Owner: w.Owner, Message: m,
			Publisher: pubs.get(w.Publisher)})
	}
	return r, nil
}
