package broker

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/moatmq/moat/internal/topic"
)

// When a subscription takes effect (docs/design/broker.md). A message
// published after a client's SUBSCRIBE reached the broker should reach the
// client, as it does with a broker that handles its sockets one after the
// other in arrival order. Moat reads each connection on its own goroutine,
// and the scheduler may well run the publisher's first: its message is
// then routed before the subscriber's reader has even read the SUBSCRIBE.
//
// Instead of ordering the readers, the subscriber repairs what it missed.
// Every routed message is noted with its arrival time in the record of
// recent messages (recent.go) before it is matched. Once a SUBSCRIBE's
// subscriptions are in the index, the record is searched for messages
// that match them and arrived after the SUBSCRIBE: those were published
// after it, and routing may have matched them before the subscriptions
// were there. They are delivered now, as routing would have (the same
// authorization, QoS, Retain As Published, subscription identifiers and
// No Local), unless they reached the session already:
//
//   - Through another subscription. When a subscription of the session
//     that this SUBSCRIBE did not make matches the message, routing
//     delivered the message through it (the subscription was in place when
//     the message was matched, or an earlier SUBSCRIBE's replay delivered
//     it, since the message arrived after that SUBSCRIBE too). A
//     subscription this SUBSCRIBE replaced, or one the client removed and
//     makes again while the fence stands, counts as another one.
//   - Through the new subscriptions themselves. From the first
//     subscription a SUBSCRIBE installs until its replays are done,
//     routed deliveries to the session are held back, in order: a message
//     routed through a new subscription is among them, and is not
//     replayed; the held ones are released after the replays, since they
//     are younger than any replayed one, so messages of one publisher on
//     one topic keep their order [MQTT-4.6.0-6]. A replayed message is
//     claimed, so that routing that matched it and is late to deliver it
//     drops it.
//
// A retained message sent from the store on subscription is claimed as
// such, so that routing does not deliver it live as well; one that is
// replayed or held is not sent from the store.
//
// A session's fence holds this state (under session.mu). It lasts
// recentWindow after the session's last SUBSCRIBE or UNSUBSCRIBE, as long
// as the record keeps a message. Routing pays for it a nil check per
// delivery, and for a session that has one a check of the fence.

// maxFenceClaims bounds the claims of one fence (replayed messages and
// retained messages sent, within recentWindow). A client that subscribes
// again and again while many messages arrive gets no further replays from
// this fence once it is reached (and a retained message sent from the
// store may then also come live, as without a fence).
const maxFenceClaims = 4096

// maxReleaseRounds bounds how often a SUBSCRIBE releases the deliveries
// held back while it released the previous ones: under a flood to the
// session it lets go after that many rounds, and the last ones released
// may then interleave with new deliveries.
const maxReleaseRounds = 64

// subFence is a session's fence. Guarded by session.mu.
type subFence struct {
	// until is when the fence lapses (Unix nanoseconds, arrival times).
	until int64
	// removed: subscriptions (group, filter) removed while the fence
	// stands.
	removed map[shareKey]struct{}
	// claims holds the recorded messages replayed or sent from the
	// retained store while the fence stands, with their arrival times.
	claims  map[claimKey]int64
	ids     map[uint64]int // claims per recentID, for routing's quick check
	pruneAt int
	latest  int64 // the latest arrival time claimed
	// full: claims reached maxFenceClaims; no further replays.
	full bool
	// holding: a SUBSCRIBE is installing and replaying; held are the
	// deliveries routed meanwhile, in order.
	holding bool
	held    []heldDelivery
	// catchUp, while set, are the non-shared filters of a session
	// imported from the cluster whose replay of the durable messages it
	// missed goes on after the import (the Cluster's catch-up,
	// ClusterSession.CatchUp): routing drops the deliveries to it that
	// the catch-up brings, in order, itself (the other nodes' QoS 1/2
	// messages on those filters), and its QoS 0 messages, which holding
	// back would keep in memory without bound; skipped counts the
	// latter. The session's own node's QoS 1/2 messages are held back
	// (their publishers' acknowledgements wait, heldGate), until the
	// catch-up ends (LocalReplay.Deliver).
	catchUp []string
	skipped int
	// paced: the catch-up is one a routing pass started for a connected
	// session whose queue was full (cluster_paced.go). Only the other
	// nodes' QoS 1/2 messages on catchUp are skipped then: this node's
	// own and QoS 0 messages are delivered as usual, and a SUBSCRIBE
	// releases what it held back itself.
	paced bool
}

// claimKey names one delivery of a recorded message to a session: the
// message's recentID, and the shared subscription it came through (zero
// for a non-shared one), or retained for a retained message sent from the
// store.
type claimKey struct {
	id       uint64
	share    shareKey
	retained bool
}

type heldDelivery struct {
	msg   *Message
	qos   byte
	rap   bool
	ids   []uint32
	share *shareKey
	// gate, when set, is the acknowledgement of the routing pass that
	// was held: it waits until this delivery, released, is durable.
	gate *heldGate
}

// heldGate makes the acknowledgement of a routing pass (a client's
// PUBACK or PUBREC, another node's stream or group acknowledgement) wait
// for a delivery a fence held back. Held, the delivery is in no batch of
// that pass: without the gate the publisher would be acknowledged before
// the delivery is stored, and a crash in between would lose a QoS 1/2
// message owed to a persistent session (a session moving to this node,
// or a subscription being installed again) that was acknowledged
// (docs/durability.md).
type heldGate struct {
	mu    sync.Mutex
	fired bool
	err   error
	then  func(error)
}

// finish reports that the held delivery is stored (or failed, or is no
// longer owed: its session ended). Only the first call counts.
func (g *heldGate) finish(err error) {
	g.mu.Lock()
	if g.fired {
		g.mu.Unlock()
		return
	}
	g.fired, g.err = true, err
	then := g.then
	g.mu.Unlock()
	if then != nil {
		then(err)
	}
}

// wait runs f once finish has been called (at once if it was).
func (g *heldGate) wait(f func(error)) {
	g.mu.Lock()
	if g.fired {
		err := g.err
		g.mu.Unlock()
		f(err)
		return
	}
	g.then = f
	g.mu.Unlock()
}

// gateJoin runs done once all its parts have finished, with the first
// error.
type gateJoin struct {
	mu    sync.Mutex
	parts int
	err   error
	done  func(error)
}

func (j *gateJoin) finish(err error) {
	j.mu.Lock()
	if err != nil && j.err == nil {
		j.err = err
	}
	j.parts--
	last := j.parts == 0
	err = j.err
	j.mu.Unlock()
	if last {
		j.done(err)
	}
}

// releaseHeld delivers one released held delivery to sess; one with a
// gate is stored in a batch of its own, whose durability finishes the
// gate.
func (s *Server) releaseHeld(sess *session, cl *Client, h heldDelivery) {
	if h.gate == nil {
		s.deliverCheckedOwed(sess, cl, h.msg, h.qos, h.rap, h.ids, h.share, nil, true)
		return
	}
	b := &pbatch{}
	s.deliverCheckedOwed(sess, cl, h.msg, h.qos, h.rap, h.ids, h.share, b, true)
	s.submitBatch(b, func(err error) {
		s.persistLogged(err)
		h.gate.finish(err)
	})
}

// takeGatesLocked removes the gates of the deliveries sess's fence
// holds, for a session that ends: nothing is owed any more. The caller
// holds sess.mu and finishes them once its locks are released.
func (sess *session) takeGatesLocked() []*heldGate {
	f := sess.fence
	if f == nil {
		return nil
	}
	var gates []*heldGate
	for i := range f.held {
		if g := f.held[i].gate; g != nil {
			gates = append(gates, g)
			f.held[i].gate = nil
		}
	}
	return gates
}

func finishGates(gates []*heldGate) {
	for _, g := range gates {
		g.finish(nil)
	}
}

func keyOf(share *shareKey) shareKey {
	if share == nil {
		return shareKey{}
	}
	return *share
}

// fenceLocked returns the session's fence, made anew when there is none
// or the old one has lapsed, and extends it to recentWindow from now. The
// caller holds sess.mu.
func (sess *session) fenceLocked(now int64) *subFence {
	f := sess.fence
	if f == nil || (now > f.until && !f.holding && f.catchUp == nil) {
		f = &subFence{}
		sess.fence = f
	}
	f.until = max(f.until, now+recentWindow)
	return f
}

// admit runs when routing is about to deliver msg to the session (the
// caller holds sess.mu). It reports false when the delivery is not to be
// made now: a replay or the retained store delivered msg already, or it is
// held back for a SUBSCRIBE in progress, which makes it later.
func (f *subFence) admit(sess *session, msg *Message, qos byte, rap bool, ids []uint32, share *shareKey) bool {
	if !f.holding && f.catchUp == nil && msg.arrived > f.until {
		sess.fence = nil // lapsed
		return true
	}
	if f.catchUp != nil && share == nil {
		// The catch-up reads the other nodes' durable messages from the
		// stream, oldest first: delivered live as well, they would come
		// twice, and ahead of older ones [MQTT-4.6.0-6]. A QoS 0
		// message is at most once: dropped rather than held without a
		// bound, as a full queue would drop it (a paced catch-up holds
		// nothing back: it is delivered).
		if msg.QoS == 0 {
			if !f.paced {
				f.skipped++
				return false
			}
		} else if msg.remote && matchesFilter(f.catchUp, msg.Topic) {
			return false
		}
	}
	if _, claimed := f.ids[msg.recentID]; claimed && msg.recentID != 0 {
		if f.has(claimKey{id: msg.recentID, share: keyOf(share)}) ||
			(share == nil && f.has(claimKey{id: msg.recentID, retained: true})) {
			return false
		}
	}
	if f.holding {
		f.held = append(f.held, heldDelivery{msg: msg, qos: qos, rap: rap, ids: slices.Clone(ids), share: share})
		return false
	}
	return true
}

// matchesFilter tells whether one of filters matches name.
func matchesFilter(filters []string, name string) bool {
	for _, f := range filters {
		if topic.MatchFilter(f, name) {
			return true
		}
	}
	return false
}

func (f *subFence) has(k claimKey) bool {
	_, ok := f.claims[k]
	return ok
}

// claim records k, forgetting claims older than the record keeps
// messages when the map has grown. It reports false, recording nothing,
// once the fence is full.
func (f *subFence) claim(k claimKey, at int64) bool {
	if f.full {
		return false
	}
	f.latest = max(f.latest, at)
	if n := len(f.claims); n >= f.pruneAt || n >= maxFenceClaims {
		old := f.latest - recentWindow
		for k, t := range f.claims {
			if t < old {
				delete(f.claims, k)
				if f.ids[k.id]--; f.ids[k.id] == 0 {
					delete(f.ids, k.id)
				}
			}
		}
		f.pruneAt = max(2*len(f.claims), 64)
		if len(f.claims) >= maxFenceClaims {
			f.full = true
			return false
		}
	}
	if f.claims == nil {
		f.claims = make(map[claimKey]int64)
		f.ids = make(map[uint64]int)
	}
	if _, dup := f.claims[k]; !dup {
		f.ids[k.id]++
	}
	f.claims[k] = at
	return true
}

// isHeld reports whether a delivery of msg through share is held back.
func (f *subFence) isHeld(msg *Message, share shareKey) bool {
	for _, h := range f.held {
		if h.msg == msg && keyOf(h.share) == share {
			return true
		}
	}
	return false
}

// fenceUnsubscribed runs after an UNSUBSCRIBE removed (group, filter).
func (c *conn) fenceUnsubscribed(group, filter string) {
	sess := c.sess
	sess.mu.Lock()
	f := sess.fenceLocked(time.Now().UnixNano())
	if f.removed == nil {
		f.removed = make(map[shareKey]struct{})
	}
	f.removed[shareKey{group, filter}] = struct{}{}
	sess.mu.Unlock()
}

// subscribeFence carries one SUBSCRIBE through the session's fence:
// beforeInstall and installed around every subscription put in the index,
// then scan, retainedDup for each retained message sent, and finish
// (deferred, so that held deliveries are released whatever happens).
// Only the connection's reader uses it.
type subscribeFence struct {
	c     *conn
	at    int64     // when the SUBSCRIBE arrived
	f     *subFence // nil until the first subscription is installed
	news  map[shareKey]struct{}
	cands []recentEntry
}

func (c *conn) beginSubscribe() *subscribeFence {
	return &subscribeFence{c: c, at: c.arrivalTime()}
}

// beforeInstall runs before a subscription is put in the index: from the
// first one on, routed deliveries to the session are held back.
func (sf *subscribeFence) beforeInstall() {
	if sf.f != nil {
		return
	}
	sess := sf.c.sess
	sess.mu.Lock()
	sf.f = sess.fenceLocked(time.Now().UnixNano())
	sf.f.holding = true
	sess.mu.Unlock()
}

// installed runs once sub is in the index for good; existed: it replaced
// a subscription of the same key.
func (sf *subscribeFence) installed(sub topic.Subscription, existed bool) {
	key := shareKey{sub.Group, sub.Filter}
	if _, again := sf.news[key]; existed && !again {
		return
	}
	sess := sf.c.sess
	sess.mu.Lock()
	_, removed := sf.f.removed[key]
	sess.mu.Unlock()
	if removed {
		return
	}
	if sf.news == nil {
		sf.news = make(map[shareKey]struct{})
	}
	sf.news[key] = struct{}{}
}

// scan finds the recorded messages the new subscriptions may have missed:
// those that match them and arrived after the SUBSCRIBE, oldest first.
func (sf *subscribeFence) scan() {
	if len(sf.news) == 0 {
		return
	}
	sess := sf.c.sess
	sess.mu.Lock()
	full := sf.f.full
	sess.mu.Unlock()
	if full {
		return
	}
	filters := make([]string, 0, len(sf.news))
	for k := range sf.news {
		filters = append(filters, k.filter)
	}
	sf.cands = sf.c.srv.recent.since(sf.at, time.Now().UnixNano(), filters, nil)
	slices.SortFunc(sf.cands, func(a, b recentEntry) int {
		return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.msg.recentID>>recentShardBits, b.msg.recentID>>recentShardBits))
	})
}

// retainedDup reports whether the retained message m is not to be sent
// from the store: it arrived after the SUBSCRIBE and is replayed live, or
// routing is delivering it live. Otherwise it notes that m is sent from
// the store, so that routing does not deliver it live as well.
func (sf *subscribeFence) retainedDup(m *Message) bool {
	if sf.f == nil || m.recentID == 0 || m.arrived < sf.at-recentWindow {
		// Not recorded, or routed long ago: routing cannot be
		// delivering it now.
		return false
	}
	for _, e := range sf.cands {
		if e.msg == m {
			return true
		}
	}
	sess := sf.c.sess
	sess.mu.Lock()
	defer sess.mu.Unlock()
	if sf.f.isHeld(m, shareKey{}) {
		return true
	}
	sf.f.claim(claimKey{id: m.recentID, retained: true}, m.arrived)
	return false
}

// finish replays the candidates the subscriptions missed, then releases
// the deliveries held back meanwhile and lets routing deliver again.
func (sf *subscribeFence) finish() {
	if sf.f == nil {
		return
	}
	s, sess := sf.c.srv, sf.c.sess
	for _, e := range sf.cands {
		sf.replay(e.msg)
	}
	for round := 0; ; round++ {
		sess.mu.Lock()
		if sf.f.catchUp != nil && !sf.f.paced {
			// The session's catch-up releases what is held once the
			// older messages are in (LocalReplay.Deliver).
			sess.mu.Unlock()
			return
		}
		held := sf.f.held
		sf.f.held = nil
		last := len(held) == 0 || round == maxReleaseRounds
		if last {
			sf.f.holding = false
			sf.f.until = max(sf.f.until, time.Now().UnixNano()+recentWindow)
		}
		cl := sess.client
		sess.mu.Unlock()
		for _, h := range held {
			s.releaseHeld(sess, cl, h)
		}
		if last {
			return
		}
	}
}

// replay delivers m to the session through its new subscriptions, unless
// it reached the session already.
func (sf *subscribeFence) replay(m *Message) {
	s, sess := sf.c.srv, sf.c.sess
	if m.expired(s.cfg.Now()) {
		return
	}
	mb := matchPool.Get().(*matchBuf)
	defer func() {
		clear(mb.subs)
		clear(mb.groups)
		matchPool.Put(mb)
	}()
	mb.subs, mb.groups = s.index.Match(m.Topic, mb.subs[:0], mb.groups[:0])
	id := sess.id

	// The session's non-shared subscriptions, combined as route does.
	var qos byte
	rap, matched, onlyNew := false, false, true
	var ids []uint32
	for _, sub := range mb.subs {
		if sub.ClientID != id {
			continue
		}
		if _, ok := sf.news[shareKey{filter: sub.Filter}]; !ok {
			onlyNew = false // another subscription matched: delivered through it
			break
		}
		if sub.NoLocal && id == m.From {
			continue // [MQTT-3.8.3-3]
		}
		matched = true
		qos = max(qos, sub.QoS)
		rap = rap || sub.RetainAsPublished
		if sub.ID != 0 {
			ids = append(ids, sub.ID)
		}
	}
	type sharedReplay struct {
		sub topic.Subscription
		key shareKey
	}
	var shared []sharedReplay
	f := sf.f

	sess.mu.Lock()
	cl := sess.client
	plain := onlyNew && matched && !f.has(claimKey{id: m.recentID, retained: true}) &&
		f.replayable(m, shareKey{})
	for i := range mb.groups {
		if s.clusterDeliversShared(m) {
			break // the cluster delivers it to the groups (cluster_shared.go)
		}
		g := &mb.groups[i]
		// Only a group the session alone belongs to missed the message:
		// otherwise another member received it.
		if len(g.Members) != 1 || g.Members[0].ClientID != id {
			continue
		}
		key := shareKey{g.Group, g.Filter}
		if _, ok := sf.news[key]; ok && f.replayable(m, key) {
			shared = append(shared, sharedReplay{g.Members[0], key})
		}
	}
	sess.mu.Unlock()

	if plain {
		s.deliverChecked(sess, cl, m, qos, rap, ids, nil, nil)
	}
	for _, r := range shared {
		s.deliverChecked(sess, cl, m, r.sub.QoS, r.sub.RetainAsPublished, idsOf(r.sub.ID), &r.key, nil)
	}
}

// replayable claims the delivery of m through share for a replay, unless
// routing is delivering it (held) or it was claimed already; it reports
// whether it did. The caller holds session.mu.
func (f *subFence) replayable(m *Message, share shareKey) bool {
	k := claimKey{id: m.recentID, share: share}
	if f.isHeld(m, share) || f.has(k) {
		return false
	}
	return f.claim(k, m.arrived)
}
