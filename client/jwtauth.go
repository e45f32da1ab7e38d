package client

import (
	"context"
	"errors"
	"fmt"
)

// JWTMethod is the Authentication Method of JWTAuthenticator. It is
// Moat's own convention: the Authentication Data is the compact JWT.
const JWTMethod = "moat-jwt"

// JWTAuthenticator sends a JSON Web Token as MQTT 5 enhanced
// authentication (method "moat-jwt"), at CONNECT and at each
// Reauthenticate, taking a fresh token from its source every time, so a
// client keeps its connection past its token's expiry by calling
// Reauthenticate before then. Create it with JWT. It is safe for
// concurrent use.
type JWTAuthenticator struct {
	source func(ctx context.Context) (Secret, error)
}

var _ Authenticator = (*JWTAuthenticator)(nil)

// JWT returns an Authenticator that sends the token source returns. The
// source is called from the connecting goroutine and from Reauthenticate.
func JWT(source func(ctx context.Context) (Secret, error)) *JWTAuthenticator {
	return &JWTAuthenticator{source: source}
}

// Method implements Authenticator.
func (a *JWTAuthenticator) Method() string { return JWTMethod }

// Start implements Authenticator: it returns the current token.
func (a *JWTAuthenticator) Start(ctx context.Context) ([]byte, error) {
	if a.source == nil {
		return nil, errors.New("client: JWT authenticator without a token source")
	}
	tok, err := a.source(ctx)
	if err != nil {
		return nil, fmt.Errorf("client: getting a token: %w", err)
	}
	if tok.Empty() {
		return nil, errors.New("client: the token source returned an empty token")
	}
	return append([]byte(nil), tok.Bytes()...), nil
}

// Challenge implements Authenticator: the method has a single step, so a
// challenge means the server is not speaking it.
func (a *JWTAuthenticator) Challenge(context.Context, *AuthPacket) (*AuthPacket, error) {
	return nil, errors.New("client: the server continued a moat-jwt authentication, which has a single step")
}
