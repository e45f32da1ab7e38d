package cluster

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Taking a node out of the cluster for good (docs/cluster.md, "Removing a
// node"). JetStream counts every server that ever joined its meta group:
// a node that never comes back keeps the cluster one short of its size,
// keeps a copy of every stream missing, and makes every other node put
// every QoS 1/2 message into the durable stream for it (a node missing is
// owed them). RemoveNode, asked of any surviving node, removes the node
// from the JetStream meta group (which takes it out of every stream's
// group) and from each Moat stream still listing it, tells the other
// nodes to stop counting it, and adopts its sessions and removes its
// claims at once (adopt.go). It refuses a node that is alive (heard from
// within the down threshold, or with a route to this node) unless forced:
// a live node removed loses its JetStream, and its clients their
// sessions' replication.

// rmSubject carries the name of a removed node to every node.
const rmSubject = "moat.rm"

// ErrRemoveRefused is wrapped by RemoveNode's refusals, made before
// anything changed; ErrNodeAlive, one of them, by the refusal to remove
// a node that is alive.
var (
	ErrRemoveRefused = errors.New("cluster: removal refused")
	ErrNodeAlive     = fmt.Errorf("%w: the node is alive", ErrRemoveRefused)
)

// RemoveResult is what RemoveNode did.
type RemoveResult struct {
	Node string `json:"node"`
	// MetaRemoved is true when the node was taken out of the JetStream
	// meta group now (false: it was not a member, or NATS is external).
	MetaRemoved bool `json:"meta_removed"`
	// Streams are the Moat streams whose copy on the node this request
	// removed (the meta group's removal takes it out of the others).
	Streams []string `json:"streams"`
	// SessionsAdopted and ClaimsRemoved: its sessions adopted by this
	// node (another node may adopt some at the same time) and its
	// client-ID claims removed.
	SessionsAdopted int `json:"sessions_adopted"`
	ClaimsRemoved   int `json:"claims_removed"`
	// StreamsShrunk are the Moat streams whose number of copies this
	// request lowered to the number of servers left (a cluster of three
	// shrunk to two).
	StreamsShrunk []string `json:"streams_shrunk,omitempty"`
	// Forced is true when the node was alive and removed anyway.
	Forced bool `json:"forced,omitempty"`
}

// RemoveNode takes the node named name out of the cluster for good (see
// above). It fails with an error wrapping ErrNodeAlive when the node is
// alive and force is false.
func (n *Node) RemoveNode(ctx context.Context, name string, force bool) (RemoveResult, error) {
	res := RemoveResult{Node: name, Streams: []string{}}
	if name == "" {
		return res, fmt.Errorf("%w: name the node to remove", ErrRemoveRefused)
	}
	if name == n.cfg.Node {
		return res, fmt.Errorf("%w: %s is the node asked; ask another node to remove it", ErrRemoveRefused, name)
	}
	st := n.Status()
	ni, known := nodeIn(st.Nodes, name)
	removed := slices.Contains(st.Removed, name)
	if !known && !removed {
		var names []string
		for _, x := range st.Nodes {
			names = append(names, x.Node)
		}
		return res, fmt.Errorf("%w: no node %q in this cluster (known: %v)", ErrRemoveRefused, name, names)
	}
	alive := ni.State == StateUp || n.srv != nil && n.peerConnected(name)
	if alive {
		if !force {
			seen := "it has a route to this node"
			if ni.State == StateUp && !ni.LastSeen.IsZero() {
				seen = "heard from " + ago(n.now(), ni.LastSeen) + " ago"
			}
			return res, fmt.Errorf("%w: %s (%s); stop it first, or force the removal (it then loses its JetStream "+
				"and its clients their sessions' replication)", ErrNodeAlive, name, seen)
		}
		res.Forced = true
	}
	if !st.External && st.MetaLeader == "" {
		return res, fmt.Errorf("%w: JetStream has no meta leader (no quorum): a node can be removed only by a majority of the nodes",
			ErrRemoveRefused)
	}
	if n.srv != nil && st.MetaLeader == name {
		// A meta leader applying its own removal disables its
		// JetStream at once: it neither answers the request nor moves
		// the streams' copies off itself, and a stream it also led
		// (the sessions stream, read by every claim) was seen to stay
		// without a leader on the nodes left for minutes, on an idle
		// machine too. It hands the lead over first.
		if err := n.metaHandover(ctx, name); err != nil {
			return res, fmt.Errorf("%w: %s leads the JetStream meta group and did not hand the lead over (%v); try again",
				ErrRemoveRefused, name, err)
		}
	}
	// The removal is stored before anything else changes: a removed
	// node started again on its old data directory finds it and refuses
	// to join (checkRemovedAtStart), even when it missed the
	// announcement below.
	if err := n.storeRemoval(ctx, name, st); err != nil {
		return res, err
	}
	n.log.Warn("cluster: removing a node from the cluster for good", "node", name, "forced", res.Forced)
	n.markRemoved(name)
	if data, err := json.Marshal(removal{Node: name, By: n.origin}); err == nil {
		_ = n.nc.Publish(rmSubject, data)
	}
	if n.srv != nil {
		ok, err := n.metaRemove(ctx, name)
		if err != nil {
			return res, err
		}
		res.MetaRemoved = ok
		streams, err := n.streamsRemove(ctx, name)
		res.Streams = streams
		if err != nil {
			return res, err
		}
		// The servers left: this node and the other members of the
		// meta group, the removed node and earlier removed ones aside.
		servers := map[string]bool{n.cfg.Node: true}
		for _, p := range st.MetaPeers {
			if p.Node != name && !n.isRemoved(p.Node) {
				servers[p.Node] = true
			}
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res.StreamsShrunk, err = n.shrinkCopies(sctx, len(servers))
		cancel()
		if err != nil {
			n.log.Warn("cluster: the streams keep more copies than the servers left; the status reports the missing ones",
				"servers", len(servers), "err", err)
		}
	}
	var err error
	res.SessionsAdopted, res.ClaimsRemoved, err = n.adoptNode(ctx, name)
	if err != nil {
		return res, fmt.Errorf("cluster: the node is removed, but adopting its sessions failed (the adoption is tried again): %w", err)
	}
	// Its position in the durable stream is of no more use: a node
	// added later under the same name starts afresh. The request may go
	// unanswered (a consumer whose only copy was on the node gone), so
	// it is bounded: the removal does not hang on it.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := n.msgStream().DeleteConsumer(dctx, "node"+keyOf(name)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		n.log.Info("cluster: the removed node's consumer of the durable stream not deleted", "node", name, "err", err)
	}
	n.adopt.mu.Lock()
	if n.adopt.done == nil {
		n.adopt.done = make(map[string]time.Time)
	}
	n.adopt.done[name] = ni.LastSeen
	n.adopt.mu.Unlock()
	n.log.Info("cluster: node removed from the cluster", "node", name, "meta", res.MetaRemoved, "streams", res.Streams,
		"sessions", res.SessionsAdopted, "claims", res.ClaimsRemoved)
	return res, nil
}

func nodeIn(list []NodeInfo, name string) (NodeInfo, bool) {
	for _, ni := range list {
		if ni.Node == name {
			return ni, true
		}
	}
	return NodeInfo{}, false
}

// removal is the message on rmSubject.
type removal struct {
	Node string `json:"node"`
	By   string `json:"by"`
}

// markRemoved records that name is out of the cluster: it no longer
// counts as missing (refreshPeers), the status no longer lists it, and
// its sessions are adopted at once.
func (n *Node) markRemoved(name string) {
	n.adopt.mu.Lock()
	if n.adopt.removed == nil {
		n.adopt.removed = make(map[string]bool)
	}
	n.adopt.removed[name] = true
	n.adopt.mu.Unlock()
	n.beats.mu.Lock()
	delete(n.beats.nodes, name)
	n.beats.mu.Unlock()
}

// isRemoved tells whether the node named name was removed.
func (n *Node) isRemoved(name string) bool {
	n.adopt.mu.Lock()
	defer n.adopt.mu.Unlock()
	return n.adopt.removed[name]
}

// forgetRemoved drops the removed nodes from known (durable.go's
// refreshPeers): they are not missing, they are gone.
func (n *Node) forgetRemoved(known map[string]bool) {
	n.adopt.mu.Lock()
	defer n.adopt.mu.Unlock()
	for name := range n.adopt.removed {
		delete(known, name)
	}
}

// removedNodes lists the nodes known to be taken out of the cluster.
func (n *Node) removedNodes() []string {
	n.adopt.mu.Lock()
	defer n.adopt.mu.Unlock()
	var out []string
	for name := range n.adopt.removed {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// serveRemovals applies the removals other nodes announce.
func (n *Node) serveRemovals() (*nats.Subscription, error) {
	return n.nc.Subscribe(rmSubject, func(m *nats.Msg) {
		var r removal
		if len(m.Data) > maxHeartbeat || json.Unmarshal(m.Data, &r) != nil || r.Node == "" || len(r.Node) > maxHBNameLen ||
			r.By == n.origin {
			return
		}
		if r.Node == n.cfg.Node {
			if n.rmSelf.deaf {
				return
			}
			by, _, _ := strings.Cut(r.By, "/") // its name, without the run
			n.leaveRemoved(fmt.Errorf("%w: node %s was removed from cluster %s by node %s", ErrRemoved, n.cfg.Node, n.cfg.Name, clip(by)))
			return
		}
		if !n.isRemoved(r.Node) {
			n.log.Warn("cluster: a node was removed from the cluster for good", "node", r.Node, "by", clip(r.By))
		}
		n.markRemoved(r.Node)
	})
}

// apiAnswer is the part of a JetStream API answer read here.
type apiAnswer struct {
	Error *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error,omitempty"`
}

// JetStream error codes that mean the peer is already gone.
const (
	jsErrServerNotMember = 10044
	jsErrPeerNotMember   = 10040 // not a member of the stream's group (any more)
)

// metaRemove takes name out of the JetStream meta group, through the
// embedded server's system account (the only account allowed to). It
// reports false when name was not a member.
func (n *Node) metaRemove(ctx context.Context, name string) (bool, error) {
	sc, err := nats.Connect("", nats.InProcessServer(n.srv), nats.Token(n.sysToken), nats.Name("moat "+n.cfg.Node+" system"),
		nats.NoCallbacksAfterClientClose())
	if err != nil {
		return false, fmt.Errorf("cluster: the system account is unavailable: %w", err)
	}
	defer sc.Close()
	req, _ := json.Marshal(server.JSApiMetaServerRemoveRequest{Server: name})
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := sc.RequestWithContext(rctx, server.JSApiRemoveServer, req)
	if err != nil {
		// The meta leader answers once a quorum has the removal in its
		// log; a leader that changed meanwhile drops the answer. Applied
		// all the same, the removal shows in the group's members.
		if ctx.Err() == nil && n.metaLeaderOf() != "" && !n.metaMember(name) {
			n.log.Info("cluster: the meta group's answer to the removal was lost; the node is no longer a member", "node", name)
			return true, nil
		}
		return false, fmt.Errorf("cluster: removing %s from the JetStream meta group: %w", name, err)
	}
	var a apiAnswer
	if err := json.Unmarshal(m.Data, &a); err != nil {
		return false, fmt.Errorf("cluster: removing %s from the JetStream meta group: a malformed answer: %w", name, err)
	}
	if a.Error != nil {
		if a.Error.ErrCode == jsErrServerNotMember {
			return false, nil
		}
		return false, fmt.Errorf("cluster: removing %s from the JetStream meta group: %s", name, a.Error.Description)
	}
	return true, nil
}

// metaLeaderOf returns the JetStream meta group's leader as the
// embedded server sees it ("" none).
func (n *Node) metaLeaderOf() string {
	jz, err := n.srv.Jsz(&server.JSzOptions{})
	if err != nil || jz.Meta == nil {
		return ""
	}
	return jz.Meta.Leader
}

// metaMember tells whether name is a member of the JetStream meta group
// as the embedded server sees it.
func (n *Node) metaMember(name string) bool {
	jz, err := n.srv.Jsz(&server.JSzOptions{})
	if err != nil || jz.Meta == nil {
		return true // unknown: as a member
	}
	if jz.Meta.Leader == name {
		return true
	}
	return slices.ContainsFunc(jz.Meta.Replicas, func(p *server.PeerInfo) bool { return p != nil && p.Name == name })
}

// metaHandoverWait bounds the wait for another meta leader after the
// one to be removed was asked to step down.
const metaHandoverWait = 20 * time.Second

// metaHandover asks name, the JetStream meta leader, to hand the lead
// over (to this node by preference) and waits until another node leads.
func (n *Node) metaHandover(ctx context.Context, name string) error {
	sc, err := nats.Connect("", nats.InProcessServer(n.srv), nats.Token(n.sysToken), nats.Name("moat "+n.cfg.Node+" system"),
		nats.NoCallbacksAfterClientClose())
	if err != nil {
		return fmt.Errorf("the system account is unavailable: %w", err)
	}
	defer sc.Close()
	ctx, cancel := context.WithTimeout(ctx, metaHandoverWait)
	defer cancel()
	req, _ := json.Marshal(server.JSApiLeaderStepdownRequest{Placement: &server.Placement{Preferred: n.cfg.Node}})
	asked := time.Time{}
	for {
		leader := n.metaLeaderOf()
		if leader != "" && leader != name {
			n.log.Info("cluster: the node to remove handed the JetStream meta group's lead over", "node", name, "leader", leader)
			return nil
		}
		// Asked again every few seconds: a request may be lost while
		// the group elects, or answered by a refusal.
		if leader == name && time.Since(asked) >= 3*time.Second {
			asked = time.Now()
			rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
			m, err := sc.RequestWithContext(rctx, server.JSApiLeaderStepDown, req)
			rcancel()
			if err == nil {
				var a apiAnswer
				if json.Unmarshal(m.Data, &a) == nil && a.Error != nil {
					n.log.Info("cluster: the meta leader refused to step down", "node", name, "err", a.Error.Description)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("it still leads after %v", metaHandoverWait)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// streamsRemove takes name's copy out of every Moat stream that still
// lists it (the meta group's removal does it too, in the background) and
// returns those streams.
func (n *Node) streamsRemove(ctx context.Context, name string) ([]string, error) {
	n.opsMu.Lock()
	streams := slices.Clone(n.repl.streams)
	n.opsMu.Unlock()
	out := []string{}
	var errs []error
	for _, s := range streams {
		if !slices.ContainsFunc(s.Peers, func(p ReplicaState) bool { return p.Node == name }) {
			continue
		}
		req, _ := json.Marshal(server.JSApiStreamRemovePeerRequest{Peer: name})
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		m, err := n.nc.RequestWithContext(rctx, fmt.Sprintf("$JS.API.STREAM.PEER.REMOVE.%s", s.Name), req)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", s.Name, err))
			continue
		}
		var a apiAnswer
		switch {
		case json.Unmarshal(m.Data, &a) != nil:
			errs = append(errs, fmt.Errorf("stream %s: a malformed answer", s.Name))
		case a.Error == nil:
			out = append(out, s.Name)
		case a.Error.ErrCode == jsErrPeerNotMember:
			// The meta group's removal took it out already.
		default:
			errs = append(errs, fmt.Errorf("stream %s: %s", s.Name, a.Error.Description))
		}
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("cluster: removing %s's copies of the streams: %w", name, errors.Join(errs...))
	}
	return out, nil
}

// clientAuth admits the embedded server's clients: the broker's own
// connections with the per-run token (the global account, where Moat's
// streams live), and, for removing a node, an in-process connection with
// a second per-run token to the system account, the only account NATS
// lets change the JetStream meta group. Both tokens exist only in this
// process's memory; the system token is accepted over the in-process
// pipe only, never on the loopback port, so that even a leaked token
// gives no local process the system account.
type clientAuth struct {
	token, sysToken string
	srv             *server.Server // set before the server starts
}

func newClientAuth(token string) (*clientAuth, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return &clientAuth{token: token, sysToken: hex.EncodeToString(b)}, nil
}

// Check implements server.Authentication.
func (a *clientAuth) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return false
	}
	o := c.GetOpts()
	if o == nil {
		return false
	}
	switch {
	case subtle.ConstantTimeCompare([]byte(o.Token), []byte(a.token)) == 1:
		c.RegisterUser(&server.User{Username: "moat"})
		return true
	case subtle.ConstantTimeCompare([]byte(o.Token), []byte(a.sysToken)) == 1:
		addr := c.RemoteAddress()
		sys := a.srv.SystemAccount()
		if addr == nil || addr.Network() != "pipe" || sys == nil {
			return false
		}
		c.RegisterUser(&server.User{Username: "moat-system", Account: sys})
		return true
	}
	return false
}

// --- the removed node's side

// bucketRemoved holds one record per node removed from the cluster, by
// its name (keyOf), written by the node that removed it. The removal is
// also announced on rmSubject, which a node that is down or cut off
// misses: the record is what a removed node started again finds.
const bucketRemoved = "moat_removed"

// ErrRemoved is wrapped by RemovedErr: this node was removed from its
// cluster and serves nobody. ErrRejoinRefused, which wraps it, means
// that the node learned it at start, on the data directory it had when
// it was removed: the caller should stop.
var (
	ErrRemoved       = errors.New("cluster: this node was removed from the cluster")
	ErrRejoinRefused = fmt.Errorf("%w, and refuses to rejoin", ErrRemoved)
)

// removalRecord is the value of a node's key in bucketRemoved.
type removalRecord struct {
	Node string    `json:"node"`
	By   string    `json:"by"` // the node that removed it
	At   time.Time `json:"at"`
}

// selfRemoval is this node's removal, once it learned of it.
type selfRemoval struct {
	once sync.Once
	done chan struct{} // closed by leaveRemoved
	err  error         // set before done is closed
	// polls counts the reads of this node's stored removal that were
	// answered (watchRemoval).
	polls atomic.Uint64
	// deaf, set by tests before Attach, makes this node miss the
	// announcement of its own removal (rmSubject).
	deaf bool
}

// Removed is closed once this node learned that it was removed from the
// cluster (announced by the node that removed it while this one runs, or
// found at start: see RemovedErr). The broker then refuses every client;
// the caller should stop the node. Safe for concurrent use.
func (n *Node) Removed() <-chan struct{} { return n.rmSelf.done }

// RemovedErr is, once Removed is closed, the removal (wrapping
// ErrRemoved), saying what the operator should do; nil before.
func (n *Node) RemovedErr() error {
	select {
	case <-n.rmSelf.done:
		return n.rmSelf.err
	default:
		return nil
	}
}

// withdrawer is the broker's side of a removal (broker.Server.Withdraw).
type withdrawer interface {
	Withdraw(reason string) int
}

// leaveRemoved makes this node, removed from the cluster, serve nobody:
// its clients are disconnected with DISCONNECT 0x9C (Use another server)
// and new ones refused with CONNACK 0x9C; their sessions belong to the
// nodes left, which adopted them. Logged at Error with what to do.
func (n *Node) leaveRemoved(why error) {
	n.rmSelf.once.Do(func() {
		n.rmSelf.err = fmt.Errorf("%w; it refuses every client and must not rejoin on its data. To bring this host back: stop it, "+
			"remove its data (%s), remove it from the other nodes' cluster.peers and preferably give it a new cluster.node, then start it",
			why, n.storeDesc())
		closed := 0
		if w, ok := n.b.(withdrawer); ok {
			closed = w.Withdraw("this node left the cluster; connect to another node")
		}
		n.log.Error("cluster: this node was removed from the cluster; its clients are sent to the other nodes and new ones refused",
			"err", n.rmSelf.err, "disconnected", closed)
		close(n.rmSelf.done)
	})
}

// storeDesc names the node's JetStream data for the operator.
func (n *Node) storeDesc() string {
	if n.cfg.NATSURL != "" {
		return "nothing here: NATS is external; choose a new cluster.node"
	}
	return n.cfg.StoreDir
}

// storeInUse tells whether dir holds JetStream data of an earlier run
// (the embedded server keeps it under dir/jetstream).
func storeInUse(dir string) bool {
	if dir == "" {
		return false
	}
	entries, err := os.ReadDir(filepath.Join(dir, "jetstream"))
	return err == nil && len(entries) > 0
}

// storeRemoval writes the removal of name to bucketRemoved, creating the
// bucket with as many copies as there are servers left (at most the
// node's), st being the status the removal was decided on.
func (n *Node) storeRemoval(ctx context.Context, name string, st Status) error {
	js, err := jetstream.New(n.nc)
	if err != nil {
		return err
	}
	copies := 1
	for _, p := range st.MetaPeers {
		if p.Node != name && p.Node != n.cfg.Node && !n.isRemoved(p.Node) {
			copies++
		}
	}
	copies = max(1, min(copies, n.replicas))
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucketRemoved)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketRemoved, History: 1, Replicas: copies,
			Storage: jetstream.FileStorage, Description: "Moat nodes removed from the cluster"})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, bucketRemoved)
		}
	}
	if err == nil {
		rec, _ := json.Marshal(removalRecord{Node: name, By: n.cfg.Node, At: n.now().UTC()})
		_, err = kv.Put(ctx, keyOf(name), rec)
	}
	if err != nil {
		return fmt.Errorf("%w: the removal of %s could not be stored in the cluster (%s): %w", ErrRemoveRefused, name, bucketRemoved, err)
	}
	return nil
}

// checkRemovedAtStart looks, before the node takes any session (the
// durable consumer, its sessions' import), for a stored removal of this
// node, trying until the cluster answers. A node removed and started
// again on the data directory it had then refuses to join
// (leaveRemoved) and it reports false. A node started on an empty data
// directory under a removed node's name is a new node: it deletes the
// record (it may restart on its data later) and joins.
func (n *Node) checkRemovedAtStart(js jetstream.JetStream) bool {
	backoff := 100 * time.Millisecond
	for try := 0; ; try++ {
		rec, err := n.readRemoval(js, try)
		switch {
		case err == nil && rec == nil:
			return true
		case err == nil && (n.hadStore || n.cfg.NATSURL != ""):
			n.leaveRemoved(fmt.Errorf("%w: node %s was removed from cluster %s by node %s at %s, and started again on the data it had",
				ErrRejoinRefused, n.cfg.Node, n.cfg.Name, clip(rec.By), rec.At.Format(time.RFC3339)))
			return false
		case err == nil:
			if err = n.forgetRemoval(js, try); err == nil {
				n.log.Warn("cluster: a node of this name was removed from the cluster; this one starts on empty data and joins as a new node",
					"removed_by", clip(rec.By), "removed_at", rec.At)
				return true
			}
		}
		n.log.Info("cluster: waiting to learn whether this node was removed from the cluster", "err", err)
		select {
		case <-n.ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// readRemoval reads this node's record in bucketRemoved: nil when there
// is none (or no bucket: no node was ever removed).
func (n *Node) readRemoval(js jetstream.JetStream, try int) (*removalRecord, error) {
	ctx, cancel := n.setupCtx(try)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucketRemoved)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, keyOf(n.cfg.Node))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rec removalRecord
	if len(e.Value()) > maxHeartbeat || json.Unmarshal(e.Value(), &rec) != nil || rec.Node != n.cfg.Node {
		// Unreadable: fail closed, as a removal.
		return &removalRecord{Node: n.cfg.Node, By: "(an unreadable record)"}, nil
	}
	return &rec, nil
}

// forgetRemoval deletes this node's record in bucketRemoved.
func (n *Node) forgetRemoval(js jetstream.JetStream, try int) error {
	ctx, cancel := n.setupCtx(try)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucketRemoved)
	if err == nil {
		err = kv.Purge(ctx, keyOf(n.cfg.Node))
	}
	return err
}

// --- a removal this node missed

// A live node removed by force hears of it on rmSubject. One that missed
// the announcement (its connection to the others was down at that
// instant, or it was cut off from the node that removed it) would serve
// its clients on: it learns of it from the stored record instead. Every
// heartbeat interval, once its sessions are in use, watchRemoval reads
// this node's key in bucketRemoved with a direct get, answered by any
// copy of the bucket; while no node was ever removed there is no bucket
// and the local server answers at once that nobody listens, so the cost
// is one small request per interval. A record found is read again from
// the bucket's leader before the node withdraws: a copy that lags could
// still answer with the record that a new node of the same name deleted
// when it joined (checkRemovedAtStart). A node cut off from a majority of
// the bucket's copies reads nothing (its leader needs a quorum) and finds
// its removal once it reaches them again.

// removalPollTimeout bounds one read of the stored removal.
const removalPollTimeout = 5 * time.Second

// watchRemoval looks for this node's stored removal every heartbeat
// interval, from the moment its sessions are in use until it is removed
// or stops; on the way it raises the streams' copies to this node's
// number (raiseCopies, copies.go). It ends with the Node's context.
func (n *Node) watchRemoval() {
	select {
	case <-n.ctx.Done():
		return
	case <-n.rmSelf.done:
		return
	case <-n.sess.ready:
	}
	tick := time.NewTicker(n.hbInterval())
	defer tick.Stop()
	raised := false
	for {
		if rec, err := n.pollRemoval(); err != nil {
			n.log.Debug("cluster: the stored removals not read", "err", err)
		} else if rec != nil {
			by, _, _ := strings.Cut(rec.By, "/")
			n.leaveRemoved(fmt.Errorf("%w: node %s was removed from cluster %s by node %s at %s (found in the cluster's record "+
				"of removals: the announcement did not reach this node)", ErrRemoved, n.cfg.Node, n.cfg.Name, clip(by),
				rec.At.Format(time.RFC3339)))
			return
		}
		if !raised {
			raised = n.raiseCopies()
		}
		select {
		case <-n.ctx.Done():
			return
		case <-n.rmSelf.done:
			return
		case <-tick.C:
		}
	}
}

// pollRemoval reads this node's stored removal: nil when there is none,
// or no copy of bucketRemoved answered.
func (n *Node) pollRemoval() (*removalRecord, error) {
	ctx, cancel := context.WithTimeout(n.ctx, removalPollTimeout)
	defer cancel()
	subj := "$KV." + bucketRemoved + "." + keyOf(n.cfg.Node)
	m, err := n.nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET.KV_"+bucketRemoved+"."+subj, nil)
	if errors.Is(err, nats.ErrNoResponders) {
		n.rmSelf.polls.Add(1)
		return nil, nil // no bucket, or no copy of it reachable
	}
	if err != nil {
		return nil, err
	}
	switch status := m.Header.Get("Status"); status {
	case "":
	case "404":
		n.rmSelf.polls.Add(1)
		return nil, nil
	default:
		return nil, fmt.Errorf("a direct get answered with status %s %s", status, m.Header.Get("Description"))
	}
	if kvRemoved(m.Header) {
		n.rmSelf.polls.Add(1)
		return nil, nil
	}
	// Found by a copy: the leader decides.
	rec, err := n.leaderRemoval(ctx, subj)
	if err == nil {
		n.rmSelf.polls.Add(1)
	}
	return rec, err
}

// kvRemoved tells whether a key-value entry's headers mark its key
// deleted or purged.
func kvRemoved(h nats.Header) bool {
	op := h.Get("KV-Operation")
	return op == "DEL" || op == "PURGE"
}

// leaderRemoval reads subj's last record in bucketRemoved from the
// stream's leader (a direct get may be answered by a copy that lags):
// nil when there is none.
func (n *Node) leaderRemoval(ctx context.Context, subj string) (*removalRecord, error) {
	req, _ := json.Marshal(server.JSApiMsgGetRequest{LastFor: subj})
	m, err := n.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.KV_"+bucketRemoved, req)
	if err != nil {
		return nil, err
	}
	var a server.JSApiMsgGetResponse
	if err := json.Unmarshal(m.Data, &a); err != nil {
		return nil, fmt.Errorf("reading the stored removal from the leader: a malformed answer: %w", err)
	}
	if a.Error != nil {
		if a.Error.ErrCode == uint16(server.JSNoMessageFoundErr) || a.Error.ErrCode == uint16(server.JSStreamNotFoundErr) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading the stored removal from the leader: %s", a.Error.Description)
	}
	if a.Message == nil {
		return nil, errors.New("reading the stored removal from the leader: an answer without the record")
	}
	if len(a.Message.Header) > 0 {
		h, err := nats.DecodeHeadersMsg(a.Message.Header)
		if err == nil && kvRemoved(h) {
			return nil, nil
		}
	}
	var rec removalRecord
	if len(a.Message.Data) > maxHeartbeat || json.Unmarshal(a.Message.Data, &rec) != nil || rec.Node != n.cfg.Node {
		// Unreadable: fail closed, as a removal (readRemoval).
		return &removalRecord{Node: n.cfg.Node, By: "(an unreadable record)"}, nil
	}
	return &rec, nil
}
