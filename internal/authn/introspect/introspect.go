// Package introspect authenticates MQTT clients that send an opaque OAuth
// 2.0 access token as their password, by asking the authorization server's
// token introspection endpoint (RFC 7662) whether the token is active.
//
// Answers are cached under the SHA-256 of the token (the token itself is
// never kept): an active token until its exp or the maximum cache time,
// whichever is sooner; an inactive one briefly. An endpoint that cannot be
// reached, or answers with anything but a well-formed response, makes the
// decision fail closed (an error wrapping authn.ErrUnavailable); errors are
// never cached.
//
// A Backend is safe for concurrent use and starts no goroutines.
package introspect

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/authn"
)

// Defaults for the zero values of Config.
const (
	DefaultUsernameClaim    = "sub"
	DefaultMaxTokenBytes    = 8 << 10
	DefaultMaxResponseBytes = 64 << 10
	DefaultTimeout          = 5 * time.Second
	DefaultCacheTTL         = time.Minute
	DefaultNegativeCacheTTL = 10 * time.Second
	DefaultMaxCacheEntries  = 10000
	DefaultMaxConcurrent    = 16
	DefaultLeeway           = 30 * time.Second
)

const (
	maxListEntries   = 256
	maxIdentityBytes = 1024
)

// Config configures a Backend. New does not modify it.
type Config struct {
	// Name identifies the backend in logs and decisions. Default
	// "introspection".
	Name string
	// URL is the https introspection endpoint. Required.
	URL string
	// CAFile is a PEM bundle of the CAs trusted for the endpoint.
	// Default: the system roots.
	CAFile string

	// ClientID authenticates Moat to the endpoint (HTTP Basic, RFC 6749
	// §2.3.1). Required.
	ClientID string
	// ClientSecretFile holds the client secret (surrounding white space
	// trimmed). Exactly one of ClientSecretFile and ClientSecretEnv is
	// set: secrets are never given inline.
	ClientSecretFile string
	// ClientSecretEnv names an environment variable holding the secret.
	ClientSecretEnv string

	// UsernameClaim names the response member holding the identity.
	// Default "sub" (RFC 7662 also defines "username").
	UsernameClaim string
	// GroupsClaim names a response member listing groups (an array of
	// strings, or a space-separated string such as "scope"). Default: none.
	GroupsClaim string
	// Issuer, when set, must equal the response's "iss".
	Issuer string
	// Audience, when set, lists accepted "aud" values; the response must
	// name at least one.
	Audience []string
	// MatchUsername refuses a client whose CONNECT username is not empty
	// and differs from the token's identity. Default false: the token's
	// identity is used.
	MatchUsername bool
	// Leeway is the clock skew allowed on exp and nbf. Zero means 30 s; a
	// negative value means none.
	Leeway time.Duration

	// MaxTokenBytes caps the token length. Default 8 KiB.
	MaxTokenBytes int
	// MaxResponseBytes caps the endpoint's answer. Default 64 KiB.
	MaxResponseBytes int64
	// Timeout bounds one request. Default 5 s.
	Timeout time.Duration
	// MaxConcurrent caps requests in flight to the endpoint; deciders
	// beyond it wait (within their connect deadline). Default 16.
	MaxConcurrent int

	// CacheTTL is the longest an active answer is reused. A token revoked
	// at the authorization server keeps working for up to this long.
	// Default 1 min; negative disables caching.
	CacheTTL time.Duration
	// NegativeCacheTTL is how long an inactive answer is reused. Default
	// 10 s; negative disables it.
	NegativeCacheTTL time.Duration
	// MaxCacheEntries bounds the cache; the least recently used entry goes
	// first. Default 10000.
	MaxCacheEntries int

	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives endpoint failures. Default slog.Default().
	Logger *slog.Logger
}

// Stats counts what a Backend did. All counters only grow.
type Stats struct {
	Requests    int64 // requests sent to the endpoint
	CacheHits   int64 // decisions answered from the cache
	CacheMisses int64 // decisions that needed a request
	Failures    int64 // requests that failed (no decision)
}

// Backend asks an introspection endpoint. Create it with New.
type Backend struct {
	cfg    Config
	url    string // for logs: without userinfo
	client *http.Client
	secret string
	sem    chan struct{}
	cache  *cache
	log    *slog.Logger

	requests, hits, misses, failures atomic.Int64
}

var _ authn.Backend = (*Backend)(nil)

// New validates cfg, reads the client secret and returns a Backend. Every
// problem is reported at once.
func New(cfg Config) (*Backend, error) {
	c := cfg
	c.Audience = slices.Clone(cfg.Audience)
	if c.Name == "" {
		c.Name = "introspection"
	}
	if c.UsernameClaim == "" {
		c.UsernameClaim = DefaultUsernameClaim
	}
	switch {
	case c.Leeway == 0:
		c.Leeway = DefaultLeeway
	case c.Leeway < 0:
		c.Leeway = 0
	}
	if c.MaxTokenBytes <= 0 {
		c.MaxTokenBytes = DefaultMaxTokenBytes
	}
	if c.MaxResponseBytes <= 0 {
		c.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = DefaultMaxConcurrent
	}
	if c.CacheTTL == 0 {
		c.CacheTTL = DefaultCacheTTL
	}
	if c.NegativeCacheTTL == 0 {
		c.NegativeCacheTTL = DefaultNegativeCacheTTL
	}
	if c.MaxCacheEntries <= 0 {
		c.MaxCacheEntries = DefaultMaxCacheEntries
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}

	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("introspect: "+format, args...))
	}
	u, err := url.Parse(c.URL)
	if c.URL == "" || err != nil || u.Scheme != "https" || u.Host == "" {
		bad("url %q must be an https URL: tokens and the client secret would cross the network in clear text", c.URL)
	} else if u.User != nil {
		bad("url must not hold credentials: use client_id and client_secret_file")
	}
	if c.ClientID == "" {
		bad("client_id is required: the endpoint must know who asks")
	}
	var secret string
	switch {
	case (c.ClientSecretFile == "") == (c.ClientSecretEnv == ""):
		bad("set exactly one of client_secret_file and client_secret_env")
	case c.ClientSecretFile != "":
		if b, err := os.ReadFile(c.ClientSecretFile); err != nil {
			bad("reading client_secret_file: %v", err)
		} else if secret = strings.TrimSpace(string(b)); secret == "" {
			bad("client_secret_file %s is empty", c.ClientSecretFile)
		}
	default:
		if secret = strings.TrimSpace(os.Getenv(c.ClientSecretEnv)); secret == "" {
			bad("environment variable %s (client_secret_env) is unset or empty", c.ClientSecretEnv)
		}
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			bad("reading ca_file: %v", err)
		} else {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				bad("ca_file %s holds no PEM certificate", c.CAFile)
			}
			tc.RootCAs = pool
		}
	}
	for _, a := range c.Audience {
		if a == "" {
			bad("audience contains an empty value")
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	b := &Backend{
		cfg:    c,
		url:    u.Redacted(),
		secret: secret,
		sem:    make(chan struct{}, c.MaxConcurrent),
		cache:  newCache(c.MaxCacheEntries),
		log:    c.Logger.With("backend", c.Name),
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				TLSClientConfig:       tc,
				TLSHandshakeTimeout:   c.Timeout,
				ResponseHeaderTimeout: c.Timeout,
				MaxIdleConnsPerHost:   c.MaxConcurrent,
				IdleConnTimeout:       time.Minute,
			},
			Timeout: c.Timeout,
			// A redirect would resend the token elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	return b, nil
}

// Name returns the configured name (default "introspection").
func (b *Backend) Name() string { return b.cfg.Name }

// Stats returns the counters.
func (b *Backend) Stats() Stats {
	return Stats{Requests: b.requests.Load(), CacheHits: b.hits.Load(), CacheMisses: b.misses.Load(), Failures: b.failures.Load()}
}

// answer is what is kept of an introspection response.
type answer struct {
	active   bool
	username string
	groups   []string
	exp, nbf time.Time
	why      string // for an inactive or unusable token: the deny reason
}

// Authenticate introspects the password. A client without a password is
// NotMine; any other password is treated as a token.
func (b *Backend) Authenticate(ctx context.Context, req *authn.Request) (authn.Result, error) {
	tok := req.Password.Bytes()
	if len(tok) == 0 {
		return authn.Result{Verdict: authn.NotMine}, nil
	}
	if len(tok) > b.cfg.MaxTokenBytes {
		return b.deny(fmt.Sprintf("token of %d bytes is larger than the limit of %d", len(tok), b.cfg.MaxTokenBytes)), nil
	}
	for _, c := range tok {
		// RFC 6750 b64token characters and the like: printable ASCII.
		if c <= 0x20 || c >= 0x7f {
			return b.deny("the password is not a token (non-printable or non-ASCII bytes)"), nil
		}
	}
	key := sha256.Sum256(tok)
	now := b.cfg.Now()
	a, ok := b.cache.get(key, now)
	if ok {
		b.hits.Add(1)
	} else {
		b.misses.Add(1)
		var err error
		if a, err = b.introspect(ctx, tok); err != nil {
			b.failures.Add(1)
			b.log.Warn("introspect: endpoint failed; refusing the client", "url", b.url, "err", err)
			return authn.Result{}, fmt.Errorf("introspect: %s: %s: %w (%w)", b.cfg.Name, b.url, err, authn.ErrUnavailable)
		}
		now = b.cfg.Now()
		b.store(key, a, now)
	}
	return b.decide(a, req, now), nil
}

func (b *Backend) store(key [32]byte, a answer, now time.Time) {
	ttl := b.cfg.NegativeCacheTTL
	if a.active {
		ttl = b.cfg.CacheTTL
	}
	if ttl <= 0 {
		return
	}
	until := now.Add(ttl)
	if a.active && !a.exp.IsZero() && a.exp.Before(until) {
		until = a.exp
	}
	if until.After(now) {
		b.cache.put(key, a, until)
	}
}

func (b *Backend) decide(a answer, req *authn.Request, now time.Time) authn.Result {
	if !a.active {
		return b.deny(a.why)
	}
	if !a.exp.IsZero() && !now.Before(a.exp.Add(b.cfg.Leeway)) {
		return b.deny("token expired")
	}
	if !a.nbf.IsZero() && now.Add(b.cfg.Leeway).Before(a.nbf) {
		return b.deny("token not valid yet")
	}
	if b.cfg.MatchUsername && req.Username != "" && req.Username != a.username {
		return b.deny("CONNECT username does not match the token's identity")
	}
	return authn.Result{
		Verdict:  authn.Allow,
		Reason:   b.cfg.Name + ": active token",
		Username: a.username,
		Groups:   slices.Clone(a.groups),
		Expires:  a.exp,
	}
}

func (b *Backend) deny(why string) authn.Result {
	return authn.Result{Verdict: authn.Deny, Reason: b.cfg.Name + ": " + why}
}

// introspect asks the endpoint. An error means no answer could be had.
func (b *Backend) introspect(ctx context.Context, tok []byte) (answer, error) {
	select {
	case b.sem <- struct{}{}:
		defer func() { <-b.sem }()
	case <-ctx.Done():
		return answer{}, fmt.Errorf("waiting for a free request slot: %w", ctx.Err())
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	form := url.Values{"token": {string(tok)}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.cfg.URL, strings.NewReader(form.Encode()))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	// RFC 6749 §2.3.1: the client ID and secret are form-encoded before
	// Basic encoding.
	req.SetBasicAuth(url.QueryEscape(b.cfg.ClientID), url.QueryEscape(b.secret))
	b.requests.Add(1)
	resp, err := b.client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return answer{}, fmt.Errorf("HTTP status %s: check client_id and the client secret", resp.Status)
		}
		return answer{}, fmt.Errorf("HTTP status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, b.cfg.MaxResponseBytes+1))
	if err != nil {
		return answer{}, fmt.Errorf("reading the response: %w", err)
	}
	if int64(len(body)) > b.cfg.MaxResponseBytes {
		return answer{}, fmt.Errorf("response larger than %d bytes", b.cfg.MaxResponseBytes)
	}
	return b.parse(body)
}

// parse reads an RFC 7662 response. A malformed response is an error (the
// endpoint is broken, not the client); a well-formed one whose token cannot
// be used is an inactive answer with a reason.
func (b *Backend) parse(body []byte) (answer, error) {
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return answer{}, fmt.Errorf("response is not a JSON object: %w", err)
	}
	active, ok := m["active"].(bool)
	if !ok {
		return answer{}, errors.New(`response has no boolean "active"`)
	}
	if !active {
		return answer{why: "token is not active"}, nil
	}
	inactive := func(why string) (answer, error) { return answer{why: why}, nil }
	a := answer{active: true}
	var err error
	if a.exp, err = numericDate(m, "exp"); err != nil {
		return inactive(err.Error())
	}
	if a.nbf, err = numericDate(m, "nbf"); err != nil {
		return inactive(err.Error())
	}
	if b.cfg.Issuer != "" {
		if iss, _ := m["iss"].(string); iss != b.cfg.Issuer {
			return inactive("wrong issuer")
		}
	}
	if len(b.cfg.Audience) > 0 {
		auds, err := stringList(m, "aud", false)
		if err != nil || !slices.ContainsFunc(auds, func(a string) bool { return slices.Contains(b.cfg.Audience, a) }) {
			return inactive("wrong audience")
		}
	}
	user, _ := m[b.cfg.UsernameClaim].(string)
	if user == "" {
		return inactive(fmt.Sprintf("response has no string %q for the username", b.cfg.UsernameClaim))
	}
	if !validIdentity(user) {
		return inactive(fmt.Sprintf("%q holds an unusable username (control characters or over %d bytes)", b.cfg.UsernameClaim, maxIdentityBytes))
	}
	a.username = user
	if b.cfg.GroupsClaim != "" {
		if a.groups, err = stringList(m, b.cfg.GroupsClaim, true); err != nil {
			return inactive(err.Error())
		}
	}
	return a, nil
}

func numericDate(m map[string]any, name string) (time.Time, error) {
	v, ok := m[name]
	if !ok || v == nil {
		return time.Time{}, nil
	}
	f, ok := v.(float64)
	if !ok || f < 0 || f > 1e11 {
		return time.Time{}, fmt.Errorf("%q is not a valid time", name)
	}
	return time.Unix(int64(f), 0), nil
}

func stringList(m map[string]any, name string, spaces bool) ([]string, error) {
	return authn.StringList(m[name], fmt.Sprintf("%q", name), spaces)
}

func validIdentity(s string) bool { return authn.ValidIdentity(s) }
