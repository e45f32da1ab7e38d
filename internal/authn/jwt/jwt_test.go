package jwt

import (
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/moatmq/moat/internal/authn"
)

// TestSecurityHostileTokens: each case is a token an attacker could send as
// the MQTT password; each must be refused with a reason.
func TestSecurityHostileTokens(t *testing.T) {
	clk := newClock()
	k1 := newRSA(t, "k1", 0)
	p := newIDP(t, k1)
	b := mustNew(t, jwksConfig(p, clk))
	good := claimsAt(clk, "dev1")
	with := func(k string, v any) gojwt.MapClaims {
		c := gojwt.MapClaims{}
		for kk, vv := range good {
			c[kk] = vv
		}
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	now := clk.Now()

	// alg "none": a token that is not signed at all.
	none := gojwt.NewWithClaims(gojwt.SigningMethodNone, good)
	none.Header["kid"] = "k1"
	noneTok, err := none.SignedString(gojwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	// Algorithm confusion: HS256 keyed with the provider's public RSA key,
	// which anyone can download, hoping the verifier uses it as the HMAC
	// secret.
	confused := gojwt.NewWithClaims(gojwt.SigningMethodHS256, good)
	confused.Header["kid"] = "k1"
	confusedTok, err := confused.SignedString(k1.publicPEM(t))
	if err != nil {
		t.Fatal(err)
	}
	// A valid signature over other claims, with the payload swapped.
	valid := k1.sign(t, good)
	other := k1.sign(t, claimsAt(clk, "admin"))
	parts, otherParts := strings.Split(valid, "."), strings.Split(other, ".")
	swapped := parts[0] + "." + otherParts[1] + "." + parts[2]
	// An attacker's own key under the provider's kid.
	forged := signer{kid: "k1", alg: gojwt.SigningMethodRS256, priv: rsaKey(t, 2)}
	// A critical header extension the verifier does not implement.
	crit := gojwt.NewWithClaims(k1.alg, good)
	crit.Header["kid"], crit.Header["crit"], crit.Header["b64"] = "k1", []string{"b64"}, false
	critTok, err := crit.SignedString(k1.priv)
	if err != nil {
		t.Fatal(err)
	}
	// A huge token: refused before any parsing.
	huge := k1.sign(t, with("pad", strings.Repeat("A", 9000)))

	for _, tc := range []struct {
		name, token, reason string
	}{
		{"alg none", noneTok, "algorithm not allowed"},
		{"HS256 with the public key as secret", confusedTok, "algorithm not allowed"},
		{"payload swapped", swapped, "bad signature"},
		{"forged with own key", forged.sign(t, good), "bad signature"},
		{"unknown kid", signer{kid: "nope", alg: k1.alg, priv: k1.priv}.sign(t, good), "unknown key ID"},
		{"expired", k1.sign(t, with("exp", now.Add(-time.Minute).Unix())), "expired"},
		{"not yet valid", k1.sign(t, with("nbf", now.Add(time.Minute).Unix())), "not valid yet"},
		{"no exp", k1.sign(t, with("exp", nil)), "required claim is missing"},
		{"wrong issuer", k1.sign(t, with("iss", "https://evil.example")), "wrong issuer"},
		{"no issuer", k1.sign(t, with("iss", nil)), "required claim is missing"},
		{"wrong audience", k1.sign(t, with("aud", []string{"other-app"})), "wrong audience"},
		{"no subject", k1.sign(t, with("sub", nil)), "no string claim"},
		{"numeric subject", k1.sign(t, with("sub", 42)), "no string claim"},
		{"control characters in subject", k1.sign(t, with("sub", "dev\n1")), "unusable username"},
		{"oversized", huge, "larger than the limit"},
		{"crit header", critTok, "critical header"},
		{"malformed header", "eyJhbGciOi." + parts[1] + "." + parts[2], "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := decide(t, b, req("", "c", tc.token))
			wantVerdict(t, res, authn.Deny)
			if !strings.Contains(res.Reason, tc.reason) {
				t.Errorf("reason %q, want it to mention %q", res.Reason, tc.reason)
			}
		})
	}

	// Within the leeway, exp and nbf are tolerated.
	wantVerdict(t, decide(t, b, req("", "c", k1.sign(t, with("exp", now.Add(-10*time.Second).Unix())))), authn.Allow)
	wantVerdict(t, decide(t, b, req("", "c", k1.sign(t, with("nbf", now.Add(10*time.Second).Unix())))), authn.Allow)
}

// TestSecurityAlgorithmConfusionStaticKey: the same attack against a
// backend with a PEM public key file. The file's exact bytes are the
// attacker's HMAC secret.
func TestSecurityAlgorithmConfusionStaticKey(t *testing.T) {
	clk := newClock()
	k := newRSA(t, "", 0)
	pemBytes := k.publicPEM(t)
	b := mustNew(t, Config{PublicKeyFiles: []string{writeFile(t, "pub.pem", pemBytes)}, Now: clk.Now, Logger: quietLogger()})
	for _, secret := range [][]byte{pemBytes, []byte(strings.TrimSpace(string(pemBytes)))} {
		tok, err := gojwt.NewWithClaims(gojwt.SigningMethodHS256, claimsAt(clk, "admin")).SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		wantVerdict(t, decide(t, b, req("", "c", tok)), authn.Deny)
	}
	wantVerdict(t, decide(t, b, req("", "c", k.sign(t, claimsAt(clk, "dev")))), authn.Allow)

	// Even when the parser were told to accept HS256, a public key never
	// serves as an HMAC secret.
	if keyFits("HS256", k.priv.Public()) {
		t.Fatal("an RSA public key fits HS256")
	}
}

func TestStaticKeys(t *testing.T) {
	clk := newClock()
	rs, ec, ed := newRSA(t, "", 1), newEC(t, ""), newEd(t, "")
	var all []byte
	for _, s := range []signer{rs, ec, ed} {
		all = append(all, s.publicPEM(t)...)
	}
	b := mustNew(t, Config{PublicKeyFiles: []string{writeFile(t, "keys.pem", all)}, Now: clk.Now, Logger: quietLogger()})
	for _, s := range []signer{rs, ec, ed} {
		t.Run(s.alg.Alg(), func(t *testing.T) {
			wantVerdict(t, decide(t, b, req("", "c", s.sign(t, claimsAt(clk, "dev")))), authn.Allow)
		})
	}
	// A key of the right type that is not configured.
	wantVerdict(t, decide(t, b, req("", "c", newEC(t, "").sign(t, claimsAt(clk, "dev")))), authn.Deny)
	// RS384 is not in the default list.
	tok, err := gojwt.NewWithClaims(gojwt.SigningMethodRS384, claimsAt(clk, "dev")).SignedString(rs.priv)
	if err != nil {
		t.Fatal(err)
	}
	wantVerdict(t, decide(t, b, req("", "c", tok)), authn.Deny)
}

func TestHMACSecret(t *testing.T) {
	clk := newClock()
	secret := []byte("0123456789abcdef0123456789abcdef")
	b := mustNew(t, Config{HMACSecretFile: writeFile(t, "secret", append(secret, '\n')), Now: clk.Now, Logger: quietLogger()})
	tok, err := gojwt.NewWithClaims(gojwt.SigningMethodHS256, claimsAt(clk, "dev")).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	wantVerdict(t, decide(t, b, req("", "c", tok)), authn.Allow)
	bad, _ := gojwt.NewWithClaims(gojwt.SigningMethodHS256, claimsAt(clk, "dev")).SignedString([]byte("another-secret-another-secret-xx"))
	wantVerdict(t, decide(t, b, req("", "c", bad)), authn.Deny)
	// An asymmetric token against an HMAC backend.
	wantVerdict(t, decide(t, b, req("", "c", newEC(t, "").sign(t, claimsAt(clk, "dev")))), authn.Deny)
}

// TestNotMine: a password that is not shaped as a JWT is left to the next
// backend, unless the backend is exclusive.
func TestNotMine(t *testing.T) {
	clk := newClock()
	k := newEC(t, "")
	cfg := Config{PublicKeyFiles: []string{writeFile(t, "k.pem", k.publicPEM(t))}, Now: clk.Now, Logger: quietLogger()}
	b := mustNew(t, cfg)
	cfg.Exclusive = true
	ex := mustNew(t, cfg)
	for _, pw := range []string{"", "hunter2", "a.b", "a.b.c.d", "a..c", "a.b.c d", "é.b.c"} {
		wantVerdict(t, decide(t, b, req("u", "c", pw)), authn.NotMine)
		wantVerdict(t, decide(t, ex, req("u", "c", pw)), authn.Deny)
	}
	// Shaped as a JWT, even without a signature: decided (and refused).
	wantVerdict(t, decide(t, b, req("u", "c", "a.b.")), authn.Deny)
}

func TestUsernameAndClaims(t *testing.T) {
	clk := newClock()
	k := newEC(t, "")
	cfg := Config{
		PublicKeyFiles: []string{writeFile(t, "k.pem", k.publicPEM(t))},
		Issuer:         testIssuer,
		Audience:       []string{"x", testAudience},
		UsernameClaim:  "mqtt.user",
		MatchUsername:  true,
		GroupsClaim:    "scope",
		PublishClaim:   "pub",
		SubscribeClaim: "sub_topics",
		Now:            clk.Now,
		Logger:         quietLogger(),
	}
	b := mustNew(t, cfg)
	claims := claimsAt(clk, "ignored")
	claims["mqtt"] = map[string]any{"user": "dev7"}
	claims["scope"] = "telemetry ops"
	claims["pub"] = []any{"devices/%u/up", "clients/%c/status", "broadcast/#"}
	claims["sub_topics"] = []any{"devices/%u/down/+", "bad/#/x"}
	claims["jti"] = "id-1"
	tok := k.sign(t, claims)

	res := decide(t, b, req("", "cl-9", tok))
	wantVerdict(t, res, authn.Allow)
	if res.Username != "dev7" {
		t.Errorf("username %q, want dev7 from the nested claim", res.Username)
	}
	if want := time.Unix(claims["exp"].(int64), 0); !res.Expires.Equal(want) {
		t.Errorf("Expires %v, want %v", res.Expires, want)
	}
	if !slices.Equal(res.Groups, []string{"telemetry", "ops"}) {
		t.Errorf("groups %q", res.Groups)
	}
	if !slices.Equal(res.Publish, []string{"devices/dev7/up", "clients/cl-9/status", "broadcast/#"}) {
		t.Errorf("publish %q", res.Publish)
	}
	if !slices.Equal(res.Subscribe, []string{"devices/dev7/down/+"}) {
		t.Errorf("subscribe %q (the invalid filter must be dropped)", res.Subscribe)
	}
	if res.Attributes["jti"] != "id-1" || res.Attributes["iss"] != testIssuer {
		t.Errorf("attributes %v", res.Attributes)
	}

	// The CONNECT username must match when sent.
	wantVerdict(t, decide(t, b, req("dev7", "c", tok)), authn.Allow)
	res = decide(t, b, req("admin", "c", tok))
	wantVerdict(t, res, authn.Deny)
	if !strings.Contains(res.Reason, "does not match") {
		t.Errorf("reason %q", res.Reason)
	}

	// A list claim of the wrong type refuses the token.
	claims["pub"] = map[string]any{"a": "b"}
	wantVerdict(t, decide(t, b, req("", "c", k.sign(t, claims))), authn.Deny)
	claims["pub"] = make([]any, maxListEntries+1)
	wantVerdict(t, decide(t, b, req("", "c", k.sign(t, claims))), authn.Deny)
}

// TestSecurityACLSubstitution: an identity (chosen by whoever obtains a
// token for it, or a client ID chosen freely by the client) holding
// wildcards or level separators would widen "devices/%u/#" to other
// devices' trees. Such filters are dropped, never widened.
func TestSecurityACLSubstitution(t *testing.T) {
	clk := newClock()
	k := newEC(t, "")
	b := mustNew(t, Config{
		PublicKeyFiles: []string{writeFile(t, "k.pem", k.publicPEM(t))},
		PublishClaim:   "pub",
		Now:            clk.Now,
		Logger:         quietLogger(),
	})
	for _, tc := range []struct {
		user, client string
		want         []string
	}{
		{"dev1", "c1", []string{"devices/dev1/#", "clients/c1"}},
		{"#", "c1", []string{"clients/c1"}},
		{"+", "c1", []string{"clients/c1"}},
		{"dev1/../dev2", "c1", []string{"clients/c1"}},
		{"dev1", "c/+", []string{"devices/dev1/#"}},
		{"dev1", "", []string{"devices/dev1/#"}},
		{"a#b", "#", nil},
	} {
		claims := claimsAt(clk, tc.user)
		claims["pub"] = []any{"devices/%u/#", "clients/%c"}
		res := decide(t, b, req("", tc.client, k.sign(t, claims)))
		wantVerdict(t, res, authn.Allow)
		if !slices.Equal(res.Publish, tc.want) {
			t.Errorf("user %q client %q: publish %q, want %q", tc.user, tc.client, res.Publish, tc.want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	k := newEC(t, "")
	pub := writeFile(t, "pub.pem", k.publicPEM(t))
	priv := writeFile(t, "priv.pem", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	short := writeFile(t, "short", []byte("too short"))
	long := writeFile(t, "long", []byte(strings.Repeat("s", 40)))
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no source", Config{}, "exactly one key source"},
		{"two sources", Config{PublicKeyFiles: []string{pub}, HMACSecretFile: long}, "exactly one key source"},
		{"alg none", Config{PublicKeyFiles: []string{pub}, Algorithms: []string{"none"}}, `"none" is not supported`},
		{"HS with public keys", Config{PublicKeyFiles: []string{pub}, Algorithms: []string{"RS256", "HS256"}}, "algorithm confusion"},
		{"RS with a secret", Config{HMACSecretFile: long, Algorithms: []string{"RS256"}}, "needs a public key"},
		{"http jwks", Config{JWKSURL: "http://idp/jwks", Issuer: "i", Audience: []string{"a"}}, "must be an https URL"},
		{"jwks without issuer and audience", Config{JWKSURL: "https://idp/jwks"}, "issuer is required"},
		{"private key file", Config{PublicKeyFiles: []string{priv}}, "private key"},
		{"short secret", Config{HMACSecretFile: short}, "at least 32"},
		{"missing file", Config{PublicKeyFiles: []string{"/nonexistent.pem"}}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "jwt: ") {
				t.Fatalf("err %v, want one starting with \"jwt: \" that mentions %q", err, tc.want)
			}
		})
	}
	// Every problem at once.
	_, err := New(Config{JWKSURL: "http://idp", Algorithms: []string{"HS256"}})
	if n := strings.Count(err.Error(), "\n") + 1; n < 4 {
		t.Errorf("%d problems reported, want every one: %v", n, err)
	}
}

// TestUnavailableUnwraps: the chain sees a backend error that wraps
// authn.ErrUnavailable and names the backend.
func TestUnavailableUnwraps(t *testing.T) {
	clk := newClock()
	k := newEC(t, "k")
	p := newIDP(t, k)
	p.setDown(true)
	cfg := jwksConfig(p, clk)
	cfg.Name = "idp"
	chain := authn.Chain{Backends: []authn.Backend{mustNew(t, cfg)}}
	res, err := chain.Authenticate(context.Background(), req("", "c", k.sign(t, claimsAt(clk, "u"))))
	if !errors.Is(err, authn.ErrUnavailable) || res.Verdict != authn.Deny || res.Backend != "idp" {
		t.Fatalf("%v %q %v", res.Verdict, res.Backend, err)
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "503") || !strings.HasPrefix(err.Error(), "jwt: idp: JWKS https://") {
		t.Errorf("error %q does not say why", err)
	}
}

func TestLooksLikeJWT(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	for s, want := range map[string]bool{
		enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(`{}`)) + "." + enc([]byte("sig")): true,
		"a.b.":   true,
		"a.b.c":  true,
		".b.c":   false,
		"a.b":    false,
		"a.b=.c": false,
		"":       false,
	} {
		if got := looksLikeJWT([]byte(s)); got != want {
			t.Errorf("looksLikeJWT(%q) = %v, want %v", s, got, want)
		}
	}
}
