package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/authn/jwt"
	"github.com/moatmq/moat/internal/authn/scram"
	"github.com/moatmq/moat/internal/authz"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/tlsconf"
)

// eaClock is a broker.Clock that tests advance by hand.
type eaClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*eaTimer
}

type eaTimer struct {
	c       *eaClock
	at      time.Time
	f       func()
	stopped bool
}

func (c *eaClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *eaClock) AfterFunc(d time.Duration, f func()) broker.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &eaTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *eaTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}

// advance moves the time on and runs the timers that are due, each on a
// goroutine of its own as time.AfterFunc does.
func (c *eaClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*eaTimer
	rest := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.stopped:
		case !t.at.After(c.now):
			t.stopped = true
			due = append(due, t)
		default:
			rest = append(rest, t)
		}
	}
	c.timers = rest
	c.mu.Unlock()
	for _, t := range due {
		go t.f()
	}
}

// eaBroker is Moat's broker in-process with the serve wiring of
// authentication (accessAuthenticator, enhancedAuth) on listener "t".
type eaBroker struct {
	addr  string
	clock *eaClock
	logs  *testutil.Buffer
}

func startEABroker(t *testing.T, backends ...authn.Backend) *eaBroker {
	t.Helper()
	return startEABrokerPolicy(t, nil, backends...)
}

// startEABrokerPolicy is startEABroker with an access policy on listener
// "t" (nil: none, everything allowed).
func startEABrokerPolicy(t *testing.T, pol *authz.Policy, backends ...authn.Backend) *eaBroker {
	t.Helper()
	b := &eaBroker{clock: &eaClock{now: time.Now()}, logs: &testutil.Buffer{}}
	az := &accessAuthorizer{byLn: map[string]*policySource{}}
	if pol != nil {
		az.byLn["t"] = &policySource{holder: authz.NewHolder(pol)}
	}
	log := slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	chains := map[string]*authn.Chain{"t": {Backends: backends}}
	cert := &certAuthenticator{}
	t.Cleanup(func() { // after the broker has stopped
		if t.Failed() {
			t.Logf("broker logs:\n%s", b.logs.String())
		}
	})
	b.addr = brokertest.Start(t, broker.Config{
		Authenticator:         &accessAuthenticator{cert: cert, chains: chains, log: log},
		EnhancedAuthenticator: &enhancedAuth{cert: cert, chains: chains, log: log},
		Authorizer:            az,
		Clock:                 b.clock,
		Logger:                log,
	}, brokertest.Options{Listener: broker.ListenerConfig{Name: "t"}}).Addr
	return b
}

// scramCreds writes a SCRAM credentials file with both mechanisms for
// each user (password: the user's name + "-pw") and loads it as a backend.
func scramCreds(t *testing.T, users ...string) *scramBackend {
	t.Helper()
	path := filepath.Join(t.TempDir(), "scram.creds")
	for i, u := range users {
		var creds []scram.Credential
		for _, m := range scram.Mechanisms {
			c, err := scram.NewCredential(m, []byte(u+"-pw"), scram.DefaultIterations, nil)
			if err != nil {
				t.Fatal(err)
			}
			creds = append(creds, c)
		}
		if err := scram.AddToFile(path, u, i == 0, creds...); err != nil {
			t.Fatal(err)
		}
	}
	sb, err := newSCRAMBackend(path)
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func eaCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eaDial connects with cfg to b; lost receives the cause of a lost
// connection.
func eaDial(t *testing.T, b *eaBroker, cfg client.Config) (*client.Client, <-chan error, error) {
	t.Helper()
	lost := make(chan error, 1)
	cfg.Servers = []string{b.addr}
	cfg.OnConnectionLost = func(_ *client.Client, err error) {
		select {
		case lost <- err:
		default:
		}
	}
	c, err := client.Dial(eaCtx(t), cfg)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, lost, err
}

// reasonCode returns the reason code of a *client.ReasonError, or 0.
func reasonCode(err error) packet.ReasonCode {
	var re *client.ReasonError
	if errors.As(err, &re) {
		return re.Code
	}
	return 0
}

// roundTrip subscribes c to topic and checks that a publish of its own
// comes back.
func roundTrip(t *testing.T, c *client.Client, topic string) {
	t.Helper()
	ctx := eaCtx(t)
	if codes, err := c.Subscribe(ctx, client.Subscription{Filter: topic, QoS: 1}); err != nil || codes[0] != 1 {
		t.Fatalf("subscribe: %v %v", codes, err)
	}
	delivered(t, c, topic, "one")
}

// delivered publishes payload on topic and waits for it to come back.
func delivered(t *testing.T, c *client.Client, topic, payload string) {
	t.Helper()
	ctx := eaCtx(t)
	if err := c.Publish(ctx, &client.Message{Topic: topic, Payload: []byte(payload), QoS: 1}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	select {
	case m := <-c.Messages():
		if m.Topic != topic || string(m.Payload) != payload {
			t.Fatalf("got %s %q", m.Topic, m.Payload)
		}
	case <-ctx.Done():
		t.Fatal("message not delivered")
	}
}

// SCRAM-SHA-256 and -512 against the broker: success with the server's
// proof checked by the client; a wrong password and an unknown user get
// the same answer (0x87 without a reason that tells them apart) and are
// told apart only in the log; a method the broker does not offer is 0x8C.
func TestEnhancedAuthSCRAM(t *testing.T) {
	b := startEABroker(t, scramCreds(t, "alice"))
	for _, mech := range []string{"SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			c, _, err := eaDial(t, b, client.Config{Auth: client.SCRAM(mech, "alice", client.NewSecret([]byte("alice-pw")))})
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, c, "alice/"+mech)
		})
	}
	var refusals []string
	for _, tc := range []struct{ name, user, pw string }{
		{"wrong-password", "alice", "nope"},
		{"unknown-user", "mallory", "mallory-pw"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := eaDial(t, b, client.Config{Auth: client.SCRAM("SCRAM-SHA-256", tc.user, client.NewSecret([]byte(tc.pw)))})
			if reasonCode(err) != packet.NotAuthorized {
				t.Fatalf("got %v, want CONNACK 0x87", err)
			}
			refusals = append(refusals, err.Error())
		})
	}
	if len(refusals) == 2 && refusals[0] != refusals[1] {
		t.Errorf("the client can tell the cases apart: %q vs %q", refusals[0], refusals[1])
	}
	logs := b.logs.String()
	for _, want := range []string{`alice\" does not verify (wrong password)`, `mallory\" does not verify (unknown user)`} {
		if !strings.Contains(logs, `reason="scram: authentication failed: SCRAM-SHA-256 proof of \"`) || !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	t.Run("bad-method", func(t *testing.T) {
		_, _, err := eaDial(t, b, client.Config{Auth: &stubAuth{method: "PLAIN", data: []byte("x")}})
		if reasonCode(err) != packet.BadAuthenticationMethod {
			t.Fatalf("got %v, want CONNACK 0x8C", err)
		}
	})
	t.Run("jwt-not-configured", func(t *testing.T) {
		_, _, err := eaDial(t, b, client.Config{Auth: client.JWT(func(context.Context) (client.Secret, error) {
			return client.NewSecret([]byte("a.b.c")), nil
		})})
		if reasonCode(err) != packet.BadAuthenticationMethod {
			t.Fatalf("got %v, want CONNACK 0x8C", err)
		}
	})
	t.Run("password-with-method", func(t *testing.T) {
		sc := client.SCRAM("SCRAM-SHA-256", "alice", client.NewSecret([]byte("alice-pw")))
		_, _, err := eaDial(t, b, client.Config{Username: "alice", Password: client.NewSecret([]byte("alice-pw")), Auth: &stubAuth{method: "SCRAM-SHA-256", inner: sc}})
		if reasonCode(err) != packet.NotAuthorized {
			t.Fatalf("got %v, want CONNACK 0x87", err)
		}
	})
	t.Run("username-not-identity", func(t *testing.T) {
		_, _, err := eaDial(t, b, client.Config{Username: "bob", Auth: client.SCRAM("SCRAM-SHA-256", "alice", client.NewSecret([]byte("alice-pw")))})
		if reasonCode(err) != packet.NotAuthorized {
			t.Fatalf("got %v, want CONNACK 0x87", err)
		}
	})
}

// stubAuth is an Authenticator with any method: it sends data, or
// delegates to inner.
type stubAuth struct {
	method string
	data   []byte
	inner  client.Authenticator
}

func (a *stubAuth) Method() string { return a.method }
func (a *stubAuth) Start(ctx context.Context) ([]byte, error) {
	if a.inner != nil {
		return a.inner.Start(ctx)
	}
	return a.data, nil
}
func (a *stubAuth) Challenge(ctx context.Context, in *client.AuthPacket) (*client.AuthPacket, error) {
	if a.inner != nil {
		return a.inner.Challenge(ctx, in)
	}
	return nil, errors.New("stub: no challenge expected")
}

// switchAuth authenticates as first at CONNECT and as then afterwards.
type switchAuth struct {
	mu          sync.Mutex
	first, then *client.SCRAMAuthenticator
	started     bool
	cur         *client.SCRAMAuthenticator
}

func (a *switchAuth) Method() string { return a.first.Method() }
func (a *switchAuth) Start(ctx context.Context) ([]byte, error) {
	a.mu.Lock()
	a.cur = a.first
	if a.started {
		a.cur = a.then
	}
	a.started = true
	cur := a.cur
	a.mu.Unlock()
	return cur.Start(ctx)
}
func (a *switchAuth) Challenge(ctx context.Context, in *client.AuthPacket) (*client.AuthPacket, error) {
	a.mu.Lock()
	cur := a.cur
	a.mu.Unlock()
	return cur.Challenge(ctx, in)
}
func (a *switchAuth) Finish(ctx context.Context, p *client.Properties) error {
	a.mu.Lock()
	cur := a.cur
	a.mu.Unlock()
	return cur.Finish(ctx, p)
}

// Re-authentication with AUTH 0x19 keeps the connection and its
// subscriptions; re-authenticating as another user ends the connection
// with DISCONNECT 0x87 even with that user's right password.
func TestEnhancedAuthSCRAMReauth(t *testing.T) {
	b := startEABroker(t, scramCreds(t, "alice", "bob"))
	c, lost, err := eaDial(t, b, client.Config{Auth: client.SCRAM("SCRAM-SHA-512", "alice", client.NewSecret([]byte("alice-pw")))})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "alice/x")
	for i := range 2 {
		if err := c.Reauthenticate(eaCtx(t)); err != nil {
			t.Fatalf("re-authentication %d: %v", i, err)
		}
		delivered(t, c, "alice/x", "after")
	}
	select {
	case err := <-lost:
		t.Fatalf("connection lost: %v", err)
	default:
	}
	if !strings.Contains(b.logs.String(), "broker: client re-authenticated") {
		t.Error("re-authentication not logged")
	}

	sw := &switchAuth{
		first: client.SCRAM("SCRAM-SHA-256", "alice", client.NewSecret([]byte("alice-pw"))),
		then:  client.SCRAM("SCRAM-SHA-256", "bob", client.NewSecret([]byte("bob-pw"))),
	}
	c2, lost2, err := eaDial(t, b, client.Config{Auth: sw})
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Reauthenticate(eaCtx(t)); err == nil {
		t.Fatal("re-authentication as bob succeeded")
	}
	select {
	case err := <-lost2:
		if reasonCode(err) != packet.NotAuthorized {
			t.Fatalf("got %v, want DISCONNECT 0x87", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("connection not ended")
	}
	if !strings.Contains(b.logs.String(), "re-authentication as a different user") {
		t.Error("the user change is not logged")
	}
}

// jwtFixture is a jwt backend with an HMAC key and a token maker.
type jwtFixture struct {
	backend *jwt.Backend
	secret  []byte
}

func newJWTFixture(t *testing.T) *jwtFixture {
	t.Helper()
	secret := []byte(strings.Repeat("s", 40))
	path := filepath.Join(t.TempDir(), "jwt.secret")
	if err := os.WriteFile(path, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	jb, err := jwt.New(jwt.Config{HMACSecretFile: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return &jwtFixture{backend: jb, secret: secret}
}

func (f *jwtFixture) token(t *testing.T, sub string, exp time.Time) client.Secret {
	t.Helper()
	s, err := gojwt.NewWithClaims(gojwt.SigningMethodHS256, gojwt.MapClaims{"sub": sub, "exp": exp.Unix()}).SignedString(f.secret)
	if err != nil {
		t.Fatal(err)
	}
	return client.NewSecret([]byte(s))
}

// A token that expires ends its connection: a client that connected with
// the moat-jwt method is given ReauthGrace to send a fresh token in AUTH
// 0x19 and is otherwise disconnected with 0x87; a fresh token moves the
// deadline; a client that sent its token as the CONNECT password (here
// MQTT 3.1.1) is disconnected at the expiry itself.
func TestEnhancedAuthJWTExpiry(t *testing.T) {
	f := newJWTFixture(t)
	b := startEABroker(t, f.backend)
	exp := b.clock.Now().Add(time.Hour)
	var mu sync.Mutex
	next := f.token(t, "dev1", exp)
	src := func(context.Context) (client.Secret, error) {
		mu.Lock()
		defer mu.Unlock()
		return next, nil
	}
	stale, lostStale, err := eaDial(t, b, client.Config{ClientID: "stale", Auth: client.JWT(func(context.Context) (client.Secret, error) {
		return f.token(t, "dev2", exp), nil
	})})
	if err != nil {
		t.Fatal(err)
	}
	fresh, lostFresh, err := eaDial(t, b, client.Config{ClientID: "fresh", Auth: client.JWT(src)})
	if err != nil {
		t.Fatal(err)
	}
	v3, lostV3, err := eaDial(t, b, client.Config{ClientID: "v3", Version: client.V311, Username: "dev3",
		Password: f.token(t, "dev3", exp)})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, fresh, "dev1/x")

	// Before the expiry, the fresh client renews its token.
	b.clock.advance(50 * time.Minute)
	mu.Lock()
	next = f.token(t, "dev1", exp.Add(time.Hour))
	mu.Unlock()
	if err := fresh.Reauthenticate(eaCtx(t)); err != nil {
		t.Fatal(err)
	}

	// At the expiry the 3.1.1 client is closed; the others are in their
	// grace period.
	b.clock.advance(10 * time.Minute)
	select {
	case err := <-lostV3:
		t.Logf("3.1.1 client: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the 3.1.1 client was not disconnected at expiry")
	}
	_ = v3
	if !stale.IsConnected() {
		t.Fatal("the moat-jwt client got no grace period")
	}

	// After the grace period the stale client is disconnected, the one
	// that renewed its token is not.
	b.clock.advance(broker.DefaultReauthGrace)
	select {
	case err := <-lostStale:
		var re *client.ReasonError
		if !errors.As(err, &re) || re.Code != packet.NotAuthorized || re.Reason != "token expired" {
			t.Fatalf("got %v, want DISCONNECT 0x87 token expired", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stale client was not disconnected")
	}
	delivered(t, fresh, "dev1/x", "still here")

	// Its new token expires an hour later, and it is then disconnected.
	b.clock.advance(time.Hour)
	select {
	case err := <-lostFresh:
		if reasonCode(err) != packet.NotAuthorized {
			t.Fatalf("got %v, want DISCONNECT 0x87", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the renewed client was not disconnected at its new deadline")
	}
	if !strings.Contains(b.logs.String(), "broker: authentication expired; disconnecting") {
		t.Error("the expiry is not logged")
	}
}

// A fresh token for another subject does not re-authenticate: DISCONNECT
// 0x87.
func TestSecurityJWTReauthAsAnotherUser(t *testing.T) {
	f := newJWTFixture(t)
	b := startEABroker(t, f.backend)
	exp := b.clock.Now().Add(time.Hour)
	n := 0
	c, lost, err := eaDial(t, b, client.Config{Auth: client.JWT(func(context.Context) (client.Secret, error) {
		n++
		if n == 1 {
			return f.token(t, "dev1", exp), nil
		}
		return f.token(t, "admin", exp), nil
	})})
	if err != nil {
		t.Fatal(err)
	}
	// The attack: a client holding a valid token for another subject
	// swaps identities on a live connection.
	c.Reauthenticate(eaCtx(t))
	select {
	case err := <-lost:
		if reasonCode(err) != packet.NotAuthorized {
			t.Fatalf("got %v, want DISCONNECT 0x87", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("connection not ended")
	}
}

// moat pub and moat sub --auth-method SCRAM-SHA-256 against moat serve
// with a {type: scram} auth entry; a wrong password is refused and its
// reason logged by the broker, never sent to the client.
func TestServeSCRAMPubSub(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := psTestCtx(t)
	creds := filepath.Join(dir, "scram.creds")
	if r := psRun(ctx, "alice-pw\n", "scram", "add", "-c", creds, "alice"); r.code != 0 {
		t.Fatalf("scram add: %+v", r)
	}
	pw, bad := filepath.Join(dir, "pw"), filepath.Join(dir, "bad")
	writeFile(t, pw, "alice-pw\n")
	writeFile(t, bad, "wrong\n")
	writeFile(t, filepath.Join(dir, "moat.yaml"), fmt.Sprintf(`listeners:
  - address: 127.0.0.1:0
    transport: tcp
auth:
  - {type: scram, path: %s}
acl:
  rules:
    - {name: alice, effect: allow, subjects: {usernames: [alice]}, actions: [publish, subscribe, receive], topics: ["s/#"]}
`, creds))
	m := startMoat(t, dir, "-c", "moat.yaml", "--data", filepath.Join(dir, "data"))
	port := m.port(0)
	conn := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-u", "alice", "--auth-method", "SCRAM-SHA-256"}
	sub := psRunAsync(ctx, append([]string{"sub", "-C", "1", "-t", "s/#", "-v", "--password-file", pw}, conn...)...)
	r := psPubUntil(t, sub, psMoatPub(ctx, append([]string{"-t", "s/x", "-m", "hi", "--password-file", pw}, conn...)...))
	if r.code != 0 || r.out != "s/x hi\n" {
		t.Fatalf("sub: %+v", r)
	}
	r = psRun(ctx, "", append([]string{"pub", "-t", "s/x", "-m", "no", "--password-file", bad}, conn...)...)
	if r.code == 0 || !strings.Contains(r.err, "not authorized") || strings.Contains(r.err, "wrong password") {
		t.Fatalf("wrong password: %+v", r)
	}
	if !m.waitLog(t, "auth: enhanced authentication failed", "(wrong password)") {
		t.Error("the refusal is not logged with its reason")
	}
	// A password in CONNECT is not checked against SCRAM credentials.
	r = psRun(ctx, "", "pub", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-u", "alice", "--password-file", pw, "-t", "s/x", "-m", "no")
	if r.code == 0 {
		t.Fatalf("password login against a scram entry: %+v", r)
	}

	// A user added to the file can connect after SIGHUP.
	bobConn := []string{"pub", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-u", "bob", "--auth-method", "SCRAM-SHA-512", "--password-file", pw, "-t", "s/b", "-m", "b"}
	if r := psRun(ctx, "", bobConn...); r.code == 0 {
		t.Fatalf("bob admitted before he is in the file: %+v", r)
	}
	if r := psRun(ctx, "alice-pw\n", "scram", "add", creds, "bob"); r.code != 0 {
		t.Fatalf("scram add: %+v", r)
	}
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "SCRAM credentials file reloaded", "credentials=4") {
		t.Fatal("the SCRAM file was not reloaded")
	}
	if r := psRun(ctx, "", bobConn...); r.code != 0 {
		t.Fatalf("bob refused after the reload: %+v", r)
	}
}

// A listener that takes identities from client certificates offers no
// enhanced authentication: a SCRAM identity must not bypass the mapping.
func TestSecurityEnhancedAuthNotOnCertificateListeners(t *testing.T) {
	sb := scramCreds(t, "alice")
	e := &enhancedAuth{
		cert:   &certAuthenticator{mappings: map[string]tlsconf.IdentityMapping{"mtls": {Username: tlsconf.IdentityCN}}},
		chains: map[string]*authn.Chain{"mtls": {Backends: []authn.Backend{sb}}, "plain": {Backends: []authn.Backend{sb}}},
		log:    slog.New(slog.DiscardHandler),
	}
	if _, err := e.Begin(&broker.Client{Listener: "mtls"}, "SCRAM-SHA-256", false); !errors.Is(err, broker.ErrBadAuthMethod) {
		t.Fatalf("certificate listener: %v, want ErrBadAuthMethod", err)
	}
	if _, err := e.Begin(&broker.Client{Listener: "plain"}, "SCRAM-SHA-256", false); err != nil {
		t.Fatalf("plain listener: %v", err)
	}
}

// moat pub --auth-method moat-jwt sends the token in CONNECT's
// Authentication Data to moat serve with a jwt auth entry.
func TestServeJWTAuthMethod(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := psTestCtx(t)
	secret := strings.Repeat("k", 40)
	writeFile(t, filepath.Join(dir, "jwt.secret"), secret)
	writeFile(t, filepath.Join(dir, "moat.yaml"), fmt.Sprintf(`listeners:
  - address: 127.0.0.1:0
    transport: tcp
auth:
  - {type: jwt, hmac_secret_file: %s}
`, filepath.Join(dir, "jwt.secret")))
	m := startMoat(t, dir, "-c", "moat.yaml", "--data", filepath.Join(dir, "data"))
	port := m.port(0)
	tok, err := gojwt.NewWithClaims(gojwt.SigningMethodHS256, gojwt.MapClaims{"sub": "dev1", "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	good, bad := filepath.Join(dir, "tok"), filepath.Join(dir, "bad")
	writeFile(t, good, tok+"\n")
	writeFile(t, bad, tok[:len(tok)-4]+"AAAA\n")
	base := []string{"pub", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-t", "dev1/x", "-m", "hi", "--auth-method", "moat-jwt"}
	if r := psRun(ctx, "", append(base, "--password-file", good)...); r.code != 0 {
		t.Fatalf("good token: %+v", r)
	}
	if r := psRun(ctx, "", append(base, "--password-file", bad)...); r.code == 0 || !strings.Contains(r.err, "not authorized") {
		t.Fatalf("bad token: %+v", r)
	}
	if !m.waitLog(t, "auth: enhanced authentication succeeded", "method=moat-jwt", "username=dev1") {
		t.Error("the admission is not logged")
	}
	if strings.Contains(m.logs.String(), tok) {
		t.Error("the token reached the log")
	}
}

// --check loads SCRAM credentials files and reports their problems, and
// those of the entry, at their lines.
func TestServeCheckSCRAMEntry(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	creds := filepath.Join(dir, "scram.creds")
	writeFile(t, creds, "# users\nalice:SCRAM-SHA-256:10:abc:def:ghi\n")
	writeFile(t, filepath.Join(dir, "moat.yaml"), "listeners:\n  - address: 127.0.0.1:1883\n    transport: tcp\nauth:\n  - {type: scram, path: "+creds+"}\n  - type: scram\n    path: "+creds+"\n    fake_secret: x\n")
	out, err := exec.Command(moatBin, "serve", "--check", "-c", filepath.Join(dir, "moat.yaml")).CombinedOutput()
	if err == nil {
		t.Fatalf("--check accepted a bad credentials file:\n%s", out)
	}
	for _, want := range []string{"moat.yaml:5", creds + ":2", "moat.yaml:8", `unknown key "fake_secret"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--check output lacks %q:\n%s", want, out)
		}
	}
	writeFile(t, filepath.Join(dir, "moat.yaml"), "listeners:\n  - address: 127.0.0.1:1883\n    transport: tcp\nauth:\n  - {type: scram}\n")
	out, err = exec.Command(moatBin, "serve", "--check", "-c", filepath.Join(dir, "moat.yaml")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "a scram backend needs path") {
		t.Errorf("--check without path: %v\n%s", err, out)
	}
}
