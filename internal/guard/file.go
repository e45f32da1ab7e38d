package guard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// BansFileName is the ban list's file name in the data directory.
const BansFileName = "bans.json"

const bansFileVersion = 1

// BanStore is where a Guard keeps its ban list: the bans file (File) or,
// in moat serve with the durable store on, the store. The Guard takes
// the lock, reads the whole list, writes the whole next list, and applies
// it in memory before it unlocks, so that a change another writer makes
// (moat ban, for a file) can never slip between its read and its use.
// Lock order: the BanStore's lock, then the Guard's own locks.
type BanStore interface {
	// Lock takes the list's exclusive lock (other processes included,
	// for a file) and returns the function that releases it.
	Lock() (unlock func(), err error)
	// Read returns the persisted bans, each validated; none is not an
	// error. Called with the lock held.
	Read() ([]Ban, error)
	// Write replaces the persisted bans with bans, atomically: after a
	// crash the list is the old one or the new one. Called with the lock
	// held.
	Write(bans []Ban) error
}

var _ BanStore = File{}

// File is the persistent ban list (DATA_DIR/bans.json): a JSON document
// written atomically (a temporary file renamed over it, mode 0600) under
// an advisory lock (Path + ".lock"), so that `moat ban` and a running
// broker can both change it without losing each other's bans.
type File struct {
	Path string
	// MaxBans and MaxSize bound what Read accepts. Defaults
	// DefaultMaxBans and DefaultMaxBansFileSize.
	MaxBans int
	MaxSize int64
}

type fileFormat struct {
	Version int   `json:"version"`
	Bans    []Ban `json:"bans"`
}

// Read returns the bans in the file, all of them validated, or an error
// naming the first problem; a missing file holds no bans.
func (f File) Read() ([]Ban, error) {
	maxSize := f.MaxSize
	if maxSize <= 0 {
		maxSize = DefaultMaxBansFileSize
	}
	maxBans := f.MaxBans
	if maxBans <= 0 {
		maxBans = DefaultMaxBans
	}
	fh, err := os.Open(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("guard: bans file: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("guard: bans file %s: %w", f.Path, err)
	}
	if int64(len(data)) > maxSize {
		return nil, fmt.Errorf("guard: bans file %s is larger than %d bytes: not loaded (was it replaced by something else?)", f.Path, maxSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc fileFormat
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("guard: bans file %s is not valid: %v (fix it or remove it; `moat ban list` shows what is loaded)", f.Path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("guard: bans file %s: data after the JSON document", f.Path)
	}
	if doc.Version != bansFileVersion {
		return nil, fmt.Errorf("guard: bans file %s: version %d, want %d", f.Path, doc.Version, bansFileVersion)
	}
	if len(doc.Bans) > maxBans {
		return nil, fmt.Errorf("guard: bans file %s holds %d bans, more than max_bans (%d)", f.Path, len(doc.Bans), maxBans)
	}
	seen := make(map[string]bool, len(doc.Bans))
	for i := range doc.Bans {
		b := &doc.Bans[i]
		if err := b.validate(); err != nil {
			return nil, fmt.Errorf("guard: bans file %s: entry %d: %w", f.Path, i+1, err)
		}
		if seen[b.ID] {
			return nil, fmt.Errorf("guard: bans file %s: ban ID %s appears twice", f.Path, b.ID)
		}
		seen[b.ID] = true
	}
	return doc.Bans, nil
}

// Update changes the file under its lock: fn receives the current bans
// and returns the new list, which is written atomically. An error from fn
// leaves the file unchanged.
func (f File) Update(fn func([]Ban) ([]Ban, error)) error {
	unlock, err := f.lock()
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := f.Read()
	if err != nil {
		return err
	}
	next, err := fn(cur)
	if err != nil {
		return err
	}
	return f.write(next)
}

// Lock takes the file's advisory lock (Path + ".lock"), creating its
// directory (0700). BanStore.
func (f File) Lock() (func(), error) { return f.lock() }

// Write replaces the file's bans atomically; hold Lock. BanStore.
func (f File) Write(bans []Ban) error { return f.write(bans) }

// lock takes the file's advisory lock, creating its directory (0700).
func (f File) lock() (func(), error) {
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o700); err != nil {
		return nil, fmt.Errorf("guard: bans file directory: %w", err)
	}
	unlock, err := lockFile(f.Path + ".lock")
	if err != nil {
		return nil, fmt.Errorf("guard: locking the bans file: %w", err)
	}
	return unlock, nil
}

func (f File) write(bans []Ban) error {
	bans = slices.Clone(bans)
	sortBans(bans)
	if bans == nil {
		bans = []Ban{}
	}
	data, err := json.MarshalIndent(fileFormat{Version: bansFileVersion, Bans: bans}, "", "  ")
	if err != nil {
		return fmt.Errorf("guard: encoding bans: %w", err)
	}
	data = append(data, '\n')
	tmp, err := os.CreateTemp(filepath.Dir(f.Path), ".bans-*.tmp")
	if err != nil {
		return fmt.Errorf("guard: writing the bans file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("guard: writing the bans file: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("guard: writing the bans file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("guard: writing the bans file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("guard: writing the bans file: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.Path); err != nil {
		return fmt.Errorf("guard: writing the bans file: %w", err)
	}
	if d, err := os.Open(filepath.Dir(f.Path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// sortBans orders bans by creation time, then ID.
func sortBans(b []Ban) {
	slices.SortFunc(b, func(x, y Ban) int {
		if c := x.Created.Compare(y.Created); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
}

// NewManualBan builds an operator's ban of value (of kind) for d (zero:
// forever) with reason, its ID drawn from r.
func NewManualBan(kind Kind, value string, d time.Duration, reason string, now time.Time, r io.Reader) (Ban, error) {
	if d < 0 {
		return Ban{}, errors.New("guard: negative ban duration")
	}
	id, err := newBanID(r)
	if err != nil {
		return Ban{}, err
	}
	b := Ban{ID: id, Kind: kind, Value: value, Reason: reason, Source: SourceManual, Created: now.UTC()}
	if d > 0 {
		b.Expires = b.Created.Add(d)
	}
	if err := b.validate(); err != nil {
		return Ban{}, err
	}
	return b, nil
}
