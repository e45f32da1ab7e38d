package cli

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"
)

// clusterStoreKeyFile is the key the embedded NATS server encrypts its
// JetStream files with, in DATA_DIR/cluster (docs/cluster.md, "Data at
// rest").
const clusterStoreKeyFile = "jetstream.key"

// clusterStoreKey reads the node's JetStream key from path, creating it
// (32 random bytes, hex, mode 0600) when it does not exist. A key that
// others than its owner can read is refused, as the store's key file is.
// What it protects: copies of the JetStream files (the replicated
// sessions, the messages between nodes, retained messages and claims)
// without the key; not somebody who can read the whole data directory.
func clusterStoreKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, err
		}
		if _, err := f.WriteString(hex.EncodeToString(key) + "\n"); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		return key, f.Close()
	}
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: readable by others than its owner (mode %v); chmod 600 it", path, fi.Mode().Perm())
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("%s: want 64 hexadecimal digits", path)
	}
	return key, nil
}

// clusterSync gives JetStream the store's durability (docs/cluster.md,
// "Data at rest"): with persistence sync always (the default) every
// JetStream write is fsynced before it is acknowledged, with batch it is
// flushed every batch interval (default 1 s); off, or without
// persistence, the NATS default applies (a flush every 2 minutes: the
// replicas keep what was acknowledged unless they all lose power).
func clusterSync(enabled bool, mode string, batch time.Duration) (always bool, interval time.Duration) {
	if !enabled {
		return false, 0
	}
	switch mode {
	case "", "always":
		return true, 0
	case "batch":
		if batch <= 0 {
			batch = time.Second
		}
		return false, batch
	}
	return false, 0
}
