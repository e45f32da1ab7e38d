package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/moatmq/moat/internal/packet"
	mqtttopic "github.com/moatmq/moat/internal/topic"
)

// Sessions cluster-wide (docs/cluster.md, "Sessions"). Persistent
// sessions live in the replicated stream moat_sessions, one subject per
// record and the last value kept:
//
//	moat.s.<client>.s        the session: home, owner, expiry, subscriptions
//	moat.s.<client>.d.<seq>  a message owed to it (queued or in flight), with the message
//	moat.s.<client>.i.<pid>  an inbound QoS 2 packet identifier awaiting PUBREL
//	moat.s.<client>.w        its pending will
//
// The node serving a session (its home) commits every change the broker
// makes to it there, as part of the broker's commit (persist.go): before
// CONNACK, SUBACK and UNSUBACK, and before the PUBACK or PUBREC of a
// message queued for it. A removed record is replaced by an empty one
// that expires after a second.
//
// A client connecting on another node makes that node the home
// (ClaimSession): it asks the old home to give the session up (the old
// home takes the connection over, detaches it, stops writing the session
// and reports the position in the durable stream up to which it routed
// messages), takes the home with a compare-and-set on the session record,
// reads the records and imports the session; then it delivers to it the
// messages of the durable stream after that position that it routed
// before the session was here. When the old home is gone (no responder),
// the position is the acknowledgement floor of its durable consumer. A
// node that starts imports the sessions whose home it was. A claim that
// fails after the old home gave the session up leaves it on no node:
// the old home answers the next claim with the position it gave it up
// at (released), and the node whose claim failed resumes it from its
// start (failed), so that the next claim replays what reached neither.
// The new home tells the old one once it wrote the session record
// (takenNotice): the old home's answer is of no use to any claim then,
// and it forgets the position. A node whose own claim of a session is
// under way (until its client is attached) answers a release request
// for it "busy, try again", so that two claims at the same instant leave
// one home and one connection.

const (
	streamSessions = "moat_sessions"
	sessPrefix     = "moat.s."
	ctlPrefix      = "moat.ctl."
	hdrTTL         = "Nats-TTL"
	// tombstoneTTL is how long an emptied record stays before it expires.
	tombstoneTTL = "1s"
)

// sessionsState is the Node's side of the sessions kept in the cluster.
type sessionsState struct {
	mu    sync.Mutex
	homed map[string]*homeState // client ID → sessions this node is the home of
	// gone holds the sessions given up to another node, for a minute:
	// changes still on their way for them are dropped.
	gone map[string]time.Time
	// pending holds the stream position of claims under way: a claim
	// that may have taken the home but failed before the session was
	// imported (the answer to its write lost, a read that failed) is
	// finished by the next claim on this node with the same position.
	// An entry is removed when the session is imported or discarded,
	// when the write lost a race, and when the session is given up.
	pending map[string]position
	// released holds, for releasedFor, the position in the durable
	// stream at which this node gave each session up (at most
	// maxReleased): a claim that fails after that leaves the session on
	// no node, and the next claim is answered with this position rather
	// than the current one, so that it replays what the session missed
	// meanwhile (handleRelease). An entry goes once the claim is known
	// to have taken the session record (handleTaken, confirmReleased):
	// no claim can use this node's answer then.
	released map[string]releasedAt
	// releaseTokens numbers this node's answers to release requests
	// (releaseReply.Token); releasedCap, in tests, replaces maxReleased.
	releaseTokens uint64
	releasedCap   int
	// confirmMu lets one release request at a time look up the records
	// of given-up sessions when released is full (confirmReleased).
	confirmMu sync.Mutex
	// claiming counts, per client ID, the claims of this node under way
	// for a client that keeps its session, from their start until the
	// broker attached the client (ClaimAttached): a release request for
	// the session meanwhile is answered "busy, try again" (handleRelease).
	claiming map[string]claimMark
	// takes holds, per client ID, the takes of the session under way on
	// this node (take): another claim of the client ID here waits for
	// them to end before it reads the session record (ClaimSession).
	takes map[string]*takeMark
	// failed holds, for failedFor, the start of each claim of this node
	// that failed after its old home was asked to give the session up
	// (at most maxFailedClaims): the next claim of the same client ID on
	// this node resumes it, pin included, so that it replays this
	// node's messages from the first claim's start (ClaimSession).
	failed map[string]*failedClaim

	stream jetstream.Stream // set before ready closes
	js     jetstream.JetStream
	ready  chan struct{} // closed once the stream is in use and this node's sessions are imported

	// claims counts the claims under way. While there is one, ownRefs
	// names this node's own messages forwarded to the durable stream by
	// their ID in it (at most maxOwnRefs), so that a claim that replays
	// this node's own recent messages to the session it imports skips
	// those the session got otherwise (take).
	claims  atomic.Int32
	ownMu   sync.Mutex
	ownRefs map[*broker.Message]string
	// ownQoS0 names, likewise, this node's QoS 0 messages forwarded to
	// other nodes by their sequence number (at most maxOwnRefs), so that
	// the claim skips those the old home sent to the session's
	// connection.
	ownQoS0 map[*broker.Message]uint64
	// beforeImport, in tests, runs while a claim imports a session, just
	// before the broker has it; afterImport right after, while the
	// session holds back what routing delivers to it.
	beforeImport, afterImport atomic.Pointer[func(id string)]
	// afterReplayRead, in tests, runs when a claim has read the durable
	// messages to replay the first time, before the import.
	afterReplayRead atomic.Pointer[func(id string)]
	// afterCatchUpEnd, in tests, runs when a catch-up that reached the
	// routing position let routing deliver to its session again, before
	// its last messages are committed (catchUp.finish).
	afterCatchUpEnd atomic.Pointer[func(id string)]
	// homeImportErr, in tests, fails the import of a session of this
	// node's previous run when it returns an error (importHomeOnce).
	homeImportErr atomic.Pointer[func(id string) error]
	// homeAwaits are the broker's waits for the clients of the sessions
	// this node imports at its start (awaitHomeClient), by client ID,
	// until endHomeAwaits ends them homeAwaitFor later (0: homeAwait;
	// set in tests).
	homeMu       sync.Mutex
	homeAwaits   map[string]func()
	homeAwaitFor atomic.Int64
	// gateAgeFor, in tests, replaces gateCatchUpAge (0: that).
	gateAgeFor atomic.Int64
	// takeWaits counts the claims that waited for a take of the same
	// client ID under way on this node (ClaimSession).
	takeWaits atomic.Uint64
	// beforeReply, in tests, runs when this node, the old home, has
	// given a session up and is about to answer the claim (a slow old
	// home).
	beforeReply atomic.Pointer[func(id string)]
	// afterRelease, in tests, runs when a claim has the old home's
	// answer; an error fails the claim there (as a failed write of the
	// session record would).
	afterRelease atomic.Pointer[func(id string) error]
	// beforeRelease, in tests, runs when a claim is about to ask the
	// old home to give the session up.
	beforeRelease atomic.Pointer[func(id string)]
	// releaseWait, in tests, replaces the 5 s a claim waits at most for
	// the old home's answer.
	releaseWait time.Duration
	// afterTake, in tests, runs when a claim has written the session
	// record (this node is the home), before it reads the session.
	afterTake atomic.Pointer[func(id string)]
	// takeAnswerLost, in tests, runs when a take has written the
	// session record; an error fails the take there, as a write whose
	// answer was lost does (the home taken, the caller told otherwise).
	takeAnswerLost atomic.Pointer[func(id string) error]
	// busyAnswer, in tests, runs when this node answers a release
	// request "busy, try again".
	busyAnswer atomic.Pointer[func(id string)]
	// releaseHeld, in tests, runs as a release request arrives, before
	// anything is given up; a request whose hook returns after the Node
	// closed is not answered (as one that reached a node as it died).
	releaseHeld atomic.Pointer[func(ctx context.Context, id string)]

	// catchUps are the sessions catching up here, by client ID
	// (catchup.go); paced counts those a routing pass started, and
	// releasing the sessions being given up to another node now (no
	// routing pass starts one for them). cuMu guards these; the
	// broker asks for a reservation (reservePaced) under a session's
	// lock, so nothing else is done holding it. In tests, noCatchUp
	// keeps a claim's replay to its bound.
	cuMu      sync.Mutex
	catchUps  map[string]*catchUp
	reserved  map[string]*catchUp // by the routing pass under way, until it starts them
	paced     int
	pacedAway int // of paced, those for sessions whose client was away
	releasing map[string]int
	// cuMoved is closed, and made again when wanted, as a paced
	// catch-up moves on or ends: the first messages of connections
	// that wait for one (AwaitCaughtUp) look again.
	cuMoved   chan struct{}
	noCatchUp bool

	// holds are the imports holding back routed deliveries now, by
	// client ID (see holdAcks); holdMu guards them and every
	// importHold, holdN counts them (none: no look-up).
	holdMu sync.Mutex
	holds  map[string]*importHold
	holdN  atomic.Int32
}

// importHold is one import holding back what routing delivers to its
// session: the acknowledgements (a stream record's, a shared group's
// "committed") of the routing passes made meanwhile wait until the
// deliveries it held back are written. Guarded by holdMu.
type importHold struct {
	pending  int   // commits writing the session's deliveries, not yet done
	err      error // the first of them that failed
	released bool  // the session released what it held (endHold)
	waiters  []*heldAck
}

// heldAck runs done once all its parts have finished, with the first
// error. It is the acknowledgement of one routing pass made while
// imports held deliveries back (done runs once the pass's own commit and
// the writes of every such import's held deliveries are durable), and of
// a record whose routing started catch-ups (once their positions are
// stored too, handleBatch).
type heldAck struct {
	mu    sync.Mutex
	parts int
	err   error
	done  func(error)
}

// part adds a part and returns the function that finishes it.
func (h *heldAck) part() func(error) {
	h.mu.Lock()
	h.parts++
	h.mu.Unlock()
	return h.finish
}

func (h *heldAck) finish(err error) {
	h.mu.Lock()
	if err != nil && h.err == nil {
		h.err = err
	}
	h.parts--
	last := h.parts == 0
	err = h.err
	h.mu.Unlock()
	if last {
		h.done(err)
	}
}

// beginHold registers the import of id's session, which holds back the
// deliveries routed to it. The caller holds routeMu, as routing does
// when it calls holdAcks.
func (n *Node) beginHold(id string) *importHold {
	h := &importHold{}
	s := &n.sess
	s.holdMu.Lock()
	if s.holds == nil {
		s.holds = make(map[string]*importHold)
	}
	if _, dup := s.holds[id]; !dup {
		s.holds[id] = h
		s.holdN.Add(1)
	}
	s.holdMu.Unlock()
	return h
}

// endHold runs once the session of id released the deliveries h held
// back (broker.LocalReplay.Deliver submits their writes before it
// returns): the acknowledgements that waited for h follow those writes
// (watchHeld), or fail with the first of them that failed, and their
// messages are then delivered again (at least once).
func (n *Node) endHold(id string, h *importHold) {
	s := &n.sess
	s.holdMu.Lock()
	if s.holds[id] == h {
		delete(s.holds, id)
		s.holdN.Add(-1)
	}
	h.released = true
	n.heldDoneLocked(h)
}

// heldDoneLocked ends h's waiters once h is released and its writes are
// done; it unlocks holdMu.
func (n *Node) heldDoneLocked(h *importHold) {
	var waiters []*heldAck
	if h.released && h.pending == 0 {
		waiters, h.waiters = h.waiters, nil
	}
	err := h.err
	n.sess.holdMu.Unlock()
	for _, w := range waiters {
		w.finish(err)
	}
}

// watchHeld makes the end of the holds wait for c when it writes a
// delivery of a session being imported (the deliveries it held back,
// released); c's finish reports to them (heldWritten).
func (n *Node) watchHeld(c *commit, changes []broker.Change) {
	s := &n.sess
	s.holdMu.Lock()
	defer s.holdMu.Unlock()
	for i := range changes {
		ch := &changes[i]
		if ch.Kind != broker.ChangePutDelivery {
			continue
		}
		if h := s.holds[ch.Delivery.ClientID]; h != nil && !slices.Contains(c.holds, h) {
			h.pending++
			c.holds = append(c.holds, h)
		}
	}
}

// heldWritten reports the end of a commit watchHeld gave to holds.
func (n *Node) heldWritten(holds []*importHold, err error) {
	for _, h := range holds {
		n.sess.holdMu.Lock()
		h.pending--
		if err != nil && h.err == nil {
			h.err = err
		}
		n.heldDoneLocked(h)
	}
}

// holdAcks returns the done function a routing pass hands the broker:
// done itself when no import holds deliveries back, otherwise one that
// also waits for every import holding now (endHold). A delivery held
// back is written only when its session releases it, and the
// acknowledgement must not come before that write (docs/cluster.md,
// "Sessions"). The caller holds routeMu.
func (n *Node) holdAcks(done func(error)) func(error) {
	s := &n.sess
	if s.holdN.Load() == 0 {
		return done
	}
	s.holdMu.Lock()
	defer s.holdMu.Unlock()
	if len(s.holds) == 0 {
		return done
	}
	w := &heldAck{parts: 1 + len(s.holds), done: done}
	for _, h := range s.holds {
		h.waiters = append(h.waiters, w)
	}
	return w.finish
}

// maxOwnRefs bounds sessionsState.ownRefs; a message beyond it may reach
// a moving session twice (at least once).
const maxOwnRefs = 1 << 16

// maxOwnScan bounds how many records past this node's routing position
// a claim reads for the node's own messages it forwarded, which its
// consumer skips (ownEnd): past the bound they are missed for the
// session. Memory does not depend on it (the reading keeps only the
// messages for the session, up to the room of its queue and
// maxReplayBytes); time does, and the claim's client waits for it:
// 32,768 records read in batches took about 0.45 s on a quiet machine
// (BenchmarkOwnScan, docs/performance.md), less than the 4,096 gets of
// the stream's leader, one record each, that the bound was before
// replays read in batches (about 0.7 s).
const maxOwnScan = 1 << 15

// maxOwnBack bounds how many records before the old home's position a
// claim reads for the node's own messages the old home routed
// (readReplay): past the bound they may reach the session twice (at
// least once). It stays at 4,096: the claim keeps the ID of every own
// message of those records (replaySet.reached, up to maxBatchMsgs a
// record, matching the session or not), about a million at most.
const maxOwnBack = 4096

// homeState is what the home keeps of a session's records: the message
// of each stored delivery (a delivery's record is rewritten with it when
// its state changes), and which other records exist.
type homeState struct {
	msgs    map[uint64]*broker.Message
	refs    map[uint64]string // the durable stream's ID of a delivery's message, if any
	inbound map[uint16]struct{}
	will    bool
}

func newHomeState() *homeState {
	return &homeState{msgs: make(map[uint64]*broker.Message), refs: make(map[uint64]string), inbound: make(map[uint16]struct{})}
}

func (s *sessionsState) init() {
	s.homed = make(map[string]*homeState)
	s.gone = make(map[string]time.Time)
	s.pending = make(map[string]position)
	s.released = make(map[string]releasedAt)
	s.failed = make(map[string]*failedClaim)
	s.claiming = make(map[string]claimMark)
	s.takes = make(map[string]*takeMark)
	s.ready = make(chan struct{})
}

// sessionBroker is what sessions cluster-wide need of the broker:
// *broker.Server.
type sessionBroker interface {
	ImportSession(cs *broker.ClusterSession)
	CatchUpImported(clientID string) bool
	FindLocal(clientID string, since int64) *broker.LocalReplay
	PinRecent() *broker.RecentPin
	ReleaseSession(clientID string) (released, online bool)
	SessionFilters(clientID string) []string
	DiscardConnectionWill(clientID string)
	DeliverToSession(clientID string, msg *broker.Message, done func(error)) bool
	DeliverOwedToSession(clientID string, msg *broker.Message, done func(error)) bool
	WaitRouted(ctx context.Context) error
	Limits() broker.Limits
	AwaitClient(clientID string) (done func())
}

var _ sessionBroker = (*broker.Server)(nil)
var _ broker.SessionCluster = (*Node)(nil)
var _ broker.ClaimAttacher = (*Node)(nil)

// claimMark counts the claims of a client ID under way on this node
// (sessionsState.claiming), at the start of the latest.
type claimMark struct {
	n  int
	at time.Time
}

// claimMarkFor bounds how long a claim counts as under way without the
// broker's word that its client is attached: longer than a claim's
// import may take (2 minutes once it wrote the session record).
const claimMarkFor = 3 * time.Minute

// markClaim counts a claim of id under way on this node.
func (n *Node) markClaim(id string) {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	m := n.sess.claiming[id]
	m.n++
	m.at = time.Now()
	n.sess.claiming[id] = m
}

// unmarkClaim ends a claim of id counted by markClaim.
func (n *Node) unmarkClaim(id string) {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	m, ok := n.sess.claiming[id]
	switch {
	case !ok:
	case m.n <= 1:
		delete(n.sess.claiming, id)
	default:
		m.n--
		n.sess.claiming[id] = m
	}
}

// takeMark counts the takes of a client ID's session under way on this
// node; done is closed when the last one ends.
type takeMark struct {
	n    int
	done chan struct{}
}

// beginTake counts a take of id's session under way on this node.
func (n *Node) beginTake(id string) {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	m := n.sess.takes[id]
	if m == nil {
		m = &takeMark{done: make(chan struct{})}
		n.sess.takes[id] = m
	}
	m.n++
}

// endTake ends a take counted by beginTake.
func (n *Node) endTake(id string) {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	if m := n.sess.takes[id]; m != nil {
		if m.n--; m.n <= 0 {
			delete(n.sess.takes, id)
			close(m.done)
		}
	}
}

// takeUnderWay returns a channel closed when the takes of id's session
// under way on this node have ended, nil when there are none.
func (n *Node) takeUnderWay(id string) <-chan struct{} {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	if m := n.sess.takes[id]; m != nil {
		return m.done
	}
	return nil
}

// claimingNow tells whether a claim of id is under way on this node.
func (n *Node) claimingNow(id string) bool {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	_, ok := n.sess.claiming[id]
	return ok
}

// ClaimAttached implements broker.ClaimAttacher: the claim of clientID
// is over, its client attached (or refused); a release request is
// answered again.
func (n *Node) ClaimAttached(clientID string) { n.unmarkClaim(clientID) }

func sessSubject(clientID, suffix string) string {
	return sessPrefix + keyOf(clientID) + "." + suffix
}

// clientOfSubject returns the client ID and the record suffix of a
// session subject.
func clientOfSubject(subj string) (id, suffix string, err error) {
	rest, ok := strings.CutPrefix(subj, sessPrefix)
	if !ok {
		return "", "", errToken
	}
	tok, suffix, ok := strings.Cut(rest, ".")
	if !ok {
		return "", "", errToken
	}
	id, err = keyString(tok)
	return id, suffix, err
}

// setHome records that this node is the home of the session of id.
func (n *Node) setHome(id string, hs *homeState) {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	n.sess.homed[id] = hs
	delete(n.sess.gone, id)
	delete(n.sess.released, id)
}

// Bounds of what a failed claim leaves behind (docs/cluster.md,
// "Sessions", "A claim that fails").
const (
	// maxReleased bounds sessionsState.released: the entries whose
	// claims are not known to have taken the session record. Beyond it,
	// this node looks up the records of the oldest (confirmReleased),
	// and gives no session up (the claim is refused, CONNACK 0x89) until
	// one of them names another home or entries expire.
	maxReleased = 1 << 16
	// releasedFor is how long a position given is remembered.
	releasedFor = 10 * time.Minute
	// confirmBatch is how many entries of released one look-up reads the
	// records of, at most; confirmWait bounds its time (the claim waits
	// at most 5 s for the answer).
	confirmBatch = 256
	confirmWait  = 3 * time.Second
	// maxFailedClaims bounds sessionsState.failed: beyond it (plus the
	// claims under way), a claim that no failed one resumes is refused
	// before it asks anything (CONNACK 0x89).
	maxFailedClaims = 1024
	// failedFor is how long a failed claim is kept for the next one;
	// its pin holds the record of recent messages meanwhile, so it is
	// short: as long as a marker lingers (markerLinger). The old home's
	// markers of a session it gave up stay while it remembers the
	// position (dropLingering), so the other nodes' durable messages
	// for the session go on reaching the stream after that.
	failedFor = markerLinger
)

// releasedAt is the position at which this node gave a session up, and
// when; qos0 is the highest sequence number of the messages of origin,
// the claiming node's run, routed to the session's connection (see
// releaseReply). first numbers the first answer given for the session
// since this node last had it (releaseTokens): a claim that took the
// session record after an answer numbered at least first makes every
// answer of the entry useless (handleTaken). checked is when
// confirmReleased last found that the record still names this node.
type releasedAt struct {
	seq     uint64
	origin  string
	qos0    uint64
	at      time.Time
	first   uint64
	checked time.Time
}

// failedClaim is the start of a claim that failed after its old home
// was asked to give the session up. It counts as a claim under way
// (beginClaim) while it is kept, so that this node's messages keep
// being noted with their stream IDs, and owns pin.
type failedClaim struct {
	since int64
	from  uint64
	pin   *broker.RecentPin
	at    time.Time
}

// releaseCap is maxReleased, or the bound a test set.
func (n *Node) releaseCap() int {
	if n.sess.releasedCap > 0 {
		return n.sess.releasedCap
	}
	return maxReleased
}

// releaseFull tells whether this node remembers as many given-up
// sessions as it may, id's aside.
func (n *Node) releaseFull(id string) bool {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	if _, ok := n.sess.released[id]; ok || len(n.sess.released) < n.releaseCap() {
		return false
	}
	n.pruneReleasedLocked(time.Now())
	return len(n.sess.released) >= n.releaseCap()
}

// roomToRelease tells whether this node may give up the session of id:
// when it remembers as many given-up sessions as it may, it first reads
// the records of the oldest (confirmReleased), one request at a time.
func (n *Node) roomToRelease(id string) bool {
	if !n.releaseFull(id) {
		return true
	}
	n.sess.confirmMu.Lock()
	defer n.sess.confirmMu.Unlock()
	if !n.releaseFull(id) {
		return true // another request made room meanwhile
	}
	ctx, cancel := context.WithTimeout(n.ctx, confirmWait)
	defer cancel()
	n.confirmReleased(ctx, time.Now())
	return !n.releaseFull(id)
}

// confirmReleased reads the session records of up to confirmBatch of the
// oldest given-up sessions not looked at for failedFor, given up more
// than failedFor ago (a younger one's claim is likely under way), and
// forgets those whose record no longer names this node: its answer is of
// no use to any claim then (a claim uses it only if the record, read
// again after the answer, still names this node, which only this node
// can make it do again, and it then forgets the entry anyway, setHome).
// Those whose record still names this node (a claim failed, the session
// is on no node) stay, looked at again after failedFor. A record that
// cannot be read keeps its entry.
func (n *Node) confirmReleased(ctx context.Context, now time.Time) {
	type cand struct {
		id    string
		first uint64
		at    time.Time
	}
	var cands []cand
	n.sess.mu.Lock()
	for id, r := range n.sess.released {
		if now.Sub(r.at) > failedFor && now.Sub(r.checked) > failedFor {
			cands = append(cands, cand{id, r.first, r.at})
		}
	}
	n.sess.mu.Unlock()
	slices.SortFunc(cands, func(a, b cand) int { return a.at.Compare(b.at) })
	cands = cands[:min(len(cands), confirmBatch)]
	for _, c := range cands {
		cur, err := n.getRecord(ctx, sessSubject(c.id, "s"))
		if err != nil {
			if ctx.Err() != nil {
				return // out of time: the entries not read stay
			}
			continue // this entry stays
		}
		ours := false
		if cur != nil && len(cur.data) > 0 {
			if rec, err := decodeSession(cur.data); err == nil && rec.Home == n.origin {
				ours = true
			}
		}
		n.sess.mu.Lock()
		if r, ok := n.sess.released[c.id]; ok && r.first == c.first {
			if ours {
				r.checked = now
				n.sess.released[c.id] = r
			} else {
				delete(n.sess.released, c.id)
			}
		}
		n.sess.mu.Unlock()
	}
}

// takenNotice tells the old home of a session that a claim took the
// session record after its answer numbered Token (releaseReply.Token).
type takenNotice struct {
	Client string `json:"client"`
	Token  uint64 `json:"token"`
}

// takenSubject is where this node's run, origin, hears of the sessions
// it gave up that their claims took (takenNotice). A node of an earlier
// build neither sends nor hears these: its entries go by
// confirmReleased or after releasedFor.
func takenSubject(origin string) string { return ctlPrefix + keyOf(origin) + ".taken" }

// handleTaken forgets the position at which this node gave up a session
// that a claim has taken since (its record names the claiming node): no
// claim can use this node's answer any more. A notice of an earlier time
// this node gave the session up (token below the entry's first) is
// ignored.
func (n *Node) handleTaken(m *nats.Msg) {
	var t takenNotice
	if json.Unmarshal(m.Data, &t) != nil || t.Client == "" {
		return
	}
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	if r, ok := n.sess.released[t.Client]; ok && r.first <= t.Token {
		delete(n.sess.released, t.Client)
	}
}

// giveUp stops writing the session of id, given up to another node
// (its run origin) whose claim asked for it when this node had routed
// the durable stream up to routed and that node's messages up to qos0
// (released: the broker had the session). It returns the answer: routed
// and qos0 when this node had the session; when it had given it up
// already (an earlier claim failed afterwards), what it answered then
// (qos0 for the same claiming node only); when this node had taken the
// home of it without importing it (a claim of its own that failed
// afterwards), the position that claim had. token numbers the answer
// (takenNotice).
func (n *Node) giveUp(id string, released bool, routed uint64, origin string, qos0 uint64) (_, _, token uint64) {
	s := &n.sess
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	_, homed := s.homed[id]
	if pos, ok := s.pending[id]; !released && !homed && ok && pos.replay {
		routed, qos0 = pos.seq, 0
	} else if r, ok := s.released[id]; !released && !homed && ok {
		routed, qos0 = r.seq, 0
		if r.origin == origin {
			qos0 = r.qos0
		}
	}
	s.releaseTokens++
	token = s.releaseTokens
	first := token
	if r, ok := s.released[id]; ok && !released && !homed {
		// Given up already: this node has not written the record since,
		// and a claim that took it makes every answer since useless.
		first = r.first
	}
	s.released[id] = releasedAt{seq: routed, origin: origin, qos0: qos0, at: now, first: first}
	delete(s.homed, id)
	delete(s.pending, id)
	s.gone[id] = now
	return routed, qos0, token
}

// lastGivenUp is when this node gave up the latest of the sessions whose
// positions it remembers (released); zero when it remembers none.
func (n *Node) lastGivenUp() (last time.Time) {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	for _, r := range n.sess.released {
		if r.at.After(last) {
			last = r.at
		}
	}
	return last
}

// pruneReleasedLocked forgets the positions given more than releasedFor
// ago. sess.mu held.
func (n *Node) pruneReleasedLocked(now time.Time) {
	for id, r := range n.sess.released {
		if now.Sub(r.at) > releasedFor {
			delete(n.sess.released, id)
		}
	}
}

// resumeFailed returns the failed claim of id kept by this node, if any,
// and forgets it: the caller owns its pin and its count of claims.
func (n *Node) resumeFailed(id string) *failedClaim {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	f := n.sess.failed[id]
	delete(n.sess.failed, id)
	return f
}

// failedFull tells whether this node keeps as many failed claims as it
// may.
func (n *Node) failedFull() bool {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	return len(n.sess.failed) >= maxFailedClaims
}

// keepFailed keeps f, a claim of id that failed after its old home was
// asked to give the session up, for the next claim; it takes over f's
// pin. A pin that lost a message (the record's bound) is not kept: the
// claim cannot be resumed whole.
func (n *Node) keepFailed(id string, f *failedClaim) {
	if f.pin != nil && f.pin.Err() != nil {
		f.pin.Release()
		n.log.Error("cluster: the record of recent messages reached its bound during a claim that failed; "+
			"messages published on this node meanwhile may be missing from the session when it is claimed again", "client", id)
		return
	}
	n.beginClaim()
	n.sess.mu.Lock()
	old := n.sess.failed[id]
	n.sess.failed[id] = f
	n.sess.mu.Unlock()
	if old != nil {
		n.dropFailed(id, old, "")
	}
}

// dropFailed ends a kept failed claim, logging why when it may cost the
// session messages.
func (n *Node) dropFailed(id string, f *failedClaim, why string) {
	if f.pin != nil {
		f.pin.Release()
	}
	n.endClaim()
	if why != "" {
		n.log.Warn("cluster: a failed claim of a session forgotten; "+
			"messages published on this node meanwhile may be missing from the session when it is claimed again",
			"client", id, "reason", why)
	}
}

// unhome stops writing the session of id, given up to another node.
func (n *Node) unhome(id string) {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	delete(n.sess.homed, id)
	delete(n.sess.pending, id)
	n.sess.gone[id] = time.Now()
}

// noteOwn records the ID in the durable stream of msg, a message of this
// node's client, while a claim is under way.
func (n *Node) noteOwn(msg *broker.Message, ref string) {
	if n.sess.claims.Load() == 0 {
		return
	}
	n.sess.ownMu.Lock()
	defer n.sess.ownMu.Unlock()
	if n.sess.ownRefs == nil {
		n.sess.ownRefs = make(map[*broker.Message]string)
	}
	if len(n.sess.ownRefs) < maxOwnRefs {
		n.sess.ownRefs[msg] = ref
	}
}

// noteOwnQoS0 records the sequence number seq with which msg, a QoS 0
// message of this node's client, was forwarded to the other nodes,
// while a claim is under way.
func (n *Node) noteOwnQoS0(msg *broker.Message, seq uint64) {
	if n.sess.claims.Load() == 0 || msg.QoS != 0 {
		return
	}
	n.sess.ownMu.Lock()
	defer n.sess.ownMu.Unlock()
	if n.sess.ownQoS0 == nil {
		n.sess.ownQoS0 = make(map[*broker.Message]uint64)
	}
	if len(n.sess.ownQoS0) < maxOwnRefs {
		n.sess.ownQoS0[msg] = seq
	}
}

// ownQoS0Seq returns the sequence number noteOwnQoS0 has for msg (0: none).
func (n *Node) ownQoS0Seq(msg *broker.Message) uint64 {
	n.sess.ownMu.Lock()
	defer n.sess.ownMu.Unlock()
	return n.sess.ownQoS0[msg]
}

// ownRef returns the ID in the durable stream of msg, if noteOwn has it.
func (n *Node) ownRef(msg *broker.Message) string {
	n.sess.ownMu.Lock()
	defer n.sess.ownMu.Unlock()
	return n.sess.ownRefs[msg]
}

// deliverFound delivers what local found and held back for its session
// (LocalReplay.Deliver, skipping what skip names) with the stream IDs
// ref knows of the messages found noted for the delivery records
// written meanwhile. Those messages are this node's own, published while
// the session moved here, and their records may lie past the position
// this node gives the session up at; without their IDs in its records,
// the next node to claim it replayed them again from the stream (the
// claim's have). ref may be nil.
func (n *Node) deliverFound(local *broker.LocalReplay, skip func(*broker.Message) bool, ref func(*broker.Message) string) int {
	var noted []*broker.Message
	if ref != nil {
		for _, m := range local.Found() {
			if r := ref(m); r != "" {
				if _, taken := n.dur.refs.LoadOrStore(m, r); !taken {
					noted = append(noted, m)
				}
			}
		}
	}
	count := local.Deliver(skip)
	for _, m := range noted {
		n.dur.refs.Delete(m)
	}
	return count
}

// beginClaim marks a claim under way; endClaim ends it, and forgets the
// messages noted once no claim is left.
func (n *Node) beginClaim() { n.sess.claims.Add(1) }

func (n *Node) endClaim() {
	if n.sess.claims.Add(-1) == 0 {
		n.sess.ownMu.Lock()
		n.sess.ownRefs, n.sess.ownQoS0 = nil, nil
		n.sess.ownMu.Unlock()
	}
}

// setPending records the position of a claim of id under way.
func (n *Node) setPending(id string, pos position) {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	n.sess.pending[id] = pos
}

// clearPending forgets the position of a claim of id: it is finished,
// or it did not take the home.
func (n *Node) clearPending(id string) {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	delete(n.sess.pending, id)
}

// pruneGone forgets sessions given up more than a minute ago, the
// positions given more than releasedFor ago, the claims counted as under
// way for more than claimMarkFor, and the failed claims kept for more
// than failedFor or whose pin lost a message.
func (n *Node) pruneGone(now time.Time) {
	type dropped struct {
		id  string
		f   *failedClaim
		why string
	}
	var drop []dropped
	n.sess.mu.Lock()
	for id, t := range n.sess.gone {
		if now.Sub(t) > time.Minute {
			delete(n.sess.gone, id)
		}
	}
	n.pruneReleasedLocked(now)
	var stale []string
	for id, m := range n.sess.claiming {
		if now.Sub(m.at) > claimMarkFor {
			delete(n.sess.claiming, id)
			stale = append(stale, id)
		}
	}
	for id, f := range n.sess.failed {
		switch {
		case f.pin != nil && f.pin.Err() != nil:
			drop = append(drop, dropped{id, f, "the record of recent messages reached its bound"})
		case now.Sub(f.at) > failedFor:
			drop = append(drop, dropped{id, f, "no claim came again in time"})
		default:
			continue
		}
		delete(n.sess.failed, id)
	}
	n.sess.mu.Unlock()
	for _, id := range stale {
		n.log.Error("cluster: a claim of a session counted as under way for too long; its session is given up again when asked",
			"client", id)
	}
	for _, d := range drop {
		n.dropFailed(d.id, d.f, d.why)
	}
}

// sessionChange turns one change of the broker's commit c into the
// session records it writes. msgs are the messages of the commit by ID,
// own the stream IDs of those it forwarded (nil: none).
// Changes of a session whose home is another node are dropped: that node
// writes it now. A session the broker starts again right after ending it
// (Clean Start on its home) is this node's again with its first record.
func (p *persistence) sessionChange(c *commit, ch *broker.Change, msgs map[uint64]*broker.Message, own map[*broker.Message]string) {
	if p.cleanWillChange(c, ch) {
		return // a clean session's, which has no home (wills.go)
	}
	n := p.n
	var id string
	switch ch.Kind {
	case broker.ChangePutSession:
		id = ch.Session.ClientID
	case broker.ChangePutDelivery:
		id = ch.Delivery.ClientID
	case broker.ChangePutWill:
		id = ch.Will.ClientID
	default:
		id = ch.ClientID
	}
	if len(sessSubject(id, "d.18446744073709551615")) > maxSubject {
		c.fail(errors.New("cluster: client ID too long for a session kept in the cluster"))
		return
	}
	n.sess.mu.Lock()
	hs := n.sess.homed[id]
	if hs == nil {
		_, gone := n.sess.gone[id]
		if ch.Kind != broker.ChangePutSession || gone {
			n.sess.mu.Unlock()
			return
		}
		hs = newHomeState()
		n.sess.homed[id] = hs
		delete(n.sess.released, id)
	}
	var subj string
	var data []byte
	var err error
	switch ch.Kind {
	case broker.ChangePutSession:
		subj = sessSubject(id, "s")
		data, err = encodeRecord(kindSession, sessionRecordOf(ch.Session, n.origin, n.cfg.Node), nil)
	case broker.ChangeDeleteSession:
		delete(n.sess.homed, id)
		var subjs []string
		for seq := range hs.msgs {
			subjs = append(subjs, sessSubject(id, "d."+strconv.FormatUint(seq, 10)))
		}
		for pid := range hs.inbound {
			subjs = append(subjs, sessSubject(id, "i."+strconv.Itoa(int(pid))))
		}
		if hs.will {
			subjs = append(subjs, sessSubject(id, "w"))
		}
		n.sess.mu.Unlock()
		for _, s := range subjs {
			p.publish(c, n.tombstone(s))
		}
		p.publish(c, n.tombstone(sessSubject(id, "s")))
		return
	case broker.ChangePutDelivery:
		d := ch.Delivery
		m := msgs[d.MsgID]
		if m == nil {
			m = hs.msgs[d.Seq]
		}
		if m == nil {
			n.sess.mu.Unlock()
			c.fail(errors.New("cluster: a delivery's message is unknown"))
			return
		}
		hs.msgs[d.Seq] = m
		ref, ok := hs.refs[d.Seq]
		if !ok {
			if r, found := n.dur.refs.Load(m); found {
				ref = r.(string)
				hs.refs[d.Seq] = ref
			} else if r := own[m]; r != "" {
				// This node's client's message, delivered here live:
				// named too, so that a claim of the session elsewhere
				// does not replay it again from the stream.
				ref = r
				hs.refs[d.Seq] = ref
			}
		}
		subj = sessSubject(id, "d."+strconv.FormatUint(d.Seq, 10))
		data, err = encodeDelivery(d, m, ref)
	case broker.ChangeDeleteDelivery:
		delete(hs.msgs, ch.Seq)
		delete(hs.refs, ch.Seq)
		subj = sessSubject(id, "d."+strconv.FormatUint(ch.Seq, 10))
	case broker.ChangePutInbound:
		hs.inbound[ch.PacketID] = struct{}{}
		subj = sessSubject(id, "i."+strconv.Itoa(int(ch.PacketID)))
		data, err = encodeRecord(kindInbound, struct{}{}, nil)
	case broker.ChangeDeleteInbound:
		delete(hs.inbound, ch.PacketID)
		subj = sessSubject(id, "i."+strconv.Itoa(int(ch.PacketID)))
	case broker.ChangePutWill:
		hs.will = true
		subj = sessSubject(id, "w")
		data, err = encodeWill(ch.Will)
	case broker.ChangeDeleteWill:
		hs.will = false
		subj = sessSubject(id, "w")
	}
	n.sess.mu.Unlock()
	if err != nil {
		c.fail(err)
		return
	}
	if data == nil {
		p.publish(c, n.tombstone(subj))
		return
	}
	p.publish(c, n.record(subj, data))
}

func (n *Node) record(subj string, data []byte) *nats.Msg {
	return &nats.Msg{Subject: subj, Data: data, Header: nats.Header{hdrOrigin: []string{n.origin}}}
}

// tombstone empties a record; the empty record expires after a second.
func (n *Node) tombstone(subj string) *nats.Msg {
	return &nats.Msg{Subject: subj, Header: nats.Header{hdrOrigin: []string{n.origin}, hdrTTL: []string{tombstoneTTL}}}
}

// setupSessions creates or binds the sessions stream.
func (n *Node) setupSessions(ctx context.Context, js jetstream.JetStream) error {
	st, err := n.createOrUpdateStream(ctx, js, jetstream.StreamConfig{Name: streamSessions, Subjects: []string{sessPrefix + ">"},
		Description: "Moat persistent sessions", Retention: jetstream.LimitsPolicy, MaxMsgsPerSubject: 1, AllowMsgTTL: true,
		Storage: jetstream.FileStorage, Replicas: n.replicas})
	if err != nil {
		return err
	}
	n.sess.stream, n.sess.js = st, js
	return nil
}

// awaitSessions waits until the sessions stream is in use.
func (n *Node) awaitSessions(ctx context.Context) error {
	select {
	case <-n.sess.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.ctx.Done():
		return errClosed
	}
}

// record is one record read from the sessions stream.
type storedRecord struct {
	subject string
	seq     uint64
	origin  string
	data    []byte
}

// getRecord reads the last value of subj: nil when there is none (seq is
// then 0), an empty record when it was removed.
func (n *Node) getRecord(ctx context.Context, subj string) (*storedRecord, error) {
	var m *jetstream.RawStreamMsg
	var err error
	for {
		// A request unanswered for 3 s or until the stream's next
		// election (it reached a leader as it died), or refused at once
		// (no leader yet), is made again while ctx allows.
		gctx, done := n.elections.attempt(ctx, streamSessions, 3*time.Second)
		m, err = n.sess.stream.GetLastMsgForSubject(gctx, subj)
		done()
		if err == nil || errors.Is(err, jetstream.ErrMsgNotFound) || ctx.Err() != nil ||
			!retryable(err) && !errors.Is(err, context.Canceled) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &storedRecord{subject: subj, seq: m.Sequence, origin: m.Header.Get(hdrOrigin), data: m.Data}, nil
}

// getNext returns the first message of st matching filter with a
// sequence from from to to (0: the end), nil if there is none. For
// moat_msgs, as the stream's leader has it (leaderGet: the stream may
// allow direct gets, replayread.go); other streams are read with
// GetMsg, which follows their AllowDirect (the buckets' streams have
// it). A get that fails or goes unanswered for getAttempt or until the
// stream's next election (a request that reached a leader as it died, a
// stream electing its leader) is tried again until ctx ends.
func (n *Node) getNext(ctx context.Context, st jetstream.Stream, filter string, from, to uint64) (*jetstream.RawStreamMsg, error) {
	from = max(from, 1)
	if to != 0 && from > to {
		return nil, nil
	}
	name := st.CachedInfo().Config.Name
	var lastErr error
	for {
		gctx, done := n.elections.attempt(ctx, name, getAttempt)
		var m *jetstream.RawStreamMsg
		var err error
		if name == streamMsgs {
			m, err = n.leaderGet(gctx, name, from, filter)
		} else {
			m, err = st.GetMsg(gctx, from, jetstream.WithGetMsgSubject(filter))
		}
		done()
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil
		}
		if err == nil {
			if to != 0 && m.Sequence > to {
				return nil, nil
			}
			return m, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (last: %v)", ctx.Err(), lastErr)
		}
		if lastErr == nil {
			// Once per reading, and at most once per forwardLogEvery
			// for the node: the readings made at once (readEach) all
			// fail in the same election.
			if ok, suppressed := n.readLog.allow(time.Now(), forwardLogEvery); ok {
				attrs := []any{"stream", name, "err", err}
				if suppressed > 0 {
					attrs = append(attrs, "suppressed", suppressed, "suppressed_for", forwardLogEvery)
				}
				n.log.Info("cluster: reading a stream failed; again", attrs...)
			}
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// putRecord writes a record if its subject's last sequence is still
// expect (0: it has none); it returns the new sequence, or errConflict.
// A refusal while another write of the subject is still being agreed on
// (inProcess) is asked again until ctx ends: that write decides whether
// this one is a conflict, and taking the refusal for one would give up a
// claim another node's failing write does not stand in the way of.
func (n *Node) putRecord(ctx context.Context, subj string, data []byte, expect uint64) (uint64, error) {
	ack, err := n.sess.js.PublishMsg(ctx, n.record(subj, data), jetstream.WithExpectLastSequencePerSubject(expect))
	for inProcess(err) && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
			ack, err = n.sess.js.PublishMsg(ctx, n.record(subj, data), jetstream.WithExpectLastSequencePerSubject(expect))
		}
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return 0, errConflict
	}
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

var errConflict = errors.New("cluster: the session record changed meanwhile")

// slowClaim is how long a claim takes before it is logged with the time
// its parts took: a client usually waits milliseconds for its CONNACK.
const slowClaim = 2 * time.Second

// unavailable is the refusal of a claim that may succeed later.
func unavailable(reason string) error { return &broker.ClaimRefused{Reason: reason, Unavailable: true} }

// ClaimSession implements broker.SessionCluster (see the top of this
// file). It imports the session into the broker itself, so that the
// import and the position of the durable stream are read together.
func (n *Node) ClaimSession(ctx context.Context, claim broker.SessionClaim) (err error) {
	if claim.Persistent {
		// Until its client is attached (ClaimAttached), or the claim
		// fails, a release request for the session is answered "busy,
		// try again": this node may have written the session record and
		// not imported it yet, or imported it without the client (docs/
		// cluster.md, "Claims at the same instant").
		n.markClaim(claim.ClientID)
		defer func() {
			if err != nil {
				n.unmarkClaim(claim.ClientID)
			}
		}()
	}
	if n.persistence() == nil {
		return nil
	}
	if !claim.Persistent {
		// A client without a session to keep is not held up while the
		// cluster has no quorum: it can end no session elsewhere then.
		select {
		case <-n.sess.ready:
		default:
			return nil
		}
	}
	// How long the parts of a slow claim took (its client waits for
	// CONNACK meanwhile): the old home's answer, the take (reading and
	// replaying what the session missed, the import), and the rest,
	// mostly the session store (no leader during an election).
	start := time.Now()
	var inRelease, inTake time.Duration
	defer func() {
		if took := time.Since(start); took >= slowClaim {
			n.log.Info("cluster: a session claim took long", "client", claim.ClientID, "took", took.Round(time.Millisecond),
				"old_home", inRelease.Round(time.Millisecond), "take", inTake.Round(time.Millisecond),
				"store", (took - inRelease - inTake).Round(time.Millisecond), "ok", err == nil)
		}
	}()
	if err := n.awaitSessions(ctx); err != nil {
		return unavailable("the cluster's session store is not available (no quorum?)")
	}
	id := claim.ClientID
	subj := sessSubject(id, "s")
	if len(subj) > maxSubject {
		if claim.Persistent {
			return &broker.ClaimRefused{Reason: "client identifier too long for a session kept in the cluster"}
		}
		return nil
	}
	// From here on, the messages of this node's clients are noted with
	// their stream IDs, and since is the earliest arrival a moving
	// session may have missed here (take).
	n.beginClaim()
	defer n.endClaim()
	var pin *broker.RecentPin
	var since int64
	var from uint64
	var failedAt time.Time // when the claim resumed here first failed
	// asked: an old home may have given the session up for this claim
	// (or for the failed one it resumes); if it fails, the session may
	// be on no node, and the next claim must replay from this one's
	// start.
	asked, resumed := false, false
	if f := n.resumeFailed(id); f != nil {
		if claim.Discard {
			n.dropFailed(id, f, "") // a clean start replays nothing
		} else {
			// A claim of this node that failed after its old home was
			// asked: this one goes on from its start.
			since, from, pin, asked, failedAt = f.since, f.from, f.pin, true, f.at
			n.endClaim() // f's count, now this claim's
			resumed = true
		}
	} else if !claim.Discard && n.failedFull() {
		return &broker.ClaimRefused{Reason: "too many claims of sessions failed here recently; try again",
			Unavailable: true, Busy: true}
	}
	if !resumed {
		// The broker's record of recent messages keeps every arrival
		// from here on until the session is imported and its messages
		// are found (take), within its bound: a claim that waits long
		// for the old home misses none. A clean start replays nothing.
		if b, ok := n.b.(sessionBroker); ok && !claim.Discard {
			pin = b.PinRecent()
		}
		n.dur.routeMu.Lock()
		since, from = time.Now().UnixNano(), n.dur.routed
		n.dur.routeMu.Unlock()
	}
	defer func() {
		switch {
		case err != nil && asked && !claim.Discard:
			// Kept from its first failure: claims that keep failing
			// do not keep the record pinned longer.
			if failedAt.IsZero() {
				failedAt = time.Now()
			}
			n.keepFailed(id, &failedClaim{since: since, from: from, pin: pin, at: failedAt})
		case pin != nil:
			pin.Release()
		}
	}()
	for attempt := 0; attempt < 8; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return unavailable("the session changed hands meanwhile")
			case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
			}
		}
		if done := n.takeUnderWay(id); done != nil {
			// Another claim of this client ID here (one whose client
			// gave up waiting, say) is taking the session: it may have
			// made this node the home without importing the session
			// yet, and this claim would then find no session in the
			// broker and start an empty one, or take it a second time.
			// It waits for that take to end, then reads the record.
			n.sess.takeWaits.Add(1)
			select {
			case <-done:
			case <-ctx.Done():
				return &broker.ClaimRefused{Reason: "the session is being taken over on this node; try again",
					Unavailable: true, Busy: true}
			}
		}
		cur, err := n.getRecord(ctx, subj)
		if err != nil {
			return unavailable("reading the session failed: " + err.Error())
		}
		var rec *sessionRecord
		var seq uint64
		if cur != nil {
			seq = cur.seq
			if len(cur.data) > 0 {
				if rec, err = decodeSession(cur.data); err != nil {
					n.log.Warn("cluster: malformed session record replaced", "client", id, "err", err)
				}
			}
		}
		if rec == nil {
			if !claim.Persistent {
				return nil
			}
			// No session: this node becomes the home of a new one.
			if _, err := n.putRecord(ctx, subj, mustRecord(&sessionRecord{Home: n.origin, Node: n.cfg.Node, Placeholder: true}), seq); err != nil {
				if errors.Is(err, errConflict) {
					continue
				}
				return unavailable("storing the session failed: " + err.Error())
			}
			n.setHome(id, newHomeState())
			return nil
		}
		if rec.Home == n.origin {
			n.sess.mu.Lock()
			_, homed := n.sess.homed[id]
			n.sess.mu.Unlock()
			if homed {
				return nil // this node holds it
			}
			// This node took it but could not read it: again, from the
			// position the first claim had, and from its start (kept
			// when it failed).
			n.sess.mu.Lock()
			pos := n.sess.pending[id]
			if r, ok := n.sess.released[id]; ok && !pos.replay {
				// Or this node gave it up, and the claim that asked
				// failed afterwards: the durable messages it routed
				// since then reached no node.
				pos = position{seq: r.seq, replay: true}
			}
			n.sess.mu.Unlock()
			if pos.replay {
				asked = true
				pos.since, pos.from, pos.pin = since, min(from, pos.seq), pin
			}
			t := time.Now()
			err := n.take(ctx, id, rec, seq, claim.Discard, claim.Persistent, pos, n.sessionRecords(id))
			inTake += time.Since(t)
			return err
		}
		discard := claim.Discard
		if d, refusal := claim.Owner(rec.Owner, rec.Verified); refusal != "" {
			return &broker.ClaimRefused{Reason: refusal}
		} else if d {
			discard = true
		}
		if f := n.sess.beforeRelease.Load(); f != nil {
			(*f)(id)
		}
		wasAsked := asked
		asked = true
		t := time.Now()
		pos, err := n.release(ctx, id, rec)
		inRelease += time.Since(t)
		if errors.Is(err, errReleaseRetry) {
			// The old home has a claim of its own under way (it may
			// have written the record and not imported the session, or
			// not attached its client): it gave nothing up. Asked again
			// until ctx ends; the session has not changed hands.
			asked = wasAsked
			attempt--
			select {
			case <-ctx.Done():
				return &broker.ClaimRefused{Reason: "a claim of the session is under way on its node; try again",
					Unavailable: true, Busy: true}
			case <-time.After(retryPause):
			}
			continue
		}
		if err != nil {
			return err
		}
		if f := n.sess.afterRelease.Load(); f != nil {
			if err := (*f)(id); err != nil {
				return unavailable(err.Error())
			}
		}
		pos.since, pos.from, pos.pin = since, min(from, pos.seq), pin
		// The old home's last changes are written: read the record again.
		cur, err = n.getRecord(ctx, subj)
		if err != nil {
			return unavailable("reading the session failed: " + err.Error())
		}
		if cur == nil || len(cur.data) == 0 {
			continue // it ended meanwhile
		}
		now, err := decodeSession(cur.data)
		if err != nil || now.Home != rec.Home {
			continue // another node took it meanwhile, or the record was stale
		}
		t = time.Now()
		err = n.take(ctx, id, now, cur.seq, discard, claim.Persistent, pos, n.sessionRecords(id))
		inTake += time.Since(t)
		return err
	}
	return unavailable("the session changed hands too often")
}

func mustRecord(r *sessionRecord) []byte {
	b, err := encodeRecord(kindSession, r, nil)
	if err != nil {
		panic(err) // a sessionRecord always encodes
	}
	return b
}

// releaseReply is the old home's answer to a release request.
type releaseReply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Routed is the stream sequence up to which the old home routed
	// durable messages with the session present.
	Routed uint64 `json:"routed"`
	// Busy: the old home remembers too many sessions given up to give
	// up another now (maxReleased), or (Retry) a claim of its own of the
	// session is under way: it gave nothing up, and the claiming node
	// asks again (an earlier build refuses its client, CONNACK 0x89).
	Busy  bool `json:"busy,omitempty"`
	Retry bool `json:"retry,omitempty"`
	// Token numbers the answer: the claiming node tells the old home
	// once it has taken the session record (takenNotice).
	Token uint64 `json:"token,omitempty"`
	// QoS0 is, when a connection was attached to the session, the highest
	// sequence number of the claiming node's forwarded messages that the
	// old home routed before it gave the session up: its QoS 0 messages
	// up to there went to that connection (or were dropped with it), and
	// the claim does not replay them (0: replay every one).
	QoS0 uint64 `json:"qos0,omitempty"`
	// Skip names, for a session that was catching up (catchup.go), the
	// messages of the record after Routed that it got already (the
	// catch-up delivered part of that record): the claim does not
	// replay them. An earlier build ignores it, and replays them.
	Skip []string `json:"skip,omitempty"`
}

type releaseRequest struct {
	Client string `json:"client"`
	// Origin is the claiming node's run (see releaseReply.QoS0); an
	// earlier build sends none.
	Origin string `json:"origin,omitempty"`
}

// position is where, in the durable stream, the messages of other nodes
// stopped reaching a session at its old home; replay says whether it is
// known.
type position struct {
	seq    uint64
	replay bool
	// since is when the claim began (Unix nanoseconds; 0: not a claim),
	// and from a stream sequence before every record this node wrote
	// since then (its routing position then, or seq if lower): the own
	// messages of this node the old home routed are read from there.
	since int64
	from  uint64
	// pin holds the broker's record of recent messages from before
	// since (nil: not held; the replay then finds the last second only).
	pin *broker.RecentPin
	// qos0: this node's QoS 0 messages forwarded with sequence numbers
	// up to qos0 went to the session's connection on the old home
	// (releaseReply.QoS0).
	qos0 uint64
	// home is the old home's run and token its answer's number
	// (releaseReply.Token; 0: none), told to it once the claim took the
	// session record (takenNotice).
	home  string
	token uint64
	// skip: stream IDs of messages after seq the session has
	// (releaseReply.Skip).
	skip []string
}

// retryPause is how long a claim waits before it asks again an old home
// that answered errReleaseRetry.
const retryPause = 50 * time.Millisecond

// errReleaseRetry is the old home's answer while a claim of its own of
// the session is under way: it gave nothing up, ask again.
var errReleaseRetry = errors.New("cluster: a claim of the session is under way on its node")

// release asks the old home of a session to give it up. A home that is
// gone (no responder on its control subject) is asked nothing: the
// position is then its durable consumer's acknowledgement floor
// (goneFloor).
func (n *Node) release(ctx context.Context, id string, rec *sessionRecord) (position, error) {
	data, _ := json.Marshal(releaseRequest{Client: id, Origin: n.origin})
	// Half of what is left, at most 5 s: a home that does not answer in
	// time is looked at again (is it still connected?) within the claim.
	wait := 5 * time.Second
	if n.sess.releaseWait != 0 {
		wait = n.sess.releaseWait
	}
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)/2)
	}
	rctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	m, err := n.askHome(rctx, rec.Node, ctlPrefix+keyOf(rec.Home), data)
	if errors.Is(err, errHomeGone) {
		n.dstats.homesGone.Add(1)
		n.log.Info("cluster: a claim stopped waiting for the session's former node, which has had no route here since its request was sent",
			"client", id, "node", rec.Node, "after", homeGoneAfter)
	}
	if err == nil {
		var r releaseReply
		if json.Unmarshal(m.Data, &r) == nil && r.Retry {
			return position{}, errReleaseRetry
		}
		if json.Unmarshal(m.Data, &r) != nil || !r.OK {
			return position{}, &broker.ClaimRefused{Reason: "the session's node could not give it up: " + r.Error,
				Unavailable: true, Busy: r.Busy}
		}
		return position{seq: r.Routed, replay: true, qos0: r.QoS0, home: rec.Home, token: r.Token, skip: r.Skip}, nil
	}
	if !errors.Is(err, nats.ErrNoResponders) {
		if n.peerConnected(rec.Node) {
			return position{}, unavailable("the session's node " + rec.Node + " does not answer: " + err.Error())
		}
	}
	// The old home is gone: its consumer's floor, from this node's copy
	// of the consumer if its leader (often the node gone) does not
	// answer (floor.go).
	floor, cerr := n.goneFloor(ctx, rec.Node, false)
	if errors.Is(cerr, jetstream.ErrConsumerNotFound) {
		n.log.Warn("cluster: the session's former node has no position in the durable stream; nothing is replayed",
			"client", id, "node", rec.Node)
		return position{}, nil
	}
	if cerr != nil {
		// Without the position the messages published since the node
		// died could not be replayed: the client tries again.
		return position{}, unavailable("the position of the session's former node is unknown now: " + cerr.Error())
	}
	return n.caughtUpTo(ctx, id, position{seq: floor, replay: true}), nil
}

// homeCheck is how often a claim waiting for the old home's answer looks
// whether the old home's node still has a route to this one, and
// homeGoneAfter how long every look must have found none before the
// claim stops waiting (errHomeGone). A request sent just before the
// node died (SIGKILL: its routes close at once) is not refused, only
// left unanswered; one sent a moment later is refused at once (no
// responders), and so taken as gone, with no wait at all. A route that
// drops on a live node comes back within about a second (the server
// dials it again after one), so two seconds without one tells a death
// from most drops; a longer cut is taken for one, as the 5 s wait did.
const (
	homeCheck     = 250 * time.Millisecond
	homeGoneAfter = 2 * time.Second
)

// errHomeGone ends a claim's wait for the old home whose node has had no
// route here for homeGoneAfter.
var errHomeGone = errors.New("cluster: the session's former node has had no route here since the request")

// askHome sends a request to the node named node on subj and waits for
// its answer under ctx; it gives up with errHomeGone once node has had
// no route to this one at every look (homeCheck) for homeGoneAfter.
// With an external NATS the routes are not known here: it waits.
func (n *Node) askHome(ctx context.Context, node, subj string, data []byte) (*nats.Msg, error) {
	if n.srv == nil {
		return n.nc.RequestWithContext(ctx, subj, data)
	}
	wctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		look := time.NewTicker(homeCheck)
		defer look.Stop()
		var goneAt time.Time
		for {
			select {
			case <-wctx.Done():
				return
			case now := <-look.C:
				switch {
				case n.routes.connected(n, node):
					goneAt = time.Time{}
				case goneAt.IsZero():
					goneAt = now
				case now.Sub(goneAt) >= homeGoneAfter:
					cancel(errHomeGone)
					return
				}
			}
		}
	}()
	m, err := n.nc.RequestWithContext(wctx, subj, data)
	gone := errors.Is(context.Cause(wctx), errHomeGone)
	cancel(nil)
	wg.Wait()
	if err != nil && gone && ctx.Err() == nil {
		return nil, errHomeGone
	}
	return m, err
}

// routeNames caches the names of the nodes with a route to this one for
// routeNamesFor, so that many claims waiting at once for homes ask the
// server a few times a second, not once per claim and look.
type routeNames struct {
	mu    sync.Mutex
	at    time.Time
	names map[string]bool
}

const routeNamesFor = 100 * time.Millisecond

// connected tells whether the node named node had a route to this one
// within the last routeNamesFor.
func (r *routeNames) connected(n *Node, node string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); r.names == nil || now.Sub(r.at) >= routeNamesFor {
		rz, err := n.srv.Routez(&server.RoutezOptions{})
		if err != nil {
			return true
		}
		r.names, r.at = make(map[string]bool, len(rz.Routes)), now
		for _, rt := range rz.Routes {
			r.names[rt.RemoteName] = true
		}
	}
	return r.names[node]
}

// peerConnected tells whether the node named node has a route to this
// one now.
func (n *Node) peerConnected(node string) bool {
	if n.srv == nil {
		return true // an external NATS: assume so
	}
	rz, err := n.srv.Routez(&server.RoutezOptions{})
	if err != nil {
		return true
	}
	for _, r := range rz.Routes {
		if r.RemoteName == node {
			return true
		}
	}
	return false
}

// sessionRecords returns a function reading the records of the session
// of id.
func (n *Node) sessionRecords(id string) func(context.Context) ([]storedRecord, error) {
	return func(ctx context.Context) ([]storedRecord, error) {
		return n.listSubjects(ctx, n.sess.stream, sessPrefix+keyOf(id)+".>")
	}
}

// listParallel is how many gets of readEach are under way at once.
const listParallel = 16

// listSubjects reads the last record of every subject matching one of
// filters in a stream that keeps one record per subject (moat_sessions):
// the subjects are read from the stream's information, then each one's
// record, listParallel gets at once (readEach). One get after the other
// (walking the stream's messages that match) took about 1.4 ms a record
// on a loaded machine: a claim of a session with 635 deliveries kept its
// client 0.9 s of its CONNACK wait reading them (a move series of
// 2026-12-06). For moat_sessions, which does not allow direct gets, the
// stream's leader answers both (a replica could miss what it has not
// applied yet); a stream that allows them (the buckets') answers the
// gets from any replica, as getNext reads it. No consumer is created:
// that would wait for a JetStream meta leader, elected anew when a node
// dies. The records are returned in
// stream order; a subject whose record is gone by the time it is read
// is left out.
func (n *Node) listSubjects(ctx context.Context, st jetstream.Stream, filters ...string) ([]storedRecord, error) {
	name := st.CachedInfo().Config.Name
	var subjects []string
	for _, filter := range filters {
		for {
			actx, done := n.elections.attempt(ctx, name, getAttempt)
			info, err := st.Info(actx, jetstream.WithSubjectFilter(filter))
			done()
			if err == nil {
				for subj := range info.State.Subjects {
					subjects = append(subjects, subj)
				}
				break
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w (last: %v)", ctx.Err(), err)
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	// Filters that overlap name a subject once.
	slices.Sort(subjects)
	subjects = slices.Compact(subjects)
	return n.readEach(ctx, subjects, func(ctx context.Context, subj string) (*storedRecord, error) {
		m, err := n.getNext(ctx, st, subj, 1, 0)
		if err != nil || m == nil {
			return nil, err
		}
		return &storedRecord{subject: m.Subject, seq: m.Sequence, origin: m.Header.Get(hdrOrigin), data: m.Data}, nil
	})
}

// getRecords reads the last record of each of subjects in the sessions
// stream, listParallel at once (readEach; getRecord each): for a node
// that knows which records it needs, cheaper than listing a pattern
// that matches every session of the cluster. A subject without any
// record is left out; a removed one is returned empty. The records are
// returned in stream order.
func (n *Node) getRecords(ctx context.Context, subjects []string) ([]storedRecord, error) {
	return n.readEach(ctx, subjects, n.getRecord)
}

// readEach calls get for each of subjects, listParallel at once, and
// returns the records found (nil: none) in stream order. The first error
// stops the rest and is returned.
func (n *Node) readEach(ctx context.Context, subjects []string, get func(context.Context, string) (*storedRecord, error)) ([]storedRecord, error) {
	if len(subjects) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := make([]storedRecord, 0, len(subjects))
	var mu sync.Mutex
	var firstErr error
	inParallel(subjects, listParallel, func(subj string) {
		if ctx.Err() != nil {
			return // another failed: the rest is not read
		}
		r, err := get(ctx, subj)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			if firstErr == nil {
				firstErr = err
				cancel()
			}
		case r != nil:
			out = append(out, *r)
		}
	})
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b storedRecord) int { return cmp.Compare(a.seq, b.seq) })
	return out, nil
}

// take makes this node the home of the session of id, whose record rec
// has sequence seq, and imports it (or discards it), with the records
// read (once the home is taken) by list; then it delivers the durable
// messages after pos that this node routed before the session was here.
func (n *Node) take(ctx context.Context, id string, rec *sessionRecord, seq uint64, discard, persistent bool, pos position,
	list func(context.Context) ([]storedRecord, error)) error {
	if pos.pin != nil && !discard {
		if err := pos.pin.Err(); err != nil {
			// The record of recent messages dropped a message that
			// arrived since the claim began, which the session may have
			// missed: the claim fails before it takes the home, and the
			// client tries again.
			n.log.Warn("cluster: a session's claim failed: too many messages arrived here while it waited for the old home",
				"client", id, "err", err)
			return &broker.ClaimRefused{Reason: "this node is too busy to take the session over now; try again",
				Unavailable: true, Busy: true}
		}
	}
	// An adoption (adoptSession: a replay without a claim's start)
	// marks its start as a claim does, so that it too holds back what
	// routing delivers to the session once imported and delivers the
	// messages of this node's own clients that arrived since then from
	// the record of recent messages: published between its reading of
	// the stream (ownEnd) and the import, they reached the session
	// neither from the replay nor through routing (this node's consumer
	// skips its own records). The old home is gone and its position
	// pos.seq fixed: the messages found there all have records past it,
	// and no record before it need be read for those of them that the
	// old home routed (from; a claim reads back to its own start).
	adopting := pos.replay && pos.since == 0 && !discard
	if adopting {
		n.beginClaim()
		defer n.endClaim()
		if b, ok := n.b.(sessionBroker); ok {
			pos.pin = b.PinRecent()
			defer pos.pin.Release()
		}
		pos.since, pos.from = time.Now().UnixNano(), pos.seq
	}
	mine := *rec
	mine.Home, mine.Node = n.origin, n.cfg.Node
	if discard {
		mine = sessionRecord{Home: n.origin, Node: n.cfg.Node, Placeholder: true}
	}
	// Until the session is imported, a release request for it is
	// answered "busy, try again" (handleRelease): this node may be its
	// home already. A claim of a client counts until the client is
	// attached; an adoption or an import at start until here.
	n.markClaim(id)
	defer n.unmarkClaim(id)
	n.beginTake(id)
	defer n.endTake(id)
	if pos.replay {
		// Kept until the session is imported: the write below may take
		// the home even when its answer is lost.
		n.setPending(id, pos)
	}
	claimSeq, err := n.putRecord(ctx, sessSubject(id, "s"), mustRecord(&mine), seq)
	if errors.Is(err, errConflict) {
		n.clearPending(id)
		return lostClaimRace(id)
	}
	if err == nil {
		if f := n.sess.takeAnswerLost.Load(); f != nil {
			err = (*f)(id)
		}
	}
	if err != nil {
		return unavailable("storing the session failed: " + err.Error())
	}
	n.tookRecord(id, pos)
	if f := n.sess.afterTake.Load(); f != nil {
		(*f)(id)
	}
	// This node is the home now: reading the session and replaying its
	// messages no longer depend on the client's patience (its connect
	// timeout). A client that gave up finds them in its session. Only
	// the wait in ownEnd is measured against that patience.
	patience, hasPatience := ctx.Deadline()
	ctx, cancel := context.WithTimeout(n.ctx, 2*time.Minute)
	defer cancel()
	records, err := list(ctx)
	if err != nil {
		// The next claim (this node is the home, without the session)
		// takes it again.
		return unavailable("reading the session failed: " + err.Error())
	}
	hs := newHomeState()
	n.setHome(id, hs)
	p := n.persistence()
	if discard {
		n.clearPending(id)
		// The old session ends. Its will, pending or left by a connection
		// its node died with, is published now, as a session that ends on
		// one node publishes it [MQTT-3.1.3-9]. The live wills of clean
		// sessions' connections (w.<run>) are not the session's.
		var will *broker.StoredWill
		c := p.begin(func(error) {})
		for _, r := range records {
			_, suffix, err := clientOfSubject(r.subject)
			if err != nil || suffix == "s" || strings.HasPrefix(suffix, "w.") || len(r.data) == 0 {
				continue
			}
			if suffix == "w" {
				if w, err := decodeWill(r.data, id); err == nil {
					will = w
				}
			}
			p.publish(c, n.tombstone(r.subject))
		}
		if !persistent {
			n.unhome(id)
			p.publish(c, n.tombstone(sessSubject(id, "s")))
		}
		p.finish(c, nil)
		if wb, ok := n.b.(willBroker); ok && will != nil {
			wb.PublishWill(will)
		}
		return nil
	}
	cs := &broker.ClusterSession{Messages: make(map[uint64]*broker.Message)}
	cs.Session.Session = mine.stored(id)
	stale := p.begin(func(error) {})
	var maxSeq uint64
	have := make(map[string]bool) // stream IDs of the messages the session holds
	for _, ref := range pos.skip {
		have[ref] = true
	}
	marked := false
	for _, r := range records {
		_, suffix, err := clientOfSubject(r.subject)
		if err != nil || suffix == "s" || strings.HasPrefix(suffix, "w.") || len(r.data) == 0 {
			continue // w.<run>: a clean session's connection's will (wills.go)
		}
		if r.seq > claimSeq && r.origin != n.origin {
			// Written by the old home after this claim: not part of the
			// session as it was handed over.
			p.publish(stale, n.tombstone(r.subject))
			continue
		}
		switch {
		case strings.HasPrefix(suffix, "d."):
			d, m, ref, err := decodeDelivery(r.data, id)
			if err != nil {
				n.stats.decodeErrors.Add(1)
				n.log.Warn("cluster: malformed delivery record of a session ignored", "client", id, "err", err)
				continue
			}
			if prev, ok := cs.Messages[d.MsgID]; ok {
				m = prev
			}
			cs.Messages[d.MsgID] = m
			cs.Session.Deliveries = append(cs.Session.Deliveries, d)
			hs.msgs[d.Seq] = m
			if ref != "" {
				hs.refs[d.Seq] = ref
				have[ref] = true
			}
			maxSeq = max(maxSeq, d.Seq, d.MsgID)
		case suffix == "c":
			// The position of a catch-up of the old home (catchup.go):
			// used by the claim already, removed below unless this one
			// catches up in turn.
			marked = true
		case strings.HasPrefix(suffix, "i."):
			pid, err := strconv.ParseUint(suffix[2:], 10, 16)
			if err != nil || pid == 0 {
				continue
			}
			cs.Session.Inbound = append(cs.Session.Inbound, uint16(pid))
			hs.inbound[uint16(pid)] = struct{}{}
		case suffix == "w":
			w, err := decodeWill(r.data, id)
			if err != nil {
				n.stats.decodeErrors.Add(1)
				n.log.Warn("cluster: malformed will record of a session ignored", "client", id, "err", err)
				continue
			}
			if w.Live {
				// Its connection ended with the session's node (wills.go).
				// Written back as pending, so that the delay does not
				// start again if this node dies too before it runs out.
				w.Delay = n.willDelayLeft(rec.Node, w.Delay)
				pw := *w
				pw.Live, pw.Delay, pw.FireAt = false, 0, time.Now().Add(w.Delay)
				if data, err := encodeWill(&pw); err == nil {
					p.publish(stale, n.record(r.subject, data))
				}
			}
			cs.Will = w
			hs.will = true
		}
	}
	p.finish(stale, nil)
	sortDeliveries(cs.Session.Deliveries)
	p.raiseIDs(maxSeq)
	n.clearPending(id)
	b, ok := n.b.(sessionBroker)
	if !ok {
		return nil
	}
	// A claim imports the session holding back what routing delivers to
	// it from then on, until the messages of this node's own clients that
	// arrived since the claim began and reached neither node are
	// replayed: published here after the old home gave the session up,
	// and read back from the stream by this node only after the import
	// (it skips its own messages there), they are in the broker's record
	// of recent messages. So does an adoption (adopting, above), for
	// those published here while it reads the stream.
	cs.Hold = pos.since != 0
	// The durable messages to replay, routed here before the session
	// was (readReplay), are read now and delivered as soon as it is
	// imported: first, before anything routing delivers to it.
	var rs *replaySet
	var ownTo uint64
	// ownFwd: this node's forwarding sequence as the wait in ownEnd
	// began, ownStart when; ownOK: the wait ended in time. If it did
	// not, the reading stops at the routing position, and this node's
	// own messages in the records past it are read after the import
	// (replayOwnLate), once the commits submitted before ownStart are
	// done: each is done by its deadline.
	var ownFwd uint64
	var ownStart time.Time
	ownOK := false
	if pos.replay {
		n.dur.routeMu.Lock()
		to := n.dur.routed
		n.dur.routeMu.Unlock()
		// And this node's own messages forwarded before now, which
		// its routing passed by the session's subscriptions (they are
		// routed here before they are forwarded) and its consumer
		// skips, even beyond its routing position: once the commits
		// submitted so far are done they are in the stream (at most
		// maxOwnScan records past that position are read).
		// The reading stops at the room the session's queue has.
		// A client waits for the session (cs.Hold): what is past the
		// room is read as its queue drains (catchUp). An adoption
		// has no client to drain it, and stops at the room.
		room, roomBytes := queueRoom(b.Limits(), cs)
		paced := cs.Hold && !adopting && !n.sess.noCatchUp
		if paced {
			// What does not fit follows in the catch-up, which leaves
			// part of the queue free for the messages that come live.
			room, roomBytes = leaveRoom(b.Limits(), room, roomBytes)
		}
		ownFwd, ownStart = n.dur.seq.Load(), time.Now()
		end, ok := n.ownEnd(ctx, p, to, ownWait(time.Until(patience), hasPatience))
		ownTo, ownOK = max(to, end), ok
		rs = n.readReplay(ctx, id, cs.Session.Session, pos, ownTo, have, room, roomBytes, paced)
		if f := n.sess.afterReplayRead.Load(); f != nil {
			(*f)(id)
		}
	}
	// The replay goes on after the import when the first reading
	// reached the bound (catchUp); otherwise the bound of a reading
	// under routeMu below is the last word, as for an adoption.
	catching := rs != nil && rs.paced && rs.full && !rs.failed
	if catching {
		// The position the session has everything up to is stored
		// before routing skips anything for it (catchUp.mark), so that
		// the next claim replays from it should this node die during
		// the catch-up. Its write waits for the node's commits before
		// it: after the death of the stream's leader, for the election
		// (4 to 9 s). So it is waited for as long as the client waits
		// (ownWait: its CONNACK wait less a second, 5 to 10 s). A write
		// not done by then, or failed, does not stop the catch-up: the
		// catch-up stores its position again as it moves on, and only
		// this node's death before one is stored costs the messages it
		// skipped. (Until 2026-12-07 the replay stopped at the queue's
		// room, and the messages past it were missing for sure.)
		done := make(chan error, 1)
		n.markCatchUp(id, pos.seq, func(err error) { done <- err })
		select {
		case err := <-done:
			if err != nil {
				n.log.Warn("cluster: a moved session's catch-up position could not be stored; the catch-up goes on, "+
					"and if this node dies before it stores a later one, the messages it skipped are not replayed",
					"client", id, "err", err)
			}
		case <-time.After(ownWait(time.Until(patience), hasPatience)):
			n.log.Warn("cluster: a moved session's catch-up position was not stored within its client's wait; the catch-up goes on, "+
				"and if this node dies before the position is stored, the messages it skipped are not replayed",
				"client", id)
		}
	}
	if rs != nil && rs.full && !catching {
		// Its position could not be stored: the replay stops at the
		// bound.
		rs.paced = false
	}
	if marked && !catching {
		n.unmarkCatchUp(id)
	}
	if rs != nil && !ownOK {
		// The reading stopped at the routing position: this node's
		// messages forwarded before the claim whose records are past
		// it are read after the import (replayOwnLate), or by the
		// catch-up (its late own messages, lateOwn).
		n.log.Info("cluster: this node's messages forwarded before a session moved here could not be waited for; "+
			"those past its routing position are read after the import", "client", id, "routed", ownTo)
	}
	cs.CatchUp = catching
	n.dur.routeMu.Lock()
	if f := n.sess.beforeImport.Load(); f != nil {
		(*f)(id)
	}
	// The messages this node forwarded up to here were routed here
	// before the session was (replayOwnLate).
	fwdAt := n.dur.seq.Load()
	if cs.Hold {
		// The routing passes made while the session holds deliveries
		// back are acknowledged once those are written (holdAcks).
		h := n.beginHold(id)
		defer n.endHold(id, h)
	}
	b.ImportSession(cs)
	upTo := n.dur.routed
	var reached map[string]bool
	wait := func() {}
	replay := rs != nil && !catching
	late := false
	if replay {
		// What was routed since the reading above (usually nothing, or
		// a few records) is read with routing held, within
		// requestAttempt: it cannot reach the session before what is
		// replayed.
		rctx, rcancel := context.WithTimeout(ctx, requestAttempt)
		if rs.read(rctx, n, upTo, upTo) == nil {
			if rs.paced && rs.full && b.CatchUpImported(id) {
				// Only this reading reached the room of the queue (the
				// routing moved on meanwhile, as when this node's
				// consumer had waited for a new leader): the rest
				// follows as the queue drains, as for a first reading
				// that reached it. Routing skips the session's messages
				// from now on.
				catching, late = true, true
			} else {
				reached, wait = rs.deliver(n, upTo)
			}
			replay = false
		}
		rcancel()
	}
	n.dur.routeMu.Unlock()
	if late {
		// The position is stored before the routing passes that skip
		// messages for the session are acknowledged: they wait for the
		// import's hold, which ends when this returns.
		n.dstats.catchUpsLate.Add(1)
		done := make(chan error, 1)
		n.markCatchUp(id, pos.seq, func(err error) { done <- err })
		select {
		case err := <-done:
			if err != nil {
				n.log.Warn("cluster: a moved session's catch-up position could not be stored; if this node dies before the catch-up ends, the messages it skipped are not replayed",
					"client", id, "err", err)
			}
		case <-time.After(requestAttempt):
			n.log.Warn("cluster: a moved session's catch-up position was not stored in time; if this node dies before the catch-up ends, the messages it skipped may not be replayed",
				"client", id)
		}
	}
	if replay {
		// Not read in time: read and delivered now, possibly after
		// later messages routing delivered meanwhile, rather than not
		// at all.
		rs.readOrFail(ctx, n, upTo, upTo)
		reached, wait = rs.deliver(n, upTo)
	}
	if catching {
		reached = rs.reached
	}
	if f := n.sess.afterImport.Load(); f != nil {
		(*f)(id)
	}
	n.dstats.sessionsIn.Add(1)
	var local *broker.LocalReplay
	lost := false
	if cs.Hold {
		// This node's own messages are found at once, so that the
		// record need not stay pinned while the replayed messages are
		// committed.
		local = b.FindLocal(id, pos.since)
		if pos.pin != nil {
			lost = pos.pin.Err() != nil
			pos.pin.Release()
		}
	}
	wait()
	if cs.Hold {
		// A connection's reader that had matched a message before the
		// import (to no session here) and waited for a commit slot
		// forwards it only after fwdAt: once every such message is
		// forwarded, the ones this node forwarded up to then reached
		// the session live only if it holds them back (matched once it
		// was here); the others are replayed from the stream.
		var held map[string]bool
		if rs != nil && !rs.failed {
			fwdAt, held = n.routedAt(ctx, b, local, id, fwdAt, ownWait(time.Until(patience), hasPatience))
		}
		ownQoS0Seq, ownRef := n.ownQoS0Seq, n.ownRef
		localRefs := make(map[string]bool)
		if catching {
			// The catch-up decides once it is done, after this claim:
			// the IDs this node noted for the messages found are kept
			// now (noted only while a claim is under way).
			seqs, refs := make(map[*broker.Message]uint64), make(map[*broker.Message]string)
			for _, m := range local.Found() {
				if seq := n.ownQoS0Seq(m); seq != 0 {
					seqs[m] = seq
				}
				if ref := n.ownRef(m); ref != "" {
					refs[m] = ref
				}
			}
			ownQoS0Seq = func(m *broker.Message) uint64 { return seqs[m] }
			ownRef = func(m *broker.Message) string { return refs[m] }
			for _, ref := range refs {
				localRefs[ref] = true
			}
			for ref := range held {
				localRefs[ref] = true // delivered live: not late
			}
		}
		skip := func(m *broker.Message) bool {
			if pos.qos0 != 0 {
				// Sent by the old home to the session's connection.
				if seq := ownQoS0Seq(m); seq != 0 && seq <= pos.qos0 {
					return true
				}
			}
			ref := ownRef(m)
			return ref != "" && (have[ref] || reached[ref])
		}
		if catching {
			// The messages found and what is held back are delivered
			// once the catch-up reached the routing position.
			late := uint64(0) // the catch-up replays none of the late own messages
			var lateBy time.Time
			if !ownOK {
				// Every message forwarded before the import whose
				// record is past the reading is late; their commits
				// end by their deadline, as for replayOwnLate below.
				late, lateBy = fwdAt, ownStart.Add(n.commitTimeout()+publishTimeout)
			} else if fwdAt > ownFwd {
				late = fwdAt
			}
			n.startCatchUp(id, rs, local, skip, ownRef, ownTo, late, localRefs, lateBy)
		} else {
			if rs != nil && !rs.failed && !rs.full && (!ownOK || fwdAt > ownFwd) {
				wait := ownWait(time.Until(patience), hasPatience)
				if !ownOK {
					// The commits of the records the reading left out
					// end by their deadline (a failed one was not
					// acknowledged to its publisher), and acknowledge
					// learns of a record's end within a publication's
					// timeout (publishTimeout) past it: the session waits that
					// long rather than miss an acknowledged message.
					wait = max(wait, time.Until(ownStart.Add(n.commitTimeout()+publishTimeout)))
				}
				n.replayOwnLate(ctx, p, rs, local, fwdAt, held, wait)
			}
			if c := n.deliverFound(local, skip, ownRef); c > 0 {
				n.log.Info("cluster: messages of this node replayed to a moved session", "client", id, "count", c)
			}
		}
		if lost {
			// Dropped after the claim took the home: too late to refuse.
			n.log.Error("cluster: the record of recent messages reached its bound while a session moved here; "+
				"messages published on this node during the move may be missing from it", "client", id)
		}
	}
	return nil
}

// tookRecord runs once this node's write of the session record of id
// (its claim with the old home's answer pos) is stored: it forgets the
// position it gave the session up at itself, if it did (its next answer
// counts from this write), and tells the old home that its answer is of
// no use any more (takenNotice). A notice that is lost leaves the old
// home's entry until it looks the record up (confirmReleased) or
// forgets it.
func (n *Node) tookRecord(id string, pos position) {
	n.sess.mu.Lock()
	delete(n.sess.released, id)
	n.sess.mu.Unlock()
	if pos.token == 0 || pos.home == "" || pos.home == n.origin {
		return
	}
	data, _ := json.Marshal(takenNotice{Client: id, Token: pos.token})
	if err := n.nc.Publish(takenSubject(pos.home), data); err != nil {
		n.log.Debug("cluster: telling a session's former node that it moved failed", "client", id, "err", err)
	}
}

// lostClaimRace is the answer to a claim whose write of the session
// record lost the compare-and-set to another node's claim (both asked
// the old home at once): the claim is refused, not started over, and
// its client is told the server is unavailable (CONNACK 0x88) and
// connects again, by then to the session's new home.
func lostClaimRace(id string) error {
	return unavailable("the session of " + clip(id) + " changed hands meanwhile")
}

// maxReplayBytes bounds the record data one replay holds in memory (the
// records its messages are decoded from): past it the replay stops
// reading, as when the session's queue is full (replaySet.bounded).
const maxReplayBytes = 64 << 20

// replaySet holds the durable messages a claim replays to the session
// of id (take): read from the stream before the session is imported
// (readReplay), and delivered right after the import, before routing
// can deliver a later message to it (deliver), so that they come
// first, in stream order. Delivered later, they came after the newer
// messages routed to the session meanwhile [MQTT-4.6.0-6].
//
// The reading stops once the messages found for the session fill the
// room its queue has (room, roomBytes) or the records they are held
// in reach maxReplayBytes: the messages after those are the ones the
// queue limit would drop, and reading them all (every record of the
// batch subject) made a claim after a long absence hold the whole
// stream since in memory (full, logged by deliver).
type replaySet struct {
	id       string
	pos      position
	self     string          // this node's run (Node.origin)
	filters  []string        // the session's non-shared filters
	subjects []string        // the stream subjects to read
	have     map[string]bool // stream IDs of the messages the session holds
	to       uint64          // read up to this stream sequence
	// msgs are the messages found after pos.seq, in stream order;
	// reached the IDs of this node's own messages the old home routed
	// (in (pos.from, pos.seq]).
	msgs    []replayMsg
	reached map[string]bool
	// room and roomBytes are what the session's queue can take (-1
	// bytes: no byte limit); counted and countedBytes what of it the
	// messages found take, held the record data they are held in.
	room                          int
	roomBytes, countedBytes, held int64
	counted                       int
	full                          bool // the reading stopped at the bound: records after to are unread
	dropped                       int  // messages found for the session past the bound
	failed                        bool // a read failed: nothing is replayed
	// paced: a client waits for the session, and what is past the bound
	// is read later, as its queue drains (catchUp): the messages of the
	// record that reached the bound are kept (in msgs) rather than
	// dropped.
	paced bool
	// batches and gets count the requests of the readings: batches of
	// direct gets, and single gets of the stream's leader.
	batches, gets int
	// exact and wild are the filters without and with wildcards;
	// topics remembers, per topic seen in the records, whether wild
	// match it (matchTopic).
	exact, wild []string
	topics      map[string]bool
	// entries is the storage the records' entries are decoded into.
	entries []batchEntry
}

// maxReplayTopics bounds replaySet.topics: past it, topics not seen yet
// are matched each time they come.
const maxReplayTopics = 4096

// matchTopic tells whether the session's filters match topic (aliasing
// a record's data). A replay reads every message written since its
// position and takes a few: deciding on the topic alone (a comparison
// for a filter without wildcards, the others once per distinct topic)
// spares decoding the others (most of a claim's CPU in
// a storm of claims after a node died, docs/performance.md).
func (rs *replaySet) matchTopic(topic []byte) bool {
	for _, f := range rs.exact {
		if string(topic) == f {
			return true
		}
	}
	if len(rs.wild) == 0 {
		return false
	}
	if ok, seen := rs.topics[string(topic)]; seen {
		return ok
	}
	t := string(topic)
	ok := matchesAny(rs.wild, t)
	if rs.topics == nil {
		rs.topics = make(map[string]bool)
	}
	if len(rs.topics) < maxReplayTopics {
		rs.topics[t] = ok
	}
	return ok
}

// entryMatches tells whether the message of e may match the session's
// filters: false only when its topic, read without decoding the
// message, matches none (a message whose topic cannot be read is
// decoded, and refused there).
func (rs *replaySet) entryMatches(e *batchEntry) bool {
	topic, ok := packet.PublishTopic(e.pkt)
	return !ok || rs.matchTopic(topic)
}

// replayMsg is a message a replay found for its session: the stream
// sequence of its record, the node that wrote the record, its stream ID.
type replayMsg struct {
	seq    uint64
	origin string
	ref    string
	msg    *broker.Message
	// owed: not counted in the queue's room when read (another node's
	// message past the routing position then, which routing was to
	// deliver); delivered by the replay all the same once the routing
	// position passed it, it is queued past the limit (deliver).
	owed bool
}

// queueRoom returns the room the queue of the session cs imports into
// has under lim, in messages and bytes (-1 bytes: no byte limit), as
// the broker fills it (restoreSession): the deliveries not in flight
// are queued.
func queueRoom(lim broker.Limits, cs *broker.ClusterSession) (int, int64) {
	n, size := 0, int64(0)
	for _, d := range cs.Session.Deliveries {
		if d.State != broker.DeliveryQueued && d.PacketID != 0 {
			continue
		}
		n++
		if m := cs.Messages[d.MsgID]; m != nil {
			size += int64(len(m.Topic) + len(m.Payload))
		}
	}
	room := max(lim.MaxQueued-n, 0)
	if lim.MaxQueuedBytes <= 0 {
		return room, -1
	}
	return room, max(lim.MaxQueuedBytes-size, 0)
}

// readReplay reads the durable messages with stream sequences up to to
// that a claim at pos replays to the session cs of id (see deliver),
// until the messages found fill room messages and roomBytes bytes (-1:
// no byte limit) of its queue; have holds the stream IDs of those the
// session holds. paced: what is past the bound is read later (catchUp).
// It returns nil when the session has nothing to replay (no non-shared
// subscription).
func (n *Node) readReplay(ctx context.Context, id string, ss *broker.StoredSession, pos position, to uint64,
	have map[string]bool, room int, roomBytes int64, paced bool) *replaySet {
	rs := &replaySet{id: id, pos: pos, self: n.origin, have: have, reached: make(map[string]bool), room: room, roomBytes: roomBytes,
		paced: paced}
	var filters []string
	for _, sub := range ss.Subscriptions {
		if !strings.HasPrefix(sub.Filter, "$share/") {
			filters = append(filters, sub.Filter)
		}
	}
	if len(filters) == 0 {
		return nil
	}
	rs.setFilters(filters)
	rs.to = pos.seq
	if pos.since != 0 {
		// At most maxOwnBack records back: beyond, a message may reach
		// the session twice (at least once).
		rs.to = max(min(rs.to, pos.from), rs.to-min(rs.to, maxOwnBack))
	}
	n.dur.routeMu.Lock()
	routed := n.dur.routed
	n.dur.routeMu.Unlock()
	rs.readOrFail(ctx, n, to, routed)
	return rs
}

// setFilters sets the session's non-shared filters, and the stream
// subjects that hold the messages they match.
func (rs *replaySet) setFilters(filters []string) {
	rs.filters = filters
	rs.subjects, rs.exact, rs.wild, rs.topics = nil, nil, nil, nil
	for _, f := range filters {
		if strings.ContainsAny(f, "+#") {
			rs.wild = append(rs.wild, f)
		} else {
			rs.exact = append(rs.exact, f)
		}
		for _, s := range filterSubjects(f) {
			if d := durablePrefix + s[len(msgPrefix):]; len(d) <= maxSubject {
				rs.subjects = append(rs.subjects, d)
			}
		}
	}
	rs.subjects = dedupe(append(rs.subjects, batchSubject))
}

// ownEnd returns the stream's last sequence once the commits submitted
// to p so far are done (the records of this node's own messages
// forwarded so far are then in the stream), at most maxOwnScan past
// routed, and true; routed and false when it cannot tell within wait.
func (n *Node) ownEnd(ctx context.Context, p *persistence, routed uint64, wait time.Duration) (uint64, bool) {
	// While the stream changes leaders the commits and the stream's
	// information wait, and the session, home here already, is not
	// imported meanwhile (ownWait). Past wait the replay stops at
	// routed (docs/cluster.md, "Not done yet").
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	done := make(chan error, 1)
	p.Persist(nil, func(err error) { done <- err })
	select {
	case err := <-done:
		if err != nil {
			return routed, false
		}
	case <-ctx.Done():
		return routed, false
	}
	info, err := n.msgStream().Info(ctx)
	if err != nil {
		return routed, false
	}
	return min(info.State.LastSeq, routed+maxOwnScan), true
}

// replayOwnLate delivers to the session of rs, imported holding back
// what routing delivers to it, the messages of this node's own clients
// matched before the import (forwarded up to forwarded, routedAt, and
// not in held: those the session holds back, matched once it was here)
// that reached it neither from the reading of rs nor from local (the
// record of recent messages): arrived before the claim began, and
// forwarded only after the wait in ownEnd began, their records are past
// what rs read. A connection's reader does that when it waited for a
// commit slot (the broker's Receive Maximum, 100 by default) while the
// stream had no leader, with more of its client's messages read or
// waiting in the socket (an MQTT 3.1.1 client knows no Receive
// Maximum): once the stream's new leader takes the first ones, the
// reader goes on with the others during the claim, and the message it
// had matched as it waited is forwarded only after the import. When the
// claim's first wait for the node's commits ran out, rs was read up to
// the routing position only, and the node's messages forwarded before
// the claim whose records are past it are found here the same way. It
// waits for this node's commits again (up to wait) and reads the
// records after rs.to up to the stream's end.
func (n *Node) replayOwnLate(ctx context.Context, p *persistence, rs *replaySet, local *broker.LocalReplay,
	forwarded uint64, held map[string]bool, wait time.Duration) {
	end, ok := n.ownEnd(ctx, p, rs.to, wait)
	if !ok {
		n.log.Warn("cluster: this node's messages forwarded while a session moved here could not be waited for; some may be missing from it",
			"client", rs.id)
		return
	}
	if end <= rs.to {
		return
	}
	found := make(map[string]bool) // delivered by local
	for _, m := range local.Found() {
		if ref := n.ownRef(m); ref != "" {
			found[ref] = true
		}
	}
	r, err := newRecordReader(n, rs.subjects, rs.to+1, end)
	if err != nil {
		n.log.Error("cluster: this node's messages forwarded while a session moved here could not be read; some may be missing from it",
			"client", rs.id, "err", err)
		return
	}
	b := n.b.(sessionBroker)
	owedMax := max(b.Limits().MaxQueued, catchUpHeld)
	var wg sync.WaitGroup
	count := 0
	take := func(seq uint64, ref string, msg func() (*broker.Message, error)) {
		if seq > forwarded || held[ref] || rs.have[ref] || rs.reached[ref] || found[ref] {
			return // matched after the import (delivered live), or delivered already
		}
		m, err := msg()
		if err != nil || !matchesAny(rs.filters, m.Topic) {
			return
		}
		rs.reached[ref] = true
		wg.Add(1)
		count++
		n.dur.refs.Store(m, ref)
		// Past the queue's limit if need be: the reading before the
		// import left room for what it found, not for these, and a
		// queue the claim filled would drop messages acknowledged to
		// their publisher that nothing else brings the session. In
		// practice they are a Receive Maximum per connection of this
		// node; past owedMax (a burst forwarded during a long claim),
		// the queue's limit applies again, so that memory stays
		// bounded (the broker logs what it drops).
		if count <= owedMax {
			b.DeliverOwedToSession(rs.id, m, func(error) { wg.Done() })
		} else {
			b.DeliverToSession(rs.id, m, func(error) { wg.Done() })
		}
		n.dur.refs.Delete(m)
	}
	for {
		m, err := r.read(ctx)
		if err != nil {
			n.log.Error("cluster: this node's messages forwarded while a session moved here could not be read; some may be missing from it",
				"client", rs.id, "err", err)
			break
		}
		if m == nil {
			break
		}
		n.dstats.replayRead.Add(1)
		if m.Header.Get(hdrOrigin) != rs.self {
			continue // routing delivers it
		}
		if m.Sequence <= rs.pos.seq {
			// Routed by the old home (its position past the bound of
			// the reading): noted, as add does.
			rs.add(m, 0)
			continue
		}
		if m.Subject == batchSubject {
			entries, err := decodeBatch(m.Data)
			if err != nil {
				continue
			}
			for i := range entries {
				if rs.entryMatches(&entries[i]) {
					take(entries[i].seq, msgID(rs.self, entries[i].seq), entries[i].message)
				}
			}
			continue
		}
		// A single record (a node of the cluster may not read batches).
		seq, err := strconv.ParseUint(m.Header.Get(hdrSeq), 10, 64)
		sent, serr := strconv.ParseInt(m.Header.Get(hdrSent), 10, 64)
		if err != nil || serr != nil {
			continue
		}
		take(seq, m.Header.Get(nats.MsgIdHdr), func() (*broker.Message, error) {
			return decodeMessage(m.Data, m.Header.Get(hdrFrom), time.Unix(0, sent))
		})
	}
	wg.Wait()
	if count > 0 {
		n.log.Info("cluster: messages of this node forwarded while a session moved here replayed to it", "client", rs.id, "count", count)
	}
}

// routedAt returns this node's forwarding sequence once the messages
// its connections' readers had begun to match when the session of id
// was imported (at fwdAt, imported holding back what reaches it) are
// forwarded too, and the stream IDs of the messages of this node's
// clients that the session holds back: matched once it was here, they
// reached it live. The other messages of this node's clients forwarded
// up to the sequence returned were matched before the import, without
// the session. A reader waits for a commit slot as long as the
// stream's commits before it take (an election of its leader): past
// wait, fwdAt is returned with no IDs, and a message forwarded after it
// that was matched before the import is missing from the session
// (logged).
func (n *Node) routedAt(ctx context.Context, b sessionBroker, local *broker.LocalReplay, id string,
	fwdAt uint64, wait time.Duration) (uint64, map[string]bool) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := b.WaitRouted(wctx); err != nil {
		n.log.Warn("cluster: this node's messages routed while a session moved here could not be waited for; some may be missing from it",
			"client", id, "err", err)
		return fwdAt, nil
	}
	to := n.dur.seq.Load()
	held := make(map[string]bool)
	for _, m := range local.Held() {
		if ref := n.ownRef(m); ref != "" {
			held[ref] = true
		}
	}
	return max(to, fwdAt), held
}

// ownWaitMax bounds how long a claim waits in ownEnd.
const ownWaitMax = 10 * time.Second

// ownWait returns how long a take waits in ownEnd for this node's
// commits and the stream's length, given what is left (known: there is
// a deadline) of the time its client waits for CONNACK (the broker's
// connect timeout from the connection's accept, 10 s by default; an
// adoption's take has requestAttempt): that less a second for the
// reading and the import, at least requestAttempt and at most
// ownWaitMax. Only a leader change of moat_msgs makes the wait long (2
// to 6 s here): a claim whose old home answered at once waits it out
// before its client gives up, where requestAttempt alone gave up on the
// longer changes and replayed none of the node's own messages past its
// routing position. A claim that spent its client's patience waiting
// for the old home (release: at most half of it) waits requestAttempt,
// as before.
func ownWait(left time.Duration, known bool) time.Duration {
	if !known {
		return requestAttempt
	}
	return min(max(requestAttempt, left-time.Second), ownWaitMax)
}

// bounded tells whether a message found now is past the bound: the
// messages found fill the room of the session's queue (counts: the
// message counts against it), or the records they are held in reach
// maxReplayBytes. Like the queue (fullLocked), it takes a message while
// the bytes found are below the room, even one that goes past it.
func (rs *replaySet) bounded(counts bool) bool {
	if rs.held >= maxReplayBytes {
		return true
	}
	return counts && (rs.counted >= rs.room || rs.roomBytes >= 0 && rs.countedBytes >= rs.roomBytes)
}

// read reads the records after rs.to up to to, in stream order, until
// the bound (take calls it again, holding routeMu, for those routed
// since the first reading), in batches (recordReader). Messages of
// other nodes after routed (this node's routing position as the
// reading began) count against the bound only if deliver replays them
// (it may not: routing delivers them).
func (rs *replaySet) read(ctx context.Context, n *Node, to, routed uint64) error {
	if rs.failed || rs.full || to <= rs.to {
		return nil
	}
	r, err := newRecordReader(n, rs.subjects, rs.to+1, to)
	if err != nil {
		return err
	}
	defer func() { rs.batches, rs.gets = rs.batches+r.batches, rs.gets+r.gets }()
	for {
		m, err := r.read(ctx)
		if err != nil {
			return err
		}
		if m == nil {
			break
		}
		n.dstats.replayRead.Add(1)
		rs.add(m, routed)
		rs.to = m.Sequence
		if rs.dropped > 0 || rs.full {
			// A message for the session past the bound: the records
			// after this one are not read (those of the batch it
			// came in are dropped).
			rs.full = true
			return nil
		}
	}
	rs.to = to
	return nil
}

// add takes in the record m: the IDs of this node's own messages in it
// if the old home routed it (up to pos.seq), else the messages in it
// that match the session's subscriptions and that it does not hold
// already, up to the bound (see read for routed).
func (rs *replaySet) add(m *jetstream.RawStreamMsg, routed uint64) {
	origin := m.Header.Get(hdrOrigin)
	if m.Sequence <= rs.pos.seq {
		// Routed by the old home: only this node's own messages are
		// noted.
		if origin != rs.self {
			return
		}
		if m.Subject != batchSubject {
			rs.reached[m.Header.Get(nats.MsgIdHdr)] = true
			return
		}
		if entries, err := decodeBatch(m.Data); err == nil {
			for i := range entries {
				rs.reached[msgID(origin, entries[i].seq)] = true
			}
		}
		return
	}
	counts := origin == rs.self || m.Sequence <= routed
	found := false
	take := func(ref string, msg *broker.Message) {
		if rs.bounded(counts) {
			if !rs.paced {
				rs.dropped++
				return
			}
			// Kept: reading a record again for the rest of it would
			// deliver its first messages twice. One record's messages
			// at most past the bound.
			rs.full = true
		}
		found = true
		rs.msgs = append(rs.msgs, replayMsg{seq: m.Sequence, origin: origin, ref: ref, msg: msg, owed: !counts})
		if counts {
			rs.counted++
			rs.countedBytes += int64(len(msg.Topic) + len(msg.Payload))
		}
	}
	if m.Subject == batchSubject {
		entries, err := decodeBatchInto(rs.entries, m.Data)
		if err != nil {
			return
		}
		rs.entries = entries
		for i := range entries {
			if !rs.entryMatches(&entries[i]) {
				continue
			}
			ref := msgID(origin, entries[i].seq)
			if rs.have[ref] {
				continue
			}
			msg, err := entries[i].message()
			if err != nil || !matchesAny(rs.filters, msg.Topic) {
				continue
			}
			take(ref, msg)
		}
		// The storage is kept for the next record, not this one's data.
		clear(entries)
	} else {
		// A single record, of an earlier build, read by its subject.
		ref := m.Header.Get(nats.MsgIdHdr)
		sent, err := strconv.ParseInt(m.Header.Get(hdrSent), 10, 64)
		if err != nil || rs.have[ref] {
			return
		}
		msg, err := decodeMessage(m.Data, m.Header.Get(hdrFrom), time.Unix(0, sent))
		if err != nil {
			return
		}
		take(ref, msg)
	}
	if found {
		// The messages decoded from a record share its data.
		rs.held += int64(len(m.Data))
	}
}

// readOrFail is read, after which a failure replays nothing (logged).
func (rs *replaySet) readOrFail(ctx context.Context, n *Node, to, routed uint64) {
	if err := rs.read(ctx, n, to, routed); err != nil {
		n.log.Error("cluster: the messages a moved session missed could not be read; some may be missing from its queue",
			"client", rs.id, "err", err)
		rs.failed = true
	}
}

// deliver delivers to the session the messages read with stream
// sequences in (pos.seq, to], and those of this node's own messages
// read after to (its routing position: its consumer skips them), that
// match its subscriptions (shared
// subscriptions excepted: their groups are sent their messages again
// until a member confirms them, sharedack.go) and that it does not hold
// already (rs.have). Batch records are matched message by message;
// single records, of earlier builds, were read by their subjects. It
// returns the IDs of this node's own messages that reached the session
// (delivered now, or routed by the old home: in (pos.from, pos.seq]),
// and wait, which waits until the deliveries are committed. A reading
// stopped at the bound is logged, once.
func (rs *replaySet) deliver(n *Node, to uint64) (reached map[string]bool, wait func()) {
	if rs == nil || rs.failed {
		return nil, func() {}
	}
	id, from := rs.id, rs.pos.seq
	b := n.b.(sessionBroker)
	reached = rs.reached
	var wg sync.WaitGroup
	count := 0
	for _, r := range rs.msgs {
		if r.seq > to && r.origin != n.origin {
			continue // routing delivers it
		}
		reached[r.ref] = true
		wg.Add(1)
		count++
		n.dur.refs.Store(r.msg, r.ref)
		if r.owed {
			// Read past the routing position, it was left out of the
			// room (routing was to deliver it); the routing position
			// passed it before this delivery, so routing will not, and
			// the queue may be full of what was counted: dropped there,
			// an acknowledged message was lost (a message the old home
			// routed as it gave the session up, in a test of a restarted
			// old home whose publisher was held back for the session).
			b.DeliverOwedToSession(id, r.msg, func(error) { wg.Done() })
		} else {
			b.DeliverToSession(id, r.msg, func(error) { wg.Done() })
		}
		n.dur.refs.Delete(r.msg)
	}
	rs.msgs = nil
	if rs.full {
		n.dstats.replaysBounded.Add(1)
		n.dstats.replayDropped.Add(uint64(rs.dropped))
		// The messages past the bound are those the queue limit would
		// drop. Only those of the last record read are counted: the
		// records after it (to the routing position routed_to, and this
		// node's own beyond) are not read, and may hold more.
		n.log.Warn("cluster: a moved session's queue is full; durable messages for it past the bound were not replayed",
			"client", id, "replayed", count, "room", rs.room, "not_replayed", rs.dropped, "read_to", rs.to, "routed_to", to)
	}
	return reached, func() {
		wg.Wait()
		if count > 0 {
			n.log.Info("cluster: messages replayed to a moved session", "client", id, "count", count, "from", from, "to", to)
		}
	}
}

// matchesAny tells whether one of filters matches topic.
func matchesAny(filters []string, topic string) bool {
	for _, f := range filters {
		if mqtttopic.MatchFilter(f, topic) {
			return true
		}
	}
	return false
}

func dedupe(s []string) []string {
	seen := make(map[string]bool, len(s))
	out := s[:0]
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// serveControl answers the other nodes' requests to this run of the
// node: releasing a session whose client connected elsewhere, and
// hearing that the claim it was released for took it (handleTaken).
func (n *Node) serveControl() error {
	_, err := n.nc.Subscribe(ctlPrefix+keyOf(n.origin), func(m *nats.Msg) {
		if n.ctx.Err() != nil {
			return
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.handleRelease(m)
		}()
	})
	if err != nil {
		return err
	}
	_, err = n.nc.Subscribe(takenSubject(n.origin), n.handleTaken)
	return err
}

// handleRelease gives up a session for the node that claims it: the
// broker takes its connection over and removes it, with the routing of
// durable messages and the receipt of the other nodes' messages paused
// so that the positions reported are exact; then
// this node stops writing the session, and answers once everything it
// wrote before is committed.
func (n *Node) handleRelease(m *nats.Msg) {
	var req releaseRequest
	reply := func(r releaseReply) {
		data, _ := json.Marshal(r)
		_ = m.Respond(data)
	}
	if json.Unmarshal(m.Data, &req) != nil || req.Client == "" {
		reply(releaseReply{Error: "malformed request"})
		return
	}
	if f := n.sess.releaseHeld.Load(); f != nil {
		if (*f)(n.ctx, req.Client); n.ctx.Err() != nil {
			return
		}
	}
	b, ok := n.b.(sessionBroker)
	p := n.persistence()
	if !ok || p == nil {
		reply(releaseReply{Error: "no broker"})
		return
	}
	if n.claimingNow(req.Client) {
		// A claim of this node may have written the session record and
		// not yet imported the session, or its client not yet be
		// attached: giving the session up now would leave two homes
		// writing it, or a client attached to a session no node keeps.
		// The claiming node asks again; the client attached here by
		// then is taken over as any other.
		if f := n.sess.busyAnswer.Load(); f != nil {
			(*f)(req.Client)
		}
		reply(releaseReply{Error: "a claim of the session is under way on this node", Busy: true, Retry: true})
		return
	}
	if !n.roomToRelease(req.Client) {
		// It could not answer a claim that fails afterwards with the
		// position it gives the session up at: it keeps the session.
		n.log.Warn("cluster: a session not given up: too many given up in the last minutes whose claims are not known to have succeeded",
			"client", req.Client)
		reply(releaseReply{Error: "too many sessions given up recently", Busy: true})
		return
	}
	// A session catching up got the other nodes' messages up to the
	// catch-up's reading only (routing skipped the later ones): its new
	// home replays from there. What the catch-up read and what the
	// session held back go into it first, so that its records hold them.
	n.markReleasing(req.Client, true)
	defer n.markReleasing(req.Client, false)
	cu := n.stopCatchUp(req.Client)
	// The claiming node's messages handed to the broker before the
	// session went (recvMu held) reached its connection, if any.
	n.recvMu.Lock()
	n.dur.routeMu.Lock()
	var caughtTo uint64
	var skip []string
	if cu != nil {
		caughtTo, skip = cu.handOver()
	}
	// This node's own messages for the session go into the stream from
	// before it leaves the index (holdGivenUp).
	n.holdGivenUp(b.SessionFilters(req.Client))
	released, online := b.ReleaseSession(req.Client)
	routed := n.dur.routed
	if cu != nil {
		routed = caughtTo
	}
	n.dur.routeMu.Unlock()
	var qos0 uint64
	if online && req.Origin != "" {
		qos0 = n.recvLast[req.Origin]
	}
	n.recvMu.Unlock()
	if f := n.sess.beforeReply.Load(); f != nil {
		(*f)(req.Client)
	}
	// A session given up already (a claim failed after that) is
	// answered with what was answered then.
	routed, qos0, token := n.giveUp(req.Client, released, routed, req.Origin, qos0)
	done := make(chan error, 1)
	p.Persist(nil, func(err error) { done <- err })
	select {
	case err := <-done:
		if err != nil {
			reply(releaseReply{Error: err.Error()})
			return
		}
	case <-n.ctx.Done():
		return
	}
	if released {
		n.dstats.sessionsOut.Add(1)
		n.log.Info("cluster: session handed over to another node", "client", req.Client)
	}
	if routed != caughtTo {
		skip = nil // answered with an earlier position (giveUp)
	}
	reply(releaseReply{OK: true, Routed: routed, QoS0: qos0, Token: token, Skip: skip})
}

// importHomeSessions imports, when the node starts, the sessions whose
// home was this node's previous run. A session whose import fails for a
// reason that may pass (a stream or bucket without a leader, as right
// after this node's own crash) is tried again, for up to
// importRetryFor: a session left unimported is on no node, its will and
// expiry wait for its client, and since no node takes a live node's
// sessions for dead, nothing else would ever import it. The node's
// consumer starts routing, and claims start, only after this: a session
// imported later would miss what was routed meanwhile.
func (n *Node) importHomeSessions() {
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Minute)
	defer cancel()
	deadline := time.Now().Add(importRetryFor)
	var failed map[string]bool
	wait := 250 * time.Millisecond
	for {
		var ok bool
		failed, ok = n.importHomeOnce(ctx, failed)
		if ok && len(failed) == 0 {
			break
		}
		if !time.Now().Add(wait).Before(deadline) {
			n.log.Error("cluster: sessions of this node could not be imported; they are imported when their clients connect",
				"sessions", len(failed))
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
	// The wills of its previous run's clean sessions, whose connections
	// ended with it (unless the nodes that adopted it published them).
	wait = 250 * time.Millisecond
	for {
		_, err := n.adoptCleanWills(ctx, n.cfg.Node)
		if err == nil {
			return
		}
		if !time.Now().Add(wait).Before(deadline) {
			n.log.Error("cluster: the wills of clean sessions' connections of this node's previous run could not be read; not published",
				"err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// importRetryFor bounds the tries of importHomeSessions.
const importRetryFor = 30 * time.Second

// homeAwait is how long, once a node that starts again has imported its
// previous run's sessions, each of them holds this node's publishers
// back at its full queue rather than dropping their messages there
// (broker.Server.AwaitClient): their clients reconnect at once to
// whichever node answers, and a claim on another node, which takes the
// queue with the session, may come seconds later when that node gets
// ready after this one (the nodes of a cluster that restarts whole get
// ready up to 4 s apart; a client waits up to about 10 s for a CONNACK).
// Until 2026-12-08 the queue dropped them: in 3 of 17 runs of an
// outside series that killed the whole cluster under load, 1,220 to
// 1,912 acknowledged messages of a publisher on the subscriber's old
// home, sent in a burst once its first message was let through, were
// dropped there before the subscriber's claim on another node arrived.
// A client gone for good holds those publishers that long, once.
const homeAwait = 10 * time.Second

// awaitHomeClient starts the broker's wait for the client of the session
// of id, which this node imports as it starts (homeAwait), once.
func (n *Node) awaitHomeClient(id string) {
	b, ok := n.b.(sessionBroker)
	if !ok {
		return
	}
	s := &n.sess
	s.homeMu.Lock()
	defer s.homeMu.Unlock()
	if s.homeAwaits == nil {
		s.homeAwaits = make(map[string]func())
	}
	if s.homeAwaits[id] == nil {
		s.homeAwaits[id] = b.AwaitClient(id)
	}
}

// endHomeAwaits ends, homeAwait after this node imported its previous
// run's sessions (or as it closes), the broker's waits for their clients.
func (n *Node) endHomeAwaits() {
	s := &n.sess
	d := time.Duration(s.homeAwaitFor.Load())
	if d == 0 {
		d = homeAwait
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-n.ctx.Done():
	}
	s.homeMu.Lock()
	awaits := s.homeAwaits
	s.homeAwaits = nil
	s.homeMu.Unlock()
	for _, done := range awaits {
		done()
	}
}

// importHomeOnce imports the sessions whose record names this node's
// previous run (all of them when retry is nil, else those of retry, the
// ones that failed: a record this run already wrote counts too, its
// import having failed after the write). It returns those whose import
// failed, and false if the list of sessions could not be read.
func (n *Node) importHomeOnce(ctx context.Context, retry map[string]bool) (map[string]bool, bool) {
	var records []storedRecord
	var err error
	if retry == nil {
		records, err = n.listSubjects(ctx, n.sess.stream, sessPrefix+"*.s")
	} else {
		subjects := make([]string, 0, len(retry))
		for id := range retry {
			subjects = append(subjects, sessSubject(id, "s"))
		}
		records, err = n.getRecords(ctx, subjects)
	}
	if err != nil {
		n.log.Warn("cluster: reading the sessions of this node failed; trying again", "err", err)
		return retry, false
	}
	type mine struct {
		id  string
		rec *sessionRecord
		seq uint64
	}
	var sessions []mine
	for _, r := range records {
		if len(r.data) == 0 {
			continue
		}
		rec, err := decodeSession(r.data)
		if err != nil || rec.Node != n.cfg.Node {
			continue
		}
		id, _, err := clientOfSubject(r.subject)
		if err != nil || rec.Home == n.origin && !retry[id] {
			continue
		}
		sessions = append(sessions, mine{id, rec, r.seq})
	}
	// The records of up to 64 sessions are read at once. Their old home
	// (this node's previous run) writes nothing any more; another node
	// that takes one of them meanwhile makes the take fail, and the
	// record, read again, then no longer names this node.
	failed := make(map[string]bool)
	imported := 0
	for chunk := range slices.Chunk(sessions, 64) {
		filters := make([]string, len(chunk))
		for i, m := range chunk {
			filters[i] = sessPrefix + keyOf(m.id) + ".>"
		}
		records, err := n.listSubjects(ctx, n.sess.stream, filters...)
		if err != nil {
			n.log.Warn("cluster: reading sessions of this node failed; trying again", "err", err)
			for _, m := range chunk {
				failed[m.id] = true
			}
			continue
		}
		byID := make(map[string][]storedRecord, len(chunk))
		for _, r := range records {
			if id, _, err := clientOfSubject(r.subject); err == nil {
				byID[id] = append(byID[id], r)
			}
		}
		// Up to adoptParallel at once, as an adoption: each take waits
		// mostly for the stream's answer to its record's write.
		var mu sync.Mutex
		inParallel(chunk, adoptParallel, func(m mine) {
			list := func(context.Context) ([]storedRecord, error) { return byID[m.id], nil }
			err := error(nil)
			if f := n.sess.homeImportErr.Load(); f != nil {
				err = (*f)(m.id)
			}
			if err == nil {
				n.awaitHomeClient(m.id)
				err = n.take(ctx, m.id, m.rec, m.seq, false, true, position{}, list)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				n.log.Warn("cluster: a session of this node not imported; trying again", "client", m.id, "err", err)
				failed[m.id] = true
			} else {
				imported++
			}
		})
	}
	n.log.Info("cluster: sessions of this node imported", "sessions", imported)
	return failed, true
}

// msgStream returns the durable message stream (set before ready).
func (n *Node) msgStream() jetstream.Stream { return n.dur.stream }

// sortDeliveries orders deliveries by sequence, the order they were
// made in (the broker's recovery expects it).
func sortDeliveries(ds []*broker.StoredDelivery) {
	slices.SortFunc(ds, func(a, b *broker.StoredDelivery) int { return cmp.Compare(a.Seq, b.Seq) })
}
