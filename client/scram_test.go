package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/authn/scram"
	"github.com/moatmq/moat/internal/packet"
)

// scramPeer plays the broker's side of SCRAM with internal/authn/scram,
// driven exactly as docs/access-control.md tells the broker to: CONNECT
// carries the client-first-message, AUTH 0x18 the server-first, AUTH 0x18
// the client-final, and CONNACK 0x00 (or AUTH 0x00 for a
// re-authentication started with AUTH 0x19) the server-final; a failure
// is CONNACK or DISCONNECT 0x87 (0x8C for an unknown method, 0x88 when the
// credentials cannot be read). tamper, when set, rewrites the
// server-final-message, as a server that does not know the ServerKey
// would have to.
type scramPeer struct {
	srv    *scram.Server
	tamper func([]byte) []byte
	// reauthOnly applies tamper to re-authentications only.
	reauthOnly bool
	// skip answers CONNECT with CONNACK success at once, as an impostor
	// that accepts anyone would.
	skip bool
}

func (sp *scramPeer) serve(ln net.Listener) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- sp.conn(ln) }()
	return errc
}

func (sp *scramPeer) conn(ln net.Listener) error {
	nc, err := ln.Accept()
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	r := packet.NewReader(nc, 0)
	send := func(p packet.Packet) error {
		b, err := packet.Append(nil, p, packet.V5)
		if err == nil {
			_, err = nc.Write(b)
		}
		return err
	}
	withAuth := func(pr *packet.Properties, method string, data []byte) {
		pr.AuthMethod, pr.AuthData = method, data
		pr.Mark(packet.PropAuthMethod)
		pr.Mark(packet.PropAuthData)
	}
	code := func(err error) packet.ReasonCode {
		switch {
		case errors.Is(err, scram.ErrUnknownMechanism):
			return packet.BadAuthenticationMethod
		case errors.Is(err, authn.ErrUnavailable):
			return packet.ServerUnavailable
		}
		return packet.NotAuthorized
	}
	// run drives one conversation; first is the client-first-message. It
	// returns the server-final-message and the authenticated user.
	run := func(conv *scram.Conversation, method string, first []byte, reauth bool) ([]byte, string, error) {
		out, done, res, err := conv.Step(context.Background(), first)
		for err == nil && !done {
			a := &packet.Auth{ReasonCode: packet.ContinueAuthentication}
			withAuth(&a.Properties, method, out)
			if err := send(a); err != nil {
				return nil, "", err
			}
			p, rerr := r.ReadPacket()
			if rerr != nil {
				return nil, "", rerr
			}
			in, ok := p.(*packet.Auth)
			if !ok || in.ReasonCode != packet.ContinueAuthentication || in.Properties.AuthMethod != method {
				return nil, "", fmt.Errorf("%w: want AUTH 0x18 %s, got %v", scram.ErrOutOfOrder, method, p)
			}
			out, done, res, err = conv.Step(context.Background(), in.Properties.AuthData)
		}
		if err != nil {
			return nil, "", err
		}
		if sp.tamper != nil && (reauth || !sp.reauthOnly) {
			out = sp.tamper(out)
		}
		return out, res.Username, nil
	}

	p, err := r.ReadPacket()
	if err != nil {
		return err
	}
	c, ok := p.(*packet.Connect)
	if !ok {
		return fmt.Errorf("want CONNECT, got %v", p)
	}
	r.SetVersion(packet.V5)
	method := c.Properties.AuthMethod
	ack := &packet.Connack{}
	if sp.skip {
		return send(ack)
	}
	conv, err := sp.srv.Begin(method)
	var final []byte
	var user string
	if err == nil {
		final, user, err = run(conv, method, c.Properties.AuthData, false)
	}
	if err != nil {
		ack.ReasonCode = code(err)
		return send(ack)
	}
	withAuth(&ack.Properties, method, final)
	if err := send(ack); err != nil {
		return err
	}
	for {
		p, err := r.ReadPacket()
		if err != nil {
			return err
		}
		switch p := p.(type) {
		case *packet.Disconnect:
			return nil
		case *packet.Auth:
			if p.ReasonCode != packet.ReAuthenticate {
				return fmt.Errorf("unexpected %v", p)
			}
			var conv *scram.Conversation
			var final []byte
			err := fmt.Errorf("%w: re-authentication with method %q", scram.ErrUnknownMechanism, p.Properties.AuthMethod)
			if p.Properties.AuthMethod == method {
				if conv, err = sp.srv.BeginReauth(method, user); err == nil {
					final, _, err = run(conv, method, p.Properties.AuthData, true)
				}
			}
			if err != nil {
				return send(&packet.Disconnect{ReasonCode: code(err)})
			}
			a := &packet.Auth{ReasonCode: packet.Success}
			withAuth(&a.Properties, method, final)
			if err := send(a); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unexpected %v", p)
		}
	}
}

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
			errc := (&scramPeer{srv: srv}).serve(ln)
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
			errc := (&scramPeer{srv: srv}).serve(ln)
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
		errc := (&scramPeer{srv: srv}).serve(ln)
		_, err := Dial(ctxT(t), Config{Servers: []string{ln.Addr().String()}, Auth: SCRAM("SCRAM-SHA-256", "alice", NewSecret([]byte("pässword")))})
		if err == nil || !strings.Contains(err.Error(), "ASCII") {
			t.Fatalf("Dial = %v, want the non-ASCII refusal", err)
		}
		<-errc
	})
}

// TestSecuritySCRAMServerMustProve: an impostor broker (or a man in the
// middle) that does not hold the user's ServerKey either forges the
// server-final-message or accepts the client without any exchange; the
// client must refuse both instead of talking to it.
func TestSecuritySCRAMServerMustProve(t *testing.T) {
	srv := scramServer(t, "alice:correct horse")
	for name, sp := range map[string]*scramPeer{
		"forged-signature": {srv: srv, tamper: func(b []byte) []byte {
			return []byte("v=" + strings.Repeat("A", len(b)-3) + "=")
		}},
		"no-signature": {srv: srv, tamper: func([]byte) []byte { return nil }},
		"server-error": {srv: srv, tamper: func([]byte) []byte { return []byte("e=other-error") }},
		"no-exchange":  {srv: srv, skip: true},
	} {
		t.Run(name, func(t *testing.T) {
			ln := listen(t)
			errc := sp.serve(ln)
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
	sp := &scramPeer{srv: srv, reauthOnly: true, tamper: func(b []byte) []byte {
		b = append([]byte(nil), b...)
		b[3] ^= 1
		return b
	}}
	errc := sp.serve(ln)
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

func TestSCRAMSecretNotCopiedOut(t *testing.T) {
	pw := []byte("correct horse")
	a := SCRAM("SCRAM-SHA-256", "alice", NewSecret(pw))
	if s := fmt.Sprintf("%v %+v", a, a); strings.Contains(s, "correct horse") {
		t.Fatalf("password printed: %s", s)
	}
}
