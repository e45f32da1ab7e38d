package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"time"
)

// ClientAuth is a listener's client certificate policy.
type ClientAuth int

const (
	// ClientAuthRequired (the zero value) refuses a client that does not
	// present a valid certificate during the handshake (mosquitto.conf
	// `require_certificate true`).
	ClientAuthRequired ClientAuth = iota
	// ClientAuthOptional asks for a certificate and verifies it when one is
	// presented; clients without one may authenticate in CONNECT.
	ClientAuthOptional
	// ClientAuthNone does not ask for a client certificate (server
	// authentication only).
	ClientAuthNone
)

func (c ClientAuth) String() string {
	switch c {
	case ClientAuthRequired:
		return "required"
	case ClientAuthOptional:
		return "optional"
	case ClientAuthNone:
		return "none"
	}
	return fmt.Sprintf("ClientAuth(%d)", int(c))
}

// CRLStalePolicy says what happens when a CRL is past its nextUpdate.
type CRLStalePolicy int

const (
	// CRLStaleRefuse (the zero value) refuses certificates whose issuer's
	// CRL is stale and disconnects live sessions that depend on it, as
	// OpenSSL (and so Mosquitto) does.
	CRLStaleRefuse CRLStalePolicy = iota
	// CRLStaleWarn keeps using the stale CRL and logs a warning.
	CRLStaleWarn
)

// OCSPMode selects OCSP checking of client certificates.
type OCSPMode int

const (
	// OCSPOff (the zero value) does not query OCSP responders.
	OCSPOff OCSPMode = iota
	// OCSPFailOpen queries the responder named in the certificate's AIA and
	// refuses revoked certificates; an unreachable responder, an invalid or
	// "unknown" answer, or a certificate without a responder is logged and
	// the client accepted.
	OCSPFailOpen
	// OCSPFailClosed is OCSPFailOpen that refuses the client whenever a
	// "good" answer cannot be obtained.
	OCSPFailClosed
)

func (m OCSPMode) String() string {
	switch m {
	case OCSPOff:
		return "off"
	case OCSPFailOpen:
		return "fail-open"
	case OCSPFailClosed:
		return "fail-closed"
	}
	return fmt.Sprintf("OCSPMode(%d)", int(m))
}

// OCSPConfig configures OCSP checking of client certificates and the
// fetching of the server's staple.
type OCSPConfig struct {
	// Mode enables checking of client certificates. Default OCSPOff.
	Mode OCSPMode
	// Timeout bounds one responder request. Default 5s.
	Timeout time.Duration
	// CacheTTL bounds how long a response is trusted: a response is cached
	// until its nextUpdate or CacheTTL, whichever comes first, and live
	// sessions are re-checked when their cached answer expires. Default 1h.
	CacheTTL time.Duration
	// LiveRecheck is how often the certificate of a connected client is
	// asked about again, whatever the cache says, so that a revocation
	// known only to the responder ends the session within about this
	// long. At most 64 re-checks start per poll interval, so with many
	// distinct certificates a full cycle takes longer. Default 5s;
	// negative disables re-checks before the cache expires.
	LiveRecheck time.Duration
	// HTTPClient sends requests. Default: a client with no proxy and
	// Timeout applied per request.
	HTTPClient *http.Client
}

// CRLRenewer keeps one CRL file fresh.
type CRLRenewer struct {
	// File is the CRL file Renew writes; it must be one of CRLFiles.
	File string
	// Renew writes a fresh CRL to File (atomically, under the CA's own
	// lock). The Manager calls it from a goroutine it owns and waits for on
	// Close, never twice at once for one Manager, and retries a failure
	// after a minute. It should return within a few seconds.
	Renew func() error
}

// KeyPair names a PEM certificate chain file and its private key file.
type KeyPair struct {
	CertFile string
	KeyFile  string
}

// ListenerConfig is the TLS configuration of one listener. The zero value
// with one certificate and a CA is the secure default: TLS 1.2 minimum,
// AEAD+ECDHE suites, X25519MLKEM768 first, client certificates required and
// verified, session tickets with rotating keys, OCSP stapling when the server
// certificate names a responder. New does not modify the struct.
type ListenerConfig struct {
	// Name identifies the listener in log lines (e.g. "mqtts :8883").
	Name string

	// Certificates are the server certificate chains and keys (mosquitto
	// `certfile`/`keyfile`). The first is served when the client sends no
	// SNI name or none matches; the others are chosen by SNI. Required.
	Certificates []KeyPair

	// CAFile is a PEM bundle of CAs trusted to issue client certificates
	// (mosquitto `cafile`). CAPath is a directory of CA certificates
	// (mosquitto `capath`): every *.pem, *.crt, *.cer file and OpenSSL
	// hashed name (e.g. 9d66eef0.0) in it is loaded. At least one is
	// required unless ClientAuth is ClientAuthNone.
	CAFile string
	CAPath string

	// ClientAuth is the client certificate policy. Default ClientAuthRequired.
	ClientAuth ClientAuth

	// MinVersion is tls.VersionTLS12 (the default when 0) or
	// tls.VersionTLS13 for a TLS 1.3-only listener. Lower versions are
	// refused.
	MinVersion uint16

	// CipherSuites overrides DefaultCipherSuites (FIPSCipherSuites in FIPS
	// 140-3 mode) for TLS 1.2. Suites without forward secrecy or AEAD are
	// refused by New unless AllowInsecureCipherSuites is set (and then
	// logged as a warning); in FIPS 140-3 mode suites that mode does not
	// approve are refused whatever AllowInsecureCipherSuites says.
	CipherSuites              []uint16
	AllowInsecureCipherSuites bool

	// TLS13CipherSuites, when not empty, restricts the TLS 1.3 suites a
	// handshake may settle on (mosquitto `ciphers_tls1.3`). Go negotiates
	// TLS 1.3 suites itself, so a handshake that picks one outside the list
	// is refused after negotiation. Default: all (every TLS 1.3 suite is AEAD
	// with forward secrecy).
	TLS13CipherSuites []uint16

	// CurvePreferences overrides DefaultCurvePreferences
	// (FIPSCurvePreferences in FIPS 140-3 mode, where X25519 alone is
	// refused by New).
	CurvePreferences []tls.CurveID

	// NextProtos are the ALPN protocols offered (e.g. "mqtt"). Default none.
	NextProtos []string

	// CRLFiles are PEM or DER CRL files (mosquitto `crlfile`). When any is
	// set, a client whose issuer has no CRL among them is refused, as with
	// OpenSSL's CRL check. They are reloaded when they change.
	CRLFiles []string
	// CRLStalePolicy applies when a CRL is past its nextUpdate. Default
	// CRLStaleRefuse.
	CRLStalePolicy CRLStalePolicy
	// CRLRenewers name the CRL files this process can re-sign itself (the
	// built-in CA's crl.pem). Each is renewed once half of its loaded
	// CRL's validity has passed, and reloaded at once. Default none: every
	// CRL is published by someone else, and a CRL close to its nextUpdate
	// is only warned about.
	CRLRenewers []CRLRenewer
	// Revoked, when set, is asked about every certificate of a verified
	// chain but its root, with the certificate that issued it, besides
	// the CRLs: revoked true refuses the certificate (ReasonRevoked, with
	// detail), in the handshake and in the re-checks of live connections.
	// It carries revocations learnt elsewhere (a cluster's other nodes);
	// it must only report a revocation signed by issuer, be safe for
	// concurrent use and fast (it runs in every handshake). Default nil:
	// only the CRLs and OCSP decide.
	Revoked func(cert, issuer *x509.Certificate) (detail string, revoked bool)

	// OCSP configures OCSP checking of client certificates (off by default)
	// and the requests made for stapling.
	OCSP OCSPConfig
	// DisableOCSPStapling turns off fetching and stapling an OCSP response
	// for server certificates that name a responder. Default: stapling on.
	DisableOCSPStapling bool

	// DisableSessionTickets turns off TLS session resumption.
	DisableSessionTickets bool
	// TicketKeyRotation is how often a new session ticket key is made.
	// Default 1h.
	TicketKeyRotation time.Duration
	// TicketKeyLifetime is how long a ticket key stays valid for resuming
	// sessions after it was made; tickets encrypted under older keys are
	// refused (a full handshake follows). Default 3 × TicketKeyRotation.
	// It bounds the age of any ticket that still resumes a session.
	TicketKeyLifetime time.Duration
	// TicketKeyStore, when set, keeps the ticket keys across restarts: New
	// restores the saved keys still within TicketKeyLifetime, and every
	// new key is saved before it seals a ticket, so that clients resume
	// their sessions after a restart instead of all doing full handshakes
	// at once. A resumed session passes the same checks as a full
	// handshake (chain, validity, CRLs, OCSP: VerifyConnection runs on
	// resumption too). Default nil: the keys live in this process only,
	// and after a restart every client does a full handshake.
	TicketKeyStore TicketKeyStore

	// Identity maps a client certificate to an MQTT username and client ID.
	// The zero value maps nothing.
	Identity IdentityMapping

	// PollInterval is how often files are checked for changes and live
	// sessions for expiry and stale CRLs. Default 1s; it must not exceed 5s.
	PollInterval time.Duration
	// DisableFileWatch turns off automatic reload; Reload still works.
	DisableFileWatch bool

	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// Rand is the randomness source for TLS and ticket keys. Default
	// crypto/rand.
	Rand io.Reader
	// Logger receives every refusal, reload and drop. Default slog.Default().
	Logger *slog.Logger
}

const (
	defaultOCSPTimeout    = 5 * time.Second
	defaultOCSPCacheTTL   = time.Hour
	defaultOCSPRecheck    = 5 * time.Second
	defaultTicketRotation = time.Hour
	defaultPollInterval   = time.Second
	maxPollInterval       = 5 * time.Second
)

// validate checks the configuration and returns every problem at once.
func (c *ListenerConfig) validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf("tlsconf: "+format, a...)) }
	if len(c.Certificates) == 0 {
		add("no server certificate: set certfile and keyfile")
	}
	for i, kp := range c.Certificates {
		if kp.CertFile == "" || kp.KeyFile == "" {
			add("certificate %d: both certfile and keyfile are required", i+1)
		}
	}
	switch c.ClientAuth {
	case ClientAuthRequired, ClientAuthOptional:
		if c.CAFile == "" && c.CAPath == "" {
			add("client certificates are %s but no cafile or capath is set to verify them", c.ClientAuth)
		}
	case ClientAuthNone:
		if len(c.CRLFiles) > 0 {
			add("crlfile is set but client certificates are not requested")
		}
		if c.OCSP.Mode != OCSPOff {
			add("OCSP checking is on but client certificates are not requested")
		}
	default:
		add("unknown client auth mode %d", int(c.ClientAuth))
	}
	switch c.MinVersion {
	case 0, tls.VersionTLS12, tls.VersionTLS13:
	default:
		add("minimum TLS version %s is not allowed: use TLS 1.2 or TLS 1.3", tls.VersionName(c.MinVersion))
	}
	for _, id := range c.CipherSuites {
		s := suiteByID(id)
		switch {
		case s.id == 0 && id != 0:
			add("cipher suite %s is not supported", tls.CipherSuiteName(id))
		case s.tls13:
			add("cipher suite %s is a TLS 1.3 suite: use TLS13CipherSuites", tls.CipherSuiteName(id))
		case !s.secure() && !c.AllowInsecureCipherSuites:
			add("cipher suite %s is refused by policy (%s)", tls.CipherSuiteName(id), s.whyInsecure())
		case s.fipsRefuses():
			add("cipher suites: %s is %s", tls.CipherSuiteName(id), fipsNote())
		}
	}
	for _, id := range c.TLS13CipherSuites {
		switch s := suiteByID(id); {
		case !s.tls13:
			add("%s is not a TLS 1.3 cipher suite", tls.CipherSuiteName(id))
		case s.fipsRefuses():
			add("TLS 1.3 cipher suites (ciphers_tls1.3): %s is %s", tls.CipherSuiteName(id), fipsNote())
		}
	}
	for _, cv := range c.CurvePreferences {
		switch {
		case !slices.Contains([]tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024, tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}, cv):
			add("unsupported key exchange group %v", cv)
		case fipsRefusesGroup(cv):
			add("key exchange groups: %v is %s", cv, fipsNote())
		}
	}
	switch c.CRLStalePolicy {
	case CRLStaleRefuse, CRLStaleWarn:
	default:
		add("unknown CRL stale policy %d", int(c.CRLStalePolicy))
	}
	for i, r := range c.CRLRenewers {
		if r.Renew == nil {
			add("CRL renewer %d (%s) has no Renew function", i+1, r.File)
		}
		if !slices.Contains(c.CRLFiles, r.File) {
			add("CRL renewer %d: %q is not one of the crlfiles", i+1, r.File)
		}
	}
	switch c.OCSP.Mode {
	case OCSPOff, OCSPFailOpen, OCSPFailClosed:
	default:
		add("unknown OCSP mode %d", int(c.OCSP.Mode))
	}
	if c.OCSP.Timeout < 0 || c.OCSP.CacheTTL < 0 {
		add("OCSP timeout and cache TTL must not be negative")
	}
	if c.TicketKeyRotation < 0 || c.TicketKeyLifetime < 0 {
		add("session ticket key rotation and lifetime must not be negative")
	}
	if c.TicketKeyLifetime > 0 && c.TicketKeyLifetime < c.ticketRotation() {
		add("session ticket key lifetime %v is shorter than the rotation interval %v", c.TicketKeyLifetime, c.ticketRotation())
	}
	if c.PollInterval < 0 || c.PollInterval > maxPollInterval {
		add("poll interval %v must be between 0 (default 1s) and %v so revocation takes effect in time", c.PollInterval, maxPollInterval)
	}
	if err := c.Identity.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *ListenerConfig) ticketRotation() time.Duration {
	if c.TicketKeyRotation > 0 {
		return c.TicketKeyRotation
	}
	return defaultTicketRotation
}

func (c *ListenerConfig) ticketLifetime() time.Duration {
	if c.TicketKeyLifetime > 0 {
		return c.TicketKeyLifetime
	}
	return 3 * c.ticketRotation()
}
