// Package authn decides who a connecting client is. A listener has an
// ordered Chain of Backends (password file, JWT, token introspection, LDAP,
// certificates); each answers Allow, Deny or NotMine, and the first answer
// that is not NotMine decides. A backend that cannot answer (its directory
// or key server is down) returns an error, and the chain fails closed: the
// client is refused as "server unavailable", never passed on to the next
// backend.
//
// The broker does not import this package: internal/cli adapts a Chain to
// the broker's Authenticator interface.
package authn

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Verdict is a backend's answer.
type Verdict int

// Verdicts. The zero value is NotMine, so a backend that forgets to set it
// never admits anyone.
const (
	NotMine Verdict = iota // the backend does not know this client: ask the next one
	Allow                  // the client is who it claims to be
	Deny                   // the backend knows the client and refuses it
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return "not-mine"
}

// Password holds a password or token from CONNECT. It redacts itself when
// printed or logged and cannot be compared with ==; use Equal (constant
// time). The zero value is the empty password.
type Password struct {
	b []byte
	_ [0]func()
}

// NewPassword returns a Password holding a copy of b.
func NewPassword(b []byte) Password { return Password{b: append([]byte(nil), b...)} }

// Bytes returns the value. The caller must not modify, keep or log it.
func (p Password) Bytes() []byte { return p.b }

// Empty reports whether no password was sent.
func (p Password) Empty() bool { return len(p.b) == 0 }

// Equal reports in constant time whether p and o hold the same value.
func (p Password) Equal(o Password) bool { return subtle.ConstantTimeCompare(p.b, o.b) == 1 }

const redacted = "[REDACTED]"

func (p Password) String() string   { return redacted }
func (p Password) GoString() string { return "authn.Password{" + redacted + "}" }

// LogValue implements slog.LogValuer.
func (p Password) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText redacts the password in JSON and YAML output.
func (p Password) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Request is what a backend decides on. Backends must not modify it.
type Request struct {
	Listener string         // listener name
	Remote   netip.AddrPort // the client's address (behind a PROXY header: the real one)
	ClientID string         // as sent (or assigned)
	// Username is the username field of CONNECT, unverified.
	Username string
	// Password is the password field of CONNECT (a password or a token).
	Password Password
	// HasPassword is true when CONNECT carried a password field, even an
	// empty one.
	HasPassword bool
	// Chain is the verified client certificate chain (leaf first), nil
	// when the client presented none.
	Chain []*x509.Certificate
	// CertIdentity is the identity the listener's mapping took from the
	// certificate ("" when none).
	CertIdentity string
}

// Result is a backend's decision. Every Result carries a Reason, logged
// and written to the audit log; it must not contain secrets.
type Result struct {
	Verdict Verdict
	// Reason says why, for logs and the audit trail ("password file
	// /etc/moat/passwd: wrong password").
	Reason string
	// Backend names the backend that decided (set by Chain).
	Backend string
	// Username is the authenticated identity when Verdict is Allow; empty
	// means the username of the request.
	Username string
	// Groups are the identity's groups (LDAP groups, a JWT claim), for
	// authorization rules.
	Groups []string
	// Expires, when not zero, is when this authentication stops holding
	// (a token's exp): the broker disconnects the client then unless it
	// re-authenticated.
	Expires time.Time
	// Publish and Subscribe are topic filters granted by the credential
	// itself (JWT ACL claims), with %u and %c already substituted. Nil
	// means the credential grants nothing by itself; the configured rules
	// decide.
	Publish, Subscribe []string
	// Attributes carries what else the backend learned (claims, directory
	// attributes) for authorization rules.
	Attributes map[string]string
}

// Backend is one authentication method. Implementations must be safe for
// concurrent use and honour ctx (the client's connect deadline).
//
// Authenticate returns an error only when it cannot decide (the backend is
// unreachable, misconfigured or overloaded); a wrong password is a Deny,
// not an error.
type Backend interface {
	Name() string
	Authenticate(ctx context.Context, req *Request) (Result, error)
}

// ErrUnavailable is wrapped by errors from a backend that could not decide.
var ErrUnavailable = errors.New("authn: backend unavailable")

// Chain tries its backends in order. The zero value has no backends and
// answers NotMine for everyone (the listener's anonymous policy decides).
// A Chain is safe for concurrent use; its Backends must not change after
// first use.
type Chain struct {
	Backends []Backend
}

// Authenticate asks each backend in order and returns the first Allow or
// Deny. A backend error stops the chain: the result is an error wrapping
// ErrUnavailable, and the caller must refuse the client (fail closed).
func (c *Chain) Authenticate(ctx context.Context, req *Request) (Result, error) {
	for _, b := range c.Backends {
		res, err := b.Authenticate(ctx, req)
		if err != nil {
			if !errors.Is(err, ErrUnavailable) {
				err = fmt.Errorf("%w: %s: %w", ErrUnavailable, b.Name(), err)
			}
			return Result{Verdict: Deny, Backend: b.Name(), Reason: err.Error()}, err
		}
		if res.Verdict == NotMine {
			continue
		}
		res.Backend = b.Name()
		if res.Reason == "" {
			res.Reason = b.Name() + ": " + res.Verdict.String()
		}
		return res, nil
	}
	return Result{Verdict: NotMine, Reason: "no backend knows this client"}, nil
}
