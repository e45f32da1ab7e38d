package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Security state shared by the nodes (docs/cluster.md, "Security state").
// The cluster carries it; the caller (moat serve) gives it meaning, so
// this package knows nothing of bans, policies or certificates:
//
//   - Bans: the bucket moat_bans, one key per ban ID, holding an opaque
//     record. Any node sets and lifts bans; every node applies the others'
//     changes (Security.BanSet, BanLifted). A lifted ban stays as a
//     tombstone for tombstoneAge, so that a node that was down learns of
//     it.
//   - Shared files: the bucket moat_files, one key per file name (the
//     access policy and password files), holding the file's content. A
//     node that changed such a file puts it; the others write it to their
//     file of that name (Security.FileSet).
//   - Revocations: the bucket moat_revocations, one key per issuer and
//     node, holding that node's latest certificate revocation list of that
//     issuer (RevocationHandler.Revocations, when the Security implements
//     it). A node that was down, partitioned or not yet started reads
//     every list at start-up or when it rejoins, and every node reads
//     them whole every revocationReread besides the watch: revocations
//     are final, so they must not depend on being connected at the right
//     moment.
//   - Events: core NATS subjects moat.sec.<kind>, delivered to the nodes
//     connected at that moment (Security.Event): re-evaluations of the
//     live clients after a revocation or a removed password.
//
// Every record names the node that wrote it, for the audit log of the
// nodes that apply it. A node never applies its own changes again (its
// records carry its boot ID), except those of an earlier run, which its
// Security sees once more at start-up.
//
// Changes of a ban or a file that wait for the buckets (the cluster
// unreachable) meet the other nodes' changes of the same key by time
// (ownWaitingNewer), and a change the watch delivers after this node's
// later write of its key is not applied (secState.revFloor): every node
// ends with the version the bucket ends with.

// Bucket names and the events' subject prefix.
const (
	bucketBans        = "moat_bans"
	bucketFiles       = "moat_files"
	bucketRevocations = "moat_revocations"
	eventPrefix       = "moat.sec."
)

// MaxRevocationList is the largest revocation list (DER) PutRevocations
// accepts: about 100,000 revoked serials. The bucket refuses larger
// values (its maximum value size allows for the record's encoding), so
// that one node cannot fill the other nodes' memory with one list.
const MaxRevocationList = 4 << 20

// revocationReread is how often the revocation lists are read whole
// besides the watch; maxRevocationKeys bounds the lists read and
// remembered.
const (
	revocationReread  = 5 * time.Second
	maxRevocationKeys = 4096
)

// maxRevocationValue is the bucket's maximum value size: a list of
// MaxRevocationList in its record (base64 and JSON).
const maxRevocationValue = MaxRevocationList/3*4 + 4096

// tombstoneAge is how long a lifted ban's tombstone stays in the bucket:
// a node down for longer comes back with the bans of its own ban list,
// which it then sets again.
const tombstoneAge = 30 * 24 * time.Hour

// Security receives the security changes other nodes made. Its methods
// are called from one goroutine of the Node, one at a time, in the order
// of the changes; they may block briefly (a file written, a re-evaluation).
// origin is the node's name (Config.Node).
type Security interface {
	// BanSet reports a ban record set by origin under id.
	BanSet(origin, id string, rec []byte)
	// BanLifted reports that origin lifted the ban id.
	BanLifted(origin, id string)
	// FileSet reports that origin changed the shared file name to data at
	// the time at (origin's clock).
	FileSet(origin, name string, data []byte, at time.Time)
	// Synced is called once, after the buckets' contents at start-up were
	// reported: bans and files hold every key the buckets know (bans set
	// or lifted), so that the node can put what only it knows.
	Synced(bans, files map[string]bool)
	// Event reports an event of origin (PublishEvent).
	Event(origin, kind string, data []byte)
}

// RevocationHandler is implemented by a Security that takes certificate
// revocations from the cluster. Revocations reports origin's latest
// revocation list of issuer (PutRevocations): at start-up every list the
// bucket holds (before Synced), then every change. A list replaces the
// earlier one of the same origin and issuer; those of different origins
// add up. Called like Security's methods, one at a time.
type RevocationHandler interface {
	Revocations(origin, issuer string, list []byte)
}

// FileStoredHandler is implemented by a Security that keeps track of the
// version of each shared file the cluster holds: FileStored reports that
// this node's change of the shared file name (PutFile) is now stored in
// the cluster, as FileSet reports the other nodes'. A change that waited
// for an unreachable cluster is reported once it is stored, never before.
// Called like Security's methods, one at a time.
type FileStoredHandler interface {
	FileStored(name string, data []byte)
}

// LiftStoredHandler is implemented by a Security that keeps the bans it
// lifted until the cluster has the lift: LiftStored reports that this
// node's lift of the ban id (LiftBan) is stored. Called like Security's
// methods, one at a time.
type LiftStoredHandler interface {
	LiftStored(id string)
}

// secRecord is the value of a key in the security buckets.
type secRecord struct {
	Node   string    `json:"node"`
	Boot   string    `json:"boot"` // Node.origin: this run of that node
	At     time.Time `json:"at"`
	Lifted bool      `json:"lifted,omitempty"` // a ban's tombstone
	Data   []byte    `json:"data,omitempty"`
}

// secKey is the key of a queued change: its bucket and key there.
type secKey struct{ bucket, key string }

// maxPendingSecurity bounds the distinct keys (bans, files) whose change
// waits for the security buckets while they are unreachable. Changes of
// one key replace each other, so only that many different bans and files
// changed during one outage count. Beyond it a new change is refused,
// with an error to its caller (ErrSecurityBacklog), never dropped: a
// dropped ban or lift would silently never reach the other nodes.
const maxPendingSecurity = 10000

// MaxPendingSecurity is maxPendingSecurity, for the caller's own records
// of what waits.
const MaxPendingSecurity = maxPendingSecurity

// TombstoneAge is how long a lifted ban's tombstone stays in the bucket
// (tombstoneAge).
const TombstoneAge = tombstoneAge

// ErrSecurityBacklog means that a security change was refused for the
// cluster: the key-value store has been unreachable so long that the
// maximum of distinct changes already waits for it. The change holds on
// the node that made it only; its caller reports it, and may make it
// again once the store is back.
var ErrSecurityBacklog = errors.New("cluster unreachable")

// secState is the security side of a Node.
type secState struct {
	h      Security          // set before Attach; nil: no security state
	rev    RevocationHandler // h, when it takes revocations
	stored FileStoredHandler // h, when it tracks the stored files
	lifts  LiftStoredHandler // h, when it tracks the stored lifts

	writes *pendingQueue[secKey, secRecord]
	// revFloor holds, per key, the first revision the watch may still
	// apply, until it delivers that revision or a later one:
	//   - after this node's write of the key, its revision: another
	//     node's change delivered after it with an earlier revision is
	//     already overwritten in the bucket by this node's, and is not
	//     applied (before, a node could apply such a change while every
	//     other node applied its own later one);
	//   - after a shared file's record read from the leader at start-up
	//     (applyFile), the revision after it: the watch, answered by a
	//     copy of the bucket that lags, delivers the older records as
	//     that copy catches up, which must not replace the newer one.
	// Used by the security loop only.
	revFloor   map[secKey]uint64
	refusedLog rateLog // the refusals' log lines
	wake       chan struct{}
	events     chan *nats.Msg
	sub        *nats.Subscription

	// mu guards watchers, each bucket's current watch ("ban", "shared
	// file", "revocation"), for tests; failWatch, in tests, fails the
	// start of a watch with the error it returns (nil: started).
	mu        sync.Mutex
	watchers  map[string]jetstream.KeyWatcher
	failWatch atomic.Pointer[func(what string) error]
	// failWrite, in tests, fails the write of a change of key with the
	// error it returns (nil: written).
	failWrite atomic.Pointer[func(key string) error]
}

// SetSecurity makes h receive the other nodes' security changes. Call it
// once, before Attach; without it the Node carries no security state.
func (n *Node) SetSecurity(h Security) {
	n.sec.h = h
	n.sec.rev, _ = h.(RevocationHandler)
	n.sec.stored, _ = h.(FileStoredHandler)
	n.sec.lifts, _ = h.(LiftStoredHandler)
}

// PutBan sets the ban record rec under id, cluster-wide, in the
// background. An error (ErrSecurityBacklog) means the change was refused
// and does not reach the other nodes.
func (n *Node) PutBan(id string, rec []byte) error {
	return n.queueSec(secKey{bucketBans, keyOf(id)}, secRecord{Data: rec})
}

// LiftBan lifts the ban id cluster-wide, in the background; errors as for
// PutBan.
func (n *Node) LiftBan(id string) error {
	return n.queueSec(secKey{bucketBans, keyOf(id)}, secRecord{Lifted: true})
}

// PutFile sets the shared file name to data cluster-wide, in the
// background; errors as for PutBan.
func (n *Node) PutFile(name string, data []byte) error {
	return n.queueSec(secKey{bucketFiles, keyOf(name)}, secRecord{Data: data})
}

// PutRevocations sets this node's revocation list of issuer (an ID the
// caller derives from the issuer's name, letters, digits, '-' and '_')
// to list, cluster-wide, in the background; errors as for PutBan. Every
// node keeps its own list of each issuer under its own key, so that two
// nodes revoking at the same moment (or on both sides of a partition)
// never overwrite each other's revocations.
func (n *Node) PutRevocations(issuer string, list []byte) error {
	if issuer == "" || strings.ContainsAny(issuer, ".*> \t\r\n\x00") {
		return errors.New("cluster: invalid revocation issuer")
	}
	if len(list) > MaxRevocationList {
		return fmt.Errorf("cluster: revocation list of %d bytes is larger than the maximum of %d", len(list), MaxRevocationList)
	}
	return n.queueSec(secKey{bucketRevocations, revocationKey(issuer, n.cfg.Node)}, secRecord{Data: list})
}

// revocationKey is the bucket key of node's list of issuer.
func revocationKey(issuer, node string) string { return keyOf(issuer + "\x00" + node) }

// SecurityRoom tells whether a security change of a new key would be
// accepted now (fewer than the maximum wait for the buckets). Safe for
// concurrent use.
func (n *Node) SecurityRoom() bool { return n.sec.writes.len() < n.sec.writes.limit }

// PublishEvent sends an event of kind (letters, digits, '-' and '_') to
// the nodes connected now; this node does not receive it.
func (n *Node) PublishEvent(kind string, data []byte) error {
	if kind == "" || strings.ContainsAny(kind, ".*> \t\r\n") {
		return errors.New("cluster: invalid event kind")
	}
	m := &nats.Msg{Subject: eventPrefix + kind, Data: data, Header: nats.Header{}}
	m.Header[hdrOrigin] = []string{n.origin}
	m.Header.Set("Moat-Node", n.cfg.Node)
	return n.nc.PublishMsg(m)
}

// queueSec queues a change for the security buckets. A change of a key
// already waiting replaces it (the bucket keeps the last value only); a
// new key beyond maxPendingSecurity is refused, logged and counted.
func (n *Node) queueSec(k secKey, rec secRecord) error {
	rec.Node, rec.Boot, rec.At = n.cfg.Node, n.origin, time.Now()
	s := &n.sec
	if ok, _ := s.writes.push(k, rec); !ok {
		pending := s.writes.len()
		n.stats.secRefused.Add(1)
		// One line per interval: a detector banning thousands of
		// addresses during an outage must not flood the log; each
		// caller gets its error.
		if ok, suppressed := s.refusedLog.allow(time.Now(), forwardLogEvery); ok {
			n.log.Error("cluster: security change refused: the cluster's key-value store is unreachable and too many changes wait for it; "+
				"it holds on this node only", "bucket", k.bucket, "key", clip(k.key), "pending", pending, "refused_not_logged", suppressed)
		}
		return fmt.Errorf("%w: %d security changes pending; not applied cluster-wide", ErrSecurityBacklog, pending)
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// attachSecurity subscribes to the events and starts the security loop,
// when a Security is set.
func (n *Node) attachSecurity() {
	s := &n.sec
	if s.h == nil {
		return
	}
	sub, err := n.nc.ChanSubscribe(eventPrefix+">", s.events)
	if err != nil {
		n.log.Error("cluster: subscribing to the security events failed; revocations and removed passwords on other nodes are not acted on here", "err", err)
	} else {
		_ = sub.SetPendingLimits(-1, -1)
		s.sub = sub
	}
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.securityLoop() }()
}

// securityLoop binds the buckets (retrying until the cluster has a
// JetStream quorum), reports their contents, then their changes, the
// events and the queued writes.
func (n *Node) securityLoop() {
	s := &n.sec
	js, err := jetstream.New(n.nc)
	if err != nil {
		n.log.Error("cluster: JetStream unavailable; security state stays local", "err", err)
		return
	}
	var kvs secBuckets
	backoff := 100 * time.Millisecond
	for try := 0; ; try++ {
		kvs, err = n.secBuckets(js, try)
		if err == nil {
			break
		}
		n.log.Info("cluster: waiting for the cluster's key-value store (security state)", "err", err)
		select {
		case <-n.ctx.Done():
			return
		case m := <-s.events:
			n.applyEvent(m) // events need no quorum
			continue
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	// Each watch is started again when it ends or cannot start (every
	// 2 s), as the retained and claims buckets' are (bucketLoop): before,
	// a watch that failed to start ended this loop, and the node never
	// applied another node's ban, file or revocation list, never wrote
	// its own queued changes, and never got in sync. A watch started
	// again delivers every value anew; applying one twice changes
	// nothing (the Security's calls are idempotent, revocation lists
	// are deduplicated by revision).
	bw := secWatch{what: "ban", kv: kvs.bans}
	fw := secWatch{what: "shared file", kv: kvs.files}
	rw := secWatch{what: "revocation", kv: kvs.revocations}
	for _, w := range []*secWatch{&bw, &fw, &rw} {
		n.startSecWatch(w)
		defer w.stop()
	}
	// The keys of the initial snapshots, until all are done.
	banKeys, fileKeys := map[string]bool{}, map[string]bool{}
	bansInit, filesInit, revInit := true, true, true
	synced := func() {
		if !bansInit && !filesInit && !revInit && banKeys != nil {
			s.h.Synced(banKeys, fileKeys)
			n.log.Info("cluster: security state in sync", "bans", len(banKeys), "files", len(fileKeys))
			banKeys, fileKeys = nil, nil
		}
	}
	purge := time.NewTicker(time.Hour)
	defer purge.Stop()
	// The revocation lists are also read whole every revocationReread:
	// a list a watch missed (a node that joined while the bucket's
	// leader changed) is applied within that time all the same.
	reread := time.NewTicker(revocationReread)
	defer reread.Stop()
	revSeen := map[string]uint64{} // key → revision reported
	var retry <-chan time.Time     // while changes wait for a failed write
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-bw.again:
			n.startSecWatch(&bw)
		case <-fw.again:
			n.startSecWatch(&fw)
		case <-rw.again:
			n.startSecWatch(&rw)
		case e, ok := <-bw.updates:
			if !ok {
				n.restartSecWatch(&bw)
				continue
			}
			if e == nil {
				bansInit = false
				synced()
				continue
			}
			if id, err := keyString(e.Key()); err == nil {
				if bansInit {
					banKeys[id] = true
				}
				if !n.superseded(bucketBans, e) {
					n.applyBan(id, e)
				}
			}
		case e, ok := <-fw.updates:
			if !ok {
				n.restartSecWatch(&fw)
				continue
			}
			if e == nil {
				filesInit = false
				synced()
				continue
			}
			if name, err := keyString(e.Key()); err == nil {
				if filesInit {
					fileKeys[name] = true
				}
				if !n.superseded(bucketFiles, e) {
					n.applyFile(name, e, filesInit)
				}
			}
		case e, ok := <-rw.updates:
			if !ok {
				n.restartSecWatch(&rw)
				continue
			}
			if e == nil {
				// And once read whole, before the node is in sync.
				n.rereadRevocations(kvs.revocations, revSeen)
				revInit = false
				synced()
				continue
			}
			n.applyRevocations(e, revSeen)
		case <-reread.C:
			n.rereadRevocations(kvs.revocations, revSeen)
		case m := <-s.events:
			n.applyEvent(m)
		case <-s.wake:
			if retry == nil && n.writeSec(kvs) {
				retry = time.After(2 * time.Second)
			}
		case <-retry:
			retry = nil
			if n.writeSec(kvs) {
				retry = time.After(2 * time.Second)
			}
		case <-purge.C:
			n.purgeTombstones(kvs.bans)
		}
	}
}

// secWatch is the watch of one security bucket, started again by the
// security loop when it ends or cannot start.
type secWatch struct {
	what     string
	kv       jetstream.KeyValue
	w        jetstream.KeyWatcher
	updates  <-chan jetstream.KeyValueEntry // nil while not started
	again    <-chan time.Time               // the next try to start it
	failures int                            // in a row
}

// startSecWatch starts w's watch, or schedules the next try in 2 s: the
// first failure in a row is logged at Error, the next at Debug (a long
// loss of quorum logs one Error), a start after failures at Info.
func (n *Node) startSecWatch(w *secWatch) {
	var kw jetstream.KeyWatcher
	var err error
	if f := n.sec.failWatch.Load(); f != nil {
		err = (*f)(w.what)
	}
	if err == nil {
		kw, err = w.kv.WatchAll(n.ctx)
	}
	if err != nil {
		w.updates, w.again = nil, time.After(2*time.Second)
		if w.failures++; n.ctx.Err() == nil {
			lvl := slog.LevelError
			if w.failures > 1 {
				lvl = slog.LevelDebug
			}
			n.log.Log(n.ctx, lvl, "cluster: watching the "+w.what+" bucket failed; trying again every 2 s", "err", err)
		}
		return
	}
	if w.failures > 0 {
		n.log.Info("cluster: "+w.what+" watch started", "failed_tries", w.failures)
		w.failures = 0
	}
	w.w, w.updates, w.again = kw, kw.Updates(), nil
	n.sec.mu.Lock()
	if n.sec.watchers == nil {
		n.sec.watchers = make(map[string]jetstream.KeyWatcher)
	}
	n.sec.watchers[w.what] = kw
	n.sec.mu.Unlock()
}

// restartSecWatch starts a watch that ended again.
func (n *Node) restartSecWatch(w *secWatch) {
	n.log.Error("cluster: " + w.what + " watch ended; starting it again")
	w.stop()
	n.startSecWatch(w)
}

func (w *secWatch) stop() {
	if w.w != nil {
		_ = w.w.Stop()
		w.w = nil
	}
}

// secBuckets are the security state's buckets.
type secBuckets struct{ bans, files, revocations jetstream.KeyValue }

func (b secBuckets) of(bucket string) jetstream.KeyValue {
	switch bucket {
	case bucketFiles:
		return b.files
	case bucketRevocations:
		return b.revocations
	}
	return b.bans
}

// secBuckets creates or binds the buckets. Like every JetStream file of
// the node, they are encrypted at rest with the node's store key.
func (n *Node) secBuckets(js jetstream.JetStream, try int) (b secBuckets, err error) {
	ctx, cancel := n.setupCtx(try)
	defer cancel()
	b.bans, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketBans, History: 1,
		Replicas: n.replicas, Storage: jetstream.FileStorage, Description: "Moat ban list"})
	if err != nil {
		return b, err
	}
	b.files, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketFiles, History: 1,
		Replicas: n.replicas, Storage: jetstream.FileStorage, Description: "Moat access policy and password files"})
	if err != nil {
		return b, err
	}
	// One list per issuer and node, each bounded: a node cannot make the
	// others hold more than one list of MaxRevocationList per key.
	b.revocations, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketRevocations, History: 1,
		Replicas: n.replicas, Storage: jetstream.FileStorage, MaxValueSize: maxRevocationValue,
		Description: "Moat certificate revocation lists, per issuer and node"})
	return b, err
}

// writeSec writes the queued changes, oldest first. When one fails
// because the buckets are unreachable (no quorum: a partition, two nodes
// down) it and those after it stay queued and are tried again at the
// next retry: a ban or a policy must not be lost because the cluster was
// briefly unreachable. A change the bucket refuses outright is logged at
// Error and counted (Status.SecurityRefused). It reports whether changes
// are left.
func (n *Node) writeSec(kvs secBuckets) (left bool) {
	q := n.sec.writes
	for {
		c, ok := q.front()
		if !ok {
			return false
		}
		kv := kvs.of(c.key.bucket)
		val, err := json.Marshal(c.val)
		var rev uint64
		if f := n.sec.failWrite.Load(); err == nil && f != nil {
			err = (*f)(c.key.key)
		}
		if err == nil {
			ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
			rev, err = kv.Put(ctx, c.key.key, val)
			cancel()
		}
		if err != nil && !unreachable(err) && n.ctx.Err() == nil {
			// A value the bucket refuses (larger than the NATS server's
			// maximum payload) is never stored: it must not hold up
			// every change behind it.
			n.stats.secRefused.Add(1)
			n.log.Error("cluster: security change refused by the cluster's key-value store; it holds on this node only",
				"bucket", c.key.bucket, "key", clip(c.key.key), "size", len(val), "err", err)
			q.done(c)
			continue
		}
		if err != nil {
			if n.ctx.Err() == nil {
				n.log.Warn("cluster: security change not stored in the cluster yet; retrying", "bucket", c.key.bucket,
					"key", clip(c.key.key), "waiting", q.len(), "err", err)
			}
			return true
		}
		n.sec.revFloor[c.key] = rev
		switch {
		case c.key.bucket == bucketFiles && n.sec.stored != nil:
			if name, err := keyString(c.key.key); err == nil {
				n.sec.stored.FileStored(name, c.val.Data)
			}
		case c.key.bucket == bucketBans && c.val.Lifted && n.sec.lifts != nil:
			if id, err := keyString(c.key.key); err == nil {
				n.sec.lifts.LiftStored(id)
			}
		}
		q.done(c)
	}
}

// decodeSec decodes a bucket entry; ok is false for a deletion, a purge,
// a malformed record and this run's own.
func (n *Node) decodeSec(e jetstream.KeyValueEntry) (r secRecord, ok bool) {
	if e.Operation() != jetstream.KeyValuePut {
		return r, false
	}
	if err := json.Unmarshal(e.Value(), &r); err != nil || r.Node == "" {
		n.stats.decodeErrors.Add(1)
		n.log.Warn("cluster: malformed security record ignored", "key", clip(e.Key()))
		return r, false
	}
	return r, r.Boot != n.origin
}

// ownWaitingNewer tells whether this node has a change of key waiting
// for bucket that is newer than r, another node's change delivered by
// the watch (or an earlier run's): r is not applied, and this node's
// change, written after it, replaces it in the bucket. A waiting change
// older than r is dropped, and r applied: otherwise the node would apply
// r and then overwrite it in the bucket with its older change, and keep
// a version no other node has. Times are the nodes' clocks, as for every
// last-writer-wins choice of the security state.
func (n *Node) ownWaitingNewer(bucket, key string, r secRecord) bool {
	c, ok := n.sec.writes.change(secKey{bucket, key})
	if !ok {
		return false
	}
	if !r.At.After(c.val.At) {
		return true
	}
	n.sec.writes.done(c)
	n.log.Info("cluster: a security change waiting for the cluster is older than another node's; the other node's is applied",
		"bucket", bucket, "key", clip(key), "origin_node", r.Node)
	return false
}

func (n *Node) applyBan(id string, e jetstream.KeyValueEntry) {
	r, ok := n.decodeSec(e)
	if !ok || n.ownWaitingNewer(bucketBans, e.Key(), r) {
		return
	}
	if r.Lifted {
		n.sec.h.BanLifted(r.Node, id)
	} else {
		n.sec.h.BanSet(r.Node, id, r.Data)
	}
}

// superseded tells whether e, a change of bucket, comes before its key's
// revision floor (secState.revFloor): a newer record of the key is in
// force here already, so e is not applied.
func (n *Node) superseded(bucket string, e jetstream.KeyValueEntry) bool {
	k := secKey{bucket, e.Key()}
	floor, ok := n.sec.revFloor[k]
	if !ok {
		return false
	}
	if e.Revision() < floor {
		return true
	}
	delete(n.sec.revFloor, k)
	return false
}

// applyFile reports a shared file's change. In the first replay (init),
// the file's record is read from the bucket's leader: the replay may come
// from this node's copy of the bucket, which lags after the node was
// stopped, and the Security decides at start-up whether this node's
// version is newer than the cluster's (the watch delivers the newer
// record later; reporting it twice changes nothing).
func (n *Node) applyFile(name string, e jetstream.KeyValueEntry, init bool) {
	r, ok := n.decodeSec(e)
	if init {
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		last, err := n.leaderLast(ctx, "KV_"+bucketFiles, "$KV."+bucketFiles+"."+e.Key())
		cancel()
		if err == nil && last.Sequence > e.Revision() {
			n.sec.revFloor[secKey{bucketFiles, e.Key()}] = last.Sequence + 1
			if last.Header.Get("KV-Operation") != "" {
				return
			}
			if err := json.Unmarshal(last.Data, &r); err != nil || r.Node == "" {
				n.stats.decodeErrors.Add(1)
				n.log.Warn("cluster: malformed security record ignored", "key", clip(e.Key()))
				return
			}
			ok = r.Boot != n.origin
		}
	}
	if ok && !r.Lifted && !n.ownWaitingNewer(bucketFiles, e.Key(), r) {
		n.sec.h.FileSet(r.Node, name, r.Data, r.At)
	}
}

// applyRevocations reports a revocation list of the bucket, when the
// Security takes them. The list's size is bounded by the bucket; the
// issuer and node come from the key.
func (n *Node) applyRevocations(e jetstream.KeyValueEntry, seen map[string]uint64) {
	if n.sec.rev == nil || seen[e.Key()] == e.Revision() {
		return
	}
	if len(seen) < maxRevocationKeys {
		seen[e.Key()] = e.Revision()
	}
	k, err := keyString(e.Key())
	issuer, node, found := strings.Cut(k, "\x00")
	if err != nil || !found || issuer == "" {
		n.stats.decodeErrors.Add(1)
		n.log.Warn("cluster: malformed revocation key ignored", "key", clip(e.Key()))
		return
	}
	r, ok := n.decodeSec(e)
	if !ok || r.Lifted || len(r.Data) == 0 {
		return
	}
	if r.Node != node {
		n.stats.decodeErrors.Add(1)
		n.log.Warn("cluster: revocation list under another node's key ignored", "key", clip(k), "node", clip(r.Node))
		return
	}
	n.sec.rev.Revocations(node, issuer, r.Data)
}

// rereadRevocations reads every list of the bucket and reports those not
// reported yet.
func (n *Node) rereadRevocations(kv jetstream.KeyValue, seen map[string]uint64) {
	if n.sec.rev == nil {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return
	}
	var keys []string
	for k := range lister.Keys() {
		if len(keys) < maxRevocationKeys {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		if e, err := kv.Get(ctx, k); err == nil {
			n.applyRevocations(e, seen)
		}
	}
}

func (n *Node) applyEvent(m *nats.Msg) {
	node := m.Header.Get("Moat-Node")
	if m.Header.Get(hdrOrigin) == n.origin || node == "" {
		return
	}
	n.sec.h.Event(node, strings.TrimPrefix(m.Subject, eventPrefix), m.Data)
}

// purgeTombstones removes the tombstones older than tombstoneAge, and the
// purge markers that leaves (any node may do it; doing it twice is
// harmless).
func (n *Node) purgeTombstones(bans jetstream.KeyValue) {
	ctx, cancel := context.WithTimeout(n.ctx, time.Minute)
	defer cancel()
	lister, err := bans.ListKeys(ctx)
	if err != nil {
		return
	}
	var old []string
	for k := range lister.Keys() {
		e, err := bans.Get(ctx, k)
		if err != nil {
			continue
		}
		var r secRecord
		if json.Unmarshal(e.Value(), &r) == nil && r.Lifted && time.Since(r.At) > tombstoneAge {
			old = append(old, k)
		}
	}
	for _, k := range old {
		_ = bans.Purge(ctx, k)
	}
	if len(old) > 0 {
		_ = bans.PurgeDeletes(ctx)
	}
}
