// Package config reads Moat's configuration file. Two syntaxes are accepted
// and both produce the same documented Config:
//
//   - Moat's own YAML (see examples/moat.yaml and docs/configuration.md),
//     decoded strictly: unknown keys, duplicate keys and bad values are
//     errors with their line numbers;
//   - Mosquitto 2.0's mosquitto.conf, so that an existing file runs
//     unchanged. Its rules are mirrored, including the quirks (the implicit
//     default listener, "local only" mode, per_listener_settings, include_dir
//     order); keys Moat does not implement yet are errors naming the file,
//     line and key, never silently ignored when they affect security.
//
// Load reads a file, Parse reads bytes, Default returns the secure
// zero-configuration setup. Every error names file:line where one exists,
// and all problems are returned at once (errors.Join).
//
// The package is a leaf: it imports only the standard library and
// go.yaml.in/yaml/v3. The command line maps a Config onto the broker,
// listener and TLS packages. A Config is a plain value: it is safe for
// concurrent reads, and the caller owns it.
package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Format is the syntax a configuration was written in.
type Format string

// OpenACL reports whether no access policy applies to listener i: every
// client it admits may do everything (acl.allow_all, or a mosquitto.conf
// without an acl_file for it).
func (c *Config) OpenACL(i int) bool {
	if c.ACL != nil {
		return c.ACL.AllowAll
	}
	return c.Format == FormatMosquitto && c.Listeners[i].ACLFile == ""
}

// The configuration syntaxes.
const (
	FormatYAML      Format = "yaml"
	FormatMosquitto Format = "mosquitto"
)

// Transport is how a listener carries MQTT.
type Transport string

// Listener transports.
const (
	TransportTCP Transport = "tcp" // plain MQTT over TCP (insecure on a network)
	TransportTLS Transport = "tls" // MQTT over TLS
	TransportWS  Transport = "ws"  // MQTT over WebSocket (insecure on a network)
	TransportWSS Transport = "wss" // MQTT over WebSocket over TLS
)

// Secure reports whether t encrypts the connection.
func (t Transport) Secure() bool { return t == TransportTLS || t == TransportWSS }

// WebSocket reports whether t is a WebSocket transport.
func (t Transport) WebSocket() bool { return t == TransportWS || t == TransportWSS }

// ClientAuth says whether a TLS listener asks for client certificates.
type ClientAuth string

// Client certificate policies.
const (
	ClientAuthNone     ClientAuth = "none"     // do not ask for a client certificate
	ClientAuthOptional ClientAuth = "optional" // verify one if presented
	ClientAuthRequired ClientAuth = "required" // refuse the handshake without a valid one
)

// Identity sources: where a certificate-derived username or client ID
// comes from.
const (
	IdentityNone     = "none"      // not derived from the certificate
	IdentityCN       = "cn"        // subject Common Name (Mosquitto use_identity_as_username)
	IdentitySubject  = "subject"   // whole subject, RFC 2253 form as Mosquitto prints it (use_subject_as_username)
	IdentitySANDNS   = "san-dns"   // first DNS subject alternative name
	IdentitySANURI   = "san-uri"   // first URI subject alternative name
	IdentitySANEmail = "san-email" // first e-mail subject alternative name
	IdentitySPIFFE   = "spiffe"    // the spiffe:// URI SAN
	IdentitySHA256   = "sha256"    // hex SHA-256 of the DER certificate
)

var identitySources = []string{IdentityNone, IdentityCN, IdentitySubject, IdentitySANDNS, IdentitySANURI, IdentitySANEmail, IdentitySPIFFE, IdentitySHA256}

// Config is a whole Moat configuration. Parse and Load return it with every
// default filled in; the zero Config is not a usable setup (it has no
// listener): start from Default() when building one in code.
type Config struct {
	// Source is the file the configuration was read from ("" for Default).
	Source string `json:"source,omitempty" yaml:"-"`
	// Format is the syntax Source was written in ("" for Default).
	Format Format `json:"format,omitempty" yaml:"-"`

	// Listeners are the network endpoints, in file order. Default: one TLS
	// listener on :8883 (see Default). A mosquitto.conf without any
	// listener gets Mosquitto 2.0's "local only" listeners on
	// 127.0.0.1:1883 and [::1]:1883 with anonymous access.
	Listeners []Listener `json:"listeners" yaml:"listeners"`

	// Auth is the authentication chain of every listener that has no auth
	// list of its own: ordered backends (password_file, ldap, jwt,
	// introspection), tried after the certificate identity of a TLS
	// listener. Default none: only certificates and the anonymous policy
	// decide. mosquitto.conf: password_file (global unless
	// per_listener_settings true).
	Auth []AuthBackend `json:"auth,omitempty" yaml:"auth"`
	// ACL is the access policy: Moat rules and/or a Mosquitto acl_file.
	// Default nil. Without one, Moat YAML (and no configuration at all)
	// gets the default policy, DATA_DIR/acl.yaml, which confines each
	// identity to its own topics; a mosquitto.conf keeps Mosquitto's
	// meaning (every admitted client may do everything) and the broker
	// says so loudly at start. acl: {allow_all: true} is the explicit
	// opt-out for YAML. See docs/access-control.md.
	ACL *ACL `json:"acl,omitempty" yaml:"acl"`

	// Limits bound what one client may cost the broker.
	Limits Limits `json:"limits" yaml:"limits"`
	// Sessions controls persistent sessions.
	Sessions Sessions `json:"sessions" yaml:"sessions"`
	// RetainAvailable enables retained messages. Default true; when false a
	// client that publishes with the retain flag is disconnected
	// (Mosquitto retain_available).
	RetainAvailable bool `json:"retain_available" yaml:"retain_available"`
	// CheckRetainSource checks, when a retained message is replayed to a
	// new subscription, that its publisher may still publish it. Default
	// true (Mosquitto's check_retain_source, with the same default).
	CheckRetainSource bool `json:"check_retain_source,omitempty" yaml:"check_retain_source"`
	// DeniedPublishV3 is what happens to an MQTT 3.1.1 client whose
	// PUBLISH is not authorized: "drop" (default, as Mosquitto) or
	// "disconnect". MQTT 5 clients get reason code 0x87 either way.
	DeniedPublishV3 string `json:"denied_publish_v3,omitempty" yaml:"denied_publish_v3"`
	// SysInterval is the period of $SYS updates; 0 disables $SYS.
	// Default 10s (Mosquitto sys_interval).
	SysInterval Duration `json:"sys_interval" yaml:"sys_interval"`

	// Log configures the broker's structured log.
	Log Log `json:"log" yaml:"log"`
	// DataDir holds Moat's state: the built-in CA (DataDir/ca) and, when
	// persistence is on and Persistence.Location is empty, the store.
	// Default "moat-data", relative to the working directory.
	DataDir string `json:"data_dir" yaml:"data_dir"`
	// Persistence configures the encrypted on-disk store of persistent
	// sessions, queued and retained messages and wills
	// (docs/durability.md).
	Persistence Persistence `json:"persistence" yaml:"persistence"`
	// PIDFile, when set, is where the broker writes its process ID.
	// Default "" (none). Mosquitto pid_file.
	PIDFile string `json:"pid_file,omitempty" yaml:"pid_file"`
	// Admin configures the admin HTTP API, metrics and dashboard
	// (docs/operations.md). Default: off.
	Admin Admin `json:"admin,omitzero" yaml:"admin"`
	// Cluster joins this broker with others (docs/cluster.md). Default:
	// off. YAML only.
	Cluster Cluster `json:"cluster,omitzero" yaml:"cluster"`
	// Defense configures abuse detection, bans and rate limits (on by
	// default; docs/defense.md). mosquitto.conf has no keys for it: the
	// defaults apply.
	Defense Defense `json:"defense,omitzero" yaml:"defense"`
	// Audit configures the audit log (on by default, DataDir/audit.log;
	// docs/audit.md).
	Audit Audit `json:"audit,omitzero" yaml:"audit"`
	// Profile is the security profile: open, secure-network,
	// secure-transport or industry (docs/profiles.md). Default "" (none):
	// Moat's secure defaults and warnings, without a profile's hard
	// requirements. Checked by the start-up plan (ProfileViolations).
	Profile string `json:"profile,omitempty" yaml:"profile"`

	// Set lists the settings the file gave explicitly, as YAML paths such as
	// "limits.max_packet_size" or "listeners[0].tls.client_auth" (a
	// mosquitto.conf key is recorded under the path it maps to). Use IsSet.
	Set []string `json:"set,omitempty" yaml:"-"`
	// Notes are informational messages about keys that were accepted but
	// have no effect in Moat (for example mosquitto.conf's "user"), each
	// with file:line. The broker logs them at debug level.
	Notes []string `json:"notes,omitempty" yaml:"-"`

	// warnings found while parsing (for example a mosquitto.conf quirk that
	// opens an anonymous listener); Warnings adds the structural ones.
	parseWarnings []string
	// keyPos maps a setting's path to the "file:line" that set it, so that
	// Validate can point at the line.
	keyPos map[string]string
}

// Listener is one network endpoint.
type Listener struct {
	// Name identifies the listener in logs and metrics. Default
	// "<transport>-<port>", e.g. "tls-8883", made unique with a suffix.
	Name string `json:"name" yaml:"name"`
	// Address is host:port to listen on. An empty host (":8883") means all
	// interfaces, IPv4 and IPv6. Required.
	Address string `json:"address" yaml:"address"`
	// Network is "tcp" (IPv4 and IPv6, the default), "tcp4" or "tcp6"
	// (Mosquitto socket_domain ipv4/ipv6).
	Network string `json:"network" yaml:"network"`
	// Optional means a failure to bind is logged rather than fatal. Only
	// set on the [::1] listener of Mosquitto's local-only mode, which
	// Mosquitto also skips on hosts without IPv6.
	Optional bool `json:"optional,omitempty" yaml:"-"`
	// Transport is tcp, tls, ws or wss. Default tls.
	Transport Transport `json:"transport" yaml:"transport"`
	// WebSocketPath is the HTTP path a ws/wss listener upgrades on.
	// Default "" meaning any path (as Mosquitto does).
	WebSocketPath string `json:"websocket_path,omitempty" yaml:"websocket_path"`
	// TLS is the TLS policy; non-nil exactly when Transport is tls or wss.
	TLS *TLS `json:"tls,omitempty" yaml:"tls"`
	// ProxyProtocol accepts a PROXY protocol v1/v2 header from trusted
	// load balancers. Default disabled.
	ProxyProtocol ProxyProtocol `json:"proxy_protocol" yaml:"proxy_protocol"`

	// MaxConnections caps concurrent connections on this listener; 0 means
	// no cap. Default 0 (Mosquitto max_connections, per listener; -1 there
	// is read as 0).
	MaxConnections int `json:"max_connections" yaml:"max_connections"`
	// AllowAnonymous admits clients that present no credentials (no
	// username and, on TLS, no certificate identity). Default false. For
	// mosquitto.conf it is resolved with Mosquitto 2.0's rules
	// (per_listener_settings, local-only mode).
	AllowAnonymous bool `json:"allow_anonymous" yaml:"allow_anonymous"`
	// AllowZeroLengthClientID lets MQTT 3.1.1/5 clients connect with an
	// empty client ID and have one assigned. Default true.
	AllowZeroLengthClientID bool `json:"allow_zero_length_client_id" yaml:"allow_zero_length_client_id"`
	// AutoIDPrefix prefixes assigned client IDs. Default "auto-".
	AutoIDPrefix string `json:"auto_id_prefix" yaml:"auto_id_prefix"`
	// UseUsernameAsClientID replaces the client ID with the username
	// (Mosquitto use_username_as_clientid). Default false.
	UseUsernameAsClientID bool `json:"use_username_as_client_id,omitempty" yaml:"use_username_as_client_id"`
	// MaxQoS is the highest QoS clients may use (0-2). Default 2.
	MaxQoS int `json:"max_qos" yaml:"max_qos"`
	// MaxTopicAlias is the number of topic aliases an MQTT 5 client may
	// create (0-65535). Default 10.
	MaxTopicAlias int `json:"max_topic_alias" yaml:"max_topic_alias"`
	// Auth is this listener's authentication chain; when the file sets it
	// (even to an empty list) it replaces the global Auth for this
	// listener. mosquitto.conf: password_file with per_listener_settings
	// true.
	Auth []AuthBackend `json:"auth,omitempty" yaml:"auth"`
	// ACLFile is this listener's Mosquitto acl_file (mosquitto.conf with
	// per_listener_settings true only); it replaces the global ACL for
	// this listener. Not set from YAML: rules select listeners by name.
	ACLFile string `json:"acl_file,omitempty" yaml:"-"`

	// pos is "file:line" of the listener's definition, for error messages.
	pos string
}

// TLS is a listener's TLS policy.
type TLS struct {
	// Cert and Key are PEM files: the server certificate (followed by its
	// chain) and its private key. Both empty (the default) means "use the
	// built-in CA": the broker issues itself a server certificate from the
	// local CA in DataDir/ca, creating the CA on first run.
	Cert string `json:"cert,omitempty" yaml:"cert"`
	Key  string `json:"key,omitempty" yaml:"key"`
	// SNICertificates are further certificate and key pairs for the same
	// listener; a client is served the one whose names match the server
	// name it asks for (SNI), and Cert/Key otherwise. Default none.
	SNICertificates []CertKey `json:"sni_certificates,omitempty" yaml:"sni_certificates"`
	// ServerNames are the names ("DNS:x", "IP:y") of the certificate the
	// built-in CA issues when Cert is empty; "auto" stands for the
	// automatic set. Default empty: auto (localhost, loopback, the host
	// name and every non-loopback address of the host).
	ServerNames []string `json:"server_names,omitempty" yaml:"server_names"`
	// ClientCA is a PEM file of CA certificates trusted for client
	// certificates (Mosquitto cafile); ClientCADir a directory of them
	// (capath, files ending in .pem). Both empty means the built-in CA.
	ClientCA    string `json:"client_ca,omitempty" yaml:"client_ca"`
	ClientCADir string `json:"client_ca_dir,omitempty" yaml:"client_ca_dir"`
	// ClientAuth is none, optional or required. Default required.
	ClientAuth ClientAuth `json:"client_auth" yaml:"client_auth"`
	// MinVersion is "1.2" or "1.3". Default "1.2".
	MinVersion string `json:"min_version" yaml:"min_version"`
	// CipherSuites restricts TLS 1.2 cipher suites, by IANA name (e.g.
	// "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"). Default empty: Moat's
	// defaults (NIST SP 800-52r2). The names are translated, and checked
	// against the TLS policy (ECDHE and AEAD only), when the broker starts
	// or --check runs, not here: the policy lives in one place.
	// TLS 1.3 suites cannot be restricted in Go and are always AEAD.
	CipherSuites []string `json:"cipher_suites,omitempty" yaml:"cipher_suites"`
	// Ciphers is mosquitto.conf's `ciphers` line as written: an OpenSSL
	// cipher string, translated and checked like CipherSuites. Not set from
	// YAML. Default "".
	Ciphers string `json:"ciphers,omitempty" yaml:"-"`
	// AllowInsecureCiphers lets CipherSuites or Ciphers name suites the
	// policy refuses (CBC mode, RSA key exchange). Default false; when true
	// the broker warns about each such suite at every start. mosquitto.conf:
	// allow_insecure_ciphers true (a Moat extension, per listener).
	AllowInsecureCiphers bool `json:"allow_insecure_ciphers,omitempty" yaml:"allow_insecure_ciphers"`
	// CRL lists PEM CRL files checked on every handshake and, when they
	// change, against live connections (Mosquitto crlfile).
	CRL []string `json:"crl,omitempty" yaml:"crl"`
	// CRLStale is what happens when a CRL is past its nextUpdate: "refuse"
	// (default) refuses new client connections until a fresh CRL is
	// loaded; "warn" logs and keeps using it.
	CRLStale string `json:"crl_stale" yaml:"crl_stale"`
	// OCSP checks client certificates against their OCSP responder.
	OCSP OCSP `json:"ocsp" yaml:"ocsp"`
	// Identity maps the client certificate to MQTT identities.
	Identity Identity `json:"identity" yaml:"identity"`
}

// Admin is the admin HTTP listener.
type Admin struct {
	// Listen is the admin API's host:port; "" disables it. A plain HTTP
	// address must be loopback (HTTPS is used when the broker has a
	// certificate). moat serve --admin overrides it.
	Listen string `json:"listen,omitempty" yaml:"listen"`
}

// CertKey is a certificate chain file and its private key file.
type CertKey struct {
	Cert string `json:"cert" yaml:"cert"`
	Key  string `json:"key" yaml:"key"`
}

// OCSP configures live OCSP checks of client certificates.
type OCSP struct {
	// Mode is "off" (default), "fail-open" (an unreachable responder lets
	// the client in, logged) or "fail-closed" (it refuses the client).
	Mode string `json:"mode" yaml:"mode"`
	// Timeout bounds one OCSP request. Default 5s.
	Timeout Duration `json:"timeout" yaml:"timeout"`
	// CacheTTL bounds how long an OCSP answer is reused for new
	// handshakes (never past its nextUpdate). Default 1h.
	CacheTTL Duration `json:"cache_ttl,omitempty" yaml:"cache_ttl"`
	// Recheck is how often the certificate of a connected client is asked
	// about again, so that an OCSP-only revocation ends its session within
	// about this long. Default 5s.
	Recheck Duration `json:"recheck,omitempty" yaml:"recheck"`
}

// Identity maps a verified client certificate to MQTT identities.
type Identity struct {
	// UsernameFrom is none, cn, subject, san-dns, san-uri, san-email,
	// spiffe or sha256. Default none for YAML listeners (the MQTT username
	// is used), "cn" in Default(). Mosquitto use_identity_as_username maps
	// to cn, use_subject_as_username to subject; a certificate-derived
	// username replaces the one in CONNECT and no password is checked.
	UsernameFrom string `json:"username_from" yaml:"username_from"`
	// ClientIDFrom takes the client ID from the certificate in the same
	// way. Default none.
	ClientIDFrom string `json:"client_id_from" yaml:"client_id_from"`
	// BindClientID, when ClientIDFrom is not none, refuses a CONNECT whose
	// client ID differs from the certificate's instead of replacing it.
	// Default false.
	BindClientID bool `json:"bind_client_id,omitempty" yaml:"bind_client_id"`
}

// ProxyProtocol configures PROXY protocol support on a listener.
type ProxyProtocol struct {
	// Enabled requires a PROXY header from peers in Trusted. Default false.
	Enabled bool `json:"enabled" yaml:"enabled"`
	// Trusted lists the CIDR ranges of load balancers allowed to send the
	// header; connections from elsewhere are refused. Required when
	// Enabled.
	Trusted []string `json:"trusted,omitempty" yaml:"trusted"`
	// UsernameFrom takes the MQTT username from the client certificate a
	// TLS-terminating balancer reports in the PROXY v2 header (PP2_TYPE_SSL
	// with a verified client certificate): "cn" or, when the balancer sends
	// the certificate itself, any identity source. Default "none". Only
	// used when the broker does not terminate TLS itself.
	UsernameFrom string `json:"username_from,omitempty" yaml:"username_from"`
}

// Limits bound what one client may cost the broker.
type Limits struct {
	// MaxPacketSize is the largest MQTT packet accepted, header included; 0
	// means MQTT's own maximum (about 256 MiB). Default 1MiB, in
	// mosquitto.conf too unless the file sets max_packet_size (Mosquitto
	// has no limit; it forbids values below 20). Announced to MQTT 5
	// clients.
	MaxPacketSize Size `json:"max_packet_size" yaml:"max_packet_size"`
	// MessageSizeLimit is the largest PUBLISH payload forwarded; larger
	// messages are dropped (the QoS flow completes). 0 means no limit.
	// Default 0 (Mosquitto message_size_limit).
	MessageSizeLimit Size `json:"message_size_limit" yaml:"message_size_limit"`
	// ConnectTimeout is how long a new connection may take to complete
	// CONNECT (TLS handshake included). Default 10s in both syntaxes.
	ConnectTimeout Duration `json:"connect_timeout" yaml:"connect_timeout"`
	// ReauthGrace is how long past the expiry of its token a client that
	// connected with MQTT 5 enhanced authentication may stay connected to
	// re-authenticate with a fresh one (docs/access-control.md). Default
	// 30s in both syntaxes.
	ReauthGrace Duration `json:"reauth_grace" yaml:"reauth_grace"`
	// MaxKeepalive is the largest keepalive, in seconds, a client may use
	// (10-65535); MQTT 5 clients asking for more are told this value.
	// Default 65535 (Mosquitto max_keepalive).
	MaxKeepalive int `json:"max_keepalive" yaml:"max_keepalive"`
	// MaxInflight is the number of outgoing QoS 1/2 messages in flight per
	// client; 0 means no limit other than MQTT's own (65535 packet
	// identifiers). Default 20 (Mosquitto max_inflight_messages).
	MaxInflight int `json:"max_inflight" yaml:"max_inflight"`
	// MaxInflightBytes bounds in-flight bytes per client; 0 means no
	// limit. Default 0.
	MaxInflightBytes Size `json:"max_inflight_bytes" yaml:"max_inflight_bytes"`
	// MaxQueuedMessages is the number of QoS 1/2 messages queued per
	// client beyond those in flight; 0 means Mosquitto's "no maximum",
	// which Moat bounds at MaxQueuedNoLimit (warned about). Default 1000.
	MaxQueuedMessages int `json:"max_queued_messages" yaml:"max_queued_messages"`
	// MaxQueuedBytes bounds the topic and payload bytes queued per client
	// beyond those in flight (Mosquitto counts the payload alone); a queue
	// takes messages while it holds fewer bytes. 0 means no limit.
	// Default 0.
	MaxQueuedBytes Size `json:"max_queued_bytes" yaml:"max_queued_bytes"`
	// MaxSessions caps the sessions (live and offline) the broker holds;
	// a CONNECT that would create one more is refused (0x97). 0 means no
	// cap. Default 0.
	MaxSessions int `json:"max_sessions" yaml:"max_sessions"`
	// MaxSubscriptions is the number of subscriptions one client session
	// may hold. Default 10000.
	MaxSubscriptions int `json:"max_subscriptions" yaml:"max_subscriptions"`
	// MaxTopicLevels is the largest number of '/'-separated levels in a
	// topic name or filter (each level costs the broker an index node).
	// Default 128.
	MaxTopicLevels int `json:"max_topic_levels" yaml:"max_topic_levels"`
	// QueueQoS0 also queues QoS 0 messages for offline persistent clients
	// (non-standard). Default false.
	QueueQoS0 bool `json:"queue_qos0" yaml:"queue_qos0"`

	// Mosquitto has no key for the limits below, nor for MaxSessions,
	// MaxSubscriptions, MaxTopicLevels and ConnectTimeout; a mosquitto.conf
	// may set each under its YAML name as a Moat extension (MaxConnections
	// as global_max_connections, since max_connections is per listener
	// there; ConnectTimeout in whole seconds).

	// MaxConnections caps concurrent client connections over all
	// listeners (listeners[].max_connections caps one listener). 0, the
	// default, means the process's open-file limit (RLIMIT_NOFILE) less 64.
	MaxConnections int `json:"max_connections" yaml:"max_connections"`
	// MaxPreAuthPacketSize is the largest packet accepted before the
	// client is authenticated (CONNECT), refused from its fixed header
	// before any allocation. Default 64KiB.
	MaxPreAuthPacketSize Size `json:"max_preauth_packet_size" yaml:"max_preauth_packet_size"`
	// MaxTopicLength is the largest topic name or filter in bytes.
	// Default 1024.
	MaxTopicLength int `json:"max_topic_length" yaml:"max_topic_length"`
	// MaxSubscriptionBytes bounds the sum of a session's filter lengths.
	// Default 1MiB.
	MaxSubscriptionBytes Size `json:"max_subscription_bytes" yaml:"max_subscription_bytes"`
	// MaxRetainedMessages and MaxRetainedBytes bound the retained store;
	// the PerIdentity variants bound what one identity (username, else
	// client ID) may store. Defaults 100000, 256MiB, 1000, 16MiB.
	MaxRetainedMessages            int  `json:"max_retained_messages" yaml:"max_retained_messages"`
	MaxRetainedBytes               Size `json:"max_retained_bytes" yaml:"max_retained_bytes"`
	MaxRetainedMessagesPerIdentity int  `json:"max_retained_messages_per_identity" yaml:"max_retained_messages_per_identity"`
	MaxRetainedBytesPerIdentity    Size `json:"max_retained_bytes_per_identity" yaml:"max_retained_bytes_per_identity"`
	// ReadBudget bounds the bytes of packets being read at once over all
	// connections; a read waits while it is spent. Default 64MiB.
	ReadBudget Size `json:"read_budget" yaml:"read_budget"`

	// Overload control (docs/design/broker.md, "Overload control").
	// PushbackMessages and PushbackBytes are the backlog of one connected
	// client (QoS 1/2 messages queued behind its in-flight window, and
	// apart from them QoS 0 messages not yet written) at which the
	// publishers of the messages it receives are held back: Moat stops
	// reading from them until the backlog goes down, so that their own
	// in-flight windows fill instead of Moat's memory. 0 turns holding
	// back off (PushbackBytes 0: only the message mark). Defaults 100 and
	// 1MiB.
	PushbackMessages int  `json:"pushback_messages" yaml:"pushback_messages"`
	PushbackBytes    Size `json:"pushback_bytes" yaml:"pushback_bytes"`
	// PushbackWait is how long a client may hold a publisher back before
	// it counts as slow, when the publisher also feeds clients that keep
	// up or when the client took nothing from its backlog meanwhile; a
	// slow client's messages queue up to max_queued_messages and
	// queue_full_policy applies. Default 1s.
	PushbackWait Duration `json:"pushback_wait" yaml:"pushback_wait"`
	// QueueFullPolicy is what happens to a QoS 1/2 message for a
	// connected client whose queue is full: "drop" (default, as
	// Mosquitto: dropped, counted and logged) or "block" (queued anyway,
	// its publisher held back until there is room: nothing is lost, but a
	// client that stops acknowledging stops its publishers). Offline
	// clients' full queues always drop.
	QueueFullPolicy string `json:"queue_full_policy" yaml:"queue_full_policy"`
}

// Queue-full policies (Limits.QueueFullPolicy).
const (
	QueueFullDrop  = "drop"
	QueueFullBlock = "block"
)

// Sessions controls persistent sessions.
type Sessions struct {
	// PersistentClientExpiration removes persistent sessions (clean
	// session false) that have not reconnected for this long; 0 (default)
	// keeps them forever, as MQTT 3.1.1 says. In mosquitto.conf the value
	// is N followed by h, d, w, m (30 days) or y (365 days).
	PersistentClientExpiration Duration `json:"persistent_client_expiration" yaml:"persistent_client_expiration"`
	// IgnoreOwner lets any client that knows a client ID resume that
	// session, receive its queued messages and disconnect its owner, as
	// Mosquitto does. Default false: a session belongs to the identity
	// that created it and other identities are refused. Only for closed
	// networks; the broker warns at start. In mosquitto.conf:
	// session_owner_check false (a Moat extension).
	IgnoreOwner bool `json:"ignore_owner,omitempty" yaml:"ignore_owner"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default info. Mosquitto
	// log_type maps to the most verbose type listed.
	Level string `json:"level" yaml:"level"`
	// Format is text or json. Default text.
	Format string `json:"format" yaml:"format"`
	// Dest lists destinations: stderr, stdout, file. Empty means no
	// logging. Default [stderr] (Mosquitto log_dest; "none" is empty).
	Dest Dests `json:"dest" yaml:"dest"`
	// File is the log file when Dest contains "file".
	File string `json:"file,omitempty" yaml:"file"`
	// Timestamps adds a time to each record. Default true
	// (Mosquitto log_timestamp).
	Timestamps bool `json:"timestamps" yaml:"timestamps"`
	// TimestampFormat is a strftime format for the time of each record
	// (Mosquitto log_timestamp_format; see StrftimeSpecifiers). Default
	// empty: RFC 3339 with nanoseconds.
	TimestampFormat string `json:"timestamp_format,omitempty" yaml:"timestamp_format"`
	// ConnectionMessages logs client connects and disconnects. Default
	// true (Mosquitto connection_messages).
	ConnectionMessages bool `json:"connection_messages" yaml:"connection_messages"`
}

// Persistence configures the on-disk store.
type Persistence struct {
	// Enabled keeps sessions, queued and retained messages across
	// restarts. Default true in YAML and Default(); false for
	// mosquitto.conf unless "persistence true" (Mosquitto's default).
	Enabled bool `json:"enabled" yaml:"enabled"`
	// Location is the directory of the store; "" means DataDir/store
	// (Mosquitto persistence_location).
	Location string `json:"location,omitempty" yaml:"location"`
	// AutosaveInterval is accepted for mosquitto.conf compatibility
	// (autosave_interval, default 30m) and changes nothing: Moat's store
	// commits every change before it is acknowledged.
	AutosaveInterval Duration `json:"autosave_interval" yaml:"autosave_interval"`
	// Sync is when a commit is reported durable: "always" (default: fsync,
	// group commit), "batch" (fsync every BatchInterval) or "off".
	Sync string `json:"sync" yaml:"sync"`
	// BatchInterval is the fsync period of sync batch. Default 1s.
	BatchInterval Duration `json:"batch_interval" yaml:"batch_interval"`
	// KeyFile holds the key-encryption key (32 bytes or 64 hex digits,
	// mode 0600). "" means store.key in the store directory, created on
	// first start; MOAT_STORE_KEY in the environment overrides both.
	KeyFile string `json:"key_file,omitempty" yaml:"key_file"`
}

// IsSet reports whether the file set the setting at path explicitly, e.g.
// IsSet("limits.max_packet_size") or IsSet("listeners[0].allow_anonymous").
func (c *Config) IsSet(path string) bool {
	_, ok := slices.BinarySearch(c.Set, path)
	return ok
}

// Default returns Moat's secure zero-configuration setup: one TLS listener
// named "mqtts" on :8883 (all interfaces), client certificates required
// and verified against the built-in CA (empty certificate paths mean the
// broker's own CA in DataDir/ca issues the server certificate, created on
// first run), the certificate CN as username, anonymous access refused,
// and no plain listener.
func Default() *Config {
	c := &Config{
		RetainAvailable: true,
		SysInterval:     Duration(10e9),
		Log:             defaultLog(),
		DataDir:         "moat-data",
		Limits:          defaultLimits(),
		Persistence:     Persistence{Enabled: true, AutosaveInterval: Duration(1800e9), Sync: "always", BatchInterval: Duration(1e9)},
	}
	c.CheckRetainSource = true
	l := defaultListener()
	l.Name = "mqtts"
	l.Address = ":8883"
	l.TLS.Identity.UsernameFrom = IdentityCN
	c.Listeners = []Listener{l}
	return c
}

func defaultLog() Log {
	return Log{Level: "info", Format: "text", Dest: []string{"stderr"}, Timestamps: true, ConnectionMessages: true}
}

func defaultLimits() Limits {
	return Limits{
		MaxPacketSize:     1 << 20,
		ConnectTimeout:    Duration(10e9),
		ReauthGrace:       Duration(30e9),
		MaxKeepalive:      65535,
		MaxInflight:       20,
		MaxQueuedMessages: 1000,
		MaxTopicLevels:    128,
		MaxSubscriptions:  10000,

		MaxPreAuthPacketSize:           64 << 10,
		MaxTopicLength:                 1024,
		MaxSubscriptionBytes:           1 << 20,
		MaxRetainedMessages:            100000,
		MaxRetainedBytes:               256 << 20,
		MaxRetainedMessagesPerIdentity: 1000,
		MaxRetainedBytesPerIdentity:    16 << 20,
		ReadBudget:                     64 << 20,

		PushbackMessages: 100,
		PushbackBytes:    1 << 20,
		PushbackWait:     Duration(1e9),
		QueueFullPolicy:  QueueFullDrop,
	}
}

// SafeDefaults lists the limits a mosquitto.conf gets from Moat rather
// than from Mosquitto, whose defaults are unlimited or which has no key for
// them: every limit the file does not set (with max_packet_size, or the
// Moat extensions such as read_budget). It returns nil for other formats.
func (c *Config) SafeDefaults() []string {
	if c.Format != FormatMosquitto {
		return nil
	}
	lim := &c.Limits
	conns := "RLIMIT_NOFILE-64"
	if lim.MaxConnections > 0 {
		conns = strconv.Itoa(lim.MaxConnections)
	}
	var out []string
	for _, d := range []struct{ path, text string }{
		{"max_packet_size", "max_packet_size=" + lim.MaxPacketSize.String()},
		{"max_connections", "max_connections(all listeners)=" + conns},
		{"max_preauth_packet_size", "max_preauth_packet_size=" + lim.MaxPreAuthPacketSize.String()},
		{"max_topic_length", "max_topic_length=" + strconv.Itoa(lim.MaxTopicLength)},
		{"max_topic_levels", "max_topic_levels=" + strconv.Itoa(lim.MaxTopicLevels)},
		{"max_subscriptions", "max_subscriptions=" + strconv.Itoa(lim.MaxSubscriptions)},
		{"max_subscription_bytes", "max_subscription_bytes=" + lim.MaxSubscriptionBytes.String()},
		{"max_retained_messages", "max_retained_messages=" + strconv.Itoa(lim.MaxRetainedMessages)},
		{"max_retained_bytes", "max_retained_bytes=" + lim.MaxRetainedBytes.String()},
		{"max_retained_messages_per_identity", "max_retained_messages_per_identity=" + strconv.Itoa(lim.MaxRetainedMessagesPerIdentity)},
		{"max_retained_bytes_per_identity", "max_retained_bytes_per_identity=" + lim.MaxRetainedBytesPerIdentity.String()},
		{"read_budget", "read_budget=" + lim.ReadBudget.String()},
	} {
		if !c.IsSet("limits." + d.path) {
			out = append(out, d.text)
		}
	}
	return out
}

// defaultListener is a TLS listener with every per-listener default set
// and no address.
func defaultListener() Listener {
	return Listener{
		Network:                 "tcp",
		Transport:               TransportTLS,
		TLS:                     defaultTLS(),
		AllowZeroLengthClientID: true,
		AutoIDPrefix:            "auto-",
		MaxQoS:                  2,
		MaxTopicAlias:           10,
	}
}

func defaultTLS() *TLS {
	return &TLS{
		ClientAuth: ClientAuthRequired,
		MinVersion: "1.2",
		CRLStale:   "refuse",
		OCSP:       OCSP{Mode: "off", Timeout: Duration(5e9)},
		Identity:   Identity{UsernameFrom: IdentityNone, ClientIDFrom: IdentityNone},
	}
}

// where prefixes msg with the listener's position and name.
func (l *Listener) where() string {
	var b strings.Builder
	if l.pos != "" {
		b.WriteString(l.pos)
		b.WriteString(": ")
	}
	fmt.Fprintf(&b, "listener %q", l.Name)
	return b.String()
}
