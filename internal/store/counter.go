package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// The counter file holds the store's commit counter, wrapped by the KEK
// and bound to the store's ID. It is written only after the commit it
// names is on disk, so it never runs ahead of the store file; a store
// file whose counter is behind it was replaced by an older copy.

const counterMagic = "MOATCTR1"

func (s *Store) counterAAD(next bool) []byte {
	a := append([]byte("moat-store counter/1"), s.hdr.StoreID[:]...)
	if next {
		// The counter a rekey writes before it swaps files counts only
		// for the header (data key) that rekey wrote.
		a = append(append(a, "next"...), s.hdr.WrappedDEK...)
	}
	return a
}

// writeCounter atomically replaces the counter file with the current
// commit counter. Only the committer, or the owner of the Store once the
// committer has ended, calls it.
func (s *Store) writeCounter() error { return s.writeCounterAt(s.st.Counter) }

// writeCounterAt writes counter c, which must be on disk.
func (s *Store) writeCounterAt(c uint64) error {
	return s.writeCounterTo(filepath.Join(s.cfg.Dir, CounterFile), false, c)
}

func (s *Store) writeCounterTo(path string, next bool, c uint64) error {
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], c)
	wrapped, err := s.kek.Wrap(v[:], s.counterAAD(next))
	if err != nil {
		return fmt.Errorf("store: wrapping the commit counter: %w", err)
	}
	return writeFileAtomic(path, append([]byte(counterMagic), wrapped...))
}

// readCounter returns the counter a counter file holds for this store.
func (s *Store) readCounter(path string, next bool) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	if len(b) < len(counterMagic) || string(b[:len(counterMagic)]) != counterMagic {
		return 0, fmt.Errorf("%w: the counter file %s is damaged", ErrRollback, filepath.Base(path))
	}
	v, err := s.kek.Unwrap(b[len(counterMagic):], s.counterAAD(next))
	if err != nil || len(v) != 8 {
		return 0, fmt.Errorf("%w: the counter file %s does not belong to this store or this key", ErrRollback, filepath.Base(path))
	}
	return binary.BigEndian.Uint64(v), nil
}

// checkCounter compares the store's commit counter with the counter file
// (and with the one a rekey writes before it swaps files, if a crash left
// it): the highest valid counter must not be ahead of the store.
func (s *Store) checkCounter() error {
	path := filepath.Join(s.cfg.Dir, CounterFile)
	c, err := s.readCounter(path, false)
	if next, nerr := s.readCounter(path+".next", true); nerr == nil && (err != nil || next > c) {
		c, err = next, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: the counter file %s is missing", ErrRollback, CounterFile)
	}
	if err != nil {
		return err
	}
	if c > s.st.Counter {
		return fmt.Errorf("%w: the store is at commit %d, the counter file at %d", ErrRollback, s.st.Counter, c)
	}
	return nil
}

// writeFileAtomic writes data to a temporary file, fsyncs it, renames it
// over path and fsyncs the directory.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("store: writing %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: syncing %s: %w", dir, err)
	}
	return nil
}
