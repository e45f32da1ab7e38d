package broker

import (
	"cmp"
	"fmt"
	"strings"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/topic"
)

// handlePublish processes an inbound PUBLISH: topic alias, checks,
// authorization, routing and the acknowledgement flow.
func (c *conn) handlePublish(p *packet.Publish) bool {
	s := c.srv
	c.ctr.publishIn(p.QoS, len(p.Payload))

	if c.version == packet.V5 {
		if len(p.Properties.SubscriptionIDs) > 0 {
			// [MQTT-3.3.4-6]
			return c.protocolError(packet.ProtocolError, "subscription identifier in PUBLISH from a client")
		}
		if p.Properties.Has(packet.PropTopicAlias) {
			a := p.Properties.TopicAlias
			if a == 0 || a > c.aliasMaxIn {
				// [MQTT-3.3.2-8] [MQTT-3.3.2-9]
				return c.protocolError(packet.TopicAliasInvalid, "topic alias out of range")
			}
			if p.Topic == "" {
				t, ok := c.aliasesIn[a]
				if !ok {
					return c.protocolError(packet.ProtocolError, "unknown topic alias")
				}
				p.Topic = t
			} else {
				if c.aliasesIn == nil {
					c.aliasesIn = make(map[uint16]string)
				}
				c.aliasesIn[a] = p.Topic
			}
			p.Properties.Unmark(packet.PropTopicAlias)
		} else if p.Topic == "" {
			return c.protocolError(packet.ProtocolError, "empty topic without topic alias")
		}
	}
	if lim := s.limits(); len(p.Topic) > lim.MaxTopicLength {
		return c.overLimit(LimitTopicLength, packet.TopicNameInvalid, fmt.Sprintf("topic is longer than %d bytes", lim.MaxTopicLength))
	} else if tooDeep(p.Topic, lim.MaxTopicLevels) {
		return c.overLimit(LimitTopicLevels, packet.TopicNameInvalid, fmt.Sprintf("topic has more than %d levels", lim.MaxTopicLevels))
	}
	if p.QoS > c.lst.maxQoS {
		// [MQTT-3.2.2-11]
		return c.protocolError(packet.QoSNotSupported, fmt.Sprintf("QoS %d exceeds the maximum QoS %d", p.QoS, c.lst.maxQoS))
	}
	if p.Retain && s.cfg.RetainDisabled {
		// Retain Available 0 was announced [MQTT 5.0 §3.2.2.3.5].
		return c.protocolError(packet.RetainNotSupported, "retained messages are not available")
	}
	if lim := s.limits().MessageSizeLimit; lim > 0 && uint32(len(p.Payload)) > lim {
		if c.version == packet.V5 {
			return c.overLimit(LimitMessageSize, packet.PacketTooLarge, "payload exceeds the message size limit")
		}
		c.log.Info("broker: payload exceeds message_size_limit; dropped", "topic", p.Topic, "size", len(p.Payload))
		defer c.limited(LimitMessageSize, fmt.Sprintf("payload of %d bytes over the message size limit; dropped", len(p.Payload)))
		return c.ackPublish(p, packet.Success)
	}
	if err := packet.CheckPayloadFormat(&p.Properties, p.Payload); err != nil && c.version == packet.V5 {
		// [MQTT-3.3.2-4]: the receiver may check a payload marked UTF-8.
		return c.protocolError(packet.PayloadFormatInvalid, "payload is not valid UTF-8 although marked so")
	}

	// QoS 2 duplicate: acknowledged again, not routed again [MQTT-4.3.3-9].
	if p.QoS == 2 {
		c.sess.mu.Lock()
		_, dup := c.sess.inboundQoS2[p.PacketID]
		if !dup && len(c.sess.inboundQoS2) >= int(s.cfg.ReceiveMaximum) {
			c.sess.mu.Unlock()
			// The client broke its send quota [MQTT 5.0 §4.9].
			return c.overLimit(LimitReceiveMaximum, packet.ReceiveMaximumExceeded, "receive maximum exceeded")
		}
		if !dup {
			c.sess.noteInboundQoS2(p.PacketID)
		}
		c.sess.mu.Unlock()
		if dup {
			if s.persist != nil {
				return c.persistPublish(p, packet.Success, &pbatch{}, false)
			}
			c.send(shortAck{typ: packet.PUBREC, pid: p.PacketID})
			return true
		}
	}

	code := packet.Success
	switch {
	case strings.HasPrefix(p.Topic, "$SYS"):
		code = packet.NotAuthorized
		c.log.Info("broker: publish to $SYS refused", "topic", p.Topic)
	default:
		// p.Topic is the full topic name: any alias was resolved above.
		if d := c.authorizePublish(p.Topic, p.QoS, p.Retain); !d.Allow {
			code = packet.NotAuthorized
			s.denied(&c.client, ActionPublish, p.Topic, d, "publish")
			v := c.obs.Denied(&c.client, ActionPublish, p.Topic, d.Reason)
			if c.version != packet.V5 && s.cfg.DisconnectDeniedPublishV3 {
				if p.QoS == 2 {
					c.sess.mu.Lock()
					delete(c.sess.inboundQoS2, p.PacketID)
					c.sess.mu.Unlock()
				}
				if !c.obsVerdict(v) {
					return false
				}
				c.kill(0, "publish not authorized")
				return false
			}
			// A disconnect follows the acknowledgement (and the QoS 2 cleanup).
			defer c.obsVerdict(v)
		}
	}
	if code == packet.Success && p.QoS > 0 && !c.caughtUp && s.clusterDurable {
		// A connection's first QoS 1/2 message waits until this node
		// routed what the cluster's stream held (PublishGate).
		c.caughtUp = true
		if g, ok := s.cluster.(PublishGate); ok {
			g.AwaitCaughtUp(c.killed, c.keepAlive, p.Topic, c.client.ClientID)
			// The message, and those read behind it meanwhile, count as
			// arriving now, when they can first be routed: a session
			// moving here finds in the record of recent messages what
			// arrived after its claim began (FindLocal), and one that
			// began during the wait would otherwise pass over them,
			// though no node had routed them to it.
			c.gatedAt = time.Now().UnixNano()
		}
	}
	var msg *Message
	var b *pbatch // durable changes the acknowledgement waits for
	if s.persist != nil && p.QoS > 0 {
		b = &pbatch{}
	}
	if code == packet.Success {
		msg = newMessage(p, c.client.ClientID, s.cfg.Now())
		msg.arrived = max(c.arrivalTime(), c.gatedAt)
		if b != nil {
			msg.id = s.persist.NewID()
		}
		if msg.Retain {
			// Named in the record of recent messages before the store
			// shows it to a subscription (fence.go).
			s.recent.reserve(c.recentShard, msg)
			if c.retainSnap == nil {
				c.retainSnap = c.client.publisherSnapshot()
			}
			msg.Publisher = c.retainSnap
			if s.retainFrom(msg, &c.client) {
				if s.persist != nil {
					c.persistRetained(msg, b)
				}
			} else {
				// Reported once the publication is answered.
				defer c.limited(LimitRetained, "retained message on "+clipTopic(p.Topic)+" refused by a retained limit")
				if c.version == packet.V5 && p.QoS > 0 {
					// A v5 client can be told: the publication is refused
					// as a whole. Others (v3, QoS 0) have no way to learn
					// of it, so their message is still delivered, only
					// not retained.
					code = packet.QuotaExceeded
				}
			}
		}
	}
	// routing: the publication is counted from before it is matched
	// until it is handed to the Persistence, which forwards it to the
	// other nodes (WaitRouted).
	routing, epoch := false, uint64(0)
	if code == packet.Success {
		if b != nil && s.clusterDurable {
			routing, epoch = true, s.routes.begin(c.recentShard)
		}
		// Recorded before it is matched, for subscriptions that arrived
		// before it but are installed after (fence.go).
		s.recent.add(c.recentShard, msg)
		c.pub.self = c.sess
		n := s.deliverFrom(msg, b, c)
		s.clusterForwardIn(msg, b)
		if n == 0 && s.cluster == nil {
			code = packet.NoMatchingSubscribers
			defer c.obsVerdict(c.obs.Undeliverable(&c.client, p.Topic))
		}
	} else if p.QoS == 2 {
		c.sess.mu.Lock()
		delete(c.sess.inboundQoS2, p.PacketID)
		c.sess.mu.Unlock()
	}
	if b != nil {
		ok := c.persistPublish(p, code, b, p.QoS == 2 && code == packet.Success && s.persisting(c.sess))
		if routing {
			s.routes.end(c.recentShard, epoch)
		}
		return ok
	}
	return c.ackPublish(p, code)
}

func (c *conn) ackPublish(p *packet.Publish, code packet.ReasonCode) bool {
	if c.version != packet.V5 {
		code = packet.Success
	}
	switch p.QoS {
	case 1:
		c.send(shortAck{typ: packet.PUBACK, code: code, pid: p.PacketID})
	case 2:
		c.send(shortAck{typ: packet.PUBREC, code: code, pid: p.PacketID})
	}
	return true
}

// handleSubscribe processes SUBSCRIBE: SUBACK first, then the retained
// messages of each new subscription.
func (c *conn) handleSubscribe(p *packet.Subscribe) {
	s := c.srv
	codes := make([]packet.ReasonCode, len(p.Subscriptions))
	var subID uint32
	if c.version == packet.V5 && len(p.Properties.SubscriptionIDs) > 0 {
		subID = p.Properties.SubscriptionIDs[0]
	}
	type retainedReq struct {
		filter string
		sub    topic.Subscription
	}
	var sendRetained []retainedReq
	var problem string  // Reason String for the first refusal
	var verdict Verdict // the Observer's, on a denial
	// Messages that arrived after this SUBSCRIBE but were routed before
	// its subscriptions are in place are delivered too (fence.go).
	fence := c.beginSubscribe()
	defer fence.finish()
	lim := s.limits()
	for i, req := range p.Subscriptions {
		if len(req.Filter) > lim.MaxTopicLength {
			c.log.Info("broker: subscription refused: filter too long", "length", len(req.Filter), "max", lim.MaxTopicLength)
			codes[i] = packet.TopicFilterInvalid
			problem = cmp.Or(problem, fmt.Sprintf("topic filter longer than %d bytes", lim.MaxTopicLength))
			if v := c.limitVerdict(LimitTopicLength, fmt.Sprintf("topic filter of %d bytes", len(req.Filter))); v.Disconnect {
				verdict = v
			}
			continue
		}
		group, filter, err := packet.SplitShared(req.Filter)
		if err != nil || tooDeep(filter, lim.MaxTopicLevels) {
			codes[i] = packet.TopicFilterInvalid
			if err == nil {
				if v := c.limitVerdict(LimitTopicLevels, fmt.Sprintf("topic filter of more than %d levels", s.cfg.MaxTopicLevels)); v.Disconnect {
					verdict = v
				}
			}
			continue
		}
		// Judged on the filter (a shared subscription's without its
		// $share/GROUP/ prefix): refused when no topic it matches can
		// ever be read. Each delivered message is checked again.
		if d := s.authorize(&c.client, ActionSubscribe, filter, req.QoS, false, group); !d.Allow {
			s.denied(&c.client, ActionSubscribe, req.Filter, d, "subscription")
			if v := c.obs.Denied(&c.client, ActionSubscribe, filter, d.Reason); v.Disconnect {
				verdict = v
			}
			codes[i] = packet.NotAuthorized
			problem = cmp.Or(problem, "subscription not authorized")
			continue
		}
		sub := topic.Subscription{
			ClientID:          c.client.ClientID,
			Filter:            filter,
			Group:             group,
			QoS:               min(req.QoS, c.lst.maxQoS),
			NoLocal:           req.NoLocal,
			RetainAsPublished: req.RetainAsPublished,
			RetainHandling:    req.RetainHandling,
			ID:                subID,
			Owner:             c.sess,
		}
		fence.beforeInstall()
		existed := s.index.Subscribe(sub)
		if !existed {
			// Every subscription costs index memory: a client cannot
			// add them without bound, in number or in bytes.
			n, b := c.sess.subs.Add(1), c.sess.subBytes.Add(int64(len(req.Filter)))
			if lim := s.limits(); n > int64(lim.MaxSubscriptions) || b > int64(lim.MaxSubscriptionBytes) {
				s.index.Unsubscribe(sub.ClientID, sub.Group, sub.Filter)
				c.sess.subs.Add(-1)
				c.sess.subBytes.Add(-int64(len(req.Filter)))
				s.stats.subsRefused.Add(1)
				c.log.Info("broker: subscription refused: too many subscriptions", "filter", req.Filter,
					"max", lim.MaxSubscriptions, "max_bytes", lim.MaxSubscriptionBytes)
				codes[i] = packet.QuotaExceeded
				problem = cmp.Or(problem, fmt.Sprintf("at most %d subscriptions or %d bytes of filters per session", lim.MaxSubscriptions, lim.MaxSubscriptionBytes))
				if v := c.limitVerdict(LimitSubscriptions, fmt.Sprintf("over %d subscriptions or %d bytes of filters", lim.MaxSubscriptions, lim.MaxSubscriptionBytes)); v.Disconnect {
					verdict = v
				}
				continue
			}
		}
		s.clusterSubscribed(sub, existed)
		fence.installed(sub, existed)
		codes[i] = packet.ReasonCode(sub.QoS)
		if s.persisting(c.sess) {
			c.sess.mu.Lock()
			c.sess.subList[req.Filter] = StoredSubscription{Filter: req.Filter, QoS: sub.QoS, NoLocal: sub.NoLocal,
				RetainAsPublished: sub.RetainAsPublished, RetainHandling: sub.RetainHandling, ID: sub.ID}
			c.sess.mu.Unlock()
		}
		// [MQTT-3.3.1-9..11] retained messages on subscribe; none for a
		// shared subscription [MQTT 5.0 §4.8.2].
		if group == "" && !s.cfg.RetainDisabled && (req.RetainHandling == 0 || (req.RetainHandling == 1 && !existed)) {
			sendRetained = append(sendRetained, retainedReq{filter, sub})
		}
	}
	if c.version != packet.V5 {
		for i, code := range codes {
			if code.IsError() {
				codes[i] = packet.V3SubackFailure
			}
		}
	}
	ack := &packet.Suback{PacketID: p.PacketID, ReasonCodes: codes}
	if problem != "" && c.version == packet.V5 && c.problemInfo {
		// The writer drops it if the SUBACK would exceed the client's
		// Maximum Packet Size (encodeAck).
		ack.Properties.SetReasonString(problem)
	}
	fence.scan()
	if c.persistSession() != nil {
		return
	}
	c.send(ack)
	if !c.obsVerdict(verdict) {
		return
	}
	now := s.cfg.Now()
	for _, r := range sendRetained {
		s.cfg.Retained.Match(r.filter, func(m *Message) bool {
			if m.expired(now) || fence.retainedDup(m) {
				return true
			}
			if d := s.authorize(&c.client, ActionReceive, m.Topic, m.QoS, true, ""); !d.Allow {
				s.denied(&c.client, ActionReceive, m.Topic, d, "retained message")
				return true
			}
			if d, ok := s.retainSourceAllowed(m); !ok {
				// Logged under the subscriber's connection, whose
				// denials are rate-limited.
				s.denied(&c.client, ActionReceive, m.Topic, d, "retained message")
				return true
			}
			d := &delivery{msg: m, qos: min(m.QoS, r.sub.QoS), retain: true}
			if r.sub.ID != 0 {
				d.subIDs = []uint32{r.sub.ID}
			}
			c.sess.deliver(s, d, nil, nil)
			return true
		})
	}
}

func (c *conn) handleUnsubscribe(p *packet.Unsubscribe) {
	s := c.srv
	codes := make([]packet.ReasonCode, len(p.Filters))
	for i, f := range p.Filters {
		group, filter, err := packet.SplitShared(f)
		if err != nil {
			codes[i] = packet.TopicFilterInvalid
			continue
		}
		if !s.index.Unsubscribe(c.client.ClientID, group, filter) {
			codes[i] = packet.NoSubscriptionExisted
		} else {
			s.clusterUnsubscribed(c.client.ClientID, group, filter)
			c.fenceUnsubscribed(group, filter)
			c.sess.subs.Add(-1)
			c.sess.subBytes.Add(-int64(len(f)))
			if s.persisting(c.sess) {
				c.sess.mu.Lock()
				delete(c.sess.subList, f)
				c.sess.mu.Unlock()
			}
		}
	}
	if c.persistSession() != nil {
		return
	}
	if c.version != packet.V5 {
		codes = nil
	}
	c.send(&packet.Unsuback{PacketID: p.PacketID, ReasonCodes: codes})
}

// tooDeep reports whether topic (a name or filter) has more than max
// levels.
func tooDeep(topic string, max int) bool {
	if len(topic) < max {
		return false // fewer bytes than levels allowed
	}
	return strings.Count(topic, "/") >= max
}
