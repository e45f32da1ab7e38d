package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/authn/scram"
	"github.com/moatmq/moat/internal/authn/scram/scramtest"
	"github.com/moatmq/moat/internal/packet"
)

type mapCreds map[string]scram.Credential

func (m mapCreds) LookupCredential(_ context.Context, user string, mech scram.Mechanism) (scram.Credential, error) {
	c, ok := m[user+" "+mech.String()]
	if !ok {
		return scram.Credential{}, scram.ErrUnknownUser
	}
	return c, nil
}

func scramServer(t *testing.T, users ...string) *scram.Server {
	t.Helper()
	m := mapCreds{}
	for _, u := range users {
		user, pw, _ := strings.Cut(u, ":")
		for _, mech := range scram.Mechanisms {
			c, err := scram.NewCredential(mech, []byte(pw), 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			m[user+" "+mech.String()] = c
		}
	}
	s, err := scram.NewServer(scram.ServerConfig{Lookup: m})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestSCRAM(t *testing.T) {
	srv := scramServer(t, "alice:correct horse")
	for _, mech := range []string{"SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			ln := listen(t)
			errc := (&scramtest.Peer{Server: srv}).Serve(ln)
			c := dial(t, Config{Servers: []string{ln.Addr().String()}, Auth: SCRAM(mech, "alice", NewSecret([]byte("correct horse")))})
			for range 2 {
				if err := c.Reauthenticate(ctxT(t)); err != nil {
					t.Fatalf("Reauthenticate: %v", err)
				}
			}
			if err := c.Disconnect(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("server: %v", err)
			}
		})
	}
}

func TestSCRAMRefused(t *testing.T) {
	srv := scramServer(t, "alice:correct horse")
	for name, tc := range map[string]struct {
		auth *SCRAMAuthenticator
		code packet.ReasonCode
	}{
		"wrong-password": {SCRAM("SCRAM-SHA-256", "alice", NewSecret([]byte("wrong"))), packet.NotAuthorized},
		"unknown-user":   {SCRAM("SCRAM-SHA-512", "mallory", NewSecret([]byte("x"))), packet.NotAuthorized},
		"bad-method":     {SCRAM("SCRAM-SHA-1", "alice", NewSecret([]byte("x"))), 0},
	} {
		t.Run(name, func(t *testing.T) {
			ln := listen(t)
			errc := (&scramtest.Peer{Server: srv}).Serve(ln)
			_, err := Dial(ctxT(t), Config{Servers: []string{ln.Addr().String()}, Auth: tc.auth})
			var re *ReasonError
			if tc.code == 0 {
				// The client refuses an unknown mechanism itself.
				if err == nil || !strings.Contains(err.Error(), "SCRAM-SHA-1") {
					t.Fatalf("Dial = %v", err)
				}
				ln.Close()
			} else if !errors.As(err, &re) || re.Code != tc.code {
				t.Fatalf("Dial = %v, want %s", err, tc.code)
			}
			<-errc
		})
	}
	t.Run("non-ascii-password", func(t *testing.T) {
		ln := listen(t)
		errc := (&scramtest.Peer{Server: srv}).Serve(ln)
		_, err := Dial(ctxT(t), Config{Servers: []string{ln.Addr().String()}, Auth: SCRAM("SCRAM-SHA-256", "alice", NewSecret([]byte("pässword")))})
		if err == nil || !strings.Contains(err.Error(), "ASCII") {
			t.Fatalf("Dial = %v, want the non-ASCII refusal", err)
		}
		<-errc
	})
}

// The tests below run the client against scramtest.Peer, which drives
// internal/authn/scram's server side as the broker must.

// TestSecuritySCRAMServerMustProve: an impostor broker (or a man in the
// middle) that does not hold the user's ServerKey either forges the
// server-final-message or accepts the client without any exchange; the
// client must refuse both instead of talking to it.
func TestSecuritySCRAMServerMustProve(t *testing.T) {
	srv := scramServer(t, "alice:correct horse")
	for name, sp := range map[string]*scramtest.Peer{
		"forged-signature": {Server: srv, Tamper: func(b []byte) []byte {
			return []byte("v=" + strings.Repeat("A", len(b)-3) + "=")
		}},
		"no-signature": {Server: srv, Tamper: func([]byte) []byte { return nil }},
		"server-error": {Server: srv, Tamper: func([]byte) []byte { return []byte("e=other-error") }},
		"no-exchange":  {Server: srv, Skip: true},
	} {
		t.Run(name, func(t *testing.T) {
			ln := listen(t)
			errc := sp.Serve(ln)
			_, err := Dial(ctxT(t), Config{Servers: []string{ln.Addr().String()}, Auth: SCRAM("SCRAM-SHA-256", "alice", NewSecret([]byte("correct horse")))})
			if err == nil || !strings.Contains(err.Error(), "authentication") {
				t.Fatalf("Dial = %v, want the client's refusal", err)
			}
			<-errc
		})
	}
}

// TestSecuritySCRAMReauthForged: after a good CONNECT, a server that
// cannot prove itself during re-authentication fails Reauthenticate and
// loses the connection.
func TestSecuritySCRAMReauthForged(t *testing.T) {
	srv := scramServer(t, "alice:correct horse")
	ln := listen(t)
	sp := &scramtest.Peer{Server: srv, ReauthOnly: true, Tamper: func(b []byte) []byte {
		b = append([]byte(nil), b...)
		b[3] ^= 1
		return b
	}}
	errc := sp.Serve(ln)
	c := dial(t, Config{Servers: []string{ln.Addr().String()}, Auth: SCRAM("SCRAM-SHA-512", "alice", NewSecret([]byte("correct horse")))})
	if err := c.Reauthenticate(ctxT(t)); err == nil {
		t.Fatal("re-authentication with a forged server signature succeeded")
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection kept after a forged server signature")
	}
	<-errc
}

// TestSecuritySCRAMNoPasswordInConnect: a program that sets both
// Password and SCRAM would send the password in clear in CONNECT, which
// SCRAM exists to avoid; Dial refuses before connecting.
func TestSecuritySCRAMNoPasswordInConnect(t *testing.T) {
	pw := NewSecret([]byte("correct horse"))
	_, err := Dial(ctxT(t), Config{Servers: []string{"127.0.0.1:1"}, Username: "alice", Password: pw, Auth: SCRAM("SCRAM-SHA-256", "alice", pw)})
	if err == nil || !strings.Contains(err.Error(), "Password is set together with SCRAM") {
		t.Fatalf("Dial = %v", err)
	}
}

// TestSCRAMConcurrentReauthenticate: a second Reauthenticate while one
// runs must not restart the SCRAM exchange under it (the server-first
// message would no longer match the client's nonce and the connection
// would fail); it is refused instead.
func TestSCRAMConcurrentReauthenticate(t *testing.T) {
	srv := scramServer(t, "alice:correct horse")
	ln := listen(t)
	errc := (&scramtest.Peer{Server: srv}).Serve(ln)
	c := dial(t, Config{Servers: []string{ln.Addr().String()}, Auth: SCRAM("SCRAM-SHA-256", "alice", NewSecret([]byte("correct horse")))})
	for range 20 {
		res := make(chan error, 2)
		for range 2 {
			go func() { res <- c.Reauthenticate(ctxT(t)) }()
		}
		ok := 0
		for range 2 {
			err := <-res
			switch {
			case err == nil:
				ok++
			case !strings.Contains(err.Error(), "already in progress"):
				t.Fatalf("Reauthenticate: %v", err)
			}
		}
		if ok == 0 {
			t.Fatal("no re-authentication succeeded")
		}
	}
	if err := c.Disconnect(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server: %v", err)
	}
}

func TestSCRAMSecretNotCopiedOut(t *testing.T) {
	pw := []byte("correct horse")
	a := SCRAM("SCRAM-SHA-256", "alice", NewSecret(pw))
	if s := fmt.Sprintf("%v %+v", a, a); strings.Contains(s, "correct horse") {
		t.Fatalf("password printed: %s", s)
	}
}
