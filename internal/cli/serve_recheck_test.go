package cli

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/testutil"
)

// directoryState stands in for the directory's answers to re-checks; the
// LDAP protocol itself is tested against slapd in internal/authn/ldap.
type directoryState struct {
	mu     sync.Mutex
	groups map[string][]string // username → groups; absent: no account
}

func (d *directoryState) Name() string { return "ldap-test" }

func (d *directoryState) Recheck(_ context.Context, u string) ([]string, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	g, ok := d.groups[u]
	return slices.Clone(g), ok, nil
}

// TestSecurityLDAPRecheckDisconnects: a directory account removed, or
// whose groups changed, while its client is connected must not keep the
// rights it had at CONNECT (the attack: stay connected after being
// removed from the "operators" group). The periodic re-check disconnects
// those clients and leaves the unchanged one alone.
func TestSecurityLDAPRecheckDisconnects(t *testing.T) {
	needTool(t, "mosquitto_sub")
	dir := &directoryState{groups: map[string][]string{"alice": {"operators"}, "bob": {"devices"}, "carol": {"devices"}}}
	b := brokertest.Start(t, broker.Config{
		Authenticator: broker.AuthenticatorFunc(func(_ context.Context, r *broker.ConnectRequest) broker.AuthResult {
			g, _, _ := dir.Recheck(context.Background(), r.Connect.Username)
			return broker.AuthResult{Allow: true, Username: r.Connect.Username, Backend: dir.Name(), Groups: g}
		}),
		Authorizer:  broker.AllowAll,
		SysInterval: -1,
	}, brokertest.Options{Listener: broker.ListenerConfig{Name: "ldap"}})
	srv, port := b.Server, b.Port()
	for _, u := range []string{"alice", "bob", "carol"} {
		startSub(t, port, u, "x/#", "-V", "5")
	}
	testutil.WaitFor(t, "three connected clients", 15*time.Second, func() bool { return len(srv.Clients()) == 3 })

	dir.mu.Lock()
	dir.groups["alice"] = []string{"devices"} // left "operators"
	delete(dir.groups, "carol")               // account removed
	dir.mu.Unlock()
	a := &accessPlan{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	a.srv.Store(srv)
	a.recheckLDAP(context.Background(), dir)

	// Reevaluate closes the connections before it returns.
	if n := srv.Stats().RevokedDisconnects; n != 2 {
		t.Errorf("RevokedDisconnects %d, want 2 (alice and carol)", n)
	}
	bobThere := false
	for _, c := range srv.Clients() {
		bobThere = bobThere || c.Client.Username == "bob"
	}
	if !bobThere {
		t.Error("bob, whose account did not change, was disconnected")
	}
}

// TestServeAlwaysWiresAuthorizer: moat serve never leaves the broker's
// Authorizer nil; a listener without a policy gets an explicit
// allow-everything decision that names its cause.
func TestServeAlwaysWiresAuthorizer(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "mosquitto.conf")
	writeFile(t, file, "listener 18830 127.0.0.1\nallow_anonymous true\n")
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = t.TempDir()
	p, err := buildPlan(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), true)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	az, ok := p.broker.Authorizer.(*accessAuthorizer)
	if !ok {
		t.Fatalf("Authorizer is %T", p.broker.Authorizer)
	}
	d := az.Authorize(&broker.AuthzRequest{Client: &broker.Client{Listener: cfg.Listeners[0].Name}, Action: broker.ActionPublish, Topic: "a"})
	if !d.Allow || !strings.Contains(d.Reason, "no access policy") {
		t.Errorf("decision %+v", d)
	}
}
