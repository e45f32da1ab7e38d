package broker

import (
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/topic"
)

// Persistence keeps persistent sessions, the messages they are owed,
// inbound QoS 2 identifiers, retained messages and pending wills across
// restarts (docs/durability.md). The broker declares it; the embedded
// store (internal/store/brokerstore) and a clustered store implement it.
// Nil Config.Persistence keeps everything in memory.
type Persistence interface {
	// Recover returns what was stored; New calls it once.
	Recover() (*Recovered, error)
	// Persist applies changes atomically and calls done once they are
	// durable as configured (never before), or failed. done must not
	// block; it may run on another goroutine. Changes submitted earlier
	// are applied no later than changes submitted after them, and the
	// done functions of one submitter run in submission order.
	Persist(changes []Change, done func(error))
	// NewID returns a new message ID or delivery sequence number, larger
	// than any stored.
	NewID() uint64
}

// ChangeKind names what a Change does.
type ChangeKind byte

// Change kinds.
const (
	ChangePutSession     ChangeKind = iota + 1 // Session
	ChangeDeleteSession                        // ClientID: the session with its deliveries, inbound IDs and will
	ChangePutMessage                           // MsgID, Message
	ChangePutDelivery                          // Delivery (its message in the store or the same changes)
	ChangeDeleteDelivery                       // ClientID, Seq
	ChangePutInbound                           // ClientID, PacketID
	ChangeDeleteInbound                        // ClientID, PacketID
	ChangePutRetained                          // Message, Owner, Publisher
	ChangeDeleteRetained                       // Topic
	ChangePutWill                              // Will (with its Publisher)
	ChangeDeleteWill                           // ClientID
)

// Change is one change to the durable state. Only the fields its Kind
// names are set.
type Change struct {
	Kind     ChangeKind
	ClientID string
	Seq      uint64
	PacketID uint16
	MsgID    uint64
	Topic    string
	Owner    string
	Message  *Message
	Session  *StoredSession
	Delivery *StoredDelivery
	Will     *StoredWill
	// Publisher is the retained message's publisher (nil: unknown).
	Publisher *StoredPublisher
}

// StoredPublisher is what a retained message and a pending will keep of
// the client that published or set them: the identity the Authorizer
// reads (a Client without its connection), so that after a restart a
// retained message's replay is still checked against its publisher's
// rights (Config.CheckRetainSource) and a will is authorized as the
// client that set it. The remote address keeps only the IP: its port
// changes with every connection, and rules judge the address.
type StoredPublisher struct {
	Listener           string
	Addr               netip.Addr // invalid: unknown
	Version            packet.Version
	ClientID           string
	Username           string
	Anonymous          bool
	Attributes         map[string]string
	Groups             []string
	Publish, Subscribe []string
	AuthBackend        string
	AuthExpires        time.Time
	// Certs is the verified certificate chain, leaf first.
	Certs []*x509.Certificate
}

// storedPublisher describes c for the store; nil for nil (a message of
// the server itself).
func storedPublisher(c *Client) *StoredPublisher {
	if c == nil {
		return nil
	}
	p := &StoredPublisher{Listener: c.Listener, Version: c.Version, ClientID: c.ClientID, Username: c.Username,
		Anonymous: c.Anonymous, Attributes: c.Attributes, Groups: c.Groups, Publish: c.Publish, Subscribe: c.Subscribe,
		AuthBackend: c.AuthBackend, AuthExpires: c.AuthExpires, Certs: c.PeerCertificates()}
	switch a := c.Remote.(type) {
	case nil:
	case *net.TCPAddr:
		p.Addr, _ = netip.AddrFromSlice(a.IP)
	default:
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			p.Addr = ap.Addr()
		}
	}
	p.Addr = p.Addr.Unmap()
	return p
}

// client returns the publisher as the Client the Authorizer is asked
// about: no connection (the certificate chain is kept, PeerCertificates
// works), port 0 in Remote, its own Memo and no decision cache, as
// Client.publisherSnapshot gives.
func (p *StoredPublisher) client() *Client {
	c := &Client{Listener: p.Listener, Version: p.Version, ClientID: p.ClientID, Username: p.Username,
		Anonymous: p.Anonymous, Attributes: p.Attributes, Groups: p.Groups, Publish: p.Publish, Subscribe: p.Subscribe,
		AuthBackend: p.AuthBackend, AuthExpires: p.AuthExpires, peerCerts: p.Certs, az: &authzState{}}
	// An identity for the Authorizer's memo, as publisherSnapshot gives
	// (without it Memo dereferences nil).
	c.az.id.Store(&authzIdentity{})
	if p.Addr.IsValid() {
		c.Remote = net.TCPAddrFromAddrPort(netip.AddrPortFrom(p.Addr, 0))
	}
	return c
}

// StoredSession is a persistent session without its messages.
type StoredSession struct {
	ClientID      string
	Owner         string // the session owner's key
	OwnerVerified bool
	Version       byte
	// Expiry is the session expiry interval (-1: never).
	Expiry time.Duration
	// ExpiresAt is the wall-clock deadline of an offline session; zero
	// while connected or when it never expires.
	ExpiresAt     time.Time
	Created       time.Time
	Subscriptions []StoredSubscription
}

// StoredSubscription is one subscription with its options; Filter
// includes a "$share/group/" prefix.
type StoredSubscription struct {
	Filter            string
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte
	ID                uint32
}

// DeliveryState is where a stored delivery is in its outbound flow.
type DeliveryState byte

// Delivery states.
const (
	DeliveryQueued   DeliveryState = iota // waiting for a connection or room in the window
	DeliverySent                          // PUBLISH sent, not acknowledged
	DeliveryReleased                      // QoS 2: PUBREC received, PUBREL sent
)

// StoredDelivery is one message owed to one session.
type StoredDelivery struct {
	ClientID                string
	Seq                     uint64
	MsgID                   uint64
	QoS                     byte
	Retain                  bool
	SubIDs                  []uint32
	State                   DeliveryState
	PacketID                uint16
	Dup                     bool
	ShareGroup, ShareFilter string
}

// StoredWill is a will waiting for its delay.
type StoredWill struct {
	ClientID string
	FireAt   time.Time
	Owner    string
	Message  *Message
	// Publisher is the client that set the will; nil: unknown (a record
	// of an earlier version), and the will is not published.
	Publisher *StoredPublisher
	// Live marks the will of a connection still open, which a cluster
	// keeps (LiveWillCluster) so that it is published when the node dies
	// with the connection: FireAt is unset, and Delay is the will delay
	// (capped by the session's expiry) still to run once the connection
	// is gone. Clean: the connection's session ends with it (it has no
	// record of its own in the cluster). On a ChangeDeleteWill, a Will
	// with Clean set names the live will of a clean session.
	Live, Clean bool
	Delay       time.Duration
	// Publish is set on a ChangeDeleteWill of a clean session's live will
	// whose connection ended so that the will is owed (not discarded):
	// the cluster calls it, once and from its own goroutine, if its
	// removal of the will's record is the one that counts; another node
	// that removed it first published the will itself
	// (LiveWillCluster). Never stored.
	Publish func()
}

// Recovered is what a Persistence returns at start.
type Recovered struct {
	Sessions []RecoveredSession
	Messages map[uint64]*Message
	Retained []RecoveredRetained
	Wills    []*StoredWill
}

// RecoveredSession is a session with what it holds.
type RecoveredSession struct {
	Session    *StoredSession
	Deliveries []*StoredDelivery // by Seq
	Inbound    []uint16
}

// RecoveredRetained is a retained message, the identity charged for it
// and its publisher (nil: unknown; its replay is refused while
// Config.CheckRetainSource is on).
type RecoveredRetained struct {
	Message   *Message
	Owner     string
	Publisher *StoredPublisher
}

// pbatch collects the changes one PUBLISH causes while it is routed; the
// publisher submits them as one Persist and acknowledges in its done.
type pbatch struct {
	changes []Change
	msgPut  bool
	dlv     []batched // deliveries whose first put is in changes
	sends   []func()  // QoS 2 PUBLISHes to send once the batch is durable
	// gates are deliveries of the batch's message that fences held back:
	// its acknowledgement waits for them to be stored (heldGate).
	gates []*heldGate
}

type batched struct {
	d      *delivery
	client string
}

// Delivery persistence states (delivery.pstate): a delivery routed for a
// publisher's batch is not submitted until routing ends; an
// acknowledgement arriving before that must not submit its delete first
// (the put would bring the delivery back), so it leaves the delete to the
// publisher.
const (
	pstateBatched   = 0 // put in a batch not yet submitted
	pstateSubmitted = 1
	pstateAcked     = 2 // acknowledged before its put was submitted
)

// persisting reports whether sess is stored: persistence is on and the
// session outlives its connections.
func (s *Server) persisting(sess *session) bool {
	return s.persist != nil && sess.stored
}

// persistAsync submits changes that no acknowledgement waits for; a
// failure is logged and counted.
func (s *Server) persistAsync(changes ...Change) {
	s.persist.Persist(changes, s.persistLogged)
}

func (s *Server) persistLogged(err error) {
	if err != nil {
		s.stats.persistFailed.Add(1)
		s.log.Error("broker: persisting a change failed; it may be lost at a restart", "err", err)
	}
}

// storeDeliveryLocked gives d a sequence number and records its put in b,
// or submits it at once when b is nil. then, if not nil, runs once the put
// is durable (or failed); it reports whether d is stored and then was
// taken. The caller holds sess.mu.
func (sess *session) storeDeliveryLocked(srv *Server, d *delivery, b *pbatch, then func()) bool {
	if !srv.persisting(sess) || d.qos == 0 || d.msg.id == 0 {
		return false
	}
	d.seq = srv.persist.NewID()
	sd := sess.storedDelivery(d)
	if b == nil {
		d.pstate.Store(pstateSubmitted)
		srv.persist.Persist([]Change{{Kind: ChangePutMessage, MsgID: d.msg.id, Message: d.msg},
			{Kind: ChangePutDelivery, Delivery: sd}}, srv.persistThen(then))
		return then != nil
	}
	if then != nil {
		b.sends = append(b.sends, then)
	}
	if !b.msgPut {
		b.msgPut = true
		b.changes = append(b.changes, Change{Kind: ChangePutMessage, MsgID: d.msg.id, Message: d.msg})
	}
	b.changes = append(b.changes, Change{Kind: ChangePutDelivery, Delivery: sd})
	b.dlv = append(b.dlv, batched{d, sess.id})
	return then != nil
}

// persistThen returns a done function that logs a failure and then runs
// then (if any).
func (s *Server) persistThen(then func()) func(error) {
	if then == nil {
		return s.persistLogged
	}
	return func(err error) {
		s.persistLogged(err)
		then()
	}
}

// storeInFlightLocked stores the state of d, just put in flight, and
// reports whether it took send: a QoS 2 PUBLISH to a stored session is
// sent only once its packet identifier is durable, so that a restart
// cannot resend it under another identifier, which the subscriber would
// take for a new message. The caller holds sess.mu.
func (sess *session) storeInFlightLocked(c *conn, d *delivery, b *pbatch, dup bool) bool {
	srv := c.srv
	var then func()
	if d.qos == 2 {
		then = func() { c.sendPublish(d, dup, nil) }
	}
	if d.seq == 0 {
		return sess.storeDeliveryLocked(srv, d, b, then)
	}
	return sess.updateDeliveryLocked(srv, d, then)
}

func (sess *session) storedDelivery(d *delivery) *StoredDelivery {
	sd := &StoredDelivery{ClientID: sess.id, Seq: d.seq, MsgID: d.msg.id, QoS: d.qos, Retain: d.retain,
		SubIDs: d.subIDs, PacketID: d.pid, Dup: d.sent}
	switch {
	case d.released:
		sd.State = DeliveryReleased
	case d.pid != 0:
		sd.State = DeliverySent
	}
	if d.share != nil {
		sd.ShareGroup, sd.ShareFilter = d.share.group, d.share.filter
	}
	return sd
}

// updateDeliveryLocked stores d's new state (in flight, released); then,
// if not nil, runs once that is durable, and it reports whether it took
// then. The caller holds sess.mu.
func (sess *session) updateDeliveryLocked(srv *Server, d *delivery, then func()) bool {
	if d.seq == 0 || !srv.persisting(sess) || d.pstate.Load() != pstateSubmitted {
		return false
	}
	srv.persist.Persist([]Change{{Kind: ChangePutDelivery, Delivery: sess.storedDelivery(d)}}, srv.persistThen(then))
	return then != nil
}

// dropDeliveryLocked removes d from the store: acknowledged, expired or
// dropped. The caller holds sess.mu.
func (sess *session) dropDeliveryLocked(srv *Server, d *delivery) {
	if d.seq == 0 || !srv.persisting(sess) {
		return
	}
	if d.pstate.CompareAndSwap(pstateBatched, pstateAcked) {
		return // the publisher deletes it after submitting the put
	}
	srv.persistAsync(Change{Kind: ChangeDeleteDelivery, ClientID: sess.id, Seq: d.seq})
}

// submitBatch submits b (nil changes allowed: an ordering barrier) and
// calls done when durable. Deliveries acknowledged while the batch was
// being built are deleted after it.
func (s *Server) submitBatch(b *pbatch, done func(error)) {
	if gates := b.gates; len(gates) > 0 {
		// The batch's own sends do not wait for the gates; its
		// acknowledgement does.
		j := &gateJoin{parts: 1 + len(gates), done: done}
		done = j.finish
		for _, g := range gates {
			g.wait(j.finish)
		}
	}
	if sends := b.sends; len(sends) > 0 {
		ack := done
		done = func(err error) {
			for _, f := range sends {
				f()
			}
			ack(err)
		}
	}
	s.persist.Persist(b.changes, done)
	var dels []Change
	for _, x := range b.dlv {
		if !x.d.pstate.CompareAndSwap(pstateBatched, pstateSubmitted) {
			dels = append(dels, Change{Kind: ChangeDeleteDelivery, ClientID: x.client, Seq: x.d.seq})
		}
	}
	if len(dels) > 0 {
		s.persistAsync(dels...)
	}
}

// storedSessionLocked describes sess for the store. The caller holds
// sess.mu.
func (s *Server) storedSessionLocked(sess *session, version packet.Version, offline bool) *StoredSession {
	ss := &StoredSession{ClientID: sess.id, Owner: sess.owner.key, OwnerVerified: sess.owner.verified,
		Version: byte(version), Expiry: sess.expiry, Created: sess.created}
	if offline && sess.expiry > 0 {
		ss.ExpiresAt = s.cfg.Now().Add(sess.expiry)
	}
	ss.Subscriptions = make([]StoredSubscription, 0, len(sess.subList))
	for _, sub := range sess.subList {
		ss.Subscriptions = append(ss.Subscriptions, sub)
	}
	return ss
}

// persistLimiter bounds the PUBLISH commits one connection has in flight
// to the broker's Receive Maximum: the reader goes on reading while
// commits run, but not without bound.
type persistLimiter struct {
	slots chan struct{}
	n     atomic.Int64 // commits not yet reported
	// ahead is set while the reader, waiting for a slot, reads ahead
	// (readahead.go): a commit's report then wakes it (wakeAhead),
	// under mu, which the reader takes to clear ahead, so that no wake
	// comes once the read is over. Either the reader sees n lowered
	// after it set ahead, or the report sees ahead set after it lowered
	// n: both are atomics.
	ahead atomic.Bool
	// pings counts the PINGREQs at the start of the read buffer that were
	// answered ahead: the reader answers them no second time.
	// Reader-owned.
	pings uint16
	mu    sync.Mutex
}

// acquirePersist waits for a commit slot; false when the connection ends
// first. While it waits, the reader reads ahead into its read buffer and
// answers the PINGREQs it finds there (readahead.go).
func (c *conn) acquirePersist() bool {
	if c.plim.slots == nil {
		c.plim.slots = make(chan struct{}, max(int(c.srv.cfg.ReceiveMaximum), 1))
	}
	select {
	case c.plim.slots <- struct{}{}:
		c.plim.n.Add(1)
		return true
	default:
	}
	c.kickWriters() // about to wait for a commit slot
	if c.readsAhead() {
		return c.awaitSlotAhead()
	}
	return c.awaitSlot()
}

// awaitSlot waits for a commit slot; false when the connection ends
// first.
func (c *conn) awaitSlot() bool {
	select {
	case c.plim.slots <- struct{}{}:
		c.plim.n.Add(1)
		return true
	case <-c.killed:
		return false
	}
}

// persistPublish submits b and acknowledges p once it is durable. Acks
// of one connection stay in the order of its PUBLISHes [MQTT-4.6.0-2]:
// once a commit is pending, even an acknowledgement that needs none goes
// through the store's queue as an empty barrier. It reports false when
// the connection is ending.
func (c *conn) persistPublish(p *packet.Publish, code packet.ReasonCode, b *pbatch, inbound bool) bool {
	s := c.srv
	if len(b.changes) == 0 && len(b.gates) == 0 && !inbound && c.plim.n.Load() == 0 {
		return c.ackPublish(p, code)
	}
	if inbound {
		b.changes = append(b.changes, Change{Kind: ChangePutInbound, ClientID: c.sess.id, PacketID: p.PacketID})
	}
	if !c.acquirePersist() {
		return false
	}
	qos, pid := p.QoS, p.PacketID
	s.submitBatch(b, func(err error) {
		// The count falls after the acknowledgement is queued, so that
		// the reader cannot slip a later one in before it.
		defer func() {
			<-c.plim.slots
			c.plim.n.Add(-1)
			if c.plim.ahead.Load() {
				c.wakeAhead()
			}
		}()
		if err != nil {
			s.stats.persistFailed.Add(1)
			c.log.Error("broker: storing a message failed; no acknowledgement, disconnecting so the client resends",
				"err", err)
			if c.version == packet.V5 {
				c.send(shortAck{typ: ackType(qos), code: packet.UnspecifiedError, pid: pid})
			}
			c.kill(packet.UnspecifiedError, "message could not be stored")
			return
		}
		c.ackPublish(&packet.Publish{QoS: qos, PacketID: pid}, code)
	})
	return true
}

func ackType(qos byte) packet.Type {
	if qos == 2 {
		return packet.PUBREC
	}
	return packet.PUBACK
}

// retainChange is the durable form of a retained publication.
func retainChange(msg *Message, owner string) Change {
	if len(msg.Payload) == 0 {
		return Change{Kind: ChangeDeleteRetained, Topic: msg.Topic}
	}
	return Change{Kind: ChangePutRetained, Message: msg, Owner: owner, Publisher: storedPublisher(msg.Publisher)}
}

// errConnEnded is returned by persistWait when the connection ends first.
var errConnEnded = errors.New("broker: connection ended")

// persistWait submits changes and waits until they are durable or the
// connection ends; for the rare packets (SUBSCRIBE, UNSUBSCRIBE, PUBREL)
// whose answer the store must precede.
func (c *conn) persistWait(changes ...Change) error {
	done := make(chan error, 1)
	c.srv.persist.Persist(changes, func(err error) { done <- err })
	select {
	case err := <-done:
		if err != nil {
			c.srv.stats.persistFailed.Add(1)
			c.log.Error("broker: persisting a change failed; disconnecting", "err", err)
			c.kill(packet.UnspecifiedError, "state could not be stored")
		}
		return err
	case <-c.killed:
		return errConnEnded
	}
}

// recover rebuilds sessions, queues, retained messages and wills from
// the store. It runs in New, before any connection.
func (s *Server) recover() error {
	rec, err := s.persist.Recover()
	if err != nil || rec == nil {
		return err
	}
	now := s.cfg.Now()
	for id, m := range rec.Messages {
		m.id = id
	}
	// One Client per stored publisher: a device's retained topics share
	// its snapshot (and the Authorizer's memo of it), as they did before.
	clients := map[*StoredPublisher]*Client{}
	clientOf := func(p *StoredPublisher) *Client {
		c := clients[p]
		if c == nil {
			c = p.client()
			clients[p] = c
		}
		return c
	}
	unknown, refused, why := 0, 0, ""
	for _, r := range rec.Retained {
		m := r.Message
		m.id = s.persist.NewID()
		if m.expired(now) {
			s.persistAsync(Change{Kind: ChangeDeleteRetained, Topic: m.Topic})
			continue
		}
		m.Publisher, m.publisherUnknown = nil, r.Publisher == nil
		if r.Publisher != nil {
			m.Publisher = clientOf(r.Publisher)
		} else {
			unknown++
		}
		if w := s.retained.retain(m, r.Owner); w != "" {
			refused, why = refused+1, w
		}
	}
	if refused > 0 {
		// Left in the store: they load once the limits allow them.
		s.log.Warn("broker: stored retained messages over the retained limits were not loaded; they stay in the store and load at a start with limits that allow them",
			"count", refused, "reason", why)
	}
	if unknown > 0 && s.cfg.CheckRetainSource {
		s.log.Warn("broker: retained messages stored without their publisher are not replayed while check_retain_source is on "+
			"(written before the store kept publishers, or imported without one); publish them again, or turn the check off",
			"count", unknown)
	}
	var expired []string
	for _, rs := range rec.Sessions {
		ss := rs.Session
		if ss.Expiry == 0 || !ss.ExpiresAt.IsZero() && !now.Before(ss.ExpiresAt) {
			expired = append(expired, ss.ClientID)
			continue
		}
		s.restoreSession(rs, rec.Messages, now, false)
	}
	for _, id := range expired {
		s.log.Debug("broker: stored session expired while the broker was down", "client", id)
		s.persistAsync(Change{Kind: ChangeDeleteSession, ClientID: id})
	}
	for _, w := range rec.Wills {
		if w.Publisher == nil {
			// Its client's rights cannot be checked: not published
			// rather than published unchecked (fail closed).
			s.log.Warn("broker: a stored will names no publisher (written by an earlier version); it is not published",
				"client", w.ClientID)
			s.persistAsync(Change{Kind: ChangeDeleteWill, ClientID: w.ClientID})
			continue
		}
		from := clientOf(w.Publisher)
		w.Message.Publisher = nil
		s.restoreWill(w, from, now)
	}
	s.log.Info("broker: state recovered from the store", "sessions", len(rec.Sessions)-len(expired),
		"expired_sessions", len(expired), "retained", len(rec.Retained), "wills", len(rec.Wills))
	return nil
}

// restoreSession rebuilds a stored session with its subscriptions,
// deliveries (their messages in msgs) and inbound QoS 2 identifiers, and
// registers it; its expiry runs from the stored deadline. The caller
// makes sure no session of that client ID exists, and holds sessMu
// unless nothing else runs yet (recover).
func (s *Server) restoreSession(rs RecoveredSession, msgs map[uint64]*Message, now time.Time, hold bool) *session {
	ss := rs.Session
	sess := newSession(ss.ClientID, sessionOwner{key: ss.Owner, verified: ss.OwnerVerified}, ss.Created)
	sess.stored = true
	sess.expiry = ss.Expiry
	sess.inflightLimit = s.limits().MaxInflight
	for _, sd := range rs.Deliveries {
		m := msgs[sd.MsgID]
		if m == nil {
			continue
		}
		d := &delivery{msg: m, qos: sd.QoS, retain: sd.Retain, subIDs: sd.SubIDs, seq: sd.Seq,
			sent: sd.Dup || sd.State != DeliveryQueued}
		d.pstate.Store(pstateSubmitted)
		if sd.ShareGroup != "" {
			d.share = &shareKey{sd.ShareGroup, sd.ShareFilter}
		}
		if sd.State == DeliveryQueued || sd.PacketID == 0 || sess.findInflight(sd.PacketID) >= 0 {
			sess.queue.push(d)
			sess.queueBytes += d.size()
			s.stats.queued.Add(1)
			continue
		}
		d.pid, d.released = sd.PacketID, sd.State == DeliveryReleased
		sess.inflight = append(sess.inflight, d)
	}
	for _, pid := range rs.Inbound {
		sess.noteInboundQoS2(pid)
	}
	if hold {
		// Deliveries routed to it are held back until ReplayLocal.
		sess.fence = &subFence{holding: true, until: time.Now().UnixNano() + recentWindow}
	}
	// Subscribed last: from then on messages may be routed to it (at
	// recovery nothing else runs; a session imported from the cluster
	// is not yet registered).
	sess.subList = make(map[string]StoredSubscription, len(ss.Subscriptions))
	for _, sub := range ss.Subscriptions {
		group, filter, err := packet.SplitShared(sub.Filter)
		if err != nil {
			continue
		}
		ts := topic.Subscription{ClientID: ss.ClientID, Filter: filter, Group: group, QoS: sub.QoS,
			NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished, RetainHandling: sub.RetainHandling, ID: sub.ID,
			Owner: sess}
		s.clusterSubscribed(ts, s.index.Subscribe(ts))
		sess.subList[sub.Filter] = sub
		sess.subs.Add(1)
		sess.subBytes.Add(int64(len(sub.Filter)))
	}
	s.sessions.Store(ss.ClientID, sess)
	s.sessionCount.Add(1)
	if sess.expiry > 0 {
		left := sess.expiry
		if !ss.ExpiresAt.IsZero() {
			left = ss.ExpiresAt.Sub(now)
		}
		sess.expiryTimer = s.afterFunc(left, func() { s.expire(sess) })
	}
	return sess
}

// restoreWill arms a stored will of the session it belongs to, or
// publishes it at once when its time has passed or the session is gone;
// from is its publisher.
func (s *Server) restoreWill(w *StoredWill, from *Client, now time.Time) {
	sess := s.lookup(w.ClientID)
	if sess == nil || !now.Before(w.FireAt) {
		s.persistAsync(Change{Kind: ChangeDeleteWill, ClientID: w.ClientID})
		s.publishWill(w.Message, from)
		return
	}
	sess.willMsg, sess.willFrom = w.Message, from
	sess.willTimer = s.afterFunc(w.FireAt.Sub(now), func() { s.delayedWill(sess) })
}

// persistRetained records a retained publication: in the publisher's
// batch for QoS 1 and 2, at once for QoS 0 (no acknowledgement waits).
func (c *conn) persistRetained(msg *Message, b *pbatch) {
	ch := retainChange(msg, retainedOwner(&c.client))
	if b == nil {
		c.srv.persistAsync(ch)
		return
	}
	b.changes = append(b.changes, ch)
}

// persistSession stores the session's subscriptions before SUBACK or
// UNSUBACK; nil when the session is not stored.
func (c *conn) persistSession() error {
	if !c.srv.persisting(c.sess) {
		return nil
	}
	c.sess.mu.Lock()
	ss := c.srv.storedSessionLocked(c.sess, c.version, false)
	c.sess.mu.Unlock()
	return c.persistWait(Change{Kind: ChangePutSession, Session: ss})
}

// persistRelease removes an inbound QoS 2 identifier from the store and
// sends PUBCOMP once that is durable.
func (c *conn) persistRelease(pid uint16) {
	c.srv.persist.Persist([]Change{{Kind: ChangeDeleteInbound, ClientID: c.sess.id, PacketID: pid}}, func(err error) {
		if err != nil {
			c.srv.stats.persistFailed.Add(1)
			c.log.Error("broker: removing a QoS 2 identifier from the store failed; disconnecting", "err", err)
			c.kill(packet.UnspecifiedError, "state could not be stored")
			return
		}
		c.send(shortAck{typ: packet.PUBCOMP, pid: pid})
	})
}

// awaitSessionStored holds CONNACK (queued by attach, written once the
// reader runs) until the session's record is committed: a client told
// its session is kept finds it after a crash. On a commit error the
// connection is closed (the reader sees it closing) and the error
// counted and logged.
func (c *conn) awaitSessionStored() {
	if c.sessStored == nil {
		return
	}
	select {
	case err := <-c.sessStored:
		if err != nil {
			c.srv.stats.persistFailed.Add(1)
			c.log.Error("broker: storing the session failed; disconnecting", "err", err)
			c.kill(packet.UnspecifiedError, "session could not be stored")
		}
	case <-c.killed:
	}
}
