package broker

import (
	"cmp"
	"slices"
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
// after it, and if routing did not deliver them to the session they are
// delivered now, as routing would have (the same authorization, QoS, Retain
// As Published, subscription identifiers and No Local).
//
// A session's fence makes that exactly once and in order:
//
//   - Claims. While the fence stands, every delivery to the session of a
//     recorded message claims it (per shared subscription for shared
//     ones), whether routing or a replay makes it; the second claim of the
//     same message is a duplicate and is dropped. A retained message sent
//     from the store on subscription is claimed as such: routing does not
//     deliver it live a moment later, but a later SUBSCRIBE sends it from
//     the store again as the protocol asks [MQTT-3.8.4-3].
//   - New subscriptions. A replay is for subscriptions installed while the
//     fence stands. When the session had another matching subscription
//     before (installed before the fence, or removed and made again), the
//     message was delivered through it, perhaps before any claim was
//     taken; it is not replayed.
//   - Holding. From the first subscription a SUBSCRIBE installs until its
//     replays are done, routed deliveries to the session are held in
//     order and released after the replays: a message routed through the
//     new subscription is younger than any replayed one, and messages of
//     one publisher on one topic keep their order [MQTT-4.6.0-6].
//
// A fence lasts recentWindow after the session's last SUBSCRIBE or
// UNSUBSCRIBE; the record keeps messages no longer than that, so a
// subscription installed under an earlier fence was in the index when any
// message still recorded was routed. Routing pays for the fence only for
// sessions that have one: a claim (a map entry) per delivery.

// maxFenceClaims bounds the claims of one fence. A session that receives
// more messages than this within recentWindow of subscribing gets no
// further replays from this fence (what it missed stays missed, as it
// would without a fence), and its deliveries take claims only while a
// SUBSCRIBE holds them.
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
	// installed: subscriptions (group, filter) installed while the fence
	// stands; removed: older ones removed while it stands.
	installed map[shareKey]struct{}
	removed   map[shareKey]struct{}
	// claims holds the recorded messages delivered while the fence
	// stands, with their arrival times.
	claims  map[claimKey]int64
	pruneAt int
	latest  int64 // the latest arrival time claimed
	// full: claims reached maxFenceClaims; no further replays.
	full bool
	// holding: a SUBSCRIBE is installing and replaying; held are the
	// deliveries routed meanwhile, in order.
	holding bool
	held    []heldDelivery
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
	if f == nil || (now > f.until && !f.holding) {
		f = &subFence{}
		sess.fence = f
	}
	f.until = max(f.until, now+recentWindow)
	return f
}

// admit runs when routing is about to deliver msg to the session (the
// caller holds sess.mu). It reports false when the delivery is not to be
// made now: it is a duplicate, or it was held back for a SUBSCRIBE in
// progress, which makes it later.
func (f *subFence) admit(sess *session, msg *Message, qos byte, rap bool, ids []uint32, share *shareKey) bool {
	if !f.holding && msg.arrived > f.until {
		sess.fence = nil // lapsed
		return true
	}
	if msg.recentID != 0 {
		k := claimKey{id: msg.recentID, share: keyOf(share)}
		if _, dup := f.claims[k]; dup || (share == nil && f.sentRetained(msg)) {
			return false
		}
		if f.holding || !f.full {
			f.claim(k, msg.arrived)
		}
	}
	if f.holding {
		f.held = append(f.held, heldDelivery{msg: msg, qos: qos, rap: rap, ids: ids, share: share})
		return false
	}
	return true
}

// claim records k, forgetting claims older than the record keeps
// messages when the map has grown.
func (f *subFence) claim(k claimKey, at int64) {
	if f.claims == nil {
		f.claims = make(map[claimKey]int64)
	}
	f.claims[k] = at
	f.latest = max(f.latest, at)
	if len(f.claims) > f.pruneAt {
		old := f.latest - recentWindow
		for k, t := range f.claims {
			if t < old {
				delete(f.claims, k)
			}
		}
		f.full = f.full || len(f.claims) >= maxFenceClaims
		f.pruneAt = max(2*len(f.claims), 64)
	}
}

// tryClaim claims k unless it is claimed already, and reports whether it
// did.
func (f *subFence) tryClaim(k claimKey, at int64) bool {
	if _, dup := f.claims[k]; dup {
		return false
	}
	f.claim(k, at)
	return true
}

// sentRetained reports whether msg was sent from the retained store on a
// subscription while the fence stands.
func (f *subFence) sentRetained(msg *Message) bool {
	_, ok := f.claims[claimKey{id: msg.recentID, retained: true}]
	return ok
}

// install notes that key was put in the index (existed: it replaced a
// subscription of the same key) and reports whether it counts as new.
func (f *subFence) install(key shareKey, existed bool) bool {
	if _, gone := f.removed[key]; gone {
		return false
	}
	if _, ok := f.installed[key]; ok {
		return true
	}
	if existed {
		return false
	}
	if f.installed == nil {
		f.installed = make(map[shareKey]struct{})
	}
	f.installed[key] = struct{}{}
	return true
}

// uninstall notes that key was removed from the index.
func (f *subFence) uninstall(key shareKey) {
	if _, ok := f.installed[key]; ok {
		// Deliveries through it were claimed: made again, it is new.
		delete(f.installed, key)
		return
	}
	if f.removed == nil {
		f.removed = make(map[shareKey]struct{})
	}
	f.removed[key] = struct{}{}
}

// fenceUnsubscribed runs after an UNSUBSCRIBE removed (group, filter).
func (c *conn) fenceUnsubscribed(group, filter string) {
	sess := c.sess
	sess.mu.Lock()
	sess.fenceLocked(time.Now().UnixNano()).uninstall(shareKey{group, filter})
	sess.mu.Unlock()
}

// subscribeFence carries one SUBSCRIBE through the session's fence:
// beforeInstall and installed around every subscription put in the index,
// then scan, retainedDup for each retained message sent, and finish
// (deferred, so that held deliveries are released whatever happens).
type subscribeFence struct {
	c       *conn
	at      int64     // when the SUBSCRIBE arrived
	f       *subFence // nil until the first subscription is installed
	filters []string  // filters of the subscriptions new to the fence
	cands   []recentEntry
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

// installed runs once sub is in the index for good.
func (sf *subscribeFence) installed(sub topic.Subscription, existed bool) {
	sess := sf.c.sess
	sess.mu.Lock()
	isNew := sf.f.install(shareKey{sub.Group, sub.Filter}, existed)
	sess.mu.Unlock()
	if isNew {
		sf.filters = append(sf.filters, sub.Filter)
	}
}

// scan finds the recorded messages the new subscriptions may have missed:
// those that match them and arrived after the SUBSCRIBE, oldest first.
func (sf *subscribeFence) scan() {
	if sf.f == nil || len(sf.filters) == 0 {
		return
	}
	sess := sf.c.sess
	sess.mu.Lock()
	full := sf.f.full
	sess.mu.Unlock()
	if full {
		return
	}
	sf.cands = sf.c.srv.recent.since(sf.at, time.Now().UnixNano(), sf.filters, nil)
	slices.SortFunc(sf.cands, func(a, b recentEntry) int {
		return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.msg.recentID>>recentShardBits, b.msg.recentID>>recentShardBits))
	})
}

// retainedDup reports whether the retained message m is not to be sent
// from the store: it arrived after the SUBSCRIBE and is replayed live, or
// routing delivered it live already. Otherwise it notes that m is sent
// from the store, so that routing does not deliver it live as well.
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
	if _, live := sf.f.claims[claimKey{id: m.recentID}]; live {
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
			s.deliverChecked(sess, cl, h.msg, h.qos, h.rap, h.ids, h.share, nil)
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
	f := sf.f

	// The session's non-shared subscriptions, combined as route does.
	var qos byte
	rap, matched, all := false, false, true
	var ids []uint32
	type sharedReplay struct {
		sub topic.Subscription
		key shareKey
	}
	var shared []sharedReplay

	sess.mu.Lock()
	cl := sess.client
	for _, sub := range mb.subs {
		if sub.ClientID != id {
			continue
		}
		if _, ok := f.installed[shareKey{filter: sub.Filter}]; !ok {
			all = false // an older subscription matched: routing delivered it
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
	plain := all && matched && !f.sentRetained(m) && f.tryClaim(claimKey{id: m.recentID}, m.arrived)
	for i := range mb.groups {
		g := &mb.groups[i]
		// Only a group the session alone belongs to missed the message:
		// otherwise another member received it.
		if len(g.Members) != 1 || g.Members[0].ClientID != id {
			continue
		}
		key := shareKey{g.Group, g.Filter}
		if _, ok := f.installed[key]; !ok {
			continue
		}
		if f.tryClaim(claimKey{id: m.recentID, share: key}, m.arrived) {
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
