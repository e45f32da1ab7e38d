package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/internal/broker"
)

// The cluster's Persistence (broker.ClusterPersistence). broker.New wraps
// the node's own Persistence (its store, or none) with it: every Persist
// call becomes one commit whose parts are the local store's commit and
// the JetStream publications it needs (a QoS 1/2 message for the other
// nodes: durable.go). The commit's done runs once every part is
// acknowledged, and done functions run in the order the commits were
// submitted, as the broker requires of a Persistence.

// defaultCommitTimeout is Config.CommitTimeout's default: how long a
// commit waits for JetStream. A stream without a leader (an election
// after a node died takes seconds) is retried within it; past it the
// commit fails, and the broker answers the publisher with an error
// instead of an acknowledgement.
const defaultCommitTimeout = 20 * time.Second

// commitTimeout returns the node's commit timeout (Config.CommitTimeout).
func (n *Node) commitTimeout() time.Duration {
	if n.cfg.CommitTimeout > 0 {
		return n.cfg.CommitTimeout
	}
	return defaultCommitTimeout
}

// persistence implements broker.Persistence for a Node.
type persistence struct {
	n     *Node
	local broker.Persistence // nil: the node keeps nothing on its own disk
	ids   atomic.Uint64      // message IDs when local is nil

	// deliveryCommits counts the commits that put deliveries into
	// sessions (a record of the stream is one: durable.go), and
	// failCommits, while above zero, fails that many of them after
	// they are written (a store that did not answer in time): both for
	// the tests.
	deliveryCommits atomic.Uint64
	failCommits     atomic.Int32

	mu       sync.Mutex
	commits  []*commit // submitted, in order; the head is reported first
	draining bool      // a goroutine is reporting finished commits
}

// commit is one Persist call: done runs once parts falls to zero and
// every earlier commit has been reported.
type commit struct {
	parts    atomic.Int32
	errMu    sync.Mutex
	err      error
	done     func(error)
	finished bool // guarded by persistence.mu
	// unordered: reported as soon as its parts are done, not in
	// submission order (a shared subscription's message confirmed to
	// the node waiting for it, sharedack.go); it still holds back the
	// commits after it, so that a barrier (a session given up) covers
	// it.
	unordered bool
	// holds are the imports whose held deliveries c writes (watchHeld):
	// told when c's parts are done, whatever the commits before it.
	holds []*importHold
}

func (c *commit) fail(err error) {
	c.errMu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.errMu.Unlock()
}

// Persistence implements broker.ClusterPersistence.
func (n *Node) Persistence(local broker.Persistence) broker.Persistence {
	p := &persistence{n: n, local: local}
	p.ids.Store(uint64(time.Now().UnixNano()))
	n.persist.Store(p)
	return p
}

var _ broker.ClusterPersistence = (*Node)(nil)

// Recover implements broker.Persistence: the retained messages of the
// local store. Sessions live in the cluster (sessions.go), which imports
// them once it is ready; sessions a local store kept from before the node
// joined a cluster are removed from it.
func (p *persistence) Recover() (*broker.Recovered, error) {
	if p.local == nil {
		return nil, nil
	}
	rec, err := p.local.Recover()
	if err != nil || rec == nil {
		return rec, err
	}
	if len(rec.Sessions) > 0 || len(rec.Wills) > 0 {
		p.n.log.Warn("cluster: sessions in the local store are not used in a cluster; removed", "sessions", len(rec.Sessions))
		var dels []broker.Change
		for _, rs := range rec.Sessions {
			dels = append(dels, broker.Change{Kind: broker.ChangeDeleteSession, ClientID: rs.Session.ClientID})
		}
		for _, w := range rec.Wills {
			dels = append(dels, broker.Change{Kind: broker.ChangeDeleteWill, ClientID: w.ClientID})
		}
		p.local.Persist(dels, func(err error) {
			if err != nil {
				p.n.log.Warn("cluster: removing old sessions from the local store failed", "err", err)
			}
		})
	}
	return &broker.Recovered{Retained: rec.Retained}, nil
}

// NewID implements broker.Persistence. IDs name deliveries in the
// session records, so they must not repeat a moved session's: they start
// at the boot time in nanoseconds, and an imported session raises them
// above its own (raiseIDs).
func (p *persistence) NewID() uint64 { return p.ids.Add(1) }

// raiseIDs makes later IDs larger than id.
func (p *persistence) raiseIDs(id uint64) {
	for {
		cur := p.ids.Load()
		if cur >= id || p.ids.CompareAndSwap(cur, id) {
			return
		}
	}
}

// begin starts a commit reported to done in submission order; the caller
// adds its parts and then calls finish(c, nil) once.
func (p *persistence) begin(done func(error)) *commit {
	c := &commit{done: done}
	c.parts.Store(1)
	p.mu.Lock()
	p.commits = append(p.commits, c)
	p.mu.Unlock()
	return c
}

// Persist implements broker.Persistence. It never blocks: publications
// are queued for the publisher goroutine.
func (p *persistence) Persist(changes []broker.Change, done func(error)) {
	var local []broker.Change
	var msgs map[uint64]*broker.Message // the commit's messages, for its deliveries
	deliveries := false
	unordered := false
	for i := range changes {
		switch ch := &changes[i]; ch.Kind {
		case broker.ChangeForward:
			if f := p.n.dur.beforeForward.Load(); f != nil {
				(*f)(ch.Message)
			}
		case broker.ChangePutMessage:
			if msgs == nil {
				msgs = make(map[uint64]*broker.Message)
			}
			msgs[ch.MsgID] = ch.Message
			// A message a node waits for is confirmed once written,
			// not after the commits before it: those may wait for this
			// one (sharedack.go).
			unordered = unordered || p.n.share.ack.isUnordered(ch.Message)
		case broker.ChangePutDelivery:
			deliveries = true
		}
	}
	c := p.begin(done)
	c.unordered = unordered
	if deliveries && p.n.sess.holdN.Load() > 0 {
		p.n.watchHeld(c, changes)
	}
	if deliveries {
		p.deliveryCommits.Add(1)
		if p.failCommits.Load() > 0 && p.failCommits.Add(-1) >= 0 {
			c.fail(errFailedForTest)
		}
	}
	// The messages forwarded first: the broker lists a message's
	// deliveries to this node's sessions before its forward, and their
	// records name it by the stream ID the forward gives it (own).
	var own map[*broker.Message]string
	for i := range changes {
		ch := &changes[i]
		if ch.Kind != broker.ChangeForward {
			continue
		}
		// The groups' copy first; the commit waits for their
		// confirmations as for the stream's (sharedack.go).
		p.n.forwardShared(c, ch.Message)
		if f := p.n.dur.forwarding.Load(); f != nil {
			(*f)(ch.Message)
		}
		if f := p.n.forwardMsg(ch.Message); f != nil {
			ref := msgID(p.n.origin, f.seq)
			// Named for a claim under way (sessions.go).
			p.n.noteOwn(ch.Message, ref)
			if deliveries {
				if own == nil {
					own = make(map[*broker.Message]string)
				}
				own[ch.Message] = ref
			}
			c.parts.Add(1)
			p.n.pub.queue(pubReq{fwd: f, c: c, deadline: time.Now().Add(p.n.commitTimeout())})
		}
	}
	for i := range changes {
		ch := &changes[i]
		switch ch.Kind {
		case broker.ChangeForward:
			// Forwarded above.
		case broker.ChangePutMessage:
			// Written with each delivery that refers to it.
		case broker.ChangePutSession, broker.ChangeDeleteSession, broker.ChangePutDelivery, broker.ChangeDeleteDelivery,
			broker.ChangePutInbound, broker.ChangeDeleteInbound, broker.ChangePutWill, broker.ChangeDeleteWill:
			p.sessionChange(c, ch, msgs, own)
		default: // retained messages: the local store keeps its copy
			if p.local != nil {
				local = append(local, *ch)
			}
		}
	}
	if len(local) > 0 {
		c.parts.Add(1)
		p.local.Persist(local, func(err error) { p.finish(c, err) })
	}
	p.finish(c, nil)
}

// publish adds the JetStream publication m to c.
func (p *persistence) publish(c *commit, m *nats.Msg) {
	c.parts.Add(1)
	p.n.pub.queue(pubReq{msg: m, c: c, deadline: time.Now().Add(p.n.commitTimeout())})
}

// finish reports one part of c; the commits at the head of the queue
// whose parts are all done are reported in order, by one goroutine at a
// time and with no lock held.
func (p *persistence) finish(c *commit, err error) {
	if err != nil {
		c.fail(err)
	}
	if c.parts.Add(-1) > 0 {
		return
	}
	if len(c.holds) > 0 {
		c.errMu.Lock()
		err := c.err
		c.errMu.Unlock()
		p.n.heldWritten(c.holds, err)
	}
	if c.unordered {
		c.errMu.Lock()
		err := c.err
		c.errMu.Unlock()
		c.done(err)
	}
	p.mu.Lock()
	c.finished = true
	if p.draining {
		p.mu.Unlock()
		return
	}
	p.draining = true
	for len(p.commits) > 0 && p.commits[0].finished {
		head := p.commits[0]
		p.commits[0] = nil
		p.commits = p.commits[1:]
		p.mu.Unlock()
		if !head.unordered {
			head.errMu.Lock()
			err := head.err
			head.errMu.Unlock()
			head.done(err)
		}
		p.mu.Lock()
	}
	p.draining = false
	p.mu.Unlock()
}

// pubReq is one JetStream publication of a commit, one message for a
// batch record (fwd), or a batch record (cs: the commits of its
// messages, in order).
type pubReq struct {
	msg      *nats.Msg
	fwd      *fwdMsg
	c        *commit
	cs       []*commit
	deadline time.Time
}

// finish reports the publication's outcome to its commits.
func (r *pubReq) finish(p *persistence, err error) {
	if r.c != nil {
		p.finish(r.c, err)
	}
	for _, c := range r.cs {
		p.finish(c, err)
	}
}

// publisher publishes the commits' messages in submission order on one
// goroutine (JetStream's asynchronous publish may wait for room, which a
// Persist call must not), and a second goroutine waits for the
// acknowledgements in the same order. What timed out or found no stream
// leader is published again, until the commit's deadline, alone, and,
// once the stream answered it, every record published after it that is
// not acknowledged yet, each alone in its turn (republish, endProbe): a
// record lost with a
// stream leader that died would otherwise land after the records sent
// once the new leader was there, ahead of it in the stream, breaking
// its publishers' order and, for the sessions' stream (the last record
// per subject kept), leaving an older record of a session in place of
// a newer one.
//
// Messages for the durable stream are grouped (batch.go): they gather
// while maxBatchesInFlight batch records are on their way and go as one
// record when one of those is acknowledged, or at once when the batch is
// full. Records of the sessions' stream are published as they come.
type publisher struct {
	n    *Node
	mu   sync.Mutex
	reqs []pubReq
	wake chan struct{}

	// out holds the publications not yet taken by acknowledge, in the
	// order they were published: sendMu is held across a publication
	// and its append, and by a republication, so that nothing is
	// published between the records sent again. outWake tells
	// acknowledge of an append, room the publisher of a take below
	// maxOut; outClosed: acknowledge stopped, what comes fails.
	sendMu    sync.Mutex
	out       []pending
	outClosed bool
	outWake   chan struct{}
	room      chan struct{}
	// newLeader tells acknowledge that one of the streams it publishes
	// to elected a leader (watchLeaders), electedAt when (Unix ns).
	newLeader chan struct{}
	electedAt atomic.Int64

	// The batch being gathered and the batch records not yet
	// acknowledged; the batch is the run goroutine's alone.
	batch      []*fwdMsg
	batchCs    []*commit
	batchBytes int
	batchDL    time.Time
	inflight   atomic.Int32

	// lose, when positive, makes that many next batch records fail at
	// once as if lost with a stream leader, as long as no record was
	// published again since loseAt was taken (retries): those sent
	// after a retry reach the new leader (tests, loseNext).
	lose            atomic.Int32
	retries, loseAt atomic.Uint64
	// republished counts the records published again after an earlier
	// record's failure (tests, Status).
	republished atomic.Uint64
	// elections counts the leader elections acknowledge heard of while
	// it waited for a record, keptAcked the records republish found
	// acknowledged already and did not send again (tests).
	elections, keptAcked atomic.Uint64
	// overtakes counts the records published again because a later
	// record to the same stream was acknowledged first (overtaken).
	overtakes atomic.Uint64
	// probing: a record published again (republish) goes alone, and
	// the records after it and anything new wait (send) until the
	// stream answered it (endProbe); then the next one not acknowledged
	// goes alone in its turn, and so on. probe is the ID (pending.id) of
	// the record sent alone, nextID the last ID given. Written under
	// sendMu; probed wakes send.
	probing       atomic.Bool
	probe, nextID uint64
	probed        chan struct{}
	// silentHead, when positive, makes that many next records published
	// again alone vanish without an answer (tests), as one sent to a
	// stream leader in its first moment may; silentNext likewise for the
	// records sent alone after an earlier one was answered (endProbe).
	silentHead, silentNext atomic.Int32
	// silent, when positive, makes that many next batch records vanish
	// without an answer, as a record that reached a server no longer
	// leading the stream does (tests): not published, never answered.
	silent atomic.Int32
	// late, when positive, makes that many next batch records published
	// get their answer only once the test lets it go (lateHeld, under
	// sendMu), as a record a stream leader stored and died before it
	// answered is answered by the next leader once it leads (tests).
	late     atomic.Int32
	lateHeld []*heldAnswer
	// stallAfter, when set, replaces stallProbe (tests); stalls counts
	// the records answered after stallProbe that made the records after
	// them go alone (endProbe).
	stallAfter atomic.Int64
	stalls     atomic.Uint64
}

// stallProbe is how long a record waited for its answer before the
// records sent after it that are not answered yet go again, alone and
// in order, before anything new (endProbe). A record stored by a stream
// leader that died before it answered is answered by the next leader
// as it applies it, once it leads, and the records sent after it to
// the dying leader may be lost; new records, sent at once, reached the
// new leader first and landed ahead of them (an outside kill series: 9
// acknowledged messages behind 88 later ones of their publisher, read
// back from the stream). The election's advisory, which makes the
// records after it go again in order, can come after that answer.
// Normal answers take milliseconds; an election, seconds.
const stallProbe = time.Second

// stalled tells whether pd, answered now, waited stallProbe or more.
func (q *publisher) stalled(pd *pending) bool {
	after := int64(stallProbe)
	if d := q.stallAfter.Load(); d > 0 {
		after = d
	}
	return time.Now().UnixNano()-pd.sent >= after
}

// heldAnswer is the future of a record published whose answer waits
// until a test lets it go (publisher.late).
type heldAnswer struct {
	real jetstream.PubAckFuture
	ok   chan *jetstream.PubAck
	err  chan error
}

func (h *heldAnswer) Ok() <-chan *jetstream.PubAck { return h.ok }
func (h *heldAnswer) Err() <-chan error            { return h.err }
func (h *heldAnswer) Msg() *nats.Msg               { return h.real.Msg() }

// overtakeCheck is how often acknowledge, waiting for a record, looks
// whether a later record to the same stream was acknowledged (overtaken).
const overtakeCheck = 250 * time.Millisecond

// loseNext makes the next k batch records fail as lost (tests).
func (q *publisher) loseNext(k int32) {
	q.loseAt.Store(q.retries.Load())
	q.lose.Store(k)
}

// maxOut bounds publisher.out: the publications whose acknowledgement
// is awaited (JetStream's own bound on them is 1<<14 as well).
const maxOut = 1 << 14

type pending struct {
	id    uint64 // in the order of publication (publisher.nextID)
	req   pubReq
	paf   jetstream.PubAckFuture // nil: the publication failed at once (err), or was acknowledged (err nil)
	err   error
	batch bool
	sent  int64 // when published (last), Unix nanoseconds
}

func newPublisher(n *Node) *publisher {
	return &publisher{n: n, wake: make(chan struct{}, 1), outWake: make(chan struct{}, 1), room: make(chan struct{}, 1),
		newLeader: make(chan struct{}, 1), probed: make(chan struct{}, 1)}
}

func (q *publisher) queue(r pubReq) {
	q.mu.Lock()
	q.reqs = append(q.reqs, r)
	q.mu.Unlock()
	q.poke()
}

func (q *publisher) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// run publishes until the Node closes; what is queued then fails.
func (q *publisher) run(js jetstream.JetStream, ctx context.Context) {
	p := q.n.persistence()
	defer func() {
		q.failQueued()
		q.failBatch()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.wake:
		}
		q.mu.Lock()
		reqs := q.reqs
		q.reqs = nil
		q.mu.Unlock()
		batching := q.n.batchOK()
		if !batching && !q.sendSingles(js, ctx) {
			for _, r := range reqs {
				p.finish(r.c, errClosed)
			}
			return
		}
		for i, r := range reqs {
			ok := true
			if r.fwd != nil && !batching {
				// A node that may not read batches: one record each.
				ok = q.send(js, ctx, pending{req: pubReq{msg: singleRecord(q.n.origin, r.fwd), c: r.c, deadline: r.deadline}})
			} else if r.fwd != nil {
				if len(q.batch) > 0 && q.batchBytes+r.fwd.size() > maxBatchBytes {
					if ok = q.sendBatch(js, ctx); !ok {
						p.finish(r.c, errClosed)
					}
				}
				if ok {
					q.add(r)
					if len(q.batch) >= maxBatchMsgs {
						ok = q.sendBatch(js, ctx)
					}
				}
			} else {
				ok = q.send(js, ctx, pending{req: r})
			}
			if !ok {
				for _, r := range reqs[i+1:] {
					p.finish(r.c, errClosed)
				}
				return
			}
		}
		if len(q.batch) > 0 && q.inflight.Load() < maxBatchesInFlight && !q.sendBatch(js, ctx) {
			return
		}
	}
}

// add puts the message of r into the batch.
func (q *publisher) add(r pubReq) {
	if len(q.batch) == 0 {
		q.batchDL = r.deadline
	}
	q.batch = append(q.batch, r.fwd)
	q.batchCs = append(q.batchCs, r.c)
	q.batchBytes += r.fwd.size()
}

// sendBatch publishes the batch as one record; false: the Node closed.
func (q *publisher) sendBatch(js jetstream.JetStream, ctx context.Context) bool {
	r := pubReq{msg: batchRecord(q.n.origin, q.batch), cs: q.batchCs, deadline: q.batchDL}
	q.batch, q.batchCs, q.batchBytes = nil, nil, 0
	q.inflight.Add(1)
	return q.send(js, ctx, pending{req: r, batch: true})
}

// sendSingles publishes the messages of the batch gathered, if any, as
// single records; false: the Node closed.
func (q *publisher) sendSingles(js jetstream.JetStream, ctx context.Context) bool {
	msgs, cs := q.batch, q.batchCs
	q.batch, q.batchCs, q.batchBytes = nil, nil, 0
	for i, f := range msgs {
		if !q.send(js, ctx, pending{req: pubReq{msg: singleRecord(q.n.origin, f), c: cs[i], deadline: q.batchDL}}) {
			for _, c := range cs[i+1:] {
				q.n.persistence().finish(c, errClosed)
			}
			return false
		}
	}
	return true
}

// send publishes pd.req.msg and hands it to acknowledge; false: the Node
// closed (pd failed).
func (q *publisher) send(js jetstream.JetStream, ctx context.Context, pd pending) bool {
	for {
		q.sendMu.Lock()
		if q.outClosed || ctx.Err() != nil {
			q.sendMu.Unlock()
			pd.req.finish(q.n.persistence(), errClosed)
			return false
		}
		if len(q.out) < maxOut && !q.probing.Load() {
			break
		}
		q.sendMu.Unlock()
		select {
		case <-q.room:
		case <-q.probed:
		case <-ctx.Done():
		}
	}
	q.nextID++
	pd.id = q.nextID
	pd.sent = time.Now().UnixNano()
	if pd.batch && q.lose.Load() > 0 && q.retries.Load() == q.loseAt.Load() && q.lose.Add(-1) >= 0 {
		pd.paf, pd.err = nil, nats.ErrNoResponders
	} else if pd.batch && q.silent.Load() > 0 && q.silent.Add(-1) >= 0 {
		pd.paf, pd.err = unanswered{pd.req.msg}, nil
	} else if pd.batch && q.late.Load() > 0 && q.late.Add(-1) >= 0 {
		pd.paf, pd.err = publishBy(js, pd.req.msg, pd.req.deadline)
		if pd.err == nil {
			h := &heldAnswer{real: pd.paf, ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
			q.lateHeld = append(q.lateHeld, h)
			pd.paf = h
		}
	} else {
		pd.paf, pd.err = publishBy(js, pd.req.msg, pd.req.deadline)
	}
	q.out = append(q.out, pd)
	q.sendMu.Unlock()
	select {
	case q.outWake <- struct{}{}:
	default:
	}
	return true
}

// take returns the oldest publication not yet acknowledged, waiting for
// one; false: ctx ended, and no publication is taken any more (the
// ones left are failed).
func (q *publisher) take(ctx context.Context) (pending, bool) {
	for {
		q.sendMu.Lock()
		if ctx.Err() != nil {
			left := q.out
			q.out, q.outClosed = nil, true
			q.sendMu.Unlock()
			for _, pd := range left {
				pd.req.finish(q.n.persistence(), errClosed)
			}
			return pending{}, false
		}
		if len(q.out) > 0 {
			pd := q.out[0]
			q.out[0] = pending{}
			q.out = q.out[1:]
			full := len(q.out) == maxOut-1
			q.sendMu.Unlock()
			if full {
				select {
				case q.room <- struct{}{}:
				default:
				}
			}
			return pd, true
		}
		q.sendMu.Unlock()
		select {
		case <-q.outWake:
		case <-ctx.Done():
		}
	}
}

// republish publishes pd again, alone: the records published after it
// and anything new wait until the stream answered pd (endProbe). A
// stream leader in its first moment may drop a record without an
// answer and store the next one sent a moment later (seen once at an
// election: the record sent again vanished, the one after it was
// stored, and the first landed behind about 80 later messages once the
// check for overtaken records sent it a third time). Sent alone, pd is
// sent again after overtakeCheck if it vanishes (resend), and nothing
// can overtake it.
func (q *publisher) republish(js jetstream.JetStream, pd *pending) {
	q.sendMu.Lock()
	defer q.sendMu.Unlock()
	q.retries.Add(1)
	q.probing.Store(true)
	q.probe = pd.id
	q.resendLocked(js, pd, &q.silentHead)
}

// resend publishes pd again, alone, while it is being probed: it has
// waited overtakeCheck without an answer.
func (q *publisher) resend(js jetstream.JetStream, pd *pending) {
	q.sendMu.Lock()
	defer q.sendMu.Unlock()
	q.resendLocked(js, pd, &q.silentHead)
}

// resendLocked publishes pd again; silent is the test hook that may make
// it vanish. The caller holds sendMu.
func (q *publisher) resendLocked(js jetstream.JetStream, pd *pending, silent *atomic.Int32) {
	pd.sent = time.Now().UnixNano()
	if silent.Load() > 0 && silent.Add(-1) >= 0 {
		pd.paf, pd.err = unanswered{pd.req.msg}, nil
		return
	}
	pd.paf, pd.err = publishBy(js, pd.req.msg, pd.req.deadline)
}

// probingFor tells whether pd, a durable stream's record sent alone, has
// waited overtakeCheck for its answer: a record that vanished is sent
// again then rather than after its timeout (5 s). A record of the
// sessions' stream waits for its timeout: sent again, it is written
// again.
func (q *publisher) probingFor(pd *pending) bool {
	if time.Now().UnixNano()-pd.sent < int64(overtakeCheck) || !durableRecord(pd.req.msg) {
		return false
	}
	q.sendMu.Lock()
	defer q.sendMu.Unlock()
	return q.probing.Load() && q.probe == pd.id
}

// endProbe runs once pd was answered (or failed for good) while records
// go alone, or after waiting stallProbe for its answer: if pd was the
// one sent alone, or its answer came that late, the records published after
// it that are not acknowledged yet go again in order, each record of
// the durable stream alone in its turn (the next waits for its answer),
// and only once none is left does anything new go. Those records may
// have gone the way the first went (to a stream leader that died), and
// sent together, one could vanish while the next was stored (seen once
// in a run that killed the stream's leader: 15 messages of a surviving
// node stored behind later ones of their publisher); whatever of them
// the stream has already it keeps as it was. Few wait: at most
// maxBatchesInFlight batch records, more only when batches fill at
// once. A durable stream's record already acknowledged is not sent
// again (its place in the stream is taken); a record of the sessions'
// stream is, as the stream keeps the last record per subject and the
// first's must not end up after a later one; those go together up to
// the next durable record. Nothing is sent again unless resend (the
// Node closes).
func (q *publisher) endProbe(js jetstream.JetStream, pd *pending, resend bool) {
	stalled := resend && q.stalled(pd)
	if !q.probing.Load() && !stalled {
		return // no lock per record when nothing goes alone
	}
	q.sendMu.Lock()
	if !q.probing.Load() && stalled {
		// pd's answer came late (stallProbe): the records after it may
		// have gone to a leader that died. They go again, alone, before
		// anything new.
		q.probing.Store(true)
		q.probe = pd.id
		q.stalls.Add(1)
	}
	if !q.probing.Load() || pd.id != q.probe {
		// A record before the one sent alone, found acknowledged.
		q.sendMu.Unlock()
		return
	}
	for i := 0; resend && i < len(q.out); i++ {
		o := &q.out[i]
		if o.paf == nil && o.err == nil && o.req.msg.Header.Get(nats.MsgIdHdr) != "" {
			continue // found acknowledged before
		}
		if o.paf != nil && o.req.msg.Header.Get(nats.MsgIdHdr) != "" {
			select {
			case <-o.paf.Ok():
				// The acknowledgement is taken from its channel (it
				// holds one): acknowledge must learn it from o.
				o.paf, o.err = nil, nil
				q.keptAcked.Add(1)
				continue
			default:
			}
		}
		q.republished.Add(1)
		if !durableRecord(o.req.msg) {
			// A record of the sessions' stream: one per change of a
			// session, so thousands may wait, and a round trip each
			// would hold every commit of the node up for seconds.
			// They go together up to the next durable record.
			o.sent = time.Now().UnixNano()
			o.paf, o.err = publishBy(js, o.req.msg, o.req.deadline)
			continue
		}
		q.probe = o.id
		q.resendLocked(js, o, &q.silentNext)
		q.sendMu.Unlock()
		return
	}
	q.probing.Store(false)
	q.sendMu.Unlock()
	select {
	case q.probed <- struct{}{}:
	default:
	}
}

// overtaken tells whether a record published after pd to the same
// stream was acknowledged while pd was not, pd having waited at least
// overtakeCheck. A stream's leader answers the records it takes in the
// order it takes them, so pd did not reach the leader that took the
// later one: it went to a server that no longer led the stream, which
// drops such a record without an answer (nats-server answers neither
// "not leader" nor anything else), or to a leader that died with it.
// Published again at once, it lands behind the later record rather
// than after the 5 s timeout behind every record sent in that time
// (docs/cluster.md, "Order when a node dies"). A record answered by an
// old leader late is harmless to send again: the stream knows its ID
// and answers with its place.
func (q *publisher) overtaken(pd *pending) bool {
	if time.Now().UnixNano()-pd.sent < int64(overtakeCheck) || !durableRecord(pd.req.msg) {
		return false
	}
	q.sendMu.Lock()
	defer q.sendMu.Unlock()
	for i := range q.out {
		o := &q.out[i]
		if !durableRecord(o.req.msg) {
			continue
		}
		if o.paf == nil {
			if o.err == nil {
				return true // acknowledged, found so before
			}
			continue
		}
		select {
		case <-o.paf.Ok():
			// Taken from its one-slot channel: acknowledge learns it
			// from o (as in republish).
			o.paf, o.err = nil, nil
			return true
		default:
		}
	}
	return false
}

// durableRecord tells a record of the durable stream (its messages,
// each with a message ID the stream drops copies by) from one of the
// sessions' stream. Only the former are looked at by overtaken: a record
// of the sessions' stream published again writes it again, and waits
// for its timeout as before.
func durableRecord(m *nats.Msg) bool {
	return strings.HasPrefix(m.Subject, durablePrefix) && m.Header.Get(nats.MsgIdHdr) != ""
}

// unanswered is the future of a record that vanished without an answer
// (tests: publisher.silent).
type unanswered struct{ msg *nats.Msg }

func (unanswered) Ok() <-chan *jetstream.PubAck { return nil }
func (unanswered) Err() <-chan error            { return nil }
func (u unanswered) Msg() *nats.Msg             { return u.msg }

var errClosed = errors.New("cluster: node closed")

// errCommitDeadline is the error of a publication whose commit deadline
// passed before it could be (re)sent.
var errCommitDeadline = fmt.Errorf("cluster: commit deadline passed before the stream took the record: %w", context.DeadlineExceeded)

// publishBy publishes msg asynchronously, waiting for room among the
// unacknowledged publications no later than deadline. A deadline already
// passed fails at once with errCommitDeadline: the library refuses a
// stall wait that is not positive with an error that says nothing of
// the cause.
func publishBy(js jetstream.JetStream, msg *nats.Msg, deadline time.Time) (jetstream.PubAckFuture, error) {
	wait := time.Until(deadline)
	if wait <= 0 {
		return nil, errCommitDeadline
	}
	return js.PublishMsgAsync(msg, jetstream.WithStallWait(wait))
}

// errFailedForTest is the error of a commit failed by failCommits.
var errFailedForTest = errors.New("cluster: commit failed (test)")

func (q *publisher) failQueued() {
	q.mu.Lock()
	reqs := q.reqs
	q.reqs = nil
	q.mu.Unlock()
	for _, r := range reqs {
		q.n.persistence().finish(r.c, errClosed)
	}
}

// failBatch fails the batch being gathered (the Node closed).
func (q *publisher) failBatch() {
	for _, c := range q.batchCs {
		q.n.persistence().finish(c, errClosed)
	}
	q.batch, q.batchCs, q.batchBytes = nil, nil, 0
}

// watchLeaders subscribes to the advisories of the streams' leader
// elections. A record sent to a stream leader that died is lost and
// its acknowledgement never comes: waiting for its timeout (5 s), the
// records sent once the new leader was there would land before it is
// published again. The new leader announces itself before it takes
// publications, so on its advisory acknowledge publishes again, in
// order, what it still waits for (republish); only a record sent in
// the moment between the new leader's start and this node hearing of
// it can still land ahead. Without the advisories (an external NATS
// that does not allow them), records lost so wait for the timeout.
func (q *publisher) watchLeaders(nc *nats.Conn) {
	for _, stream := range []string{streamMsgs, streamSessions} {
		_, err := nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED."+stream, func(*nats.Msg) {
			q.n.elections.elected(stream)
			q.electedAt.Store(time.Now().UnixNano())
			select {
			case q.newLeader <- struct{}{}:
			default:
			}
		})
		if err != nil {
			q.n.log.Warn("cluster: no advisories of stream leader elections; records lost with a leader are published again after 5 s",
				"stream", stream, "err", err)
		}
	}
}

// acknowledge waits for each publication's acknowledgement in order.
func (q *publisher) acknowledge(js jetstream.JetStream, ctx context.Context) {
	p := q.n.persistence()
	look := time.NewTicker(overtakeCheck)
	defer look.Stop()
	for {
		pd, ok := q.take(ctx)
		if !ok {
			return
		}
		for attempt := 0; ; attempt++ {
			err := pd.err
			if pd.paf != nil {
				select {
				case <-pd.paf.Ok():
				case err = <-pd.paf.Err():
				case <-q.newLeader:
					// A record sent to the old leader may be lost: pd
					// and what follows it go to the new one in order.
					// (An election heard of after pd was sent, that is:
					// not the one that made the stream ready.)
					if q.electedAt.Load() > pd.sent {
						q.elections.Add(1)
						q.republish(js, &pd)
					}
					continue
				case <-look.C:
					// pd's own answer first: select picks among the
					// cases ready at random, and an answer taken here
					// is kept in pd.
					select {
					case <-pd.paf.Ok():
						pd.paf, pd.err = nil, nil
					case e := <-pd.paf.Err():
						pd.paf, pd.err = nil, e
					default:
						if q.probingFor(&pd) {
							q.resend(js, &pd)
						} else if q.overtaken(&pd) {
							q.overtakes.Add(1)
							q.republish(js, &pd)
						}
					}
					attempt-- // a look is no attempt: the backoff stays
					continue
				case <-ctx.Done():
					err = errClosed
				}
			}
			if err == nil || errors.Is(err, errClosed) || !retryable(err) || time.Now().After(pd.req.deadline) {
				// What waited behind pd, sent again alone, goes now
				// (not when the Node closes: its commits fail).
				q.endProbe(js, &pd, !errors.Is(err, errClosed))
				if err != nil && !errors.Is(err, errClosed) {
					q.n.dstats.streamErrors.Add(1)
					q.n.log.Warn("cluster: a publication to JetStream failed", "subject", clip(pd.req.msg.Subject), "err", err)
				}
				pd.req.finish(p, err)
				if pd.batch {
					// Room for the batch gathered meanwhile.
					q.inflight.Add(-1)
					q.poke()
				}
				break
			}
			// No leader yet, or the acknowledgement was lost: again, under
			// the same message ID, with what was published after it;
			// 0.1 s, then twice as long each time up to a second (an
			// election takes seconds, and each attempt sends the records
			// after it again).
			select {
			case <-ctx.Done():
			case <-time.After(min(100*time.Millisecond<<min(attempt, 4), time.Second)):
			}
			q.republish(js, &pd)
		}
	}
}

// retryable tells the errors a new attempt may cure: no stream (leader)
// answering, a timeout, a connection being re-established, or the
// JetStream cluster answering that it is unavailable for now.
func retryable(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, jetstream.ErrAsyncPublishTimeout) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrDisconnected) || errors.Is(err, jetstream.ErrTooManyStalledMsgs) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.As(err, &apiErr) && (apiErr.ErrorCode == jsClusterNotAvailable || apiErr.ErrorCode == jsDuplicateInProcess)
}

// jsDuplicateInProcess is the answer to a record published again while
// its first copy is still being written (409): the copy is not taken,
// and whether the first is, a later attempt learns (its answer then is
// the first copy's place in the stream).
const jsDuplicateInProcess jetstream.ErrorCode = 10158

// jsClusterNotAvailable is the JetStream error a server answers while it
// has no meta leader or is catching up with it ("JetStream system
// temporarily unavailable", 503): the request was not acted on, and is
// answered once a leader is there.
const jsClusterNotAvailable jetstream.ErrorCode = 10008

// persistence returns the Node's Persistence (set by broker.New).
func (n *Node) persistence() *persistence { return n.persist.Load() }

// flushPending waits, for at most 5 s, until the commits submitted so
// far are written (the broker's last changes at its shutdown: sessions
// going offline, wills), so that closing the Node does not lose them.
func (n *Node) flushPending() {
	p := n.persistence()
	if p == nil || n.b == nil || n.ctx.Err() != nil {
		return
	}
	done := make(chan struct{})
	p.Persist(nil, func(error) { close(done) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	select {
	case <-done:
	case <-ctx.Done():
		n.log.Warn("cluster: closing with changes not yet written to the cluster")
		return
	}
	// And the clean sessions' will records (wills.go).
	if !n.flushCleanWills(ctx) {
		n.log.Warn("cluster: closing with clean sessions' will records not yet written to the cluster")
	}
}
