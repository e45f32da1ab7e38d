package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/moatmq/moat/internal/authn/scram"
	"github.com/moatmq/moat/internal/packet"
)

// SCRAMAuthenticator performs SCRAM-SHA-256 or SCRAM-SHA-512 (RFC 5802,
// RFC 7677) as MQTT 5 enhanced authentication, at CONNECT and for each
// Reauthenticate. The password never leaves the client; the server must
// prove that it knows the user's credential in its final message, or the
// connection (or re-authentication) fails. Create it with SCRAM. It is
// safe for concurrent use.
//
// Channel binding is not used. Passwords must be printable ASCII (the
// SASLprep profile Moat implements).
type SCRAMAuthenticator struct {
	// Rand is the source of client nonces. Default crypto/rand.
	Rand io.Reader
	// MinIterations is the smallest PBKDF2 iteration count accepted from
	// the server; a lower one would let an impostor obtain a proof that
	// is cheap to attack offline. Default 4096 (RFC 7677).
	MinIterations int
	// MaxIterations is the largest iteration count the client agrees to
	// compute. Default 1,000,000.
	MaxIterations int

	mech     string
	user     string
	password Secret

	mu sync.Mutex
	cl *scram.Client // created at the first Start, from the fields above
}

var _ AuthFinisher = (*SCRAMAuthenticator)(nil)

// SCRAM returns an Authenticator for mechanism ("SCRAM-SHA-256" or
// "SCRAM-SHA-512") as username with password. Set its optional fields
// before the first Dial. An unknown mechanism or a password that cannot
// be used (empty, non-ASCII) makes Dial fail with the reason.
func SCRAM(mechanism, username string, password Secret) *SCRAMAuthenticator {
	return &SCRAMAuthenticator{mech: mechanism, user: username, password: NewSecret(password.Bytes())}
}

// Method implements Authenticator.
func (a *SCRAMAuthenticator) Method() string { return a.mech }

// Start implements Authenticator: it returns the client-first-message.
func (a *SCRAMAuthenticator) Start(context.Context) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cl == nil {
		m, err := scram.ParseMechanism(a.mech)
		if err != nil {
			return nil, err
		}
		a.cl, err = scram.NewClient(m, a.user, a.password.Bytes(), scram.ClientConfig{
			Rand: a.Rand, MinIterations: a.MinIterations, MaxIterations: a.MaxIterations})
		if err != nil {
			return nil, err
		}
	}
	return a.cl.First()
}

// Challenge implements Authenticator: it answers the server-first-message
// with the client-final-message.
func (a *SCRAMAuthenticator) Challenge(_ context.Context, in *AuthPacket) (*AuthPacket, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cl == nil {
		return nil, errors.New("scram: challenge before the exchange started")
	}
	final, err := a.cl.Final(in.Properties.AuthData)
	if err != nil {
		return nil, err
	}
	out := &AuthPacket{ReasonCode: packet.ContinueAuthentication}
	out.Properties.AuthData = final
	out.Properties.Mark(packet.PropAuthData)
	return out, nil
}

// Finish implements AuthFinisher: it verifies the server's signature in
// the server-final-message carried by CONNACK (or by the AUTH Success
// ending a re-authentication).
func (a *SCRAMAuthenticator) Finish(_ context.Context, props *Properties) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cl == nil {
		return errors.New("scram: the server accepted the client before the exchange started")
	}
	if !props.Has(packet.PropAuthData) {
		// Verify fails too; say what happened.
		a.cl.Verify(nil)
		return fmt.Errorf("%w (it accepted the client without a server-final-message)", scram.ErrServerProof)
	}
	return a.cl.Verify(props.AuthData)
}
