package cli

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/store"
)

// Where the ban list is kept (docs/defense.md, "Where bans are kept"):
// with the durable store on, in the store (record kind ban), behind the
// guard's BanStore seam; without it, in DATA_DIR/bans.json. A running
// broker serves DATA_DIR/bans.sock, through which `moat ban` changes the
// list at once whichever it is (the store is held open by the broker and
// no other process can write it while it runs).

// storeBans is the guard's BanStore in the durable store. The store is
// written by this process only (bbolt holds it exclusively), so the list
// last read or written is kept in memory: a whole-list Write from the
// guard becomes the few PutBan and DeleteBan ops that differ, and Read
// costs no decryption after the first.
type storeBans struct {
	st *store.Store

	mu     sync.Mutex // the BanStore lock: held from Lock to unlock
	cur    map[string]guard.Ban
	loaded bool
}

var _ guard.BanStore = (*storeBans)(nil)

func newStoreBans(st *store.Store) *storeBans { return &storeBans{st: st} }

func (s *storeBans) Lock() (func(), error) {
	s.mu.Lock()
	return s.mu.Unlock, nil
}

// Read returns the stored bans, each checked as the guard checks the bans
// file's: a ban the guard would refuse is an error (the broker does not
// start without its bans). Called with the lock held.
func (s *storeBans) Read() ([]guard.Ban, error) {
	if !s.loaded {
		recs, err := s.st.Bans()
		if err != nil {
			return nil, err
		}
		cur := make(map[string]guard.Ban, len(recs))
		for _, r := range recs {
			b := guard.Ban{ID: r.ID, Kind: guard.Kind(r.Kind), Value: r.Value, Reason: r.Reason, Source: r.Source,
				Created: r.Created, Expires: r.Expires}
			if err := b.Validate(); err != nil {
				return nil, fmt.Errorf("store: ban record %s: %w", r.ID, err)
			}
			cur[b.ID] = b
		}
		s.cur, s.loaded = cur, true
	}
	out := slices.Collect(maps.Values(s.cur))
	slices.SortFunc(out, func(a, b guard.Ban) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// Write stores bans in one commit: the bans new or changed since the last
// Read or Write, and the removal of those gone. Called with the lock
// held, after Read.
func (s *storeBans) Write(bans []guard.Ban) error {
	if !s.loaded {
		if _, err := s.Read(); err != nil {
			return err
		}
	}
	next := make(map[string]guard.Ban, len(bans))
	var ops []store.Op
	for _, b := range bans {
		next[b.ID] = b
		if old, ok := s.cur[b.ID]; !ok || !sameBan(old, b) {
			ops = append(ops, store.PutBan{Ban: &store.Ban{ID: b.ID, Kind: string(b.Kind), Value: b.Value, Reason: b.Reason,
				Source: b.Source, Created: b.Created, Expires: b.Expires}})
		}
	}
	for id := range s.cur {
		if _, ok := next[id]; !ok {
			ops = append(ops, store.DeleteBan{ID: id})
		}
	}
	if len(ops) > 0 {
		if err := s.st.Commit(context.Background(), ops...); err != nil {
			return err
		}
	}
	s.cur = next
	return nil
}

func sameBan(a, b guard.Ban) bool {
	return a.ID == b.ID && a.Kind == b.Kind && a.Value == b.Value && a.Reason == b.Reason && a.Source == b.Source &&
		a.Created.Equal(b.Created) && a.Expires.Equal(b.Expires)
}

// changeBans changes a BanStore as guard.File.Update does a file: under
// its lock, fn receives the stored bans and returns the next list.
func changeBans(bs guard.BanStore, fn func([]guard.Ban) ([]guard.Ban, error)) error {
	unlock, err := bs.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := bs.Read()
	if err != nil {
		return err
	}
	next, err := fn(cur)
	if err != nil {
		return err
	}
	return bs.Write(next)
}

// importBansFile moves the bans of the bans file into the store, once:
// the active ones are stored (a ban already there is stored again,
// unchanged, so a start interrupted after the commit imports the same
// bans again), then the file is renamed, not deleted, to
// bans.json.imported-TIME, so that the operator keeps it and no later
// start imports it twice. It returns the number imported and the new name
// ("" when there was no file). A file that does not read is an error: the
// broker does not start without its bans.
func importBansFile(bs *storeBans, path string, maxBans int, now time.Time) (int, string, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, "", nil
	}
	f := guard.File{Path: path, MaxBans: maxBans}
	unlock, err := f.Lock()
	if err != nil {
		return 0, "", err
	}
	defer unlock()
	inFile, err := f.Read()
	if err != nil {
		return 0, "", fmt.Errorf("%w (it was to be imported into the durable store)", err)
	}
	n := 0
	err = changeBans(bs, func(cur []guard.Ban) ([]guard.Ban, error) {
		have := map[string]bool{}
		for _, b := range cur {
			have[b.ID] = true
		}
		for _, b := range inFile {
			if b.Expires.IsZero() || now.Before(b.Expires) {
				n++
				if !have[b.ID] {
					cur = append(cur, b)
				}
			}
		}
		if len(cur) > maxBans {
			return nil, fmt.Errorf("importing %s: the store and the file hold %d bans together, more than max_bans (%d)", path, len(cur), maxBans)
		}
		return cur, nil
	})
	if err != nil {
		return 0, "", err
	}
	renamed := path + ".imported-" + now.UTC().Format("20060102T150405Z")
	if err := os.Rename(path, renamed); err != nil {
		return 0, "", fmt.Errorf("renaming the imported bans file: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return n, renamed, nil
}

// planBanStore keeps the ban list in the durable store when persistence
// is on: it imports DATA_DIR/bans.json left from a start without the
// store, records the import in the audit log, and points the guard at
// the store. With persistence off (and for --check, which opens no
// store) the guard keeps the bans file, as before; so it does when
// defense.bans_file names one: the operator chose that file (other tools
// may write it), and importing it would silently stop the broker from
// reading it.
func (p *servePlan) planBanStore(d *defense, gc *guard.Config) {
	if p.store == nil {
		return
	}
	if p.cfg.Defense.BansFile != "" {
		p.log.Info("serve: defense.bans_file is set: the ban list stays in that file, not in the durable store", "file", gc.BansFile)
		return
	}
	if p.broker.StoreQuarantines > 0 {
		p.log.Error("serve: the ban list was kept in the store moved aside as corrupt: the broker starts without the bans it held " +
			"(the moved file keeps them; bans.json, if any, is imported)")
	}
	bs := newStoreBans(p.store)
	maxBans := gc.MaxBans
	if maxBans == 0 {
		maxBans = guard.DefaultMaxBans
	}
	file := gc.BansFile
	n, renamed, err := importBansFile(bs, file, maxBans, time.Now())
	if err != nil {
		p.problem("defense.bans_file", "", err)
		return
	}
	if renamed != "" {
		p.log.Warn("serve: the bans file was imported into the durable store, where the ban list is kept from now on",
			"file", file, "bans", n, "renamed_to", renamed)
		if d.audit != nil {
			if err := d.audit.RecordWait(audit.Event{Type: audit.TypeBanImport, Fields: []audit.Field{
				audit.String("reason", "the ban list moved into the durable store"), audit.String("file", file),
				audit.String("renamed_to", renamed), audit.Int("count", int64(n))}}); err != nil {
				p.log.Error("serve: recording the import of the bans file in the audit log", "err", err)
			}
		}
	}
	gc.BansFile, gc.BanStore = "", bs
}

// serveBanControl serves the ban list's control socket, DATA_DIR/bans.sock,
// for `moat ban`, until the plan is closed. Each change made through it is
// recorded in the audit log as an admin.action (with the peer's user), as
// well as where it takes effect (ban.add, ban.remove). A socket that
// cannot be made is logged, not fatal: `moat ban` then falls back to the
// bans file, and a broker that holds the durable store is reached
// through the admin API.
func (p *servePlan) serveBanControl(d *defense) {
	path := filepath.Join(p.cfg.DataDir, guard.ControlSocketName)
	ln, err := guard.ListenControl(path)
	if err != nil {
		p.log.Warn("serve: the ban list's control socket is not served; moat ban reaches this broker only through the bans file (persistence off) or the admin API", "err", err)
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := d.g.ServeControl(ln, func(a guard.ControlAction) {
			d.record(audit.TypeAdminAction, audit.String("reason", "moat ban (control socket)"), audit.String("action", a.Action),
				audit.String("target", a.Target), audit.String("remote", a.Peer), audit.String("result", a.Result))
		}); err != nil {
			p.log.Error("serve: the ban list's control socket stopped", "err", err)
		}
	})
	// Closed before the guard (cleanup runs newest first).
	p.cleanup = append(p.cleanup, func() {
		ln.Close()
		wg.Wait()
	})
}
