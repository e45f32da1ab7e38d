package admin

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/guard"
)

// TestSecurityBanNotReplicatedReported: a ban that the node's cluster
// refused (too many changes waiting for an unreachable cluster) is in
// force on this node, and the operator is told that it is not applied
// cluster-wide: 503 with the cluster's reason, for an addition and a
// removal.
func TestSecurityBanNotReplicatedReported(t *testing.T) {
	g, err := guard.New(guard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	refusal := "cluster unreachable: 10000 security changes pending; not applied cluster-wide"
	g.Replicate(func(string, bool) error { return errors.New(refusal) })
	h, _, op := newTestHandler(t, Config{Bans: g})

	rec := do(t, h, http.MethodPost, "/api/v1/bans", op, `{"kind":"client_id","value":"victim","reason":"test"}`)
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), refusal) ||
		!strings.Contains(rec.Body.String(), "in force on this node only") {
		t.Fatalf("add: %d %s; want 503 naming the refusal", rec.Code, rec.Body)
	}
	bans := g.Bans()
	if len(bans) != 1 {
		t.Fatalf("bans in force here: %+v; want the refused one", bans)
	}
	if _, ok := g.BannedIdentity(guard.Identity{ClientID: "victim"}); !ok {
		t.Fatal("the ban is not enforced on this node")
	}
	rec = do(t, h, http.MethodDelete, "/api/v1/bans/"+bans[0].ID, op, "")
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), refusal) {
		t.Fatalf("remove: %d %s; want 503 naming the refusal", rec.Code, rec.Body)
	}
	if len(g.Bans()) != 0 {
		t.Fatal("the removal is not in force on this node")
	}
}
