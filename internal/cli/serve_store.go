package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/store/brokerstore"
)

// planStore opens the durable store when persistence is on and hands it
// to the broker (docs/durability.md). The store is opened before the
// broker, which recovers from it in broker.New, and closed after the
// broker has shut down (the plan's cleanup runs newest first).
//
// A corrupt or rolled-back store is moved aside and the broker starts
// empty, with an error in the log and StoreQuarantines in its Stats: a
// damaged file never keeps the broker from starting. A wrong or missing
// key, or a store in use by another process, is a problem of the plan:
// the operator must fix it, and starting empty would hide the data.
func (p *servePlan) planStore() {
	pc := p.cfg.Persistence
	if !pc.Enabled {
		return
	}
	dir := pc.Location
	if dir == "" {
		dir = filepath.Join(p.cfg.DataDir, "store")
	}
	mode, err := store.ParseSyncMode(pc.Sync)
	if err != nil {
		p.problem("persistence.sync", "", err)
		return
	}
	if p.check {
		// --check changes nothing on disk, and a running broker holds the
		// store's lock: it only says when serve would create the store.
		if _, err := os.Stat(filepath.Join(dir, store.DBFile)); errors.Is(err, os.ErrNotExist) {
			p.notes = append(p.notes, fmt.Sprintf("serve creates the store in %s (sync %s) and, unless a key is configured, its key file", dir, mode))
		}
		return
	}
	kek, pass, err := keySource(Stdio{}, pc.KeyFile, envStoreKey, "", envStorePassphrase, false, "")
	if err != nil {
		p.problem("persistence.key_file", "", err)
		return
	}
	cfg := store.Config{Dir: dir, Sync: mode, BatchInterval: pc.BatchInterval.D(), KEK: kek, Passphrase: pass}
	if kek == nil && pass == nil {
		cfg.KeyFile = filepath.Join(dir, store.KeyFile) // created with the store, mode 0600
	}
	st, quarantined, err := store.OpenOrQuarantine(cfg)
	if err != nil {
		p.problem("persistence", "", fmt.Errorf("%w (store directory %s)", err, dir))
		return
	}
	if quarantined != nil {
		p.log.Error("serve: STORE QUARANTINED: the broker starts with empty state; inspect the moved file with `moat store verify`",
			"err", quarantined, "moved_to", quarantined.Path)
		p.broker.StoreQuarantines = 1
	}
	p.broker.Persistence = brokerstore.New(st)
	p.store = st // TLS listeners keep their ticket keys in it (serve_tickets.go)
	p.cleanup = append(p.cleanup, func() {
		if err := st.Close(); err != nil {
			p.log.Error("serve: closing the store failed", "dir", dir, "err", err)
		}
	})
	p.log.Info("serve: durable store open", "dir", dir, "sync", mode.String())
}
