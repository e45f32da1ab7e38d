package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/topic"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("broker: server closed")

// Server is an MQTT broker. Create it with New; it is safe for concurrent
// use. Serve may be called for several listeners at once.
type Server struct {
	cfg    Config
	log    *slog.Logger
	index  *topic.Index
	stats  stats
	ctx    context.Context // cancelled by Shutdown
	cancel context.CancelFunc
	start  time.Time

	goroutines *tracker // every goroutine the server starts
	parked     parker   // quiet connections waiting without a goroutine

	// sessMu serializes session creation, takeover and removal; lookups
	// on the publish path go through sessions without it.
	sessMu   sync.Mutex
	sessions sync.Map // client ID → *session
	// claims counts the persistent cluster claims under way on this
	// node by client ID (awaitClaim); guarded by sessMu.
	claims map[string]int

	// mu guards the listener and connection sets and closed, which
	// Shutdown sets before it waits for the goroutines: the accept loop
	// and the timers start goroutines only while it is false.
	mu        sync.Mutex
	listeners map[net.Listener]*listenerState
	conns     map[*conn]struct{}
	closed    bool

	conns0       atomic.Int64 // live connections, all listeners
	sessionCount atomic.Int64 // entries in sessions

	retained   *retainedQuota // the retained store, with its limits
	readBudget *byteBudget    // bytes of packet bodies being read

	// authorizer is Config.Authorizer, AllowAll when that is nil;
	// authzGen moves on whenever cached decisions must not be used any
	// more (Reevaluate).
	authorizer Authorizer
	authzGen   atomic.Uint64
	// uniform is the Authorizer when it is a UniformAuthorizer, else nil
	// (authorize).
	uniform UniformAuthorizer
	persist Persistence // nil: state in memory only

	cluster        Cluster // nil: a single node (cluster.go)
	clusterFilters clusterFilters
	clusterShares  clusterShares // cluster_shared.go
	// clusterDurable: the Cluster wraps the Persistence and takes QoS 1
	// and 2 messages as changes (cluster_durable.go).
	clusterDurable bool
	// routes counts the durable publications being routed, for a
	// Cluster that imports a session (WaitRouted, routewatch.go).
	routes routeWatch
	// withdrawn is the reason every client is refused, once the node left
	// its cluster for good (cluster_removed.go); nil while it serves.
	withdrawn atomic.Pointer[string]

	lim atomic.Pointer[liveLimits] // the limits in force and the pushback marks (livelimits.go)
	sys sysControl                 // the $SYS publisher's state (livelimits.go)

	// recent records recently routed messages with their arrival times
	// (recent.go); stamps keeps the kernel stamping them (arrival.go).
	recent recentRing
	stamps stampHold
}

type listenerState struct {
	name           string
	allowAnonymous *bool
	maxConns       int
	certWatcher    CertWatcher
	maxQoS         byte
	aliasMax       int
	refuseEmptyID  bool
	idPrefix       string
	usernameAsID   bool
	active         atomic.Int64
	// anonOwner and authOwner are the session owners of the listener's
	// clients without a verified name (ownerOf), made once here rather
	// than a string kept per session.
	anonOwner, authOwner string
}

// New validates cfg and returns a Server. It reports every problem in cfg
// at once.
func New(cfg Config) (*Server, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:        c,
		log:        c.Logger,
		index:      topic.NewIndex(),
		ctx:        ctx,
		cancel:     cancel,
		goroutines: newTracker(),
		start:      c.Now(),
		listeners:  make(map[net.Listener]*listenerState),
		conns:      make(map[*conn]struct{}),
		retained:   newRetainedQuota(&c),
		readBudget: &byteBudget{size: c.ReadBudget},
		persist:    c.Persistence,
		cluster:    c.Cluster,
	}
	if cp, ok := c.Cluster.(ClusterPersistence); ok {
		s.persist, s.clusterDurable = cp.Persistence(c.Persistence), true
	}
	s.lim.Store(newLiveLimits(limitsOf(&c), &c))
	s.authorizer = c.Authorizer
	if s.authorizer == nil {
		s.authorizer = AllowAll
		s.log.Warn("broker: no Authorizer: every client may publish and subscribe to every topic")
	}
	s.uniform, _ = s.authorizer.(UniformAuthorizer)
	s.authorizer = countedAuthorizer{s.authorizer, &s.stats}
	// After the Authorizer: a will whose time passed while the broker was
	// down is published (and authorized) during recovery.
	if s.persist != nil {
		if err := s.recover(); err != nil {
			cancel()
			return nil, fmt.Errorf("broker: recovering the stored state: %w", err)
		}
	}
	if c.IgnoreSessionOwner {
		s.log.Warn("broker: session owner check is off: any client that knows a client ID can resume that session, " +
			"receive its queued messages and disconnect its owner")
	}
	s.sysChanged()
	s.stamps.hold()
	return s, nil
}

// Serve accepts connections on ln until ctx is cancelled, Shutdown is
// called or ln fails. It closes ln when it returns, and returns
// ErrServerClosed after Shutdown or cancellation.
func (s *Server) Serve(ctx context.Context, ln net.Listener, lc ListenerConfig) error {
	st := &listenerState{
		name: lc.Name, allowAnonymous: lc.AllowAnonymous, maxConns: lc.MaxConnections, certWatcher: lc.CertWatcher,
		maxQoS: 2, aliasMax: s.cfg.TopicAliasMaximum, refuseEmptyID: lc.RefuseZeroLengthClientID,
		idPrefix: lc.AutoIDPrefix, usernameAsID: lc.UseUsernameAsClientID,
	}
	if st.name == "" {
		st.name = ln.Addr().String()
	}
	st.anonOwner, st.authOwner = "anon:"+st.name, "auth:"+st.name
	if lc.MaxQoS != nil {
		if *lc.MaxQoS > 2 {
			ln.Close()
			return fmt.Errorf("broker: listener %s: MaxQoS %d out of range 0..2", st.name, *lc.MaxQoS)
		}
		st.maxQoS = *lc.MaxQoS
	}
	if lc.TopicAliasMaximum != nil {
		if a := *lc.TopicAliasMaximum; a < 0 || a > 65535 {
			ln.Close()
			return fmt.Errorf("broker: listener %s: TopicAliasMaximum %d out of range 0..65535", st.name, a)
		}
		st.aliasMax = *lc.TopicAliasMaximum
	}
	if st.idPrefix == "" {
		st.idPrefix = "auto-"
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = st
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	// ln is closed when ctx ends; Serve returns only after that call
	// did, so that it leaves no goroutine behind.
	lnClosed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(lnClosed)
		ln.Close()
	})
	defer func() {
		if !stop() {
			<-lnClosed
		}
	}()

	s.log.Info("broker: listening", "listener", st.name, "address", ln.Addr().String())
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || ctx.Err() != nil {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("broker: accept failed; retrying", "listener", st.name, "err", err, "retry_in", backoff)
				if !s.wait(backoff, ctx.Done(), s.ctx.Done()) {
					return ErrServerClosed
				}
				continue
			}
			return err
		}
		backoff = 0
		if !s.admit(st) {
			s.stats.connRejected.Add(1)
			s.log.Warn("broker: connection limit reached; connection refused", "listener", st.name, "remote", nc.RemoteAddr().String())
			nc.Close()
			continue
		}
		obs, ok := s.observe(st, nc)
		if !ok {
			continue
		}
		c := s.newConn(nc, st)
		c.obs = obs
		c.src.mark, _ = obs.(ReadMarker)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			s.release(st)
			c.obs.Closed(&c.client, false, false)
			continue
		}
		c.tracked = true
		s.conns[c] = struct{}{}
		// Started under mu: Shutdown sets closed under mu before it
		// waits, so it either waits for this goroutine or kills c first.
		s.goroutines.goTracked(goConnect, c.serve)
		s.mu.Unlock()
	}
}

// untrack is the server's bookkeeping when a connection the accept loop
// tracked is fully cleaned up: it leaves Server.conns and gives back its
// listener's slot.
func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.release(c.lst)
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// admit reserves a connection slot on st, honouring both caps.
func (s *Server) admit(st *listenerState) bool {
	if n, max := s.conns0.Add(1), s.limits().MaxConnections; max > 0 && n > int64(max) {
		s.conns0.Add(-1)
		return false
	}
	if n := st.active.Add(1); st.maxConns > 0 && n > int64(st.maxConns) {
		st.active.Add(-1)
		s.conns0.Add(-1)
		return false
	}
	return true
}

func (s *Server) release(st *listenerState) {
	st.active.Add(-1)
	s.conns0.Add(-1)
}

// Shutdown stops accepting connections, disconnects every client (v5
// clients get DISCONNECT 0x8B) and waits for every goroutine the server
// started. If ctx ends first, it closes every connection's socket at once
// and returns an error that wraps ctx.Err() and counts the goroutines
// still running by kind; they end by themselves, and calling Shutdown
// again waits for them. Safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.cancel()
	s.stamps.drop()
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.kill(packet.ServerShuttingDown, "server shutting down")
		c.stopDrain()
	}
	s.parked.close()
	idle := s.goroutines.close()
	select {
	case <-idle:
		s.stopTimers()
		return nil
	case <-ctx.Done():
	}
	for _, c := range conns {
		c.nc.Close()
	}
	s.stopTimers()
	select {
	case <-idle:
		return nil
	default:
	}
	running := s.goroutines.running()
	if running == "" {
		running = "none but the last one returning"
	}
	return fmt.Errorf("broker: shutdown did not finish before its context ended (%w): still running %s; "+
		"a connection is usually stuck in an Authenticator or Authorizer call, or the context allowed too little time",
		ctx.Err(), running)
}

// stopTimers stops session expiry and will timers after shutdown.
func (s *Server) stopTimers() {
	s.sessions.Range(func(_, v any) bool {
		sess := v.(*session)
		sess.mu.Lock()
		if sess.expiryTimer != nil {
			sess.expiryTimer.Stop()
		}
		if sess.willTimer != nil {
			sess.willTimer.Stop()
		}
		if sess.gate.timer != nil {
			sess.gate.timer.Stop()
		}
		sess.mu.Unlock()
		return true
	})
}

func (s *Server) closing() bool { return s.ctx.Err() != nil }

// assignClientID makes a unique identifier for a client that sent none.
func (s *Server) assignClientID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func (s *Server) lookup(id string) *session {
	v, ok := s.sessions.Load(id)
	if !ok {
		return nil
	}
	return v.(*session)
}

// attach binds c to its session: it takes over a live connection of the
// same client, resumes or discards the old session as Clean Start says,
// and queues CONNACK and the resends. It returns the session and whether
// it was present, or, when the client ID belongs to another identity's
// session (see ownerCheck), no session and the reason for refusing the
// client; nothing was changed then.
func (s *Server) attach(c *conn, st *connectState) (*session, bool, string) {
	id := st.clientID
	for {
		s.sessMu.Lock()
		old := s.lookup(id)
		foreign := false // old belongs to another identity and is to be ended
		if old != nil {
			var refusal string
			foreign, refusal = s.ownerCheck(c, st, old)
			if refusal != "" {
				s.sessMu.Unlock()
				return nil, false, refusal
			}
			old.mu.Lock()
			oc := old.conn
			old.mu.Unlock()
			if oc != nil {
				s.sessMu.Unlock()
				// [MQTT-3.1.4-3]: take over the existing connection.
				oc.log.Info("broker: session taken over by a new connection", "remote_new", c.nc.RemoteAddr().String(),
					"other_identity", foreign)
				oc.takenOver.Store(true)
				oc.kill(packet.SessionTakenOver, "session taken over")
				if s.wait(s.connectTimeout(), oc.done, nil) {
					oc.nc.Close()
					<-oc.done
				}
				continue
			}
		}
		var endedWill func()
		if old != nil && (st.pkt.CleanStart || foreign) {
			endedWill = s.endSessionLocked(old)
			old = nil
		}
		sess, present := old, old != nil
		if sess == nil {
			sess = newSession(id, st.owner, s.cfg.Now())
			s.sessions.Store(id, sess)
			s.sessionCount.Add(1)
		}
		sess.mu.Lock()
		if sess.expiryTimer != nil {
			sess.expiryTimer.Stop()
			sess.expiryTimer = nil
		}
		if sess.willTimer != nil {
			// [MQTT-3.1.3-9]: a new connection before the will delay
			// ends cancels the will.
			sess.willTimer.Stop()
			sess.willTimer, sess.willMsg, sess.willFrom = nil, nil, nil
			if s.persisting(sess) {
				s.persistAsync(Change{Kind: ChangeDeleteWill, ClientID: sess.id})
			}
		}
		// A new connection starts with a clean slate. But a session that
		// awaited this client after a cluster claim keeps the publishers
		// it holds in line: let go at once, each would find the queue as
		// full as it left it and, under QueueDrop, lose a message there.
		// They go on as the client drains it.
		if !sess.resuming {
			sess.releaseGateLocked()
		}
		sess.conn = c
		sess.awayPaced = false
		sess.expiry = st.expiry
		if s.persist != nil && st.expiry != 0 && !sess.stored {
			sess.stored, sess.subList = true, make(map[string]StoredSubscription)
		}
		c.liveWill = s.liveWill(c, st, s.persisting(sess))
		if s.persisting(sess) {
			// Submitted before any delivery to the session can be;
			// CONNACK waits for it (awaitSessionStored), and for the
			// connection's will kept in the cluster with it.
			c.sessStored = make(chan error, 1)
			changes := []Change{{Kind: ChangePutSession, Session: s.storedSessionLocked(sess, c.version, false)}}
			if c.liveWill != nil {
				changes = append(changes, Change{Kind: ChangePutWill, Will: c.liveWill})
			}
			s.persist.Persist(changes, func(err error) { c.sessStored <- err })
		} else if c.liveWill != nil {
			s.persistAsync(Change{Kind: ChangePutWill, Will: c.liveWill})
		}
		sess.inflightLimit = s.limits().MaxInflight
		sess.maxPacket = 0
		if c.version == packet.V5 {
			if rm := st.pkt.Properties.ReceiveMaximum; st.pkt.Properties.Has(packet.PropReceiveMaximum) && int(rm) < sess.inflightLimit {
				sess.inflightLimit = int(rm)
			}
			if st.pkt.Properties.Has(packet.PropMaximumPacketSize) {
				sess.maxPacket = st.pkt.Properties.MaximumPacketSize
			}
		}
		c.sess = sess
		sess.client = c.client.snapshot(true)
		c.connack(st, present)
		c.established.Store(true)
		if present {
			sess.resendLocked(c)
			sess.fillLocked(s)
		}
		if sess.resuming && !sess.fullLocked(s) {
			sess.resuming = false
		}
		sess.mu.Unlock()
		s.sessMu.Unlock()
		if endedWill != nil {
			endedWill()
		}
		if s.cluster != nil {
			s.cluster.Connected(id, st.owner.key)
		}
		return sess, present, ""
	}
}

// ownerCheck decides whether the client connecting on c with st may use
// the session old, which holds its client ID. A session belongs to the
// identity that created it: another identity may neither resume it nor
// take over its connection, or it would receive the owner's queued
// messages and could keep the owner offline. Two cases end the old
// session instead (foreign is true; it is never resumed): the
// Authenticator proved the client's right to the client ID (a certificate
// binding), or an authenticated client meets an anonymous owner's session,
// which otherwise would let an anonymous client reserve a device's client
// ID before the device connects. Otherwise a different identity is
// refused with the reason returned. The caller holds sessMu.
func (s *Server) ownerCheck(c *conn, st *connectState, old *session) (foreign bool, refusal string) {
	if s.cfg.IgnoreSessionOwner || old.owner == st.owner {
		return false, ""
	}
	var why string
	switch {
	case st.idBound:
		why = "the client ID is bound to the new client's certificate"
	case st.owner.verified && !old.owner.verified:
		why = "an authenticated client replaces an anonymous session"
	default:
		c.log.Warn("broker: client ID in use by another identity; connection refused",
			"owner", old.owner.String(), "identity", st.owner.String())
		return false, "client identifier in use by another identity"
	}
	c.log.Warn("broker: session of another identity ended", "reason", why,
		"owner", old.owner.String(), "identity", st.owner.String())
	return true, ""
}

// endSessionLocked removes an offline session; the caller holds sessMu.
// It returns a function to run once sessMu is released, or nil: it
// publishes the session's pending will (a session that ends sends its
// delayed will at once [MQTT-3.1.3-9]) and hands the messages the session
// still held for shared subscriptions to other members of their groups.
func (s *Server) endSessionLocked(sess *session) func() {
	if s.sessions.CompareAndDelete(sess.id, sess) {
		s.sessionCount.Add(-1)
		if s.persisting(sess) {
			s.persistAsync(Change{Kind: ChangeDeleteSession, ClientID: sess.id})
		}
		if s.cluster != nil {
			s.clusterSessionEnded(sess)
		}
	}
	s.unsubscribeAll(sess.id)
	sess.mu.Lock()
	defer sess.mu.Unlock()
	sess.ended = true
	if sess.expiryTimer != nil {
		sess.expiryTimer.Stop()
		sess.expiryTimer = nil
	}
	// A shared subscription's message that this client did not
	// acknowledge goes to another member [MQTT 5.0 §4.8.2]; one the client
	// refused with an error code was already discarded [MQTT-4.8.2-6], and
	// a QoS 2 message it has received (PUBREL stage) stays delivered.
	var orphans []*delivery
	for _, list := range [][]*delivery{sess.inflight, sess.queue.items()} {
		for _, d := range list {
			if d.share != nil && !d.released {
				orphans = append(orphans, d)
			}
		}
	}
	s.stats.queued.Add(-int64(sess.queue.len()))
	s.stats.droppedSessionEnd.Add(lostWithSession(sess.queue.items(), sess.inflight))
	sess.queue.reset()
	sess.inflight, sess.queueBytes = nil, 0
	sess.releaseGateLocked()
	gates := sess.takeGatesLocked()
	var willMsg *Message
	var willFrom *Client
	if sess.willTimer != nil && sess.willTimer.Stop() {
		willMsg, willFrom = sess.willMsg, sess.willFrom
		sess.willTimer, sess.willMsg, sess.willFrom = nil, nil, nil
	}
	if willMsg == nil && orphans == nil && gates == nil {
		return nil
	}
	return func() {
		finishGates(gates)
		if willMsg != nil {
			s.publishWill(willMsg, willFrom)
		}
		s.redistribute(orphans)
	}
}

// redistribute delivers messages of an ended session's shared
// subscriptions to the other members of the same groups.
func (s *Server) redistribute(orphans []*delivery) {
	if len(orphans) == 0 || s.closing() {
		return
	}
	now := s.cfg.Now()
	mb := matchPool.Get().(*matchBuf)
	for _, d := range orphans {
		if d.msg.expired(now) {
			s.stats.expired.Add(1)
			continue
		}
		mb.subs, mb.groups = s.index.Match(d.msg.Topic, mb.subs[:0], mb.groups[:0])
		mb.enc.reset(d.msg, nil, clock{now: s.cfg.Now}, 1) // one receiver per group
		delivered := false
		for i := range mb.groups {
			g := &mb.groups[i]
			if g.Group != d.share.group || g.Filter != d.share.filter {
				continue
			}
			if sub, ok := g.PickRanked(s.memberRank(d.msg)); ok {
				delivered = s.deliverTo(&mb.enc, &sub, sub.QoS, sub.RetainAsPublished, idsOf(sub.ID), d.share, nil, nil)
			}
		}
		if !delivered {
			s.clusterHandOn(d) // a member on another node (cluster_shared.go)
		}
		clear(mb.subs)
		clear(mb.groups)
	}
	putMatchBuf(mb)
}

// detach runs when a connection ends: it unbinds the session, publishes or
// schedules the will, and ends or schedules the end of the session.
func (s *Server) detach(c *conn) {
	sess := c.sess
	var willMsg *Message
	var willDelay time.Duration
	closing := s.closing()
	if c.will != nil && !c.normalExit.Load() && !c.willElsewhere.Load() {
		willMsg = willMessage(c.will, c.client.ClientID, s.cfg.Now())
		if c.version == packet.V5 {
			willDelay = time.Duration(c.will.Properties.WillDelay) * time.Second
		}
	}
	from := c.client

	s.sessMu.Lock()
	sess.mu.Lock()
	if sess.conn != c {
		sess.mu.Unlock()
		s.sessMu.Unlock()
		return
	}
	sess.conn = nil
	sess.releaseGateLocked() // nobody waits for an offline session
	// Unless its client is on its way again (awaitClaim).
	sess.resuming = s.claims[sess.id] > 0
	expiry := sess.expiry
	sess.mu.Unlock()

	if expiry == 0 {
		if lw := c.liveWill; lw != nil && lw.Clean {
			// Discarded, or owed: then the cluster publishes it if its
			// removal of the will's record wins (another node may have
			// published it already: cluster_wills.go).
			if willMsg != nil && !closing {
				owed, msg := *lw, willMsg
				owed.Publish = func() { s.publishWill(msg, &from) }
				lw, willMsg = &owed, nil
			}
			s.persistAsync(Change{Kind: ChangeDeleteWill, ClientID: sess.id, Will: lw})
		}
		ended := s.endSessionLocked(sess)
		s.sessMu.Unlock()
		if willMsg != nil {
			s.publishWill(willMsg, &from)
		}
		if ended != nil {
			ended()
		}
		return
	}
	sess.mu.Lock()
	if expiry > 0 && !closing {
		sess.expiryTimer = s.afterFunc(expiry, func() { s.expire(sess) })
	}
	if willMsg != nil {
		if expiry > 0 && willDelay > expiry {
			willDelay = expiry
		}
		switch {
		case closing && s.persisting(sess):
			// The server's shutdown closed the connection: the will is
			// owed once its delay has run [MQTT-3.1.2-8], and the delay
			// runs on across the restart from the stored deadline
			// (recover), unless the client comes back first.
			s.persistAsync(Change{Kind: ChangePutWill, Will: &StoredWill{ClientID: sess.id,
				FireAt: s.cfg.Now().Add(willDelay), Owner: sess.owner.key, Message: willMsg,
				Publisher: storedPublisher(&from)}})
			willMsg = nil
		case closing:
			// Without a store the will cannot outlive the server, and
			// none is published during its own shutdown.
			willMsg = nil
		case willDelay > 0:
			sess.willMsg, sess.willFrom = willMsg, &from
			sess.willTimer = s.afterFunc(willDelay, func() { s.delayedWill(sess) })
			if s.persisting(sess) {
				s.persistAsync(Change{Kind: ChangePutWill, Will: &StoredWill{ClientID: sess.id,
					FireAt: s.cfg.Now().Add(willDelay), Owner: sess.owner.key, Message: willMsg,
					Publisher: storedPublisher(&from)}})
			}
			willMsg = nil
		}
	}
	if c.liveWill != nil && (willMsg != nil || c.normalExit.Load() || closing && !s.persisting(sess)) {
		// The will stored in the cluster with the connection is published
		// below or discarded; a delayed one replaced it above.
		s.persistAsync(Change{Kind: ChangeDeleteWill, ClientID: sess.id, Will: c.liveWill})
	}
	if s.persisting(sess) {
		s.persistAsync(Change{Kind: ChangePutSession, Session: s.storedSessionLocked(sess, c.version, true)})
	}
	sess.mu.Unlock()
	s.sessMu.Unlock()
	if willMsg != nil {
		s.publishWill(willMsg, &from)
	}
}

// setExpiry applies a Session Expiry Interval sent in DISCONNECT.
func (s *Server) setExpiry(sess *session, secs uint32) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	switch {
	case secs == 0xFFFFFFFF:
		sess.expiry = neverExpires
	default:
		sess.expiry = time.Duration(secs) * time.Second
	}
	if pce := s.cfg.PersistentClientExpiration; pce > 0 && (sess.expiry == neverExpires || sess.expiry > pce) {
		sess.expiry = pce
	}
}

// expire ends an offline session whose expiry interval has passed.
func (s *Server) expire(sess *session) {
	s.sessMu.Lock()
	sess.mu.Lock()
	offline := sess.conn == nil
	sess.mu.Unlock()
	var will func()
	if offline && s.lookup(sess.id) == sess {
		s.log.Debug("broker: session expired", "client", sess.id)
		s.stats.sessionsExpired.Add(1)
		will = s.endSessionLocked(sess)
	}
	s.sessMu.Unlock()
	if will != nil {
		will()
	}
}

func (s *Server) delayedWill(sess *session) {
	sess.mu.Lock()
	msg, from := sess.willMsg, sess.willFrom
	sess.willTimer, sess.willMsg, sess.willFrom = nil, nil, nil
	online := sess.conn != nil
	if msg != nil && s.persisting(sess) {
		s.persistAsync(Change{Kind: ChangeDeleteWill, ClientID: sess.id})
	}
	sess.mu.Unlock()
	if msg != nil && !online {
		s.publishWill(msg, from)
	}
}

func willMessage(w *packet.Will, from string, now time.Time) *Message {
	p := &packet.Publish{Topic: w.Topic, Payload: w.Payload, QoS: w.QoS, Retain: w.Retain, Properties: w.Properties}
	return newMessage(p, from, now)
}

// publishWill authorizes and routes a will message.
func (s *Server) publishWill(msg *Message, from *Client) {
	if s.closing() {
		return
	}
	if strings.HasPrefix(msg.Topic, "$SYS") {
		return
	}
	if d := s.authorize(from, ActionPublish, msg.Topic, msg.QoS, msg.Retain, ""); !d.Allow {
		s.denied(from, ActionPublish, msg.Topic, d, "will")
		return
	}
	// The will's Message Expiry Interval runs from the moment it is
	// published, not from the disconnection [MQTT 5.0 §3.1.3.2.4].
	now := s.cfg.Now()
	if !msg.Expires.IsZero() {
		msg.Expires = msg.Expires.Add(now.Sub(msg.Created))
	}
	msg.Created = now
	s.log.Debug("broker: publishing will", "client", from.ClientID, "topic", msg.Topic)
	if s.persist != nil && msg.QoS > 0 {
		msg.id = s.persist.NewID()
	}
	// Published now, as far as subscriptions are concerned (fence.go).
	msg.arrived = time.Now().UnixNano()
	shard := s.recent.shardFor()
	if msg.Retain {
		// Over a retained limit the will is still delivered.
		msg.Publisher = from.publisherSnapshot()
		s.recent.reserve(shard, msg)
		if s.retainFrom(msg, from) && s.persist != nil {
			s.persistAsync(retainChange(msg, retainedOwner(from)))
		}
	}
	s.recent.add(shard, msg)
	s.deliver(msg, nil)
	s.clusterForward(msg)
}

func (s *Server) queueFull(id string, d *delivery) {
	n := s.stats.droppedQueueFull.Add(1)
	// Log the first drop and then every 1000th, so a flood cannot flood
	// the log too.
	if n == 1 || n%1000 == 0 {
		s.log.Warn("broker: session queue full; message dropped", "client", id, "topic", d.msg.Topic, "qos", d.qos,
			"max_queued", s.limits().MaxQueued, "max_queued_bytes", s.limits().MaxQueuedBytes, "dropped_total", n)
	}
}

// matchBuf is reused across publishes to keep routing allocation-free:
// the matches of one topic and the shared encodings of one message.
type matchBuf struct {
	subs   []topic.Subscription
	groups []topic.SharedGroup
	enc    encSet
}

var matchPool = sync.Pool{New: func() any { return new(matchBuf) }}

// putMatchBuf returns mb to the pool without the references of its last
// pass.
func putMatchBuf(mb *matchBuf) {
	clear(mb.subs)
	clear(mb.groups)
	mb.subs, mb.groups = mb.subs[:0], mb.groups[:0]
	mb.enc.release()
	matchPool.Put(mb)
}

// publish stores (if retained) and routes msg to every matching session.
// It returns the number of matching sessions, counting those for which
// the message was dropped (an offline session and QoS 0, a full queue):
// 0 means there was no subscriber at all (PUBACK 0x10).
func (s *Server) publish(msg *Message) int {
	if msg.Retain {
		s.retained.retain(msg, "")
	}
	return s.deliver(msg, nil)
}

// retainFrom stores or clears msg as a retained message on behalf of the
// client c, within the retained limits. It returns false, after logging
// and counting, when a limit refused it.
func (s *Server) retainFrom(msg *Message, c *Client) bool {
	owner := retainedOwner(c)
	reason := s.retained.retain(msg, owner)
	if reason == "" {
		s.clusterRetained(msg)
		return true
	}
	n := s.retained.refused.Add(1)
	// Every refusal is logged; the first and every 1000th at warn level,
	// so that a flood cannot flood the log as well.
	level := slog.LevelDebug
	if n == 1 || n%1000 == 0 {
		level = slog.LevelWarn
	}
	s.log.Log(s.ctx, level, "broker: retained message refused", "client", c.ClientID, "identity", owner, "topic", msg.Topic,
		"size", len(msg.Payload), "reason", reason, "refused_total", n)
	return false
}

// deliver routes msg to every matching session; see publish. The changes
// for stored sessions go into b, or are submitted at once when b is nil.
func (s *Server) deliver(msg *Message, b *pbatch) int {
	return s.deliverFrom(msg, b, nil)
}

// deliverFrom is deliver run by the reader of from, the publisher's
// connection, which may hold the receivers' writers back until it has
// routed the rest of its buffered input (conn.kickWriters). from, when
// not nil, is also told which subscribers it must wait for (from.pub,
// overload.go).
func (s *Server) deliverFrom(msg *Message, b *pbatch, from *conn) int {
	var pub *publisher
	if from != nil {
		pub = &from.pub
	}
	mb := matchPool.Get().(*matchBuf)
	mb.subs, mb.groups = s.index.Match(msg.Topic, mb.subs[:0], mb.groups[:0])
	mb.enc.reset(msg, from, clock{now: s.cfg.Now}, len(mb.subs)+len(mb.groups))
	n := s.route(&mb.enc, mb.subs, b, pub)
	if len(mb.groups) > 0 && s.clusterDeliversShared(msg) {
		// The cluster picks each group's node (cluster_shared.go).
		putMatchBuf(mb)
		return n
	}
	var rank func(*topic.Subscription) int
	if len(mb.groups) > 0 {
		rank = s.memberRank(msg)
	}
	for i := range mb.groups {
		g := &mb.groups[i]
		sub, ok := g.PickRanked(rank)
		if ok && s.deliverTo(&mb.enc, &sub, sub.QoS, sub.RetainAsPublished, idsOf(sub.ID), &shareKey{g.Group, g.Filter}, b, pub) {
			n++
		}
	}
	putMatchBuf(mb)
	return n
}

func idsOf(id uint32) []uint32 {
	if id == 0 {
		return nil
	}
	return []uint32{id}
}

// route delivers the message of es once per client, at the highest QoS
// of the client's matching subscriptions and with all their identifiers
// [MQTT-3.3.4-2] [MQTT-3.3.4-3]. pub is the publishing client, when
// routing its PUBLISH: it is told which subscribers it must wait for
// (overload.go).
func (s *Server) route(es *encSet, subs []topic.Subscription, b *pbatch, pub *publisher) int {
	msg := es.msg
	if len(subs) > 1 && !oneFilter(subs) {
		// A client can match through several filters: sorting by client
		// brings its subscriptions together. Subscriptions of one filter
		// belong to distinct clients, so a fan-out through a single
		// filter needs no sort.
		slices.SortFunc(subs, func(a, b topic.Subscription) int { return strings.Compare(a.ClientID, b.ClientID) })
	}
	var idBuf [4]uint32 // subscription identifiers of one client, usually at most one
	n := 0
	for i := 0; i < len(subs); {
		j := i + 1
		for j < len(subs) && subs[j].ClientID == subs[i].ClientID {
			j++
		}
		group := subs[i:j]
		i = j
		id := group[0].ClientID
		var qos byte
		rap, matched := false, false
		ids := idBuf[:0]
		for _, sub := range group {
			if sub.NoLocal && id == msg.From {
				// [MQTT-3.8.3-3]
				continue
			}
			matched = true
			qos = max(qos, sub.QoS)
			rap = rap || sub.RetainAsPublished
			if sub.ID != 0 {
				ids = append(ids, sub.ID)
			}
		}
		if matched && s.deliverTo(es, &group[0], qos, rap, ids, nil, b, pub) {
			n++
		}
	}
	return n
}

// oneFilter reports whether every subscription in subs (at least one)
// is to the same filter.
func oneFilter(subs []topic.Subscription) bool {
	f := subs[0].Filter
	for i := 1; i < len(subs); i++ {
		if subs[i].Filter != f {
			return false
		}
	}
	return true
}

// deliverChecked authorizes msg for the session's client cl and hands it
// to the session: the fence's replays and released deliveries (fence.go),
// which have no shared encodings.
func (s *Server) deliverChecked(sess *session, cl *Client, msg *Message, subQoS byte, retainAsPublished bool, ids []uint32, share *shareKey, b *pbatch) bool {
	return s.deliverCheckedOwed(sess, cl, msg, subQoS, retainAsPublished, ids, share, b, false)
}

// deliverCheckedOwed is deliverChecked for a delivery owed to the session
// (delivery.owed) when owed is set.
func (s *Server) deliverCheckedOwed(sess *session, cl *Client, msg *Message, subQoS byte, retainAsPublished bool, ids []uint32, share *shareKey, b *pbatch, owed bool) bool {
	if cl != nil {
		// Checked for every delivered message, offline sessions included
		// (their queued messages are checked again when sent).
		if d := s.authorize(cl, ActionReceive, msg.Topic, msg.QoS, msg.Retain, ""); !d.Allow {
			s.denied(cl, ActionReceive, msg.Topic, d, "delivery")
			return false
		}
	}
	d := &delivery{msg: msg, qos: min(msg.QoS, subQoS), retain: retainAsPublished && msg.Retain, subIDs: slices.Clone(ids), share: share, owed: owed}
	sess.deliver(s, d, b, nil)
	return true
}

// deliverTo hands the message of es to the session of sub's client, with
// the options given (those of all the client's matching subscriptions).
// It reports whether the session exists and may receive the message,
// whether or not it was then queued, sent or dropped. ids is copied,
// never kept. The session is the subscription's Owner, set when it was
// made, so that a fan-out does not look each subscriber up by client ID;
// a session that has ended meanwhile delivers nothing (session.offer).
func (s *Server) deliverTo(es *encSet, sub *topic.Subscription, subQoS byte, retainAsPublished bool, ids []uint32, share *shareKey, b *pbatch, pub *publisher) bool {
	sess, _ := sub.Owner.(*session)
	if sess == nil {
		if sess = s.lookup(sub.ClientID); sess == nil {
			return false
		}
	}
	return sess.offer(s, es, subQoS, retainAsPublished, ids, share, b, pub)
}
