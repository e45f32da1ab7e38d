package jwt

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/MicahParks/jwkset"
	gojwt "github.com/golang-jwt/jwt/v5"

	"github.com/moatmq/moat/internal/authn"
)

// signer is a test key with its key ID and algorithm.
type signer struct {
	kid  string
	alg  gojwt.SigningMethod
	priv crypto.Signer
}

var (
	rsaOnce sync.Once
	rsaKeys []*rsa.PrivateKey
)

// rsaKey returns one of a few RSA keys generated once per test binary.
func rsaKey(t *testing.T, i int) *rsa.PrivateKey {
	t.Helper()
	rsaOnce.Do(func() {
		for range 3 {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			rsaKeys = append(rsaKeys, k)
		}
	})
	return rsaKeys[i]
}

func newRSA(t *testing.T, kid string, i int) signer {
	return signer{kid: kid, alg: gojwt.SigningMethodRS256, priv: rsaKey(t, i)}
}

func newEC(t *testing.T, kid string) signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{kid: kid, alg: gojwt.SigningMethodES256, priv: k}
}

func newEd(t *testing.T, kid string) signer {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{kid: kid, alg: gojwt.SigningMethodEdDSA, priv: k}
}

func (s signer) sign(t *testing.T, claims gojwt.MapClaims) string {
	t.Helper()
	tok := gojwt.NewWithClaims(s.alg, claims)
	if s.kid != "" {
		tok.Header["kid"] = s.kid
	}
	out, err := tok.SignedString(s.priv)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (s signer) publicPEM(t *testing.T) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(s.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// idp is an identity provider's JWKS endpoint served over HTTPS, whose key
// set the test rotates and which it can take down.
type idp struct {
	srv    *httptest.Server
	caFile string
	hits   atomic.Int64
	mu     sync.Mutex
	keys   []signer
	down   bool
}

func newIDP(t *testing.T, keys ...signer) *idp {
	t.Helper()
	p := &idp{keys: keys}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes refused on purpose
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	p.caFile = writeFile(t, "idp-ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}))
	return p
}

func (p *idp) url() string { return p.srv.URL + "/.well-known/jwks.json" }

func (p *idp) set(keys ...signer) {
	p.mu.Lock()
	p.keys = keys
	p.mu.Unlock()
}

func (p *idp) setDown(down bool) {
	p.mu.Lock()
	p.down = down
	p.mu.Unlock()
}

func (p *idp) serve(w http.ResponseWriter, r *http.Request) {
	p.hits.Add(1)
	p.mu.Lock()
	keys, down := p.keys, p.down
	p.mu.Unlock()
	if down {
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
		return
	}
	var doc jwkset.JWKSMarshal
	for _, k := range keys {
		j, err := jwkset.NewJWKFromKey(k.priv.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{
			KID: k.kid, ALG: jwkset.ALG(k.alg.Alg()), USE: jwkset.UseSig,
		}})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		doc.Keys = append(doc.Keys, j.Marshal())
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(doc)
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

const (
	testIssuer   = "https://idp.example"
	testAudience = "moat"
)

// claimsAt returns valid claims for user at the clock's time.
func claimsAt(c *testutil.Clock, user string) gojwt.MapClaims {
	now := c.Now()
	return gojwt.MapClaims{
		"sub": user,
		"iss": testIssuer,
		"aud": testAudience,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(10 * time.Minute).Unix(),
	}
}

func jwksConfig(p *idp, c *testutil.Clock) Config {
	return Config{
		JWKSURL:  p.url(),
		CAFile:   p.caFile,
		Issuer:   testIssuer,
		Audience: []string{testAudience},
		Now:      c.Now,
		Logger:   quietLogger(),
	}
}

func mustNew(t *testing.T, cfg Config) *Backend {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func req(user, clientID, token string) *authn.Request {
	return &authn.Request{Username: user, ClientID: clientID, Password: authn.NewPassword([]byte(token)), HasPassword: true}
}

// decide authenticates and fails the test on an error.
func decide(t *testing.T, b *Backend, r *authn.Request) authn.Result {
	t.Helper()
	res, err := b.Authenticate(context.Background(), r)
	if err != nil {
		t.Fatalf("Authenticate: unexpected error %v", err)
	}
	return res
}

func wantVerdict(t *testing.T, res authn.Result, v authn.Verdict) {
	t.Helper()
	if res.Verdict != v {
		t.Fatalf("verdict %v (%s), want %v", res.Verdict, res.Reason, v)
	}
}

// newClock returns a manual clock at the tests' epoch.
func newClock() *testutil.Clock {
	return testutil.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
}
