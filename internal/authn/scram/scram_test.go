package scram

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/moatmq/moat/internal/authn"
)

// mapLookup is a CredentialLookup over a map.
type mapLookup map[key]Credential

func (m mapLookup) LookupCredential(_ context.Context, user string, mech Mechanism) (Credential, error) {
	c, ok := m[key{user, mech}]
	if !ok {
		return Credential{}, ErrUnknownUser
	}
	return c, nil
}

// errLookup fails every lookup, as a credential store that is down.
type errLookup struct{}

func (errLookup) LookupCredential(context.Context, string, Mechanism) (Credential, error) {
	return Credential{}, errors.New("store unreachable")
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The SCRAM-SHA-256 exchange of RFC 7677 §3.
const (
	rfcClientNonce = "rOprNGfwEbeRWgbNEkqO"
	rfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	rfcSalt        = "W22ZaJ0SNY7soEsUEjb6gQ=="
	rfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
	rfcServerFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	rfcClientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	rfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
)

// rfcCredential is the stored credential of user "user", password
// "pencil" with the RFC's salt.
func rfcCredential(t *testing.T) Credential {
	t.Helper()
	c, err := NewCredential(SHA256, []byte("pencil"), 4096, bytes.NewReader(mustB64(t, rfcSalt)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newTestServer(t *testing.T, lookup CredentialLookup, cfg ServerConfig) *Server {
	t.Helper()
	cfg.Lookup = lookup
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRFC7677Vector reproduces RFC 7677's SCRAM-SHA-256 example byte for
// byte, on both sides, with the RFC's nonces injected.
func TestRFC7677Vector(t *testing.T) {
	cred := rfcCredential(t)
	srv := newTestServer(t, mapLookup{{"user", SHA256}: cred}, ServerConfig{Rand: strings.NewReader(rfcServerNonce)})
	srv.nonceLen = len(rfcServerNonce)
	cl, err := NewClient(SHA256, "user", []byte("pencil"), ClientConfig{Rand: strings.NewReader(rfcClientNonce)})
	if err != nil {
		t.Fatal(err)
	}
	cl.nonceLen = len(rfcClientNonce)

	conv, err := srv.Begin("SCRAM-SHA-256")
	if err != nil {
		t.Fatal(err)
	}
	cf, err := cl.First()
	if err != nil || string(cf) != rfcClientFirst {
		t.Fatalf("client-first %q, %v; want %q", cf, err, rfcClientFirst)
	}
	sf, done, _, err := conv.Step(context.Background(), cf)
	if err != nil || done || string(sf) != rfcServerFirst {
		t.Fatalf("server-first %q, done %v, %v; want %q", sf, done, err, rfcServerFirst)
	}
	cfin, err := cl.Final(sf)
	if err != nil || string(cfin) != rfcClientFinal {
		t.Fatalf("client-final %q, %v; want %q", cfin, err, rfcClientFinal)
	}
	sfin, done, res, err := conv.Step(context.Background(), cfin)
	if err != nil || !done || string(sfin) != rfcServerFinal {
		t.Fatalf("server-final %q, done %v, %v; want %q", sfin, done, err, rfcServerFinal)
	}
	if res.Verdict != authn.Allow || res.Username != "user" || res.Backend != "scram" {
		t.Fatalf("result %+v", res)
	}
	if err := cl.Verify(sfin); err != nil {
		t.Fatalf("client refuses the RFC's server-final: %v", err)
	}
	// The server also accepts the RFC's client messages verbatim.
	srv2 := newTestServer(t, mapLookup{{"user", SHA256}: cred}, ServerConfig{Rand: strings.NewReader(rfcServerNonce)})
	srv2.nonceLen = len(rfcServerNonce)
	conv2, _ := srv2.Begin("SCRAM-SHA-256")
	if _, _, _, err := conv2.Step(context.Background(), []byte(rfcClientFirst)); err != nil {
		t.Fatal(err)
	}
	if out, done, _, err := conv2.Step(context.Background(), []byte(rfcClientFinal)); err != nil || !done || string(out) != rfcServerFinal {
		t.Fatalf("server on the RFC's messages: %q %v %v", out, done, err)
	}
}

// exchange runs a full conversation between cl and srv and returns the
// server's result and the first error of either side.
func exchange(t *testing.T, srv *Server, method string, cl *Client) (authn.Result, error) {
	t.Helper()
	ctx := context.Background()
	conv, err := srv.Begin(method)
	if err != nil {
		return authn.Result{}, err
	}
	cf, err := cl.First()
	if err != nil {
		t.Fatal(err)
	}
	sf, _, res, err := conv.Step(ctx, cf)
	if err != nil {
		return res, err
	}
	cfin, err := cl.Final(sf)
	if err != nil {
		return res, err
	}
	sfin, done, res, err := conv.Step(ctx, cfin)
	if err != nil {
		return res, err
	}
	if !done {
		t.Fatal("not done after client-final")
	}
	return res, cl.Verify(sfin)
}

func TestRoundTrip(t *testing.T) {
	for _, m := range Mechanisms {
		t.Run(m.String(), func(t *testing.T) {
			cred, err := NewCredential(m, []byte("correct horse"), 5000, nil)
			if err != nil {
				t.Fatal(err)
			}
			srv := newTestServer(t, mapLookup{{"a,b=c", m}: cred}, ServerConfig{})
			cl, err := NewClient(m, "a,b=c", []byte("correct horse"), ClientConfig{})
			if err != nil {
				t.Fatal(err)
			}
			res, err := exchange(t, srv, m.String(), cl)
			if err != nil || res.Verdict != authn.Allow || res.Username != "a,b=c" {
				t.Fatalf("%+v, %v", res, err)
			}
			// The same Client authenticates again (re-authentication).
			conv, _ := srv.BeginReauth(m.String(), "a,b=c")
			cf, _ := cl.First()
			if !strings.Contains(string(cf), "n=a=2Cb=3Dc,") {
				t.Fatalf("username not escaped: %q", cf)
			}
			sf, _, _, err := conv.Step(context.Background(), cf)
			if err != nil {
				t.Fatal(err)
			}
			cfin, _ := cl.Final(sf)
			sfin, done, res, err := conv.Step(context.Background(), cfin)
			if err != nil || !done || res.Verdict != authn.Allow {
				t.Fatal(err)
			}
			if err := cl.Verify(sfin); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSecurityUnknownUserLikeWrongPassword: an attacker probes which
// usernames exist by comparing the server's answers for a known user with
// a wrong password and for a name that does not exist. Both must get a
// server-first-message of the same shape (a stable salt and the same
// iteration count) and fail at the proof with the same error.
func TestSecurityUnknownUserLikeWrongPassword(t *testing.T) {
	cred, err := NewCredential(SHA512, []byte("right"), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var unknown atomic.Int32
	srv := newTestServer(t, mapLookup{{"alice", SHA512}: cred}, ServerConfig{OnUnknownUser: func(Mechanism) { unknown.Add(1) }})
	try := func(user, pw string) (string, authn.Result, error) {
		cl, err := NewClient(SHA512, user, []byte(pw), ClientConfig{})
		if err != nil {
			t.Fatal(err)
		}
		conv, _ := srv.Begin("SCRAM-SHA-512")
		cf, _ := cl.First()
		sf, _, _, err := conv.Step(context.Background(), cf)
		if err != nil {
			t.Fatalf("%s: the first step already fails: %v", user, err)
		}
		cfin, err := cl.Final(sf)
		if err != nil {
			t.Fatal(err)
		}
		out, done, res, err := conv.Step(context.Background(), cfin)
		if out != nil || done {
			t.Fatalf("%s: out %q done %v", user, out, done)
		}
		salt := strings.Split(string(sf), ",")[1:]
		return strings.Join(salt, ","), res, err
	}
	wrongShape, wrongRes, wrongErr := try("alice", "wrong")
	s1, unkRes, unkErr := try("mallory", "whatever")
	s2, _, _ := try("mallory", "other")
	if !errors.Is(wrongErr, ErrAuthFailed) || !errors.Is(unkErr, ErrAuthFailed) {
		t.Fatalf("errors %v / %v, want ErrAuthFailed for both", wrongErr, unkErr)
	}
	if strings.ReplaceAll(wrongErr.Error(), "alice", "X") != strings.ReplaceAll(unkErr.Error(), "mallory", "X") {
		t.Fatalf("errors differ: %q vs %q", wrongErr, unkErr)
	}
	if s1 != s2 {
		t.Fatalf("the fake salt changes between attempts: %q vs %q", s1, s2)
	}
	if len(s1) != len(wrongShape) || !strings.HasSuffix(s1, ",i=4096") {
		t.Fatalf("fake %q does not look like real %q", s1, wrongShape)
	}
	if unknown.Load() != 2 {
		t.Fatalf("OnUnknownUser called %d times, want 2", unknown.Load())
	}
	if wrongRes.Verdict != authn.Deny || unkRes.Verdict != authn.Deny ||
		!strings.Contains(wrongRes.Reason, "wrong password") || !strings.Contains(unkRes.Reason, "unknown user") {
		t.Fatalf("log reasons %q / %q", wrongRes.Reason, unkRes.Reason)
	}
}

// TestSecurityWrongPassword: a client with the wrong password is refused.
func TestSecurityWrongPassword(t *testing.T) {
	cred := rfcCredential(t)
	srv := newTestServer(t, mapLookup{{"user", SHA256}: cred}, ServerConfig{})
	cl, _ := NewClient(SHA256, "user", []byte("pencil2"), ClientConfig{})
	res, err := exchange(t, srv, "SCRAM-SHA-256", cl)
	if !errors.Is(err, ErrAuthFailed) || res.Verdict != authn.Deny {
		t.Fatalf("%+v %v", res, err)
	}
}

// TestSecurityForgedServerSignature: a server that does not know the
// ServerKey (it stole only the StoredKey, or it is an impostor that
// accepts anyone) answers with a made-up signature; the client refuses.
func TestSecurityForgedServerSignature(t *testing.T) {
	cred := rfcCredential(t)
	srv := newTestServer(t, mapLookup{{"user", SHA256}: cred}, ServerConfig{})
	for name, tamper := range map[string]func([]byte) []byte{
		"flipped-bit": func(b []byte) []byte {
			v := mustB64(t, string(b[2:]))
			v[0] ^= 1
			return []byte("v=" + base64.StdEncoding.EncodeToString(v))
		},
		"error":    func([]byte) []byte { return []byte("e=other-error") },
		"empty":    func([]byte) []byte { return nil },
		"short":    func(b []byte) []byte { return b[:len(b)-4] },
		"v-of-e":   func([]byte) []byte { return []byte("v=") },
		"trailing": func(b []byte) []byte { return append(b, ",m=x"...) },
	} {
		t.Run(name, func(t *testing.T) {
			cl, _ := NewClient(SHA256, "user", []byte("pencil"), ClientConfig{})
			conv, _ := srv.Begin("SCRAM-SHA-256")
			cf, _ := cl.First()
			sf, _, _, _ := conv.Step(context.Background(), cf)
			cfin, _ := cl.Final(sf)
			sfin, _, _, err := conv.Step(context.Background(), cfin)
			if err != nil {
				t.Fatal(err)
			}
			if err := cl.Verify(tamper(sfin)); err == nil {
				t.Fatal("client accepted a forged server-final-message")
			}
		})
	}
	t.Run("no-exchange", func(t *testing.T) {
		// A server that answers CONNECT with success at once never saw
		// the password: Verify before Final must fail.
		cl, _ := NewClient(SHA256, "user", []byte("pencil"), ClientConfig{})
		cl.First()
		if err := cl.Verify([]byte(rfcServerFinal)); !errors.Is(err, ErrServerProof) {
			t.Fatalf("Verify without an exchange = %v", err)
		}
	})
}

// TestSecurityLowIterations: a server (or a man in the middle) offering a
// low iteration count would get a proof cheap to attack offline; the
// client refuses to compute it, and refuses huge counts that would make
// it spin.
func TestSecurityLowIterations(t *testing.T) {
	cl, _ := NewClient(SHA256, "user", []byte("pencil"), ClientConfig{Rand: strings.NewReader(rfcClientNonce)})
	cl.nonceLen = len(rfcClientNonce)
	for _, it := range []string{"1", "4095", "1000001"} {
		cl.First()
		cl.cfg.Rand = strings.NewReader(rfcClientNonce)
		sf := "r=" + rfcClientNonce + "xyz,s=" + rfcSalt + ",i=" + it
		if _, err := cl.Final([]byte(sf)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("i=%s: %v", it, err)
		}
	}
	cl.First()
	if _, err := cl.Final([]byte("r=someoneelse,s=" + rfcSalt + ",i=4096")); !errors.Is(err, ErrMalformed) {
		t.Fatalf("foreign nonce accepted: %v", err)
	}
}

func TestOutOfOrder(t *testing.T) {
	cred := rfcCredential(t)
	srv := newTestServer(t, mapLookup{{"user", SHA256}: cred}, ServerConfig{})
	ctx := context.Background()
	t.Run("final-first", func(t *testing.T) {
		conv, _ := srv.Begin("SCRAM-SHA-256")
		if _, _, _, err := conv.Step(ctx, []byte(rfcClientFinal)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("client-final as first message: %v", err)
		}
		if _, _, _, err := conv.Step(ctx, []byte(rfcClientFirst)); !errors.Is(err, ErrOutOfOrder) {
			t.Fatalf("step after failure: %v", err)
		}
	})
	t.Run("first-twice", func(t *testing.T) {
		conv, _ := srv.Begin("SCRAM-SHA-256")
		if _, _, _, err := conv.Step(ctx, []byte(rfcClientFirst)); err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := conv.Step(ctx, []byte(rfcClientFirst)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("client-first twice: %v", err)
		}
	})
	t.Run("after-done", func(t *testing.T) {
		cl, _ := NewClient(SHA256, "user", []byte("pencil"), ClientConfig{})
		conv, _ := srv.Begin("SCRAM-SHA-256")
		cf, _ := cl.First()
		sf, _, _, _ := conv.Step(ctx, cf)
		cfin, _ := cl.Final(sf)
		if _, done, _, err := conv.Step(ctx, cfin); !done || err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := conv.Step(ctx, cfin); !errors.Is(err, ErrOutOfOrder) {
			t.Fatalf("replayed client-final: %v", err)
		}
	})
	t.Run("client", func(t *testing.T) {
		cl, _ := NewClient(SHA256, "user", []byte("pencil"), ClientConfig{})
		if _, err := cl.Final([]byte(rfcServerFirst)); !errors.Is(err, ErrOutOfOrder) {
			t.Fatalf("Final before First: %v", err)
		}
	})
	t.Run("replayed-final-other-nonce", func(t *testing.T) {
		// A recorded client-final replayed into a new conversation fails:
		// the server nonce differs.
		conv, _ := srv.Begin("SCRAM-SHA-256")
		conv.Step(ctx, []byte(rfcClientFirst))
		if _, _, _, err := conv.Step(ctx, []byte(rfcClientFinal)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("replay: %v", err)
		}
	})
}

func TestReauthOtherUser(t *testing.T) {
	cred := rfcCredential(t)
	srv := newTestServer(t, mapLookup{{"user", SHA256}: cred}, ServerConfig{})
	conv, _ := srv.BeginReauth("SCRAM-SHA-256", "someone-else")
	if _, _, res, err := conv.Step(context.Background(), []byte(rfcClientFirst)); !errors.Is(err, ErrUserChanged) || res.Verdict != authn.Deny {
		t.Fatalf("%v %+v", err, res)
	}
}

func TestMechanismsAndFailures(t *testing.T) {
	srv := newTestServer(t, mapLookup{}, ServerConfig{})
	for _, m := range []string{"SCRAM-SHA-1", "scram-sha-256", "SCRAM-SHA-256-PLUS", ""} {
		if _, err := srv.Begin(m); !errors.Is(err, ErrUnknownMechanism) {
			t.Errorf("Begin(%q) = %v", m, err)
		}
	}
	down := newTestServer(t, errLookup{}, ServerConfig{})
	conv, _ := down.Begin("SCRAM-SHA-256")
	if _, _, res, err := conv.Step(context.Background(), []byte(rfcClientFirst)); !errors.Is(err, authn.ErrUnavailable) || res.Verdict != authn.Deny {
		t.Fatalf("store down: %v %+v", err, res)
	}
	if _, err := NewServer(ServerConfig{FakeSecret: []byte("short")}); err == nil || !strings.Contains(err.Error(), "Lookup") || !strings.Contains(err.Error(), "FakeSecret") {
		t.Fatalf("NewServer = %v, want both problems", err)
	}
}

// TestMalformed feeds the server client messages that break the grammar
// or ask for what Moat does not support.
func TestMalformed(t *testing.T) {
	cred := rfcCredential(t)
	srv := newTestServer(t, mapLookup{{"user", SHA256}: cred}, ServerConfig{Rand: strings.NewReader(strings.Repeat(rfcServerNonce, 100))})
	srv.nonceLen = len(rfcServerNonce)
	long := strings.Repeat("a", MaxMessage)
	firsts := map[string]string{
		"empty":            "",
		"no-gs2":           "n=user,r=abc",
		"channel-binding":  "p=tls-unique,,n=user,r=abc",
		"authzid":          "n,a=admin,n=user,r=abc",
		"bad-flag":         "x,,n=user,r=abc",
		"mandatory-ext":    "n,,m=ext,n=user,r=abc",
		"bad-escape":       "n,,n=us=er,r=abc",
		"bad-escape-2":     "n,,n=us=2Der,r=abc",
		"empty-user":       "n,,n=,r=abc",
		"no-nonce":         "n,,n=user",
		"empty-nonce":      "n,,n=user,r=",
		"nonce-space":      "n,,n=user,r=a b",
		"order":            "n,,r=abc,n=user",
		"repeat":           "n,,n=user,r=abc,r=def",
		"not-utf8":         "n,,n=\xff,r=abc",
		"control-user":     "n,,n=us\x01er,r=abc",
		"oversized":        "n,,n=user,r=" + long,
		"long-user":        "n,,n=" + strings.Repeat("u", MaxUsername+1) + ",r=abc",
		"trailing-comma":   "n,,n=user,r=abc,",
		"attribute-no-val": "n,,n=user,r=abc,x",
	}
	for name, msg := range firsts {
		t.Run("first/"+name, func(t *testing.T) {
			conv, _ := srv.Begin("SCRAM-SHA-256")
			if _, _, res, err := conv.Step(context.Background(), []byte(msg)); !errors.Is(err, ErrMalformed) || res.Verdict != authn.Deny {
				t.Fatalf("%q: %v", msg, err)
			}
		})
	}
	t.Run("first/y-flag-and-extension-accepted", func(t *testing.T) {
		conv, _ := srv.Begin("SCRAM-SHA-256")
		if _, _, _, err := conv.Step(context.Background(), []byte("y,,n=user,r=abc,x=ext")); err != nil {
			t.Fatal(err)
		}
	})
	nonce := rfcClientNonce + rfcServerNonce
	proof := "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	finals := map[string]string{
		"empty":          "",
		"cbind-mismatch": "c=eSws,r=" + nonce + ",p=" + proof,
		"cbind-p":        "c=cD10bHMtdW5pcXVlLCw=,r=" + nonce + ",p=" + proof,
		"cbind-base64":   "c=biws=,r=" + nonce + ",p=" + proof,
		"nonce":          "c=biws,r=" + rfcClientNonce + ",p=" + proof,
		"no-proof":       "c=biws,r=" + nonce,
		"short-proof":    "c=biws,r=" + nonce + ",p=AAAA",
		"proof-not-last": "c=biws,r=" + nonce + ",p=" + proof + ",x=1",
		"noncanonical":   "c=biws,r=" + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVR=",
		"oversized":      "c=biws,r=" + nonce + ",x=" + long + ",p=" + proof,
		"mandatory-ext":  "c=biws,r=" + nonce + ",m=1,p=" + proof,
	}
	for name, msg := range finals {
		t.Run("final/"+name, func(t *testing.T) {
			conv, _ := srv.Begin("SCRAM-SHA-256")
			if _, _, _, err := conv.Step(context.Background(), []byte(rfcClientFirst)); err != nil {
				t.Fatal(err)
			}
			if _, done, res, err := conv.Step(context.Background(), []byte(msg)); err == nil || done || res.Verdict != authn.Deny {
				t.Fatalf("%q accepted", msg)
			}
		})
	}
}

func TestPreparePassword(t *testing.T) {
	for pw, ok := range map[string]bool{
		"pencil": true, "with space ~!": true, "": false, "tab\there": false, "del\x7f": false,
		"caf\u00e9": false, "I\u00adX": false, "\u2168": false, strings.Repeat("p", MaxPassword+1): false,
	} {
		_, err := PreparePassword([]byte(pw))
		if (err == nil) != ok {
			t.Errorf("PreparePassword(%q) = %v", pw, err)
		}
		if _, err := NewCredential(SHA256, []byte(pw), 0, nil); (err == nil) != ok {
			t.Errorf("NewCredential(%q) = %v", pw, err)
		}
		if _, err := NewClient(SHA256, "u", []byte(pw), ClientConfig{}); (err == nil) != ok {
			t.Errorf("NewClient(%q) = %v", pw, err)
		}
	}
	_, err := PreparePassword([]byte("caf\u00e9"))
	if err == nil || !strings.Contains(err.Error(), "ASCII") {
		t.Fatalf("non-ASCII refusal does not say why: %v", err)
	}
}

func TestCredentialRedacted(t *testing.T) {
	c := rfcCredential(t)
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
		if strings.Contains(s, base64.StdEncoding.EncodeToString(c.StoredKey)) || strings.Contains(s, fmt.Sprint(c.StoredKey[:4])) || !strings.Contains(s, "REDACTED") {
			t.Fatalf("credential printed as %q", s)
		}
	}
	if _, err := NewCredential(SHA256, []byte("pencil"), 4095, nil); err == nil {
		t.Fatal("4095 iterations accepted")
	}
}

func TestClientRedacted(t *testing.T) {
	cl, _ := NewClient(SHA256, "user", []byte("pencil"), ClientConfig{})
	if s := fmt.Sprintf("%v %+v %#v %s", cl, cl, cl, cl); strings.Contains(s, "pencil") {
		t.Fatalf("password printed: %s", s)
	}
}
