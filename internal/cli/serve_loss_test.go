package cli

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/authn/jwt"
	"github.com/moatmq/moat/internal/authz"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// auditEntries reads the run's audit log.
func auditEntries(t *testing.T, path string) []*audit.Entry {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*audit.Entry
	for line := range strings.Lines(string(data)) {
		e, err := audit.ParseLine([]byte(strings.TrimSuffix(line, "\n")))
		if err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

// field returns an entry's field as a string ("" when absent) or an int
// as its decimal form.
func field(e *audit.Entry, key string) any {
	f, ok := e.Get(key)
	if !ok {
		return nil
	}
	return f.Value()
}

// readDisconnectPacket reads until the broker's DISCONNECT.
func (c *mqttClient) readDisconnectPacket(t *testing.T) *packet.Disconnect {
	t.Helper()
	for {
		p, err := c.r.ReadPacket()
		if err != nil {
			t.Fatalf("no DISCONNECT: %v", err)
		}
		if d, ok := p.(*packet.Disconnect); ok {
			return d
		}
	}
}

// TestSecurityBanTakesLossOfAccessPath: a ban added while the banned
// identity is connected ends its live session through the same path as
// every other loss of access (broker.Reevaluate): the client gets
// DISCONNECT 0x98 with the ban as the reason, the loss-of-access counter
// moves, and the audit log records the client as access.lost (trigger
// "ban", with its identity and the reason) before the ban.add that counts
// it. A client the ban does not match stays.
func TestSecurityBanTakesLossOfAccessPath(t *testing.T) {
	b := startDefended(t, defYAML, broker.AuthenticatorFunc(func(_ context.Context, r *broker.ConnectRequest) broker.AuthResult {
		// Every claimed username is taken as verified here: the test is
		// about what happens once a verified identity is banned.
		return broker.AuthResult{Allow: true, Username: r.Connect.Username}
	}), nil)
	victim := connectFrom(t, b, "127.0.0.21", "victim", "mallory", "pw")
	other := connectFrom(t, b, "127.0.0.22", "other", "alice", "pw")
	if code, out, errOut := runMoat("ban", "add", "--username", "mallory", "--reason", "stolen credentials", "--data", b.dir); code != 0 {
		t.Fatalf("moat ban add: %d %s %s", code, out, errOut)
	}
	b.poll()
	d := victim.readDisconnectPacket(t)
	if d.ReasonCode != packet.AdministrativeAction || !strings.Contains(d.Properties.ReasonString, "stolen credentials") {
		t.Fatalf("victim got DISCONNECT %v %q, want 0x98 with the ban's reason", d.ReasonCode, d.Properties.ReasonString)
	}
	other.roundTrip(t)
	if n := b.srv.Stats().RevokedDisconnects; n != 1 {
		t.Errorf("loss-of-access disconnects = %d, want 1", n)
	}
	b.stop()

	entries := auditEntries(t, filepath.Join(b.dir, "audit.log"))
	lost, added := -1, -1
	for i, e := range entries {
		switch e.Type {
		case audit.TypeAccessLost:
			if lost >= 0 {
				t.Errorf("two access.lost entries; only mallory lost access")
			}
			lost = i
			for k, want := range map[string]any{"trigger": "ban", "client_id": "victim", "username": "mallory",
				"listener": "test", "disconnected": int64(1)} {
				if got := field(e, k); got != want {
					t.Errorf("access.lost %s = %v, want %v", k, got, want)
				}
			}
			if r, _ := field(e, "reason").(string); !strings.Contains(r, "stolen credentials") {
				t.Errorf("access.lost reason %q", r)
			}
			if a, _ := field(e, "addr").(string); !strings.HasPrefix(a, "127.0.0.21:") {
				t.Errorf("access.lost addr %q", a)
			}
		case audit.TypeBanAdd:
			added = i
			if got := field(e, "disconnected"); got != int64(1) {
				t.Errorf("ban.add disconnected = %v, want 1", got)
			}
		}
	}
	if lost < 0 || added < 0 || lost > added {
		t.Fatalf("access.lost at %d, ban.add at %d: want both, the client first", lost, added)
	}
}

// TestSecurityJWTReauthAppliesNewGrants: dev1 connects with the moat-jwt
// method and a token naming group "ops" (whose rule lets it write and
// read ops/#) and subscribes to ops/cmd. Its next token drops "ops" and
// grants publishing on dev1/out by itself (a publish claim). The attack
// is to keep the old rights on the live connection after re-authenticating;
// instead the new grants apply at once through the loss-of-access path:
// the ops/cmd subscription is removed, publishing and subscribing there are
// refused, the new credential grant works, and the connection stays.
func TestSecurityJWTReauthAppliesNewGrants(t *testing.T) {
	secret := []byte(strings.Repeat("k", 40))
	path := filepath.Join(t.TempDir(), "jwt.secret")
	if err := os.WriteFile(path, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	jb, err := jwt.New(jwt.Config{HMACSecretFile: path, GroupsClaim: "groups", PublishClaim: "mqtt_pub", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := authz.New(authz.Options{Rules: []authz.RuleSpec{
		{Name: "ops", Effect: "allow", Subjects: authz.Subjects{Groups: []string{"ops"}}, Actions: []string{"publish", "read"}, Topics: []string{"ops/#"}},
		{Name: "own-tree", Effect: "allow", Subjects: authz.Subjects{Anonymous: new(false)}, Actions: []string{"read"}, Topics: []string{"%u/#"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	b := startEABrokerPolicy(t, pol, jb)
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
	c, lost, err := eaDial(t, b, client.Config{ClientID: "dev1", Auth: client.JWT(func(context.Context) (client.Secret, error) {
		mu.Lock()
		defer mu.Unlock()
		return next, nil
	})})
	if err != nil {
		t.Fatal(err)
	}
	ctx := eaCtx(t)
	roundTrip(t, c, "ops/cmd")
	if codes, err := c.Subscribe(ctx, client.Subscription{Filter: "dev1/#", QoS: 1}); err != nil || codes[0] != 1 {
		t.Fatalf("subscribe dev1/#: %v %v", codes, err)
	}
	if err := c.Publish(ctx, &client.Message{Topic: "dev1/out", Payload: []byte("x"), QoS: 1}); reasonCode(err) != packet.NotAuthorized {
		t.Fatalf("publish dev1/out before the grant: %v, want 0x87", err)
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
	if codes, err := c.Subscribe(ctx, client.Subscription{Filter: "ops/#", QoS: 1}); len(codes) != 1 || codes[0] != packet.NotAuthorized {
		t.Fatalf("subscribe ops/# after losing ops: %v %v, want 0x87", codes, err)
	}
	// The new credential grant applies; and the message comes back
	// through dev1/#, not through the removed ops/cmd subscription.
	delivered(t, c, "dev1/out", "granted now")
	select {
	case err := <-lost:
		t.Fatalf("connection lost: %v", err)
	default:
	}
	if logs := b.logs.String(); !strings.Contains(logs, "re-authentication changed the groups or grants; applied") ||
		!strings.Contains(logs, "subscription removed: no longer authorized") {
		t.Errorf("the change and the removed subscription are not logged:\n%s", logs)
	}
}
