package store

import (
	"cmp"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/moatmq/moat/e2e/keyservice"
)

// QuarantinedError reports a store that could not be opened and was moved
// aside; the caller logs it loudly, counts it and runs with the fresh,
// empty store OpenOrQuarantine returned.
type QuarantinedError struct {
	Path   string // where the damaged store file now is
	Reason error  // why it was moved (wraps ErrCorrupt or ErrRollback)
}

func (e *QuarantinedError) Error() string {
	return fmt.Sprintf("store: the store could not be opened and was moved to %s; starting empty: %v", e.Path, e.Reason)
}

func (e *QuarantinedError) Unwrap() error { return e.Reason }

// OpenOrQuarantine opens the store like Open. When the store is corrupt
// or rolled back (ErrCorrupt, ErrRollback), it renames the store file and
// its counter file to a timestamped name (nothing is deleted), creates an
// empty store and returns it with a *QuarantinedError describing what
// happened. Other errors (wrong or missing key, store in use, bad
// configuration) are returned as they are, with a nil Store: they are the
// operator's to fix, and starting empty would hide the data.
func OpenOrQuarantine(cfg Config) (*Store, *QuarantinedError, error) {
	s, err := Open(cfg)
	if err == nil {
		return s, nil, nil
	}
	if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrRollback) {
		return nil, nil, err
	}
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	suffix := ".quarantined-" + now().UTC().Format("20060102T150405.000000000Z")
	db := filepath.Join(cfg.Dir, DBFile)
	q := &QuarantinedError{Path: db + suffix, Reason: err}
	if rerr := os.Rename(db, q.Path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("store: moving the damaged store aside: %w (after: %v)", rerr, err)
	}
	ctr := filepath.Join(cfg.Dir, CounterFile)
	if rerr := os.Rename(ctr, ctr+suffix); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("store: moving the counter file aside: %w", rerr)
	}
	wal := filepath.Join(cfg.Dir, LogFile)
	if rerr := os.Rename(wal, wal+suffix); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("store: moving the log aside: %w", rerr)
	}
	if err := syncDir(cfg.Dir); err != nil {
		return nil, nil, err
	}
	s, err = Open(cfg)
	if err != nil {
		return nil, nil, err
	}
	return s, q, nil
}

// Verify opens the store read-only, decrypts and checks every record and
// the commit counter, and reports counts and problems. The error is
// non-nil when the store cannot be opened at all (wrong key, in use,
// unreadable); problems with records are in the report.
func Verify(cfg Config) (*Report, error) {
	s, err := openReadOnly(cfg)
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			return &Report{Problems: ce.Problems}, nil
		}
		if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrRollback) {
			return &Report{Problems: []string{err.Error()}}, nil
		}
		return nil, err
	}
	defer s.Close()
	return s.report, nil
}

func openReadOnly(cfg Config) (*Store, error) {
	cfg.readOnly = true
	return Open(cfg)
}

// Export writes every record, decrypted, to w as JSON lines (payloads and
// correlation data in base64), for inspection and migration. It refuses a
// store that does not verify.
func Export(cfg Config, w io.Writer) error {
	s, err := openReadOnly(cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	st := s.Recovered()
	enc := json.NewEncoder(w)
	line := func(kind string, v any) error { return enc.Encode(map[string]any{"kind": kind, "record": v}) }
	for _, id := range slices.Sorted(maps.Keys(st.Sessions)) {
		ss := st.Sessions[id]
		if ss.Session != nil {
			if err := line("session", ss.Session); err != nil {
				return err
			}
		}
		for _, d := range ss.Deliveries {
			if err := line("delivery", d); err != nil {
				return err
			}
		}
		for _, pid := range ss.Inbound {
			if err := line("inbound_qos2", inbound{ClientID: id, PacketID: pid}); err != nil {
				return err
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(st.Messages)) {
		if err := line("message", st.Messages[id]); err != nil {
			return err
		}
	}
	for _, r := range st.Retained {
		if err := line("retained", r); err != nil {
			return err
		}
	}
	for _, wl := range st.Wills {
		if err := line("will", wl); err != nil {
			return err
		}
	}
	// Ticket keys are listed without their key bytes (TicketKey's
	// MarshalJSON): they are secrets, and useless anywhere else.
	for _, l := range slices.Sorted(maps.Keys(st.TicketKeys)) {
		if err := line("ticket_keys", st.TicketKeys[l]); err != nil {
			return err
		}
	}
	slices.SortFunc(st.Bans, func(a, b *Ban) int { return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID)) })
	for _, b := range st.Bans {
		if err := line("ban", b); err != nil {
			return err
		}
	}
	return nil
}

// Compact verifies the store, copies it into a new file without free
// pages and replaces the store with it atomically. The store must not be
// open elsewhere.
func Compact(cfg Config) (before, after int64, err error) {
	s, err := openReadOnly(cfg)
	if err != nil {
		return 0, 0, err
	}
	path := s.path
	tmp := path + ".compact"
	os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		s.Close()
		return 0, 0, fmt.Errorf("store: %w", err)
	}
	err = bolt.Compact(dst, s.db, 1<<20)
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	s.Close()
	if err != nil {
		os.Remove(tmp)
		return 0, 0, fmt.Errorf("store: compacting: %w", err)
	}
	fb, _ := os.Stat(path)
	fa, _ := os.Stat(tmp)
	if err := os.Rename(tmp, path); err != nil {
		return 0, 0, fmt.Errorf("store: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return 0, 0, err
	}
	return fb.Size(), fa.Size(), nil
}

// NewKey says which KEK a rekeyed store is wrapped with. The zero value
// keeps the current KEK (a data key rotation only).
type NewKey struct {
	KEK        keyservice.KEKBackend // key file, environment key or KMS
	Passphrase []byte                // derive the KEK from a passphrase (new salt)
}

// Rekey verifies the store, re-seals every record under a new data key in
// a new file (one transaction), wraps the data key with the current or a
// new KEK, and replaces the store and its counter file. The store must
// not be open elsewhere. A crash before the final rename leaves the old
// store in place. Session ticket keys are not carried over: a rekey is
// done when the old key may be known, and with it the ticket keys it
// sealed; the broker makes new ones at its next start (clients then do
// one full handshake each).
func Rekey(cfg Config, next NewKey) error {
	if next.KEK != nil && len(next.Passphrase) > 0 {
		return errors.New("store: rekey to a KEK or a passphrase, not both")
	}
	cfg.setDefaults()
	defer clear(cfg.Passphrase)
	old, err := Open(cfg)
	if err != nil {
		return err
	}
	st := old.Recovered()
	hdrID := old.hdr.StoreID
	counter := old.st.Counter
	maxID := old.st.MaxID
	kek := old.kek
	if err := old.Close(); err != nil {
		return err
	}
	// Close left the log empty, every commit in the store file, and the
	// log is sealed under the old data key: the rekeyed store starts
	// without one. A crash after this leaves the old store without its
	// (empty) log, which opens.
	if err := os.Remove(filepath.Join(cfg.Dir, LogFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("store: %w", err)
	}
	if err := syncDir(cfg.Dir); err != nil {
		return err
	}
	ncfg := cfg
	ncfg.Dir = filepath.Join(cfg.Dir, ".rekey")
	os.RemoveAll(ncfg.Dir)
	defer os.RemoveAll(ncfg.Dir)
	ncfg.KEK, ncfg.Passphrase = kek, nil
	switch {
	case next.KEK != nil:
		ncfg.KEK = next.KEK
	case len(next.Passphrase) > 0:
		ncfg.KEK, ncfg.Passphrase = nil, next.Passphrase
	}
	ns := &Store{cfg: ncfg, refs: map[uint64]int{}, prefs: map[string]int{}, kek: ncfg.KEK, applyLog: true}
	ns.cfg.setDefaults()
	ns.path = filepath.Join(ncfg.Dir, DBFile)
	if err := os.MkdirAll(ncfg.Dir, 0o700); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := ns.openDB(); err != nil {
		return err
	}
	if err := ns.create(); err != nil {
		ns.db.Close()
		return err
	}
	// Keep the store's identity and continue its counter, so the counter
	// file stays monotonic.
	ns.hdr.StoreID = hdrID
	err = ns.rewrite(st, counter+1, maxID)
	if cerr := ns.db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// The new counter goes beside the old one first: whichever store file
	// a crash leaves in place, one of the two counter files opens it.
	ctr := filepath.Join(cfg.Dir, CounterFile)
	if err := ns.writeCounterTo(ctr+".next", true, ns.st.Counter); err != nil {
		return err
	}
	if err := os.Rename(ns.path, filepath.Join(cfg.Dir, DBFile)); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	ns.cfg.Dir = cfg.Dir
	if err := ns.writeCounter(); err != nil {
		return err
	}
	os.Remove(ctr + ".next")
	return syncDir(cfg.Dir)
}

// rewrite replaces the new store's content with st in one transaction,
// under a fresh data key bound to the kept store ID.
func (s *Store) rewrite(st *State, counter, maxID uint64) error {
	dek := make([]byte, dekLen)
	rand.Read(dek)
	defer clear(dek)
	var err error
	if s.keys, err = deriveKeys(dek, s.hdr.StoreID); err != nil {
		return err
	}
	if s.hdr.WrappedDEK, err = s.kek.Wrap(dek, s.hdr.wrapAAD()); err != nil {
		return fmt.Errorf("store: wrapping the data key: %w", err)
	}
	s.st = state{Counter: counter - 1, MaxID: maxID}
	s.nextID.Store(max(maxID, counter)) // seal IDs continue above every ID and counter of the old store
	var ops []Op
	for id, ss := range st.Sessions {
		if ss.Session != nil {
			ops = append(ops, PutSession{ss.Session})
		}
		for _, d := range ss.Deliveries {
			ops = append(ops, PutMessage{st.Messages[d.MsgID]}, PutDelivery{d})
		}
		for _, pid := range ss.Inbound {
			ops = append(ops, PutInbound{ClientID: id, PacketID: pid})
		}
	}
	for _, r := range st.Retained {
		ops = append(ops, PutRetained{r})
	}
	for _, w := range st.Wills {
		ops = append(ops, PutWill{w})
	}
	// Bans are carried over, unlike ticket keys: they are not secrets.
	for _, b := range st.Bans {
		ops = append(ops, PutBan{b})
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bktMeta).Put(keyHeader, s.hdr.marshal())
	})
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	r := s.newRequest(ops)
	if r.err != nil {
		return r.err
	}
	if _, err := s.commitTx([]*request{r}, true); err != nil {
		return err
	}
	return s.db.Sync()
}
