package broker

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/topic"
)

// Sessions cluster-wide (docs/cluster.md, "Sessions"). A Cluster that
// implements SessionCluster keeps persistent sessions in the cluster's
// replicated state (through the Persistence it wraps, see
// ClusterPersistence): every change the broker commits for a session
// there is committed cluster-wide. Each session has one home, the node
// that serves it. A client connecting on another node makes that node
// the home before it is attached: the old home takes the connection over
// and gives the session up (ReleaseSession), and the new one imports it
// (ImportSession) with its subscriptions, queue, in-flight messages,
// inbound QoS 2 identifiers and pending will; the client gets Session
// Present 1. A node that starts imports the sessions whose home it is.

// SessionCluster is implemented by a Cluster that keeps persistent
// sessions cluster-wide.
type SessionCluster interface {
	// ClaimSession makes this node the home of claim.ClientID's session
	// before a client is attached to it, and imports the session
	// (Server.ImportSession) when another node held it. It may block
	// until ctx ends (the connect timeout); an error refuses the client
	// (a *ClaimRefused says why).
	ClaimSession(ctx context.Context, claim SessionClaim) error
}

// ClaimAttacher is implemented by a SessionCluster that must know when
// the client of a successful claim is attached to its session: until
// then, a session with no connection is no sign that its client left,
// and giving it up to another node's claim would attach the client to a
// session no node keeps.
type ClaimAttacher interface {
	// ClaimAttached is called once after each successful ClaimSession of
	// a Persistent claim, once the client is attached to its session
	// (or was refused after the claim).
	ClaimAttached(clientID string)
}

// SessionClaim describes the client about to be attached.
type SessionClaim struct {
	ClientID string
	// Discard: the client starts a new session (Clean Start), and an
	// existing one ends, its pending will cancelled.
	Discard bool
	// Persistent: the new session outlives its connection.
	Persistent bool
	// Owner judges an existing session's owner (its key and whether it
	// was verified) for this client as the broker does on one node:
	// discard when the client may end that session (it is then not
	// resumed), or a refusal.
	Owner func(owner string, verified bool) (discard bool, refusal string)
}

// ClusterSession is a persistent session as the cluster keeps it: the
// session with its deliveries and inbound identifiers, their messages by
// ID, and its pending will (nil: none).
type ClusterSession struct {
	Session  RecoveredSession
	Messages map[uint64]*Message
	Will     *StoredWill
	// Hold makes ImportSession hold back the deliveries routed to the
	// session until ReplayLocal, which the Cluster must then call.
	Hold bool
	// CatchUp, with Hold, tells that the Cluster goes on delivering the
	// durable messages of other nodes the session missed after the
	// import, at the pace its queue drains (DeliverToSession): until
	// LocalReplay.EndCatchUp, routing drops the deliveries of other
	// nodes' QoS 1/2 messages to the session's non-shared subscriptions
	// (the Cluster brings them, in order) and of QoS 0 messages (see
	// subFence.catchUp).
	CatchUp bool
}

// ClaimRefused is the error of a claim the client is refused for: its
// client ID belongs to another identity's session (not Unavailable), or
// the session cannot be handed over now (Unavailable: no quorum, or its
// home does not answer; CONNACK 0x88), Busy as well when this node has
// too much to do to take it now (CONNACK 0x89, Server busy).
type ClaimRefused struct {
	Reason      string
	Unavailable bool
	Busy        bool
}

func (e *ClaimRefused) Error() string { return "broker: session claim refused: " + e.Reason }

// claimClusterSession runs the cluster's claim for the client connecting
// on c. It returns a refusal (code and reason) or "", and, without a
// refusal, attached, which the caller runs once it attached the client
// (ClaimAttacher).
func (s *Server) claimClusterSession(ctx context.Context, c *conn, st *connectState) (_ packet.ReasonCode, _ string, attached func()) {
	attached = func() {}
	sc, ok := s.cluster.(SessionCluster)
	if !ok || (st.assignedID && st.expiry == 0) {
		return 0, "", attached // a fresh random ID without a session to keep
	}
	persistent := st.expiry != 0
	awaits := persistent && !st.pkt.CleanStart
	if awaits {
		s.awaitClaim(st.clientID)
	}
	err := sc.ClaimSession(ctx, SessionClaim{ClientID: st.clientID, Discard: st.pkt.CleanStart, Persistent: persistent,
		Owner: func(owner string, verified bool) (bool, string) {
			return s.ownerCheck(c, st, &session{owner: sessionOwner{key: owner, verified: verified}})
		}})
	if awaits {
		if err != nil {
			s.claimOver(st.clientID)
		} else {
			id := st.clientID
			attached = func() { s.claimOver(id) }
		}
	}
	if err != nil {
		var r *ClaimRefused
		if errors.As(err, &r) && !r.Unavailable {
			return packet.ClientIDNotValid, r.Reason, attached
		}
		if r != nil && r.Busy {
			c.log.Warn("broker: the cluster could not hand the session over now; connection refused", "err", err)
			return packet.ServerBusy, r.Reason, attached
		}
		c.log.Warn("broker: the cluster could not hand the session over; connection refused", "err", err)
		return packet.ServerUnavailable, "the session is not available in the cluster now; try again", attached
	}
	if ca, ok := sc.(ClaimAttacher); ok && persistent {
		id, after := st.clientID, attached
		attached = func() {
			ca.ClaimAttached(id)
			after()
		}
	}
	return 0, "", attached
}

// awaitClaim notes that a claim of id's persistent session, which the
// client resumes, is under way on this node, until claimOver: the
// session, here already or imported meanwhile, holds this node's
// publishers back while its queue is over its mark, and takes their
// messages past its limit rather than dropping them there
// (session.resuming), until its client is attached and its queue under
// its limit. Its client is about to take them: a claim's import fills
// the queue with what the session missed while it moved, and this
// node's own clients' messages that came then, before the attachment or
// just after it, found the queue full and were dropped (docs/cluster.md,
// "Full queues that still drop"). The claim is bounded by the connect
// timeout; once the client is attached, a client that takes nothing is
// slow and lets the publishers go, as on one node.
func (s *Server) awaitClaim(id string) {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	if s.claims == nil {
		s.claims = make(map[string]int)
	}
	s.claims[id]++
	if sess := s.lookup(id); sess != nil {
		sess.mu.Lock()
		sess.resuming = true
		sess.mu.Unlock()
	}
}

// AwaitClient notes that the client of id's persistent session may be
// on its way, to this node or to another one, as after this node's
// restart, when the Cluster imports the sessions its previous run kept
// while their clients reconnect wherever a node answers first: until
// done is called, the session (here already or imported meanwhile)
// holds this node's publishers back at its full queue as while a claim
// brings its client (awaitClaim), rather than dropping their messages
// there. A claim of the session on another node takes the queue with
// it; those messages are not in the cluster's stream when no other node
// wanted them. The Cluster bounds the wait: a client gone for good holds
// the publishers that long, once. done may be called more than once.
// Safe for concurrent use.
func (s *Server) AwaitClient(id string) (done func()) {
	s.awaitClaim(id)
	var once sync.Once
	return func() { once.Do(func() { s.claimOver(id) }) }
}

// claimOver ends a claim awaitClaim noted, once its client is attached
// or refused. When it was the last one of id and the session has no
// connection, it lets the publishers go, and the offline limits apply
// again; an attached session resumes until its queue has room
// (drainedLocked).
func (s *Server) claimOver(id string) {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	if n := s.claims[id] - 1; n > 0 {
		s.claims[id] = n
		return
	}
	delete(s.claims, id)
	if sess := s.lookup(id); sess != nil {
		sess.mu.Lock()
		if sess.resuming && sess.conn == nil {
			sess.resuming = false
			sess.releaseGateLocked()
		}
		sess.mu.Unlock()
	}
}

// ImportSession registers a persistent session the cluster hands over,
// offline, replacing a local copy (given up without its will or changes
// to the Persistence). Its expiry and will delay run from their stored
// deadlines; a session whose expiry passed ends at once (its will, if
// any, is published), and a will whose time passed is published. Safe
// for concurrent use.
func (s *Server) ImportSession(cs *ClusterSession) {
	now := s.cfg.Now()
	for id, m := range cs.Messages {
		m.id = id
	}
	ss := cs.Session.Session
	var will func()
	if w := cs.Will; w != nil {
		if w.Live {
			// The will of a connection its node died with: its delay
			// runs from now (LiveWillCluster).
			w.FireAt, w.Live = now.Add(w.Delay), false
		}
		if w.Publisher == nil {
			// Its client's rights cannot be checked (fail closed).
			s.log.Warn("broker: a session's will names no publisher; it is not published", "client", w.ClientID)
			s.persistAsync(Change{Kind: ChangeDeleteWill, ClientID: w.ClientID})
		} else {
			msg, from := w.Message, w.Publisher.client()
			msg.Publisher = nil
			will = func() { s.publishWill(msg, from) }
		}
	}
	s.sessMu.Lock()
	dropped := func() {}
	if old := s.lookup(ss.ClientID); old != nil {
		dropped = s.dropSessionLocked(old)
	}
	defer dropped()
	if ss.Expiry == 0 || !ss.ExpiresAt.IsZero() && !now.Before(ss.ExpiresAt) {
		s.sessMu.Unlock()
		s.log.Debug("broker: a session of the cluster expired before it was imported", "client", ss.ClientID)
		s.persistAsync(Change{Kind: ChangeDeleteSession, ClientID: ss.ClientID})
		if will != nil {
			s.persistAsync(Change{Kind: ChangeDeleteWill, ClientID: ss.ClientID})
			will()
		}
		return
	}
	sess := s.restoreSession(cs.Session, cs.Messages, now, cs.Hold)
	if s.claims[ss.ClientID] > 0 {
		// Imported for a claim of this node (awaitClaim).
		sess.mu.Lock()
		sess.resuming = true
		sess.mu.Unlock()
	}
	if cs.Hold && cs.CatchUp {
		// Set before the lock is released: the Cluster routes its
		// durable messages under a lock of its own held meanwhile, and
		// what else arrives until then is held back.
		sess.mu.Lock()
		sess.fence.catchUp = sess.plainFiltersLocked(s)
		sess.mu.Unlock()
	}
	if will != nil && now.Before(cs.Will.FireAt) {
		w := cs.Will
		sess.mu.Lock()
		sess.willMsg, sess.willFrom = w.Message, w.Publisher.client()
		sess.willTimer = s.afterFunc(w.FireAt.Sub(now), func() { s.delayedWill(sess) })
		sess.mu.Unlock()
		will = nil
	}
	s.sessMu.Unlock()
	if will != nil {
		s.persistAsync(Change{Kind: ChangeDeleteWill, ClientID: ss.ClientID})
		will()
	}
}

// SessionFilters returns the filters of the session of clientID's
// subscriptions that are not shared, each once: what a node giving the
// session up to another keeps forwarding its own clients' messages for
// while the session moves.
func (s *Server) SessionFilters(clientID string) []string {
	var out []string
	for _, sub := range s.index.Subscriptions(clientID) {
		if sub.Group == "" && (len(out) == 0 || out[len(out)-1] != sub.Filter) {
			out = append(out, sub.Filter)
		}
	}
	return out
}

// ReleaseSession gives up the session of clientID because another node
// became its home: a connection to it is taken over (DISCONNECT 0x8E for
// MQTT 5 [MQTT-3.1.4-3]) and detached as on one node, and the session is
// then removed from this node without its will (its new home keeps it)
// and without changes to the Persistence. It reports whether a session
// was removed, and whether a connection was attached to it (the QoS 0
// messages routed to it until then went to that connection, or were
// dropped with it). Safe for concurrent use.
func (s *Server) ReleaseSession(clientID string) (released, online bool) {
	for {
		s.sessMu.Lock()
		sess := s.lookup(clientID)
		if sess == nil {
			s.sessMu.Unlock()
			return false, online
		}
		sess.mu.Lock()
		oc := sess.conn
		sess.mu.Unlock()
		if oc == nil {
			dropped := s.dropSessionLocked(sess)
			s.sessMu.Unlock()
			dropped()
			return true, online
		}
		online = true
		s.sessMu.Unlock()
		oc.log.Info("broker: session taken over by a connection on another node")
		oc.takenOver.Store(true)
		oc.kill(packet.SessionTakenOver, "session taken over on another node")
		if s.wait(s.connectTimeout(), oc.done, nil) {
			oc.nc.Close()
			<-oc.done
		}
	}
}

// dropSessionLocked removes sess from this node only: its subscriptions
// leave the index, routing passes still holding it deliver nothing, its
// timers stop (the will is not published) and its messages are dropped
// here. The caller holds sessMu, and runs what it returns once it has
// released it.
func (s *Server) dropSessionLocked(sess *session) (after func()) {
	if s.sessions.CompareAndDelete(sess.id, sess) {
		s.sessionCount.Add(-1)
	}
	s.unsubscribeAll(sess.id)
	sess.mu.Lock()
	defer sess.mu.Unlock()
	sess.ended = true
	for _, t := range []Timer{sess.expiryTimer, sess.willTimer} {
		if t != nil {
			t.Stop()
		}
	}
	sess.expiryTimer, sess.willTimer, sess.willMsg, sess.willFrom = nil, nil, nil, nil
	s.stats.queued.Add(-int64(sess.queue.len()))
	sess.queue.reset()
	sess.inflight, sess.queueBytes = nil, 0
	sess.releaseGateLocked()
	gates := sess.takeGatesLocked()
	return func() { finishGates(gates) }
}

// matchOwn merges the subscriptions of the session id among subs that
// a message published by from reaches (not a No Local one of its own
// publisher, [MQTT-3.8.3-3]): the highest QoS granted, whether one asks
// for Retain As Published, the subscription identifiers, and whether
// any matched.
func matchOwn(subs []topic.Subscription, id, from string) (qos byte, rap bool, ids []uint32, matched bool) {
	for _, sub := range subs {
		if sub.ClientID != id || (sub.NoLocal && id == from) {
			continue
		}
		matched = true
		qos = max(qos, sub.QoS)
		rap = rap || sub.RetainAsPublished
		if sub.ID != 0 {
			ids = append(ids, sub.ID)
		}
	}
	return qos, rap, ids, matched
}

// CatchUpImported starts the catch-up of the session of clientID,
// imported with Hold and not yet released (LocalReplay.Deliver), as if
// it had been imported with CatchUp: for a Cluster whose reading of the
// messages to replay reached the room of the queue only after the
// import. It must hold the lock that orders its routing meanwhile. It
// reports false when the session is not here or holds nothing back.
func (s *Server) CatchUpImported(clientID string) bool {
	sess := s.lookup(clientID)
	if sess == nil {
		return false
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	f := sess.fence
	if sess.ended || f == nil || !f.holding || f.catchUp != nil {
		return false
	}
	f.catchUp = sess.plainFiltersLocked(s)
	return true
}

// plainFiltersLocked returns the session's non-shared filters (never
// nil): those the store keeps for a stored session, those of the index
// for another (whose lock is taken under s.mu, as nothing holds it
// while taking a session's). The caller holds s.mu.
func (s *session) plainFiltersLocked(srv *Server) []string {
	filters := []string{}
	if s.subList != nil {
		for key := range s.subList {
			if !strings.HasPrefix(key, packet.SharePrefix) {
				filters = append(filters, key)
			}
		}
		return filters
	}
	for _, sub := range srv.index.Subscriptions(s.id) {
		if sub.Group == "" {
			filters = append(filters, sub.Filter)
		}
	}
	return filters
}

// DeliverToSession delivers msg, a message of another node, to the
// session of clientID alone, through its own matching subscriptions
// (not shared ones), as DeliverRemoteDone does for every session: done
// runs once it is in the session and committed. For a cluster that hands
// a session the messages it missed while it moved. A session imported
// with Hold gets msg at once, ahead of the deliveries it holds back:
// what a moving session missed comes before what routing delivered to
// it during the import, and before the messages ReplayLocal finds, which
// arrived later [MQTT-4.6.0-6]. It reports whether a subscription of
// the session matched and the session may receive msg. Like a message
// routed to an offline session, msg is dropped at a full queue: the
// Cluster bounds what it replays by the queue's room.
func (s *Server) DeliverToSession(clientID string, msg *Message, done func(error)) bool {
	return s.deliverToSession(clientID, msg, false, done)
}

// DeliverOwedToSession is DeliverToSession for a message the session is
// owed whatever its queue holds: one of this node's own clients'
// messages, acknowledged to its publisher, that a moving session missed
// and no other reading brings it. It is queued past the queue's limit
// rather than dropped there (delivery.owed); the Cluster bounds how many
// it delivers so.
func (s *Server) DeliverOwedToSession(clientID string, msg *Message, done func(error)) bool {
	return s.deliverToSession(clientID, msg, true, done)
}

func (s *Server) deliverToSession(clientID string, msg *Message, owed bool, done func(error)) bool {
	if s.closing() {
		done(errShuttingDown)
		return false
	}
	sess := s.lookup(clientID)
	if sess == nil {
		done(nil)
		return false
	}
	if msg.Created.IsZero() {
		msg.Created = s.cfg.Now()
	}
	mb := matchPool.Get().(*matchBuf)
	mb.subs, mb.groups = s.index.Match(msg.Topic, mb.subs[:0], mb.groups[:0])
	qos, rap, ids, matched := matchOwn(mb.subs, clientID, msg.From)
	putMatchBuf(mb)
	if !matched {
		done(nil)
		return false
	}
	var b *pbatch
	if s.persist != nil && msg.QoS > 0 {
		msg.id = s.persist.NewID()
		b = &pbatch{}
	}
	sess.mu.Lock()
	cl := sess.client
	sess.mu.Unlock()
	ok := true
	if cl != nil {
		if d := s.authorize(cl, ActionReceive, msg.Topic, msg.QoS, msg.Retain, ""); !d.Allow {
			s.denied(cl, ActionReceive, msg.Topic, d, "delivery")
			ok = false
		}
	}
	if ok {
		// Not through the session's fence (session.offer): it would
		// hold msg back behind what routing delivered meanwhile.
		d := &delivery{msg: msg, qos: min(msg.QoS, qos), retain: rap && msg.Retain, subIDs: ids, owed: owed}
		sess.mu.Lock()
		if ok = !sess.ended; ok {
			sess.deliverLocked(s, d, b, nil, nil)
		}
		sess.mu.Unlock()
	}
	if b == nil {
		done(nil)
	} else {
		s.submitBatch(b, done)
	}
	return ok
}

// ReplayLocal delivers to the session of clientID, imported with Hold,
// the messages this node's own clients published since since (Unix
// nanoseconds) that the session's non-shared subscriptions match and
// that routing matched before they were in place, except those skip
// reports (the session holds them already, or the Cluster delivered
// them); then it releases the deliveries held back since the import, in
// order. It returns the number replayed. A Cluster moving a session to
// this node calls it, with since the moment its claim began: a message
// published here while the session was leaving its old node reached
// neither node (docs/cluster.md, "Sessions"). It is FindLocal and
// Deliver at once. Safe for concurrent use.
func (s *Server) ReplayLocal(clientID string, since int64, skip func(*Message) bool) int {
	return s.FindLocal(clientID, since).Deliver(skip)
}

// LocalReplay is the first half of ReplayLocal: the messages found for a
// session imported with Hold, to be delivered by Deliver.
type LocalReplay struct {
	s     *Server
	sess  *session
	f     *subFence
	cands []recentEntry
	now   int64 // when they were found
	// paced: made by a paced routing pass (PacedSession), for a session
	// that holds nothing back.
	paced bool
	// ended: EndCatchUp ran (written under sess.mu). It ends the catch-up
	// once: the fence may carry the session's next one by the time
	// Deliver runs (cluster_paced.go).
	ended bool
}

// FindLocal finds the messages ReplayLocal delivers, in the record of
// recent messages: the last recentWindow, or every arrival after since
// when a RecentPin made at or before since holds the record (then its
// Err tells whether one was dropped). A Cluster finds them as soon as
// the session is imported, releases its pin, and calls Deliver once it
// has delivered the messages it replays itself; the session holds back
// what routing delivers to it until Deliver. It returns nil when the
// session is not here or was not imported with Hold (Deliver on nil
// does nothing). Safe for concurrent use.
func (s *Server) FindLocal(clientID string, since int64) *LocalReplay {
	sess := s.lookup(clientID)
	if sess == nil {
		return nil
	}
	sess.mu.Lock()
	f := sess.fence
	var filters []string
	for key := range sess.subList {
		if !strings.HasPrefix(key, packet.SharePrefix) {
			filters = append(filters, key)
		}
	}
	sess.mu.Unlock()
	if f == nil {
		return nil
	}
	r := &LocalReplay{s: s, sess: sess, f: f, now: time.Now().UnixNano()}
	if len(filters) > 0 {
		old := r.now - recentWindow
		if s.recent.pinned(since) {
			old = 0
		}
		r.cands = s.recent.search(since, old, filters, nil)
		slices.SortFunc(r.cands, func(a, b recentEntry) int {
			return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.msg.recentID>>recentShardBits, b.msg.recentID>>recentShardBits))
		})
	}
	return r
}

// Found returns the messages FindLocal found, for a Cluster that looks
// them up before Deliver.
func (r *LocalReplay) Found() []*Message {
	if r == nil {
		return nil
	}
	msgs := make([]*Message, len(r.cands))
	for i, e := range r.cands {
		msgs[i] = e.msg
	}
	return msgs
}

// Held returns the messages of this node's own clients that the session
// holds back since its import: matched to it once it was here, they
// reached it live and are delivered by Deliver, in order. A Cluster
// that replays this node's messages forwarded while the session moved
// leaves these out; the others were matched before the import, when it
// was not here (WaitRouted). Safe for concurrent use.
func (r *LocalReplay) Held() []*Message {
	if r == nil || r.paced {
		return nil
	}
	r.sess.mu.Lock()
	defer r.sess.mu.Unlock()
	var msgs []*Message
	for _, h := range r.f.held {
		if !h.msg.remote {
			msgs = append(msgs, h.msg)
		}
	}
	return msgs
}

// QueueRoom tells, for a session imported with CatchUp, how many
// messages and bytes (-1: no byte limit) its queue can take now, how
// many deliveries it holds back, whether a client is connected to it,
// and whether it is still this node's session (not ended, replaced or
// given up; a server shutting down keeps it, with no room). Safe for
// concurrent use.
func (r *LocalReplay) QueueRoom() (room int, roomBytes int64, held int, online, here bool) {
	if r == nil {
		return 0, 0, 0, false, false
	}
	s, sess := r.s, r.sess
	if s.closing() {
		// Its sessions stay in the cluster: here, with no room, until
		// the Cluster closes too.
		return 0, 0, 0, false, true
	}
	lim := s.limits()
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sess.ended || s.lookup(sess.id) != sess {
		return 0, 0, 0, false, false
	}
	room = max(lim.MaxQueued-sess.queue.len(), 0)
	roomBytes = -1
	if lim.MaxQueuedBytes > 0 {
		roomBytes = max(lim.MaxQueuedBytes-sess.queueBytes, 0)
	}
	online = sess.conn != nil && !sess.conn.closing.Load()
	return room, roomBytes, len(r.f.held), online, true
}

// EndCatchUp ends the catch-up of a session imported with CatchUp:
// routing delivers to it again (held back until Deliver). The Cluster
// calls it under the lock that orders its routing, once it delivered
// every message it routed before. It returns the number of QoS 0
// deliveries dropped meanwhile. Only its first call acts: once the lock
// is let go, a routing pass may start the session's next paced catch-up
// on the same fence (paceLocked), which a later call, Deliver's among
// them, must leave standing, or routing would deliver live what that
// catch-up reads from the stream, ahead of older messages and twice.
// Safe for concurrent use.
func (r *LocalReplay) EndCatchUp() (skipped int) {
	if r == nil {
		return 0
	}
	r.sess.mu.Lock()
	defer r.sess.mu.Unlock()
	if r.ended {
		return 0
	}
	r.ended = true
	skipped = r.f.skipped
	r.f.catchUp, r.f.skipped, r.f.paced = nil, 0, false
	return skipped
}

// Deliver delivers the messages found, except those skip reports, and
// releases the deliveries the session held back since its import, in
// order (a catch-up still under way ends: EndCatchUp, unless it ended
// already). It returns the
// number delivered. Call it once.
func (r *LocalReplay) Deliver(skip func(*Message) bool) int {
	if r == nil {
		return 0
	}
	r.EndCatchUp()
	if r.paced {
		// Nothing was found or held back for it (cluster_paced.go).
		return 0
	}
	s, sess, f := r.s, r.sess, r.f
	n := 0
	for _, e := range r.cands {
		if e.msg.remote || e.msg.expired(s.cfg.Now()) || (skip != nil && skip(e.msg)) {
			continue
		}
		if s.replayToSession(sess, f, e.msg, e.at < r.now-recentWindow) {
			n++
		}
	}
	r.cands = nil
	for round := 0; ; round++ {
		sess.mu.Lock()
		held := f.held
		f.held = nil
		last := len(held) == 0 || round == maxReleaseRounds
		if last {
			f.holding = false
			f.until = max(f.until, time.Now().UnixNano()+recentWindow)
		}
		cl := sess.client
		sess.mu.Unlock()
		for _, h := range held {
			s.releaseHeld(sess, cl, h)
		}
		if last {
			return n
		}
	}
}

// replayToSession delivers m to sess through its matching non-shared
// subscriptions, as routing would have, unless routing delivered it
// (held by f) or it was replayed already. A message that arrived within
// the window may still be on its way through routing, which would
// deliver it again: the fence claims it. One that arrived earlier
// (settled) was routed long ago, and is not claimed, so that a claim
// that took long replays more messages than the fence can claim
// (maxFenceClaims). A message within the window that the full fence
// cannot claim is delivered all the same: twice, if routing is still
// delivering it, rather than not at all.
func (s *Server) replayToSession(sess *session, f *subFence, m *Message, settled bool) bool {
	mb := matchPool.Get().(*matchBuf)
	defer func() {
		clear(mb.subs)
		clear(mb.groups)
		mb.subs, mb.groups = mb.subs[:0], mb.groups[:0]
		matchPool.Put(mb)
	}()
	mb.subs, mb.groups = s.index.Match(m.Topic, mb.subs[:0], mb.groups[:0])
	qos, rap, ids, matched := matchOwn(mb.subs, sess.id, m.From)
	if !matched {
		return false
	}
	sess.mu.Lock()
	k := claimKey{id: m.recentID}
	ok := !f.isHeld(m, shareKey{}) && !f.has(k)
	if ok && !settled {
		f.claim(k, m.arrived)
	}
	cl := sess.client
	sess.mu.Unlock()
	if ok {
		s.deliverCheckedOwed(sess, cl, m, qos, rap, ids, nil, nil, true)
	}
	return ok
}
