package jwt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/moatmq/moat/internal/authn"
)

// TestJWKSRotation: the provider adds a key and later removes the old one;
// a token with the new kid is accepted after the refresh it triggers, and
// a token with the removed kid is refused once the set is refreshed.
func TestJWKSRotation(t *testing.T) {
	clk := newClock()
	k1, k2 := newRSA(t, "k1", 0), newEC(t, "k2")
	p := newIDP(t, k1)
	b := mustNew(t, jwksConfig(p, clk))

	res := decide(t, b, req("", "c1", k1.sign(t, claimsAt(clk, "dev1"))))
	wantVerdict(t, res, authn.Allow)
	if res.Username != "dev1" {
		t.Fatalf("username %q, want dev1", res.Username)
	}
	if got := p.hits.Load(); got != 1 {
		t.Fatalf("%d JWKS fetches after the first decision, want 1", got)
	}

	// The provider starts signing with k2.
	p.set(k1, k2)
	clk.Advance(DefaultMinRefreshInterval)
	wantVerdict(t, decide(t, b, req("", "c1", k2.sign(t, claimsAt(clk, "dev1")))), authn.Allow)
	if got := p.hits.Load(); got != 2 {
		t.Fatalf("%d fetches, want 2 (one refresh on the unknown kid)", got)
	}

	// k1 is withdrawn. Until the next refresh the cached set still holds
	// it; after the refresh interval the set is fetched again and k1 is
	// gone.
	p.set(k2)
	clk.Advance(DefaultRefreshInterval)
	res = decide(t, b, req("", "c1", k1.sign(t, claimsAt(clk, "dev1"))))
	wantVerdict(t, res, authn.Deny)
	if !strings.Contains(res.Reason, "unknown key ID") {
		t.Errorf("reason %q, want unknown key ID", res.Reason)
	}
	if got := p.hits.Load(); got != 3 {
		t.Fatalf("%d fetches, want 3 (the periodic refresh, and no second one for the unknown kid)", got)
	}
	wantVerdict(t, decide(t, b, req("", "c1", k2.sign(t, claimsAt(clk, "dev1")))), authn.Allow)
}

// TestSecurityUnknownKIDFlood: an attacker sends many tokens, each with a
// made-up kid, hoping each one makes the broker fetch the JWKS again. At
// most one fetch may happen per MinRefreshInterval.
func TestSecurityUnknownKIDFlood(t *testing.T) {
	clk := newClock()
	k1 := newEC(t, "k1")
	p := newIDP(t, k1)
	b := mustNew(t, jwksConfig(p, clk))
	wantVerdict(t, decide(t, b, req("", "c", k1.sign(t, claimsAt(clk, "u")))), authn.Allow)
	clk.Advance(DefaultMinRefreshInterval)

	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			bogus := signer{kid: fmt.Sprintf("bogus-%d", i), alg: k1.alg, priv: k1.priv}
			res, err := b.Authenticate(context.Background(), req("", "c", bogus.sign(t, claimsAt(clk, "u"))))
			if err != nil || res.Verdict != authn.Deny {
				t.Errorf("bogus kid: %v %q err=%v, want deny", res.Verdict, res.Reason, err)
			}
		})
	}
	wg.Wait()
	if got := p.hits.Load(); got != 2 {
		t.Fatalf("%d JWKS fetches for 200 unknown kids, want 2 (first use + one refresh)", got)
	}
}

// TestJWKSUnavailable: with no keys, an unreachable provider fails closed
// (an error wrapping authn.ErrUnavailable); with cached keys a known kid is
// decided from the cache until MaxStale.
func TestJWKSUnavailable(t *testing.T) {
	clk := newClock()
	k1 := newRSA(t, "k1", 1)
	p := newIDP(t, k1)
	p.setDown(true)
	b := mustNew(t, jwksConfig(p, clk))
	tok := func() string { return k1.sign(t, claimsAt(clk, "dev")) }

	_, err := b.Authenticate(context.Background(), req("", "c", tok()))
	if !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("provider down, no keys: err %v, want ErrUnavailable", err)
	}
	// Within MinRefreshInterval no new fetch is tried; still unavailable.
	_, err = b.Authenticate(context.Background(), req("", "c", tok()))
	if !errors.Is(err, authn.ErrUnavailable) || p.hits.Load() != 1 {
		t.Fatalf("second try: err %v after %d fetches, want ErrUnavailable after 1", err, p.hits.Load())
	}

	p.setDown(false)
	clk.Advance(DefaultMinRefreshInterval)
	wantVerdict(t, decide(t, b, req("", "c", tok())), authn.Allow)

	// Down again, keys due for refresh: the cache decides.
	p.setDown(true)
	clk.Advance(DefaultRefreshInterval)
	wantVerdict(t, decide(t, b, req("", "c", tok())), authn.Allow)

	// An unknown kid cannot be ruled on while the provider is down.
	clk.Advance(DefaultMinRefreshInterval)
	other := newEC(t, "k9")
	if _, err := b.Authenticate(context.Background(), req("", "c", other.sign(t, claimsAt(clk, "dev")))); !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("unknown kid, provider down: err %v, want ErrUnavailable", err)
	}

	// Past MaxStale the cache is no longer trusted.
	clk.Advance(DefaultMaxStale)
	if _, err := b.Authenticate(context.Background(), req("", "c", tok())); !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("after MaxStale: err %v, want ErrUnavailable", err)
	}
}

// TestJWKSUntrustedServer: without the provider's CA the fetch fails (TLS
// verification) and the decision fails closed.
func TestJWKSUntrustedServer(t *testing.T) {
	clk := newClock()
	k1 := newEC(t, "k1")
	p := newIDP(t, k1)
	cfg := jwksConfig(p, clk)
	cfg.CAFile = ""
	b := mustNew(t, cfg)
	if _, err := b.Authenticate(context.Background(), req("", "c", k1.sign(t, claimsAt(clk, "u")))); !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("untrusted JWKS server: err %v, want ErrUnavailable", err)
	}
	if err := b.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Refresh: %v, want a certificate error", err)
	}
}

// TestJWKSRefreshShared: concurrent deciders on a cold cache share one fetch.
func TestJWKSRefreshShared(t *testing.T) {
	clk := newClock()
	k1 := newEd(t, "k1")
	p := newIDP(t, k1)
	b := mustNew(t, jwksConfig(p, clk))
	tok := k1.sign(t, claimsAt(clk, "u"))
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			res, err := b.Authenticate(context.Background(), req("", "c", tok))
			if err != nil || res.Verdict != authn.Allow {
				t.Errorf("%v %q %v", res.Verdict, res.Reason, err)
			}
		})
	}
	wg.Wait()
	if got := p.hits.Load(); got != 1 {
		t.Fatalf("%d fetches for 20 concurrent first decisions, want 1", got)
	}
}
