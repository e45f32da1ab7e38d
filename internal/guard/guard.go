// Package guard defends the broker against abusive clients (MQTT 3.1.1
// §5.4.8): it detects repeated authentication failures, topic scanning,
// connection floods, flapping, undeliverable publishing, silent clients
// and clients that keep hitting the broker's limits; keeps the ban list
// (addresses and CIDR prefixes, client IDs, usernames, certificate
// fingerprints and serials) with expiry, persisted behind a BanStore (the
// bans file, or the broker's durable store) and changed by `moat ban`
// through a control socket; and rate-limits connections per source
// address and per listener, connections held per address, and each
// client's messages and bytes per second.
//
// The broker reaches it only through calls wired in internal/cli (see
// docs/design/guard.md): every method is safe for concurrent use unless
// its comment says otherwise, and every decision carries a reason for the
// log and the audit trail.
package guard

import (
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Decision is an allow/deny answer with the reason for logs.
type Decision struct {
	Allow  bool
	Reason string
}

// Verdict is what a detector tells the broker after an event. The zero
// Verdict means nothing was detected. Bans the detection added have
// already been applied (OnBan callbacks included).
type Verdict struct {
	// Detected is the detector that triggered ("" when none).
	Detected string
	// Disconnect asks the broker to disconnect the client now.
	Disconnect bool
	// Reason explains the detection for the log and the audit trail.
	Reason string
}

// Guard is the defense state of one broker. Create it with New; Close
// stops its bans file watcher.
type Guard struct {
	cfg  settings
	now  func() time.Time
	rand io.Reader
	log  *slog.Logger

	conns   *addrTable
	perAddr connCounts

	// store keeps the ban list (Config.BanStore, or a File for
	// Config.BansFile); nil keeps it in memory only.
	store BanStore

	bansMu    sync.RWMutex
	bans      *banSet
	epoch     atomic.Uint64 // BanEpoch; moved on under bansMu with every ban added
	pending   []Ban         // automatic bans in memory, not yet written to the store
	fileStamp os.FileInfo

	cbMu      sync.Mutex
	onBan     []func(Match)
	replicate func(id string, removed bool) error

	det map[string]*detector

	offMu    sync.Mutex
	offences map[trackKey]offence

	stats counters
	rates atomic.Pointer[ClientRates] // live.go
	live  liveLimits                  // livelimits.go

	// hook, set by tests, is called at named points of the bans file's
	// handling, so that a test can interleave a poll and a removal
	// without sleeping.
	hook atomic.Pointer[func(point string)]

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New validates cfg (returning every problem at once), loads the bans
// file when one is configured (a file that cannot be read is an error:
// the broker must not start without its bans), and starts the goroutine
// that watches the file and expires bans. The caller must Close the Guard.
func New(cfg Config) (*Guard, error) {
	s, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	g := &Guard{
		cfg:      s,
		now:      cfg.Now,
		rand:     cfg.Rand,
		log:      cfg.Logger,
		bans:     newBanSet(),
		det:      map[string]*detector{},
		offences: map[trackKey]offence{},
		done:     make(chan struct{}),
	}
	if g.now == nil {
		g.now = time.Now
	}
	if g.rand == nil {
		g.rand = rand.Reader
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	var seed [16]byte
	if _, err := io.ReadFull(g.rand, seed[:]); err != nil {
		return nil, errors.New("guard: reading randomness for the address table: " + err.Error())
	}
	g.rates.Store(clientRatesOf(&s))
	g.conns = newAddrTable(s.ConnTableSize, seed)
	g.live.store(limitsOf(&s))
	g.perAddr.n = map[addrKey]int32{}
	for name, d := range s.detectors {
		g.det[name] = &detector{name: name, keys: map[trackKey]window{}}
		g.det[name].cfg.Store(&d)
	}
	switch {
	case s.BansFile != "":
		g.store = File{Path: s.BansFile, MaxBans: s.MaxBans, MaxSize: s.MaxBansFileSize}
	case s.BanStore != nil:
		g.store = s.BanStore
	}
	if g.store != nil {
		if err := g.syncBans(); err != nil {
			return nil, err
		}
	}
	tick := cfg.Tick
	var ticker *time.Ticker
	if tick == nil {
		ticker = time.NewTicker(s.PollInterval)
		tick = ticker.C
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if ticker != nil {
			defer ticker.Stop()
		}
		for {
			select {
			case <-g.done:
				return
			case <-tick:
				g.Poll()
			}
		}
	}()
	return g, nil
}

// Close stops the watcher, waits for it, and writes automatic bans not yet
// in the ban list's store. The Guard's other methods keep working.
func (g *Guard) Close() error {
	var err error
	g.closeOnce.Do(func() {
		close(g.done)
		g.wg.Wait()
		if g.store != nil {
			g.bansMu.RLock()
			n := len(g.pending)
			g.bansMu.RUnlock()
			if n > 0 {
				err = g.syncBans()
			}
		}
	})
	return err
}

// Poll expires bans, reloads the bans file when it changed and writes new
// automatic bans to the ban list's store. The watcher calls it every
// PollInterval. A BanStore other than the file is not watched: only this
// Guard changes it.
func (g *Guard) Poll() {
	g.expire()
	if g.store == nil {
		g.bansMu.Lock()
		g.pending = nil
		g.bansMu.Unlock()
		return
	}
	g.bansMu.RLock()
	dirty := len(g.pending) > 0
	old := g.fileStamp
	g.bansMu.RUnlock()
	changed := false
	if g.cfg.BansFile != "" {
		fi, err := os.Stat(g.cfg.BansFile)
		changed = (err == nil) != (old != nil) ||
			err == nil && (!os.SameFile(old, fi) || !old.ModTime().Equal(fi.ModTime()) || old.Size() != fi.Size())
	}
	if !changed && !dirty {
		return
	}
	if err := g.syncBans(); err != nil {
		g.stats.bansFileErrors.Add(1)
		if g.cfg.BansFile != "" {
			g.log.Error("guard: bans file not reloaded; the bans loaded before stay in force", "file", g.cfg.BansFile, "err", err)
		} else {
			g.log.Error("guard: automatic bans not written to the ban list's store; they stay in force and are written at the next poll", "err", err)
		}
	}
}

// expire removes expired bans.
func (g *Guard) expire() {
	now := g.now()
	var gone []Ban
	g.bansMu.Lock()
	for id, b := range g.bans.byID {
		if !b.active(now) {
			g.bans.remove(id)
			gone = append(gone, *b)
		}
	}
	g.bansMu.Unlock()
	for _, b := range gone {
		g.stats.bansExpired.Add(1)
		g.log.Info("guard: ban expired", "ban", b.ID, "kind", string(b.Kind), "value", clip(b.Value), "source", b.Source)
	}
}

// syncBans merges the ban list's store (the bans file, or Config.BanStore)
// and the pending automatic bans: it writes the pending ones to the store
// (when there are any), then makes the store's content plus whatever is
// still pending the bans in force. Bans new to memory are passed to the
// OnBan callbacks.
//
// The store's lock is held until memory is updated: RemoveBan changes the
// store and memory under the same lock, so a removal cannot slip between
// this read of the store and its use (the ban would come back from the
// stale read, and be reported to OnBan as new). Lock order: the store's
// lock, then bansMu.
func (g *Guard) syncBans() error {
	f := g.store
	now := g.now()
	unlock, err := f.Lock()
	if err != nil {
		return err
	}
	inFile, err := f.Read()
	if err != nil {
		unlock()
		return err
	}
	g.bansMu.RLock()
	pend := slices.Clone(g.pending)
	g.bansMu.RUnlock()
	written := map[string]bool{}
	if len(pend) > 0 {
		have := map[string]bool{}
		next := make([]Ban, 0, len(inFile)+len(pend))
		for _, b := range inFile {
			if b.active(now) {
				next = append(next, b)
				have[b.ID] = true
			}
		}
		for _, b := range pend {
			written[b.ID] = true
			if have[b.ID] || !b.active(now) {
				continue
			}
			if len(next) >= g.limits().MaxBans {
				g.stats.bansRefusedFull.Add(1)
				g.log.Error("guard: ban dropped: the ban list is full (max_bans)", "ban", b.ID, "kind", string(b.Kind), "value", clip(b.Value))
				continue
			}
			next = append(next, b)
		}
		if err := f.Write(next); err != nil {
			unlock()
			return err
		}
		inFile = next
	}
	// The stamp is taken under the lock, so a change made after it is
	// seen at the next poll.
	var fi os.FileInfo
	if g.cfg.BansFile != "" {
		fi, _ = os.Stat(g.cfg.BansFile)
	}
	g.at(hookFileRead)

	var added, removed []Ban
	g.bansMu.Lock()
	old := g.bans
	g.pending = slices.DeleteFunc(g.pending, func(b Ban) bool { return written[b.ID] })
	next := newBanSet()
	for i := range inFile {
		b := inFile[i]
		if !b.active(now) {
			continue
		}
		next.add(&b)
		if _, ok := old.byID[b.ID]; !ok {
			added = append(added, b)
		}
	}
	for i := range g.pending {
		b := g.pending[i]
		if _, ok := next.byID[b.ID]; !ok {
			next.add(&b)
		}
	}
	for id, b := range old.byID {
		if _, ok := next.byID[id]; !ok && b.active(now) {
			removed = append(removed, *b)
		}
	}
	g.bans = next
	g.fileStamp = fi
	if len(added) > 0 {
		g.epoch.Add(1)
	}
	g.bansMu.Unlock()
	unlock()

	for _, b := range removed {
		g.stats.bansRemoved.Add(1)
		g.log.Warn("guard: ban removed from the bans file", "ban", b.ID, "kind", string(b.Kind), "value", clip(b.Value))
	}
	for _, b := range added {
		g.stats.bansAdded.Add(1)
		g.log.Warn("guard: ban loaded from the bans file", "ban", b.ID, "kind", string(b.Kind), "value", clip(b.Value),
			"source", b.Source, "expires", b.Expires, "reason", clip(b.Reason))
	}
	g.notify(added)
	return nil
}

// Points of Guard.hook.
const (
	hookFileRead = "file-read" // syncBans read the store, before it applies it
	hookRemoving = "removing"  // RemoveBan, before it takes the file's lock
)

func (g *Guard) at(point string) {
	if f := g.hook.Load(); f != nil {
		(*f)(point)
	}
}

// counters are the guard's metrics.
type counters struct {
	connRateRefused     atomic.Uint64
	listenerRateRefused atomic.Uint64
	connsPerAddrRefused atomic.Uint64
	addrBanRefused      atomic.Uint64
	identityBanRefused  atomic.Uint64
	throttled           atomic.Uint64
	throttleDisconnects atomic.Uint64
	bansAdded           atomic.Uint64
	autoBans            atomic.Uint64
	bansExpired         atomic.Uint64
	bansRemoved         atomic.Uint64
	bansRefusedFull     atomic.Uint64
	bansFileErrors      atomic.Uint64
}

// DetectorStats counts one detector's events and detections.
type DetectorStats struct {
	Events     uint64 // events recorded
	Detections uint64 // thresholds reached
	Tracked    int    // identities counted now
}

// Stats is a snapshot of the guard's counters (for metrics and $SYS).
type Stats struct {
	Detectors map[string]DetectorStats

	ConnRateRefused     uint64 // connections closed at accept: per-address rate
	ListenerRateRefused uint64 // connections closed at accept: listener rate
	ConnsPerAddrRefused uint64 // connections refused: MaxConnsPerAddr
	AddrBanRefused      uint64 // connections closed at accept: banned address
	IdentityBanRefused  uint64 // CONNECTs refused: banned identity
	Throttled           uint64 // reads paused by a client's rate limit
	ThrottleDisconnects uint64 // clients disconnected for staying over their rate
	BansAdded           uint64 // bans added (manual, automatic, from the file)
	AutoBans            uint64 // bans added by detectors
	BansExpired         uint64
	BansRemoved         uint64 // bans removed (RemoveBan, or from the bans file)
	BansRefusedFull     uint64 // bans refused: MaxBans reached
	BansFileErrors      uint64 // reloads or writes of the ban list's store that failed
	Bans                int    // bans in force
	ConnTableEntries    int64  // addresses in the connection-rate table
	ConnTableSize       int    // its fixed capacity
}

// Stats returns the current counters.
func (g *Guard) Stats() Stats {
	s := Stats{
		Detectors:           map[string]DetectorStats{},
		ConnRateRefused:     g.stats.connRateRefused.Load(),
		ListenerRateRefused: g.stats.listenerRateRefused.Load(),
		ConnsPerAddrRefused: g.stats.connsPerAddrRefused.Load(),
		AddrBanRefused:      g.stats.addrBanRefused.Load(),
		IdentityBanRefused:  g.stats.identityBanRefused.Load(),
		Throttled:           g.stats.throttled.Load(),
		ThrottleDisconnects: g.stats.throttleDisconnects.Load(),
		BansAdded:           g.stats.bansAdded.Load(),
		AutoBans:            g.stats.autoBans.Load(),
		BansExpired:         g.stats.bansExpired.Load(),
		BansRemoved:         g.stats.bansRemoved.Load(),
		BansRefusedFull:     g.stats.bansRefusedFull.Load(),
		BansFileErrors:      g.stats.bansFileErrors.Load(),
		ConnTableEntries:    g.conns.used.Load(),
		ConnTableSize:       len(g.conns.sets) * tableWays,
	}
	for name, d := range g.det {
		d.mu.Lock()
		n := len(d.keys)
		d.mu.Unlock()
		s.Detectors[name] = DetectorStats{Events: d.events.Load(), Detections: d.triggers.Load(), Tracked: n}
	}
	g.bansMu.RLock()
	s.Bans = len(g.bans.byID)
	g.bansMu.RUnlock()
	return s
}
