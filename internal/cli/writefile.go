package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// writeFileSynced writes data to a new file beside path with mode, syncs
// it and renames it over path: a reader or a crash sees the old content
// or the new, never a part.
func writeFileSynced(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// A record is a small JSON file of this node's state in DATA_DIR
// ({"version": 1, ...}): the lifts not yet in the cluster, the shared
// files' agreed versions.

// readRecord reads the record at path into v. It reports found false for
// a missing file (a first start), and an error for one that does not
// parse or has a version other than 1.
func readRecord(path string, v any) (found bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return true, err
	}
	if head.Version != 1 {
		return true, fmt.Errorf("version %d unknown", head.Version)
	}
	return true, json.Unmarshal(data, v)
}

// writeRecord writes v as the record at path, mode 0600, atomically and
// synced (writeFileSynced).
func writeRecord(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFileSynced(path, data, 0o600)
}
