package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/admin"
	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/authn/passwd"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/cluster"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/tlsconf"
)

// Security state is cluster state (docs/cluster.md, "Security state"). In
// a cluster, moat serve gives the security state the cluster package
// carries its meaning:
//
//   - Bans. Every ban the guard adds, whatever added it (moat ban, the
//     admin API, a detector, the bans file), goes to the cluster's ban
//     list; every other node adds it to its own guard, which disconnects
//     the live clients it matches and refuses them from then on, and
//     records it in its own audit log naming the node it came from. A ban
//     removed on one node (moat ban remove, the admin API) is lifted on
//     every node. Expiry is each node's own, by its clock, as for any ban.
//   - Access files. The password files and access policy files (acl_file,
//     a rules file such as DATA_DIR/acl.yaml) are shared by file name: a
//     node whose file changed (and still loads) puts it in the cluster;
//     the others write it over their file of the same name and reload it
//     at once, which re-evaluates their live clients as any reload does.
//     When two nodes changed a file, the later change (by the nodes'
//     clocks) wins. A node that was down takes the cluster's version of a
//     file unless its own changed later.
//   - Re-evaluation events. A certificate revoked on one node (its CRL file
//     gained serials: moat ca revoke, the admin API, a shared CA
//     directory) and a password removed or changed are sent to the other
//     nodes, which re-evaluate their live clients at once through the one
//     loss-of-access path (broker.Server.Reevaluate).
//   - Revocation lists. The CRLs are also cluster state, for the nodes
//     that miss the event (serve_cluster_revoked.go): every node refuses
//     what any node's list revokes, and a node that keeps the same Moat CA
//     (a copy of its directory) also records the revocation in its copy,
//     after checking the CRL's signature.
//
// Each node keeps its own audit chain; what it applies for another node
// names that node (origin_node).

// clusterSecurity is a node's side of the security state. It is the
// cluster.Node's Security: those methods run on the Node's goroutine, one
// at a time.
type clusterSecurity struct {
	node *cluster.Node
	self string // this node's name
	log  *slog.Logger
	d    *defense    // nil without defense or audit
	a    *accessPlan // nil without access control
	crls *caCRLs     // the CAs this node keeps; nil: none
	revs *clusterRevocations
	// tls holds the TLS listeners' Managers by listener name: a live
	// client's chain is verified again through its listener before
	// another node's revocation list may cut it (cutRevoked).
	tls map[string]*tlsconf.Manager

	mu       sync.Mutex
	applying map[string]string    // ban ID → origin, while the guard adds another node's ban
	removing map[string]string    // ban ID → origin, while the guard removes one
	known    map[string]knownBan  // the bans of this guard that the cluster knows
	removals uint64               // the guard's removed and expired counts when last checked
	synced   bool                 // the buckets' contents were reported
	crlSeen  map[string]crlMemory // by CRL file
	// refused holds the ban changes the cluster refused (too many
	// waiting while it was unreachable), by ban ID: true for a lift. They
	// hold here; retryRefused offers them again once there is room, and
	// refusal is the error an operator's AddBan or RemoveBan returns.
	refused    map[string]bool
	refusedErr map[string]error // the refusal of the ban being added or removed now

	// liftsMu guards lifts, the bans this node lifted whose lift the
	// cluster has not stored yet (ban ID → when), kept in liftsPath so
	// that a node stopped before it did goes on lifting them; liftsDirty
	// tells that the file is behind.
	liftsMu    sync.Mutex
	lifts      map[string]time.Time
	liftsDirty bool
	liftsPath  string

	filesMu sync.Mutex // guards files and file changes
	files   map[string]*sharedFile
	// agreedPath is the file that keeps, across restarts, what each
	// shared file agreed with the cluster (sharedFile.base and seen); ""
	// keeps it in memory only.
	agreedPath string
	// applyingFile is set while another node's file is reloaded here: the
	// users it removed are not sent back as this node's.
	applyingFile atomic.Bool

	crlMu sync.Mutex // one CRL check or revocation from another node at a time
}

// knownBan is a ban of the cluster's list in force here.
type knownBan struct {
	origin  string
	expires time.Time
}

// sharedFile is one access file shared with the cluster, by its name.
type sharedFile struct {
	name, path string
	validate   func(tmp string) error
	sum        [sha256.Size]byte // the content last agreed with the cluster
	agreed     bool              // sum is valid
	// seen is the version the cluster's bucket held when this node last
	// heard of it (another node's change, or this node's once stored),
	// and base the content of this node's file then (the same, unless
	// this node refused the cluster's version). A file that differs from
	// base was changed here since; while the cluster still holds seen,
	// that change is newer than the cluster's and wins. Kept in
	// agreedPath, so that it holds across a restart: an edit made while
	// the node was stopped, or a change that had not reached an
	// unreachable cluster when the node stopped.
	base, seen [sha256.Size]byte
	recorded   bool // base and seen are known
}

// crlMemory is what a CRL file held when last read.
type crlMemory struct {
	mod     time.Time
	size    int64
	revoked map[string]bool // issuer and serial
}

// reevaluation is the payload of a "reevaluate" event.
type reevaluation struct {
	Trigger string   `json:"trigger"` // "revocation" or "password"
	Reason  string   `json:"reason"`
	Users   []string `json:"users,omitempty"`   // password: the usernames
	CRL     []byte   `json:"crl,omitempty"`     // revocation: the CRL (DER) that revoked them
	Serials []string `json:"serials,omitempty"` // revocation: the serials revoked now (hex)
}

const eventReevaluate = "reevaluate"

// planClusterSecurity connects the node's guard, access files and CRLs to
// the cluster. Called by planCluster once the node runs.
func (p *servePlan) planClusterSecurity(dir string) {
	cs := &clusterSecurity{node: p.cluster, self: p.cfg.Cluster.Node, log: p.log.With("component", "cluster"),
		d: p.defense, a: p.access, crls: p.crls, revs: p.clusterRevocations(),
		applying: map[string]string{}, removing: map[string]string{}, known: map[string]knownBan{},
		refused: map[string]bool{}, refusedErr: map[string]error{},
		crlSeen: map[string]crlMemory{}, files: map[string]*sharedFile{}, tls: map[string]*tlsconf.Manager{}}
	for _, pl := range p.listeners {
		if pl.mgr != nil {
			cs.tls[pl.conf.Name] = pl.mgr
		}
	}
	p.clusterSec = cs
	if g := cs.guard(); g != nil {
		for _, b := range g.Bans() {
			cs.known[b.ID] = knownBan{origin: cs.self, expires: b.Expires}
		}
		cs.lifts, cs.liftsPath = map[string]time.Time{}, filepath.Join(dir, pendingLiftsFile)
		cs.loadLifts()
		st := g.Stats()
		cs.removals = st.BansRemoved + st.BansExpired
		g.OnBan(cs.onBan)
		g.Replicate(cs.replicate)
		p.defense.banOrigin = cs.banOrigin
	}
	if cs.a != nil {
		if p.cfg.Cluster.AccessFiles != "local" {
			cs.planFiles()
			cs.agreedPath = filepath.Join(dir, sharedAgreedFile)
			cs.loadAgreed()
		}
		cs.a.passwordGone = cs.passwordGone
	}
	var crlFiles []string // absolute, as the CA keepers name them
	for _, f := range p.crlFiles() {
		if abs, err := filepath.Abs(f); err == nil {
			crlFiles = append(crlFiles, abs)
			// The baseline: revocations before the start are no events,
			// but the cluster gets the list (revocations made while this
			// node was cut off or down must reach the others).
			if crl, ok := cs.readCRL(abs); ok {
				cs.putRevocations(abs, crl)
			}
		}
	}
	p.cluster.SetSecurity(cs)
	ctx, cancel := context.WithCancel(context.Background())
	p.cleanup = append(p.cleanup, cancel)
	p.tasks.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				cs.saveLifts() // the lifts stored since
				cs.checkRemovals()
				cs.retryRefused()
				cs.checkFiles()
				for _, f := range crlFiles {
					cs.checkCRL(f)
				}
			}
		}
	})
}

func (cs *clusterSecurity) guard() *guard.Guard { return cs.d.guard() }

func (cs *clusterSecurity) record(typ string, fields ...audit.Field) {
	if cs.d != nil {
		cs.d.record(typ, fields...)
	}
}

// --- bans

// banOrigin names the node a ban being added or removed comes from.
func (cs *clusterSecurity) banOrigin(id string) string {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if o, ok := cs.applying[id]; ok {
		return o
	}
	if o, ok := cs.removing[id]; ok {
		return o
	}
	return cs.self
}

// onBan runs for every ban the guard adds: unless it is another node's,
// it goes to the cluster.
func (cs *clusterSecurity) onBan(m guard.Match) {
	b := m.Ban
	cs.mu.Lock()
	origin, fromCluster := cs.applying[b.ID]
	if !fromCluster {
		origin = cs.self
	}
	cs.known[b.ID] = knownBan{origin: origin, expires: b.Expires}
	cs.mu.Unlock()
	if fromCluster {
		return
	}
	rec, err := json.Marshal(b)
	if err != nil {
		return
	}
	cs.noteRefusal(b.ID, false, cs.node.PutBan(b.ID, rec))
}

// noteRefusal remembers a ban change the cluster refused (the cluster
// logged it at Error and counted it), for replicate to report and
// retryRefused to offer again; an accepted change clears an older
// refusal of that ban.
func (cs *clusterSecurity) noteRefusal(id string, lifted bool, err error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if err == nil {
		delete(cs.refused, id)
		return
	}
	cs.refused[id] = lifted
	cs.refusedErr[id] = err
}

// replicate is the guard's Replicate hook: it runs when an operator's
// AddBan or RemoveBan is in force here (moat ban, the admin API) and
// returns the cluster's refusal of it, which they report. The addition
// went to the cluster through onBan; a removal goes now (checkRemovals
// would find it within a second, too late to answer the operator).
// Another node's ban, applied here, is not sent back.
func (cs *clusterSecurity) replicate(id string, removed bool) error {
	cs.mu.Lock()
	_, applying := cs.applying[id]
	_, removing := cs.removing[id]
	var lift bool
	if removed && !removing {
		_, lift = cs.known[id]
		delete(cs.known, id)
	}
	cs.mu.Unlock()
	if applying || removing {
		return nil
	}
	if lift {
		cs.noteRefusal(id, true, cs.liftBan(id))
		cs.saveLifts()
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	err := cs.refusedErr[id]
	delete(cs.refusedErr, id)
	return err
}

// retryRefused offers the refused ban changes to the cluster again once
// it has room for them: the ban or lift still in force here (a ban
// removed or expired since is lifted instead, or forgotten).
func (cs *clusterSecurity) retryRefused() {
	cs.mu.Lock()
	if len(cs.refused) == 0 {
		cs.mu.Unlock()
		return
	}
	retry := maps.Clone(cs.refused)
	cs.mu.Unlock()
	if !cs.node.SecurityRoom() {
		return
	}
	inForce := map[string]guard.Ban{}
	if g := cs.guard(); g != nil {
		for _, b := range g.Bans() {
			inForce[b.ID] = b
		}
	}
	for id, lifted := range retry {
		var err error
		b, ok := inForce[id]
		if ok && !lifted {
			rec, merr := json.Marshal(b)
			if merr != nil {
				continue
			}
			err = cs.node.PutBan(id, rec)
		} else {
			err = cs.liftBan(id)
			cs.saveLifts()
		}
		cs.mu.Lock()
		delete(cs.refusedErr, id)
		if err == nil && cs.refused[id] == lifted {
			delete(cs.refused, id)
		}
		cs.mu.Unlock()
		if err != nil {
			return // full again: the next tick tries again
		}
		cs.log.Info("cluster: a ban change refused while the cluster was unreachable was sent to it", "ban", id, "lifted", !ok || lifted)
	}
}

// BanSet implements cluster.Security: another node's ban is added to the
// guard (which records it, naming the node, and disconnects the live
// clients it matches).
func (cs *clusterSecurity) BanSet(origin, id string, rec []byte) {
	g := cs.guard()
	if g == nil {
		return
	}
	var b guard.Ban
	if err := json.Unmarshal(rec, &b); err != nil || b.ID != id {
		cs.log.Warn("cluster: malformed ban of another node ignored", "origin_node", origin, "ban", clipLog(id))
		return
	}
	if !b.Expires.IsZero() && !time.Now().Before(b.Expires) {
		return // expired already
	}
	if at, ok := cs.pendingLift(id, b.Created); ok {
		// Lifted here after it was made, and the lift had not reached
		// the cluster when this node stopped: it stays lifted, and the
		// lift is sent again. (Before, the ban came back.)
		cs.log.Info("cluster: a ban this node lifted before the cluster had the lift stays lifted; sending the lift again",
			"ban", id, "origin_node", origin, "lifted_at", at.UTC().Format(time.RFC3339))
		cs.noteRefusal(id, true, cs.liftBan(id))
		return
	}
	cs.mu.Lock()
	_, have := cs.known[id]
	if !have {
		cs.applying[id] = origin
	}
	cs.mu.Unlock()
	if have {
		return
	}
	_, err := g.AddBan(b)
	cs.mu.Lock()
	delete(cs.applying, id)
	cs.mu.Unlock()
	if err != nil {
		cs.log.Error("cluster: another node's ban not applied here", "origin_node", origin, "ban", id, "err", err)
	}
}

// BanLifted implements cluster.Security: a ban another node removed is
// removed here (and recorded, naming the node).
func (cs *clusterSecurity) BanLifted(origin, id string) {
	g := cs.guard()
	if g == nil {
		return
	}
	cs.LiftStored(id) // the cluster has a lift of it
	cs.mu.Lock()
	_, have := cs.known[id]
	delete(cs.known, id)
	if have {
		cs.removing[id] = origin
	}
	cs.mu.Unlock()
	if !have {
		return
	}
	_, err := g.RemoveBan(id)
	cs.mu.Lock()
	delete(cs.removing, id)
	cs.mu.Unlock()
	if err != nil {
		cs.log.Warn("cluster: a ban another node lifted was not in force here", "origin_node", origin, "ban", id, "err", err)
	}
}

// Synced implements cluster.Security: the bans and files only this node
// knows (added while the cluster was unreachable, or before it was a
// cluster) go to the cluster.
func (cs *clusterSecurity) Synced(bans, files map[string]bool) {
	if g := cs.guard(); g != nil {
		for _, b := range g.Bans() {
			if bans[b.ID] {
				continue
			}
			if rec, err := json.Marshal(b); err == nil {
				cs.noteRefusal(b.ID, false, cs.node.PutBan(b.ID, rec))
			}
		}
	}
	cs.filesMu.Lock()
	for _, f := range cs.files {
		if files[f.name] || f.agreed {
			continue
		}
		data, err := os.ReadFile(f.path)
		if err == nil {
			err = f.validate(f.path)
		}
		if err != nil {
			cs.log.Warn("cluster: shared file not sent to the cluster", "file", f.path, "err", err)
			continue
		}
		if err := cs.node.PutFile(f.name, data); err != nil {
			continue // refused: checkFiles offers it again
		}
		f.sum, f.agreed = sha256.Sum256(data), true
	}
	cs.filesMu.Unlock()
	cs.mu.Lock()
	cs.synced = true
	cs.mu.Unlock()
}

// checkRemovals lifts, cluster-wide, the bans removed here (moat ban
// remove, the admin API, an edit of the bans file): the guard tells of no
// removal, so its list is compared with the known bans whenever its
// removal or expiry count moved. Expired bans are forgotten; the node that
// added one lifts it from the cluster's list.
func (cs *clusterSecurity) checkRemovals() {
	g := cs.guard()
	if g == nil {
		return
	}
	st := g.Stats()
	n := st.BansRemoved + st.BansExpired
	cs.mu.Lock()
	moved := n != cs.removals
	cs.removals = n
	cs.mu.Unlock()
	if !moved {
		return
	}
	inForce := map[string]bool{}
	for _, b := range g.Bans() {
		inForce[b.ID] = true
	}
	now := time.Now()
	var lift []string
	cs.mu.Lock()
	for id, k := range cs.known {
		if inForce[id] {
			continue
		}
		delete(cs.known, id)
		expired := !k.expires.IsZero() && !now.Before(k.expires)
		if !expired || k.origin == cs.self {
			lift = append(lift, id)
		}
	}
	cs.mu.Unlock()
	for _, id := range lift {
		cs.noteRefusal(id, true, cs.liftBan(id))
	}
	cs.saveLifts()
}

// pendingLiftsFile, in DATA_DIR/cluster, keeps the bans this node lifted
// whose lift the cluster has not stored yet: {"version": 1, "lifts":
// {ban ID: RFC 3339 time}}.
const pendingLiftsFile = "lifts-pending.json"

// maxPendingLifts bounds the lifts kept (the oldest go first): as many as
// security changes may wait for the cluster.
const maxPendingLifts = cluster.MaxPendingSecurity

type liftsRecord struct {
	Version int                  `json:"version"`
	Lifts   map[string]time.Time `json:"lifts"`
}

// liftBan lifts the ban id cluster-wide and, once the change is accepted,
// keeps the lift until the cluster stores it (LiftStored): a node stopped
// before then would otherwise see the ban come back from the cluster at
// its next start (failing closed, but undoing an operator's removal).
// The caller saves the record (saveLifts) after its batch.
func (cs *clusterSecurity) liftBan(id string) error {
	err := cs.node.LiftBan(id)
	if err != nil {
		return err
	}
	cs.liftsMu.Lock()
	defer cs.liftsMu.Unlock()
	if cs.lifts == nil {
		return nil
	}
	if _, ok := cs.lifts[id]; !ok && len(cs.lifts) >= maxPendingLifts {
		oldest, at := "", time.Time{}
		for k, t := range cs.lifts {
			if oldest == "" || t.Before(at) {
				oldest, at = k, t
			}
		}
		delete(cs.lifts, oldest)
	}
	cs.lifts[id], cs.liftsDirty = time.Now(), true
	return nil
}

// LiftStored implements cluster.LiftStoredHandler: the cluster has the
// lift of id. The record is saved with the next batch (saveLifts).
func (cs *clusterSecurity) LiftStored(id string) {
	cs.liftsMu.Lock()
	defer cs.liftsMu.Unlock()
	if _, ok := cs.lifts[id]; ok {
		delete(cs.lifts, id)
		cs.liftsDirty = true
	}
}

// pendingLift tells whether this node lifted the ban id, made at created,
// after it was made, and the lift was not stored; when is the lift's
// time. A ban made after the lift (set again) ends the record.
func (cs *clusterSecurity) pendingLift(id string, created time.Time) (when time.Time, ok bool) {
	cs.liftsMu.Lock()
	defer cs.liftsMu.Unlock()
	when, ok = cs.lifts[id]
	if ok && !created.Before(when) {
		delete(cs.lifts, id)
		cs.liftsDirty = true
		return when, false
	}
	return when, ok
}

// loadLifts reads the lifts an earlier run kept; those older than the
// tombstones live are forgotten. A missing file is the first start; an
// unreadable one is logged and ignored (such bans come back at start-up,
// as before the file existed).
func (cs *clusterSecurity) loadLifts() {
	var r liftsRecord
	found, err := readRecord(cs.liftsPath, &r)
	if !found {
		return
	}
	if err != nil {
		cs.log.Warn("cluster: the record of the bans lifted here and not yet in the cluster is unreadable; such bans come back at start-up",
			"file", cs.liftsPath, "err", err)
		return
	}
	cs.liftsMu.Lock()
	defer cs.liftsMu.Unlock()
	old := time.Now().Add(-cluster.TombstoneAge)
	for id, at := range r.Lifts {
		if at.After(old) && len(cs.lifts) < maxPendingLifts {
			cs.lifts[id] = at
		}
	}
	cs.liftsDirty = len(cs.lifts) != len(r.Lifts)
}

// saveLifts writes the record of the pending lifts when it is behind.
func (cs *clusterSecurity) saveLifts() {
	cs.liftsMu.Lock()
	defer cs.liftsMu.Unlock()
	if !cs.liftsDirty || cs.liftsPath == "" {
		return
	}
	if err := writeRecord(cs.liftsPath, liftsRecord{Version: 1, Lifts: cs.lifts}); err != nil {
		cs.log.Warn("cluster: the bans lifted here and not yet in the cluster were not recorded", "file", cs.liftsPath, "err", err)
		return
	}
	cs.liftsDirty = false
}

// --- access files

// planFiles lists the access files to share: password files and policy
// files, by base name. Two files of one name are not shared (the other
// nodes could not tell them apart).
func (cs *clusterSecurity) planFiles() {
	a := cs.a
	add := func(path string, validate func(tmp string) error) {
		name := filepath.Base(path)
		if f, dup := cs.files[name]; dup {
			if f != nil && f.path != path {
				cs.log.Warn("cluster: two access files have the same name; neither is shared with the cluster", "files", []string{f.path, path})
				cs.files[name] = nil
			}
			return
		}
		cs.files[name] = &sharedFile{name: name, path: path, validate: validate}
	}
	for _, f := range a.uniqueFiles() {
		add(f.Path(), func(tmp string) error {
			_, err := passwd.Load(tmp, passwd.Config{Limiter: a.limiter})
			return err
		})
	}
	for _, ps := range a.policies {
		if ps.holder == nil {
			continue
		}
		// A candidate is compiled as the policy would be, from a copy of
		// the fields a reload never changes.
		if ps.rules != "" {
			add(ps.rules, func(tmp string) error {
				cp := policySource{spec: ps.spec, source: ps.source, rules: tmp}
				_, _, _, err := cp.compile()
				return err
			})
		}
		if ps.spec.ACLFile != "" {
			add(ps.spec.ACLFile, func(tmp string) error {
				cp := policySource{spec: ps.spec, source: ps.source, rules: ps.rules}
				cp.spec.ACLFile = tmp
				_, _, _, err := cp.compile()
				return err
			})
		}
	}
	for name, f := range cs.files {
		if f == nil {
			delete(cs.files, name)
		}
	}
}

// checkFiles sends the shared files that changed here (and still load) to
// the cluster, once the cluster's versions are known. It returns the
// files the cluster refused, each with the refusal.
func (cs *clusterSecurity) checkFiles() []error {
	cs.mu.Lock()
	synced := cs.synced
	cs.mu.Unlock()
	if !synced {
		return nil
	}
	cs.filesMu.Lock()
	defer cs.filesMu.Unlock()
	var refused []error
	for _, f := range cs.files {
		data, err := os.ReadFile(f.path)
		if err != nil || (f.agreed && sha256.Sum256(data) == f.sum) {
			continue
		}
		if err := f.validate(f.path); err != nil {
			continue // the reload refuses it too, and logs why
		}
		// A refused change (the cluster unreachable, too many changes
		// waiting: logged at Error there) stays not agreed, and is
		// offered again at the next check.
		if err := cs.node.PutFile(f.name, data); err != nil {
			refused = append(refused, fmt.Errorf("%s: %w", f.path, err))
			continue
		}
		f.sum, f.agreed = sha256.Sum256(data), true
		cs.log.Info("cluster: shared file changed here; sending it to the other nodes", "file", f.path)
	}
	slices.SortFunc(refused, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return refused
}

// shareFiles is the reload's check of the shared files (checkFiles, at
// once rather than at the next tick): an error wrapping
// admin.ErrNotShared names each changed file the cluster refused. The
// node applies those files itself either way (the reload re-read them),
// and checkFiles offers them again every second.
func (cs *clusterSecurity) shareFiles() error {
	refused := cs.checkFiles()
	if len(refused) == 0 {
		return nil
	}
	return fmt.Errorf("serve: reload applied on this node, but %d changed access file(s) not sent to the other nodes, "+
		"which keep their version until it is sent (every second, once fewer security changes wait): %w: %w",
		len(refused), admin.ErrNotShared, errors.Join(refused...))
}

// FileSet implements cluster.Security: another node's version of a shared
// file replaces this node's, unless this node's changed later, and is
// reloaded at once.
func (cs *clusterSecurity) FileSet(origin, name string, data []byte, at time.Time) {
	cs.filesMu.Lock()
	defer cs.filesMu.Unlock()
	f := cs.files[name]
	if f == nil {
		cs.log.Debug("cluster: another node's shared file has no counterpart here", "file", name, "origin_node", origin)
		return
	}
	sum := sha256.Sum256(data)
	local, err := os.ReadFile(f.path)
	if err == nil && sha256.Sum256(local) == sum {
		f.sum, f.agreed = sum, true
		cs.noteAgreed(f, sum, sum)
		return
	}
	if why := cs.keepLocal(f, local, err, sum, at); why != "" && f.validate(f.path) == nil {
		// This node's version wins, when it loads: it is sent to the
		// others (or again, if it waited for the cluster when the node
		// stopped).
		cs.log.Info("cluster: shared file changed here "+why+"; sending this node's version", "file", f.path, "origin_node", origin)
		if cs.node.PutFile(f.name, local) == nil {
			f.sum, f.agreed = sha256.Sum256(local), true
		} // else refused: checkFiles offers it again
		cs.noteAgreed(f, f.base, sum)
		return
	}
	// Both sides changed while this node was stopped or cut off: said,
	// as this node's change is undone.
	both := err == nil && !f.agreed && f.recorded && sha256.Sum256(local) != f.base
	result, problem := "applied", ""
	if err := cs.writeShared(f, data); err != nil {
		result, problem = "refused", err.Error()
		cs.log.Error("cluster: another node's version of a shared file was not applied here; this node's stays in force", "file", f.path,
			"origin_node", origin, "err", err)
	} else if both {
		cs.log.Warn("cluster: shared file changed here while this node was stopped or cut off, and by another node too; "+
			"the cluster's version replaced this node's", "file", f.path, "origin_node", origin)
	} else {
		cs.log.Warn("cluster: shared file changed by another node; applied here", "file", f.path, "origin_node", origin)
	}
	// Agreed either way: a version that does not load here is not sent
	// back (the file this node keeps counts as agreed), and the next
	// change of either side wins.
	f.sum, f.agreed = sum, true
	base := sum
	if result == "refused" {
		if local, err := os.ReadFile(f.path); err == nil {
			base = sha256.Sum256(local)
			f.sum = base
		}
	}
	cs.noteAgreed(f, base, sum)
	fields := []audit.Field{audit.String("reason", "shared file changed on node "+origin), audit.String("result", result),
		audit.String("file", f.path), audit.String("origin_node", origin)}
	if problem != "" {
		fields = append(fields, audit.String("error", problem))
	}
	cs.record(audit.TypeConfigReload, fields...)
	if result == "applied" && cs.a != nil {
		cs.applyingFile.Store(true)
		cs.a.reload() // re-evaluates the live clients of what changed
		cs.applyingFile.Store(false)
	}
}

// FileStored implements cluster.FileStoredHandler: this node's version of
// a shared file is now the cluster's.
func (cs *clusterSecurity) FileStored(name string, data []byte) {
	cs.filesMu.Lock()
	defer cs.filesMu.Unlock()
	if f := cs.files[name]; f != nil {
		sum := sha256.Sum256(data)
		cs.noteAgreed(f, sum, sum)
	}
}

// keepLocal tells whether this node's version of f (local, read with
// err), which differs from the cluster's (sum, changed at at by its
// node's clock), wins over it, and why ("" when it does not). It wins
// when it was changed here since this node last agreed with the cluster
// (base), and either the cluster still holds the version it held then
// (seen), or, while the node runs, this node's change is the later one.
//
// The first rule holds across a restart (base and seen are kept): an edit
// made while the node was stopped, or a change made while the cluster was
// unreachable that had not reached it when the node stopped, is sent at
// start-up. Before, the cluster's older version replaced it, silently
// undoing, say, a password removed on a node that was cut off and then
// restarted. It also keeps a change waiting for the cluster when a watch
// started again delivers the cluster's unchanged version. At start-up the
// clocks do not decide: when the cluster's version changed too, or
// nothing was kept (the first start with this build, a new data
// directory), the cluster's version wins, as a node's files may be older
// than their modification times (a restored backup), and the cluster's
// is the one the other nodes enforce.
func (cs *clusterSecurity) keepLocal(f *sharedFile, local []byte, err error, sum [sha256.Size]byte, at time.Time) string {
	if err != nil {
		return ""
	}
	ls := sha256.Sum256(local)
	if f.recorded {
		if ls == f.base {
			return "" // not changed here
		}
		if sum == f.seen {
			return "since this node last agreed with the cluster (while it was stopped, or cut off from the cluster)"
		}
	} else if !f.agreed || ls == f.sum {
		return ""
	}
	if fi, err := os.Stat(f.path); f.agreed && err == nil && fi.ModTime().After(at) {
		return "after another node's change"
	}
	return ""
}

// sharedAgreedFile, in DATA_DIR/cluster, keeps what each shared file
// agreed with the cluster: {"version": 1, "files": {name: {"base":
// SHA-256 hex, "seen": SHA-256 hex}}}.
const sharedAgreedFile = "shared-files.json"

type agreedRecord struct {
	Version int                      `json:"version"`
	Files   map[string]agreedVersion `json:"files"`
}

type agreedVersion struct {
	Base string `json:"base"`
	Seen string `json:"seen"`
}

// loadAgreed reads what an earlier run agreed. A missing file is the
// first start; an unreadable one is logged and ignored (the cluster's
// versions then win at start-up, as before the file existed).
func (cs *clusterSecurity) loadAgreed() {
	var r agreedRecord
	found, err := readRecord(cs.agreedPath, &r)
	if !found {
		return
	}
	if err != nil {
		cs.log.Warn("cluster: the record of the shared files' agreed versions is unreadable; the cluster's versions replace this node's at start-up",
			"file", cs.agreedPath, "err", err)
		return
	}
	cs.filesMu.Lock()
	defer cs.filesMu.Unlock()
	for name, v := range r.Files {
		f := cs.files[name]
		base, err1 := hex.DecodeString(v.Base)
		seen, err2 := hex.DecodeString(v.Seen)
		if f == nil || err1 != nil || err2 != nil || len(base) != sha256.Size || len(seen) != sha256.Size {
			continue
		}
		f.base, f.seen, f.recorded = [sha256.Size]byte(base), [sha256.Size]byte(seen), true
	}
}

// noteAgreed records that f's content base agreed with the cluster's
// version seen, on disk when it changed. Called with filesMu held. A
// failed write is logged: the node then keeps the older record, whose
// only effect is that a change made here before the next restart may
// lose to the cluster's version at start-up.
func (cs *clusterSecurity) noteAgreed(f *sharedFile, base, seen [sha256.Size]byte) {
	if f.recorded && f.base == base && f.seen == seen {
		return
	}
	f.base, f.seen, f.recorded = base, seen, true
	if cs.agreedPath == "" {
		return
	}
	r := agreedRecord{Version: 1, Files: map[string]agreedVersion{}}
	for name, g := range cs.files {
		if g.recorded {
			r.Files[name] = agreedVersion{Base: hex.EncodeToString(g.base[:]), Seen: hex.EncodeToString(g.seen[:])}
		}
	}
	if err := writeRecord(cs.agreedPath, r); err != nil {
		cs.log.Warn("cluster: the shared files' agreed versions were not recorded", "file", cs.agreedPath, "err", err)
	}
}

// writeShared checks data as a version of f (written beside it and loaded)
// and moves it over f, keeping f's mode.
func (cs *clusterSecurity) writeShared(f *sharedFile, data []byte) error {
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(f.path); err == nil {
		mode = fi.Mode().Perm()
	}
	rnd := make([]byte, 6)
	_, _ = rand.Read(rnd)
	tmp := filepath.Join(filepath.Dir(f.path), "."+f.name+".cluster-"+hex.EncodeToString(rnd))
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := f.validate(tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("it does not load: %w", err)
	}
	if err := os.Rename(tmp, f.path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// --- re-evaluation events

// passwordGone tells the other nodes of the users whose password was
// removed or changed here (not when the change came from another node,
// which told them).
func (cs *clusterSecurity) passwordGone(f *passwd.File, users []string) {
	if cs.applyingFile.Load() {
		return
	}
	cs.publish(reevaluation{Trigger: "password", Users: users,
		Reason: "password removed or changed in " + filepath.Base(f.Path()) + " on node " + cs.self})
}

func (cs *clusterSecurity) publish(r reevaluation) {
	data, err := json.Marshal(r)
	if err == nil {
		err = cs.node.PublishEvent(eventReevaluate, data)
	}
	if err != nil {
		cs.log.Warn("cluster: re-evaluation not sent to the other nodes", "trigger", r.Trigger, "err", err)
	}
}

// Event implements cluster.Security: another node's re-evaluation runs
// here, through the one loss-of-access path.
func (cs *clusterSecurity) Event(origin, kind string, data []byte) {
	var r reevaluation
	if kind != eventReevaluate || json.Unmarshal(data, &r) != nil {
		cs.log.Warn("cluster: unknown security event ignored", "origin_node", origin, "kind", clipLog(kind))
		return
	}
	var match func(c *broker.Client) bool
	switch r.Trigger {
	case "password":
		users := map[string]bool{}
		for _, u := range r.Users {
			users[u] = true
		}
		match = func(c *broker.Client) bool { return c.Grants().Backend == "passwd" && users[c.Username] }
	case "revocation":
		crl, err := x509.ParseRevocationList(r.CRL)
		if err != nil || len(r.CRL) > cluster.MaxRevocationList {
			cs.log.Warn("cluster: revocation of another node with a malformed CRL ignored", "origin_node", origin, "err", err)
			return
		}
		cs.takeRevocations(origin, crl, clipLog(r.Reason))
		return
	default:
		return
	}
	cs.reevaluate(origin, r.Trigger, clipLog(r.Reason), match)
}

// reevaluate disconnects the live clients match selects after another
// node's change.
func (cs *clusterSecurity) reevaluate(origin, trigger, reason string, match func(c *broker.Client) bool) {
	srv := cs.server()
	if srv == nil {
		return
	}
	res := reevaluate(srv, cs.record, trigger, broker.Reevaluation{Match: match, Disconnect: true,
		Code: packet.NotAuthorized, Reason: reason + " (on node " + origin + ")"})
	if res.Disconnected > 0 {
		cs.log.Warn("cluster: live clients disconnected after another node's change", "trigger", trigger, "origin_node", origin,
			"disconnected", res.Disconnected)
	}
}

// cutRevoked disconnects the live clients whose certificate (issuer and
// serial, hex) crl revokes among serials, once crl's signature checks
// against the certificate that issued theirs.
//
// Security: the lists come from other nodes. A list that a node forged
// (or one of another CA that happens to have the same name) revokes
// nothing in a handshake (clusterRevocations.revoked checks its signature
// against the verified chain); it must not cut live connections either,
// or a single compromised node could disconnect any device of the fleet
// at will by naming its issuer and serial.
func (cs *clusterSecurity) cutRevoked(origin string, crl *x509.RevocationList, serials map[string]bool, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), revocationCheckTimeout)
	defer cancel()
	cs.reevaluate(origin, "revocation", reason, func(c *broker.Client) bool {
		certs := c.PeerCertificates()
		if len(certs) == 0 || !bytes.Equal(certs[0].RawIssuer, crl.RawIssuer) || !serials[certs[0].SerialNumber.Text(16)] {
			return false
		}
		if cs.listRevokes(ctx, c.Listener, certs, crl) {
			return true
		}
		cs.log.Warn("cluster: another node's revocation list names a live client's certificate but is not signed by its issuer; "+
			"the client stays connected", "origin_node", origin, "listener", c.Listener, "serial", certs[0].SerialNumber.Text(16))
		return false
	})
}

// revocationCheckTimeout bounds the re-verification of the live clients
// one revocation list names (an OCSP responder may be asked).
const revocationCheckTimeout = 10 * time.Second

// listRevokes tells whether crl, which names certs[0], is signed by the
// certificate that issued it: the issuer of the chain the client's
// listener verifies now. A chain that no longer verifies because it is
// revoked (by this list through the listeners' Revoked hook, or by the
// node's own CRLs and OCSP) is cut. Without the listener's Manager (or
// when the chain no longer verifies for another reason, which the
// listener's own watcher acts on), only an issuing certificate the client
// presented is tried.
func (cs *clusterSecurity) listRevokes(ctx context.Context, listener string, certs []*x509.Certificate, crl *x509.RevocationList) bool {
	if m := cs.tls[listener]; m != nil {
		chain, err := m.VerifyChain(ctx, certs)
		var ve *tlsconf.VerifyError
		switch {
		case err == nil && len(chain) > 1:
			return crl.CheckSignatureFrom(chain[1]) == nil
		case errors.As(err, &ve) && ve.Reason == tlsconf.ReasonRevoked:
			return true
		}
	}
	for _, ic := range certs[1:] {
		if bytes.Equal(ic.RawSubject, crl.RawIssuer) && crl.CheckSignatureFrom(ic) == nil {
			return true
		}
	}
	return false
}

func (cs *clusterSecurity) server() *broker.Server {
	if cs.a != nil {
		if s := cs.a.srv.Load(); s != nil {
			return s
		}
	}
	if cs.d != nil {
		return cs.d.srv.Load()
	}
	return nil
}

// revokeHere records another node's revocations in this node's copy of
// the same Moat CA, once the CRL's signature checks against that CA's
// issuing certificate: this node then refuses the certificates too.
func (cs *clusterSecurity) revokeHere(origin string, crl *x509.RevocationList, serials map[string]bool) {
	if cs.crls == nil {
		return
	}
	cs.crlMu.Lock()
	defer cs.crlMu.Unlock()
	for _, k := range cs.crls.byDir {
		if k == nil {
			continue
		}
		k.mu.Lock()
		ca := k.ca
		k.mu.Unlock()
		issuers := append([]*x509.Certificate{ca.Intermediate()}, ca.Retired()...)
		if !slices.ContainsFunc(issuers, func(c *x509.Certificate) bool {
			return bytes.Equal(c.RawSubject, crl.RawIssuer) && crl.CheckSignatureFrom(c) == nil
		}) {
			continue
		}
		for _, e := range crl.RevokedCertificateEntries {
			serial := e.SerialNumber.Text(16)
			if !serials[serial] {
				continue
			}
			_, err := ca.Revoke(serial, pki.RevocationReason(e.ReasonCode))
			switch {
			case err == nil:
				cs.log.Warn("cluster: certificate revoked on another node; revoked in this node's CA too", "origin_node", origin, "serial", serial)
				cs.record(audit.TypeCARevoke, audit.String("reason", "revoked on node "+origin), audit.String("serial", serial),
					audit.String("origin_node", origin))
			case errors.Is(err, pki.ErrAlreadyRevoked):
			case errors.Is(err, pki.ErrNotFound):
				cs.log.Info("cluster: a certificate revoked on another node is unknown to this node's copy of the CA; "+
					"its live connections were cut, but this node refuses it again only once it sees the CA's CRL (docs/cluster.md)",
					"origin_node", origin, "serial", serial)
			default:
				cs.log.Error("cluster: another node's revocation not recorded in this node's CA", "origin_node", origin, "serial", serial, "err", err)
			}
		}
		// The CRL the revocation re-signed is the new baseline: it is
		// not sent back as this node's revocation.
		cs.readCRL(k.file)
	}
}

// readCRL parses a CRL file (PEM or DER) into what it revokes.
func (cs *clusterSecurity) readCRL(path string) (*x509.RevocationList, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, false
	}
	cs.mu.Lock()
	prev, seen := cs.crlSeen[path]
	cs.mu.Unlock()
	if seen && fi.ModTime().Equal(prev.mod) && fi.Size() == prev.size {
		return nil, false
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	if b, _ := pem.Decode(data); b != nil {
		data = b.Bytes
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil, false
	}
	mem := crlMemory{mod: fi.ModTime(), size: fi.Size(), revoked: map[string]bool{}}
	for _, e := range crl.RevokedCertificateEntries {
		mem.revoked[string(crl.RawIssuer)+"\x00"+e.SerialNumber.Text(16)] = true
	}
	cs.mu.Lock()
	cs.crlSeen[path] = mem
	cs.mu.Unlock()
	return crl, true
}

// checkCRL sends the certificates a CRL file revokes since it was last
// read to the other nodes.
func (cs *clusterSecurity) checkCRL(path string) {
	cs.crlMu.Lock()
	defer cs.crlMu.Unlock()
	cs.mu.Lock()
	before := cs.crlSeen[path].revoked
	cs.mu.Unlock()
	crl, changed := cs.readCRL(path)
	if !changed {
		return
	}
	var serials []string
	for _, e := range crl.RevokedCertificateEntries {
		s := e.SerialNumber.Text(16)
		if !before[string(crl.RawIssuer)+"\x00"+s] {
			serials = append(serials, s)
		}
	}
	if len(serials) == 0 {
		return
	}
	cs.log.Info("cluster: certificates revoked here; telling the other nodes", "crl", path, "serials", serials)
	cs.publish(reevaluation{Trigger: "revocation", CRL: crl.Raw, Serials: serials,
		Reason: "certificate revoked (" + crl.Issuer.String() + ")"})
	cs.putRevocations(path, crl)
}
