package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// Key-value bucket names. Each holds one key per MQTT topic or client ID,
// encoded as subject tokens (subject.go), keeping the last value only.
const (
	bucketRetained = "moat_retained"
	bucketClients  = "moat_clients"
)

// kvState is the key-value side of a Node: writes wait in a queue for the
// buckets, written by one writer.
type kvState struct {
	mu       sync.Mutex
	retained jetstream.KeyValue // nil until ready
	clients  jetstream.KeyValue
	// clientsStream is the claims bucket's stream, read without a
	// consumer (claimsOf); nil until first needed.
	clientsStream jetstream.Stream

	// ret and cl are the writes waiting for each bucket: the retained
	// changes, the latest per topic, and the client claims and prunes,
	// the latest per client ID. Each bucket has its own writer, so that
	// a change one bucket cannot take (no leader yet) does not hold up
	// the other's.
	ret, cl kvQueue

	// claims holds, per client ID connected here, the revision of its
	// last claim: a claim of another node with a higher revision takes
	// its connection over.
	claims map[string]uint64
	// seen is the revision of the last claim the watch delivered;
	// unwritten holds, per client ID that connected here and whose claim
	// is not written yet (queued, or waiting to be written again), the
	// seen of its latest connection: a claim of another node past it
	// takes the connection over as well, and the claim is then not
	// written (applyClaim, writeClaim).
	seen      atomic.Uint64
	unwritten map[string]unwrittenClaim
	// failClaim, in tests, fails a claim's write with the error it
	// returns (nil: written).
	failClaim atomic.Pointer[func(clientID string) error]
	// failRetained, in tests, fails a retained change's write the same
	// way; retSeen is the revision of the last retained change the watch
	// delivered.
	failRetained atomic.Pointer[func(topic string) error]
	retSeen      atomic.Uint64
	// ownRet holds, per topic, the revision of this node's last retained
	// change written and not yet delivered by the watch (retainedBehind);
	// only the retained bucket's loop uses it.
	ownRet map[string]uint64
	// watchers holds each bucket's current watch ("claim", "retained"),
	// for tests.
	watchers map[string]jetstream.KeyWatcher

	// retLate is set, by the retained bucket's loop alone, from a write
	// that failed with the bucket unreachable until the queue is empty
	// again: the changes written meanwhile are late, and each is
	// written only if the bucket holds nothing newer of its topic
	// (writeRetainedLate). retFailing tells Close the same.
	retLate    bool
	retFailing atomic.Bool
}

// unwrittenClaim is a claim not written yet: the kvWrite's owner, seen
// and at, whether a write failed with the bucket unreachable (it is then
// written only as writeLateClaim allows), and whether another node's claim
// came after its connection (it is then not written): aside when the
// writer found it in the bucket before the watch delivered it. seen is
// raised past a later claim of another identity that did not take the
// connection over (applyClaim).
type unwrittenClaim struct {
	owner      string
	seen       uint64
	at         time.Time
	failed     bool
	superseded bool
	aside      bool
}

// kvQueue is one bucket's waiting writes, keyed by kvKey; wake signals
// its writer.
type kvQueue struct {
	writes *pendingQueue[string, kvWrite]
	wake   chan struct{}
	// spill keeps the retained queue on disk (spill.go); nil for the
	// claims, and without Config.RetainedSpill.
	spill *retSpill
}

func newKVQueue() kvQueue {
	return kvQueue{writes: newPendingQueue[string, kvWrite](maxPendingWrites, true), wake: make(chan struct{}, 1)}
}

type kvWrite struct {
	retained *broker.Message // a retained change, or
	pub      *broker.StoredPublisher
	clientID string // a claim
	owner    string
	prune    bool // forget clientID's claim (housekeeping.go)
	// seen and at are a claim's kvState.seen and time as its client
	// connected; at is also a prune's time.
	seen uint64
	at   time.Time
	// restored marks a retained change read back from the spill at
	// start: a late write.
	restored bool
}

// kvKey is the queue key of a write: its topic or its client ID. A
// bucket keeps the last value of a key, so only the latest change of one
// waits: a topic set many times while the cluster is unreachable takes one
// place, and a claim and the prune of the same client ID replace each
// other.
func (w kvWrite) kvKey() string {
	if w.retained != nil {
		return "r" + w.retained.Topic
	}
	return "c" + w.clientID
}

// maxPendingWrites bounds, per bucket, the distinct topics or client IDs
// whose change waits for it (a node without quorum). Beyond it the
// oldest change is dropped, logged and counted (Status.WritesDropped):
// the retained message and claims are the cluster's copy of what the
// node keeps itself, and the topic's next change repairs it; the node's
// own retained store keeps serving.
const maxPendingWrites = 100000

// claimRecord is a client-ID claim's value.
type claimRecord struct {
	Node  string `json:"node"` // origin of the claiming node
	Owner string `json:"owner"`
}

func (n *Node) kvs() *kvState {
	n.subMu.Lock()
	defer n.subMu.Unlock()
	if n.kv == nil {
		n.kv = &kvState{ret: newKVQueue(), cl: newKVQueue(), claims: make(map[string]uint64),
			unwritten: make(map[string]unwrittenClaim), watchers: make(map[string]jetstream.KeyWatcher)}
	}
	return n.kv
}

// Retained implements broker.Cluster: the change is written to the
// retained bucket in the background, in order.
func (n *Node) Retained(msg *broker.Message) {
	n.queueWrite(kvWrite{retained: msg, pub: broker.StoredPublisherOf(msg)})
}

// Connected implements broker.Cluster: the claim is written to the client
// bucket in the background. Until it is, it is noted as unwritten: a
// claim of another node that the watch delivers meanwhile came after
// this connection, and takes it over (applyClaim); written after that,
// this claim would take over the other connection in turn, and the
// client ID would be connected nowhere. An earlier connection's claim
// still unwritten is replaced, queued and noted.
func (n *Node) Connected(clientID, owner string) {
	kv := n.kvs()
	w := kvWrite{clientID: clientID, owner: owner, at: time.Now()}
	kv.mu.Lock()
	w.seen = kv.seen.Load() // under the lock: see watchClaims
	kv.unwritten[clientID] = unwrittenClaim{owner: owner, seen: w.seen, at: w.at}
	kv.mu.Unlock()
	n.queueWrite(w)
}

func (n *Node) queueWrite(w kvWrite) { n.enqueue(w, false) }

// enqueue queues w for its bucket's writer; with ifAbsent, only if no
// change of its key waits (one queued since the caller looked is newer).
// It reports whether w was queued.
func (n *Node) enqueue(w kvWrite, ifAbsent bool) bool {
	kv := n.kvs()
	q, what := &kv.cl, "claims"
	if w.retained != nil {
		q, what = &kv.ret, "retained changes"
	}
	push := q.writes.pushEvict
	if ifAbsent {
		push = q.writes.pushIfAbsent
	}
	accepted, dropped := push(w.kvKey(), w)
	if dropped != nil {
		if d := dropped.val; d.retained == nil && !d.prune {
			// A claim dropped unwritten no longer guards its
			// connection (applyClaim).
			kv.mu.Lock()
			if u, ok := kv.unwritten[d.clientID]; ok && u.at.Equal(d.at) {
				delete(kv.unwritten, d.clientID)
			}
			kv.mu.Unlock()
		}
		n.stats.writesDropped.Add(1)
		n.log.Warn("cluster: too many "+what+" waiting for the cluster's key-value store; the oldest was dropped",
			"pending", maxPendingWrites)
	}
	if accepted {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return accepted
}

// kvLoop creates or binds the buckets (retrying until the cluster has a
// JetStream quorum), then runs one loop per bucket: it applies the
// bucket's watch and writes its queued changes. A bucket's writes and
// the application of its watch stay in one goroutine: a claim's revision
// is known (kvState.claims) before a later claim is applied, and this
// node's own purge of a topic is recorded before the watch returns it
// (housekeeping.go).
func (n *Node) kvLoop() {
	kv := n.kvs()
	if kv.ret.spill != nil {
		n.restoreSpilled(kv)
	}
	js, err := jetstream.New(n.nc)
	if err != nil {
		n.log.Error("cluster: JetStream unavailable; retained messages and takeover stay local", "err", err)
		return
	}
	backoff := 100 * time.Millisecond
	waited := false
	var spillWake chan struct{} // nil: no spill
	if kv.ret.spill != nil {
		spillWake = kv.ret.wake
	}
	for try := 0; ; try++ {
		ret, cl, err := n.buckets(js, try)
		if err == nil {
			kv.mu.Lock()
			kv.retained, kv.clients = ret, cl
			kv.mu.Unlock()
			break
		}
		n.log.Info("cluster: waiting for the cluster's key-value store", "err", err)
		waited = true
		wait := time.After(backoff)
	waiting:
		for {
			select {
			case <-n.ctx.Done():
				return
			case <-wait:
				break waiting
			case <-spillWake:
				// Retained changes made before the buckets are
				// reachable go to disk as they come.
				n.syncSpill(&kv.ret)
			}
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	if waited {
		// Changes made while the buckets were unreachable are late
		// (writeRetainedLate), as after a failed write.
		kv.retLate = true
	}
	// The writer starts with a look at its queue: wakes taken while
	// waiting, and the late flag cleared if nothing waits.
	select {
	case kv.ret.wake <- struct{}{}:
	default:
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.bucketLoop(kv, &kv.cl, "claim", func() (jetstream.KeyWatcher, error) {
			return n.watchClaims(kv)
		}, func(e jetstream.KeyValueEntry) {
			if e != nil && e.Revision() > kv.seen.Load() {
				kv.seen.Store(e.Revision())
				n.applyClaim(e)
			}
		})
	}()
	// A watch started again delivers every topic's last value anew:
	// the local cache takes the bucket's, as at start. With the spill,
	// the keys the run's first watch delivers before its first nil entry
	// (the end of the bucket's values) are noted, and the local store is
	// then compared with them (reconcileRetained). Not on a watch started
	// again: its values may come from a copy of the bucket that lags
	// (JetStream places the watch on any copy), which can lack a change
	// this run wrote, and the watch skips this run's own changes when
	// they come, so a change removed there would not come back.
	initial := true
	var delivered map[string]struct{}
	n.bucketLoop(kv, &kv.ret, "retained", func() (jetstream.KeyWatcher, error) {
		w, err := kv.retained.WatchAll(n.ctx)
		if err == nil && initial && kv.ret.spill != nil {
			delivered = make(map[string]struct{})
		}
		return w, err
	}, func(e jetstream.KeyValueEntry) {
		if e != nil {
			if delivered != nil {
				delivered[e.Key()] = struct{}{}
			}
			n.applyRetained(e, delivered != nil)
			kv.retSeen.Store(e.Revision())
			return
		}
		if delivered != nil {
			n.reconcileRetained(kv, delivered)
			delivered = nil
		}
		if initial {
			initial = false
			n.partReady()
			n.log.Info("cluster: key-value store ready", "replicas", n.replicas)
		}
	})
}

// reconcileRetained compares the local retained store with the keys the
// retained watch delivered as the bucket's values (markers included):
// a topic held here that the bucket has neither a value nor a marker of,
// and that waits in no change of this node, is either
//
//   - one this node held before it was a member of the cluster (its
//     first start in it: the spill names no cluster yet, and its
//     JetStream store was empty): it is queued as a late change, written
//     if the bucket holds nothing newer of it, so that a broker that
//     becomes a node brings its retained messages into the cluster
//     (a node that was a member before the spill existed, or one on an
//     external NATS, which cannot tell, leaves such topics alone that
//     once: pushed, one cleared while it was away would come back
//     everywhere); or
//   - one made within the marker's life (less than nine tenths of it
//     ago, by its creation) that no clear's marker follows: a change of
//     this node that never reached the bucket (localRetainedNewer): it
//     is queued as a late change; or
//   - one cleared in the cluster while this node was away for longer
//     than the clear's marker lives (24 h): it is removed here. Before,
//     the node served it until the topic was set or cleared again.
//     Wrongly removed (the watch served by a copy that lags, lacking a
//     topic this node's store holds from an earlier run), it comes back
//     as the copy catches up: only this run's own changes are skipped
//     when the watch delivers them, and a run's first watch comes
//     before any of them.
//
// Topics under '$' are each node's own and are left alone.
func (n *Node) reconcileRetained(kv *kvState, delivered map[string]struct{}) {
	sp := kv.ret.spill
	migrate, keep := false, false
	if sp.member != n.cfg.Name {
		keep = n.hadStore || n.cfg.NATSURL != ""
		migrate = !keep
	}
	var pushed, unsent, removed int
	now := time.Now()
	for _, m := range n.b.RetainedMessages() {
		if _, ok := delivered[topicTokens(m.Topic)]; ok {
			continue
		}
		if _, queued := kv.ret.writes.get("r" + m.Topic); queued {
			continue
		}
		if _, own := kv.ownRet[m.Topic]; own || keep {
			continue
		}
		if migrate {
			if n.enqueue(kvWrite{retained: m, pub: broker.StoredPublisherOf(m), restored: true}, true) {
				pushed++
			}
			continue
		}
		if n.noMarkerTTL.Load() || now.Sub(m.Created) < n.markerTTL()*9/10 {
			// Not cleared since it was made: a clear would have left a
			// marker that still lives. A change of this node that never
			// reached the bucket (see localRetainedNewer).
			if n.enqueue(kvWrite{retained: m, pub: broker.StoredPublisherOf(m), restored: true}, true) {
				unsent++
			}
			continue
		}
		n.b.RetainRemote(&broker.Message{Topic: m.Topic, Retain: true}, nil)
		removed++
	}
	if sp.member != n.cfg.Name {
		if err := sp.setMember(n.cfg.Name); err != nil {
			n.log.Error("cluster: recording that this node's retained store joined the cluster's", "err", err)
		}
	}
	if pushed > 0 {
		n.log.Info("cluster: retained messages this node held before it joined the cluster are written to it", "messages", pushed)
	}
	if unsent > 0 {
		n.log.Info("cluster: retained messages of this node that the cluster never got are written to it", "messages", unsent)
	}
	if removed > 0 {
		n.log.Info("cluster: retained messages cleared in the cluster while this node was away were removed here", "messages", removed)
	}
}

// watchClaims starts the watch of the claims bucket after the last claim
// taken as seen (kvState.seen): every claim past seen is delivered, which
// writeClaim relies on when it sets a claim aside for a later one. Claims
// made before this node started do not concern it: the first watch takes
// the bucket's last revision as seen (the bucket's leader answers), also
// for the claims of connections made before it, and one started again
// resumes after the last claim it applied. (Such a connection's claim,
// written late, is then written over a claim made after it that this
// node never heard of: the older connection stays in place of the newer,
// never both, as writeLateClaim allows.)
func (n *Node) watchClaims(kv *kvState) (jetstream.KeyWatcher, error) {
	seen := kv.seen.Load()
	if seen == 0 {
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		st, err := kv.clients.Status(ctx)
		cancel()
		if err != nil {
			return nil, err
		}
		bs, ok := st.(*jetstream.KeyValueBucketStatus)
		if !ok || bs.StreamInfo() == nil {
			return kv.clients.WatchAll(n.ctx, jetstream.UpdatesOnly())
		}
		last := bs.StreamInfo().State.LastSeq
		var again []kvWrite
		kv.mu.Lock()
		if kv.seen.CompareAndSwap(0, last) {
			for id, u := range kv.unwritten {
				if u.seen >= last {
					continue
				}
				u.seen = last
				if u.aside {
					// Set aside for a claim this watch will not deliver.
					u.superseded, u.aside = false, false
					again = append(again, kvWrite{clientID: id, owner: u.owner, seen: u.seen, at: u.at})
				}
				kv.unwritten[id] = u
			}
		}
		seen = kv.seen.Load()
		kv.mu.Unlock()
		for _, w := range again {
			n.enqueue(w, true)
		}
	}
	return kv.clients.WatchAll(n.ctx, jetstream.ResumeFromRevision(seen+1))
}

// bucketLoop applies one bucket's watch updates and writes its queued
// changes (q) until the node stops. A write that fails with the bucket
// unreachable is tried again every 2 s, with those queued after it. The
// watch (started by watch) is started again when it ends or cannot be
// started, every 2 s until it starts: the watcher's consumer, recreated
// by the client library after a stream's failure, can fail for good, and
// a node without its watch would neither see other nodes' retained
// messages nor be taken over by their clients' connections.
func (n *Node) bucketLoop(kv *kvState, q *kvQueue, what string, watch func() (jetstream.KeyWatcher, error),
	apply func(jetstream.KeyValueEntry)) {
	var w jetstream.KeyWatcher
	defer func() {
		if w != nil {
			_ = w.Stop()
		}
	}()
	var updates <-chan jetstream.KeyValueEntry
	failures := 0 // in a row: the first is logged at Error, the rest at Debug
	start := func() <-chan time.Time {
		var err error
		if w, err = watch(); err != nil {
			w = nil
			if failures++; n.ctx.Err() == nil {
				lvl := slog.LevelError
				if failures > 1 {
					lvl = slog.LevelDebug
				}
				n.log.Log(n.ctx, lvl, "cluster: watching the "+what+" bucket failed; trying again every 2 s", "err", err)
			}
			return time.After(2 * time.Second)
		}
		if failures > 0 {
			n.log.Info("cluster: "+what+" watch started", "failed_tries", failures)
			failures = 0
		}
		updates = w.Updates()
		kv.mu.Lock()
		kv.watchers[what] = w
		kv.mu.Unlock()
		return nil
	}
	rewatch := start()
	var retry <-chan time.Time // while changes wait for a failed write
	for {
		select {
		case <-n.ctx.Done():
			return
		case e, ok := <-updates:
			if !ok {
				n.log.Error("cluster: " + what + " watch ended; starting it again")
				_ = w.Stop()
				w, updates = nil, nil
				rewatch = start()
				continue
			}
			apply(e)
		case <-rewatch:
			rewatch = start()
		case <-q.wake:
			if retry == nil {
				if n.writeQueued(kv, q) {
					retry = time.After(2 * time.Second)
				}
			} else if q.spill != nil {
				// Changes made while the writes fail go to disk as
				// they come (one sync per wake, whatever came since).
				n.syncSpill(q)
			}
		case <-retry:
			retry = nil
			if n.writeQueued(kv, q) {
				retry = time.After(2 * time.Second)
			}
		}
	}
}

// buckets creates or binds both buckets.
func (n *Node) buckets(js jetstream.JetStream, try int) (ret, cl jetstream.KeyValue, err error) {
	ctx, cancel := n.setupCtx(try)
	defer cancel()
	ret, err = n.bucket(ctx, js, jetstream.KeyValueConfig{Bucket: bucketRetained, History: 1,
		Replicas: n.replicas, Storage: jetstream.FileStorage, Description: "Moat retained messages"})
	if err != nil {
		return nil, nil, err
	}
	cl, err = n.bucket(ctx, js, jetstream.KeyValueConfig{Bucket: bucketClients, History: 1,
		Replicas: n.replicas, Storage: jetstream.FileStorage, Description: "Moat client-ID claims"})
	return ret, cl, err
}

// writeQueued writes the changes queued in q, oldest first, and reports
// whether changes are left. A retained change that fails because the
// bucket is unreachable (no quorum, no leader) stays queued, with those
// after it, until the next retry: the cluster's copy of a topic must not
// stay stale because a quorum was briefly lost. So does a claim, and it
// is then written only if no other claim of its client ID came since its
// connection (writeLateClaim). A prune that fails is dropped and
// counted.
func (n *Node) writeQueued(kv *kvState, q *kvQueue) (left bool) {
	if q.spill != nil {
		defer func() {
			if left || len(q.spill.held) > 0 {
				n.syncSpill(q)
			}
		}()
	}
	for n.ctx.Err() == nil {
		c, ok := q.writes.front()
		if !ok {
			if q == &kv.ret {
				kv.retLate = false
				kv.retFailing.Store(false)
			}
			return false
		}
		w := c.val
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		var err error
		switch {
		case w.retained != nil:
			err = n.writeRetained(ctx, kv, w)
		case w.prune:
			kv.mu.Lock()
			if u, ok := kv.unwritten[w.clientID]; ok && !u.at.After(w.at) {
				// Its claim, replaced by the prune (its client gone:
				// a connection it would take over elsewhere is older
				// than the one that ended); not a connection's made
				// since.
				delete(kv.unwritten, w.clientID)
			}
			kv.mu.Unlock()
			n.pruneClaim(ctx, kv, w.clientID)
		default:
			err = n.writeClaim(ctx, kv, w)
		}
		cancel()
		if err != nil && n.ctx.Err() != nil {
			// Stopping: the change stays queued, for the spill
			// (Close).
			return true
		}
		if err != nil && unreachable(err) {
			if w.retained != nil {
				kv.retLate = true
				kv.retFailing.Store(true)
				n.log.Warn("cluster: retained change not stored in the cluster yet; retrying", "topic", w.retained.Topic,
					"waiting", q.writes.len(), "err", err)
			}
			return true
		}
		if err != nil {
			n.stats.writesDropped.Add(1)
		}
		q.writes.done(c)
		if q.spill != nil {
			q.spill.written(w.retained)
		}
	}
	return false
}

// syncSpill copies the retained queue to disk (retSpill.sync). A file
// that cannot be written is logged: the changes still wait in memory.
func (n *Node) syncSpill(q *kvQueue) {
	had := len(q.spill.held)
	if err := q.spill.sync(q.writes, time.Now()); err != nil {
		n.log.Error("cluster: retained changes waiting for the cluster could not be kept on disk; they are lost if the node stops first",
			"err", err)
		return
	}
	switch now := len(q.spill.held); {
	case had == 0 && now > 0:
		n.log.Info("cluster: retained changes waiting for the cluster are kept on disk", "changes", now, "file", n.cfg.RetainedSpill)
	case had > 0 && now == 0:
		n.log.Info("cluster: retained changes kept on disk are all in the cluster or given up; the file is emptied")
		if err := q.spill.shrink(n.cfg.RetainedSpill, n.cfg.RetainedSpillKey); err != nil {
			n.log.Error("cluster: starting the emptied file of retained changes anew", "err", err)
		}
	}
}

// restoreSpilled queues the retained changes a previous run kept on disk
// (retSpill) and puts them in the local store: each is written to the
// bucket as a late change, only if the bucket holds nothing newer of its
// topic (writeRetainedLate); the watch's value of such a topic is not
// applied meanwhile (retainedBehind).
func (n *Node) restoreSpilled(kv *kvState) {
	sp := kv.ret.spill
	ws, bad, err := sp.loadOrSetAside(n.cfg.RetainedSpill, n.cfg.RetainedSpillKey, time.Now(), n.log)
	if err != nil {
		n.log.Error("cluster: the retained changes kept from the last run could not be read; they are not written to the cluster",
			"err", err)
		return
	}
	if bad > 0 {
		n.log.Warn("cluster: unreadable records of retained changes kept from the last run were removed", "records", bad)
	}
	for _, w := range ws {
		n.b.RetainRemote(w.retained, w.pub)
		n.enqueue(w, false)
	}
	_, sp.seq = kv.ret.writes.since(math.MaxUint64)
	if len(ws) > 0 {
		n.log.Info("cluster: retained changes of the last run not yet in the cluster are written once it is reachable", "changes", len(ws))
	}
}

// unreachable tells a failed bucket write that a retry may cure: the
// bucket unreachable (no quorum, no stream leader, a timeout: retryable,
// or JetStream answering that it is unavailable, or a late retained
// change that kept meeting newer records: errLateConflict), not a value
// the bucket refuses.
func unreachable(err error) bool {
	var apiErr *jetstream.APIError
	return retryable(err) || (errors.As(err, &apiErr) && apiErr.Code >= 500) || errors.Is(err, errLateConflict)
}

func (n *Node) writeRetained(ctx context.Context, kv *kvState, w kvWrite) error {
	if kv.retLate || w.restored {
		return n.writeRetainedLate(ctx, kv, w)
	}
	return n.putRetained(ctx, kv, w, 0, false)
}

// putRetained writes the retained change w; with expect, only over the
// topic's record at revision last (0: none).
func (n *Node) putRetained(ctx context.Context, kv *kvState, w kvWrite, last uint64, expect bool) error {
	if len(w.retained.Payload) == 0 {
		return n.purgeRetained(ctx, kv, w.retained.Topic, last)
	}
	val, err := encodeRetained(retainedRecord{origin: n.origin, pub: w.pub, msg: w.retained}, time.Now())
	if errors.Is(err, errExpired) {
		return nil
	}
	if f := kv.failRetained.Load(); err == nil && f != nil {
		err = (*f)(w.retained.Topic)
	}
	var rev uint64
	switch {
	case err != nil:
	case expect:
		rev, err = kv.retained.Update(ctx, topicTokens(w.retained.Topic), val, last)
	default:
		rev, err = kv.retained.Put(ctx, topicTokens(w.retained.Topic), val)
	}
	if err != nil && expect && (isWrongLast(err) || inProcess(err) || errors.Is(err, jetstream.ErrKeyExists)) {
		return err // writeRetainedLate reads the topic again
	}
	if err != nil {
		if !unreachable(err) {
			n.log.Warn("cluster: retained message not stored in the cluster", "topic", w.retained.Topic, "err", err)
		}
		return err
	}
	n.wroteRetained(w.retained.Topic, rev)
	n.stats.retainedOut.Add(1)
	return nil
}

// writeClaim writes the claim w, unless another node's claim came after
// its connection (applyClaim ended the connection then). One that fails
// because the bucket is unreachable is kept (the unreachable error is
// returned, and the writer tries again) until it is written, replaced by
// a newer claim or a prune of its client ID, or dropped as the oldest of
// too many waiting (maxPendingWrites); once it failed, it is written only
// as writeLateClaim allows. Dropped, a connection made while the bucket
// had no leader, or on the minority side of a partition, would neither
// take over the client ID's connection on another node nor be taken
// over by a later one (applyClaim ends a connection only on a later
// revision than its own claim's): one client ID connected on two nodes.
// Written whenever, a late claim would take over a connection the client
// made since on another node.
func (n *Node) writeClaim(ctx context.Context, kv *kvState, w kvWrite) error {
	kv.mu.Lock()
	u, ok := kv.unwritten[w.clientID]
	switch {
	case !ok:
		u = unwrittenClaim{owner: w.owner, seen: w.seen, at: w.at} // not expected: written as before the notes
	case u.at.After(w.at):
		// A newer connection's claim is queued behind this one
		// (Connected): this one is of no use.
		kv.mu.Unlock()
		return nil
	case u.superseded:
		delete(kv.unwritten, w.clientID)
		kv.mu.Unlock()
		n.stats.writesDropped.Add(1)
		n.log.Info("cluster: client claim not stored: the client ID was claimed on another node since", "client", w.clientID)
		return nil
	}
	kv.mu.Unlock()
	if u.at.Equal(w.at) {
		w.seen = max(w.seen, u.seen) // past claims of other identities (applyClaim)
	}
	val, _ := json.Marshal(claimRecord{Node: n.origin, Owner: w.owner})
	var rev uint64
	var err error
	written := true
	if f := kv.failClaim.Load(); f != nil {
		err = (*f)(w.clientID)
	}
	switch {
	case err != nil:
	case u.failed:
		rev, written, err = n.writeLateClaim(ctx, kv, w, val)
	default:
		rev, err = kv.clients.Put(ctx, keyOf(w.clientID), val)
	}
	kv.mu.Lock()
	cur, ok := kv.unwritten[w.clientID]
	mine := ok && cur.at.Equal(w.at) // not replaced by a newer connection's
	if err != nil && unreachable(err) && n.ctx.Err() == nil {
		if mine && !cur.failed {
			cur.failed = true
			kv.unwritten[w.clientID] = cur
		}
		kv.mu.Unlock()
		if !u.failed {
			n.log.Info("cluster: client claim not stored yet; trying again", "client", w.clientID, "err", err)
		}
		return err
	}
	switch {
	case err != nil || written:
		if mine {
			delete(kv.unwritten, w.clientID)
		}
		if err == nil {
			kv.claims[w.clientID] = rev
		}
	case mine:
		// A later claim is in the bucket: once the watch delivers it,
		// it ends this connection (applyClaim), which removes the note.
		cur.superseded, cur.aside = true, true
		kv.unwritten[w.clientID] = cur
	}
	kv.mu.Unlock()
	switch {
	case err != nil:
		n.stats.writesDropped.Add(1)
		n.log.Warn("cluster: client claim not stored; a connection of this client on another node is not taken over",
			"client", w.clientID, "err", err)
	case written:
		n.stats.claims.Add(1)
		if u.failed {
			n.log.Info("cluster: client claim stored late", "client", w.clientID,
				"waited", time.Since(w.at).Round(time.Millisecond).String())
		}
	default:
		// Dropped, or queued again, once the watch delivers the later
		// claim (applyClaim).
		n.log.Debug("cluster: client claim set aside: the client ID was claimed again since", "client", w.clientID)
	}
	return nil
}

// writeLateClaim writes the claim w (value val) that failed before,
// unless another claim of its client ID came after its connection: the
// key's revision past w.seen (the last claim this node had heard of as
// the client connected; a claim it had not heard of yet counts as
// later, which may leave an older connection in place of this one, but
// never two). The key is written only if unchanged since it was read.
// It returns the revision and false when the claim was not written
// (nothing to do); a write that landed before its answer was lost is
// found as this node's claim.
func (n *Node) writeLateClaim(ctx context.Context, kv *kvState, w kvWrite, val []byte) (uint64, bool, error) {
	key := keyOf(w.clientID)
	e, err := kv.clients.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		rev, err := kv.clients.Create(ctx, key, val)
		if errors.Is(err, jetstream.ErrKeyExists) || isWrongLast(err) {
			return 0, false, nil
		}
		return rev, err == nil, err
	case err != nil:
		return 0, false, err
	}
	var c claimRecord
	if json.Unmarshal(e.Value(), &c) == nil && c.Node == n.origin {
		return e.Revision(), true, nil
	}
	if e.Revision() > w.seen {
		return 0, false, nil
	}
	rev, err := kv.clients.Update(ctx, key, val, e.Revision())
	if isWrongLast(err) {
		return 0, false, nil
	}
	return rev, err == nil, err
}

// applyRetained applies another node's retained change to the local
// store, the cluster's cache on this node. Changes arrive in the
// bucket's order, so every node's cache ends with the bucket's last
// value: this node's own changes are in its store already, and another
// node's that comes before one of them in the bucket is not applied
// (retainedBehind).
func (n *Node) applyRetained(e jetstream.KeyValueEntry, first bool) {
	if e.Operation() != jetstream.KeyValuePut {
		n.applyRetainedRemoval(e, first) // a cleared topic (housekeeping.go)
		return
	}
	r, err := decodeRetained(e.Value(), time.Now())
	if err != nil {
		n.stats.decodeErrors.Add(1)
		n.log.Warn("cluster: malformed retained record ignored", "key", clip(e.Key()), "err", err)
		return
	}
	if r.origin == n.origin {
		n.ownRetainedBack(r.msg.Topic, e.Revision())
		return
	}
	if t, err := tokensTopic(e.Key()); err != nil || t != r.msg.Topic {
		n.stats.decodeErrors.Add(1)
		n.log.Warn("cluster: retained record under another topic's key ignored", "key", clip(e.Key()))
		return
	}
	recordCreated(r.msg, e.Created())
	if n.retainedBehind(r.msg.Topic, e.Revision()) || first && n.localRetainedNewer(r.msg.Topic, e.Created(), r.msg) {
		return
	}
	n.stats.retainedIn.Add(1)
	n.b.RetainRemote(r.msg, r.pub)
}

// recordCreated dates a retained message of another node, decoded from
// the bucket, by when its record was written there (written, the
// bucket's leader's clock), rather than by its decoding here: the time
// a restarted node compares with the bucket's records (localRetainedNewer,
// writeRetainedLate). Dated by its decoding, a message applied here after
// a later record of another node was written (the watch lagging) would
// pass for the newer one. Never later than its decoding, so that a
// leader whose clock runs ahead dates nothing into the future.
func recordCreated(m *broker.Message, written time.Time) {
	if !written.IsZero() && written.Before(m.Created) {
		m.Created = written
	}
}

// localRetainedNewer tells, in a run's first replay of the retained
// bucket, whether this node's store holds a message of topic created
// after than (when the bucket's record of the topic, or its clear, was
// written) that is not the record's own message rec (nil for a clear): a
// change of this node's last run that never reached the bucket, made in
// the seconds before its first failed write (the spill holds only what
// waited past that) and gone from memory with the run. It is queued as a
// late change (writeRetainedLate, which keeps a newer record of another
// node) and the bucket's older record is not applied. Before, the older
// record replaced it here, and as it was never written, everywhere.
//
// The store's messages of other nodes are dated by their records
// (recordCreated); this node's own by their creation here, which comes
// before their record's write unless the bucket's leader's clock runs
// behind this node's: the record's own message is recognised as such
// (sameRetained) and not written again. Messages an earlier build
// applied are dated by their application, after their record: the same
// check keeps them from passing for changes of this node.
func (n *Node) localRetainedNewer(topic string, than time.Time, rec *broker.Message) bool {
	m := n.b.RetainedMessage(topic)
	if m == nil || !m.Created.After(than) || rec != nil && sameRetained(m, rec) {
		return false
	}
	n.enqueue(kvWrite{retained: m, pub: broker.StoredPublisherOf(m), restored: true}, true)
	n.log.Info("cluster: this node's retained message is newer than the cluster's record of its topic; written to the cluster unless another node's is newer",
		"topic", topic)
	return true
}

// sameRetained reports whether the store's message m of a topic is the
// bucket's record rec of it: the same payload, QoS and the properties
// that travel with a message (payload format, content type, response
// topic, correlation data, user properties; a change of only these, as
// of a content type, is a change for subscribers; before 2026-12-07 it
// passed for the record). Two changes of a topic to the same message are
// one as far as subscribers go. The publisher is not compared: the
// store does not keep the client ID of a retained message (From is
// empty after a restart), so the record's own message would not be
// recognised.
func sameRetained(m, rec *broker.Message) bool {
	return m.QoS == rec.QoS && bytes.Equal(m.Payload, rec.Payload) && sameCarried(m.Props, rec.Props)
}

// sameCarried compares the properties that travel with a message; absent
// and empty are the same (a store gives back a payload format of 0 where
// the publisher sent none).
func sameCarried(a, b *packet.Properties) bool {
	var none packet.Properties
	if a == nil {
		a = &none
	}
	if b == nil {
		b = &none
	}
	return a.PayloadFormat == b.PayloadFormat && a.ContentType == b.ContentType && a.ResponseTopic == b.ResponseTopic &&
		bytes.Equal(a.CorrelationData, b.CorrelationData) && slices.Equal(a.User, b.User)
}

// wroteRetained notes the revision of this node's retained change of
// topic, written to the bucket; the watch has yet to deliver it. Only the
// retained bucket's loop calls it, as it does retainedBehind and
// ownRetainedBack.
func (n *Node) wroteRetained(topic string, rev uint64) {
	kv := n.kv
	if kv.ownRet == nil || len(kv.ownRet) >= maxOwnPurges {
		// Notes leave as the watch delivers the topic's next change;
		// one whose change never comes back (a watch started again
		// after a later change) must not make the map grow forever.
		kv.ownRet = make(map[string]uint64)
	}
	kv.ownRet[topic] = rev
}

// ownRetainedBack forgets the note of this node's change of topic once
// the watch delivers it.
func (n *Node) ownRetainedBack(topic string, rev uint64) {
	if r, ok := n.kv.ownRet[topic]; ok && r <= rev {
		delete(n.kv.ownRet, topic)
	}
}

// retainedBehind reports whether another node's change of topic at
// revision rev is to be left out of the local store, which holds a
// change of this node's that will be the bucket's later value: one
// written at a later revision (the watch delivers it next), or one that
// waits to be written (the bucket unreachable when it was tried). The
// store would otherwise take the other's change and then skip its own as
// it comes back.
func (n *Node) retainedBehind(topic string, rev uint64) bool {
	kv := n.kv
	if r, ok := kv.ownRet[topic]; ok {
		if r > rev {
			n.log.Debug("cluster: another node's retained change not applied: this node's later change is in the bucket", "topic", clip(topic))
			return true
		}
		delete(kv.ownRet, topic)
	}
	if _, queued := kv.ret.writes.get("r" + topic); queued {
		n.log.Debug("cluster: another node's retained change not applied: this node's change of the topic waits to be written", "topic", clip(topic))
		return true
	}
	return false
}

// applyClaim takes over the local connection of a client that connected
// on another node after it connected here. A connection the broker keeps
// because the claim is of another identity (Server.TakeoverRemote) keeps
// its claim too: a later claim of its own identity still ends it, and a
// claim of it not written yet is still written, to end an earlier
// connection of its identity on a third node. Dropped, both would stay.
func (n *Node) applyClaim(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		return
	}
	var c claimRecord
	if err := json.Unmarshal(e.Value(), &c); err != nil || c.Node == n.origin {
		return
	}
	id, err := keyString(e.Key())
	if err != nil {
		return
	}
	kv := n.kv
	kv.mu.Lock()
	rev, stored := kv.claims[id]
	later := stored && rev < e.Revision()
	u, unwritten := kv.unwritten[id]
	if unwritten {
		// The latest connection here, whose claim is not written yet:
		// a claim after it ends it. An earlier connection's stored
		// claim says nothing of this one.
		later = u.seen < e.Revision()
	}
	kv.mu.Unlock()
	var taken, refused bool
	if later {
		taken, refused = n.b.TakeoverRemote(id, c.Owner)
	}
	// The watch and the writes share this goroutine: the writer has not
	// moved since, only a new connection (Connected) may have.
	kv.mu.Lock()
	if stored && rev < e.Revision() && !refused && kv.claims[id] == rev {
		delete(kv.claims, id)
	}
	cur, still := kv.unwritten[id]
	still = still && unwritten && cur.at.Equal(u.at)
	var again *kvWrite
	dropped := false
	switch {
	case !still || !later:
		// Replaced by a newer connection, or delivered as the client
		// connected: older than it.
	case refused && cur.superseded && !cur.aside:
		// An earlier claim took the connection over; it is ending.
	case refused:
		// Written only past this claim (writeLateClaim): raise seen.
		// One the writer set aside for this claim waits again.
		cur.seen = max(cur.seen, e.Revision())
		if cur.aside {
			cur.superseded, cur.aside = false, false
			if _, queued := kv.cl.writes.get("c" + id); !queued {
				again = &kvWrite{clientID: id, owner: cur.owner, seen: cur.seen, at: cur.at}
			}
		}
		kv.unwritten[id] = cur
	case cur.superseded:
		// The writer found a later claim (writeLateClaim) and waited
		// for it: the note goes, unless the claim is queued again.
		if w, queued := kv.cl.writes.get("c" + id); !queued || w.prune || !w.at.Equal(cur.at) {
			delete(kv.unwritten, id)
			dropped = true
		}
	default:
		// Not written now (writeClaim).
		cur.superseded = true
		kv.unwritten[id] = cur
	}
	kv.mu.Unlock()
	if again != nil {
		// Not if a prune or a newer connection's claim was queued
		// since: the writer removes this note as it takes either.
		n.enqueue(*again, true)
	}
	if taken {
		n.stats.takeovers.Add(1)
		n.log.Info("cluster: connection taken over by another node", "client", id, "node", strings.SplitN(c.Node, "/", 2)[0])
	}
	if dropped {
		n.stats.writesDropped.Add(1)
		n.log.Info("cluster: client claim not stored late: the client ID was claimed again since", "client", id)
	}
}

func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}
