// Package jwt authenticates MQTT clients that send a JSON Web Token as their
// password. The signing keys come from a JWKS URL (fetched over HTTPS,
// cached, refreshed on rotation and, rate-limited, on an unknown key ID) or
// from static files (PEM public keys, or an HMAC secret).
//
// The token's algorithm must be one the configuration allows, and the key
// it is checked with must be of that algorithm's type, so "alg: none" and
// algorithm confusion (HS256 signed with an RSA public key as the secret)
// are refused. iss, aud, exp and nbf are checked with a small leeway on an
// injectable clock. The identity comes from a configured claim; groups and
// topic grants (with %u and %c substituted) from optional claims.
//
// A Backend is safe for concurrent use and starts no goroutines: key
// refreshes run on the deciding connection, bounded by a timeout, and
// concurrent deciders share one fetch.
package jwt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/moatmq/moat/internal/authn"
)

// Defaults for the zero values of Config.
const (
	DefaultLeeway             = 30 * time.Second
	DefaultMaxTokenBytes      = 8 << 10
	DefaultUsernameClaim      = "sub"
	DefaultRefreshInterval    = time.Hour
	DefaultMinRefreshInterval = 30 * time.Second
	DefaultMaxStale           = 24 * time.Hour
	DefaultFetchTimeout       = 10 * time.Second
	DefaultMaxJWKSBytes       = 256 << 10
)

// DefaultAlgorithms are the algorithms accepted with public keys when
// Config.Algorithms is empty.
var DefaultAlgorithms = []string{"RS256", "ES256", "EdDSA", "PS256"}

// maxListEntries caps the entries read from a groups or ACL claim.
const maxListEntries = 256

// supported are the algorithms a configuration may name.
var supported = []string{
	"HS256", "HS384", "HS512",
	"RS256", "RS384", "RS512",
	"PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512",
	"EdDSA",
}

// Config configures a Backend. Exactly one key source is set: JWKSURL,
// PublicKeyFiles or HMACSecretFile. New does not modify it.
type Config struct {
	// Name identifies the backend in logs and decisions. Default "jwt".
	Name string

	// JWKSURL is the https URL of the identity provider's JSON Web Key
	// Set. Keys are fetched on first use, refreshed every RefreshInterval
	// and when a token names an unknown key ID (at most once per
	// MinRefreshInterval).
	JWKSURL string
	// CAFile is a PEM bundle of the CAs trusted for the JWKS server.
	// Default: the system roots.
	CAFile string

	// PublicKeyFiles are PEM files holding public keys ("PUBLIC KEY",
	// "RSA PUBLIC KEY") or certificates whose keys are used. A token's kid
	// is not used to choose among them: each key of the token's algorithm
	// is tried.
	PublicKeyFiles []string
	// HMACSecretFile holds the shared secret for HS256/384/512 (at least
	// 32 bytes; surrounding white space is trimmed). Secrets are only read
	// from files, never given inline.
	HMACSecretFile string

	// Algorithms are the accepted "alg" values. Default DefaultAlgorithms
	// with public keys, HS256 with an HMAC secret. HS* algorithms are only
	// accepted with HMACSecretFile and the others only without it; "none"
	// is never accepted.
	Algorithms []string

	// Issuer is the required "iss". Required with JWKSURL (an identity
	// provider serves many applications); optional with static keys.
	Issuer string
	// Audience lists accepted "aud" values; the token must name at least
	// one. Required with JWKSURL; optional with static keys.
	Audience []string
	// Leeway is the clock skew allowed on exp and nbf. Zero means
	// DefaultLeeway (30 s); a negative value means none.
	Leeway time.Duration
	// ExpOptional accepts tokens without "exp". Default false: exp is
	// required, so no token is valid forever.
	ExpOptional bool
	// MaxTokenBytes caps the token length. Default 8 KiB.
	MaxTokenBytes int

	// UsernameClaim names the claim holding the identity. Default "sub".
	// A dotted name ("realm.user") reaches into nested objects when no
	// claim has the name itself.
	UsernameClaim string
	// MatchUsername refuses a client whose CONNECT username is not empty
	// and differs from the token's identity. Default false: the CONNECT
	// username is ignored and the token's identity is used.
	MatchUsername bool
	// Exclusive makes the backend decide for every client: a password that
	// is not a JWT, or no password, is denied. Default false: such clients
	// are NotMine and the next backend is asked.
	Exclusive bool

	// GroupsClaim names a claim listing the identity's groups (an array of
	// strings, or one string of space-separated names as in "scope").
	// Default: none.
	GroupsClaim string
	// PublishClaim and SubscribeClaim name claims listing topic filters the
	// token grants (arrays of strings). %u is replaced by the identity and
	// %c by the client ID; a filter whose substitution would put "+", "#"
	// or "/" into it is dropped, never widened. Default: none.
	PublishClaim, SubscribeClaim string

	// RefreshInterval is how long fetched keys are used before they are
	// fetched again. Default 1 h.
	RefreshInterval time.Duration
	// MinRefreshInterval is the least time between two fetches of the
	// JWKS, so that a flood of tokens with made-up key IDs or an
	// unreachable provider cannot make Moat hammer it. Default 30 s.
	MinRefreshInterval time.Duration
	// MaxStale is how long keys fetched earlier keep being used while the
	// JWKS cannot be fetched. Default 24 h; after that, decisions fail
	// (server unavailable).
	MaxStale time.Duration
	// FetchTimeout bounds one JWKS fetch. Default 10 s.
	FetchTimeout time.Duration
	// MaxJWKSBytes caps the JWKS document. Default 256 KiB.
	MaxJWKSBytes int64

	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives key-set events and dropped grants. Default
	// slog.Default().
	Logger *slog.Logger
}

// Backend authenticates JWTs. Create it with New.
type Backend struct {
	name        string
	cfg         Config // defaults applied, slices copied
	parser      *gojwt.Parser
	keys        keySource
	log         *slog.Logger
	now         func() time.Time
	maxTokenLen int
}

var _ authn.Backend = (*Backend)(nil)

// New validates cfg and returns a Backend. Every problem is reported at
// once. Static key files are read now; a JWKS is fetched on first use (call
// Refresh to fetch it earlier).
func New(cfg Config) (*Backend, error) {
	c := cfg
	c.PublicKeyFiles = slices.Clone(cfg.PublicKeyFiles)
	c.Audience = slices.Clone(cfg.Audience)
	c.Algorithms = slices.Clone(cfg.Algorithms)
	if c.Name == "" {
		c.Name = "jwt"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
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
	if c.UsernameClaim == "" {
		c.UsernameClaim = DefaultUsernameClaim
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = DefaultRefreshInterval
	}
	if c.MinRefreshInterval <= 0 {
		c.MinRefreshInterval = DefaultMinRefreshInterval
	}
	if c.MaxStale <= 0 {
		c.MaxStale = DefaultMaxStale
	}
	if c.FetchTimeout <= 0 {
		c.FetchTimeout = DefaultFetchTimeout
	}
	if c.MaxJWKSBytes <= 0 {
		c.MaxJWKSBytes = DefaultMaxJWKSBytes
	}

	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("jwt: "+format, args...))
	}
	sources := 0
	for _, set := range []bool{c.JWKSURL != "", len(c.PublicKeyFiles) > 0, c.HMACSecretFile != ""} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		bad("set exactly one key source: jwks_url, public_key_files or hmac_secret_file (%d set)", sources)
	}
	hmac := c.HMACSecretFile != ""
	if len(c.Algorithms) == 0 {
		if hmac {
			c.Algorithms = []string{"HS256"}
		} else {
			c.Algorithms = slices.Clone(DefaultAlgorithms)
		}
	}
	for _, a := range c.Algorithms {
		switch {
		case !slices.Contains(supported, a):
			bad("algorithm %q is not supported (want one of %s)", a, strings.Join(supported, ", "))
		case strings.HasPrefix(a, "HS") && !hmac:
			bad("algorithm %s needs hmac_secret_file; accepting it with public keys would allow algorithm confusion", a)
		case !strings.HasPrefix(a, "HS") && hmac:
			bad("algorithm %s needs a public key; with hmac_secret_file only HS256, HS384 and HS512 apply", a)
		}
	}
	if c.JWKSURL != "" {
		if u, err := url.Parse(c.JWKSURL); err != nil || u.Scheme != "https" || u.Host == "" {
			bad("jwks_url %q must be an https URL: keys fetched in clear text could be replaced", c.JWKSURL)
		}
		if c.Issuer == "" {
			bad("issuer is required with jwks_url: an identity provider signs tokens for many applications")
		}
		if len(c.Audience) == 0 {
			bad("audience is required with jwks_url: without it a token issued for another application is accepted")
		}
		if c.MaxStale < c.RefreshInterval {
			bad("max_stale (%s) is shorter than refresh_interval (%s): keys would expire before they are refreshed", c.MaxStale, c.RefreshInterval)
		}
	} else if c.CAFile != "" {
		bad("ca_file applies only to jwks_url")
	}
	for _, a := range c.Audience {
		if a == "" {
			bad("audience contains an empty value")
		}
	}
	for _, n := range []string{c.UsernameClaim, c.GroupsClaim, c.PublishClaim, c.SubscribeClaim} {
		if strings.Trim(n, ".") != n {
			bad("claim name %q starts or ends with a dot", n)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	b := &Backend{name: c.Name, log: c.Logger.With("backend", c.Name), now: c.Now, maxTokenLen: c.MaxTokenBytes}
	var err error
	switch {
	case c.JWKSURL != "":
		b.keys, err = newJWKS(&c, b.log)
	case hmac:
		b.keys, err = loadHMAC(c.HMACSecretFile)
	default:
		b.keys, err = loadPublicKeys(c.PublicKeyFiles)
	}
	if err != nil {
		return nil, err
	}
	opts := []gojwt.ParserOption{
		gojwt.WithValidMethods(c.Algorithms),
		gojwt.WithLeeway(c.Leeway),
		gojwt.WithTimeFunc(c.Now),
	}
	if !c.ExpOptional {
		opts = append(opts, gojwt.WithExpirationRequired())
	}
	if c.Issuer != "" {
		opts = append(opts, gojwt.WithIssuer(c.Issuer))
	}
	if len(c.Audience) > 0 {
		opts = append(opts, gojwt.WithAudience(c.Audience...))
	}
	b.parser = gojwt.NewParser(opts...)
	b.cfg = c
	return b, nil
}

// Name returns the configured name (default "jwt").
func (b *Backend) Name() string { return b.name }

// Refresh fetches the JWKS now (a no-op with static keys). The wiring may
// call it at start-up to report an unreachable provider early; decisions
// fetch on their own when needed.
func (b *Backend) Refresh(ctx context.Context) error {
	if j, ok := b.keys.(*jwks); ok {
		if err := j.refresh(ctx); err != nil {
			return fmt.Errorf("jwt: %s: JWKS %s: %w", b.name, j.url, err)
		}
	}
	return nil
}

// Authenticate checks the password as a JWT. It returns an error wrapping
// authn.ErrUnavailable only when the keys cannot be obtained.
func (b *Backend) Authenticate(ctx context.Context, req *authn.Request) (authn.Result, error) {
	tok := req.Password.Bytes()
	if !looksLikeJWT(tok) {
		if !b.cfg.Exclusive {
			return authn.Result{Verdict: authn.NotMine}, nil
		}
		return b.deny("the password is not a JWT (exclusive backend)"), nil
	}
	if len(tok) > b.maxTokenLen {
		return b.deny(fmt.Sprintf("token of %d bytes is larger than the limit of %d", len(tok), b.maxTokenLen)), nil
	}

	claims := gojwt.MapClaims{}
	_, err := b.parser.ParseWithClaims(string(tok), claims, func(t *gojwt.Token) (any, error) {
		if _, ok := t.Header["crit"]; ok {
			// RFC 7515 §4.1.11: extensions marked critical must be
			// understood; Moat understands none.
			return nil, errCrit
		}
		return b.keys.key(ctx, t)
	})
	if err != nil {
		if errors.Is(err, authn.ErrUnavailable) {
			return authn.Result{}, fmt.Errorf("jwt: %s: %w", b.name, unwrapUnavailable(err))
		}
		return b.deny(denyReason(err)), nil
	}

	user, ok := claimString(claims, b.cfg.UsernameClaim)
	if !ok || user == "" {
		return b.deny(fmt.Sprintf("token has no string claim %q for the username", b.cfg.UsernameClaim)), nil
	}
	if !validIdentity(user) {
		return b.deny(fmt.Sprintf("claim %q holds an unusable username (control characters or over 1024 bytes)", b.cfg.UsernameClaim)), nil
	}
	if b.cfg.MatchUsername && req.Username != "" && req.Username != user {
		return b.deny("CONNECT username does not match the token's identity"), nil
	}

	res := authn.Result{
		Verdict:  authn.Allow,
		Username: user,
		Reason:   b.name + ": valid token",
	}
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		res.Expires = exp.Time
	}
	if b.cfg.GroupsClaim != "" {
		g, err := claimList(claims, b.cfg.GroupsClaim, true)
		if err != nil {
			return b.deny(err.Error()), nil
		}
		res.Groups = g
	}
	for _, acl := range []struct {
		claim string
		out   *[]string
	}{{b.cfg.PublishClaim, &res.Publish}, {b.cfg.SubscribeClaim, &res.Subscribe}} {
		if acl.claim == "" {
			continue
		}
		filters, err := claimList(claims, acl.claim, false)
		if err != nil {
			return b.deny(err.Error()), nil
		}
		for _, f := range filters {
			s, why := substitute(f, user, req.ClientID)
			if why != "" {
				b.log.Warn("jwt: topic grant dropped", "claim", acl.claim, "username", clip(user), "filter", clip(f), "reason", why)
				continue
			}
			*acl.out = append(*acl.out, s)
		}
	}
	attrs := map[string]string{}
	for _, k := range []string{"iss", "jti"} {
		if v, ok := claims[k].(string); ok {
			attrs[k] = clip(v)
		}
	}
	if len(attrs) > 0 {
		res.Attributes = attrs
	}
	return res, nil
}

func (b *Backend) deny(why string) authn.Result {
	return authn.Result{Verdict: authn.Deny, Reason: b.name + ": " + why}
}

// denyReason turns a parser error into a reason without token contents.
func denyReason(err error) string {
	for _, e := range []struct {
		err error
		why string
	}{
		{errUnknownKID, "token signed with an unknown key ID"},
		{errCrit, "token has critical header extensions (crit), which are not supported"},
		{errKeyType, "no configured key fits the token's algorithm (key type or size)"},
		{gojwt.ErrTokenMalformed, "malformed token"},
		{gojwt.ErrTokenSignatureInvalid, "bad signature or algorithm not allowed"},
		{gojwt.ErrTokenExpired, "token expired"},
		{gojwt.ErrTokenNotValidYet, "token not valid yet"},
		{gojwt.ErrTokenInvalidIssuer, "wrong issuer"},
		{gojwt.ErrTokenInvalidAudience, "wrong audience"},
		{gojwt.ErrTokenRequiredClaimMissing, "a required claim is missing"},
		{gojwt.ErrTokenInvalidClaims, "invalid claims"},
		{gojwt.ErrTokenUnverifiable, "token cannot be verified with the configured keys"},
	} {
		if errors.Is(err, e.err) {
			return e.why
		}
	}
	return "invalid token"
}

// unwrapUnavailable finds the authn.ErrUnavailable error inside a parser
// error, so the message is the key source's, not the parser's.
func unwrapUnavailable(err error) error {
	var u *unavailableError
	if errors.As(err, &u) {
		return u
	}
	return err
}

// looksLikeJWT reports whether b has the compact JWS shape: three non-empty
// base64url parts (header, payload) and a base64url signature.
func looksLikeJWT(b []byte) bool {
	parts, n := 0, 0
	for _, c := range b {
		switch {
		case c == '.':
			if n == 0 {
				return false
			}
			parts++
			n = 0
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			n++
		default:
			return false
		}
	}
	// Two dots seen; the signature part may be empty only for "alg: none",
	// which is still a JWT (and is refused as one).
	return parts == 2
}

func clip(s string) string {
	const max = 128
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

func readSecretFile(path, what string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("jwt: reading %s: %w", what, err)
	}
	return b, nil
}
