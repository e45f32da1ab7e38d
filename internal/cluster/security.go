package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
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
//   - Events: core NATS subjects moat.sec.<kind>, delivered to the nodes
//     connected at that moment (Security.Event): re-evaluations of the
//     live clients after a revocation or a removed password.
//
// Every record names the node that wrote it, for the audit log of the
// nodes that apply it. A node never applies its own changes again (its
// records carry its boot ID), except those of an earlier run, which its
// Security sees once more at start-up.

// Bucket names and the events' subject prefix.
const (
	bucketBans  = "moat_bans"
	bucketFiles = "moat_files"
	eventPrefix = "moat.sec."
)

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

// secRecord is the value of a key in the security buckets.
type secRecord struct {
	Node   string    `json:"node"`
	Boot   string    `json:"boot"` // Node.origin: this run of that node
	At     time.Time `json:"at"`
	Lifted bool      `json:"lifted,omitempty"` // a ban's tombstone
	Data   []byte    `json:"data,omitempty"`
}

// secWrite is one queued change of a security bucket.
type secWrite struct {
	bucket, key string
	rec         secRecord
}

// secState is the security side of a Node.
type secState struct {
	h Security // set before Attach; nil: no security state

	mu     sync.Mutex
	writes []secWrite
	wake   chan struct{}
	events chan *nats.Msg
	sub    *nats.Subscription
}

// SetSecurity makes h receive the other nodes' security changes. Call it
// once, before Attach; without it the Node carries no security state.
func (n *Node) SetSecurity(h Security) { n.sec.h = h }

// PutBan sets the ban record rec under id, cluster-wide, in the background.
func (n *Node) PutBan(id string, rec []byte) {
	n.queueSec(secWrite{bucket: bucketBans, key: keyOf(id), rec: secRecord{Data: rec}})
}

// LiftBan lifts the ban id cluster-wide, in the background.
func (n *Node) LiftBan(id string) {
	n.queueSec(secWrite{bucket: bucketBans, key: keyOf(id), rec: secRecord{Lifted: true}})
}

// PutFile sets the shared file name to data cluster-wide, in the
// background.
func (n *Node) PutFile(name string, data []byte) {
	n.queueSec(secWrite{bucket: bucketFiles, key: keyOf(name), rec: secRecord{Data: data}})
}

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

func (n *Node) queueSec(w secWrite) {
	w.rec.Node, w.rec.Boot, w.rec.At = n.cfg.Node, n.origin, time.Now()
	s := &n.sec
	s.mu.Lock()
	if len(s.writes) >= maxPendingWrites {
		s.writes = s.writes[1:]
		n.log.Warn("cluster: too many security changes waiting for the cluster's key-value store; the oldest was dropped")
	}
	s.writes = append(s.writes, w)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
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
	var bans, files jetstream.KeyValue
	backoff := 100 * time.Millisecond
	for {
		bans, files, err = n.secBuckets(js)
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
	bw, err := bans.WatchAll(n.ctx)
	if err != nil {
		n.log.Error("cluster: watching bans failed", "err", err)
		return
	}
	defer func() { _ = bw.Stop() }()
	fw, err := files.WatchAll(n.ctx)
	if err != nil {
		n.log.Error("cluster: watching shared files failed", "err", err)
		return
	}
	defer func() { _ = fw.Stop() }()
	// The keys of the initial snapshots, until both are done.
	banKeys, fileKeys := map[string]bool{}, map[string]bool{}
	bansInit, filesInit := true, true
	synced := func() {
		if !bansInit && !filesInit && banKeys != nil {
			s.h.Synced(banKeys, fileKeys)
			n.log.Info("cluster: security state in sync", "bans", len(banKeys), "files", len(fileKeys))
			banKeys, fileKeys = nil, nil
		}
	}
	purge := time.NewTicker(time.Hour)
	defer purge.Stop()
	var retry <-chan time.Time // while changes wait for a failed write
	banUpdates, fileUpdates := bw.Updates(), fw.Updates()
	for {
		select {
		case <-n.ctx.Done():
			return
		case e, ok := <-banUpdates:
			if !ok {
				n.log.Error("cluster: ban watch ended; other nodes' ban changes are no longer applied here")
				banUpdates = nil
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
				n.applyBan(id, e)
			}
		case e, ok := <-fileUpdates:
			if !ok {
				n.log.Error("cluster: shared file watch ended; other nodes' file changes are no longer applied here")
				fileUpdates = nil
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
				n.applyFile(name, e)
			}
		case m := <-s.events:
			n.applyEvent(m)
		case <-s.wake:
			if retry == nil && n.writeSec(bans, files) {
				retry = time.After(2 * time.Second)
			}
		case <-retry:
			retry = nil
			if n.writeSec(bans, files) {
				retry = time.After(2 * time.Second)
			}
		case <-purge.C:
			n.purgeTombstones(bans)
		}
	}
}

// secBuckets creates or binds both buckets.
func (n *Node) secBuckets(js jetstream.JetStream) (bans, files jetstream.KeyValue, err error) {
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	bans, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketBans, History: 1,
		Replicas: n.replicas, Storage: jetstream.FileStorage, Description: "Moat ban list"})
	if err != nil {
		return nil, nil, err
	}
	files, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketFiles, History: 1,
		Replicas: n.replicas, Storage: jetstream.FileStorage, Description: "Moat access policy and password files"})
	return bans, files, err
}

// writeSec writes the queued changes in order. When one fails (no
// quorum: a partition, two nodes down) it and those after it stay queued,
// in order, and are tried again at the next retry: a ban or a policy must
// not be lost because the cluster was briefly unreachable. It reports
// whether changes are left.
func (n *Node) writeSec(bans, files jetstream.KeyValue) (left bool) {
	s := &n.sec
	s.mu.Lock()
	writes := s.writes
	s.writes = nil
	s.mu.Unlock()
	for i, w := range writes {
		kv := bans
		if w.bucket == bucketFiles {
			kv = files
		}
		val, err := json.Marshal(w.rec)
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		_, err = kv.Put(ctx, w.key, val)
		cancel()
		if err != nil {
			if n.ctx.Err() == nil {
				n.log.Warn("cluster: security change not stored in the cluster yet; retrying", "bucket", w.bucket,
					"key", clip(w.key), "waiting", len(writes)-i, "err", err)
			}
			s.mu.Lock()
			s.writes = append(writes[i:len(writes):len(writes)], s.writes...)
			if over := len(s.writes) - maxPendingWrites; over > 0 {
				s.writes = s.writes[over:]
				n.log.Warn("cluster: too many security changes waiting for the cluster's key-value store; the oldest were dropped", "dropped", over)
			}
			s.mu.Unlock()
			return true
		}
	}
	return false
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

func (n *Node) applyBan(id string, e jetstream.KeyValueEntry) {
	r, ok := n.decodeSec(e)
	if !ok {
		return
	}
	if r.Lifted {
		n.sec.h.BanLifted(r.Node, id)
	} else {
		n.sec.h.BanSet(r.Node, id, r.Data)
	}
}

func (n *Node) applyFile(name string, e jetstream.KeyValueEntry) {
	if r, ok := n.decodeSec(e); ok && !r.Lifted {
		n.sec.h.FileSet(r.Node, name, r.Data, r.At)
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
