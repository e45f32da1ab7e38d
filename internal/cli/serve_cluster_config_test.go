package cli

import (
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/config"
)

// TestNodeConfigFromYAML: the cluster section's settings reach the
// node's Config as written, and left out they stay zero (the node's
// defaults: adoption after 60 s, a catch-up idle for 30 s or 10 min in
// all).
func TestNodeConfigFromYAML(t *testing.T) {
	const base = "listeners:\n  - {address: \"127.0.0.1:1883\", transport: tcp}\n" +
		"cluster:\n  name: fleet\n  node: n2\n  listen: 127.0.0.1:7422\n  peers: [127.0.0.1:7421, 127.0.0.1:7422]\n"
	for _, tc := range []struct {
		extra            string
		adopt, idle, max time.Duration
	}{
		{"", 0, 0, 0},
		{"  adopt_after: 90s\n  catch_up_idle: 5s\n  catch_up_max: 2h\n", 90 * time.Second, 5 * time.Second, 2 * time.Hour},
	} {
		cfg, err := config.Parse("moat.yaml", []byte(base+tc.extra))
		if err != nil {
			t.Fatalf("%q: %v", tc.extra, err)
		}
		dir := t.TempDir()
		nc := nodeConfig(cfg.Cluster, dir, slog.Default())
		if nc.Name != "fleet" || nc.Node != "n2" || nc.Listen != "127.0.0.1:7422" ||
			!slices.Equal(nc.Peers, []string{"127.0.0.1:7421", "127.0.0.1:7422"}) || nc.StoreDir != filepath.Join(dir, "jetstream") {
			t.Errorf("%q: node %+v", tc.extra, nc)
		}
		if nc.AdoptAfter != tc.adopt || nc.CatchUpIdle != tc.idle || nc.CatchUpMax != tc.max {
			t.Errorf("%q: adopt_after %v, catch_up_idle %v, catch_up_max %v; want %v, %v, %v",
				tc.extra, nc.AdoptAfter, nc.CatchUpIdle, nc.CatchUpMax, tc.adopt, tc.idle, tc.max)
		}
	}
}
