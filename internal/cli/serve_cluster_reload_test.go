package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/admin"
	"github.com/moatmq/moat/internal/cluster"
	"github.com/moatmq/moat/internal/config"
)

// TestSecurityClusterReloadReportsRefusedFile: three nodes in this
// process; two stop, so the survivor's security buckets are unreachable,
// and its queue of security changes is filled to the bound. An acl_file
// changed on the survivor and reloaded is applied there (the new rule
// holds for a client of that node), but the reload returns an error
// wrapping admin.ErrNotShared that names the file (what moat reload
// --admin and the admin API report, with a 503), and the node's status
// counts the refusal.
func TestSecurityClusterReloadReportsRefusedFile(t *testing.T) {
	t.Parallel()
	nodes, _, _ := startInprocCluster(t)
	n1 := nodes[0]
	// Connected while the cluster is whole: without a quorum a new
	// connection is refused (0x88).
	c, err := dialNode(t, n1.plain, client.Config{ClientID: "anon-1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if codes, err := c.Subscribe(ctx, client.Subscription{Filter: "extra/x", QoS: 1}); len(codes) != 1 || codes[0] < 0x80 {
		t.Fatalf("the subscription to extra/x before the change: %v %v, want a refusal", codes, err)
	}
	nodes[1].stop()
	nodes[2].stop()
	// The queue fills with other changes until the cluster refuses one.
	filled := false
	for i := range 20000 {
		if err := n1.plan.cluster.PutFile(fmt.Sprintf("filler-%d", i), []byte("x")); errors.Is(err, cluster.ErrSecurityBacklog) {
			filled = true
			break
		}
	}
	if !filled {
		t.Fatal("the queue of security changes never filled")
	}
	refusedBefore := n1.plan.cluster.Status().SecurityRefused

	// aclV1 gives anonymous clients plant/# and secret/#; the change
	// adds extra/#.
	writeFile(t, filepath.Join(n1.dir, "acl.conf"), "topic readwrite extra/#\n"+aclV1)
	n1.plan.live = &liveConfig{load: func() (*config.Config, error) { return config.Load(n1.cfgFile) }, level: &slog.LevelVar{}}
	summary, err := n1.plan.reloadConfig()
	if !errors.Is(err, admin.ErrNotShared) || !strings.Contains(err.Error(), "acl.conf") ||
		!strings.Contains(err.Error(), "cluster unreachable") {
		t.Fatalf("reload: %v; want the cluster's refusal of acl.conf", err)
	}
	if summary == "" {
		t.Fatal("the reload applied nothing on its node")
	}
	// Through the admin API, as moat reload --admin asks: the file is
	// still not sent, so the answer is 503, reloaded here, and the
	// command fails after saying so.
	tokens := filepath.Join(t.TempDir(), admin.TokensFileName)
	op, err := admin.CreateToken(tokens, "o", admin.RoleOperator, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := admin.New(admin.Config{Broker: n1.plan.srv, Tokens: admin.NewTokens(tokens),
		Reload: func(context.Context) error { _, err := n1.plan.reloadConfig(); return err }})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(h)
	defer api.Close()
	tokenFile := filepath.Join(t.TempDir(), "operator.token")
	writeFile(t, tokenFile, op+"\n")
	var out strings.Builder
	err = reloadAdmin(context.Background(), Stdio{Out: &out, Err: io.Discard}, reloadOptions{admin: api.URL, dataDir: t.TempDir(), tokenFile: tokenFile})
	if err == nil || !strings.Contains(err.Error(), "not sent to the other nodes") || !strings.Contains(err.Error(), "acl.conf") ||
		!strings.Contains(out.String(), "configuration reloaded on this node only") {
		t.Fatalf("moat reload --admin: %v, printed %q", err, out.String())
	}
	if st := n1.plan.cluster.Status(); st.SecurityRefused <= refusedBefore {
		t.Errorf("refusals counted: %d, were %d", st.SecurityRefused, refusedBefore)
	}
	// In force on the node: its anonymous client may now subscribe to
	// extra/#.
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	codes, err := c.Subscribe(ctx, client.Subscription{Filter: "extra/x", QoS: 1})
	if err != nil || len(codes) != 1 || codes[0] >= 0x80 {
		t.Fatalf("alice's subscription to extra/x after the reload: %v %v", codes, err)
	}
}
