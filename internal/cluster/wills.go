package cluster

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/internal/broker"
)

// Wills of connections whose node dies (docs/cluster.md, "Wills of a
// node that dies"). The broker hands the cluster the will of every
// connection it accepts with one (broker.LiveWillCluster), and tells it
// when the connection ends whether the will was published, discarded or
// waits for its delay: its single-node rules decide that. So a node that
// crashes leaves the wills of its open connections in moat_sessions,
// where the survivors find them:
//
//	moat.s.<client>.w          a persistent session's will: pending (its
//	                           connection ended) or live (still open)
//	moat.s.<client>.w.<run>    the live will of a clean session's
//	                           connection on the node run <run>
//
// A persistent session's live will lives with the session's records
// and moves with them: whichever node takes the session (a claim, an
// adoption after cluster.adopt_after, the node's own restart) imports it
// as a pending will whose delay ran from the moment the dead node was
// last heard from; it fires there, once, unless the client resumes the
// session first, as on one node. A clean session's will has no session
// to go with: the session ended with the connection, so the will is due
// at once. A survivor adopting the dead node removes each such record
// with a compare-and-set (only one node's succeeds) and publishes the
// will; the node's own next run does the same for what is left; and the
// node itself, if it was only cut off, does the same when the
// connection ends (endCleanWill).

// willBroker is what the wills of dead nodes' clean sessions need of the
// broker: *broker.Server.
type willBroker interface {
	PublishWill(w *broker.StoredWill)
}

var _ willBroker = (*broker.Server)(nil)
var _ broker.LiveWillCluster = (*Node)(nil)

// LiveWills implements broker.LiveWillCluster: the wills of open
// connections are kept once the broker commits to the cluster.
func (n *Node) LiveWills() bool { return n.persistence() != nil }

// cleanWillSubject is the subject of the live will of a clean session's
// connection to the node run origin.
func cleanWillSubject(id, origin string) string {
	return sessSubject(id, "w."+keyOf(origin))
}

// cleanWillChange writes or removes the live will of a clean session's
// connection (the broker's ChangePutWill or ChangeDeleteWill with
// Will.Clean); it reports whether ch was one. The write goes on the
// record's lane, not into the commit c (CONNACK does not wait for it).
// While the session store is not in use (no quorum since the node
// started) nothing is written: the connection is accepted as before, and
// its will is lost if the node dies with it.
func (p *persistence) cleanWillChange(c *commit, ch *broker.Change) bool {
	if ch.Will == nil || !ch.Will.Clean || ch.Kind != broker.ChangePutWill && ch.Kind != broker.ChangeDeleteWill {
		return false
	}
	n := p.n
	subj := cleanWillSubject(ch.Will.ClientID, n.origin)
	if ch.Kind == broker.ChangeDeleteWill {
		// Owed (Publish set) or discarded; decided on the lane, after
		// the write of the record.
		n.cleanWillOp(subj, ch.Will.ClientID, cleanOp{publish: ch.Will.Publish})
		return true
	}
	if len(subj) > maxSubject {
		return true // too long a client ID for a subject: not kept
	}
	select {
	case <-n.sess.ready:
	default:
		return true
	}
	data, err := encodeWillOf(ch.Will, n.cfg.Node, n.origin)
	if err != nil {
		c.fail(err)
		return true
	}
	n.cleanWillOp(subj, ch.Will.ClientID, cleanOp{data: data})
	return true
}

// The record of a clean session's live will decides who publishes the
// will: whoever removes it. A survivor adopting this node (taken for
// dead while it was only cut off from the others) removes it with a
// compare-and-set on its last sequence and publishes the will
// (adoptCleanWills); this node, when the connection ends with the will
// owed, removes it with a compare-and-set on the sequence of its own
// write and publishes the will only if that succeeds. So a will goes
// once cluster-wide, whichever side of a cut its connection ends on.
//
// The writes and removals of one record (one client ID on this run of
// the node) are made in order on its lane, one goroutine at a time, so
// that a connection's removal is decided against its own write and a
// later connection's write never overtakes it. Without a quorum the
// decision waits (the will is held) until the session store answers or
// the node closes; the record stays then, and whoever adopts the node,
// or its own next run, publishes the will instead. A will's connection
// ends once, so the wills held are bounded by the connections.

// cleanOp is one change of a clean session's will record: a write of
// data, or its removal with the will owed (publish set) or discarded.
type cleanOp struct {
	data    []byte
	publish func()
}

// cleanLane orders the changes of one record. Its fields are guarded by
// cleanWills.mu; ops run on one goroutine at a time.
type cleanLane struct {
	subj, id string
	ops      []cleanOp
	running  bool
	// seq is the sequence of this node's write of the record (0: none
	// there); unsure: a write failed, so whether the record is there is
	// not known.
	seq    uint64
	unsure bool
	// discarded is the seq whose will checkCleanWills found published
	// by another node and discarded (0: none): a later check passes it.
	discarded uint64
}

// cleanWills holds the lanes of a node's clean sessions' will records.
type cleanWills struct {
	mu    sync.Mutex
	lanes map[string]*cleanLane // by subject
	busy  int                   // ops queued or running
	idle  chan struct{}         // closed once busy is 0; nil: never busy
	// held counts the wills waiting for the session store; elsewhere
	// the wills of this node's connections it found published by
	// another node (for the tests).
	held      atomic.Int64
	elsewhere atomic.Uint64
}

// cleanWillOp queues op on the lane of subj, starting the lane's
// goroutine if needed. A node that closes drops it: the record stays
// for the node's next run or the node that adopts it.
func (n *Node) cleanWillOp(subj, id string, op cleanOp) {
	cw := &n.cw
	cw.mu.Lock()
	defer cw.mu.Unlock()
	if n.ctx.Err() != nil {
		return
	}
	if cw.lanes == nil {
		cw.lanes = make(map[string]*cleanLane)
	}
	l := cw.lanes[subj]
	if l == nil {
		l = &cleanLane{subj: subj, id: id}
		cw.lanes[subj] = l
	}
	l.ops = append(l.ops, op)
	if cw.busy == 0 {
		cw.idle = make(chan struct{})
	}
	cw.busy++
	if !l.running {
		l.running = true
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.runLane(l) }()
	}
}

// runLane runs the ops of l in order until none is left.
func (n *Node) runLane(l *cleanLane) {
	cw := &n.cw
	for {
		cw.mu.Lock()
		if len(l.ops) == 0 || n.ctx.Err() != nil {
			cw.done(len(l.ops))
			l.ops, l.running = nil, false
			if l.seq == 0 && !l.unsure {
				delete(cw.lanes, l.subj)
			}
			cw.mu.Unlock()
			return
		}
		op := l.ops[0]
		l.ops = l.ops[1:]
		cw.mu.Unlock()
		switch {
		case op.data != nil:
			n.writeCleanWill(l, op.data)
		case op.publish != nil:
			n.endCleanWill(l, op.publish)
		default:
			n.discardCleanWill(l)
		}
		cw.mu.Lock()
		cw.done(1)
		cw.mu.Unlock()
	}
}

// done counts k ops finished; under mu.
func (cw *cleanWills) done(k int) {
	if k == 0 {
		return
	}
	cw.busy -= k
	if cw.busy == 0 {
		close(cw.idle)
	}
}

// flushCleanWills waits until the lanes are idle or ctx ends (the
// discards of a clean shutdown written before the node closes).
func (n *Node) flushCleanWills(ctx context.Context) bool {
	n.cw.mu.Lock()
	idle := n.cw.idle
	busy := n.cw.busy
	n.cw.mu.Unlock()
	if busy == 0 {
		return true
	}
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

// setLane records what this node knows of l's record.
func (n *Node) setLane(l *cleanLane, seq uint64, unsure bool) {
	n.cw.mu.Lock()
	l.seq, l.unsure = seq, unsure
	n.cw.mu.Unlock()
}

// writeCleanRecord publishes m to the sessions stream, trying again
// within the commit timeout while no leader answers; it returns the
// record's sequence.
func (n *Node) writeCleanRecord(m *nats.Msg) (uint64, error) {
	deadline := time.Now().Add(n.commitTimeout())
	for {
		ctx, cancel := context.WithTimeout(n.ctx, 3*time.Second)
		ack, err := n.sess.js.PublishMsg(ctx, m)
		cancel()
		if err == nil {
			return ack.Sequence, nil
		}
		if n.ctx.Err() != nil || !retryable(err) || time.Now().After(deadline) {
			return 0, err
		}
		select {
		case <-n.ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (n *Node) writeCleanWill(l *cleanLane, data []byte) {
	seq, err := n.writeCleanRecord(n.record(l.subj, data))
	if err != nil {
		if n.ctx.Err() == nil {
			n.dstats.streamErrors.Add(1)
			n.log.Warn("cluster: the will of a clean session's connection not confirmed by the cluster; it is lost if this node dies with the connection, unless the write arrived late",
				"client", clip(l.id), "err", err)
		}
		n.setLane(l, 0, true) // written late, maybe
		return
	}
	n.setLane(l, seq, false)
}

// discardCleanWill removes l's record: its connection ended without its
// will (DISCONNECT 0x00, a clean shutdown, or another node published
// it).
func (n *Node) discardCleanWill(l *cleanLane) {
	n.cw.mu.Lock()
	written := l.seq != 0 || l.unsure
	n.cw.mu.Unlock()
	if !written {
		return
	}
	if _, err := n.writeCleanRecord(n.tombstone(l.subj)); err != nil && n.ctx.Err() == nil {
		n.dstats.streamErrors.Add(1)
		n.log.Warn("cluster: the discarded will of a clean session's connection not removed from the cluster",
			"client", clip(l.id), "err", err)
	}
	n.setLane(l, 0, false)
}

// endCleanWill decides whether this node publishes the owed will of l's
// connection: yes when no record of it was written (the session store
// not yet in use, or too long a client ID), or when this node's
// compare-and-set removal of its record succeeds; no when the record
// was removed by another node, which published the will. While the
// session store does not answer (no quorum on this side of a cut) the
// will is held and the removal tried again every second; a node that
// closes meanwhile leaves the record to its next run or its adopter.
func (n *Node) endCleanWill(l *cleanLane, publish func()) {
	held := false
	defer func() {
		if held {
			n.cw.held.Add(-1)
		}
	}()
	for {
		n.cw.mu.Lock()
		seq, unsure := l.seq, l.unsure
		n.cw.mu.Unlock()
		if seq == 0 && !unsure {
			publish() // no record: nobody else can have it
			return
		}
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		ok, reason, err := n.removeOwnCleanWill(ctx, l.subj, seq)
		cancel()
		if err == nil {
			n.setLane(l, 0, false)
			if ok {
				publish()
			}
			switch {
			case !ok:
				n.cw.elsewhere.Add(1)
				n.log.Info("cluster: the will of a clean session's connection not published here", "client", clip(l.id), "reason", reason)
			case held:
				n.log.Info("cluster: a held will of a clean session's connection published", "client", clip(l.id), "reason", reason)
			}
			return
		}
		if n.ctx.Err() != nil {
			n.log.Info("cluster: closing with the will of a clean session's connection held; its record stays for whoever takes this node's sessions",
				"client", clip(l.id))
			return
		}
		if !held {
			held = true
			n.cw.held.Add(1)
			n.log.Warn("cluster: the will of a clean session's connection held until the session store answers (another node may have taken this node for dead and published it)",
				"client", clip(l.id), "err", err)
		}
		select {
		case <-n.ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// removeOwnCleanWill removes this node's record subj of sequence seq (0:
// the write's outcome is unknown) and tells whether this node publishes
// the will, and why; err: the session store did not answer.
func (n *Node) removeOwnCleanWill(ctx context.Context, subj string, seq uint64) (bool, string, error) {
	if seq == 0 {
		r, err := n.getRecord(ctx, subj)
		switch {
		case err != nil:
			return false, "", err
		case r == nil || len(r.data) == 0 && r.origin == n.origin:
			// A node that published the will would have left its
			// empty record for a day (adoptedWillTTL).
			return true, "its record's write failed and the record is not there", nil
		case len(r.data) == 0:
			return false, "its record was removed by node run " + r.origin + ", which published the will", nil
		}
		seq = r.seq
	}
	err := n.removeRecord(ctx, subj, seq)
	if err == nil {
		return true, "this node removed its record", nil
	}
	if !errors.Is(err, errConflict) {
		return false, "", err
	}
	// Changed since this node wrote it: removed by another node, or by
	// this node's own removal whose answer was lost (a retry), or
	// written again by this node (a write whose answer was lost, applied
	// after the one answered).
	r, err := n.getRecord(ctx, subj)
	switch {
	case err != nil:
		return false, "", err
	case r == nil:
		// A node that published the will would have left its empty
		// record for a day (adoptedWillTTL); this node's own removal
		// leaves one that expires at once.
		return true, "this node removed its record (an answer lost; the record expired)", nil
	case len(r.data) == 0 && r.origin == n.origin:
		return true, "this node removed its record (an answer lost)", nil
	case len(r.data) == 0:
		return false, "its record was removed by node run " + r.origin + ", which published the will", nil
	}
	// Still there: nobody removed it, so nobody published the will (a
	// node that does removes the record first). Only this node run
	// writes it: removed at the sequence found.
	if err := n.removeRecord(ctx, subj, r.seq); err != nil {
		return false, "", err // decided at the next attempt
	}
	return true, "this node removed its record (written again)", nil
}

// checkCleanWills discards the wills of this node's open clean sessions'
// connections whose records another node removed (and published) while
// this node was cut off: their connections' ends here publish nothing.
// It returns how many it discarded. The end of such a connection would
// find the same (endCleanWill); this tells the broker early.
func (n *Node) checkCleanWills() (int, error) {
	b, ok := n.b.(interface{ DiscardConnectionWill(clientID string) })
	if !ok {
		return 0, nil
	}
	type live struct {
		l   *cleanLane
		seq uint64
	}
	var lanes []live
	n.cw.mu.Lock()
	for _, l := range n.cw.lanes {
		if l.seq != 0 && !l.running && l.discarded != l.seq {
			lanes = append(lanes, live{l, l.seq})
		}
	}
	n.cw.mu.Unlock()
	if len(lanes) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(n.ctx, 2*time.Minute)
	defer cancel()
	// The records of these connections, in parallel.
	subjects := make([]string, len(lanes))
	for i, lv := range lanes {
		subjects[i] = lv.l.subj
	}
	records, err := n.getRecords(ctx, subjects)
	if err != nil {
		n.log.Warn("cluster: the wills of this node's clean sessions not checked against the others' records; trying again, their ends decide meanwhile", "err", err)
		return 0, err
	}
	there := make(map[string]storedRecord, len(records))
	for _, r := range records {
		there[r.subject] = r
	}
	gone := 0
	for _, lv := range lanes {
		if r, ok := there[lv.l.subj]; ok && r.seq == lv.seq && len(r.data) > 0 {
			continue
		}
		n.cw.mu.Lock()
		same := lv.l.seq == lv.seq && !lv.l.running && lv.l.discarded != lv.seq
		if same {
			lv.l.discarded = lv.seq
		}
		n.cw.mu.Unlock()
		if !same {
			continue // its connection ended or was replaced meanwhile
		}
		b.DiscardConnectionWill(lv.l.id)
		n.cw.elsewhere.Add(1)
		gone++
		by := "another node"
		if r, ok := there[lv.l.subj]; ok && r.origin != "" {
			by = r.origin
		}
		n.log.Info("cluster: the will of a clean session's open connection discarded: another node published it while this node was cut off",
			"client", clip(lv.l.id), "by", by)
	}
	return gone, nil
}

// willDelayLeft is what remains of a live will's delay when the node
// named node, which held its connection, is gone: the delay runs from
// when it was last heard from. For this node's previous run, or a node
// never heard from, it runs from now.
func (n *Node) willDelayLeft(node string, delay time.Duration) time.Duration {
	if node == n.cfg.Node {
		return delay
	}
	pb, ok := n.beats.snapshot()[node]
	if !ok || pb.seen.IsZero() {
		return delay
	}
	return max(0, delay-n.now().Sub(pb.seen))
}

// adoptCleanWills publishes the live wills of clean sessions whose
// connections were on the node named name (a node gone, or this node's
// previous run): each record is removed with a compare-and-set first, so
// that of several nodes doing this at once exactly one publishes it. It
// returns how many it published.
func (n *Node) adoptCleanWills(ctx context.Context, name string) (int, error) {
	b, ok := n.b.(willBroker)
	if !ok {
		return 0, nil
	}
	records, err := n.listSubjects(ctx, n.sess.stream, sessPrefix+"*.w.*")
	if err != nil {
		return 0, err
	}
	count := 0
	for _, r := range records {
		if len(r.data) == 0 {
			continue
		}
		id, suffix, err := clientOfSubject(r.subject)
		if err != nil || !strings.HasPrefix(suffix, "w.") {
			continue
		}
		w, wr, err := decodeWillRecord(r.data, id)
		if err != nil {
			n.stats.decodeErrors.Add(1)
			n.log.Warn("cluster: malformed will record ignored", "client", clip(id), "err", err)
			continue
		}
		if !wr.Live || wr.Node != name || wr.Home == n.origin {
			continue
		}
		if mine, err := n.removeLiveWill(ctx, r); err != nil {
			return count, err
		} else if !mine {
			continue // another node took it, or its connection ended
		}
		// Removed first: a node that dies in the instant before it
		// publishes loses the will; publishing first would let two
		// nodes publish it.
		b.PublishWill(w)
		count++
	}
	if count > 0 {
		n.adopt.wills.Add(uint64(count))
		n.log.Info("cluster: wills of a node gone's connections published", "node", name, "wills", count)
	}
	return count, nil
}

// removeLiveWill removes the live will record r of a node gone with a
// compare-and-set and tells whether this node's removal is the one that
// counts (it publishes the will then). Each attempt is given
// requestAttempt and tried again while unanswered; an attempt refused
// after one whose answer was lost finds the record emptied by this node
// run, which is this node's removal.
func (n *Node) removeLiveWill(ctx context.Context, r storedRecord) (bool, error) {
	lost := false // an earlier attempt went unanswered
	err := n.retryRequest(ctx, func(ctx context.Context) error {
		err := n.removeRecordMarked(ctx, r.subject, r.seq, adoptedWillTTL)
		if err != nil && unreachable(err) {
			lost = true
		}
		return err
	})
	switch {
	case err == nil:
		return true, nil
	case !errors.Is(err, errConflict):
		return false, err
	case !lost:
		return false, nil
	}
	var cur *storedRecord
	if err := n.retryRequest(ctx, func(ctx context.Context) error {
		var err error
		cur, err = n.getRecord(ctx, r.subject)
		return err
	}); err != nil {
		return false, err
	}
	return cur != nil && len(cur.data) == 0 && cur.origin == n.origin, nil
}

// adoptedWillTTL is how long the emptied record of a will a node
// published for another node's connection stays: the node it took for
// dead, if it was only cut off, finds it there when the cut heals and
// does not publish the will again even when the write of the record was
// never confirmed to it (endCleanWill).
const adoptedWillTTL = "24h"

// removeRecord empties the record subj if its last sequence is still
// expect; errConflict otherwise.
func (n *Node) removeRecord(ctx context.Context, subj string, expect uint64) error {
	return n.removeRecordMarked(ctx, subj, expect, tombstoneTTL)
}

// removeRecordMarked is removeRecord leaving an empty record that stays
// for ttl. A refusal while another write of subj is being agreed on
// (inProcess) is not errConflict: that write may still fail.
func (n *Node) removeRecordMarked(ctx context.Context, subj string, expect uint64, ttl string) error {
	m := n.tombstone(subj)
	m.Header.Set(hdrTTL, ttl)
	_, err := n.sess.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(expect))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return errConflict
	}
	return err
}
