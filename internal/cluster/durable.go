package cluster

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/internal/broker"
)

// Durable QoS 1 and 2 between nodes (docs/cluster.md, "Durable QoS 1 and
// 2"). A QoS 1/2 message that another node may want goes into one
// replicated JetStream stream, moat_msgs, as part of its publisher's
// commit: the PUBACK or PUBREC waits for the stream's acknowledgement of
// the record holding it (messages are grouped into batch records,
// batch.go). Each node reads the stream through ONE durable consumer of
// its own (never one per subscription), delivers each message to its
// local sessions and acknowledges a record only once its messages are
// there and committed; a node that was down resumes where its consumer
// stopped. QoS 0 stays on core NATS (Forward).
//
// Which messages go into the stream: those with interest on another node,
// known from the other nodes' marker subscriptions (moat.i.<node>.<filter
// subject>, one per distinct filter, propagated by the NATS routes like
// the forwarding subscriptions), and every QoS 1/2 message while a node
// of the cluster is unreachable: its persistent sessions are owed them
// when it comes back. With an external NATS, whose interest the node
// cannot see, every QoS 1/2 message goes into the stream.
//
// A node counts as reachable while its presence marker (moat.i.<node>.up)
// is seen, not while its routes are up: it subscribes that marker only
// once its sessions are imported, after their filters' markers, and the
// marker vanishes with the others when the route that carried them
// closes (a node's routes close one after the other, and its interest
// went with the first). A node whose last local subscription of a filter
// ends keeps the filter's marker for markerLinger: a session moving to
// another node leaves no instant in which no node seems to want its
// messages (the new home replays what the stream got meanwhile).

const (
	streamMsgs    = "moat_msgs"
	durablePrefix = "moat.d."
	markerPrefix  = "moat.i."
	hdrSent       = "Moat-Sent" // Unix nanoseconds at publication, for the message expiry
	// presenceToken ends a node's presence marker; the tokens of topic
	// levels start with "_", so no filter's marker is the same subject.
	presenceToken = "up"
	// markerLinger is how long a filter's marker outlives the filter's
	// last local subscription (see above): far longer than the routes
	// take to carry the new home's marker.
	markerLinger = 10 * time.Second
)

// Defaults of the stream's limits.
const (
	defaultStreamMaxAge   = 24 * time.Hour
	defaultStreamMaxBytes = 1 << 30
)

// durableState is the Node's side of the durable stream.
type durableState struct {
	seq atomic.Uint64 // this run's publications to the stream

	// markers holds, per local filter, its marker subscriptions, and
	// lingering when each filter without local subscriptions drops them
	// (markerLinger); both guarded by Node.subMu. presence is this node's
	// presence marker, once its sessions are imported.
	markers   map[string][]*nats.Subscription
	lingering map[string]time.Time
	// linger, in tests, replaces markerLinger.
	linger time.Duration
	// givenUp holds, per filter of a session this node gave up to
	// another (handleRelease), the subscriptions that make this node
	// put its own clients' QoS 1/2 messages for it into the stream
	// (needsStream), and when; givenUpN counts them, so that
	// needsStream looks only while there are some. Guarded by
	// Node.subMu (givenUpN is read without it).
	givenUp  map[string]*givenUpMark
	givenUpN atomic.Int32
	// settled is set once this node imported its previous run's
	// sessions, markerLinger later when it had a previous run (resumed:
	// its consumer was there; settleStart); until then every QoS 1/2
	// message of its clients goes into the stream (needsStream).
	settled     atomic.Bool
	resumed     atomic.Bool
	presence    *nats.Subscription
	batchMarker *nats.Subscription // batch.go
	// directMarker says this build reads moat_msgs from its leader
	// whatever the stream's AllowDirect; no AllowDirect update is tried
	// before directNext (Unix nanoseconds). replayread.go.
	directMarker *nats.Subscription
	directNext   atomic.Int64
	// directSeen is set once this node found AllowDirect on moat_msgs
	// or set it: monitorPeers stops trying.
	directSeen atomic.Bool

	// peers are the marker prefixes ("moat.i.<node>.") of every other
	// node seen since this one started (routes, JetStream peers), and
	// expected the number of other nodes the cluster has (JetStream's
	// cluster size less one, or the most seen).
	peers    atomic.Pointer[[]string]
	expected atomic.Int64
	// known holds the names behind peers; peerMu serializes its
	// refreshes (refreshPeers: the once-a-second check, and the version
	// loop's when a node it does not know is on this node's server).
	// holdPeers, in tests, skips the once-a-second check (read under
	// peerMu).
	peerMu    sync.Mutex
	known     map[string]bool
	holdPeers atomic.Bool

	// Messages of other nodes being delivered (by message ID) and
	// recently delivered ones: a redelivery of either is not delivered
	// again.
	mu       sync.Mutex
	inflight map[string]struct{}
	recent   map[string]struct{}
	ring     []string
	ringPos  int

	// routed is the highest stream sequence of the records handed to
	// the broker (a record delivered again after a failed commit does
	// not move it back: a claim then replays the records after it
	// rather than leave them to routing that passed them already);
	// routeMu orders reading it with the routing, and with the
	// arrival and departure of sessions (sessions.go).
	routeMu sync.Mutex
	routed  uint64
	// routedNow is routed, for reading without routeMu, and moved, when
	// not nil, is closed as it rises (raiseLocked): a publisher's first
	// message waits on it (publishgate.go) and must not wait for
	// routeMu, which a claim holds while it imports a session.
	routedNow atomic.Uint64
	movedMu   sync.Mutex
	moved     chan struct{}
	// gate runs the shared readings of the stream's end (publishgate.go).
	gate publishGate

	stream jetstream.Stream // set before the stream is ready

	// capable tells, per other node (marker prefix), whether it read
	// batch records when last seen present (batch.go). unseen is how
	// many of the nodes this run never saw present are shown by their
	// durable consumers to run a build that reads them (noteUnseen).
	capMu   sync.Mutex
	capable map[string]bool
	unseen  atomic.Int64

	// refs names the messages being routed by their ID in the stream
	// (*broker.Message → string), for the session records written
	// meanwhile (sessions.go).
	refs sync.Map

	// acks gathers the acknowledgements of the consumer (acks.go).
	acks *ackQueue

	// received counts the records the consumer delivered to this node
	// (handleDurable), before any pause.
	received atomic.Uint64
	// paused, while set, holds the routing of the records (handleDurable)
	// until it is closed: this node is cut off from most of the cluster,
	// or back and not done checking its sessions (adoptLoop).
	paused atomic.Pointer[chan struct{}]

	// gapRest: no record missing from the consumer's delivery is read
	// from the stream before then (fillGap; the consumer's reader only).
	// gapsRead counts the records read so.
	gapRest  time.Time
	gapsRead atomic.Uint64
	// lose, for tests, drops the records it reports true for as they
	// arrive, as if lost on their way.
	lose atomic.Pointer[func(seq uint64) bool]
	// beforeForward, for tests, runs on a connection's reader as it
	// hands a message to the node to forward, before its commit is
	// submitted (as while it waits for a commit slot).
	beforeForward atomic.Pointer[func(msg *broker.Message)]
	// forwarding, for tests, runs there once the commit is begun (the
	// commits after it wait for it), before the message is numbered.
	forwarding atomic.Pointer[func(msg *broker.Message)]
}

// recentIDs bounds the record of delivered message IDs.
const recentIDs = 1 << 16

type durableCounters struct {
	streamOut, streamIn, streamErrors, streamDuplicates, streamDegraded atomic.Uint64
	// streamUnrouted counts the records routeUnrouted read.
	streamUnrouted          atomic.Uint64
	sessionsIn, sessionsOut atomic.Uint64
	// Replays into moved or adopted sessions: records read, replays
	// stopped at their bound, messages found past it (replaySet).
	replayRead, replaysBounded, replayDropped atomic.Uint64
	// replicaFloors counts the positions of nodes gone read from this
	// node's copy of their consumer (floor.go).
	replicaFloors atomic.Uint64
	// floorsUnasked counts those read without asking the consumer's
	// leader first, as the copy named the node gone its leader (tests).
	floorsUnasked atomic.Uint64
	// homesGone counts the claims that stopped waiting for the old
	// home's answer once its node had no route here (askHome).
	homesGone atomic.Uint64
	// markersHeld counts the passes of dropLingering that kept a marker
	// past its linger for a session given up here (tests).
	markersHeld atomic.Uint64
	// Catch-ups of sessions (catchup.go): started (by a routing pass:
	// paced; of those, for a session whose client was away: away), ended
	// at the routing position, given up, handed over with
	// their session to another node; the messages they delivered, and
	// the QoS 0 messages dropped for their sessions meanwhile.
	catchUps, catchUpsDone, catchUpsGaveUp, catchUpsHandedOver atomic.Uint64
	catchUpsPaced, catchUpsLate, catchUpsAway                  atomic.Uint64
	catchUpMessages, catchUpQoS0Dropped                        atomic.Uint64
}

func (d *durableState) init() {
	d.markers = make(map[string][]*nats.Subscription)
	d.lingering = make(map[string]time.Time)
	d.inflight = make(map[string]struct{})
	d.recent = make(map[string]struct{})
	d.ring = make([]string, recentIDs)
	d.capable = make(map[string]bool)
	d.peers.Store(&[]string{})
	d.known = make(map[string]bool)
	d.acks = newAckQueue()
}

// markInterest adds or removes the marker subscriptions of a local
// filter. The caller holds subMu.
func (n *Node) markInterest(filter string, on bool) {
	d := &n.dur
	if !on {
		if _, ok := d.markers[filter]; ok {
			d.lingering[filter] = time.Now().Add(n.lingerFor())
		}
		return
	}
	delete(d.lingering, filter)
	if _, ok := d.markers[filter]; ok || n.srv == nil {
		return // an external NATS: interest is not looked up
	}
	// This node's interest version goes before the markers change, its
	// next one after (interest.go).
	n.versionsDown()
	defer n.versionUp()
	var list []*nats.Subscription
	prefix := markerPrefix + keyOf(n.cfg.Node) + "."
	for _, subj := range filterSubjects(filter) {
		m := prefix + subj[len(msgPrefix):]
		if len(m) > maxSubject {
			continue
		}
		// No goroutine and no channel of its own (interestOnly):
		// nothing is ever published on a marker subject.
		s, err := n.interestOnly(n.nc, m)
		if err != nil {
			n.log.Error("cluster: interest marker not subscribed; QoS 1/2 messages of other nodes for this filter may not reach this node",
				"filter", filter, "err", err)
			continue
		}
		list = append(list, s)
	}
	d.markers[filter] = list
}

// givenUpPrefix begins the subjects of the filters of sessions this node
// gave up (moat.u.<node>.<filter's tokens>): subscribed on the node's
// own connection, they are matched against a topic by its own server
// as the markers are by the others'.
const givenUpPrefix = "moat.u."

// givenUpMark is a filter of a session given up here: since when, and
// until when at least, this node's own messages for it go into the
// stream.
type givenUpMark struct {
	subs         []*nats.Subscription
	since, until time.Time
}

// holdGivenUp makes this node put its own clients' QoS 1/2 messages
// matching filters, those of a session it is about to give up to
// another node, into the durable stream, for markerLinger at least and
// while it remembers a position given up since then (dropLingering).
// Without it they reached neither node: delivered here to nobody once
// the session went, and not in the stream, as no other node wanted them
// yet (the new home's markers come with its import), so the new home's
// replay from this node's position did not find them (6 to 11 of about
// 250 acknowledged messages of a publisher on the old home, published
// at 500 a second while its subscriber's session moved, in a test before
// 2026-12-06). An external NATS puts every message into the stream.
func (n *Node) holdGivenUp(filters []string) {
	if n.srv == nil || len(filters) == 0 {
		return
	}
	now := time.Now()
	subscribed := false
	defer func() {
		if !subscribed {
			return
		}
		// On this node's server before the session goes: a
		// subscription is sent to it over the connection, and the
		// message published right after the session went (givenUpWants
		// looks at the server's interest) found none and reached
		// nobody (1 acknowledged message of 9,000 in a move run of
		// 2026-12-06). The caller's routeMu stays held (the marks
		// precede the release), subMu does not: interest changes of
		// other sessions need not wait for the round trip.
		if err := n.nc.FlushTimeout(5 * time.Second); err != nil {
			n.log.Warn("cluster: the marks of a session given up not confirmed by this node's server; this node's messages for it published at once may be missing from it", "err", err)
		}
	}()
	n.subMu.Lock()
	defer n.subMu.Unlock() // before the flush above
	d := &n.dur
	if d.givenUp == nil {
		d.givenUp = make(map[string]*givenUpMark)
	}
	prefix := givenUpPrefix + keyOf(n.cfg.Node) + "."
	for _, filter := range filters {
		if m, ok := d.givenUp[filter]; ok {
			m.until = now.Add(n.lingerFor())
			continue
		}
		m := &givenUpMark{since: now, until: now.Add(n.lingerFor())}
		for _, subj := range filterSubjects(filter) {
			s := prefix + subj[len(msgPrefix):]
			if len(s) > maxSubject {
				continue
			}
			sub, err := n.interestOnly(n.nc, s)
			if err != nil {
				n.log.Error("cluster: a session's filter not marked as given up; this node's messages for it published while it moves may be missing from it",
					"filter", filter, "err", err)
				continue
			}
			m.subs = append(m.subs, sub)
			subscribed = true
		}
		d.givenUp[filter] = m
		d.givenUpN.Add(1)
	}
}

// settleStart ends, markerLinger after a node that ran before imported
// its previous run's sessions (or as it closes), the forwarding of
// every QoS 1/2 message of its clients into the stream. The markers of a node's
// previous run end with it, and a session of that run claimed on
// another node while this one started (the claim takes this node for
// dead without a route to it, and this node's import then finds the
// session gone) has no marker until the claim imports it: this node's
// messages for it in between were delivered to nobody here, and not
// put into the stream, from which the claim's replay reads. As for a
// session given up (holdGivenUp), markerLinger is far longer than a
// claim takes from its record to its import. Until 2026-12-08 an
// outside series that killed all three nodes under load lost, once in
// 30 runs, the 100 first messages of a publisher on the subscriber's
// old home, routed there just before the claim on another node
// imported the session. Counted in stream_degraded.
func (n *Node) settleStart() {
	t := time.NewTimer(n.lingerFor())
	defer t.Stop()
	select {
	case <-t.C:
	case <-n.ctx.Done():
	}
	n.dur.settled.Store(true)
}

// givenUpWants tells whether topic matches a filter of a session this
// node gave up (holdGivenUp).
func (n *Node) givenUpWants(acc *server.Account, topic string) bool {
	return n.dur.givenUpN.Load() > 0 && acc.Interest(givenUpPrefix+keyOf(n.cfg.Node)+"."+topicTokens(topic)) > 0
}

// lingerFor is markerLinger, or what a test set.
func (n *Node) lingerFor() time.Duration {
	if n.dur.linger > 0 {
		return n.dur.linger
	}
	return markerLinger
}

// dropLingering removes the markers whose linger ended by now, but for
// those whose filter lost its last local subscription at or before a
// session was given up here whose position this node still remembers
// (released): its claim may have failed, leaving the session on no node
// (docs/cluster.md, "A claim that fails after the old home gave the
// session up"), and without a marker the other nodes' messages for it
// would not go into the durable stream, from which its next claim
// replays them. Such markers stay until the position is forgotten: at
// once when the claim that took the session tells this node so, at most
// releasedFor later. A filter given up with a session has its linger
// begin just before the session is given up (ReleaseSession comes
// before giveUp); one that began lingering earlier for another reason
// and is kept too costs only the forwarding of its messages to the
// stream meanwhile.
func (n *Node) dropLingering(now time.Time) {
	held := n.lastGivenUp()
	n.subMu.Lock()
	defer n.subMu.Unlock()
	d := &n.dur
	changed := false
	for filter, until := range d.lingering {
		if now.Before(until) {
			continue
		}
		if !held.IsZero() && !held.Before(until.Add(-n.lingerFor())) {
			n.dstats.markersHeld.Add(1)
			continue
		}
		if !changed {
			// Removals never lose a message, but a new version spares
			// the other nodes forwarding what nobody here wants.
			changed = true
			n.versionsDown()
			defer n.versionUp()
		}
		for _, s := range d.markers[filter] {
			_ = s.Unsubscribe()
		}
		delete(d.markers, filter)
		delete(d.lingering, filter)
	}
	for filter, m := range d.givenUp {
		if now.Before(m.until) || !held.IsZero() && !held.Before(m.since) {
			continue
		}
		for _, s := range m.subs {
			_ = s.Unsubscribe()
		}
		delete(d.givenUp, filter)
		d.givenUpN.Add(-1)
	}
}

// markPresent subscribes this node's presence marker: its sessions are
// imported and their markers subscribed before it (one connection sends
// them in order, one route carries them in order).
func (n *Node) markPresent() {
	if n.srv == nil {
		return
	}
	// This build reads batch records: said before the presence.
	capSub, err := n.interestOnly(n.nc, capPrefix+keyOf(n.cfg.Node)+capBatch)
	if err != nil {
		n.log.Error("cluster: batch marker not subscribed; the other nodes put each QoS 1/2 message in a record of its own", "err", err)
	}
	// And reads moat_msgs from its leader whatever its AllowDirect.
	directSub, err := n.interestOnly(n.nc, capPrefix+keyOf(n.cfg.Node)+capDirect)
	if err != nil {
		n.log.Error("cluster: direct marker not subscribed; replays read one record per request", "err", err)
	}
	s, err := n.interestOnly(n.nc, markerPrefix+keyOf(n.cfg.Node)+"."+presenceToken)
	if err != nil {
		n.log.Error("cluster: presence marker not subscribed; the other nodes put every QoS 1/2 message into the stream", "err", err)
		return
	}
	n.subMu.Lock()
	n.dur.presence, n.dur.batchMarker, n.dur.directMarker = s, capSub, directSub
	n.subMu.Unlock()
}

// needsStream tells whether a QoS 1/2 message on topic goes into the
// stream: another node has interest in it, a node is missing, or this
// node has not settled since it started (settleStart).
func (n *Node) needsStream(topic string) bool {
	if n.srv == nil {
		return true
	}
	if !n.dur.settled.Load() {
		n.dstats.streamDegraded.Add(1)
		return true
	}
	peers := *n.dur.peers.Load()
	acc := n.srv.GlobalAccount()
	if len(peers) < int(n.dur.expected.Load()) {
		n.dstats.streamDegraded.Add(1)
		return true
	}
	// Presence, interest, presence again: a node present before the
	// look-up of its interest had its markers in place (they come before
	// its presence), and one still present after it had not lost them
	// (they go with its presence, at once).
	if n.peerMissing(acc, peers) {
		return true
	}
	if n.lookup(acc, topic, groupsNever).yes || n.givenUpWants(acc, topic) {
		return true
	}
	return n.peerMissing(acc, peers)
}

// peerMissing tells whether a node of peers has no presence marker now.
func (n *Node) peerMissing(acc *server.Account, peers []string) bool {
	for _, p := range peers {
		if acc.Interest(p+presenceToken) == 0 {
			n.dstats.streamDegraded.Add(1)
			return true
		}
	}
	return false
}

// forwardMsg returns msg encoded for the stream, or nil when it stays on
// this node (no other node needs it, it expired, or its topic is too
// long for a subject: the subjects of the messages' single records,
// which a moved session's replay still reads, and of the filters'
// markers bound the topics that cross).
func (n *Node) forwardMsg(msg *broker.Message) *fwdMsg {
	if !n.needsStream(msg.Topic) {
		return nil
	}
	now := time.Now()
	data, err := encodeMessage(msg, now)
	if err != nil {
		return nil // expired
	}
	if subjectLen(msg.Topic) > maxSubject { // moat.d. is as long as moat.m.
		n.dstats.streamErrors.Add(1)
		n.log.Warn("cluster: topic too long to forward; delivered on this node only", "length", len(msg.Topic))
		return nil
	}
	n.dstats.streamOut.Add(1)
	return &fwdMsg{topic: msg.Topic, seq: n.dur.seq.Add(1), sent: now.UnixNano(), from: msg.From, pkt: data}
}

// publishTimeout is how long a publication to JetStream waits for its
// acknowledgement before it fails (and is made again until its commit's
// deadline): a commit is known to be done at most this long after its
// deadline passed.
const publishTimeout = 5 * time.Second

// startDurable starts the goroutines of the durable stream: the
// publisher, its acknowledgements, the consumer and the peer monitor.
func (n *Node) startDurable() {
	// An acknowledgement lost with a stream leader that died never comes:
	// after publishTimeout the publication is made again (the stream keeps
	// one copy of a message ID), until the commit's deadline.
	js, err := jetstream.New(n.nc, jetstream.WithPublishAsyncMaxPending(1<<14), jetstream.WithPublishAsyncTimeout(publishTimeout))
	if err != nil {
		n.log.Error("cluster: JetStream unavailable; QoS 1/2 messages are not forwarded durably", "err", err)
		return
	}
	if err := n.serveControl(); err != nil {
		n.log.Error("cluster: control subscription failed; sessions of this node cannot move to another node", "err", err)
	}
	n.pub.watchLeaders(n.nc)
	n.wg.Add(4)
	go func() { defer n.wg.Done(); n.pub.run(js, n.ctx) }()
	go func() { defer n.wg.Done(); n.pub.acknowledge(js, n.ctx) }()
	go func() { defer n.wg.Done(); n.consumeLoop(js) }()
	go func() { defer n.wg.Done(); n.monitorPeers() }()
}

// consumerName is this node's durable consumer: one per node name, so a
// restarted node resumes where it stopped.
func (n *Node) consumerName() string { return "node" + keyOf(n.cfg.Node) }

// setupStream creates or binds the stream and this node's consumer, in
// attempt try (setupCtx); what an earlier attempt created stays.
func (n *Node) setupStream(js jetstream.JetStream, try int) (jetstream.Consumer, error) {
	ctx, cancel := n.setupCtx(try)
	defer cancel()
	maxAge, maxBytes := n.cfg.StreamMaxAge, n.cfg.StreamMaxBytes
	if maxAge <= 0 {
		maxAge = defaultStreamMaxAge
	}
	if maxBytes <= 0 {
		maxBytes = defaultStreamMaxBytes
	}
	// AllowDirect is kept as it is: replays set it once every node
	// reads the stream from its leader whatever the setting
	// (replayread.go, allowDirect).
	allowDirect := false
	if cur, err := js.Stream(ctx, streamMsgs); err == nil {
		allowDirect = cur.CachedInfo().Config.AllowDirect
		n.dur.directSeen.Store(allowDirect)
	}
	st, err := n.createOrUpdateStream(ctx, js, jetstream.StreamConfig{Name: streamMsgs, Subjects: []string{durablePrefix + ">"},
		Description: "Moat QoS 1/2 messages between nodes", Retention: jetstream.LimitsPolicy, MaxAge: maxAge, MaxBytes: maxBytes,
		Discard: jetstream.DiscardOld, Storage: jetstream.FileStorage, Replicas: n.replicas, Duplicates: 2 * time.Minute,
		AllowDirect: allowDirect})
	if err != nil {
		return nil, err
	}
	n.dur.stream = st
	if err := n.setupSessions(ctx, js); err != nil {
		return nil, err
	}
	return n.bindConsumer(ctx, st)
}

// consumerAckWait is how long a node's consumer waits for a delivered
// record's acknowledgement before it delivers the record again. It is
// also how long a record lost on its way is missing: a consumer whose
// leader changes (a node dying, an election on a loaded machine) counts
// what the old leader sent as delivered, and records sent as the leader
// went, answering a pull request that went with it, never arrive. A
// node waits that long for them (and the records after them wait for
// the acknowledgement, acks.go); the sessions they go to miss them that
// long. A record still being routed when it comes again is ignored
// (acks.go), so a short wait costs a delivery, not a duplicate.
const consumerAckWait = 10 * time.Second

// pullExpiry and pullHeartbeat shape the pull requests of this node's
// consumer. A request is served by the consumer's leader alone, and one
// parked at a leader that dies (SIGKILL, a cut) is never answered: the
// iterator reports it (and the loop below pulls again) only once two
// heartbeats are missing. At the client library's defaults (30 s, 15 s)
// that is 30 s, and an outside kill series saw a survivor route none of
// the other nodes' durable messages for 30.0 to 30.4 s after the kill in
// 3 of 30 runs that killed the leader of its consumer, although a new
// leader was elected within 4 to 6 s (an in-process cut of that leader
// did not reproduce the stall, so the cause is likely, not proven). With
// a heartbeat every 2 s, a lost request is noticed within 4 s and sent
// again, to the new leader once there is one; a heartbeat costs one
// small message every 2 s per node while no record comes. Missing two
// heartbeats takes 4 s of silence, not a short stall of a busy machine.
const (
	pullExpiry    = 10 * time.Second
	pullHeartbeat = 2 * time.Second
)

// consumerInfoWait bounds the request for the consumer's state that
// starts each pull, and consumerRetry is the pause after a failed one.
// Once a pull is found lost with its consumer's leader, the loop asks
// until a new leader answers: it is elected 4 to 9 s after the old one
// went silent (nats-server's election timeouts), and each request sent
// before that is lost as well. With 5 s and 1 s, a request sent just
// before the election was waited for to its end: in 7 of 30 runs of an
// outside kill series the subscriber's node routed none of the other
// nodes' durable messages for 10.0 to 10.1 s after the kill (4 s of
// missing heartbeats, a request lost, 5 s, 1 s), although its
// consumer's new leader was elected 4 to 7 s after the kill. A request
// is answered in milliseconds when there is a leader, so 1 s is ample
// on a busy machine, and the loop resumes within about 1.25 s of the
// election.
const (
	consumerInfoWait = time.Second
	consumerRetry    = 250 * time.Millisecond
)

// consumerConfig is the configuration of this node's consumer, starting
// where cfg (its DeliverPolicy, OptStartSeq, OptStartTime) says.
func (n *Node) consumerConfig(name string, from jetstream.ConsumerConfig) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{Durable: name,
		Description: "Moat node " + n.cfg.Node, DeliverPolicy: from.DeliverPolicy, OptStartSeq: from.OptStartSeq, OptStartTime: from.OptStartTime,
		AckPolicy: jetstream.AckAllPolicy, AckWait: consumerAckWait, MaxDeliver: -1, MaxAckPending: 1 << 16,
		FilterSubject: durablePrefix + ">"}
}

// upgradeName names the consumer that holds this node's position while
// its consumer is being replaced (bindConsumer).
func (n *Node) upgradeName() string { return "upgrade" + keyOf(n.cfg.Node) }

// bindConsumer binds this node's consumer, creating it if need be. A
// consumer created by an earlier build acknowledges each record
// (AckExplicit); a consumer's acknowledgement policy cannot be changed,
// so it is replaced by one with cumulative acknowledgements (acks.go)
// starting right after its acknowledgement floor: the records it had
// delivered but not all acknowledged are delivered again (at least once,
// never skipped). The position is never held by nothing: first a
// consumer under upgradeName takes it, then the old one is deleted and
// the new one created, then the one under upgradeName is deleted; a node
// stopped at any point finishes the job when it starts again.
func (n *Node) bindConsumer(ctx context.Context, st jetstream.Stream) (jetstream.Consumer, error) {
	name := n.consumerName()
	c, err := st.Consumer(ctx, name)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, err
	}
	up, uerr := st.Consumer(ctx, n.upgradeName())
	if uerr != nil && !errors.Is(uerr, jetstream.ErrConsumerNotFound) {
		return nil, uerr
	}
	if c != nil || up != nil {
		n.dur.resumed.Store(true) // a previous run of this node
	}
	if c != nil && c.CachedInfo().Config.AckPolicy == jetstream.AckAllPolicy {
		if up != nil {
			if err := st.DeleteConsumer(ctx, n.upgradeName()); err != nil {
				return nil, err
			}
		}
		if cfg := c.CachedInfo().Config; cfg.AckWait != consumerAckWait {
			// Created by an earlier build, with a longer wait.
			cfg.AckWait = consumerAckWait
			if c, err = st.UpdateConsumer(ctx, cfg); err != nil {
				return nil, err
			}
		}
		return c, nil // a restarted node resumes where it stopped
	}
	if c != nil {
		// A consumer of an earlier build: its position goes to the
		// upgrade consumer first.
		ci := c.CachedInfo()
		from := ci.Config
		if floor := ci.AckFloor.Stream; floor > 0 {
			from = jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: floor + 1}
		}
		if up == nil {
			if up, err = st.CreateConsumer(ctx, n.consumerConfig(n.upgradeName(), from)); err != nil {
				return nil, err
			}
		}
		if err := st.DeleteConsumer(ctx, name); err != nil {
			return nil, err
		}
		n.log.Info("cluster: durable consumer of an earlier build replaced", "consumer", name, "ack_floor", ci.AckFloor.Stream)
	}
	var from jetstream.ConsumerConfig
	if up != nil {
		from = up.CachedInfo().Config
	} else {
		// A new node starts with the messages published since it
		// started: none of the stream's past is owed to sessions it
		// never had.
		start := n.started
		from = jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &start}
	}
	if c, err = st.CreateConsumer(ctx, n.consumerConfig(name, from)); err != nil {
		return nil, err
	}
	if up != nil {
		if err := st.DeleteConsumer(ctx, n.upgradeName()); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// partReady closes Ready once the key-value buckets and the stream are
// both in use.
func (n *Node) partReady() {
	if n.readyParts.Add(1) == 2 {
		close(n.ready)
	}
}

// consumeLoop binds the stream (retrying until the cluster has a
// JetStream quorum) and hands its messages to the broker in stream order.
func (n *Node) consumeLoop(js jetstream.JetStream) {
	// A node removed from the cluster takes no session (remove.go).
	if !n.checkRemovedAtStart(js) {
		return
	}
	backoff := 100 * time.Millisecond
	var cons jetstream.Consumer
	for try := 0; ; try++ {
		var err error
		if cons, err = n.setupStream(js, try); err == nil {
			break
		}
		n.log.Info("cluster: waiting for the durable message stream", "err", err)
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	n.log.Info("cluster: durable message stream ready", "consumer", n.consumerName(), "replicas", n.replicas)
	// Before any session is imported or given up: a claim reads the
	// position from here on.
	n.routedTo(cons.CachedInfo().AckFloor.Stream)
	n.wg.Add(1)
	n.dur.acks.get = n.msgRecord
	go func() { defer n.wg.Done(); n.dur.acks.run(n.ctx, cons, n.dur.stream) }()
	// The routes to the other nodes first: importing may publish wills
	// (a persistent session's, whose connection ended with this node's
	// previous run), which reach the other nodes' subscribers only
	// through what this node knows of their interest.
	n.awaitRoutes(n.ctx)
	// The sessions of this node first: the consumer then delivers to them
	// what arrived while the node was away.
	n.importHomeSessions()
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.endHomeAwaits() }()
	if n.dur.resumed.Load() {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.settleStart() }()
	} else {
		n.dur.settled.Store(true) // no session of a previous run
	}
	n.markPresent()
	close(n.sess.ready)
	n.partReady()
	var failedSince time.Time // the first of the failures in a row
	failures := 0
	for n.ctx.Err() == nil {
		// Where the consumer is now, for the acknowledgements.
		ctx, cancel := context.WithTimeout(n.ctx, consumerInfoWait)
		ci, err := cons.Info(ctx)
		cancel()
		var it jetstream.MessagesContext
		if err == nil {
			n.routeUnrouted(ci.AckFloor.Stream)
			n.dur.acks.bind(ci)
			n.routedTo(ci.AckFloor.Stream)
			it, err = cons.Messages(jetstream.PullMaxMessages(512), jetstream.PullExpiry(pullExpiry), jetstream.PullHeartbeat(pullHeartbeat))
		}
		if err != nil {
			if failures == 0 {
				failedSince = time.Now()
				n.log.Warn("cluster: reading the durable message stream failed; retrying", "err", err)
			} else {
				n.log.Debug("cluster: reading the durable message stream failed again; retrying", "err", err, "attempts", failures+1)
			}
			failures++
			select {
			case <-n.ctx.Done():
				return
			case <-time.After(consumerRetry):
			}
			continue
		}
		if failures > 0 {
			n.log.Info("cluster: reading the durable message stream again", "after", time.Since(failedSince).Round(time.Millisecond),
				"attempts", failures+1)
			failures = 0
		}
		stopped := make(chan struct{})
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			select {
			case <-n.ctx.Done():
			case <-stopped:
			}
			it.Stop()
		}()
		for {
			m, err := it.Next()
			if err != nil {
				break
			}
			n.handleDurable(m)
		}
		close(stopped)
	}
}

// routedTo raises the routing position (durableState.routed) to floor,
// the acknowledgement floor of this node's consumer. Every record up to
// the floor was routed, by this run or an earlier one, and its messages
// are in the sessions that were here then; the consumer delivers none of
// them again. A node that starts again must count them as routed: its
// position otherwise starts at 0, and the claims of sessions go wrong in
// both directions. As the old home, it would answer that it routed
// nothing, and the new home would read the stream from its start for the
// session. As the new home, it would read and replay only the records up
// to 0 and leave the later ones to its routing, which delivered them in
// its earlier run and never does again: a message the old home had not
// routed when the claim came (its record on its way to it after the
// restart) reached neither node's routing nor the replay, and was lost.
func (n *Node) routedTo(floor uint64) {
	n.dur.routeMu.Lock()
	n.dur.raiseLocked(floor)
	n.dur.routeMu.Unlock()
}

// pauseRouting holds the routing of the durable stream's records until
// resumeRouting.
func (n *Node) pauseRouting() {
	ch := make(chan struct{})
	n.dur.paused.CompareAndSwap(nil, &ch)
}

// resumeRouting ends pauseRouting.
func (n *Node) resumeRouting() {
	if ch := n.dur.paused.Swap(nil); ch != nil {
		close(*ch)
	}
}

// awaitRouting waits while the routing is paused; false when the node
// closes meanwhile.
func (n *Node) awaitRouting() bool {
	ch := n.dur.paused.Load()
	if ch == nil {
		return true
	}
	select {
	case <-*ch:
		return true
	case <-n.ctx.Done():
		return false
	}
}

// handleDurable delivers one record of the stream. It is acknowledged
// once the broker reports its messages in its sessions and committed
// (acks.go); on failure it is asked again after a while. It waits while
// the routing is paused (adoptLoop): a record delivered meanwhile is
// delivered again after the consumer's AckWait, and ignored (admit).
// Records the consumer sent before this one that never arrived are read
// from the stream and routed first (fillGap).
func (n *Node) handleDurable(m jetstream.Msg) {
	n.dur.received.Add(1)
	if !n.awaitRouting() {
		return
	}
	h := m.Headers()
	origin := h.Get(hdrOrigin)
	meta, err := m.Metadata()
	if err != nil {
		// No delivery sequence: the reply subject is not JetStream's.
		n.stats.decodeErrors.Add(1)
		_ = m.Term()
		return
	}
	acks, seq := n.dur.acks, meta.Sequence.Stream
	if f := n.dur.lose.Load(); f != nil && (*f)(seq) {
		return // for tests: lost on its way
	}
	if floor := acks.floorPast.Swap(0); floor > 0 {
		// The consumer counts as acknowledged records never routed
		// here (ackQueue.resolve): read first, then its floor taken.
		n.routeUnrouted(floor)
		acks.adopt(floor)
	}
	n.fillGap(seq)
	if !acks.admit(m, seq) {
		return
	}
	n.routeRecord(m, origin, seq)
}

// routeRecord routes the record m of stream sequence seq, admitted
// (acks.admit), written by the node of run origin.
func (n *Node) routeRecord(m jetstream.Msg, origin string, seq uint64) {
	acks, h := n.dur.acks, m.Headers()
	if origin == n.origin {
		// Delivered here when it was published. Counted as routed: a
		// session imported from now on did not get it then, and is
		// replayed it.
		n.dur.routeMu.Lock()
		n.dur.raiseLocked(seq)
		n.dur.routeMu.Unlock()
		acks.finish(seq, true)
		return
	}
	if m.Subject() == batchSubject {
		n.handleBatch(m, origin, seq)
		return
	}
	// A single record, written by an earlier build.
	id := h.Get(nats.MsgIdHdr)
	sent, err := strconv.ParseInt(h.Get(hdrSent), 10, 64)
	if origin == "" || id == "" || err != nil {
		n.stats.decodeErrors.Add(1)
		acks.finish(seq, true) // dropped: nothing to wait for
		return
	}
	d := &n.dur
	d.mu.Lock()
	_, busy := d.inflight[id]
	_, seen := d.recent[id]
	if !busy && !seen {
		d.inflight[id] = struct{}{}
	}
	d.mu.Unlock()
	if busy {
		// Being delivered from another record: asked again later,
		// when it is known delivered.
		acks.finish(seq, false)
		return
	}
	if seen {
		n.dstats.streamDuplicates.Add(1)
		acks.finish(seq, true)
		return
	}
	msg, err := decodeMessage(m.Data(), h.Get(hdrFrom), time.Unix(0, sent))
	if err != nil {
		n.stats.decodeErrors.Add(1)
		n.log.Warn("cluster: malformed message from another node dropped", "origin", origin, "err", err)
		n.settle(id, false)
		acks.finish(seq, true)
		return
	}
	n.dstats.streamIn.Add(1)
	b, ok := n.b.(durableBroker)
	if !ok {
		n.b.DeliverRemote(msg)
		n.settle(id, true)
		acks.finish(seq, true)
		return
	}
	d.routeMu.Lock()
	d.refs.Store(msg, id)
	defer d.refs.Delete(msg)
	b.DeliverRemoteDone(msg, n.holdAcks(func(err error) {
		// Delivered again later on failure (not at once: a broker
		// shutting down refuses it until the node closes).
		n.settle(id, err == nil)
		acks.finish(seq, err == nil)
	}))
	d.raiseLocked(seq)
	d.routeMu.Unlock()
}

// handleBatch delivers the messages of a batch record of another node,
// in order, as one commit of the broker (DeliverRemoteBatchDone), and
// finishes the record (acks.go) once that commit is durable: every
// message is then in the local sessions. The record is routed as a
// whole: the routing position (d.routed) moves past it only once all its
// messages were handed to the broker, and it is acknowledged or
// delivered again as a whole (a failed commit), so that a position or
// acknowledgement floor in the stream always falls between records. On
// a delivery again, the messages delivered the first time are skipped by
// their IDs.
func (n *Node) handleBatch(m jetstream.Msg, origin string, seq uint64) {
	acks := n.dur.acks
	entries, err := decodeBatch(m.Data())
	if err != nil {
		n.stats.decodeErrors.Add(1)
		n.log.Warn("cluster: malformed batch record from another node dropped", "origin", origin, "err", err)
		acks.finish(seq, true) // dropped: nothing to wait for
		return
	}
	d := &n.dur
	ids := make([]string, len(entries))
	todo := make([]bool, len(entries))
	d.mu.Lock()
	for i := range entries {
		ids[i] = msgID(origin, entries[i].seq)
		if _, busy := d.inflight[ids[i]]; busy {
			// Being delivered from another record: this one is asked
			// again later, when they are known delivered.
			for j := range i {
				if todo[j] {
					delete(d.inflight, ids[j])
				}
			}
			d.mu.Unlock()
			acks.finish(seq, false)
			return
		}
		if _, seen := d.recent[ids[i]]; !seen {
			todo[i] = true
			d.inflight[ids[i]] = struct{}{}
		}
	}
	d.mu.Unlock()
	b, isDurable := n.b.(durableBroker)
	msgs := make([]*broker.Message, 0, len(entries))
	msgIDs := make([]string, 0, len(entries))
	d.routeMu.Lock()
	for i := range entries {
		if !todo[i] {
			n.dstats.streamDuplicates.Add(1)
			continue
		}
		msg, err := entries[i].message()
		if err != nil {
			n.stats.decodeErrors.Add(1)
			n.log.Warn("cluster: malformed message from another node dropped", "origin", origin, "err", err)
			n.settle(ids[i], false)
			continue
		}
		n.dstats.streamIn.Add(1)
		if !isDurable {
			n.b.DeliverRemote(msg)
			n.settle(ids[i], true)
			continue
		}
		msgs = append(msgs, msg)
		msgIDs = append(msgIDs, ids[i])
	}
	if len(msgs) == 0 {
		d.raiseLocked(seq)
		d.routeMu.Unlock()
		acks.finish(seq, true)
		return
	}
	for i, msg := range msgs {
		d.refs.Store(msg, msgIDs[i])
	}
	// The record is acknowledged once its messages are committed and,
	// for each session that had no room for one of them, the
	// position of its catch-up is stored (startPaced): the parts of j.
	j := &heldAck{parts: 1, done: n.holdAcks(func(err error) {
		// Delivered again later on failure (not at once: a broker
		// shutting down refuses it until the node closes).
		for _, id := range msgIDs {
			n.settle(id, err == nil)
		}
		acks.finish(seq, err == nil)
	})}
	if pb, ok := b.(pacedBroker); ok {
		_, started := pb.DeliverRemoteBatchPaced(msgs, n.reservePaced, j.part())
		n.startPaced(seq, msgs, msgIDs, ids, started, j.part)
	} else {
		b.DeliverRemoteBatchDone(msgs, j.part())
	}
	j.finish(nil)
	for _, msg := range msgs {
		d.refs.Delete(msg)
	}
	d.raiseLocked(seq)
	d.routeMu.Unlock()
}

// durableBroker is what the durable stream needs of the broker beyond
// Broker: *broker.Server.
type durableBroker interface {
	DeliverRemoteDone(msg *broker.Message, done func(error)) int
	DeliverRemoteBatchDone(msgs []*broker.Message, done func(error)) int
}

var _ durableBroker = (*broker.Server)(nil)

// pacedBroker is what a routing pass needs of the broker to catch up,
// from the stream, a session whose queue is full (catchup.go):
// *broker.Server.
type pacedBroker interface {
	DeliverRemoteBatchPaced(msgs []*broker.Message, reserve func(clientID string, away bool) bool, done func(error)) (int, []broker.PacedSession)
}

var _ pacedBroker = (*broker.Server)(nil)

// settle ends the delivery of message id; delivered ones are remembered.
func (n *Node) settle(id string, delivered bool) {
	d := &n.dur
	d.mu.Lock()
	delete(d.inflight, id)
	if delivered {
		if old := d.ring[d.ringPos]; old != "" {
			delete(d.recent, old)
		}
		d.ring[d.ringPos] = id
		d.ringPos = (d.ringPos + 1) % len(d.ring)
		d.recent[id] = struct{}{}
	}
	d.mu.Unlock()
}

// monitorPeers refreshes, every second, the other nodes known (whose
// markers needsStream looks up) and the number the cluster should have,
// notes which of those present read batch records (noteCapabilities),
// and drops the markers whose linger ended. Noted only as messages were
// forwarded, a node that died before this one forwarded any counted as
// one that may not read batches: every message went as a record of its
// own until it came back, and after the stream's election each of them
// was sent again in its turn, one round trip each.
func (n *Node) monitorPeers() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if n.srv != nil {
			n.refreshPeers(true)
			n.noteCapabilities()
			n.noteUnseen()
			if !n.dur.directSeen.Load() && n.sessionsReady() {
				// Before a reading needs it (replayread.go).
				n.allowDirect()
			}
		}
		now := time.Now()
		n.pruneGone(now)
		n.dropLingering(now)
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sessionsReady tells whether the durable stream and the sessions are
// set up (n.sess.ready closed).
func (n *Node) sessionsReady() bool {
	select {
	case <-n.sess.ready:
		return true
	default:
		return false
	}
}

// unknownPeerName begins the name nats-server gives a JetStream peer
// whose server name it has not learned yet (PeerInfo.Name).
const unknownPeerName = "Server name unknown at this time"

// peerName returns the node name of a JetStream peer, and false when
// nats-server does not know it yet. After a restart, the meta group read
// back from disk lists every peer at once, under a placeholder
// ("Server name unknown at this time (peerID: …)") until that peer's
// server name reaches this server; a node name has no spaces, so the
// placeholder is never one. Taken for a node, the placeholder would stay
// known for good next to the real name and count a node twice: the
// cluster would look larger than it is, and losing one node of three
// would look to both survivors like being cut off from the majority.
func peerName(p *server.PeerInfo) (string, bool) {
	if p == nil || p.Name == "" || strings.HasPrefix(p.Name, unknownPeerName) {
		return "", false
	}
	return p.Name, true
}

// refreshPeers adds to the nodes known those seen now (a node once seen
// stays known: while it is away its presence marker is missing) and
// publishes their marker prefixes: the nodes this node's server has
// routes to, and (withMeta) the JetStream peers, whose number also
// sets the number of nodes the cluster should have. Without withMeta
// (the version loop, which found a node it does not know: interest.go)
// that number only grows with the nodes known.
func (n *Node) refreshPeers(withMeta bool) {
	d := &n.dur
	d.peerMu.Lock()
	defer d.peerMu.Unlock()
	if withMeta && d.holdPeers.Load() {
		return
	}
	known := d.known
	if rz, err := n.srv.Routez(&server.RoutezOptions{}); err == nil {
		for _, r := range rz.Routes {
			if r.RemoteName != "" && r.RemoteName != n.cfg.Node {
				known[r.RemoteName] = true
			}
		}
	}
	expected := int(d.expected.Load())
	if withMeta {
		expected = 0
		if jz, err := n.srv.Jsz(&server.JSzOptions{}); err == nil && jz.Meta != nil {
			expected = jz.Meta.Size - 1
			for _, r := range jz.Meta.Replicas {
				if name, ok := peerName(r); ok && name != n.cfg.Node {
					known[name] = true
				}
			}
		}
	}
	n.forgetRemoved(known) // remove.go
	peers := make([]string, 0, len(known))
	for name := range known {
		peers = append(peers, markerPrefix+keyOf(name)+".")
	}
	slices.Sort(peers)
	// The same list keeps its pointer: the interest cache's answers
	// (interest.go) hold while it does.
	if old := d.peers.Load(); !slices.Equal(*old, peers) {
		d.peers.Store(&peers)
	}
	d.expected.Store(int64(max(expected, len(known))))
}

// routesSettle bounds awaitRoutes: a configured peer whose route is not up
// by then is taken for down (the embedded server tries a configured route
// again every second, and a live peer's server connects back at once).
const routesSettle = 3 * time.Second

// awaitRoutes waits, when the node starts, until its server has a route
// to every configured peer (or routesSettle passed) and has received the
// subscriptions each route carries, which name the other nodes' interest.
// The quorum that made the stream ready needs only one of them: on a
// restart, a route to a third node may come up a moment later, and a
// message published meanwhile (a will the import publishes) would miss
// that node's subscribers. A route's subscriptions are sent before
// anything else on it, so one question to each node, answered over its
// route (refreshVersions), comes back after them.
func (n *Node) awaitRoutes(ctx context.Context) {
	if n.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, routesSettle)
	defer cancel()
	acc := n.srv.GlobalAccount()
	for {
		remotes, self := n.srv.NumRemotes(), 0
		if n.ic.counted.Load() {
			self = 1
		}
		// Each node routed to subscribes countSubject: one more than
		// this node's own once its route's subscriptions arrived.
		if remotes >= len(n.cfg.Peers) && acc.Interest(countSubject) >= remotes+self {
			break
		}
		select {
		case <-ctx.Done():
			n.log.Info("cluster: starting without a route to every configured peer", "routes", n.srv.NumRemotes(),
				"peers", len(n.cfg.Peers))
			n.refreshStart()
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	n.refreshStart()
}

// refreshStart brings, at the end of awaitRoutes, the nodes known and the
// number the cluster should have up to date (the once-a-second refresh
// may have run before the node knew a JetStream meta leader: a peer whose
// route is still missing then counts as missing, and QoS 1/2 messages go
// into the stream), then the other nodes' interest versions.
func (n *Node) refreshStart() {
	n.refreshPeers(true)
	n.refreshVersions()
}
