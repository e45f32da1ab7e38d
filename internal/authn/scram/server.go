package scram

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"

	"github.com/moatmq/moat/internal/authn"
)

// CredentialLookup finds stored credentials. It must be safe for
// concurrent use and honour ctx.
type CredentialLookup interface {
	// LookupCredential returns user's credential for mech. It returns an
	// error wrapping ErrUnknownUser when there is none; any other error
	// means it cannot answer (the authentication fails closed as
	// "server unavailable").
	LookupCredential(ctx context.Context, user string, mech Mechanism) (Credential, error)
}

// ServerConfig configures a Server.
type ServerConfig struct {
	// Lookup finds the users' credentials. Required.
	Lookup CredentialLookup
	// Rand is the source of server nonces. Default crypto/rand.
	Rand io.Reader
	// FakeSecret keys the fake credentials given to unknown users (see
	// Server). Default: 32 random bytes drawn by NewServer, so the fake
	// salts change when the process restarts; give a persistent secret
	// of at least 16 bytes to keep them stable across restarts.
	FakeSecret []byte
	// FakeIterations is the iteration count of fake credentials; set it
	// to what the real ones use. Default DefaultIterations.
	FakeIterations int
	// OnUnknownUser, when set, is called (from Step) each time a
	// conversation names a user the Lookup does not know, for metrics.
	OnUnknownUser func(mech Mechanism)
}

// Server starts server-side SCRAM conversations. It is safe for
// concurrent use; conversations are not.
//
// A username that Lookup does not know gets a fake credential derived
// from the username under FakeSecret (HMAC-SHA-256): the same salt and
// iteration count every time within a process, like a real user's, and
// keys no password produces. The conversation then fails at the proof,
// exactly where a wrong password fails, with the same error and the same
// work, so the exchange does not tell which users exist.
type Server struct {
	lookup    CredentialLookup
	rand      io.Reader
	secret    []byte
	fakeIter  int
	onUnknown func(Mechanism)
	nonceLen  int // tests shorten it to reproduce published vectors
}

// NewServer validates cfg and returns a Server. It does not modify cfg.
func NewServer(cfg ServerConfig) (*Server, error) {
	var errs []error
	if cfg.Lookup == nil {
		errs = append(errs, errors.New("scram: ServerConfig.Lookup is nil; give the credentials file (scram.LoadFile)"))
	}
	if cfg.FakeSecret != nil && len(cfg.FakeSecret) < 16 {
		errs = append(errs, fmt.Errorf("scram: ServerConfig.FakeSecret is %d bytes; at least 16", len(cfg.FakeSecret)))
	}
	if cfg.FakeIterations != 0 && (cfg.FakeIterations < MinIterations || cfg.FakeIterations > MaxIterations) {
		errs = append(errs, fmt.Errorf("scram: ServerConfig.FakeIterations %d: want %d to %d", cfg.FakeIterations, MinIterations, MaxIterations))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s := &Server{lookup: cfg.Lookup, rand: cfg.Rand, fakeIter: cfg.FakeIterations, onUnknown: cfg.OnUnknownUser, nonceLen: nonceLen}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	if s.fakeIter == 0 {
		s.fakeIter = DefaultIterations
	}
	if cfg.FakeSecret != nil {
		s.secret = append([]byte(nil), cfg.FakeSecret...)
	} else {
		s.secret = make([]byte, 32)
		if _, err := io.ReadFull(rand.Reader, s.secret); err != nil {
			return nil, fmt.Errorf("scram: drawing the fake-credential secret: %w", err)
		}
	}
	return s, nil
}

// Begin starts the conversation of a CONNECT whose Authentication Method
// is method. An unsupported method gives an error wrapping
// ErrUnknownMechanism (the broker answers 0x8C Bad authentication
// method).
func (s *Server) Begin(method string) (*Conversation, error) {
	m, err := ParseMechanism(method)
	if err != nil {
		return nil, err
	}
	return &Conversation{s: s, mech: m}, nil
}

// BeginReauth starts a re-authentication (AUTH 0x19) of a connection
// authenticated as user: a client-first-message naming anyone else fails
// with ErrUserChanged.
func (s *Server) BeginReauth(method, user string) (*Conversation, error) {
	c, err := s.Begin(method)
	if err != nil {
		return nil, err
	}
	c.reauthUser, c.reauth = user, true
	return c, nil
}

// fake returns the fake credential of an unknown user.
func (s *Server) fake(user string, m Mechanism) Credential {
	mac := func(label string) []byte {
		h := hmac.New(sha256.New, s.secret)
		io.WriteString(h, "moat scram fake credential\x00"+label+"\x00"+m.String()+"\x00")
		io.WriteString(h, user)
		return h.Sum(nil)
	}
	expand := func(label string) []byte {
		k := mac(label)
		for len(k) < m.size() {
			k = append(k, mac(label+"+")...)
		}
		return k[:m.size()]
	}
	return Credential{Mechanism: m, Iterations: s.fakeIter, Salt: mac("salt")[:DefaultSaltSize],
		StoredKey: expand("stored"), ServerKey: expand("server")}
}

type state int

const (
	wantClientFirst state = iota
	wantClientFinal
	finished
	failed
)

// Conversation is one server-side SCRAM exchange. It is not safe for
// concurrent use; the broker drives it from the connection's goroutine.
type Conversation struct {
	s          *Server
	mech       Mechanism
	reauth     bool
	reauthUser string

	st      state
	first   clientFirst
	nonce   string // client nonce + server nonce
	sfirst  string
	cred    Credential
	user    string
	unknown bool
}

// Mechanism returns the conversation's mechanism.
func (c *Conversation) Mechanism() Mechanism { return c.mech }

// Step takes the client's next message (the Authentication Data of
// CONNECT, then of AUTH) and returns the answer:
//
//   - done false, err nil: out is the server-first-message; send it in
//     AUTH 0x18 Continue authentication and call Step again with the
//     client's answer.
//   - done true, err nil: the client is authenticated (res.Verdict is
//     authn.Allow, res.Username the identity); out is the
//     server-final-message, sent as the Authentication Data of CONNACK
//     0x00 (or of AUTH 0x00 Success for a re-authentication).
//   - err not nil: the authentication failed; res (Verdict authn.Deny)
//     says why, for the log. errors.Is(err, authn.ErrUnavailable) means
//     the credentials could not be looked up (0x88 Server unavailable);
//     anything else is 0x87 Not authorized. out is nil.
//
// After done or an error, further calls fail with ErrOutOfOrder.
func (c *Conversation) Step(ctx context.Context, in []byte) (out []byte, done bool, res authn.Result, err error) {
	switch c.st {
	case wantClientFirst:
		out, err = c.stepFirst(ctx, in)
	case wantClientFinal:
		out, err = c.stepFinal(in)
		done = err == nil
	default:
		err = fmt.Errorf("%w: the %s conversation has already ended", ErrOutOfOrder, c.mech)
	}
	if err != nil {
		c.st = failed
		reason := err.Error()
		if errors.Is(err, ErrAuthFailed) {
			// The log may tell what the peer must not.
			if c.unknown {
				reason += " (unknown user)"
			} else {
				reason += " (wrong password)"
			}
		}
		return nil, false, authn.Result{Verdict: authn.Deny, Backend: "scram", Username: c.user, Reason: reason}, err
	}
	if done {
		c.st = finished
		what := "authenticated"
		if c.reauth {
			what = "re-authenticated"
		}
		return out, true, authn.Result{Verdict: authn.Allow, Backend: "scram", Username: c.user,
			Reason: fmt.Sprintf("scram: %s %s", what, c.mech)}, nil
	}
	c.st = wantClientFinal
	return out, false, authn.Result{}, nil
}

func (c *Conversation) stepFirst(ctx context.Context, in []byte) ([]byte, error) {
	cf, err := parseClientFirst(in)
	if err != nil {
		return nil, err
	}
	c.first, c.user = cf, cf.user
	if c.reauth && cf.user != c.reauthUser {
		return nil, fmt.Errorf("%w: the connection is %s, the client-first-message names %s", ErrUserChanged, clip(c.reauthUser), clip(cf.user))
	}
	// The fake credential is derived for every user, so known and unknown
	// users cost the same work.
	fake := c.s.fake(cf.user, c.mech)
	cred, err := c.s.lookup.LookupCredential(ctx, cf.user, c.mech)
	switch {
	case errors.Is(err, ErrUnknownUser):
		c.unknown = true
		cred = fake
		if c.s.onUnknown != nil {
			c.s.onUnknown(c.mech)
		}
	case err != nil:
		return nil, fmt.Errorf("%w: scram: looking up %s: %w", authn.ErrUnavailable, clip(cf.user), err)
	case cred.Mechanism != c.mech:
		return nil, fmt.Errorf("%w: scram: the lookup returned a %s credential for %s", authn.ErrUnavailable, cred.Mechanism, c.mech)
	}
	if err := cred.validate(1); err != nil {
		return nil, fmt.Errorf("%w: scram: stored credential of %s: %w", authn.ErrUnavailable, clip(cf.user), err)
	}
	sn, err := makeNonce(c.s.rand, c.s.nonceLen)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", authn.ErrUnavailable, err)
	}
	if len(cf.nonce)+len(sn) > maxNonce {
		return nil, malformed("client-first-message", "client nonce too long")
	}
	c.cred, c.nonce = cred, cf.nonce+sn
	c.sfirst = formatServerFirst(c.nonce, cred.Salt, cred.Iterations)
	return []byte(c.sfirst), nil
}

func (c *Conversation) stepFinal(in []byte) ([]byte, error) {
	cf, err := parseClientFinal(in, c.mech)
	if err != nil {
		return nil, err
	}
	if cf.cbind != c.first.gs2 {
		return nil, malformed("client-final-message", "channel binding data does not repeat the GS2 header of the client-first-message")
	}
	if cf.nonce != c.nonce {
		return nil, malformed("client-final-message", "nonce differs from the one the server sent")
	}
	authMsg := c.first.bare + "," + c.sfirst + "," + cf.withoutProof
	sig := hmacSum(c.mech, c.cred.StoredKey, authMsg)
	clientKey := xorBytes(cf.proof, sig)
	h := c.mech.newHash()()
	h.Write(clientKey)
	if subtle.ConstantTimeCompare(h.Sum(nil), c.cred.StoredKey) != 1 || c.unknown {
		return nil, fmt.Errorf("%w: %s proof of %s does not verify", ErrAuthFailed, c.mech, clip(c.user))
	}
	return []byte("v=" + b64.EncodeToString(hmacSum(c.mech, c.cred.ServerKey, authMsg))), nil
}
