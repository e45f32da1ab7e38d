package broker

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// stats are the server's counters, updated with atomics on the hot path.
type stats struct {
	clientsConnected   atomic.Int64
	clientsMax         atomic.Int64
	clientsTotal       atomic.Int64
	connectRefused     atomic.Int64
	connRejected       atomic.Int64 // over a connection cap
	acceptRefused      atomic.Int64 // refused by the Observer at accept
	tlsFailures        atomic.Int64
	protocolErrors     atomic.Int64
	panics             atomic.Int64
	revokedDisconnects atomic.Int64

	authzDenied         atomic.Int64
	subsRevoked         atomic.Int64
	droppedUnauthorized atomic.Int64

	packetsIn   atomic.Int64
	messagesIn  atomic.Int64
	messagesOut atomic.Int64
	bytesIn     atomic.Int64
	bytesOut    atomic.Int64

	queued           atomic.Int64 // messages waiting in session queues
	droppedQueueFull atomic.Int64 // QoS 1/2 and queued QoS 0 lost to a full queue
	droppedQoS0      atomic.Int64 // QoS 0 for offline sessions (not queued by design)
	droppedSlow      atomic.Int64 // QoS 0 to a client whose backlog is full
	droppedOversize  atomic.Int64 // over the client's Maximum Packet Size
	expired          atomic.Int64 // expired before delivery

	pushbacks       atomic.Int64 // times a publisher was held back
	held            atomic.Int64 // publishers held back now
	slowSubscribers atomic.Int64 // times a subscriber was found slow

	subsRefused   atomic.Int64 // subscriptions over MaxSubscriptions or MaxSubscriptionBytes
	preAuthTooBig atomic.Int64 // CONNECTs over PreAuthMaxPacketSize
	persistFailed atomic.Int64 // Persistence commits that failed
}

func (st *stats) connected(s *Server) {
	n := st.clientsConnected.Add(1)
	st.clientsTotal.Add(1)
	for {
		m := st.clientsMax.Load()
		if n <= m || st.clientsMax.CompareAndSwap(m, n) {
			break
		}
	}
}

func (st *stats) disconnected() { st.clientsConnected.Add(-1) }

// Stats is a snapshot of the server's counters.
type Stats struct {
	Uptime             time.Duration
	ClientsConnected   int64
	ClientsMaximum     int64
	ClientsTotal       int64 // connections accepted since start
	Sessions           int64 // live and offline sessions
	ConnectRefused     int64
	ConnectionsOverCap int64
	AcceptRefused      int64 // sockets the Observer refused at accept (rate, ban)
	TLSFailures        int64
	ProtocolErrors     int64
	Panics             int64
	RevokedDisconnects int64
	MessagesReceived   int64
	MessagesSent       int64
	BytesReceived      int64
	BytesSent          int64
	Subscriptions      int64
	Retained           int64
	Queued             int64
	DroppedQueueFull   int64
	DroppedQoS0Offline int64
	DroppedSlowClient  int64
	DroppedOversize    int64
	Expired            int64

	// Overload control (docs/design/broker.md): Pushbacks counts the
	// times a publisher was held back because a subscriber's backlog was
	// over its mark (or its queue full under QueueBlock), PublishersHeld
	// the publishers held back now, SlowSubscribers the times a subscriber
	// was found too slow to hold its publishers back any longer.
	Pushbacks       int64
	PublishersHeld  int64
	SlowSubscribers int64

	// RetainedBytes is what the retained messages stored from clients are
	// charged against MaxRetainedBytes; RetainedRefused counts retained
	// messages refused by a retained limit.
	RetainedBytes   int64
	RetainedRefused int64
	// SubscriptionsRefused counts subscriptions refused by
	// MaxSubscriptions or MaxSubscriptionBytes.
	SubscriptionsRefused int64
	// PreAuthTooLarge counts connections closed because their CONNECT
	// was larger than PreAuthMaxPacketSize.
	PreAuthTooLarge int64
	// ReadBudgetInUse and ReadBudgetPeak are the bytes of packet bodies
	// reserved from the ReadBudget now and at most so far;
	// ReadBudgetWaits counts reads that had to wait for it, and
	// ReadBudgetWaiting those waiting now.
	ReadBudgetInUse   int64
	ReadBudgetPeak    int64
	ReadBudgetWaits   int64
	ReadBudgetWaiting int64
	// AuthzDenied counts requests the Authorizer refused (publish,
	// subscribe, delivery); SubscriptionsRevoked and DroppedUnauthorized
	// count the subscriptions removed and the queued or in-flight messages
	// dropped by Reevaluate and at delivery because access was lost.
	AuthzDenied          int64
	SubscriptionsRevoked int64
	DroppedUnauthorized  int64
	// PersistFailures counts changes the Persistence could not store;
	// StoreQuarantines is Config.StoreQuarantines (stores moved aside as
	// corrupt at start).
	PersistFailures  int64
	StoreQuarantines int64
}

// Stats returns a snapshot of the server's counters. Safe for concurrent
// use.
func (s *Server) Stats() Stats {
	st := &s.stats
	var sessions int64
	s.sessions.Range(func(_, _ any) bool { sessions++; return true })
	return Stats{
		Uptime:             s.cfg.Now().Sub(s.start),
		ClientsConnected:   st.clientsConnected.Load(),
		ClientsMaximum:     st.clientsMax.Load(),
		ClientsTotal:       st.clientsTotal.Load(),
		Sessions:           sessions,
		ConnectRefused:     st.connectRefused.Load(),
		ConnectionsOverCap: st.connRejected.Load(),
		AcceptRefused:      st.acceptRefused.Load(),
		TLSFailures:        st.tlsFailures.Load(),
		ProtocolErrors:     st.protocolErrors.Load(),
		Panics:             st.panics.Load(),
		RevokedDisconnects: st.revokedDisconnects.Load(),
		MessagesReceived:   st.messagesIn.Load(),
		MessagesSent:       st.messagesOut.Load(),
		BytesReceived:      st.bytesIn.Load(),
		BytesSent:          st.bytesOut.Load(),
		Subscriptions:      int64(s.index.Count()),
		Retained:           int64(s.cfg.Retained.Len()),
		Queued:             st.queued.Load(),
		DroppedQueueFull:   st.droppedQueueFull.Load(),
		DroppedQoS0Offline: st.droppedQoS0.Load(),
		DroppedSlowClient:  st.droppedSlow.Load(),
		DroppedOversize:    st.droppedOversize.Load(),
		Expired:            st.expired.Load(),
		Pushbacks:          st.pushbacks.Load(),
		PublishersHeld:     st.held.Load(),
		SlowSubscribers:    st.slowSubscribers.Load(),

		RetainedBytes:        s.retained.usage().bytes,
		RetainedRefused:      s.retained.refused.Load(),
		SubscriptionsRefused: st.subsRefused.Load(),
		PreAuthTooLarge:      st.preAuthTooBig.Load(),
		ReadBudgetInUse:      s.readBudget.inUse.Load(),
		ReadBudgetPeak:       s.readBudget.maxUsed.Load(),
		ReadBudgetWaits:      s.readBudget.waits.Load(),
		ReadBudgetWaiting:    int64(s.readBudget.waiting()),
		AuthzDenied:          st.authzDenied.Load(),
		SubscriptionsRevoked: st.subsRevoked.Load(),
		DroppedUnauthorized:  st.droppedUnauthorized.Load(),
		PersistFailures:      st.persistFailed.Load(),
		StoreQuarantines:     int64(s.cfg.StoreQuarantines),
	}
}

// sysLoop publishes $SYS topics every SysInterval.
func (s *Server) sysLoop() {
	t := time.NewTicker(s.cfg.SysInterval)
	defer t.Stop()
	s.publishSys()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.publishSys()
		}
	}
}

// publishSys publishes the $SYS tree as retained messages, with the topic
// names Mosquitto uses where one exists.
func (s *Server) publishSys() {
	st := s.Stats()
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	topics := [][2]string{
		{"$SYS/broker/version", s.cfg.Version},
		{"$SYS/broker/uptime", strconv.FormatInt(int64(st.Uptime/time.Second), 10) + " seconds"},
		{"$SYS/broker/clients/connected", i(st.ClientsConnected)},
		{"$SYS/broker/clients/maximum", i(st.ClientsMaximum)},
		{"$SYS/broker/clients/total", i(st.Sessions)},
		{"$SYS/broker/clients/disconnected", i(max(st.Sessions-st.ClientsConnected, 0))},
		{"$SYS/broker/connections/accepted", i(st.ClientsTotal)},
		{"$SYS/broker/connections/refused", i(st.ConnectRefused + st.ConnectionsOverCap)},
		{"$SYS/broker/connections/tls_failures", i(st.TLSFailures)},
		{"$SYS/broker/connections/protocol_errors", i(st.ProtocolErrors)},
		{"$SYS/broker/connections/revoked", i(st.RevokedDisconnects)},
		{"$SYS/broker/messages/received", i(st.MessagesReceived)},
		{"$SYS/broker/messages/sent", i(st.MessagesSent)},
		{"$SYS/broker/messages/queued", i(st.Queued)},
		{"$SYS/broker/messages/dropped", i(st.DroppedQueueFull)},
		{"$SYS/broker/messages/dropped/slow_client", i(st.DroppedSlowClient)},
		{"$SYS/broker/messages/dropped/oversize", i(st.DroppedOversize)},
		{"$SYS/broker/messages/dropped/qos0_offline", i(st.DroppedQoS0Offline)},
		{"$SYS/broker/messages/expired", i(st.Expired)},
		{"$SYS/broker/publishers/held", i(st.PublishersHeld)},
		{"$SYS/broker/publishers/pushbacks", i(st.Pushbacks)},
		{"$SYS/broker/subscribers/slow", i(st.SlowSubscribers)},
		{"$SYS/broker/bytes/received", i(st.BytesReceived)},
		{"$SYS/broker/bytes/sent", i(st.BytesSent)},
		{"$SYS/broker/subscriptions/count", i(st.Subscriptions)},
		{"$SYS/broker/retained messages/count", i(st.Retained)},
		{"$SYS/broker/panics", i(st.Panics)},
		{"$SYS/broker/store/failures", i(st.PersistFailures)},
		{"$SYS/broker/store/quarantined", i(st.StoreQuarantines)},
		{"$SYS/broker/connections/refused_at_accept", i(st.AcceptRefused)},
	}
	if o, ok := s.cfg.Observer.(ObserverCounters); ok {
		for name, v := range o.Counters() {
			topics = append(topics, [2]string{"$SYS/broker/moat/" + name, i(v)})
		}
	}
	now := s.cfg.Now()
	for _, t := range topics {
		p := &packet.Publish{Topic: t[0], Payload: []byte(t[1]), Retain: true}
		s.publish(newMessage(p, "", now))
	}
}
