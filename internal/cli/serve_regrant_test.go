package cli

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/authn/jwt"
	"github.com/moatmq/moat/internal/authz"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// startEABrokerAudited is an enhanced-authentication broker (as
// startEABrokerPolicy) whose Observer is moat serve's defense with the
// audit log on, in dir. stop shuts the broker down and closes the log,
// so that the log can be read; it runs at cleanup too.
func startEABrokerAudited(t *testing.T, dir string, pol *authz.Policy, backends ...authn.Backend) (b *eaBroker, stop func()) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	al, err := audit.Open(audit.Config{Dir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	d := &defense{log: log, listeners: map[string]*defListener{}, audit: al}
	d.setDenySample(0)
	b = &eaBroker{clock: &eaClock{now: time.Now()}}
	az := &accessAuthorizer{byLn: map[string]*policySource{"t": {holder: authz.NewHolder(pol)}}}
	chains := map[string]*authn.Chain{"t": {Backends: backends}}
	cert := &certAuthenticator{}
	srv, err := broker.New(broker.Config{
		Authenticator:         &accessAuthenticator{cert: cert, chains: chains, log: log},
		EnhancedAuthenticator: &enhancedAuth{cert: cert, chains: chains, log: log},
		Authorizer:            az,
		Observer:              d,
		Clock:                 b.clock,
		Logger:                log,
	})
	if err != nil {
		t.Fatal(err)
	}
	d.srv.Store(srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ctx, ln, broker.ListenerConfig{Name: "t"}) })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer scancel()
			srv.Shutdown(sctx)
			cancel()
			wg.Wait()
			if err := al.Close(); err != nil {
				t.Errorf("closing the audit log: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return b, stop
}

// TestSecurityReauthGrantChangeAudited: a client re-authenticates (MQTT
// 5 AUTH 0x19) with a token that drops its "ops" group and adds a publish
// grant. The change takes its ops/cmd subscription away, and the audit
// log records it as auth.regrant: who, the group removed, the grant
// added, and the subscription removed. A re-authentication that changes
// nothing records nothing. The log's chain verifies.
func TestSecurityReauthGrantChangeAudited(t *testing.T) {
	secret := []byte(strings.Repeat("k", 40))
	dir := t.TempDir()
	path := filepath.Join(dir, "jwt.secret")
	if err := os.WriteFile(path, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	jb, err := jwt.New(jwt.Config{HMACSecretFile: path, GroupsClaim: "groups", PublishClaim: "mqtt_pub", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := authz.New(authz.Options{Rules: []authz.RuleSpec{
		{Name: "ops", Effect: "allow", Subjects: authz.Subjects{Groups: []string{"ops"}}, Actions: []string{"publish", "read"}, Topics: []string{"ops/#"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	b, stop := startEABrokerAudited(t, data, pol, jb)
	exp := b.clock.Now().Add(time.Hour)
	token := func(claims gojwt.MapClaims) client.Secret {
		claims["sub"], claims["exp"] = "dev1", exp.Unix()
		s, err := gojwt.NewWithClaims(gojwt.SigningMethodHS256, claims).SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return client.NewSecret([]byte(s))
	}
	var mu sync.Mutex
	next := token(gojwt.MapClaims{"groups": []string{"ops"}})
	c, _, err := eaDial(t, b, client.Config{ClientID: "dev1", Auth: client.JWT(func(context.Context) (client.Secret, error) {
		mu.Lock()
		defer mu.Unlock()
		return next, nil
	})})
	if err != nil {
		t.Fatal(err)
	}
	ctx := eaCtx(t)
	roundTrip(t, c, "ops/cmd")
	// The same claims again: nothing changes, nothing is recorded.
	if err := c.Reauthenticate(ctx); err != nil {
		t.Fatalf("re-authentication with the same claims: %v", err)
	}
	mu.Lock()
	next = token(gojwt.MapClaims{"groups": []string{}, "mqtt_pub": []string{"%u/out"}})
	mu.Unlock()
	if err := c.Reauthenticate(ctx); err != nil {
		t.Fatalf("re-authentication: %v", err)
	}
	if err := c.Publish(ctx, &client.Message{Topic: "ops/cmd", Payload: []byte("x"), QoS: 1}); reasonCode(err) != packet.NotAuthorized {
		t.Fatalf("publish ops/cmd after losing ops: %v, want 0x87", err)
	}
	c.Close()
	stop()

	var regrants []*audit.Entry
	for _, e := range auditEntries(t, filepath.Join(data, audit.DefaultFile)) {
		if e.Type == audit.TypeAuthRegrant {
			regrants = append(regrants, e)
		}
	}
	if len(regrants) != 1 {
		t.Fatalf("%d auth.regrant entries, want 1 (the re-authentication with the same claims changed nothing)", len(regrants))
	}
	e := regrants[0]
	for k, want := range map[string]any{"client_id": "dev1", "username": "dev1", "listener": "t", "groups_removed": "ops",
		"unsubscribed": int64(1), "dropped": int64(0), "reason": "re-authentication changed the groups or grants"} {
		if got := field(e, k); got != want {
			t.Errorf("auth.regrant %s = %v, want %v", k, got, want)
		}
	}
	if p, _ := field(e, "publish_added").(string); !strings.HasSuffix(p, "/out") {
		t.Errorf("auth.regrant publish_added = %q, want the new grant", p)
	}
	if field(e, "groups_added") != nil {
		t.Errorf("auth.regrant groups_added = %v, want none", field(e, "groups_added"))
	}
	if code, out, errOut := runAudit(t, filepath.Join(data, audit.DefaultFile)); code != 0 {
		t.Fatalf("moat audit verify: exit %d\n%s%s", code, out, errOut)
	}
}

// The lists of an auth.regrant entry are bounded, the counts whole.
func TestRegrantLists(t *testing.T) {
	added, removed := listChanges([]string{"a", "b", "b", "c"}, []string{"c", "d", "d", "a"})
	if strings.Join(added, ",") != "d" || strings.Join(removed, ",") != "b" {
		t.Fatalf("added %q, removed %q", added, removed)
	}
	long := make([]string, 500)
	for i := range long {
		long[i] = "group-" + strings.Repeat("x", 10)
	}
	s := clipList(long)
	if len(s) > regrantListMax+32 || !strings.HasSuffix(s, "more)") {
		t.Fatalf("clipped list of %d bytes: ...%s", len(s), s[max(0, len(s)-40):])
	}
}
