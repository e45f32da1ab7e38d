package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/moatmq/moat/internal/broker"
)

// Shared subscriptions across nodes (docs/cluster.md, "Shared
// subscriptions").
//
// Each node with members of $share/GROUP/filter joins a NATS queue group
// on the filter's subjects, named from GROUP and the filter. A forwarded
// message is published once, on its topic's subject; NATS hands it to
// every node with a plain interest and to ONE member of each matching
// queue group, so one node per group gets it, and that node's broker picks
// one of its members (broker.Server.DeliverShared). The publishing node
// leaves its own members out of its local delivery: NATS may choose it
// like any other.
//
// Each node also joins the group's queue on a subject of its own,
// moat.g.<queue>, which only the group's members subscribe to: a message
// that must reach the group alone goes there (a node picked for a message
// whose last member here just left hands it on, and the messages of a
// member whose session ended go to another member, wherever it is).
//
// QoS 1 and 2 messages reach the other nodes' plain subscriptions through
// the durable stream (durable.go), which every node reads whole: it cannot
// choose one node per group. Their publishing node therefore also
// publishes them once on moat.q.<tokens>, a subject only the groups'
// queue subscriptions listen on, beside the topic's own (moat.m.<tokens>,
// which carries QoS 0 messages to both).
//
// The queue subscriptions live on a second connection. The first one
// publishes with echo off, and NATS skips a queue member on the publishing
// connection itself, which would leave the publishing node out of every
// choice.
//
// NATS chooses among nodes in proportion to their queue weight, the number
// of subscriptions a node holds in the group. A node holds one per member
// that takes messages now (connected, keeping up: SharedMembers), at least
// one while it has members at all (so that a group whose members are all
// offline or backed up still receives, and queues, as on one node) and at
// most maxShareWeight; weights are brought up to date every
// Config.ShareInterval.

// maxShareWeight bounds the queue subscriptions per group and subject on
// one node: the node's share grows with its members up to this many.
const maxShareWeight = 32

// hdrHop marks a message sent to its group's own subject (HandOn, or
// handed on by a node that had no member left for it): it is not handed
// on again.
const hdrHop = "Moat-Hop"

// groupPrefix is the subject prefix of a group's own subject.
const groupPrefix = "moat.g."

// sharedPrefix is the subject prefix of QoS 1/2 messages for the groups
// alone; as long as msgPrefix, so SharesTopic holds for both.
const sharedPrefix = "moat.q."

// SharedBroker is what a Node needs of the broker for shared
// subscriptions: *broker.Server. A Broker without it gets no queue groups:
// a node's Attach then leaves groups to each node (once per node).
type SharedBroker interface {
	DeliverShared(msg *broker.Message, group, filter string) bool
	DeliverSharedDone(msg *broker.Message, group, filter string, done func(error)) bool
	SharedMembers(group, filter string) (members, available int)
}

var _ SharedBroker = (*broker.Server)(nil)
var _ broker.SharedCluster = (*Node)(nil)

// shareKey names a shared subscription.
type shareKey struct{ group, filter string }

// shareLinger is how long a node whose last member of a group left stays
// in the group's queue on the topics' subjects, handing on what NATS still
// sends it: the other nodes learn of the leave over the routes, and a
// message in flight meanwhile would otherwise be dropped. Its own subject
// it leaves at once, so that what it hands on goes elsewhere.
const shareLinger = 5 * time.Second

// shareGroup is this node's part of one queue group.
type shareGroup struct {
	key    shareKey
	queue  string
	topics []string                        // the filter's subjects
	subs   map[string][]*nats.Subscription // subject → its queue subscriptions
	weight int                             // subscriptions per subject
	// announced: the group directory has been told (sharedack.go).
	announced bool
	// leaving, when set, is when the node leaves the group for good: its
	// last member here left.
	leaving time.Time
}

// direct is the group's own subject.
func (g *shareGroup) direct() string { return groupPrefix + g.queue }

// shareState is the shared-subscription side of a Node. mu guards the
// maps and every shareGroup; the NATS calls made under it do not block on
// the network (subscriptions and their removal are sent asynchronously).
type shareState struct {
	mu      sync.Mutex
	groups  map[shareKey]*shareGroup
	byQueue map[string]*shareGroup
	wake    chan struct{} // a group was joined: weigh it soon

	in                       chan *nats.Msg // the groups' messages, in arrival order
	out                      chan *nats.Msg // messages to hand on (HandOn), sent by shareLoop
	received, handedOn, lost atomic.Uint64
	// retried counts QoS 1/2 messages sent to a group again, unconfirmed
	// those a group did not confirm by the commit's deadline (the
	// publisher was told to send them again), noMember those for a group
	// without a member left anywhere (sharedack.go).
	retried, unconfirmed, noMember atomic.Uint64
	ack                            ackState
	// left is set when the node left a group's own subject: before it
	// hands a message on, the NATS server must have seen that (a flush of
	// the queue groups' connection), or NATS could choose this node again.
	left atomic.Bool

	// This node's group version (see groupVersionUp), guarded by mu,
	// and ownGen, the generation of its groups, which the interest
	// cache's answers carry.
	gver     uint64
	gverSub  *nats.Subscription
	gverSubj string
	ownGen   atomic.Uint64
}

// ShareStats counts the shared subscriptions with members on this node
// (Groups), and the messages of shared subscriptions this node received
// from NATS (Received), handed on to another node because no member was
// left here (HandedOn), and could place nowhere (Lost). Of the QoS 1/2
// messages this node published for groups, Retried counts the attempts
// made again (no confirmation in time, the receiving node left),
// Unconfirmed those whose publisher was told to send them again, and
// NoMember the groups found without a member anywhere.
type ShareStats struct {
	Groups                         int
	Received, HandedOn, Lost       uint64
	Retried, Unconfirmed, NoMember uint64
}

// ShareStats returns the counters. Safe for concurrent use.
func (n *Node) ShareStats() ShareStats {
	sh := &n.share
	sh.mu.Lock()
	g := 0
	for _, gr := range sh.groups {
		if gr.leaving.IsZero() {
			g++
		}
	}
	sh.mu.Unlock()
	return ShareStats{Groups: g, Received: sh.received.Load(), HandedOn: sh.handedOn.Load(), Lost: sh.lost.Load(),
		Retried: sh.retried.Load(), Unconfirmed: sh.unconfirmed.Load(), NoMember: sh.noMember.Load()}
}

// queueName names the NATS queue group of (group, filter), the same on
// every node; a digest, since a group name and filter may hold any
// character and be long.
func queueName(group, filter string) string {
	h := sha256.New()
	h.Write([]byte(group))
	h.Write([]byte{0})
	h.Write([]byte(filter))
	return "moat_" + hex.EncodeToString(h.Sum(nil)[:16])
}

// SharesTopic implements broker.SharedCluster: the cluster carries a
// topic whose subject fits (Forward). It neither locks nor allocates.
func (n *Node) SharesTopic(topic string) bool { return subjectLen(topic) <= maxSubject }

// subjectLen is len(topicSubject(topic)).
func subjectLen(topic string) int {
	l, start := len(msgPrefix), 0
	for i := 0; i <= len(topic); i++ {
		if i == len(topic) || topic[i] == '/' {
			l += 1 + levelEnc.EncodedLen(i-start)
			if i < len(topic) {
				l++ // the dot
			}
			start = i + 1
		}
	}
	return l
}

// SharedInterest implements broker.SharedCluster: the node joins the
// queue group of (group, filter), or leaves it after shareLinger.
func (n *Node) SharedInterest(group, filter string, on bool) {
	if n.gc == nil {
		return
	}
	sh := &n.share
	k := shareKey{group, filter}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	g := sh.groups[k]
	if !on {
		if g != nil && g.leaving.IsZero() {
			g.leaving = time.Now().Add(shareLinger)
			n.setWeightLocked(g, 1)
		}
		return
	}
	// The other nodes learn of the group with this node's next group
	// version, which follows its queue subscriptions; the version before
	// them is gone first (groupVersionUp). The directory here has it
	// before the queue subscriptions exist.
	n.groupVersionDown()
	defer n.groupVersionUp()
	sh.ack.mu.Lock()
	sh.ack.addLocked(k, time.Now())
	sh.ack.mu.Unlock()
	sh.ownGen.Add(1)
	if g != nil {
		g.leaving = time.Time{}
		n.setWeightLocked(g, max(g.weight, 1))
		return
	}
	g = &shareGroup{key: k, queue: queueName(group, filter), subs: make(map[string][]*nats.Subscription)}
	for _, subj := range filterSubjects(filter) {
		if len(subj) > maxSubject {
			// No topic it matches fits a subject either: those messages
			// stay on their node, where local members share them.
			continue
		}
		g.topics = append(g.topics, subj, sharedPrefix+subj[len(msgPrefix):])
	}
	sh.groups[k] = g
	sh.byQueue[g.queue] = g
	n.setWeightLocked(g, 1)
	select {
	case sh.wake <- struct{}{}:
	default:
	}
}

// groupVersionDown removes this node's group version before it joins a
// group: on every other node's server, the group's queue subscriptions
// (on the same connection, after it) are never there while the version
// is. sh.mu held.
func (n *Node) groupVersionDown() {
	sh := &n.share
	if sh.gverSub != nil {
		_ = sh.gverSub.Unsubscribe()
		sh.gverSub, sh.gverSubj = nil, ""
	}
}

// groupVersionUp subscribes this node's next group version, after it
// joined a group (or at start), on the groups' connection. Another node
// that sees it present has this node's groups as this node named them
// with it (versionReply, refreshVersions). sh.mu held.
func (n *Node) groupVersionUp() {
	if n.srv == nil || n.gc == nil {
		return
	}
	sh := &n.share
	n.groupVersionDown()
	sh.gver++
	subj := n.versionSubject("g", sh.gver)
	s, err := n.interestOnly(n.gc, subj)
	if err != nil {
		// The other nodes then wait, for a QoS 1/2 message's groups,
		// until their wait for the directory gives up (resolveRequests).
		n.logRated(&n.handLog, "cluster: group version not subscribed", "subject", subj, err)
		return
	}
	sh.gverSub, sh.gverSubj = s, subj
}

// setWeightLocked gives each of g's topic subjects w queue subscriptions,
// and its own subject as many while it has members here (none once it is
// leaving). sh.mu held.
func (n *Node) setWeightLocked(g *shareGroup, w int) {
	for _, subj := range g.topics {
		n.setSubsLocked(g, subj, w)
	}
	if g.leaving.IsZero() {
		n.setSubsLocked(g, g.direct(), w)
	} else if len(g.subs[g.direct()]) > 0 {
		n.setSubsLocked(g, g.direct(), 0)
		n.share.left.Store(true)
	}
	g.weight = w
}

// setSubsLocked subscribes or removes queue subscriptions of g on subj
// until it has w. A removal drains the subscription: NATS may have sent
// it messages already, which still arrive. sh.mu held.
func (n *Node) setSubsLocked(g *shareGroup, subj string, w int) {
	list := g.subs[subj]
	for len(list) < w {
		s, err := n.gc.ChanQueueSubscribe(subj, g.queue, n.share.in)
		if err != nil {
			n.log.Error("cluster: joining a shared subscription's queue group failed; its members here receive less or nothing from the cluster",
				"group", g.key.group, "filter", g.key.filter, "err", err)
			break
		}
		_ = s.SetPendingLimits(-1, -1)
		list = append(list, s)
	}
	for len(list) > w {
		last := len(list) - 1
		_ = list[last].Drain()
		list[last] = nil
		list = list[:last]
	}
	if len(list) == 0 {
		delete(g.subs, subj)
	} else {
		g.subs[subj] = list
	}
}

// weigh brings every group's weight up to date with its members here, and
// ends the groups whose linger is over.
func (n *Node) weigh(sb SharedBroker) {
	sh := &n.share
	now := time.Now()
	sh.mu.Lock()
	keys := make([]shareKey, 0, len(sh.groups))
	for k, g := range sh.groups {
		switch {
		case g.leaving.IsZero():
			keys = append(keys, k)
		case now.After(g.leaving):
			n.setWeightLocked(g, 0)
			delete(sh.groups, k)
			delete(sh.byQueue, g.queue)
		}
	}
	sh.mu.Unlock()
	for _, k := range keys {
		members, avail := sb.SharedMembers(k.group, k.filter)
		if members == 0 {
			continue // leaving: SharedInterest(false) follows
		}
		w := min(max(avail, 1), maxShareWeight)
		sh.mu.Lock()
		if g := sh.groups[k]; g != nil && g.leaving.IsZero() && g.weight != w {
			n.setWeightLocked(g, w)
		}
		sh.mu.Unlock()
	}
}

// shareLoop delivers the groups' messages and keeps the weights up to date.
func (n *Node) shareLoop(sb SharedBroker) {
	every := n.cfg.ShareInterval
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	sh := &n.share
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			n.weigh(sb)
		case <-sh.wake:
			n.weigh(sb)
			n.announceGroups(true)
		case m := <-sh.in:
			n.deliverShared(sb, m)
		case m := <-sh.out:
			n.handOn(m)
		}
	}
}

// deliverShared hands one message of a queue group to the broker; when no
// member is left here for it, it is handed on once, to the group's own
// subject (another node may have members).
func (n *Node) deliverShared(sb SharedBroker, m *nats.Msg) {
	sh := &n.share
	sh.mu.Lock()
	g := sh.byQueue[m.Sub.Queue]
	var k shareKey
	member := g != nil && g.leaving.IsZero()
	if member {
		k = g.key
	}
	sh.mu.Unlock()
	origin := m.Header.Get(hdrOrigin)
	if _, err := strconv.ParseUint(m.Header.Get(hdrSeq), 10, 64); err != nil || origin == "" {
		n.stats.decodeErrors.Add(1)
		return
	}
	msg, err := decodeMessage(m.Data, m.Header.Get(hdrFrom), time.Now())
	if err != nil {
		n.stats.decodeErrors.Add(1)
		n.log.Warn("cluster: malformed message from another node dropped", "origin", origin, "err", err)
		return
	}
	sh.received.Add(1)
	if m.Reply != "" && validReply(m.Reply) {
		// A QoS 1/2 message whose publisher waits for the answers
		// (sharedack.go).
		if n.deliverRequested(sb, m, msg, k, member) {
			return
		}
		if m.Header.Get(hdrHop) != "" {
			n.answerShared(m.Reply, m.Sub.Queue, answerFailed)
			sh.lost.Add(1)
			return
		}
	} else if member && sb.DeliverShared(msg, k.group, k.filter) {
		return
	}
	if m.Header.Get(hdrHop) != "" {
		sh.lost.Add(1)
		return
	}
	// Handed on with the request's reply subject: the node that takes
	// it answers the publisher.
	fw := &nats.Msg{Subject: groupPrefix + m.Sub.Queue, Reply: m.Reply, Data: m.Data, Header: nats.Header{}}
	for _, h := range []string{hdrOrigin, hdrSeq, hdrFrom} {
		if v := m.Header.Values(h); len(v) > 0 {
			fw.Header[h] = v
		}
	}
	fw.Header[hdrHop] = []string{"1"}
	n.handOn(fw)
}

// handOn publishes a message to a group's own subject, from shareLoop:
// once the NATS server has seen this node leave the groups it left, so
// that NATS chooses another node.
func (n *Node) handOn(m *nats.Msg) {
	sh := &n.share
	if sh.left.Swap(false) {
		_ = n.gc.FlushTimeout(5 * time.Second)
	}
	if err := n.nc.PublishMsg(m); err != nil {
		sh.lost.Add(1)
		n.logRated(&n.handLog, "cluster: message of a shared subscription not handed on", "subject", m.Subject, err)
		return
	}
	sh.handedOn.Add(1)
}

// connectGroups opens the connection of the queue groups with the main
// connection's options (opts, its name excepted). On failure it closes
// the main connection too: Start then fails as a whole.
func (n *Node) connectGroups(opts ...nats.Option) error {
	opts = append(opts, nats.Name("moat "+n.cfg.Node+" shared"), nats.MaxReconnects(-1), nats.NoCallbacksAfterClientClose())
	url := n.cfg.NATSURL
	gc, err := nats.Connect(url, opts...)
	if err != nil {
		n.nc.Close()
		n.nc = nil
		return fmt.Errorf("cluster: opening the shared subscriptions' connection: %v", err)
	}
	n.gc = gc
	return nil
}

// attachShared starts the delivery of the queue groups' messages to b.
func (n *Node) attachShared(b Broker) {
	sb, ok := b.(SharedBroker)
	if !ok {
		n.log.Error("cluster: the broker cannot deliver shared subscriptions' messages; they are not delivered on this node")
		return
	}
	n.startAcks(sb)
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.shareLoop(sb) }()
}

// forwardShared publishes a QoS 1/2 message for the shared subscriptions
// (see the top of this file), unless no node has a group that could want
// it. It is sent once, as a request: NATS chooses one node per group, and
// the groups of the directory are waited for, as a part of c (the
// publisher's commit), until each confirmed that the message is in its
// member's session (sharedack.go).
func (n *Node) forwardShared(c *commit, msg *broker.Message) {
	if n.gc == nil {
		return
	}
	toks := topicTokens(msg.Topic)
	subj := sharedPrefix + toks
	if len(subj) > maxSubject {
		return // shared among this node's members (SharesTopic)
	}
	// The groups that could want it: from the interest look-up (cached
	// per topic), or, while the directory may lack a group NATS would
	// choose (a node's group version changed, a node not known yet),
	// settled once it is complete (resolveRequests).
	var expect map[string]expectation
	known := true
	if n.srv == nil {
		expect = n.expectedGroups(msg.Topic)
	} else {
		acc := n.srv.GlobalAccount()
		a := n.interest(acc, msg.Topic)
		switch {
		case a.groupsKnown:
			if len(a.groups) == 0 {
				return
			}
			expect = n.expectedOf(a.groups, msg.Topic)
		case acc.Interest(subj) == 0:
			return
		case a.legacy:
			// A node of an earlier build names no groups: the
			// directory as its announcements make it.
			expect = n.expectedGroups(msg.Topic)
		default:
			known = false
		}
	}
	data, err := encodeMessage(msg, time.Now())
	if err != nil {
		if !errors.Is(err, errExpired) {
			n.forwardFailed("cluster: message of a shared subscription not forwarded", msg.Topic, err)
		}
		return
	}
	m := n.forwardedMsg(subj, data, msg)
	var req *shareReq
	if known && len(expect) > 0 || !known {
		if req = n.newRequest(c, data, msg.Topic, expect, !known); req != nil {
			m.Reply = req.reply
		} else {
			n.share.unconfirmed.Add(1)
		}
	}
	n.pubMu.Lock()
	n.number(m)
	err = n.nc.PublishMsg(m)
	n.pubMu.Unlock()
	if req != nil {
		n.share.ack.mu.Lock()
		req.hdr = m.Header
		n.share.ack.mu.Unlock()
	}
	if err != nil {
		// A request is sent again by ackLoop.
		n.forwardFailed("cluster: message of a shared subscription not forwarded", msg.Topic, err)
		return
	}
	n.stats.forwarded.Add(1)
}

// HandOn implements broker.SharedCluster: msg goes to the queue group of
// (group, filter) alone, on its own subject, once. It does not block.
func (n *Node) HandOn(msg *broker.Message, group, filter string) {
	data, err := encodeMessage(msg, time.Now())
	if err != nil {
		if !errors.Is(err, errExpired) {
			n.share.lost.Add(1)
			n.logRated(&n.handLog, "cluster: message of a shared subscription not handed on", "topic", msg.Topic, err)
		}
		return
	}
	m := n.forwardedMsg(groupPrefix+queueName(group, filter), data, msg)
	m.Header[hdrHop] = []string{"1"}
	n.pubMu.Lock()
	n.number(m)
	n.pubMu.Unlock()
	// Sent by shareLoop, after the leave that usually comes with it (the
	// member's session ended) reached the NATS server.
	select {
	case n.share.out <- m:
	default:
		n.share.lost.Add(1)
		n.logRated(&n.handLog, "cluster: too many messages of shared subscriptions to hand on; one was dropped", "topic", msg.Topic, nil)
	}
}
