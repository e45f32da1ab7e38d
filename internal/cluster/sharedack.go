package cluster

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	mqtttopic "github.com/moatmq/moat/internal/topic"
)

// At least once for the QoS 1/2 messages of shared subscriptions
// (docs/cluster.md, "Shared subscriptions").
//
// The publishing node sends such a message once on moat.q.<tokens> as a
// NATS request: NATS hands it to one node per matching queue group, as
// before, and the chosen node answers on the request's reply subject
// twice: "received" at once, naming itself, and "committed" once the
// message is in its member's session (for a session kept in the cluster:
// written to moat_sessions, through the node's Persistence; for a clean
// session: queued or sent, as on one node). The publisher's commit, and
// so its PUBACK or PUBREC, waits for a committed answer from every group
// it expected.
//
// The groups it expects come from the group directory: every node
// announces on moat.gd the groups it has members of, when it joins one
// and every dirEvery, and keeps what the others announce; besides, each
// node names its groups with its group version (shared.go,
// groupVersionUp), which the others ask for with its interest version
// (interest.go), and a node that starts asks the others for their groups
// (loadGroups). A group of the directory whose filter matches the topic
// and which has members now (a queue subscription on its own subject,
// moat.g.<queue>, somewhere) is expected. While the directory may lack a
// group whose queue subscription is on this node's server (another
// node's group version changed and was not asked for yet), the message
// is published at once and its groups are settled once the directory is
// complete (resolveRequests), with the answers that arrived meanwhile.
//
// A group that does not answer "received" within attemptWait, whose
// receiving node leaves the cluster (its routes close) before it
// answers "committed", or that answers "failed", is sent the message
// again on its own subject (NATS chooses among the nodes that have
// members then; the receiving nodes drop a copy they already have, by
// its origin and sequence number, and answer again). After a few
// attempts a member on this node, if any, takes it directly. A group that
// has no member on any node for shareLinger is over: as on one node, a
// message for a subscription that no longer exists is not delivered. A
// message still not committed for a group at the commit's deadline fails
// the commit: its publisher gets an error (PUBACK 0x80) and sends it
// again.

const (
	dirSubject   = "moat.gd"  // group announcements
	replyPrefix  = "moat.gr." // moat.gr.<node origin>.<request>
	dirEvery     = 2 * time.Second
	dirExpire    = 30 * time.Second
	maxDirGroups = 100000
	// maxDirPayload bounds one announcement, sent and received.
	maxDirPayload = 256 << 10
	// maxShareReqs bounds the messages waiting for their groups' answers;
	// beyond it a message goes to its groups at most once (counted in
	// ShareStats.Unconfirmed). Publishers are bounded by their Receive
	// Maximum, so it is reached only with very many of them.
	maxShareReqs = 1 << 16
	// attemptWait is how long a group has to answer "received".
	attemptWait = 2 * time.Second
	// committedGrace is how much longer than its commit timeout
	// (Config.CommitTimeout, see committedWait) a receiving node still in
	// the cluster has, after "received", to commit.
	committedGrace = 5 * time.Second
	// localAfter is the attempt after which a member on this node takes
	// the message directly.
	localAfter   = 3
	reqTick      = 100 * time.Millisecond
	maxAnswerLen = 1024
	recentShared = 1 << 16
)

// errSharedUndelivered fails the commit of a message a group did not
// confirm before the commit's deadline.
var errSharedUndelivered = errors.New("cluster: a shared subscription's member did not confirm the message in time")

// dirEntry is a group of the directory: seen is its last announcement,
// member the last time a node had it (a queue subscription on its own
// subject).
type dirEntry struct {
	key          shareKey
	seen, member time.Time
}

// expectation is a group a message is expected to reach; empty, when not
// zero, is the last time the group had a member (it has none now).
type expectation struct {
	key   shareKey
	empty time.Time
}

// shareAnswer is a receiving node's answer to a request.
type shareAnswer struct {
	Queue string `json:"q"`
	State string `json:"s"` // answerReceived, answerCommitted, answerFailed
	Node  string `json:"n,omitempty"`
}

const (
	answerReceived  = "r"
	answerCommitted = "c"
	answerFailed    = "f"
)

// Group states of a request.
const (
	reqSent = iota
	reqReceived
	reqLocal // a member here took it; its commit follows
	reqDone
)

// shareReq is a message waiting for its groups' answers.
type shareReq struct {
	id       uint64
	c        *commit
	data     []byte
	hdr      nats.Header // origin, sequence number, publisher
	reply    string
	topic    string
	groups   map[string]*reqGroup // queue → state
	left     int
	deadline time.Time
	created  time.Time
	// unresolved: the groups are not settled yet (resolveRequests);
	// early holds the answers received meanwhile, by queue.
	unresolved bool
	early      map[string]earlyAnswer
}

// earlyAnswer is an answer to a request whose groups were not settled.
type earlyAnswer struct{ state, node string }

// maxEarly bounds the answers kept for one unsettled request.
const maxEarly = 1024

// validQueue tells whether q names a queue group (queueName).
func validQueue(q string) bool {
	return len(q) == len("moat_")+32 && strings.HasPrefix(q, "moat_")
}

type reqGroup struct {
	key      shareKey
	state    int
	node     string    // the node that answered "received"
	due      time.Time // when the current attempt is over
	attempts int
	empty    time.Time // since when the group had no member anywhere
}

// ackState is the at-least-once side of shareState.
type ackState struct {
	// unordered holds the messages being delivered for a request
	// (*broker.Message → struct{}): their commit is reported once written
	// (persist.go), since the commits before it on this node may wait for
	// this node's or another's confirmation.
	unordered  sync.Map
	unorderedN atomic.Int32 // entries of unordered: none, no look-up

	mu      sync.Mutex
	dir     map[string]*dirEntry // queue → group
	reqs    map[uint64]*shareReq
	nextID  uint64
	lastDir time.Time
	// unresolved counts the requests of reqs whose groups are not
	// settled yet.
	unresolved int
	// confirmed counts the groups that confirmed a message of this
	// node; quiet, in tests, keeps this node from announcing its groups
	// on the directory subject (the others then learn of them with its
	// versions alone).
	confirmed atomic.Uint64
	quiet     atomic.Bool

	// The requests this node received, by origin, sequence number and
	// queue: 1 being delivered, 2 delivered (a copy sent again is
	// answered at once); at most recentShared delivered ones.
	// swallow, in tests, makes this node answer "received" and then do
	// nothing, as a node that dies before its commit; swallowed counts
	// such messages.
	swallow   atomic.Bool
	swallowed atomic.Int64

	rmu     sync.Mutex
	seen    map[string]int
	ring    []string
	ringPos int
}

// committedWait is how long a receiving node still in the cluster has,
// after "received", to commit: its commit waits for JetStream up to the
// commit timeout.
func (n *Node) committedWait() time.Duration { return n.commitTimeout() + committedGrace }

// replySubject is the reply subject of this node's request id.
func (n *Node) replySubject(id uint64) string {
	return replyPrefix + keyOf(n.origin) + "." + strconv.FormatUint(id, 10)
}

// startAcks subscribes the group directory and this node's answers, and
// starts the goroutine that sends the directory and retries requests.
func (n *Node) startAcks(sb SharedBroker) {
	a := &n.share.ack
	a.mu.Lock()
	if a.dir == nil {
		a.dir = make(map[string]*dirEntry)
	}
	a.reqs = make(map[uint64]*shareReq)
	a.mu.Unlock()
	a.rmu.Lock()
	a.seen = make(map[string]int)
	a.ring = make([]string, recentShared)
	a.rmu.Unlock()
	if _, err := n.gc.Subscribe(dirSubject, n.handleDir); err != nil {
		n.log.Error("cluster: the shared subscriptions' directory is not received; their QoS 1/2 messages go to other nodes' groups at most once", "err", err)
	}
	if _, err := n.gc.Subscribe(replyPrefix+keyOf(n.origin)+".*", n.handleAnswer); err != nil {
		n.log.Error("cluster: the shared subscriptions' answers are not received; their QoS 1/2 messages go to other nodes' groups at most once", "err", err)
	}
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.ackLoop(sb) }()
}

// ackLoop sends the directory every dirEvery and looks at the waiting
// requests every reqTick; when the Node closes, they fail.
func (n *Node) ackLoop(sb SharedBroker) {
	t := time.NewTicker(reqTick)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			n.failRequests(errClosed)
			return
		case <-t.C:
		}
		now := time.Now()
		a := &n.share.ack
		a.mu.Lock()
		announce := now.Sub(a.lastDir) >= dirEvery
		if announce {
			a.lastDir = now
			for q, e := range a.dir {
				if now.Sub(e.seen) > dirExpire {
					delete(a.dir, q)
				}
			}
		}
		a.mu.Unlock()
		if announce {
			n.announceGroups(false)
		}
		n.resolveRequests()
		n.retryRequests(sb, now)
	}
}

// announceGroups publishes this node's groups on the directory subject:
// all of them, or (fresh) those not announced yet.
func (n *Node) announceGroups(fresh bool) {
	sh := &n.share
	type ann struct {
		G string `json:"g"`
		F string `json:"f"`
	}
	var list []ann
	now := time.Now()
	sh.mu.Lock()
	for k, g := range sh.groups {
		if !g.leaving.IsZero() || (fresh && g.announced) {
			continue
		}
		g.announced = true
		list = append(list, ann{k.group, k.filter})
	}
	sh.mu.Unlock()
	a := &sh.ack
	a.mu.Lock()
	for _, e := range list {
		a.addLocked(shareKey{e.G, e.F}, now)
	}
	a.mu.Unlock()
	if a.quiet.Load() {
		return
	}
	for len(list) > 0 {
		size, i := 2, 0
		for ; i < len(list); i++ {
			size += len(list[i].G) + len(list[i].F) + 16
			if i > 0 && size > maxDirPayload {
				break
			}
		}
		data, _ := json.Marshal(list[:i])
		list = list[i:]
		if len(data) > maxDirPayload {
			continue // one filter too long for the directory
		}
		if err := n.nc.Publish(dirSubject, data); err != nil {
			n.logRated(&n.handLog, "cluster: the shared subscriptions' directory not sent", "subject", dirSubject, err)
			return
		}
	}
}

// addLocked records a group of the directory, within its bound; a.mu
// held.
func (a *ackState) addLocked(k shareKey, now time.Time) {
	q := queueName(k.group, k.filter)
	if e := a.dir[q]; e != nil {
		e.seen = now
		return
	}
	if len(a.dir) >= maxDirGroups {
		return
	}
	a.dir[q] = &dirEntry{key: k, seen: now}
}

// handleDir applies an announcement of another node (or this one's). A
// node of the cluster sends it; it is still checked and bounded.
func (n *Node) handleDir(m *nats.Msg) {
	if len(m.Data) > maxDirPayload {
		return
	}
	var list []struct {
		G string `json:"g"`
		F string `json:"f"`
	}
	if json.Unmarshal(m.Data, &list) != nil {
		n.stats.decodeErrors.Add(1)
		return
	}
	now := time.Now()
	a := &n.share.ack
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dir == nil {
		return
	}
	for _, e := range list {
		g, f, err := packet.SplitShared(packet.SharePrefix + e.G + "/" + e.F)
		if err != nil || g != e.G || f != e.F {
			n.stats.decodeErrors.Add(1)
			continue
		}
		a.addLocked(shareKey{g, f}, now)
	}
}

// expectedGroups returns the groups of the directory that topic's
// message must reach, by queue: those with members now, and those that
// had one within shareLinger (the only member of a group may be moving
// between nodes; the message waits for it to join again, see
// groupEmpty).
func (n *Node) expectedGroups(topic string) map[string]expectation {
	a := &n.share.ack
	var out map[string]expectation
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for q, e := range a.dir {
		if !mqtttopic.MatchFilter(e.key.filter, topic) {
			continue
		}
		if x, ok := n.expectLocked(q, e, now); ok {
			if out == nil {
				out = make(map[string]expectation)
			}
			out[q] = x
		}
	}
	return out
}

// expectedOf is expectedGroups for the groups of queues, which match
// topic (interestAnswer.groups).
func (n *Node) expectedOf(queues []string, topic string) map[string]expectation {
	a := &n.share.ack
	var out map[string]expectation
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, q := range queues {
		e := a.dir[q]
		if e == nil {
			continue // forgotten since: no announcement for dirExpire
		}
		if x, ok := n.expectLocked(q, e, now); ok {
			if out == nil {
				out = make(map[string]expectation, len(queues))
			}
			out[q] = x
		}
	}
	return out
}

// expectLocked tells whether the group e of the directory, of queue q,
// is expected: it has members now, or had one within shareLinger. a.mu
// held.
func (n *Node) expectLocked(q string, e *dirEntry, now time.Time) (expectation, bool) {
	x := expectation{key: e.key}
	if n.srv != nil {
		if n.srv.GlobalAccount().Interest(groupPrefix+q) > 0 {
			e.member = now
		} else {
			x.empty = e.seen
			if e.member.After(x.empty) {
				x.empty = e.member
			}
			if now.Sub(x.empty) >= shareLinger {
				return x, false // no member for a while: the group is over
			}
		}
	}
	return x, true
}

// matchingGroups returns the queues of the directory's groups whose
// filter matches topic: a walk over the directory, which the interest
// cache saves per topic.
func (n *Node) matchingGroups(topic string) []string {
	a := &n.share.ack
	var out []string
	a.mu.Lock()
	defer a.mu.Unlock()
	for q, e := range a.dir {
		if mqtttopic.MatchFilter(e.key.filter, topic) {
			out = append(out, q)
		}
	}
	return out
}

// addGroups puts the groups another node named with its versions into
// the directory (refreshVersions, loadGroups).
func (n *Node) addGroups(groups [][2]string) {
	if len(groups) == 0 {
		return
	}
	now := time.Now()
	a := &n.share.ack
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range groups {
		g, f, err := packet.SplitShared(packet.SharePrefix + e[0] + "/" + e[1])
		if err != nil || g != e[0] || f != e[1] {
			n.stats.decodeErrors.Add(1)
			continue
		}
		a.addLocked(shareKey{g, f}, now)
	}
}

// loadGroups reads, when the node starts, the groups of the nodes it has
// a route to, before its listeners accept: a QoS 1/2 message published
// here then waits for them from the start. (A node whose groups are not
// known yet makes the message's wait for its groups be settled once they
// are: resolveRequests.)
func (n *Node) loadGroups() {
	if n.srv == nil {
		return
	}
	for name := range n.routedNodes() {
		if name == n.cfg.Node {
			continue
		}
		if r, ok := n.askVersion(keyOf(name)); ok && !r.old {
			n.addGroups(r.Groups)
		}
	}
}

// newRequest registers a request for the groups of expect, part of c;
// nil when too many wait already. unresolved: the groups are not known
// yet (resolveRequests settles them).
func (n *Node) newRequest(c *commit, data []byte, topic string, expect map[string]expectation, unresolved bool) *shareReq {
	a := &n.share.ack
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.reqs == nil || len(a.reqs) >= maxShareReqs {
		return nil
	}
	a.nextID++
	r := &shareReq{id: a.nextID, c: c, data: data, topic: topic, groups: make(map[string]*reqGroup, len(expect)),
		deadline: now.Add(n.commitTimeout()), created: now}
	r.reply = n.replySubject(r.id)
	if unresolved {
		r.unresolved = true
		a.unresolved++
	} else {
		r.expect(expect, now)
	}
	a.reqs[r.id] = r
	c.parts.Add(1)
	return r
}

// expect sets the groups r waits for. a.mu held.
func (r *shareReq) expect(expect map[string]expectation, now time.Time) {
	r.left = len(expect)
	for q, x := range expect {
		g := &reqGroup{key: x.key, due: now.Add(attemptWait), attempts: 1, empty: x.empty}
		if !x.empty.IsZero() {
			g.due = now // no member now: looked at again at once
		}
		r.groups[q] = g
	}
}

// resolveRequests settles the groups of the requests published while the
// directory was not known to be complete, once it is (or, after
// attemptWait, with what it holds then: a node whose versions cannot be
// read). A group that answered meanwhile has its answer applied; a group
// expected now that NATS did not choose for the message (it joined
// since) is sent it on its own subject after attemptWait, as one that
// does not answer.
func (n *Node) resolveRequests() {
	a := &n.share.ack
	a.mu.Lock()
	if a.unresolved == 0 {
		a.mu.Unlock()
		return
	}
	var list []*shareReq
	for _, r := range a.reqs {
		if r.unresolved {
			list = append(list, r)
		}
	}
	a.mu.Unlock()
	if len(list) == 0 {
		return
	}
	var acc *server.Account
	if n.srv != nil {
		acc = n.srv.GlobalAccount()
	}
	now := time.Now()
	for _, r := range list {
		var expect map[string]expectation
		switch ans := n.interestOrNil(acc, r.topic); {
		case ans != nil && ans.groupsKnown:
			expect = n.expectedOf(ans.groups, r.topic)
		case now.Sub(r.created) >= attemptWait || ans != nil && ans.legacy:
			n.logRated(&n.handLog, "cluster: the groups of shared subscriptions not known in time; the message waits for those of the directory",
				"topic", r.topic, nil)
			expect = n.expectedGroups(r.topic)
		default:
			continue
		}
		a.mu.Lock()
		if a.reqs[r.id] != r || !r.unresolved {
			a.mu.Unlock()
			continue
		}
		r.unresolved = false
		a.unresolved--
		r.expect(expect, now)
		early := r.early
		r.early = nil
		a.mu.Unlock()
		for q, st := range early {
			n.answer(r.id, shareAnswer{Queue: q, State: st.state, Node: st.node})
		}
		a.mu.Lock()
		done := r.left == 0 && a.reqs[r.id] == r
		if done {
			delete(a.reqs, r.id)
		}
		a.mu.Unlock()
		if done {
			n.persistence().finish(r.c, nil)
		}
	}
}

// interestOrNil is the interest look-up of topic, nil without an
// embedded server.
func (n *Node) interestOrNil(acc *server.Account, topic string) *interestAnswer {
	if acc == nil {
		return nil
	}
	a := n.interest(acc, topic)
	return &a
}

// handleAnswer applies a receiving node's answer to a request of this
// node.
func (n *Node) handleAnswer(m *nats.Msg) {
	if len(m.Data) > maxAnswerLen {
		return
	}
	i := strings.LastIndexByte(m.Subject, '.')
	id, err := strconv.ParseUint(m.Subject[i+1:], 10, 64)
	var ans shareAnswer
	if err != nil || json.Unmarshal(m.Data, &ans) != nil {
		n.stats.decodeErrors.Add(1)
		return
	}
	n.answer(id, ans)
}

// answer applies ans to request id.
func (n *Node) answer(id uint64, ans shareAnswer) {
	a := &n.share.ack
	a.mu.Lock()
	r := a.reqs[id]
	var g *reqGroup
	if r != nil {
		g = r.groups[ans.Queue]
	}
	if r != nil && r.unresolved && validQueue(ans.Queue) {
		// Kept until its groups are settled (resolveRequests).
		if r.early == nil {
			r.early = make(map[string]earlyAnswer)
		}
		if prev, ok := r.early[ans.Queue]; len(r.early) < maxEarly && (!ok || prev.state != answerCommitted) {
			r.early[ans.Queue] = earlyAnswer{state: ans.State, node: ans.Node}
		}
		a.mu.Unlock()
		return
	}
	if g == nil || g.state == reqDone {
		a.mu.Unlock()
		return // a group not expected (not in the directory yet), or done
	}
	switch ans.State {
	case answerReceived:
		if g.state == reqSent {
			g.state, g.node, g.due = reqReceived, ans.Node, time.Now().Add(n.committedWait())
		}
	case answerCommitted:
		g.state = reqDone
		r.left--
		a.confirmed.Add(1)
	case answerFailed:
		if g.state != reqLocal {
			g.due = time.Time{} // again at the next look
		}
	}
	done := r.left == 0
	if done {
		delete(a.reqs, id)
	}
	a.mu.Unlock()
	if done {
		n.persistence().finish(r.c, nil)
	}
}

// retryRequests sends again what a group did not confirm in time, or
// whose receiving node left; see the top of this file.
func (n *Node) retryRequests(sb SharedBroker, now time.Time) {
	a := &n.share.ack
	type retry struct {
		r     *shareReq
		hdr   nats.Header
		q     string
		k     shareKey
		local bool
	}
	var retries []retry
	var failed []*shareReq
	var routes map[string]bool // nodes with a route now, read once
	routesRead := false
	a.mu.Lock()
	for id, r := range a.reqs {
		if now.After(r.deadline) {
			delete(a.reqs, id)
			if r.unresolved {
				r.unresolved = false
				a.unresolved--
			}
			failed = append(failed, r)
			continue
		}
		if r.hdr == nil {
			continue // being published
		}
		for q, g := range r.groups {
			switch g.state {
			case reqDone, reqLocal:
				continue
			case reqReceived:
				if now.Before(g.due) {
					// Within committedWait, the receiving node is
					// given up only once it left the cluster, looked
					// at when its commit takes more than a second.
					if g.node == n.cfg.Node || now.Sub(g.due.Add(-n.committedWait())) < time.Second {
						continue
					}
					if !routesRead {
						routes, routesRead = n.routedNodes(), true
					}
					if routes == nil || routes[g.node] {
						continue
					}
				}
			case reqSent:
				if now.Before(g.due) {
					continue
				}
			}
			g.state, g.node = reqSent, ""
			g.attempts++
			g.due = now.Add(attemptWait)
			retries = append(retries, retry{r, r.hdr, q, g.key, g.attempts > localAfter})
		}
	}
	a.mu.Unlock()
	for _, r := range failed {
		n.share.unconfirmed.Add(1)
		n.logRated(&n.handLog, "cluster: a shared subscription's member did not confirm a message in time; its publisher is told to send it again",
			"topic", r.topic, errSharedUndelivered)
		n.persistence().finish(r.c, errSharedUndelivered)
	}
	for _, rt := range retries {
		n.share.retried.Add(1)
		if rt.local && n.deliverLocal(sb, rt.r, rt.hdr, rt.q, rt.k) {
			continue
		}
		if n.srv != nil && n.srv.GlobalAccount().Interest(groupPrefix+rt.q) == 0 {
			n.groupEmpty(rt.r, rt.q, now)
			continue
		}
		a.mu.Lock()
		if g := rt.r.groups[rt.q]; g != nil {
			g.empty = time.Time{}
		}
		a.mu.Unlock()
		m := &nats.Msg{Subject: groupPrefix + rt.q, Reply: rt.r.reply, Data: rt.r.data, Header: nats.Header{}}
		for h, v := range rt.hdr {
			m.Header[h] = v
		}
		m.Header[hdrHop] = []string{"1"}
		if err := n.nc.PublishMsg(m); err != nil {
			n.logRated(&n.handLog, "cluster: message of a shared subscription not sent again", "subject", m.Subject, err)
		}
	}
}

// groupEmpty notes that the group q of r has no member on any node now;
// shareLinger after it last had one it is over for r, as on one node
// for a subscription that no longer exists. Until then it is looked at
// every reqTick: a session moving between nodes leaves its group for an
// instant, and is sent the message once it joined again on its new
// node.
func (n *Node) groupEmpty(r *shareReq, q string, now time.Time) {
	a := &n.share.ack
	a.mu.Lock()
	g := r.groups[q]
	over := false
	if g != nil && g.state == reqSent {
		if g.empty.IsZero() {
			g.empty = now
		}
		g.due = now.Add(reqTick)
		g.attempts-- // not an attempt
		if now.Sub(g.empty) >= shareLinger {
			over = true
			g.state = reqDone
			r.left--
		}
	}
	done := over && r.left == 0
	if done {
		delete(a.reqs, r.id)
	}
	a.mu.Unlock()
	if over {
		n.share.noMember.Add(1)
	}
	if done {
		n.persistence().finish(r.c, nil)
	}
}

// deliverLocal gives r's message to a member of group k on this node
// directly; false when it has none.
func (n *Node) deliverLocal(sb SharedBroker, r *shareReq, hdr nats.Header, q string, k shareKey) bool {
	msg, err := decodeMessage(r.data, hdr.Get(hdrFrom), time.Now())
	if err != nil {
		return false
	}
	a := &n.share.ack
	a.mu.Lock()
	if g := r.groups[q]; g != nil && g.state == reqSent {
		g.state = reqLocal
	}
	a.mu.Unlock()
	a.markUnordered(msg)
	defer a.unmarkUnordered(msg)
	n.dur.routeMu.Lock() // as in deliverRequested
	defer n.dur.routeMu.Unlock()
	ok := sb.DeliverSharedDone(msg, k.group, k.filter, n.holdAcks(func(err error) {
		if err != nil {
			a.mu.Lock()
			if g := r.groups[q]; g != nil && g.state == reqLocal {
				g.state, g.due = reqSent, time.Time{}
			}
			a.mu.Unlock()
			return
		}
		n.answer(r.id, shareAnswer{Queue: q, State: answerCommitted})
	}))
	if !ok {
		a.mu.Lock()
		if g := r.groups[q]; g != nil && g.state == reqLocal {
			g.state = reqSent
		}
		a.mu.Unlock()
	}
	return ok
}

// routedNodes returns the names of the nodes with a route to this one
// now; nil when unknown (an external NATS).
func (n *Node) routedNodes() map[string]bool {
	if n.srv == nil {
		return nil
	}
	rz, err := n.srv.Routez(nil)
	if err != nil {
		return nil
	}
	out := make(map[string]bool, len(rz.Routes))
	for _, r := range rz.Routes {
		out[r.RemoteName] = true
	}
	return out
}

// failRequests fails every waiting request (the Node closes).
func (n *Node) failRequests(err error) {
	a := &n.share.ack
	a.mu.Lock()
	reqs := a.reqs
	a.reqs = nil
	a.mu.Unlock()
	for _, r := range reqs {
		n.persistence().finish(r.c, err)
	}
}

// receivedShared notes that request key (origin, sequence, queue)
// arrived: false when it is being delivered already; delivered tells
// that it was delivered already (answer at once).
func (a *ackState) receivedShared(key string) (first, delivered bool) {
	a.rmu.Lock()
	defer a.rmu.Unlock()
	if a.seen == nil {
		return true, false
	}
	switch a.seen[key] {
	case 1:
		return false, false
	case 2:
		return false, true
	}
	a.seen[key] = 1
	return true, false
}

// settleShared ends the delivery of key; delivered ones are remembered.
func (a *ackState) settleShared(key string, delivered bool) {
	a.rmu.Lock()
	defer a.rmu.Unlock()
	if a.seen == nil {
		return
	}
	if !delivered {
		delete(a.seen, key)
		return
	}
	if old := a.ring[a.ringPos]; old != "" {
		delete(a.seen, old)
	}
	a.ring[a.ringPos] = key
	a.ringPos = (a.ringPos + 1) % len(a.ring)
	a.seen[key] = 2
}

// answerShared sends an answer to a request's reply subject.
func (n *Node) answerShared(reply, queue, state string) {
	data, _ := json.Marshal(shareAnswer{Queue: queue, State: state, Node: n.cfg.Node})
	if err := n.nc.Publish(reply, data); err != nil {
		n.logRated(&n.handLog, "cluster: answer to a shared subscription's message not sent", "subject", reply, err)
	}
}

// validReply tells whether a request's reply subject is one of a node's.
func validReply(s string) bool {
	return strings.HasPrefix(s, replyPrefix) && len(s) <= 256 && !strings.ContainsAny(s, "*> \t")
}

// deliverRequested delivers a group's message sent as a request, and
// answers it; see the top of this file. It reports whether a member here
// took it (or has it already); false: the caller hands it on.
func (n *Node) deliverRequested(sb SharedBroker, m *nats.Msg, msg *broker.Message, k shareKey, member bool) bool {
	a := &n.share.ack
	key := m.Header.Get(hdrOrigin) + "\x00" + m.Header.Get(hdrSeq) + "\x00" + m.Sub.Queue
	first, delivered := a.receivedShared(key)
	switch {
	case delivered:
		n.answerShared(m.Reply, m.Sub.Queue, answerCommitted)
		return true
	case !first:
		return true // its answer follows
	}
	if !member {
		a.settleShared(key, false)
		return false
	}
	n.answerShared(m.Reply, m.Sub.Queue, answerReceived)
	if a.swallow.Load() {
		a.swallowed.Add(1)
		return true
	}
	reply, queue := m.Reply, m.Sub.Queue
	a.markUnordered(msg)
	defer a.unmarkUnordered(msg)
	// Ordered with a session's release (handleRelease): a member given
	// up meanwhile either takes the message with its commit before the
	// release's barrier, or is no longer here.
	n.dur.routeMu.Lock()
	defer n.dur.routeMu.Unlock()
	ok := sb.DeliverSharedDone(msg, k.group, k.filter, n.holdAcks(func(err error) {
		a.settleShared(key, err == nil)
		if err != nil {
			n.answerShared(reply, queue, answerFailed)
			return
		}
		n.answerShared(reply, queue, answerCommitted)
	}))
	if !ok {
		a.settleShared(key, false)
	}
	return ok
}

// markUnordered and unmarkUnordered add and remove msg in unordered.
func (a *ackState) markUnordered(msg *broker.Message) {
	a.unorderedN.Add(1)
	a.unordered.Store(msg, struct{}{})
}

func (a *ackState) unmarkUnordered(msg *broker.Message) {
	a.unordered.Delete(msg)
	a.unorderedN.Add(-1)
}

// isUnordered tells whether msg is being delivered for a request.
func (a *ackState) isUnordered(msg *broker.Message) bool {
	if a.unorderedN.Load() == 0 {
		return false
	}
	_, ok := a.unordered.Load(msg)
	return ok
}
