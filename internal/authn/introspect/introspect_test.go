package introspect

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/authn"
)

const (
	clientID = "moat broker" // a space, to check the form encoding of Basic credentials
	secret   = "s3cr3t:with/odd&chars"
)

// authServer is an OAuth 2.0 authorization server's introspection
// endpoint served over HTTPS.
type authServer struct {
	srv    *httptest.Server
	caFile string
	hits   atomic.Int64
	mu     sync.Mutex
	tokens map[string]map[string]any
	status int    // when not 0, answer with this status
	raw    string // when not "", answer with this body
}

func newAuthServer(t *testing.T) *authServer {
	t.Helper()
	a := &authServer{tokens: map[string]map[string]any{}}
	a.srv = httptest.NewTLSServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.srv.Close)
	a.caFile = writeFile(t, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.srv.Certificate().Raw}))
	return a
}

func (a *authServer) set(token string, resp map[string]any) {
	a.mu.Lock()
	a.tokens[token] = resp
	a.mu.Unlock()
}

func (a *authServer) fail(status int, raw string) {
	a.mu.Lock()
	a.status, a.raw = status, raw
	a.mu.Unlock()
}

func (a *authServer) serve(w http.ResponseWriter, r *http.Request) {
	a.hits.Add(1)
	id, pw, ok := r.BasicAuth()
	if r.Method != http.MethodPost || !ok || id != "moat+broker" || pw != "s3cr3t%3Awith%2Fodd%26chars" {
		http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	resp, known := a.tokens[r.PostForm.Get("token")]
	status, raw := a.status, a.raw
	a.mu.Unlock()
	switch {
	case status != 0:
		http.Error(w, "unavailable", status)
		return
	case raw != "":
		_, _ = io.WriteString(w, raw)
		return
	case !known:
		resp = map[string]any{"active": false}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func setup(t *testing.T, mod func(*Config)) (*Backend, *authServer, *testutil.Clock) {
	t.Helper()
	a := newAuthServer(t)
	clk := testutil.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	cfg := Config{
		URL:              a.srv.URL + "/oauth2/introspect",
		CAFile:           a.caFile,
		ClientID:         clientID,
		ClientSecretFile: writeFile(t, "secret", []byte(secret+"\n")),
		GroupsClaim:      "scope",
		Now:              clk.Now,
		Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b, a, clk
}

func req(user, token string) *authn.Request {
	return &authn.Request{Username: user, ClientID: "c", Password: authn.NewPassword([]byte(token)), HasPassword: true}
}

func decide(t *testing.T, b *Backend, r *authn.Request, want authn.Verdict) authn.Result {
	t.Helper()
	res, err := b.Authenticate(context.Background(), r)
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	if res.Verdict != want {
		t.Fatalf("verdict %v (%s), want %v", res.Verdict, res.Reason, want)
	}
	return res
}

func TestActiveTokenCached(t *testing.T) {
	b, a, clk := setup(t, nil)
	exp := clk.Now().Add(30 * time.Second).Truncate(time.Second)
	a.set("tok-1", map[string]any{"active": true, "sub": "dev1", "scope": "telemetry ops", "exp": exp.Unix()})

	res := decide(t, b, req("", "tok-1"), authn.Allow)
	if res.Username != "dev1" || !res.Expires.Equal(exp) || !slices.Equal(res.Groups, []string{"telemetry", "ops"}) {
		t.Fatalf("result %+v", res)
	}
	decide(t, b, req("", "tok-1"), authn.Allow)
	if st := b.Stats(); st.CacheHits != 1 || st.CacheMisses != 1 || st.Requests != 1 || a.hits.Load() != 1 {
		t.Fatalf("stats %+v, endpoint hits %d: want the second decision from the cache", st, a.hits.Load())
	}

	// The cache holds the answer until exp (30 s), sooner than CacheTTL
	// (1 min). Then the endpoint is asked again, and now says inactive.
	a.set("tok-1", map[string]any{"active": false})
	clk.Advance(30 * time.Second)
	res = decide(t, b, req("", "tok-1"), authn.Deny)
	if !strings.Contains(res.Reason, "not active") || a.hits.Load() != 2 {
		t.Fatalf("reason %q after %d hits", res.Reason, a.hits.Load())
	}
}

func TestCacheTTLBoundsActive(t *testing.T) {
	b, a, clk := setup(t, nil)
	a.set("tok", map[string]any{"active": true, "sub": "dev"}) // no exp
	decide(t, b, req("", "tok"), authn.Allow)
	clk.Advance(DefaultCacheTTL - time.Second)
	decide(t, b, req("", "tok"), authn.Allow)
	if a.hits.Load() != 1 {
		t.Fatalf("%d hits within CacheTTL, want 1", a.hits.Load())
	}
	clk.Advance(time.Second)
	decide(t, b, req("", "tok"), authn.Allow)
	if a.hits.Load() != 2 {
		t.Fatalf("%d hits after CacheTTL, want 2", a.hits.Load())
	}
}

func TestInactiveCachedBriefly(t *testing.T) {
	b, a, clk := setup(t, nil)
	decide(t, b, req("", "unknown"), authn.Deny)
	decide(t, b, req("", "unknown"), authn.Deny)
	if a.hits.Load() != 1 || b.Stats().CacheHits != 1 {
		t.Fatalf("%d hits, stats %+v: the inactive answer should be cached", a.hits.Load(), b.Stats())
	}
	clk.Advance(DefaultNegativeCacheTTL)
	a.set("unknown", map[string]any{"active": true, "sub": "late"})
	decide(t, b, req("", "unknown"), authn.Allow)
}

// TestSecurityEndpointDownFailsClosed: an attacker who can make the
// authorization server unreachable (or broken) must not get in, and the
// failure must not be cached as an answer.
func TestSecurityEndpointDownFailsClosed(t *testing.T) {
	b, a, _ := setup(t, nil)
	a.set("tok", map[string]any{"active": true, "sub": "dev"})
	for _, tc := range []struct {
		name   string
		status int
		raw    string
	}{
		{"HTTP 503", http.StatusServiceUnavailable, ""},
		{"not JSON", 0, "<html>gateway</html>"},
		{"no active member", 0, `{"sub":"dev"}`},
		{"active as string", 0, `{"active":"true","sub":"dev"}`},
		{"oversized", 0, `{"active":true,"sub":"dev","pad":"` + strings.Repeat("x", DefaultMaxResponseBytes) + `"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.fail(tc.status, tc.raw)
			before := a.hits.Load()
			for range 2 {
				_, err := b.Authenticate(context.Background(), req("", "tok"))
				if !errors.Is(err, authn.ErrUnavailable) {
					t.Fatalf("err %v, want ErrUnavailable", err)
				}
			}
			if a.hits.Load() != before+2 {
				t.Fatalf("a failure was cached: %d requests for 2 decisions", a.hits.Load()-before)
			}
		})
	}
	a.fail(0, "")
	decide(t, b, req("", "tok"), authn.Allow)

	// The server is gone altogether.
	a.srv.Close()
	_, err := b.Authenticate(context.Background(), req("", "other"))
	if !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("closed endpoint: err %v, want ErrUnavailable", err)
	}
	if b.Stats().Failures < 11 {
		t.Errorf("stats %+v", b.Stats())
	}
}

// TestSecurityNoRedirect: an endpoint (or someone on its path) that
// redirects must not make Moat send the token and its client credentials
// to another server.
func TestSecurityNoRedirect(t *testing.T) {
	var leaked atomic.Int64
	thief := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Add(1)
		_, _ = io.WriteString(w, `{"active":true,"sub":"admin"}`)
	}))
	defer thief.Close()
	b, a, _ := setup(t, nil)
	a.srv.Config.Handler = http.RedirectHandler(thief.URL, http.StatusTemporaryRedirect)
	if _, err := b.Authenticate(context.Background(), req("", "tok")); !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("redirect: err %v, want ErrUnavailable", err)
	}
	if leaked.Load() != 0 {
		t.Fatal("the token was sent to the redirect target")
	}
}

func TestWrongClientSecret(t *testing.T) {
	t.Setenv("MOAT_TEST_INTROSPECT_SECRET", "wrong")
	b2, _, _ := setup(t, func(c *Config) {
		c.ClientSecretFile = ""
		c.ClientSecretEnv = "MOAT_TEST_INTROSPECT_SECRET"
	})
	_, err := b2.Authenticate(context.Background(), req("", "tok"))
	if !errors.Is(err, authn.ErrUnavailable) || !strings.Contains(err.Error(), "client_id") || !strings.HasPrefix(err.Error(), "introspect: introspection: https://") {
		t.Fatalf("err %v, want ErrUnavailable pointing at the client credentials", err)
	}
	t.Setenv("MOAT_TEST_INTROSPECT_SECRET", secret)
	b3, a3, _ := setup(t, func(c *Config) {
		c.ClientSecretFile = ""
		c.ClientSecretEnv = "MOAT_TEST_INTROSPECT_SECRET"
	})
	a3.set("tok", map[string]any{"active": true, "sub": "dev"})
	decide(t, b3, req("", "tok"), authn.Allow)
}

func TestChecks(t *testing.T) {
	b, a, clk := setup(t, func(c *Config) {
		c.Issuer = "https://as.example"
		c.Audience = []string{"moat"}
		c.MatchUsername = true
		c.MaxCacheEntries = 2
	})
	now := clk.Now()
	ok := map[string]any{"active": true, "sub": "dev", "iss": "https://as.example", "aud": []any{"x", "moat"}, "exp": now.Add(time.Hour).Unix()}
	with := func(k string, v any) map[string]any {
		m := map[string]any{}
		for kk, vv := range ok {
			m[kk] = vv
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	a.set("ok", ok)
	a.set("iss", with("iss", "https://evil.example"))
	a.set("aud", with("aud", "other"))
	a.set("noaud", with("aud", nil))
	a.set("expired", with("exp", now.Add(-time.Hour).Unix()))
	a.set("nbf", with("nbf", now.Add(time.Hour).Unix()))
	a.set("nosub", with("sub", nil))
	a.set("ctl", with("sub", "a\x00b"))
	for tok, why := range map[string]string{
		"iss": "wrong issuer", "aud": "wrong audience", "noaud": "wrong audience", "expired": "expired",
		"nbf": "not valid yet", "nosub": "no string", "ctl": "unusable username",
	} {
		res := decide(t, b, req("", tok), authn.Deny)
		if !strings.Contains(res.Reason, why) {
			t.Errorf("%s: reason %q, want %q", tok, res.Reason, why)
		}
	}
	decide(t, b, req("dev", "ok"), authn.Allow)
	decide(t, b, req("admin", "ok"), authn.Deny)

	// Tokens are refused before any request when they cannot be tokens.
	before := a.hits.Load()
	decide(t, b, req("", strings.Repeat("t", DefaultMaxTokenBytes+1)), authn.Deny)
	decide(t, b, req("", "has space"), authn.Deny)
	decide(t, b, req("", "é"), authn.Deny)
	if res, err := b.Authenticate(context.Background(), req("u", "")); err != nil || res.Verdict != authn.NotMine {
		t.Errorf("no password: %v %v, want not-mine", res.Verdict, err)
	}
	if a.hits.Load() != before {
		t.Errorf("%d requests for tokens refused locally", a.hits.Load()-before)
	}
	if n := b.cache.len(); n > 2 {
		t.Errorf("cache holds %d entries, bounded at 2", n)
	}
}

func TestCacheBounded(t *testing.T) {
	b, a, _ := setup(t, func(c *Config) { c.MaxCacheEntries = 2 })
	for _, tok := range []string{"a", "b", "c"} {
		a.set(tok, map[string]any{"active": true, "sub": tok})
		decide(t, b, req("", tok), authn.Allow)
	}
	// "a" was the least recently used and was evicted; "c" is cached.
	decide(t, b, req("", "c"), authn.Allow)
	decide(t, b, req("", "a"), authn.Allow)
	if st := b.Stats(); st.CacheHits != 1 || st.Requests != 4 {
		t.Fatalf("stats %+v, want 1 hit and 4 requests", st)
	}
}

func TestTimeout(t *testing.T) {
	release := make(chan struct{})
	b, a, _ := setup(t, func(c *Config) { c.Timeout = 200 * time.Millisecond })
	a.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	defer close(release)
	if _, err := b.Authenticate(context.Background(), req("", "tok")); !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("err %v, want ErrUnavailable after the timeout", err)
	}
}

func TestConfigErrors(t *testing.T) {
	sec := writeFile(t, "s", []byte("x"))
	empty := writeFile(t, "e", []byte("\n"))
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"empty", Config{}, "must be an https URL"},
		{"http", Config{URL: "http://as/introspect", ClientID: "c", ClientSecretFile: sec}, "must be an https URL"},
		{"no client", Config{URL: "https://as/i", ClientSecretFile: sec}, "client_id is required"},
		{"no secret", Config{URL: "https://as/i", ClientID: "c"}, "exactly one of client_secret_file"},
		{"two secrets", Config{URL: "https://as/i", ClientID: "c", ClientSecretFile: sec, ClientSecretEnv: "X"}, "exactly one"},
		{"empty secret", Config{URL: "https://as/i", ClientID: "c", ClientSecretFile: empty}, "is empty"},
		{"unset env", Config{URL: "https://as/i", ClientID: "c", ClientSecretEnv: "MOAT_TEST_UNSET_SECRET"}, "unset or empty"},
		{"credentials in url", Config{URL: "https://u:p@as/i", ClientID: "c", ClientSecretFile: sec}, "must not hold credentials"},
		{"bad ca", Config{URL: "https://as/i", ClientID: "c", ClientSecretFile: sec, CAFile: sec}, "no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "introspect: ") {
				t.Fatalf("err %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}
