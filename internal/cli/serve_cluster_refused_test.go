package cli

import (
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/cluster"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/testutil"
)

// TestSecurityClusterRefusedBanReported: on a node of a three-node
// cluster whose peers never come (no JetStream quorum, so the security
// buckets are unreachable), bans added and removed by an operator hold on
// the node at once; once the cluster's queue is full, AddBan and
// RemoveBan (what moat ban and the admin API call) return the cluster's
// refusal, and a removal of a ban whose change already waits is accepted.
func TestSecurityClusterRefusedBanReported(t *testing.T) {
	ports := []int{testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)}
	var peers []string
	for _, p := range ports {
		peers = append(peers, "127.0.0.1:"+strconv.Itoa(p))
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nd, err := cluster.Start(cluster.Config{Name: "t", Node: "n1", Listen: peers[0], Peers: peers,
		StoreDir: filepath.Join(t.TempDir(), "js"), Logger: log, MaxPendingSecurity: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nd.Close)
	g, err := guard.New(guard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	cs := &clusterSecurity{node: nd, self: "n1", log: log, d: &defense{g: g, log: log},
		applying: map[string]string{}, removing: map[string]string{}, known: map[string]knownBan{},
		refused: map[string]bool{}, refusedErr: map[string]error{}, crlSeen: map[string]crlMemory{}, files: map[string]*sharedFile{}}
	g.OnBan(cs.onBan)
	g.Replicate(cs.replicate)

	add := func(value string) (guard.Ban, error) {
		b, err := guard.NewManualBan(guard.KindClientID, value, time.Hour, "test", time.Now(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return g.AddBan(b)
	}
	b1, err := add("one")
	if err != nil {
		t.Fatalf("first ban: %v", err)
	}
	if _, err := add("two"); err != nil {
		t.Fatalf("second ban: %v", err)
	}
	b3, err := add("three")
	if !errors.Is(err, guard.ErrNotReplicated) ||
		!strings.Contains(err.Error(), "cluster unreachable: 2 security changes pending; not applied cluster-wide") {
		t.Fatalf("third ban: %v; want the cluster's refusal", err)
	}
	if _, ok := g.BannedIdentity(guard.Identity{ClientID: "three"}); !ok {
		t.Fatal("a ban the cluster refused is not in force on its node")
	}
	if st := nd.Status(); st.SecurityRefused != 1 || st.SecurityPending != 2 {
		t.Fatalf("status: %d refused, %d pending; want 1 and 2", st.SecurityRefused, st.SecurityPending)
	}
	// Lifting a ban whose change waits replaces that change.
	if _, err := g.RemoveBan(b1.ID); err != nil {
		t.Fatalf("removing a ban whose change waits: %v", err)
	}
	// Lifting the refused ban is a new change: refused too, and in force.
	if _, err := g.RemoveBan(b3.ID); !errors.Is(err, guard.ErrNotReplicated) {
		t.Fatalf("removing the refused ban: %v; want the cluster's refusal", err)
	}
	if _, ok := g.BannedIdentity(guard.Identity{ClientID: "three"}); ok {
		t.Fatal("a removal the cluster refused is not in force on its node")
	}
	// Nothing is offered again while the queue is full.
	cs.retryRefused()
	if st := nd.Status(); st.SecurityRefused != 2 || st.SecurityPending != 2 {
		t.Fatalf("status after the retry: %d refused, %d pending; want 2 and 2", st.SecurityRefused, st.SecurityPending)
	}
}
