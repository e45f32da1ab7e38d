package cluster

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// Adoption of a dead node's sessions (docs/cluster.md, "Sessions"). A
// persistent session lives on its home node; when that node dies its
// session waits in moat_sessions until its client connects elsewhere or
// the node comes back, and with it its delayed will and its expiry. Once
// a node has been down (or stopped) for Config.AdoptAfter, the surviving
// nodes adopt its sessions without their clients: each one takes the
// home of each session with the same compare-and-set on the session
// record that a client's claim uses (take), so exactly one node adopts
// each session whichever nodes try, and imports it into its broker,
// which fires a will that is due, arms one that is not, and runs the
// expiry. The durable messages the session missed since the dead node's
// acknowledgement floor are replayed into it, as for a claim; later ones
// reach it through the adopter's own reading of the stream. A client
// connecting later claims the session from its adopter (Session Present
// 1). The dead node, when it comes back, imports only the sessions still
// naming it (importHomeSessions): the adopted ones name the adopter.
//
// The dead node's client-ID claims are removed with the adoption: it
// holds no connection, and nothing else would remove them.

// defaultAdoptAfter is Config.AdoptAfter's default: long enough for a
// node's restart (an upgrade) not to move its sessions, short enough
// for wills and expiry not to wait for a node that is not coming back.
const defaultAdoptAfter = time.Minute

// adoptState is what a node remembers of the adoptions it made.
type adoptState struct {
	mu sync.Mutex
	// done holds, per node name, when that node was last heard from as
	// this node adopted its sessions (zero: never heard from): the node
	// is looked at again only once it has been heard from since.
	done map[string]time.Time
	// removed holds the nodes taken out of the cluster for good
	// (RemoveNode): their sessions are adopted at once, and they no
	// longer count as missing.
	removed map[string]bool
	// start is n.now() when the node started: the grace period of a
	// JetStream peer never heard from runs from it.
	start time.Time
	// back is n.now() when this node last came back from being cut off
	// from most of the cluster (routedToMajority) for at least
	// hbMissedLimit heartbeat intervals (zero: it never was). Cut off,
	// it heard no heartbeats: the other nodes' silence counts from then
	// only. Otherwise the minority side of a partition longer than the
	// grace period, whose routes heal one after the other, would adopt
	// the sessions of a live node whose route is not back yet (adoptDue
	// passes over only the nodes it has a route to), and publish the
	// wills of its clients' open connections.
	back time.Time
	// sessions counts the sessions this node adopted; wills the clean
	// sessions' wills of nodes gone it published (wills.go).
	sessions atomic.Uint64
	wills    atomic.Uint64
	// checks counts the checks of this node's sessions (checkHomes).
	checks atomic.Uint64
	// beforeCheck, in tests, runs when this node is back in the cluster,
	// before it checks its sessions (reconcileHomes).
	beforeCheck atomic.Pointer[func()]

	// notices are the runs whose sessions this node adopted, the most
	// recent last (at most maxNotices), told in its heartbeats; heard
	// holds, per other node's run, the K of the last notice of this
	// run heard from it. After a notice heard or a return, adoptLoop
	// owes checks of this node's sessions (oweChecks): rechecks more,
	// and one at each tick until recheckUntil (UnixNano).
	notices      []adoptNotice
	heard        map[string]uint64
	rechecks     atomic.Int32
	recheckUntil atomic.Int64

	// running holds one token while an adoption runs (adoptNode): one
	// at a time on a node. Two at once (the adoption loop's and a
	// removal's) both listed a session still the gone node's; the one
	// that lost its compare-and-set read the record the other had just
	// written, naming this node, took it for a write of its own whose
	// answer was lost, and imported the session a second time. Made
	// at the first use (adoptTurn).
	running chan struct{}
}

// After a node hears that another node adopted its sessions, or comes
// back from a cut, it checks them homeChecks times (at once, then at
// each of the next heartbeat ticks), and at every tick for homeCheckSpan.
// One check is not enough because the records are read from the leader
// of moat_sessions, and a replica that led the stream before the cut
// may not have heard yet that it was replaced: until it does (within
// about a second, NATS's Raft heartbeat, once it reaches the new
// majority), it answers the read from its own copy, which lacks the
// adopter's records. homeCheckSpan is in real time, as that second is.
const (
	homeChecks    = 3
	homeCheckSpan = 5 * time.Second
)

// oweChecks asks adoptLoop for the checks of this node's sessions.
func (n *Node) oweChecks() {
	n.adopt.rechecks.Store(homeChecks)
	n.adopt.recheckUntil.Store(time.Now().Add(homeCheckSpan).UnixNano())
}

// checksOwed tells whether adoptLoop owes a check of this node's
// sessions.
func (n *Node) checksOwed() bool {
	return n.adopt.rechecks.Load() > 0 || time.Now().UnixNano() < n.adopt.recheckUntil.Load()
}

// noteAdopted adds a notice for the run origin, whose sessions this
// node is about to adopt (told before: a notice of an adoption that
// fails costs that run a check of its sessions, nothing more).
func (n *Node) noteAdopted(origin string) {
	n.adopt.mu.Lock()
	defer n.adopt.mu.Unlock()
	k := uint64(1)
	if i := slices.IndexFunc(n.adopt.notices, func(a adoptNotice) bool { return a.Origin == origin }); i >= 0 {
		k = n.adopt.notices[i].K + 1
		n.adopt.notices = slices.Delete(n.adopt.notices, i, i+1)
	}
	n.adopt.notices = append(n.adopt.notices, adoptNotice{Origin: origin, K: k})
	if len(n.adopt.notices) > maxNotices {
		n.adopt.notices = slices.Delete(n.adopt.notices, 0, len(n.adopt.notices)-maxNotices)
	}
}

// adoptNotices returns the notices for a heartbeat: the most recent
// first, as many as fit in maxNoticeBytes.
func (n *Node) adoptNotices() []adoptNotice {
	n.adopt.mu.Lock()
	defer n.adopt.mu.Unlock()
	var out []adoptNotice
	size := 0
	for i := len(n.adopt.notices) - 1; i >= 0; i-- {
		a := n.adopt.notices[i]
		if size += len(a.Origin) + 32; size > maxNoticeBytes {
			break
		}
		out = append(out, a)
	}
	return out
}

// heardNotices looks in another node's heartbeat h for a notice that it
// adopted this run's sessions, not heard before: this node was taken for
// dead (a cut it may never have seen: routes to the others and a
// JetStream quorum all along, while the adopter heard nothing of it),
// and checks its sessions (adoptLoop).
func (n *Node) heardNotices(h heartbeat) {
	i := slices.IndexFunc(h.Adopted, func(a adoptNotice) bool { return a.Origin == n.origin })
	if i < 0 {
		return
	}
	k := h.Adopted[i].K
	n.adopt.mu.Lock()
	if _, known := n.adopt.heard[h.Origin]; n.adopt.heard == nil || !known && len(n.adopt.heard) >= maxHBNodes {
		// One entry per run of another node that sent a notice: a
		// peer's restarts, or a peer making up runs, must not grow it
		// without bound. Forgotten, a notice heard again is checked
		// again (once more, harmless).
		n.adopt.heard = make(map[string]uint64)
	}
	fresh := n.adopt.heard[h.Origin] < k
	if fresh {
		n.adopt.heard[h.Origin] = k
	}
	n.adopt.mu.Unlock()
	if fresh {
		n.log.Warn("cluster: another node adopted this node's sessions, having taken it for dead; checking them", "node", clip(h.Node))
		n.oweChecks()
	}
}

// now is the node's clock for judging other nodes' silence.
func (n *Node) now() time.Time {
	if n.cfg.Now != nil {
		return n.cfg.Now()
	}
	return time.Now()
}

func (n *Node) adoptAfter() time.Duration {
	if n.cfg.AdoptAfter == 0 {
		return defaultAdoptAfter
	}
	return n.cfg.AdoptAfter
}

// adoptLoop looks, every heartbeat interval once the sessions are in
// use, for nodes gone long enough to adopt their sessions.
func (n *Node) adoptLoop() {
	select {
	case <-n.ctx.Done():
		return
	case <-n.sess.ready:
	}
	if sub, err := n.serveRemovals(); err != nil {
		n.log.Error("cluster: removals of nodes by other nodes are not heard", "err", err)
	} else {
		defer func() { _ = sub.Unsubscribe() }()
	}
	tick := time.NewTicker(n.hbInterval())
	defer tick.Stop()
	var quorumLost time.Time // since when this node has had no JetStream quorum (zero: it has one)
	var cutOff time.Time     // since when this node has had routes to no majority of the cluster (zero: it has)
	for {
		if n.srv != nil {
			now, limit := n.now(), hbMissedLimit*n.hbInterval()
			quorum, routed := n.hasQuorum(), n.routedToMajority()
			if !routed && cutOff.IsZero() {
				// The majority may adopt this node's sessions
				// meanwhile: the records of the durable stream this
				// node reads when it is back are routed only once it
				// has checked them (reconcileHomes), or it would write
				// into sessions that are the adopter's now.
				cutOff = now
				n.pauseRouting()
				n.log.Info("cluster: cut off from most of the cluster; the durable stream is routed again once this node's sessions are checked on its return")
			}
			if !quorum && quorumLost.IsZero() {
				quorumLost = now
			}
			if quorum && routed && (!quorumLost.IsZero() || !cutOff.IsZero()) {
				// Back from a loss of quorum, or from being cut off,
				// long enough for the other side to have adopted this
				// node's sessions.
				lost := !quorumLost.IsZero() && now.Sub(quorumLost) >= limit
				cut := !cutOff.IsZero() && now.Sub(cutOff) >= limit
				if cut {
					// The other nodes' heartbeats did not reach this
					// one meanwhile: their silence counts from now.
					n.adopt.mu.Lock()
					n.adopt.back = now
					n.adopt.mu.Unlock()
				}
				if lost || cut {
					n.oweChecks()
					n.owedCheck()
				}
				if !cutOff.IsZero() {
					n.log.Info("cluster: back in the cluster; the durable stream is routed again")
				}
				quorumLost, cutOff = time.Time{}, time.Time{}
				n.resumeRouting()
			}
			if quorum && routed && quorumLost.IsZero() && cutOff.IsZero() && n.checksOwed() {
				// Another node adopted this node's sessions while this
				// node saw no cut, or the checks of a return are not
				// all done: checked as on a return, the durable stream
				// held meanwhile.
				n.pauseRouting()
				n.owedCheck()
				n.resumeRouting()
			}
		}
		n.adoptDue()
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// owedCheck makes one of the checks adoptLoop owes (oweChecks): one
// fewer is owed once it could read the records, as many as before when
// it could not (a stream without a leader): tried again on the next
// tick.
func (n *Node) owedCheck() {
	if n.checkHomes() {
		if n.adopt.rechecks.Add(-1) < 0 {
			n.adopt.rechecks.Store(0)
		}
	}
}

// checkHomes gives up the sessions of this node another node adopted
// (reconcileHomes) and the wills of its clean sessions' connections the
// others published (checkCleanWills). It tells whether both could read
// the records they need.
func (n *Node) checkHomes() bool {
	if f := n.adopt.beforeCheck.Load(); f != nil {
		(*f)()
	}
	n.adopt.checks.Add(1)
	_, errH := n.reconcileHomes()
	_, errW := n.checkCleanWills()
	return errH == nil && errW == nil
}

// goneNode is a node whose sessions are due for adoption.
type goneNode struct {
	name string
	seen time.Time // last heard from (zero: never since this node started)
}

// dueForAdoption lists the other nodes down or stopped for at least the
// grace period at now, and those removed from the cluster, that this
// node has not adopted since it last heard from them. A node's silence
// counts from this node's return from a loss of quorum at the earliest
// (adoptState.back).
func (n *Node) dueForAdoption(now time.Time, metaPeers []string) []goneNode {
	after := n.adoptAfter()
	if after < 0 {
		return nil
	}
	beats := n.beats.snapshot()
	n.adopt.mu.Lock()
	defer n.adopt.mu.Unlock()
	var out []goneNode
	add := func(name string, seen time.Time) {
		if at, ok := n.adopt.done[name]; ok && at.Equal(seen) {
			return
		}
		out = append(out, goneNode{name, seen})
	}
	for name, pb := range beats {
		downSince := pb.seen
		if !pb.hb.Leaving {
			downSince = pb.seen.Add(hbMissedLimit * time.Duration(pb.hb.IntervalMS) * time.Millisecond)
		}
		if downSince.Before(n.adopt.back) {
			downSince = n.adopt.back
		}
		if n.adopt.removed[name] || now.Sub(downSince) >= after {
			add(name, pb.seen)
		}
	}
	// JetStream peers never heard from since this node started: down
	// since then.
	neverSince := n.adopt.start.Add(hbMissedLimit * n.hbInterval())
	if neverSince.Before(n.adopt.back) {
		neverSince = n.adopt.back
	}
	for _, p := range metaPeers {
		if _, ok := beats[p]; ok || p == n.cfg.Node {
			continue
		}
		if n.adopt.removed[p] || now.Sub(neverSince) >= after {
			add(p, time.Time{})
		}
	}
	for p := range n.adopt.removed {
		if _, ok := beats[p]; !ok && !slices.Contains(metaPeers, p) {
			add(p, time.Time{})
		}
	}
	slices.SortFunc(out, func(a, b goneNode) int { return strings.Compare(a.name, b.name) })
	return out
}

// adoptDue adopts the sessions of the nodes due for adoption and returns
// how many it adopted. A node with a route to this one is alive (its
// heartbeats are late, not missing) and is left alone; so is everything
// while this node's side has no JetStream quorum: the minority side of
// a partition adopts nothing (it could write nothing).
func (n *Node) adoptDue() int {
	var metaPeers []string
	if n.srv != nil {
		jz, err := n.srv.Jsz(&server.JSzOptions{})
		if err != nil || jz.Meta == nil || jz.Meta.Leader == "" {
			return 0
		}
		for _, r := range jz.Meta.Replicas {
			if name, ok := peerName(r); ok {
				metaPeers = append(metaPeers, name)
			}
		}
	}
	if n.adoptBusy() {
		// A removal's adoption is under way (adoptTurn): looked at
		// again at the next call rather than waited for, which would
		// hold up the adoption loop's checks for up to two minutes.
		return 0
	}
	total := 0
	for _, g := range n.dueForAdoption(n.now(), metaPeers) {
		if n.ctx.Err() != nil {
			return total
		}
		if n.srv != nil && n.peerConnected(g.name) {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, 2*time.Minute)
		count, _, err := n.adoptNode(ctx, g.name)
		cancel()
		total += count
		if err != nil {
			n.log.Warn("cluster: sessions of a node gone not adopted; trying again", "node", g.name, "err", err)
			continue
		}
		n.adopt.mu.Lock()
		if n.adopt.done == nil {
			n.adopt.done = make(map[string]time.Time)
		}
		n.adopt.done[g.name] = g.seen
		n.adopt.mu.Unlock()
	}
	return total
}

// adoptParallel is how many sessions adoptNode adopts at once.
const adoptParallel = 8

// inParallel calls f for each of items, at most workers at once, and
// returns when all calls have.
func inParallel[T any](items []T, workers int, f func(T)) {
	work := make(chan T)
	var wg sync.WaitGroup
	for range min(workers, len(items)) {
		wg.Go(func() {
			for item := range work {
				f(item)
			}
		})
	}
	for _, item := range items {
		work <- item
	}
	close(work)
	wg.Wait()
}

// adoptNode makes this node the home of every persistent session whose
// home is the node named name, and removes that node's client-ID
// claims. It returns how many sessions this node adopted (another node
// adopting some of them at the same time makes this node's take of
// those fail, which is not an error) and how many claims it removed.
func (n *Node) adoptNode(ctx context.Context, name string) (adopted, claims int, err error) {
	if name == n.cfg.Node {
		return 0, 0, nil // this node's previous run: importHomeSessions
	}
	if n.persistence() == nil {
		return 0, 0, nil // no sessions kept in the cluster (no broker attached)
	}
	done, err := n.adoptTurn(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer done()
	if err := n.awaitSessions(ctx); err != nil {
		return 0, 0, err
	}
	records, err := n.listSubjects(ctx, n.sess.stream, sessPrefix+"*.s")
	if err != nil {
		return 0, 0, err
	}
	type orphan struct {
		id  string
		rec *sessionRecord
		seq uint64
	}
	var orphans []orphan
	for _, r := range records {
		if len(r.data) == 0 {
			continue
		}
		rec, err := decodeSession(r.data)
		if err != nil || rec.Node != name || rec.Home == n.origin {
			continue
		}
		if id, _, err := clientOfSubject(r.subject); err == nil {
			orphans = append(orphans, orphan{id, rec, r.seq})
		}
	}
	if len(orphans) > 0 {
		// Told in this node's heartbeats, in case the run is alive
		// and only cut off from this node.
		runs := map[string]bool{}
		for _, o := range orphans {
			if o.rec.Home != "" && !runs[o.rec.Home] {
				runs[o.rec.Home] = true
				n.noteAdopted(o.rec.Home)
			}
		}
		pos, err := n.ackFloorOf(ctx, name)
		if err != nil {
			return 0, 0, err
		}
		// Several sessions at once: each waits mostly for the stream's
		// answers (its record's compare-and-set, its records, its
		// replay), and one after the other a node gone with thousands
		// of sessions kept them on no node for minutes.
		var left error // a session neither taken here nor by another node
		var mu sync.Mutex
		inParallel(orphans, adoptParallel, func(o orphan) {
			ok, err := n.adoptSession(ctx, name, o.id, o.rec, o.seq, pos)
			mu.Lock()
			defer mu.Unlock()
			if ok {
				adopted++
			} else if err != nil {
				left = err
			}
		})
		n.adopt.sessions.Add(uint64(adopted))
		if adopted > 0 {
			// Told again now that it is done: a run that heard the
			// first notice while the adoption was under way checked
			// its sessions before all were taken.
			for run := range runs {
				n.noteAdopted(run)
			}
		}
		if left != nil {
			return adopted, 0, left
		}
	}
	// The wills of its clean sessions' connections, which ended with it.
	if _, err := n.adoptCleanWills(ctx, name); err != nil {
		return adopted, 0, err
	}
	claims, err = n.purgeClaimsOf(ctx, name)
	if adopted > 0 || claims > 0 {
		n.log.Info("cluster: sessions of a node gone adopted", "node", name, "sessions", adopted, "of", len(orphans),
			"claims_removed", claims)
	}
	if err != nil {
		return adopted, claims, err
	}
	return adopted, claims, ctx.Err()
}

// adoptTurn waits until no other adoption runs on this node (or ctx
// ends) and returns the function that ends this one's turn.
func (n *Node) adoptTurn(ctx context.Context) (func(), error) {
	n.adopt.mu.Lock()
	if n.adopt.running == nil {
		n.adopt.running = make(chan struct{}, 1)
	}
	running := n.adopt.running
	n.adopt.mu.Unlock()
	select {
	case running <- struct{}{}:
		return func() { <-running }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// adoptBusy tells whether an adoption runs on this node now.
func (n *Node) adoptBusy() bool {
	n.adopt.mu.Lock()
	defer n.adopt.mu.Unlock()
	return len(n.adopt.running) > 0
}

// requestAttempt bounds each JetStream request of an adoption. A request
// that reaches a stream's leader as it loses its place (a node dying, an
// election, a leader stalled on a loaded machine) is never answered:
// waiting for the whole adoption's deadline would hold up the adoption
// of everything after it, wills included, for minutes.
const requestAttempt = 5 * time.Second

// retryRequest runs op with a context of at most requestAttempt, again
// after a short pause while it fails in a way a retry may cure
// (unreachable: no answer, no leader yet, JetStream unavailable; or
// inProcess), until ctx ends. It returns op's last error. op must be
// safe to repeat after an answer was lost: a compare-and-set whose first
// attempt was applied fails the second time, which the caller reads as
// such.
func (n *Node) retryRequest(ctx context.Context, op func(context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, requestAttempt)
		err := op(actx)
		cancel()
		if err == nil || !unreachable(err) && !inProcess(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// inProcess tells the refusal of a compare-and-set on a replicated
// stream while another write of the same subject is still being agreed
// on (JetStream error 10164, "wrong last sequence" without a sequence):
// not a conflict yet, since that write may still fail, or be this
// node's own earlier attempt whose answer was lost. Asked again once
// it is decided, the stream answers with the subject's sequence (10071,
// a conflict) or applies the write.
func inProcess(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// adoptSession takes the session of id, whose record rec of sequence seq
// names the node gone, and imports it. It reports whether this node
// adopted it; false with a nil error when another node did. The write
// that takes the home is given requestAttempt: one whose answer was lost
// may have taken it, so the record is read again after a failure, and a
// session whose record names this node without being held here is taken
// again from that record (the same write once more, then the import).
// An error means the session is still the gone node's (the adoption is
// tried again later), or, after the last attempt, that its record names
// this node without the session being held here: its client's next
// claim takes it then.
func (n *Node) adoptSession(ctx context.Context, name, id string, rec *sessionRecord, seq uint64, pos position) (bool, error) {
	pos = n.caughtUpTo(ctx, id, pos)
	for attempt := 1; ; attempt++ {
		tctx, cancel := context.WithTimeout(ctx, requestAttempt)
		err := n.take(tctx, id, rec, seq, false, true, pos, n.sessionRecords(id))
		cancel()
		if err == nil {
			return true, nil
		}
		if attempt == 3 || ctx.Err() != nil {
			n.log.Warn("cluster: a session of a node gone not adopted here; trying again later", "client", clip(id), "node", name, "err", err)
			return false, err
		}
		n.log.Debug("cluster: a session of a node gone not adopted here", "client", clip(id), "node", name, "err", err)
		var r *storedRecord
		if rerr := n.retryRequest(ctx, func(ctx context.Context) error {
			var err error
			r, err = n.getRecord(ctx, sessSubject(id, "s"))
			return err
		}); rerr != nil {
			return false, rerr
		}
		if r == nil || len(r.data) == 0 {
			return false, nil // ended meanwhile
		}
		cur, derr := decodeSession(r.data)
		if derr == nil && cur.Home == n.origin {
			if err := n.awaitClaimHere(ctx, id); err != nil {
				return false, err
			}
		}
		switch {
		case derr != nil:
			return false, nil
		case cur.Home == n.origin && n.holds(id):
			return false, nil // claimed here by its client meanwhile
		case cur.Home == n.origin:
			// This node's write took the home (its answer lost, or
			// the session's records not read after it): again from
			// the record as it is.
			n.log.Info("cluster: a session of a node gone whose home this node took is imported again",
				"client", clip(id), "node", name, "err", err)
		case cur.Node == name:
			// Still the gone node's: again.
		default:
			return false, nil // another node adopted it, or its client claimed it there
		}
		rec, seq = cur, r.seq
	}
}

// awaitClaimHere waits, for an adoption whose write may have taken the
// home of id's session without its answer, until no claim of its client
// is under way on this node, or this node holds the session. Such a
// claim (this adoption's take has ended) may be taking the session from
// the record the adoption wrote: one whose take is under way imports it,
// and one that waited for the adoption's take and has not begun its own
// yet is about to. Deciding before the claim is done would import the
// session a second time beside it, or make the claim lose the record's
// compare-and-set and refuse its client. A claim is marked from its
// start until its client is attached or it fails: bounded by its
// client's wait.
func (n *Node) awaitClaimHere(ctx context.Context, id string) error {
	for !n.holds(id) {
		if ch := n.takeUnderWay(id); ch != nil {
			select {
			case <-ch:
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		if !n.claimingNow(id) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// holds tells whether this node is the home of the session of id.
func (n *Node) holds(id string) bool {
	n.sess.mu.Lock()
	defer n.sess.mu.Unlock()
	_, ok := n.sess.homed[id]
	return ok
}

// ackFloorOf is the position in the durable stream up to which the node
// named name had put the messages into its sessions: its consumer's
// acknowledgement floor, from this node's copy of the consumer if its
// leader does not answer (goneFloor; an adoption right after a forced
// removal finds the leader it had on the node gone). Without a consumer
// (a node that never read the stream) nothing is replayed.
func (n *Node) ackFloorOf(ctx context.Context, name string) (position, error) {
	floor, err := n.goneFloor(ctx, name, true)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		n.log.Warn("cluster: the node gone has no position in the durable stream; nothing is replayed to its sessions", "node", name)
		return position{}, nil
	}
	if err != nil {
		return position{}, err
	}
	return position{seq: floor, replay: true}, nil
}

// routedToMajority tells whether this node has routes to enough other
// nodes to form a majority of the cluster with them (the nodes the
// cluster should have: durableState.expected).
func (n *Node) routedToMajority() bool {
	rz, err := n.srv.Routez(&server.RoutezOptions{})
	if err != nil {
		return true // not known: as before
	}
	peers := make(map[string]bool, len(rz.Routes))
	for _, r := range rz.Routes {
		if r.RemoteName != "" && r.RemoteName != n.cfg.Node {
			peers[r.RemoteName] = true
		}
	}
	return 2*(len(peers)+1) > int(n.dur.expected.Load())+1
}

// hasQuorum tells whether the embedded server sees a JetStream meta
// leader.
func (n *Node) hasQuorum() bool {
	jz, err := n.srv.Jsz(&server.JSzOptions{})
	return err == nil && jz.Meta != nil && jz.Meta.Leader != ""
}

// reconcileHomes gives up the sessions this node holds whose record
// names another home: on the minority side of a partition that lasted
// longer than the grace period, this node was down for the majority,
// which adopted its sessions meanwhile. Such a session is the adopter's
// now (the adopter's claim won the record's compare-and-set): this node
// takes its connection over (DISCONNECT 0x8E; the client reconnects and
// resumes it where it lives) and forgets it without writing anything,
// so that it neither overwrites the adopter's records nor fires its
// will a second time, nor its connection's. It returns how many sessions
// it gave up, and why it could not check them.
func (n *Node) reconcileHomes() (int, error) {
	b, ok := n.b.(sessionBroker)
	if !ok {
		return 0, nil
	}
	n.sess.mu.Lock()
	ids := make(map[string]bool, len(n.sess.homed))
	subjects := make([]string, 0, len(n.sess.homed))
	for id := range n.sess.homed {
		ids[id] = true
		subjects = append(subjects, sessSubject(id, "s"))
	}
	n.sess.mu.Unlock()
	if len(ids) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(n.ctx, 2*time.Minute)
	defer cancel()
	// Only this node's sessions' records, in parallel: listing every
	// session of the cluster one get after the other took seconds per
	// thousand sessions, with the stream's routing paused meanwhile
	// (owedCheck), and a check is made at least homeChecks times.
	records, err := n.getRecords(ctx, subjects)
	if err != nil {
		n.log.Warn("cluster: the sessions of this node not checked against the others' adoptions; trying again", "err", err)
		return 0, err
	}
	lost := 0
	for _, r := range records {
		id, _, err := clientOfSubject(r.subject)
		if err != nil || !ids[id] {
			continue
		}
		other := "" // the adopter; "": the session ended there (expired) meanwhile
		if len(r.data) > 0 {
			rec, err := decodeSession(r.data)
			if err != nil || rec.Home == n.origin {
				continue
			}
			other = rec.Node
		}
		// Forgotten first: the changes the release makes (the
		// connection's detachment) are dropped, not written over the
		// adopter's records. The connection's will went with the
		// session: the adopter published it or holds it (wills.go).
		n.unhome(id)
		b.DiscardConnectionWill(id)
		n.dur.routeMu.Lock()
		// As a release does: this node's own messages for the session
		// go into the stream until its client is back where it lives.
		n.holdGivenUp(b.SessionFilters(id))
		b.ReleaseSession(id)
		n.dur.routeMu.Unlock()
		lost++
		n.log.Warn("cluster: a session of this node was adopted by another node while this node was cut off; given up",
			"client", clip(id), "node", other)
	}
	return lost, nil
}
