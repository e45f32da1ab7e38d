package client

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestJWTAuthenticator(t *testing.T) {
	calls := 0
	a := JWT(func(context.Context) (Secret, error) {
		calls++
		switch calls {
		case 1:
			return NewSecret([]byte("h.p.s")), nil
		case 2:
			return Secret{}, nil
		}
		return Secret{}, errors.New("idp down")
	})
	if a.Method() != JWTMethod {
		t.Fatalf("method %q", a.Method())
	}
	if b, err := a.Start(ctxT(t)); err != nil || string(b) != "h.p.s" {
		t.Fatalf("Start = %q, %v", b, err)
	}
	if _, err := a.Start(ctxT(t)); err == nil || !strings.Contains(err.Error(), "empty token") {
		t.Fatalf("empty token: %v", err)
	}
	if _, err := a.Start(ctxT(t)); err == nil || !strings.Contains(err.Error(), "idp down") {
		t.Fatalf("source error: %v", err)
	}
	if _, err := a.Challenge(ctxT(t), &AuthPacket{}); err == nil {
		t.Fatal("a challenge was answered")
	}
}

// The token goes in AUTH data; a Password as well would send a secret
// twice, so Dial refuses the configuration.
func TestSecurityJWTNoPasswordInConnect(t *testing.T) {
	tok := NewSecret([]byte("h.p.s"))
	_, err := Dial(ctxT(t), Config{Servers: []string{"127.0.0.1:1"}, Password: tok,
		Auth: JWT(func(context.Context) (Secret, error) { return tok, nil })})
	if err == nil || !strings.Contains(err.Error(), "Password is set together with JWT") {
		t.Fatalf("Dial = %v", err)
	}
}
