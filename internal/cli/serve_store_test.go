package cli

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/store"
)

func storePlanConfig(t *testing.T, dir string) *config.Config {
	t.Helper()
	conf := filepath.Join(dir, "mosquitto.conf")
	// buildPlan does not bind: the port is never used.
	writeFile(t, conf, fmt.Sprintf("listener 1883 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s\n",
		filepath.Join(dir, "state")))
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	// The audit log and bans live in the data directory: never the
	// package directory a relative default would name.
	cfg.DataDir = filepath.Join(dir, "data")
	return cfg
}

// A store that does not verify is moved aside, logged and counted, and
// the broker starts empty instead of refusing to start.
func TestServeStoreQuarantined(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := buildPlan(storePlanConfig(t, dir), log, false)
	if err != nil {
		t.Fatal(err)
	}
	p.close()
	db := filepath.Join(dir, "state", store.DBFile)
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	for i := 2 * 4096; i < len(b); i += 512 {
		b[i] ^= 0xFF // damage every page after the two meta pages
	}
	os.WriteFile(db, b, 0o600)

	p, err = buildPlan(storePlanConfig(t, dir), log, false)
	if err != nil {
		t.Fatalf("a corrupt store kept the broker from starting: %v", err)
	}
	defer p.close()
	if n := p.srv.Stats().StoreQuarantines; n != 1 {
		t.Fatalf("StoreQuarantines %d, want 1", n)
	}
	moved, _ := filepath.Glob(db + ".quarantined-*")
	if len(moved) != 1 {
		t.Fatalf("quarantined files: %v", moved)
	}
}

// A key that does not open the store is an error at start, naming the
// cause; the store is left as it is.
func TestServeStoreWrongKey(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := buildPlan(storePlanConfig(t, dir), log, false)
	if err != nil {
		t.Fatal(err)
	}
	p.close()
	if fi, err := os.Stat(filepath.Join(dir, "state", store.KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file created on first start: %v %v", fi, err)
	}
	other := filepath.Join(dir, "other.key")
	if err := keyservice.GenerateKEKFile(other); err != nil {
		t.Fatal(err)
	}
	cfg := storePlanConfig(t, dir)
	cfg.Persistence.KeyFile = other
	if _, err := buildPlan(cfg, log, false); err == nil || !strings.Contains(err.Error(), "the key does not open this store") {
		t.Fatalf("wrong key: %v", err)
	}
	cfg.Persistence.KeyFile = filepath.Join(dir, "missing.key")
	if _, err := buildPlan(cfg, log, false); err == nil || !strings.Contains(err.Error(), "missing.key") {
		t.Fatalf("missing key: %v", err)
	}
	if moved, _ := filepath.Glob(filepath.Join(dir, "state", "*.quarantined-*")); len(moved) != 0 {
		t.Fatalf("a wrong key quarantined the store: %v", moved)
	}
}
