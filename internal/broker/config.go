package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults applied by New for zero fields of Config.
const (
	DefaultMaxPacketSize     = 1 << 20 // 1 MiB
	DefaultConnectTimeout    = 10 * time.Second
	DefaultReauthGrace       = 30 * time.Second
	DefaultMaxInflight       = 20    // outbound QoS 1/2 per session, as Mosquitto's max_inflight_messages
	DefaultReceiveMaximum    = 100   // inbound QoS 1/2 per connection, advertised to v5 clients
	DefaultMaxQueued         = 1000  // messages queued per session
	DefaultTopicAliasMaximum = 10    // inbound aliases per connection, as Mosquitto's max_topic_alias
	DefaultMaxKeepAlive      = 65535 // seconds
	DefaultSysInterval       = 10 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultMaxOutboundBytes  = 4 << 20 // bytes of QoS 0 messages waiting in a connection's queue
	DefaultMaxTopicLevels    = 128
	DefaultMaxSubscriptions  = 10000

	DefaultMaxTopicLength           = 1024    // bytes of a topic name or filter
	DefaultMaxSubscriptionBytes     = 1 << 20 // filter bytes per session
	DefaultPreAuthMaxPacketSize     = 64 << 10
	DefaultMaxRetained              = 100000
	DefaultMaxRetainedBytes         = 256 << 20
	DefaultMaxRetainedPerIdentity   = 1000
	DefaultMaxRetainedBytesIdentity = 16 << 20
	DefaultReadBudget               = 64 << 20 // bytes of packet bodies being read, all connections

	DefaultPushbackMessages = 100         // backlog of one subscriber that holds its publishers back
	DefaultPushbackBytes    = 1 << 20     // the same in topic and payload bytes
	DefaultPushbackWait     = time.Second // how long a subscriber may hold a publisher back before it counts as slow
)

// Config configures a Server. The zero value is usable: zero fields take
// the documented defaults, and with no Authenticator every client is refused
// unless AllowAnonymous is set. New never modifies the caller's Config.
type Config struct {
	// MaxPacketSize is the largest packet accepted from a client, in bytes,
	// checked before the packet is read into memory; it is advertised to
	// v5 clients as Maximum Packet Size. Default 1 MiB.
	MaxPacketSize uint32

	// MessageSizeLimit, when non-zero, is the largest PUBLISH payload
	// accepted (mosquitto's message_size_limit). Default: none beyond
	// MaxPacketSize.
	MessageSizeLimit uint32

	// MaxSessions caps the number of sessions, live and offline, that the
	// server holds; a CONNECT that would create one more is refused with
	// Quota exceeded (0x97; "server unavailable" for 3.x). It bounds the
	// memory a client population can pin with new client identifiers and
	// persistent sessions. The check is not atomic with session creation,
	// so concurrent connects may exceed it by a few. 0 means no cap.
	// Default 0.
	MaxSessions int

	// MaxSubscriptions is the number of subscriptions one session may
	// hold; beyond it SUBACK says Quota exceeded (0x97; 0x80 for 3.x).
	// Default 10000.
	MaxSubscriptions int

	// MaxTopicLevels is the largest number of levels ('/'-separated parts)
	// in a topic name or filter. Every level of a subscription or retained
	// topic costs a node in the broker's indexes, so a peer must not choose
	// it freely. Default 128, as EMQX's max_topic_levels.
	MaxTopicLevels int

	// MaxTopicLength is the largest topic name or filter, in bytes (a
	// shared subscription's "$share/group/" prefix included). A longer
	// filter is refused in SUBACK (Topic Filter invalid, 0x8F; 0x80 for
	// 3.x); a longer topic name in PUBLISH ends the connection (DISCONNECT
	// 0x90 for v5) and a longer will topic refuses CONNECT. Default 1024.
	MaxTopicLength int

	// MaxSubscriptionBytes bounds the sum of the filter lengths of one
	// session's subscriptions; a subscription past it is refused in
	// SUBACK (Quota exceeded, 0x97; 0x80 for 3.x). Default 1 MiB.
	MaxSubscriptionBytes int

	// PreAuthMaxPacketSize is the largest packet accepted before the
	// client is authenticated (CONNECT), checked from the fixed header
	// before anything is allocated; a larger one closes the connection.
	// It takes effect only when smaller than MaxPacketSize. Default 64 KiB.
	PreAuthMaxPacketSize uint32

	// MaxRetained and MaxRetainedBytes bound the retained messages stored
	// from clients, in number and in bytes (topic, payload and
	// properties); MaxRetainedPerIdentity and MaxRetainedBytesPerIdentity
	// bound those stored by one identity (the publishing client's
	// verified username, else its certificate, else its source address;
	// never its client ID, which a client chooses freely). A retained message
	// that would pass a limit is not stored: a v5 QoS 1 or 2 publication
	// is refused with Quota exceeded (0x97) and not delivered; other
	// publications are delivered to current subscribers without being
	// retained. Every refusal is logged and counted (Stats.RetainedRefused).
	// Replacing or clearing a retained message is always allowed within
	// the limits. Defaults 100000 messages, 256 MiB, 1000 messages and
	// 16 MiB per identity.
	MaxRetained                 int
	MaxRetainedBytes            int64
	MaxRetainedPerIdentity      int
	MaxRetainedBytesPerIdentity int64

	// ReadBudget bounds the bytes of packet bodies being read at once over
	// all connections. A connection about to read a packet body larger
	// than 4 KiB reserves its size first (at most the whole budget) and
	// releases it once the packet is handled; while the budget is spent,
	// it waits instead of allocating (before CONNECT, no longer than the
	// connect timeout). Default 64 MiB.
	ReadBudget int64

	// ConnectTimeout bounds the time from accepting a connection to
	// receiving CONNECT, TLS handshake included. Default 10 s.
	ConnectTimeout time.Duration

	// MaxConnections caps concurrent client connections over all
	// listeners; a connection over the cap is closed at once. Default
	// (0): the process's open-file limit (RLIMIT_NOFILE) less 64 kept for
	// listeners, the store and logs, at least 64; DefaultMaxConnections
	// reports it. ListenerConfig has a per-listener cap.
	MaxConnections int

	// MaxKeepAlive is the largest keep alive, in seconds, a client may use.
	// A v5 client asking for more (or for 0) is told the server's value in
	// CONNACK; a v3 client asking for more is refused, as Mosquitto does.
	// Default 65535 (no limit beyond the protocol's).
	MaxKeepAlive uint16

	// MaxInflight is the number of outbound QoS 1 and 2 messages that may
	// await acknowledgement per session (lower if a v5 client's Receive
	// Maximum is lower). Default 20.
	MaxInflight int

	// ReceiveMaximum is the number of inbound QoS 1 and 2 publications a
	// client may have unacknowledged; exceeding it is a protocol error
	// (DISCONNECT 0x93). Advertised to v5 clients. Default 100.
	ReceiveMaximum uint16

	// MaxQueued is the number of messages held for a session whose client
	// is offline or whose in-flight window is full. Beyond it QoS 1 and 2
	// messages are dropped, counted, logged and shown in $SYS (or, for a
	// connected client under QueueBlock, their publishers held back).
	// Default 1000.
	MaxQueued int

	// MaxQueuedBytes bounds the topic and payload bytes of the messages
	// queued for one session, as MaxQueued bounds their number: a queue
	// takes messages while it holds fewer bytes. 0: no byte limit. Default
	// 0.
	MaxQueuedBytes int64

	// QueueFullPolicy says what happens to a QoS 1 or 2 message for a
	// connected client whose queue is full: QueueDrop (the default) drops
	// it, counted and logged; QueueBlock queues it and holds its publisher
	// back until there is room (see QueuePolicy). A full queue of an
	// offline session drops (but one whose client is being attached after
	// a cluster claim holds publishers back, docs/design/broker.md).
	// SetLimits changes it at run time.
	QueueFullPolicy QueuePolicy

	// PushbackMessages and PushbackBytes are the backlog of one connected
	// client at which the publishers of the messages it receives are held
	// back: their connections are not read until the backlog goes down,
	// so that their own in-flight windows fill instead of the broker's
	// queues (docs/design/broker.md, "Overload control"). The backlog is
	// counted twice over, against each mark on its own: the session's
	// queue of QoS 1 and 2 messages waiting for room in the in-flight
	// window, and the connection's QoS 0 messages waiting to be written;
	// bytes are topic and payload. A client is never held back by its own
	// session, nor by an offline one (but see QueueFullPolicy). Defaults
	// 100 messages (at most MaxQueued) and 1 MiB; a negative
	// PushbackMessages turns holding back off, a negative PushbackBytes
	// leaves only the message mark. SetLimits changes both at run time.
	PushbackMessages int
	PushbackBytes    int64

	// PushbackWait bounds how long a connected client holds a publisher
	// back before it counts as slow: when that publisher's other messages
	// reach clients that keep up, or when the client took nothing from
	// its backlog in that time. A slow client holds nobody back until its
	// backlog is down to half the mark; its QoS 1 and 2 messages queue up
	// to MaxQueued and QueueFullPolicy applies, its QoS 0 messages wait up
	// to MaxOutboundBytes and then the oldest are dropped. Publishers whose
	// only subscriber it is wait on while it takes messages at all.
	// Default 1 s; SetLimits changes it at run time.
	PushbackWait time.Duration

	// QueueQoS0 also queues QoS 0 messages for offline persistent sessions
	// (mosquitto's queue_qos0_messages). Default false.
	QueueQoS0 bool

	// TopicAliasMaximum is the number of topic aliases a v5 client may set.
	// Default 10; a negative value disables inbound topic aliases.
	TopicAliasMaximum int

	// PersistentClientExpiration removes persistent sessions of v3 clients
	// that have been offline this long (mosquitto's
	// persistent_client_expiration); v5 clients use their own Session
	// Expiry Interval, capped by this value when it is set. 0 means never.
	PersistentClientExpiration time.Duration

	// RetainDisabled refuses retained messages (mosquitto's
	// retain_available false). Default: retained messages are available.
	RetainDisabled bool

	// SysInterval is the period of $SYS topic updates; negative disables
	// them. Default 10 s.
	SysInterval time.Duration

	// WriteTimeout bounds a single write to a client; a client that does
	// not read for that long is disconnected. Default 30 s.
	WriteTimeout time.Duration

	// MaxOutboundBytes bounds the QoS 0 bytes (topic and payload) waiting
	// in one connection's outbound queue; beyond it the oldest QoS 0
	// messages waiting for that client are dropped, counted
	// (Stats.DroppedSlowClient) and logged. Default 4 MiB.
	MaxOutboundBytes int

	// AllowAnonymous lets clients without credentials connect on listeners
	// that do not override it. Default false.
	AllowAnonymous bool

	// IgnoreSessionOwner lets any client resume a session, or take over
	// its connection, by client ID alone, as Mosquitto does. Default
	// false: a session belongs to the identity that created it (see
	// docs/design/broker.md, "Session owners"); set it only on closed
	// networks where every client is trusted.
	IgnoreSessionOwner bool

	// Authenticator decides CONNECT attempts. Nil: only anonymous access,
	// as AllowAnonymous says.
	Authenticator Authenticator

	// EnhancedAuthenticator runs MQTT 5 enhanced authentication and
	// re-authentication (auth.go). Nil: a CONNECT with an Authentication
	// Method is refused with 0x8C Bad authentication method.
	EnhancedAuthenticator EnhancedAuthenticator

	// ReauthGrace is how long past the expiry of its authentication (a
	// token's exp) a client that connected with an Authentication Method
	// may stay connected to re-authenticate; clients that cannot are
	// disconnected at expiry. Default DefaultReauthGrace.
	ReauthGrace time.Duration

	// Authorizer decides publish, subscribe and delivery requests. Nil is
	// AllowAll (New logs a warning); moat serve always sets one.
	Authorizer Authorizer
	// CheckRetainSource checks, when a retained message is replayed to a
	// new subscription, that its publisher may still publish it
	// (Mosquitto's check_retain_source).
	CheckRetainSource bool
	// DisconnectDeniedPublishV3 closes the connection of an MQTT 3.1.1
	// client whose PUBLISH is not authorized; by default the message is
	// dropped silently, as Mosquitto does (MQTT 5 clients are told with
	// reason code 0x87 either way).
	DisconnectDeniedPublishV3 bool

	// Observer is told of every accepted socket (before TLS) and of the
	// security events of each connection, and may refuse or end it
	// (defense and audit). Nil: nothing is checked or reported; moat serve
	// always sets one.
	Observer Observer

	// Retained stores retained messages. Nil: an in-memory store.
	Retained RetainedStore

	// Persistence keeps persistent sessions, their messages, retained
	// messages and wills across restarts (docs/durability.md). Nil: in
	// memory only. StoreQuarantines is reported in Stats: how many corrupt
	// stores were moved aside when it was opened.
	Persistence      Persistence
	StoreQuarantines int

	// Cluster connects this broker to the other nodes of a cluster
	// (cluster.go, docs/cluster.md). Nil: a single node.
	Cluster Cluster

	// QuietConnections logs client connects and disconnects at debug level
	// instead of info (mosquitto's connection_messages false).
	QuietConnections bool

	// Logger receives the server's structured logs. Nil: slog.Default().
	Logger *slog.Logger

	// Now is the clock's time when Clock is nil. Nil: time.Now.
	Now func() time.Time

	// Clock provides the time and the timers of session expiry, will
	// delay and the wait for a taken-over connection (tests advance a
	// fake one instead of sleeping). Socket deadlines always use the
	// system clock. Nil: the system clock, reading the time from Now. Set
	// Clock or Now, not both.
	Clock Clock

	// Version is reported in $SYS/broker/version. Default "moat".
	Version string
}

func (c *Config) withDefaults() (Config, error) {
	cfg := *c
	var errs []error
	if cfg.MaxPacketSize == 0 {
		cfg.MaxPacketSize = DefaultMaxPacketSize
	}
	if cfg.MaxPacketSize < 64 {
		errs = append(errs, fmt.Errorf("broker: MaxPacketSize %d is too small (minimum 64 bytes)", cfg.MaxPacketSize))
	}
	// The limits a running server can change are defaulted and checked
	// by the one code SetLimits uses (livelimits.go).
	lim, err := limitsOf(&cfg).withDefaults()
	if err != nil {
		errs = append(errs, err)
	}
	cfg.setLimits(lim)
	cfg.PreAuthMaxPacketSize = min(cfg.PreAuthMaxPacketSize, cfg.MaxPacketSize)
	if cfg.ReadBudget == 0 {
		cfg.ReadBudget = DefaultReadBudget
	}
	if cfg.ReadBudget < 0 {
		errs = append(errs, errors.New("broker: ReadBudget must not be negative"))
	}
	if cfg.ReceiveMaximum == 0 {
		cfg.ReceiveMaximum = DefaultReceiveMaximum
	}
	if cfg.TopicAliasMaximum == 0 {
		cfg.TopicAliasMaximum = DefaultTopicAliasMaximum
	}
	if cfg.TopicAliasMaximum < 0 {
		cfg.TopicAliasMaximum = 0
	}
	if cfg.TopicAliasMaximum > 65535 {
		errs = append(errs, fmt.Errorf("broker: TopicAliasMaximum %d out of range 0..65535", cfg.TopicAliasMaximum))
	}
	if cfg.PersistentClientExpiration < 0 {
		errs = append(errs, errors.New("broker: PersistentClientExpiration must not be negative"))
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.MaxOutboundBytes == 0 {
		cfg.MaxOutboundBytes = DefaultMaxOutboundBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.Clock != nil && cfg.Now != nil:
		errs = append(errs, errors.New("broker: Clock and Now are both set; set only Clock, whose Now method is the time"))
	case cfg.Clock != nil:
		cfg.Now = cfg.Clock.Now
	default:
		if cfg.Now == nil {
			cfg.Now = time.Now
		}
		cfg.Clock = systemClock{now: cfg.Now}
	}
	if cfg.Version == "" {
		cfg.Version = "moat"
	}
	if cfg.Retained == nil {
		cfg.Retained = NewMemoryRetained()
	}
	return cfg, errors.Join(errs...)
}

// ListenerConfig holds per-listener settings for Serve. The zero value
// inherits the server's settings.
type ListenerConfig struct {
	// Name identifies the listener in logs and $SYS. Default: the
	// listener's address.
	Name string

	// AllowAnonymous, when non-nil, overrides Config.AllowAnonymous for
	// clients of this listener (mosquitto's per-listener allow_anonymous).
	AllowAnonymous *bool

	// MaxConnections caps concurrent connections on this listener; 0 means
	// only the server-wide cap applies.
	MaxConnections int

	// CertWatcher, when set, is told of every client certificate chain so
	// that a certificate revoked or expired while connected ends its
	// session within seconds.
	CertWatcher CertWatcher

	// MaxQoS, when non-nil, is the highest QoS clients of this listener may
	// use (0, 1 or 2); it is announced to v5 clients, subscriptions are
	// granted at most this QoS, and a PUBLISH above it is refused. Default 2.
	MaxQoS *byte

	// TopicAliasMaximum, when non-nil, overrides Config.TopicAliasMaximum.
	TopicAliasMaximum *int

	// RefuseZeroLengthClientID refuses clients that send an empty client
	// identifier instead of assigning one (mosquitto's
	// allow_zero_length_clientid false). Default false.
	RefuseZeroLengthClientID bool

	// AutoIDPrefix prefixes assigned client identifiers. Default "auto-".
	AutoIDPrefix string

	// UseUsernameAsClientID replaces the client identifier with the
	// (authenticated) username (mosquitto's use_username_as_clientid).
	UseUsernameAsClientID bool
}
