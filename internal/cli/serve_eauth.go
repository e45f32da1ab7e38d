package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/authn/jwt"
	"github.com/moatmq/moat/internal/authn/scram"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/tlsconf"
)

// jwtAuthMethod is the MQTT 5 Authentication Method under which a client
// sends a JWT as Authentication Data, in CONNECT and in AUTH 0x19 to
// re-authenticate with a fresh token. It is Moat's own: MQTT registers
// no method names, and the data is the compact JWT alone, not SASL
// OAUTHBEARER's framing.
const jwtAuthMethod = "moat-jwt"

// scramBackend is a `{type: scram}` entry of an auth list: SCRAM
// credentials for MQTT 5 enhanced authentication. In the chain that
// checks CONNECT passwords it answers NotMine: SCRAM never sees a
// password, only the exchange of enhancedAuth does.
type scramBackend struct {
	file *scram.File
	srv  *scram.Server
}

func (b *scramBackend) Name() string { return "scram " + b.file.Path() }

func (b *scramBackend) Authenticate(context.Context, *authn.Request) (authn.Result, error) {
	return authn.Result{Verdict: authn.NotMine, Reason: "scram: credentials are used only with MQTT 5 enhanced authentication"}, nil
}

// newSCRAMBackend loads a SCRAM credentials file.
func newSCRAMBackend(path string) (*scramBackend, error) {
	if path == "" {
		return nil, errors.New("a scram backend needs path (a file made by moat scram add)")
	}
	f, err := scram.LoadFile(path, scram.FileConfig{})
	if err != nil {
		return nil, err
	}
	srv, err := scram.NewServer(scram.ServerConfig{Lookup: f})
	if err != nil {
		return nil, err
	}
	return &scramBackend{file: f, srv: srv}, nil
}

// enhancedAuth is the broker's EnhancedAuthenticator: SCRAM-SHA-256 and
// SCRAM-SHA-512 on listeners whose auth list has a scram entry, and
// moat-jwt on listeners whose auth list has a jwt entry. Listeners that
// take identities from client certificates offer no method.
type enhancedAuth struct {
	cert   *certAuthenticator
	chains map[string]*authn.Chain // by listener name; read-only after start
	log    *slog.Logger
}

var _ broker.EnhancedAuthenticator = (*enhancedAuth)(nil)

func (e *enhancedAuth) Begin(c *broker.Client, method string, reauth bool) (broker.AuthExchange, error) {
	if e.certIdentity(c.Listener) {
		return nil, fmt.Errorf("%w: listener %s identifies clients by certificate", broker.ErrBadAuthMethod, c.Listener)
	}
	chain := e.chains[c.Listener]
	if chain == nil {
		return nil, fmt.Errorf("%w: listener %s has no auth list", broker.ErrBadAuthMethod, c.Listener)
	}
	if method == jwtAuthMethod {
		sub := &authn.Chain{}
		for _, b := range chain.Backends {
			if jb, ok := b.(*jwt.Backend); ok {
				sub.Backends = append(sub.Backends, jb)
			}
		}
		if len(sub.Backends) > 0 {
			return &jwtExchange{e: e, c: c, chain: sub, reauth: reauth}, nil
		}
		return nil, fmt.Errorf("%w: listener %s has no jwt backend for %s", broker.ErrBadAuthMethod, c.Listener, method)
	}
	if _, err := scram.ParseMechanism(method); err != nil {
		return nil, fmt.Errorf("%w: %w", broker.ErrBadAuthMethod, err)
	}
	for _, b := range chain.Backends {
		sb, ok := b.(*scramBackend)
		if !ok {
			continue
		}
		var conv *scram.Conversation
		var err error
		if reauth {
			conv, err = sb.srv.BeginReauth(method, c.Username)
		} else {
			conv, err = sb.srv.Begin(method)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", broker.ErrBadAuthMethod, err)
		}
		return &scramExchange{e: e, c: c, conv: conv, file: sb.file.Path(), reauth: reauth}, nil
	}
	return nil, fmt.Errorf("%w: listener %s has no scram backend for %s", broker.ErrBadAuthMethod, c.Listener, method)
}

// certIdentity reports whether listener takes identities from client
// certificates: a SCRAM or token identity would bypass that mapping.
func (e *enhancedAuth) certIdentity(listener string) bool {
	if _, ok := e.cert.proxy[listener]; ok {
		return true
	}
	m, ok := e.cert.mappings[listener]
	return ok && (m.Username != tlsconf.IdentityNone || m.BindClientID != "")
}

// logDecision logs the outcome of an exchange with its reason.
func (e *enhancedAuth) logDecision(c *broker.Client, method, backend string, reauth bool, res authn.Result, err error) {
	what := "auth: enhanced authentication succeeded"
	if reauth {
		what = "auth: re-authentication succeeded"
	}
	level := slog.LevelInfo
	if err != nil {
		what = "auth: enhanced authentication failed"
		if reauth {
			what = "auth: re-authentication failed"
		}
		if errors.Is(err, authn.ErrUnavailable) {
			level = slog.LevelError
		}
	}
	e.log.Log(context.Background(), level, what, "listener", c.Listener, "client_id", clipLog(c.ClientID),
		"username", clipLog(cmpOr(res.Username, cmpOr(c.Username, c.ClaimedUsername))), "method", method,
		"backend", backend, "reason", res.Reason)
}

// failResult is the broker's view of a failed exchange.
func failResult(res authn.Result, err error) broker.AuthResult {
	code := packet.NotAuthorized
	if errors.Is(err, authn.ErrUnavailable) {
		code = packet.ServerUnavailable
	}
	return broker.AuthResult{Code: code, Reason: res.Reason}
}

// scramExchange drives one scram.Conversation for the broker.
type scramExchange struct {
	e      *enhancedAuth
	c      *broker.Client
	conv   *scram.Conversation
	file   string
	reauth bool
}

func (x *scramExchange) Step(ctx context.Context, data []byte) ([]byte, bool, broker.AuthResult, error) {
	out, done, res, err := x.conv.Step(ctx, data)
	reauth := x.reauth
	method := x.conv.Mechanism().String()
	if err != nil {
		if res.Reason == "" {
			res.Reason = err.Error()
		}
		x.e.logDecision(x.c, method, "scram "+x.file, reauth, res, err)
		return nil, false, failResult(res, err), err
	}
	if !done {
		return out, false, broker.AuthResult{}, nil
	}
	x.e.logDecision(x.c, method, "scram "+x.file, reauth, res, nil)
	return out, true, broker.AuthResult{Allow: true, Username: res.Username, Reason: res.Reason,
		Groups: res.Groups, Backend: "scram " + x.file}, nil
}

// jwtExchange checks the JWT of CONNECT or of AUTH 0x19 with the
// listener's jwt backends, in one step.
type jwtExchange struct {
	e      *enhancedAuth
	c      *broker.Client
	chain  *authn.Chain
	reauth bool
	used   bool
}

// errTokenRefused is the error of a token the jwt backends refused.
var errTokenRefused = errors.New("auth: token refused")

func (x *jwtExchange) Step(ctx context.Context, data []byte) ([]byte, bool, broker.AuthResult, error) {
	if x.used {
		return nil, false, broker.AuthResult{Reason: "moat-jwt is a single step"}, errors.New("auth: moat-jwt: unexpected AUTH")
	}
	x.used = true
	req := &authn.Request{
		Listener:    x.c.Listener,
		ClientID:    x.c.ClientID,
		Username:    x.c.ClaimedUsername,
		Password:    authn.NewPassword(data),
		HasPassword: true,
	}
	if x.reauth {
		req.Username = x.c.Username
	}
	if ap, ok := addrPort(x.c.Remote); ok {
		req.Remote = ap
	}
	r, err := x.chain.Authenticate(ctx, req)
	switch {
	case err != nil:
	case r.Verdict != authn.Allow:
		if r.Reason == "" {
			r.Reason = "jwt: the Authentication Data is not a JWT"
		}
		err = errTokenRefused
	case x.reauth && cmpOr(r.Username, req.Username) != x.c.Username:
		r.Reason = fmt.Sprintf("jwt: the fresh token names %s, the connection is %s", clipLog(r.Username), clipLog(x.c.Username))
		err = errTokenRefused
	}
	x.e.logDecision(x.c, jwtAuthMethod, r.Backend, x.reauth, r, err)
	if err != nil {
		return nil, false, failResult(r, err), err
	}
	return nil, true, broker.AuthResult{Allow: true, Username: cmpOr(r.Username, req.Username), Reason: r.Reason,
		Groups: r.Groups, Publish: r.Publish, Subscribe: r.Subscribe, Backend: r.Backend, Expires: r.Expires}, nil
}
