package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// Defaults used for zero Config fields.
const (
	DefaultServer           = "mqtt://127.0.0.1:1883"
	DefaultKeepAlive        = 60 * time.Second
	DefaultConnectTimeout   = 30 * time.Second
	DefaultMessageBuffer    = 256
	DefaultWriteBufferLimit = 1 << 20 // bytes waiting to be written before publishers block
	DefaultMinBackoff       = 500 * time.Millisecond
	DefaultMaxBackoff       = 30 * time.Second
)

// Config configures a Client. The zero value connects to
// mqtt://127.0.0.1:1883 with MQTT 5.0, a server-assigned client ID, keep
// alive 60 s and no reconnection. Dial does not modify the Config; the
// Client keeps its own copy (TLSConfig, Dialer, Store and the callbacks are
// shared, not copied).
type Config struct {
	// Servers are tried in order, one per connection attempt, rotating.
	// Forms: mqtt://host:port (also tcp://), mqtts://host:port (also
	// ssl://, tls://), ws://host:port/path, wss://host:port/path, or a
	// bare host:port meaning mqtt://. Default ports: 1883, 8883, 80, 443.
	// Default: DefaultServer.
	Servers []string

	// ClientID is the MQTT client identifier. Empty: with MQTT 5 the
	// server assigns one (kept for reconnects); with 3.x the client makes
	// up "moat-" followed by 16 random hex digits.
	ClientID string

	// Version is the protocol: V5 (default when 0), V311 or V31.
	Version Version

	// KeepAlive is the keep alive interval, rounded down to seconds.
	// 0 means DefaultKeepAlive; a negative value disables keep alive.
	// A Server Keep Alive in CONNACK (MQTT 5) overrides it.
	KeepAlive time.Duration

	// CleanStart discards any session the server holds for ClientID on
	// the first connection (Clean Session in 3.x). Reconnects always try
	// to resume, except that a 3.x client with CleanStart keeps asking for
	// a clean session (a 3.x server would otherwise keep it forever).
	// Default false.
	CleanStart bool

	// SessionExpiry is the MQTT 5 Session Expiry Interval in seconds:
	// 0 (default) ends the session with the connection, 0xFFFFFFFF never.
	SessionExpiry uint32

	// Username and Password are sent in CONNECT when non-empty.
	Username string
	Password Secret

	// TLSConfig is used for mqtts:// and wss:// servers. Nil means a
	// default configuration (system roots, TLS 1.2 minimum). The client
	// clones it and sets ServerName from the URL when it is empty. Client
	// certificates (mutual TLS) go in Certificates or
	// GetClientCertificate.
	TLSConfig *tls.Config

	// Dialer opens the TCP connections (to the server or to the proxy).
	// Nil means a net.Dialer.
	Dialer ContextDialer

	// Proxy routes connections through a SOCKS5 proxy (MQTT 3.1.1
	// §5.4.10): "socks5://[user:password@]host:port" resolves the server
	// name locally, "socks5h://..." lets the proxy resolve it. Empty: no
	// proxy (environment variables are not consulted).
	Proxy string

	// WebSocketHeader is added to the WebSocket handshake request.
	WebSocketHeader http.Header

	// Will is the will message; nil for none. Will.Properties are MQTT 5
	// will properties (Will Delay Interval, Message Expiry, ...).
	Will *Will

	// ConnectProperties are extra MQTT 5 CONNECT properties, such as User
	// properties or Request Problem Information. The client sets Session
	// Expiry, Receive Maximum, Maximum Packet Size, Topic Alias Maximum and
	// the authentication properties itself from the fields of this Config.
	ConnectProperties Properties

	// ReceiveMaximum is how many QoS 1 and 2 messages the server may have
	// unacknowledged towards us (MQTT 5). 0 means 65535 (not announced).
	ReceiveMaximum uint16

	// MaxPacketSize is the largest packet the client accepts, announced
	// as Maximum Packet Size in MQTT 5. 0 means no limit.
	MaxPacketSize uint32

	// TopicAliasMaximum is announced to the server (MQTT 5): the server
	// may then replace topics by aliases 1..TopicAliasMaximum, which the
	// client resolves. Default 0: no aliases.
	TopicAliasMaximum uint16

	// TopicAliases lets the client replace topics of outgoing MQTT 5
	// messages by aliases: the first topics published on a connection,
	// up to the server's Topic Alias Maximum, get aliases 1, 2, ... and
	// are sent as an alias alone afterwards. It saves bandwidth when a
	// few topics carry many messages. Default false.
	TopicAliases bool

	// Reconnect controls reconnection after a lost connection. The zero
	// value does not reconnect.
	Reconnect ReconnectPolicy

	// ConnectTimeout bounds each connection attempt (dial, TLS, WebSocket
	// and CONNECT/CONNACK) when the context has no earlier deadline.
	// 0 means DefaultConnectTimeout.
	ConnectTimeout time.Duration

	// OnMessage receives every application message, in order, on a single
	// goroutine; QoS 1 and 2 messages are acknowledged when it returns.
	// It may call Publish, but a handler that blocks for long stalls
	// delivery and then the connection. Nil: messages go to Messages().
	OnMessage func(*Message)

	// ManualAck leaves the acknowledgement of received QoS 1 and 2
	// messages to the application, which calls Client.Ack once it has
	// taken care of a message, in the order messages were received
	// [MQTT-4.6.0-2]. Messages never acknowledged are redelivered by the
	// server when the session resumes. Default false: acknowledged when
	// OnMessage returns or the message enters the Messages channel.
	ManualAck bool

	// MessageBuffer is the capacity of the Messages channel. 0 means
	// DefaultMessageBuffer.
	MessageBuffer int

	// OnConnect is called (on the goroutine that connected) after every
	// successful CONNACK, before queued messages are resent.
	OnConnect func(*Client, ConnectInfo)

	// OnConnectionLost is called when an established connection breaks,
	// with the cause (a *ReasonError for a server DISCONNECT).
	OnConnectionLost func(*Client, error)

	// Auth runs MQTT 5 enhanced authentication; nil for none.
	Auth Authenticator

	// Store persists the outgoing QoS 1 and 2 state so that it survives
	// the Client (resend after a restart with the same ClientID). Nil:
	// the state lives only in the Client's memory, which is enough for
	// resending after reconnects.
	Store Store

	// WriteBufferLimit is how many encoded bytes may wait for the writer
	// before publishers block. 0 means DefaultWriteBufferLimit.
	WriteBufferLimit int

	// Logger receives connection events at Debug and Info, problems at
	// Warn. Nil discards them. Secrets are never logged.
	Logger *slog.Logger

	// Now returns the current time; nil means time.Now.
	Now func() time.Time

	// Rand is the randomness for backoff jitter and generated client IDs;
	// nil means crypto/rand.
	Rand io.Reader
}

// ContextDialer dials network connections; *net.Dialer implements it.
type ContextDialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// ReconnectPolicy says whether and how fast to reconnect. Delays grow
// from MinDelay, doubling after each failed attempt up to MaxDelay; each
// delay is drawn uniformly from [d/2, d] ("equal jitter") so that a fleet
// of clients does not reconnect in lockstep.
type ReconnectPolicy struct {
	// Enabled turns reconnection on. Default false.
	Enabled bool
	// MinDelay is the first delay; 0 means DefaultMinBackoff.
	MinDelay time.Duration
	// MaxDelay caps the delay; 0 means DefaultMaxBackoff.
	MaxDelay time.Duration
	// MaxAttempts stops after that many consecutive failed attempts
	// (the Client is then closed with the last error); 0 means never.
	MaxAttempts int
	// Retry is called after each failed reconnect attempt (attempt
	// counts from 1) with its error. Returning false stops the Client:
	// Done is closed and Err returns that error. Use it to give up on
	// refusals that retrying cannot cure (a revoked certificate, bad
	// credentials) and to report each failure. It runs on the Client's
	// supervisor goroutine and may call Close. Nil retries every error.
	Retry func(attempt int, err error) bool
}

// ConnectInfo describes an accepted connection.
type ConnectInfo struct {
	Server         string     // URL of the server
	ClientID       string     // the client ID in use (assigned by the server if it did)
	SessionPresent bool       // the server resumed an existing session
	Properties     Properties // CONNACK properties (MQTT 5)
}

// Authenticator performs MQTT 5 enhanced authentication (§4.12), such as
// SCRAM. Its methods are called from the connecting goroutine and, for
// re-authentication, from the connection's reader goroutine; calls for
// one Client never overlap.
type Authenticator interface {
	// Method is the Authentication Method, e.g. "SCRAM-SHA-256".
	Method() string
	// Start returns the Authentication Data for CONNECT (or for the AUTH
	// packet that starts re-authentication); nil for none.
	Start(ctx context.Context) ([]byte, error)
	// Challenge answers an AUTH packet with reason Continue
	// Authentication. The returned packet's Authentication Method is
	// filled in by the client; its reason code should be Continue
	// Authentication.
	Challenge(ctx context.Context, in *AuthPacket) (*AuthPacket, error)
}

// AuthFinisher is an optional interface of an Authenticator: Finish is
// called with the properties of the successful CONNACK (or final AUTH of
// a re-authentication), for example to verify the server's proof. An
// error aborts the connection.
type AuthFinisher interface {
	Finish(ctx context.Context, props *Properties) error
}

// server is a parsed server URL.
type server struct {
	raw    string
	scheme string // "tcp", "tls", "ws", "wss"
	host   string // without port
	addr   string // host:port
	url    *url.URL
}

func parseServer(s string) (server, error) {
	if !strings.Contains(s, "://") {
		s = "mqtt://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return server{}, fmt.Errorf("client: server %q: %v", s, err)
	}
	var scheme, port string
	switch strings.ToLower(u.Scheme) {
	case "mqtt", "tcp":
		scheme, port = "tcp", "1883"
	case "mqtts", "ssl", "tls", "tcps":
		scheme, port = "tls", "8883"
	case "ws":
		scheme, port = "ws", "80"
	case "wss":
		scheme, port = "wss", "443"
	default:
		return server{}, fmt.Errorf("client: server %q: unknown scheme %q (want mqtt, mqtts, ws or wss)", s, u.Scheme)
	}
	host := u.Hostname()
	if host == "" {
		return server{}, fmt.Errorf("client: server %q: no host", s)
	}
	if u.Port() != "" {
		port = u.Port()
	}
	if u.User != nil {
		return server{}, fmt.Errorf("client: server %q: credentials in the URL are not accepted; use Config.Username and Password", redactURL(u))
	}
	return server{raw: s, scheme: scheme, host: host, addr: net.JoinHostPort(host, port), url: u}, nil
}

// redactURL prints u without its password.
func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	return u.Redacted()
}

// validate checks cfg and returns every problem at once.
func (cfg *Config) validate() ([]server, *url.URL, error) {
	var errs []error
	servers := cfg.Servers
	if len(servers) == 0 {
		servers = []string{DefaultServer}
	}
	var parsed []server
	for _, s := range servers {
		sv, err := parseServer(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		parsed = append(parsed, sv)
	}
	switch cfg.Version {
	case 0, V31, V311, V5:
	default:
		errs = append(errs, fmt.Errorf("client: unknown protocol version %d (want 3, 4 or 5)", cfg.Version))
	}
	v := cfg.version()
	if cfg.KeepAlive > 65535*time.Second {
		errs = append(errs, fmt.Errorf("client: keep alive %v exceeds 65535 s", cfg.KeepAlive))
	}
	if v == V31 && len(cfg.ClientID) > 23 {
		errs = append(errs, fmt.Errorf("client: MQTT 3.1 client IDs have at most 23 bytes, %q has %d", cfg.ClientID, len(cfg.ClientID)))
	}
	if !packet.ValidString(cfg.ClientID) || !packet.ValidString(cfg.Username) {
		errs = append(errs, errors.New("client: client ID and username must be valid UTF-8 without U+0000"))
	}
	if cfg.Will != nil {
		if err := packet.ValidTopicName(cfg.Will.Topic); err != nil {
			errs = append(errs, fmt.Errorf("client: will topic: %w", err))
		}
		if cfg.Will.QoS > 2 {
			errs = append(errs, fmt.Errorf("client: will QoS %d (want 0, 1 or 2)", cfg.Will.QoS))
		}
	}
	if _, ok := cfg.Auth.(*SCRAMAuthenticator); ok && !cfg.Password.Empty() {
		// SCRAM exists so that the password never crosses the network.
		errs = append(errs, errors.New("client: Password is set together with SCRAM authentication, which would send the password in CONNECT; leave Password empty"))
	}
	if _, ok := cfg.Auth.(*JWTAuthenticator); ok && !cfg.Password.Empty() {
		errs = append(errs, errors.New("client: Password is set together with JWT authentication, which sends the token itself; leave Password empty"))
	}
	if v != V5 {
		if cfg.Auth != nil {
			errs = append(errs, errors.New("client: enhanced authentication needs MQTT 5"))
		}
		if cfg.SessionExpiry != 0 || cfg.TopicAliasMaximum != 0 || cfg.TopicAliases {
			errs = append(errs, errors.New("client: SessionExpiry, TopicAliasMaximum and TopicAliases need MQTT 5"))
		}
	}
	var proxyURL *url.URL
	if cfg.Proxy != "" {
		u, err := url.Parse(cfg.Proxy)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("client: proxy: %v", err))
		case u.Scheme != "socks5" && u.Scheme != "socks5h":
			errs = append(errs, fmt.Errorf("client: proxy %q: scheme must be socks5 or socks5h", u.Redacted()))
		case u.Host == "":
			errs = append(errs, fmt.Errorf("client: proxy %q: no host", u.Redacted()))
		default:
			proxyURL = u
		}
	}
	r := cfg.Reconnect
	if r.MinDelay < 0 || r.MaxDelay < 0 || r.MaxAttempts < 0 || (r.MaxDelay != 0 && r.MaxDelay < r.MinDelay) {
		errs = append(errs, errors.New("client: reconnect delays and attempts must be positive, MaxDelay ≥ MinDelay"))
	}
	if cfg.MessageBuffer < 0 || cfg.WriteBufferLimit < 0 || cfg.ConnectTimeout < 0 {
		errs = append(errs, errors.New("client: MessageBuffer, WriteBufferLimit and ConnectTimeout must not be negative"))
	}
	return parsed, proxyURL, errors.Join(errs...)
}

func (cfg *Config) version() Version {
	if cfg.Version == 0 {
		return V5
	}
	return cfg.Version
}

func (cfg *Config) keepAliveSeconds() uint16 {
	switch {
	case cfg.KeepAlive < 0:
		return 0
	case cfg.KeepAlive == 0:
		return uint16(DefaultKeepAlive / time.Second)
	}
	s := cfg.KeepAlive / time.Second
	if s == 0 {
		s = 1
	}
	return uint16(s)
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
