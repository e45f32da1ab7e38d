package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
)

// SequenceStore persists the sequence numbers of a sender so that a nonce
// is never used twice, not even across a crash. Reserve durably records
// that every number below start+n is taken for stream and returns start,
// the first number of the reserved block; numbers of a block that were not
// used before a restart are skipped, never reused.
//
// Implementations must be safe for concurrent use and must not return
// before the reservation is on stable storage.
type SequenceStore interface {
	Reserve(stream string, n uint64) (start uint64, err error)
}

var (
	_ SequenceStore = (*FileSequenceStore)(nil)
	_ SequenceStore = (*MemorySequenceStore)(nil)
)

// ErrSequenceExhausted is returned when a stream has used every sequence
// number; the key epoch must be rotated.
var ErrSequenceExhausted = errors.New("e2e: sequence numbers exhausted")

// FileSequenceStore keeps reservations in one small JSON file, rewritten
// atomically (temporary file, fsync, rename, fsync of the directory) on
// every reservation. It is safe for concurrent use; on Unix several
// processes may share a file (each reservation holds an exclusive flock on
// PATH.lock and re-reads the file), elsewhere only one process may use it.
type FileSequenceStore struct {
	path string
	mu   sync.Mutex
	next map[string]uint64 // first number not yet reserved, per stream
}

// OpenFileSequenceStore opens (or creates, mode 0600) the store at path.
func OpenFileSequenceStore(path string) (*FileSequenceStore, error) {
	s := &FileSequenceStore{path: path, next: make(map[string]uint64)}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("e2e: reading sequence store: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&s.next); err != nil {
		return nil, fmt.Errorf("e2e: sequence store %s is corrupt (%v); refusing to start, as guessing could reuse nonces", path, err)
	}
	return s, nil
}

// Reserve implements [SequenceStore].
func (s *FileSequenceStore) Reserve(stream string, n uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := lockFile(s.path + ".lock")
	if err != nil {
		return 0, fmt.Errorf("e2e: locking sequence store: %w", err)
	}
	defer unlock()
	// Another process may have reserved since: take the larger value.
	if disk, err := OpenFileSequenceStore(s.path); err != nil {
		return 0, err
	} else if d := disk.next[stream]; d > s.next[stream] {
		s.next[stream] = d
	}
	start := s.next[stream]
	if n == 0 || start > math.MaxUint64-n {
		return 0, ErrSequenceExhausted
	}
	s.next[stream] = start + n
	if err := s.save(); err != nil {
		s.next[stream] = start
		return 0, err
	}
	return start, nil
}

func (s *FileSequenceStore) save() error {
	b, err := json.Marshal(s.next)
	if err != nil {
		return fmt.Errorf("e2e: encoding sequence store: %w", err)
	}
	dir := filepath.Dir(s.path)
	f, err := os.CreateTemp(dir, ".seq-*")
	if err != nil {
		return fmt.Errorf("e2e: writing sequence store: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("e2e: writing sequence store: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("e2e: writing sequence store: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("e2e: syncing sequence store: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("e2e: writing sequence store: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("e2e: writing sequence store: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("e2e: syncing sequence store directory: %w", err)
		}
	}
	return nil
}

// MemorySequenceStore keeps reservations in memory only. It suits tests
// and senders whose key never outlives the process; anything else must use
// a persistent store, or a restart would reuse nonces. The zero value is
// ready to use and safe for concurrent use.
type MemorySequenceStore struct {
	mu   sync.Mutex
	next map[string]uint64
}

// Reserve implements [SequenceStore].
func (s *MemorySequenceStore) Reserve(stream string, n uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next == nil {
		s.next = make(map[string]uint64)
	}
	start := s.next[stream]
	if n == 0 || start > math.MaxUint64-n {
		return 0, ErrSequenceExhausted
	}
	s.next[stream] = start + n
	return start, nil
}
