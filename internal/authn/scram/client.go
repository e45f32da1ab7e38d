package scram

import (
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"io"
	"strings"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// Rand is the source of client nonces. Default crypto/rand.
	Rand io.Reader
	// MinIterations is the smallest iteration count the client accepts
	// from a server: fewer would let a server that is not the real one
	// (or a man in the middle without TLS) obtain a proof that is cheap
	// to attack offline. Default MinIterations (4096).
	MinIterations int
	// MaxIterations is the largest iteration count the client computes,
	// so a hostile server cannot make it spin. Default 1,000,000.
	MaxIterations int
}

type clientState int

const (
	idle      clientState = iota // no exchange, or the last one ended
	sentFirst                    // waiting for the server-first-message
	sentFinal                    // waiting for the server-final-message
)

// DefaultClientMaxIterations is ClientConfig.MaxIterations' default.
const DefaultClientMaxIterations = 1_000_000

// Client is the client side of one SCRAM exchange at a time: First, then
// Final, then Verify; First again starts over (re-authentication). It is
// not safe for concurrent use.
type Client struct {
	mech      Mechanism
	user      string // escaped
	password  string // prepared
	cfg       ClientConfig
	nonceLen  int
	st        clientState
	bare      string
	nonce     string
	serverSig []byte
}

// NewClient returns the client side of mech for user and password. The
// password is prepared with PreparePassword (printable ASCII only); the
// Client keeps a copy of it.
func NewClient(mech Mechanism, user string, password []byte, cfg ClientConfig) (*Client, error) {
	if !mech.valid() {
		return nil, fmt.Errorf("%w: %s", ErrUnknownMechanism, mech)
	}
	if err := CheckUsername(user); err != nil {
		return nil, err
	}
	p, err := PreparePassword(password)
	if err != nil {
		return nil, err
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.MinIterations == 0 {
		cfg.MinIterations = MinIterations
	}
	if cfg.MaxIterations == 0 {
		cfg.MaxIterations = DefaultClientMaxIterations
	}
	if cfg.MinIterations < 1 || cfg.MaxIterations > MaxIterations || cfg.MinIterations > cfg.MaxIterations {
		return nil, fmt.Errorf("scram: iteration bounds %d..%d: want 1 ≤ min ≤ max ≤ %d", cfg.MinIterations, cfg.MaxIterations, MaxIterations)
	}
	return &Client{mech: mech, user: escapeUsername(user), password: p, cfg: cfg, nonceLen: nonceLen}, nil
}

// Mechanism returns the client's mechanism.
func (c *Client) Mechanism() Mechanism { return c.mech }

// First starts an exchange and returns the client-first-message.
func (c *Client) First() ([]byte, error) {
	c.st, c.serverSig = idle, nil
	n, err := makeNonce(c.cfg.Rand, c.nonceLen)
	if err != nil {
		return nil, err
	}
	c.nonce = n
	c.bare = "n=" + c.user + ",r=" + n
	c.st = sentFirst
	return []byte(gs2None + c.bare), nil
}

// Final answers the server-first-message with the client-final-message.
func (c *Client) Final(serverFirstMsg []byte) ([]byte, error) {
	if c.st != sentFirst {
		return nil, fmt.Errorf("%w: server-first-message without a client-first-message", ErrOutOfOrder)
	}
	c.st = idle
	sf, err := parseServerFirst(serverFirstMsg)
	if err != nil {
		return nil, err
	}
	if len(sf.nonce) <= len(c.nonce) || !strings.HasPrefix(sf.nonce, c.nonce) {
		return nil, malformed("server-first-message", "the nonce does not extend the client's")
	}
	if sf.iter < c.cfg.MinIterations || sf.iter > c.cfg.MaxIterations {
		return nil, fmt.Errorf("%w: server-first-message: %d iterations; the client accepts %d to %d", ErrMalformed, sf.iter, c.cfg.MinIterations, c.cfg.MaxIterations)
	}
	k, err := deriveKeys(c.mech, c.password, sf.salt, sf.iter)
	if err != nil {
		return nil, err
	}
	without := "c=" + b64.EncodeToString([]byte(gs2None)) + ",r=" + sf.nonce
	authMsg := c.bare + "," + sf.raw + "," + without
	proof := xorBytes(k.clientKey, hmacSum(c.mech, k.storedKey, authMsg))
	c.serverSig = hmacSum(c.mech, k.serverKey, authMsg)
	c.st = sentFinal
	return []byte(without + ",p=" + b64.EncodeToString(proof)), nil
}

// Verify checks the server-final-message: the server must prove that it
// knows the ServerKey. Any failure, including an "e=" error from the
// server, is an error.
func (c *Client) Verify(serverFinalMsg []byte) error {
	if c.st != sentFinal {
		return fmt.Errorf("%w: the server ended the exchange before it was complete, without proving it knows the credential", ErrServerProof)
	}
	c.st = idle
	v, err := parseServerFinal(serverFinalMsg, c.mech)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(v, c.serverSig) != 1 {
		return ErrServerProof
	}
	return nil
}

// String describes the client without its password.
func (c *Client) String() string {
	return "scram.Client{" + c.mech.String() + ", password " + redacted + "}"
}

// GoString redacts the password in %#v.
func (c *Client) GoString() string { return c.String() }
