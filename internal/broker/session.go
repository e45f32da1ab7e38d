package broker

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// neverExpires marks a session that outlives any disconnection.
const neverExpires time.Duration = -1

// session is the server side of an MQTT session: it outlives connections
// when its expiry interval is non-zero. All fields below mu are guarded by
// it.
type session struct {
	id      string
	created time.Time
	// owner is the identity that created the session; set once, read
	// under Server.sessMu.
	owner sessionOwner

	mu   sync.Mutex
	conn *conn // nil while the client is offline
	// client is a snapshot of the Client of the latest connection (set by
	// attach, kept while offline): the identity queued messages and
	// subscriptions are authorized for, sharing that connection's
	// decision cache.
	client *Client

	// expiry is how long the session outlives its connection; 0 ends it
	// at disconnection, neverExpires keeps it until taken over cleanly.
	expiry time.Duration

	// Outbound QoS 1/2 messages awaiting acknowledgement, in send order.
	inflight []*delivery
	// Messages waiting for a connection or for room in the in-flight
	// window, oldest first, and the sum of their sizes (delivery.size).
	queue      msgQueue
	queueBytes int64
	// gate holds back publishers while the queue is over its mark
	// (overload.go).
	gate flowGate
	// waitingOn is the session at whose queue the reader of this
	// session's connection waits now (a publisher held back), or nil;
	// read by other sessions' gates to find cycles (waitCycleLocked).
	waitingOn atomic.Pointer[session]

	// inboundQoS2 holds packet identifiers of QoS 2 messages received from
	// the client and routed, awaiting PUBREL [MQTT-4.3.3-10]. Nil until
	// the first (noteInboundQoS2): a client that never publishes at QoS 2
	// keeps no map.
	inboundQoS2 map[uint16]struct{}

	// subs counts the session's subscriptions for MaxSubscriptions; only
	// the session's current connection changes it.
	subs atomic.Int64
	// subBytes sums the lengths of those subscriptions' filters, for
	// MaxSubscriptionBytes.
	subBytes atomic.Int64

	// pendingResend counts in-flight messages that still have to be
	// resent on the current connection: a reconnecting client may allow
	// fewer unacknowledged messages than the session has in flight, and
	// the rest are resent as acknowledgements make room [MQTT-3.3.4-9].
	pendingResend int

	// Limits of the current connection.
	inflightLimit int
	maxPacket     uint32 // client's Maximum Packet Size, 0 = none

	// The small fields sit together, where padding after a field of its
	// own would be (a session beyond 384 bytes takes the next size
	// class, 416; TestSizeClasses). nextPID is the next packet
	// identifier of an outbound QoS 1/2 message. ended is set when the
	// session is removed: a routing pass that found it through a
	// subscription not yet removed delivers nothing. resuming is set
	// from the start of a cluster claim of its client ID on this node
	// (Server.awaitClaim) until its client, attached, has its queue
	// under its limit (or is refused, or leaves): meanwhile a full queue
	// holds this node's publishers back rather than dropping their
	// messages (session.blocksLocked). awayPaced is set when a paced
	// routing pass switched the session to a catch-up while its client
	// was away, until a client is attached: one such catch-up per
	// absence (cluster_paced.go).
	nextPID   uint16
	ended     bool
	resuming  bool
	awayPaced bool

	// stored: the session is kept by Config.Persistence (it outlived a
	// connection's CONNECT with a non-zero expiry); subList mirrors its
	// subscriptions for the store, by filter as subscribed.
	stored  bool
	subList map[string]StoredSubscription

	// Pending will: set at disconnection while the will delay runs.
	willTimer Timer
	willMsg   *Message
	willFrom  *Client
	// expiryTimer removes the offline session when it fires.
	expiryTimer Timer

	// fence orders the session's recent subscriptions against messages
	// routed meanwhile (fence.go); nil when it has none.
	fence *subFence
}

func newSession(id string, owner sessionOwner, now time.Time) *session {
	return &session{id: id, owner: owner, created: now}
}

// noteInboundQoS2 records a QoS 2 message received and routed, awaiting
// PUBREL. The caller holds s.mu (or owns s alone, while restoring it).
func (s *session) noteInboundQoS2(pid uint16) {
	if s.inboundQoS2 == nil {
		s.inboundQoS2 = make(map[uint16]struct{})
	}
	s.inboundQoS2[pid] = struct{}{}
}

// sessionOwner is the identity a session belongs to. Only a client with
// the same owner may resume the session or take over its connection
// (unless Config.IgnoreSessionOwner is set); see Server.attach.
type sessionOwner struct {
	// key names the identity: "user:" and the verified username,
	// "cert:" and the certificate's issuer and subject when the client
	// has a verified certificate but no username, else the listener
	// ("anon:" for anonymous clients, "auth:" for clients an
	// Authenticator admitted without a name).
	key string
	// verified is false for anonymous owners: anybody on the listener can
	// claim to be them.
	verified bool
}

// ownerOf returns the owner of the sessions c creates. lst, if not nil,
// is the listener c came through: the keys of owners named after it are
// its copies, not a string made per session.
func ownerOf(c *Client, lst *listenerState) sessionOwner {
	if lst != nil && (lst.name != c.Listener || lst.anonOwner == "") {
		// Another listener's, or one whose keys were never made (a
		// state built by hand): never an empty key, which every such
		// client would share.
		lst = nil
	}
	if c.Username != "" {
		return sessionOwner{key: "user:" + c.Username, verified: true}
	}
	if chain := c.PeerCertificates(); len(chain) > 0 {
		// Issuer and subject rather than the certificate itself, so that
		// a renewed certificate keeps its sessions.
		return sessionOwner{key: "cert:" + chain[0].Issuer.String() + "\x00" + chain[0].Subject.String(), verified: true}
	}
	if c.Anonymous {
		if lst != nil {
			return sessionOwner{key: lst.anonOwner}
		}
		return sessionOwner{key: "anon:" + c.Listener}
	}
	if lst != nil {
		return sessionOwner{key: lst.authOwner, verified: true}
	}
	return sessionOwner{key: "auth:" + c.Listener, verified: true}
}

// retainedOwner is the identity whose retained-message quota a client's
// retained publications are charged to: its verified username or
// certificate, else its source address. Client IDs (and usernames an
// anonymous client claims) are free to choose, so charging them would let
// one client spread its messages over as many quotas as it likes.
func retainedOwner(c *Client) string {
	if o := ownerOf(c, nil); strings.HasPrefix(o.key, "user:") || strings.HasPrefix(o.key, "cert:") {
		return o.key
	}
	if ap, err := netip.ParseAddrPort(fmt.Sprint(c.Remote)); err == nil {
		return "addr:" + ap.Addr().Unmap().String()
	}
	return "client:" + c.ClientID
}

// String describes the owner for logs.
func (o sessionOwner) String() string {
	if o.key == "" {
		return "nobody"
	}
	return strings.ReplaceAll(o.key, "\x00", " / ")
}

// allocPID returns a free outbound packet identifier. The caller holds
// s.mu and has checked that the in-flight window has room, so one exists.
func (s *session) allocPID() uint16 {
	for {
		s.nextPID++
		if s.nextPID == 0 {
			s.nextPID = 1
		}
		if s.findInflight(s.nextPID) < 0 {
			return s.nextPID
		}
	}
}

func (s *session) findInflight(pid uint16) int {
	for i, d := range s.inflight {
		if d.pid == pid {
			return i
		}
	}
	return -1
}

func (s *session) removeInflight(i int) {
	if s.inflight[i].pending {
		s.inflight[i].pending = false
		s.pendingResend--
	}
	copy(s.inflight[i:], s.inflight[i+1:])
	s.inflight[len(s.inflight)-1] = nil
	s.inflight = s.inflight[:len(s.inflight)-1]
}

// offer hands the session a message of a routing pass (es holds the
// message and its shared encodings), matched by the session's
// subscriptions with the maximum QoS subQoS, Retain As Published rap and
// the subscription identifiers subIDs (copied, never kept). It reports
// whether the session may receive the message (it exists and the
// Authorizer allows it), whether or not the message was then queued,
// sent or dropped. A QoS 0 message for an online client is queued as the
// shared encoding itself, which allocates nothing per subscriber;
// anything else becomes a delivery.
//
// The receive permission is checked here for every message, offline
// sessions included (their queued messages are checked again when sent),
// under s.mu like the checks of fillLocked and resendLocked: one lock per
// delivery instead of two. pub is as for deliver.
func (s *session) offer(srv *Server, es *encSet, subQoS byte, rap bool, subIDs []uint32, share *shareKey, b *pbatch, pub *publisher) bool {
	msg := es.msg
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return false
	}
	if f := s.fence; f != nil {
		held := len(f.held)
		if !f.admit(s, msg, subQoS, rap, subIDs, share) {
			// A duplicate, or held back for a SUBSCRIBE in progress or a
			// session being imported (fence.go). The acknowledgement of a
			// client's held QoS 1/2 message owed to a stored session waits
			// for its write (heldGate). Routing passes of the cluster
			// (pub nil) are not gated here: their acknowledgements wait
			// for the import in the cluster, and a moving session's own
			// replay waits for its deliveries before the release.
			if len(f.held) > held && pub != nil && b != nil && min(msg.QoS, subQoS) > 0 && srv.persisting(s) {
				g := &heldGate{}
				f.held[held].gate = g
				b.gates = append(b.gates, g)
			}
			s.mu.Unlock()
			return true
		}
	}
	if cl := s.client; cl != nil {
		if d := srv.authorize(cl, ActionReceive, msg.Topic, msg.QoS, msg.Retain, ""); !d.Allow {
			s.mu.Unlock()
			srv.denied(cl, ActionReceive, msg.Topic, d, "delivery")
			return false
		}
	}
	defer s.mu.Unlock()
	qos, retain := min(msg.QoS, subQoS), rap && msg.Retain
	c := s.conn
	online := c != nil && !c.closing.Load()
	if online && qos == 0 && !(srv.cfg.QueueQoS0 && s.queue.len() > 0) {
		if e := es.get(c.version, 0, retain, subIDs); e != nil {
			if s.maxPacket > 0 && uint32(len(e.b)) > s.maxPacket {
				// [MQTT-3.1.2-25], as in deliverLocked.
				srv.stats.droppedOversize.Add(1)
				return true
			}
			_, congested := c.sendQoS0(e, len(msg.Payload)+len(msg.Topic), es.from)
			s.notePublisherQoS0(c, pub, congested)
			return true
		}
	}
	d := &delivery{msg: msg, qos: qos, retain: retain, subIDs: slices.Clone(subIDs), share: share}
	if online && qos > 0 {
		d.enc = es.get(c.version, qos, retain, subIDs)
	}
	s.deliverLocked(srv, d, b, es.from, pub)
	return true
}

// deliver hands one message to the session: straight to the connection
// when it is online and has room, into the queue otherwise. It reports
// false when the message was dropped. pub, when routing a client's
// PUBLISH, is told whether that client must wait for this session
// (overload.go).
func (s *session) deliver(srv *Server, d *delivery, b *pbatch, pub *publisher) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deliverLocked(srv, d, b, nil, pub)
}

// deliverLocked is deliver with s.mu held. from is the connection whose
// reader routes the message, which may hold the writer back (see
// conn.wakeWriterLocked), or nil; pub is as for deliver.
func (s *session) deliverLocked(srv *Server, d *delivery, b *pbatch, from *conn, pub *publisher) bool {
	c := s.conn
	if c == nil || c.closing.Load() {
		// Offline, or the connection is going away: what is sent now
		// would be lost with it, so queue instead. Nobody is held back
		// for an offline session: its queue's limits apply. A session
		// whose client is being attached after a cluster claim
		// (resuming) is the exception: it holds a publisher back as if
		// it were connected, and takes that publisher's message past
		// its limit as QueueBlock does (enqueueLocked); so does one
		// whose client is away while the catch-up of this absence runs
		// (awayCatchingLocked), until it is found slow.
		if d.qos == 0 && !srv.cfg.QueueQoS0 {
			srv.stats.droppedQoS0.Add(1)
			return false
		}
		held := c == nil && (s.resuming || s.awayCatchingLocked()) && pub != nil && pub.self != s
		if !s.enqueueLocked(srv, d, held) {
			return false
		}
		s.storeDeliveryLocked(srv, d, b, nil)
		if held {
			s.notePublisherLocked(srv, pub)
		}
		return true
	}
	if s.maxPacket > 0 && !fitsPacket(d, c.version, s.maxPacket, &clock{now: srv.cfg.Now}) {
		// [MQTT-3.1.2-25]: a message too large for the client is
		// discarded for it as if it had been delivered.
		srv.stats.droppedOversize.Add(1)
		return false
	}
	held := pub != nil && pub.self != s // see enqueueLocked
	if d.qos == 0 {
		if srv.cfg.QueueQoS0 && s.queue.len() > 0 {
			// QoS 0 messages queued while the client was offline go
			// first: messages of one QoS keep their order [MQTT-4.6.0-6].
			ok := s.enqueueLocked(srv, d, held)
			s.notePublisherLocked(srv, pub)
			return ok
		}
		sent, congested := c.sendQoS0(d, int(d.size()), from)
		s.notePublisherQoS0(c, pub, congested)
		return sent
	}
	if s.queue.len() > 0 || len(s.inflight) >= s.inflightLimit {
		ok := s.enqueueLocked(srv, d, held)
		if ok {
			s.storeDeliveryLocked(srv, d, b, nil)
		}
		s.notePublisherLocked(srv, pub)
		return ok
	}
	s.startLocked(c, d, b, from)
	if pub != nil && pub.self != s {
		pub.noteFree(s)
	}
	return true
}

// startLocked puts d in flight on c. A delivery new to the session (b or
// routing without a batch) is stored with its packet identifier; one from
// the queue has its new state stored.
func (s *session) startLocked(c *conn, d *delivery, b *pbatch, from *conn) {
	d.pid = s.allocPID()
	s.inflight = append(s.inflight, d)
	if !d.expiryFixed && !d.msg.Expires.IsZero() {
		d.expiry = d.msg.remainingExpiry(c.srv.cfg.Now())
		d.expiryFixed = true
	}
	dup := d.sent
	d.sent = true
	if c.srv.persisting(s) && s.storeInFlightLocked(c, d, b, dup) {
		return // sent once stored
	}
	c.sendPublish(d, dup, from)
}

// enqueueLocked appends d to the queue within its limits. A full queue
// drops d, unless the policy is QueueBlock and d has a publisher to hold
// back (held: the client is online, and d comes from another client's
// PUBLISH routed by that client's reader): d is queued all the same and
// its publisher is held back until there is room (notePublisherLocked).
// A session resuming after a cluster claim does the same under either
// policy (blocksLocked): its queue is full of what it missed while it
// moved, and a message dropped there would be one its client, attached
// a moment later, could have taken (docs/cluster.md, "Full queues that
// still drop").
// Without a publisher to hold (a message of another cluster node, a will,
// the broker's own, a client's message to itself), a queue past its
// limit would grow with nothing to stop it, so the drop policy applies;
// but a durable message of another node routed by a paced pass switches
// a connected session (or, once per absence, one whose client is away)
// to a catch-up instead (paceLocked). A delivery owed
// to the session (held back while it moved to this node or caught up,
// released now: its publisher was acknowledged or waits for this very
// delivery) is queued past the limit: dropped, an acknowledged message
// would be lost, and the hold bounds how many there are (the cluster
// gives a catch-up up past 4,096).
func (s *session) enqueueLocked(srv *Server, d *delivery, held bool) bool {
	// A queued message waits, perhaps for another connection: it keeps
	// no shared encoding alive meanwhile.
	d.enc = nil
	if d.msg.pace != nil && !d.owed && s.spareTakenLocked(srv) && s.paceLocked(srv, d) {
		// A message of another node that the cluster can bring from
		// its stream later leaves the queue's last quarter to this
		// node's own publishers: a burst of the other nodes' messages
		// (this node's routing resuming after its consumer elected a
		// leader) filled the queue to its limit, and a local
		// publisher's messages already read by its reader were then
		// dropped there (14 acknowledged messages in one outside run).
		return false
	}
	if !d.owed && s.fullLocked(srv) && !s.dropExpiredLocked(srv) && (!held || !s.blocksLocked(srv) || s.gate.cycle) {
		if d.msg.pace != nil && s.paceLocked(srv, d) {
			return false // the cluster delivers it later (cluster_paced.go)
		}
		srv.queueFull(s.id, d)
		if s.conn != nil {
			s.conn.limitDrops.Add(1) // its reader reports it (LimitQueueFull)
		}
		return false
	}
	s.queue.push(d)
	s.queueBytes += d.size()
	srv.stats.queued.Add(1)
	return true
}

// dropExpiredLocked removes expired messages from a full queue: they will
// never be sent [MQTT-3.3.2-5] and must not keep newer ones out. It
// reports whether there is room now. The queue is searched only when a
// message in it may have expired (msgQueue.expiry).
func (s *session) dropExpiredLocked(srv *Server) bool {
	now := srv.cfg.Now()
	if !s.queue.mayHaveExpired(now) {
		return !s.fullLocked(srv)
	}
	n := s.queue.filter(func(d *delivery) bool {
		if !d.msg.expired(now) {
			return true
		}
		s.queueBytes -= d.size()
		s.dropDeliveryLocked(srv, d)
		return false
	})
	srv.stats.queued.Add(-int64(n))
	srv.stats.expired.Add(int64(n))
	if n > 0 {
		s.drainedLocked(srv, n)
	}
	return !s.fullLocked(srv)
}

// fillLocked moves queued messages into flight while there is room.
func (s *session) fillLocked(srv *Server) {
	c := s.conn
	if c == nil || c.closing.Load() {
		return
	}
	clk := clock{now: srv.cfg.Now}
	queued := s.queue.items()
	n := 0
	for n < len(queued) {
		d := queued[n]
		if d.qos > 0 && len(s.inflight) >= s.inflightLimit {
			break
		}
		n++
		s.queueBytes -= d.size()
		srv.stats.queued.Add(-1)
		if !d.msg.Expires.IsZero() && d.msg.expired(clk.get()) {
			srv.stats.expired.Add(1)
			s.dropDeliveryLocked(srv, d)
			continue
		}
		if s.maxPacket > 0 && !fitsPacket(d, c.version, s.maxPacket, &clk) {
			srv.stats.droppedOversize.Add(1)
			s.dropDeliveryLocked(srv, d)
			continue
		}
		if !srv.mayReceive(&c.client, d) {
			// Queued messages are checked again when finally sent: the
			// policy may have changed while they waited.
			srv.stats.droppedUnauthorized.Add(1)
			continue
		}
		if d.qos == 0 {
			c.sendQoS0(d, len(d.msg.Payload)+len(d.msg.Topic), nil)
			continue
		}
		s.startLocked(c, d, nil, nil)
	}
	if n > 0 {
		s.queue.popFront(n)
	}
	if n > 0 || len(s.gate.waiters) > 0 {
		s.drainedLocked(srv, n)
	}
}

// resendLocked retransmits the in-flight messages on a new connection, in
// their original order and with their original packet identifiers:
// PUBLISH with DUP set, or PUBREL for QoS 2 messages already received by
// the client [MQTT-4.4.0-1] [MQTT-4.6.0-1]. No more than the connection's
// in-flight limit (the client's Receive Maximum) are sent at once; the
// rest follow as acknowledgements arrive [MQTT-3.3.4-9].
func (s *session) resendLocked(c *conn) {
	s.pendingResend = 0
	// In-flight messages not yet received by the client are checked
	// again: the client may have lost the right to read them while away.
	for i := 0; i < len(s.inflight); {
		if d := s.inflight[i]; !d.released && !c.srv.mayReceive(&c.client, d) {
			s.removeInflight(i)
			c.srv.stats.droppedUnauthorized.Add(1)
			continue
		}
		i++
	}
	for i, d := range s.inflight {
		d.pending = i >= s.inflightLimit
		if d.pending {
			s.pendingResend++
			continue
		}
		s.resendOneLocked(c, d)
	}
}

func (s *session) resendOneLocked(c *conn, d *delivery) {
	if d.released {
		c.send(shortAck{typ: packet.PUBREL, pid: d.pid})
		return
	}
	d.sent = true
	c.sendPublish(d, true, nil)
}

// resumeResendLocked resends held-back in-flight messages, oldest first,
// while the client's Receive Maximum allows.
func (s *session) resumeResendLocked(srv *Server) {
	c := s.conn
	if s.pendingResend == 0 || c == nil || c.closing.Load() {
		return
	}
	out := len(s.inflight) - s.pendingResend // sent on this connection
	for _, d := range s.inflight {
		if out >= s.inflightLimit || s.pendingResend == 0 {
			return
		}
		if d.pending {
			d.pending = false
			s.pendingResend--
			out++
			s.resendOneLocked(c, d)
		}
	}
}

// ack completes the outbound flow of pid (PUBACK for QoS 1, PUBCOMP for
// QoS 2) and refills the window. It reports whether pid was in flight.
func (s *session) ack(srv *Server, pid uint16, qos byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.findInflight(pid)
	if i < 0 || s.inflight[i].qos != qos || (qos == 2 && !s.inflight[i].released) {
		return false
	}
	s.dropDeliveryLocked(srv, s.inflight[i])
	s.removeInflight(i)
	s.resumeResendLocked(srv)
	s.fillLocked(srv)
	return true
}

// received handles PUBREC: it reports whether pid is a QoS 2 message in
// flight and marks it released. A PUBREC with an error code ends the flow.
func (s *session) received(srv *Server, pid uint16, code packet.ReasonCode) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.findInflight(pid)
	if i < 0 || s.inflight[i].qos != 2 {
		return false
	}
	if code.IsError() {
		// An error PUBREC ends the flow: no PUBREL [MQTT-4.3.3-4], and
		// the message is not sent again [MQTT-4.4.0-2].
		s.dropDeliveryLocked(srv, s.inflight[i])
		s.removeInflight(i)
		s.resumeResendLocked(srv)
		s.fillLocked(srv)
		return true
	}
	d := s.inflight[i]
	d.released = true
	s.updateDeliveryLocked(srv, d, nil)
	if d.pending {
		// Acknowledged before we resent it: it is in flight again.
		d.pending = false
		s.pendingResend--
	}
	return true
}

// fitsPacket reports whether the PUBLISH for d fits in max bytes.
func fitsPacket(d *delivery, v packet.Version, max uint32, clk *clock) bool {
	if e := d.enc; e != nil && e.v5 == (v == packet.V5) {
		return uint32(len(e.b)) <= max // the size does not depend on the values patched
	}
	p := d.publishPacket(clk, false)
	if p.QoS > 0 {
		p.PacketID = 1 // any non-zero identifier has the same size
	}
	n, err := packet.Size(p, v)
	return err == nil && uint32(n) <= max
}
