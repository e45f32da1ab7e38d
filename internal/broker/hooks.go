package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// Client describes an authenticated (or authenticating) client for
// authentication and authorization decisions. It is read-only for hooks.
type Client struct {
	Listener string   // listener name
	Remote   net.Addr // peer address (the real one behind a PROXY header)
	// Conn is the client's network connection, for hooks that read
	// transport metadata (PROXY protocol information, WebSocket details,
	// the TLS state through TLS) by type assertion. Hooks must not read
	// from or write to it.
	Conn    net.Conn
	Version packet.Version
	// Anonymous is true when the listener's anonymous policy admitted the
	// client (no Authenticator vouched for it), whether or not it sent a
	// username. (Next to Version, where it takes no padding of its own:
	// a Client of 256 bytes fills its size class; TestSizeClasses.)
	Anonymous bool
	ClientID  string // as connected (assigned IDs included)
	// Username is the verified identity: the name an Authenticator
	// returned, or the CONNECT username it accepted. It is empty while
	// authentication runs and for clients admitted by the anonymous policy,
	// so a non-empty Username can always be trusted.
	Username string
	// ClaimedUsername is the username as sent in CONNECT, never verified
	// by itself. It is for logs only: grant nothing on it.
	ClaimedUsername string
	// Attributes carries what the Authenticator learned (certificate
	// fields, token claims) for the Authorizer; nil when empty.
	Attributes map[string]string
	// Groups, Publish and Subscribe are what the Authenticator returned
	// (AuthResult): the identity's groups and the topic filters its
	// credential grants by itself. AuthBackend names the backend that
	// admitted the client, for loss-of-access matching ("" when the
	// certificate or the anonymous policy admitted it); AuthExpires is
	// when the authentication of CONNECT stops holding (zero: never; a
	// re-authentication moves the connection's expiry timer, not this).
	// All are as of CONNECT and never change while connected: Grants
	// returns the grants in force after a re-authentication, and is what
	// an Authorizer must read.
	Groups             []string
	Publish, Subscribe []string
	AuthBackend        string
	AuthExpires        time.Time

	// peerCerts holds the certificate chain of a snapshot that has no
	// Conn (retainedPublisher); az is the connection's authorization
	// state (decision cache, denial log limit, the Authorizer's memo),
	// nil for snapshots.
	peerCerts []*x509.Certificate
	az        *authzState
}

// TLS returns the state of the client's TLS connection (TLS or secure
// WebSocket), and false on plain transports. It is read from Conn on each
// call: the broker keeps no copy per connection.
func (c *Client) TLS() (tls.ConnectionState, bool) {
	if c.Conn == nil {
		return tls.ConnectionState{}, false
	}
	cs, ok := c.Conn.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return tls.ConnectionState{}, false
	}
	return cs.ConnectionState(), true
}

// PeerCertificates returns the verified client certificate chain, or nil.
func (c *Client) PeerCertificates() []*x509.Certificate {
	if c.peerCerts != nil {
		return c.peerCerts
	}
	st, ok := c.TLS()
	if !ok {
		return nil
	}
	return st.PeerCertificates
}

// ConnectRequest is what an Authenticator decides on.
type ConnectRequest struct {
	Client  *Client         // ClientID and ClaimedUsername as sent in CONNECT; Username empty
	Connect *packet.Connect // the CONNECT packet, password included
}

// AuthResult is an Authenticator's decision.
type AuthResult struct {
	// Allow admits the client.
	Allow bool
	// NoOpinion leaves the decision to the listener's anonymous policy:
	// the authenticator has no backend that knows this client. Ignored
	// when Allow is set.
	NoOpinion bool
	// Code is the CONNACK reason code for a refusal (v5 code; mapped for v3
	// clients). Zero means NotAuthorized.
	Code packet.ReasonCode
	// Reason explains the decision for logs and the audit trail.
	Reason string
	// Username, when non-empty, replaces the client's username (for
	// example the identity taken from its certificate).
	Username string
	// ClientID, when non-empty, replaces the client identifier (identity
	// bound client IDs); a v5 client is told through Assigned Client ID.
	ClientID string
	// ClientIDBound reports that the client proved its right to its
	// client identifier (a certificate binding): a session that another
	// identity holds under that identifier is ended, not resumed, instead
	// of the client being refused. Honoured with Allow and with NoOpinion
	// when the anonymous policy then admits the client.
	ClientIDBound bool
	// Attributes are handed to the Authorizer through Client.Attributes.
	Attributes map[string]string
	// Groups, Publish, Subscribe and Backend are handed to the Authorizer
	// through the Client fields of the same meaning (Backend as
	// AuthBackend). Expires, when not zero, is when the authentication
	// stops holding (a token's exp; Client.AuthExpires): the connection is
	// ended then, or ReauthGrace later for a client that can
	// re-authenticate (auth.go).
	Groups             []string
	Publish, Subscribe []string
	Backend            string
	Expires            time.Time
}

// Authenticator decides whether a client may connect. Implementations must
// be safe for concurrent use; ctx ends when the connection's pre-CONNECT
// deadline passes.
type Authenticator interface {
	Authenticate(ctx context.Context, req *ConnectRequest) AuthResult
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(ctx context.Context, req *ConnectRequest) AuthResult

// Authenticate calls f.
func (f AuthenticatorFunc) Authenticate(ctx context.Context, req *ConnectRequest) AuthResult {
	return f(ctx, req)
}

// Decision is an Authorizer's answer with the reason for logs.
type Decision struct {
	Allow bool
	// Reason explains the decision for logs and the audit trail.
	Reason string
	// Rule names what decided (a rule, an acl_file line), for logs.
	Rule string
}

// Action is what a client asks to do with a topic.
type Action int

// Actions checked by an Authorizer.
const (
	ActionPublish   Action = iota + 1 // publish to a topic name (wills included)
	ActionSubscribe                   // subscribe to a topic filter
	ActionReceive                     // receive a message on a topic name
)

func (a Action) String() string {
	switch a {
	case ActionPublish:
		return "publish"
	case ActionSubscribe:
		return "subscribe"
	case ActionReceive:
		return "receive"
	}
	return "unknown"
}

// AuthzRequest is one authorization question.
type AuthzRequest struct {
	// Client is the client asking. For a RetainSource request it is a
	// snapshot of the retained message's publisher, who may be offline:
	// its Conn is nil, PeerCertificates still works.
	Client *Client
	Action Action
	// Topic is a full topic name (after topic-alias resolution) for
	// ActionPublish and ActionReceive, and a topic filter without any
	// $share/GROUP/ prefix for ActionSubscribe.
	Topic string
	// ShareGroup is the GROUP of a shared subscription, for logs: rules
	// judge the filter.
	ShareGroup string
	QoS        byte
	Retain     bool
	// RetainSource marks the check, on retained replay, that the message's
	// publisher may still publish it (Mosquitto's check_retain_source).
	RetainSource bool
}

// Authorizer decides topic access. Implementations must be safe for
// concurrent use and fast: they run on the publish path. The broker
// caches decisions per connection (see Server.Reevaluate for when the
// cache is dropped), so a decision must depend only on the request and
// the policy in force, never on time or on a counter.
//
// A nil Config.Authorizer is AllowAll (logged as a warning by New);
// production wiring always sets one.
type Authorizer interface {
	Authorize(req *AuthzRequest) Decision
}

// UniformAuthorizer is an Authorizer that can tell when all of a
// client's requests for an action get the same decision, whatever their
// topic, QoS and retain flag (a listener without an access policy). The
// broker then keeps that one decision per connection and action instead
// of one per topic: a subscriber receiving more topics than its decision
// cache holds (a collector of a thousand devices' topics) would otherwise
// ask the Authorizer for most messages it receives.
//
// Uniform answers for c and a under the policy in force; like Authorize,
// it must depend on nothing that changes without a Server.Reevaluate.
// ok false: the decisions depend on the request, and Authorize is asked
// per topic as usual.
type UniformAuthorizer interface {
	Authorizer
	Uniform(c *Client, a Action) (d Decision, ok bool)
}

// AuthorizerFunc adapts a function to Authorizer.
type AuthorizerFunc func(req *AuthzRequest) Decision

// Authorize calls f.
func (f AuthorizerFunc) Authorize(req *AuthzRequest) Decision { return f(req) }

// AllowAll allows every request: Mosquitto's behaviour without an
// acl_file. Use it deliberately.
var AllowAll Authorizer = allowAll{}

type allowAll struct{}

var allowAllDecision = Decision{Allow: true, Reason: "no access policy: everything is allowed", Rule: "allow_all"}

func (allowAll) Authorize(*AuthzRequest) Decision         { return allowAllDecision }
func (allowAll) Uniform(*Client, Action) (Decision, bool) { return allowAllDecision, true }

// CertWatcher watches client certificates of live connections. Watch is
// called once per connection that presented a certificate; drop must be
// called at most once, from any goroutine, when the certificate is revoked
// or expires; stop is called when the connection ends.
type CertWatcher interface {
	Watch(chain []*x509.Certificate, drop func(reason string)) (stop func())
}
