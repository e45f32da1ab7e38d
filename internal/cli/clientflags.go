package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/pflag"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/authn/scram"
	"github.com/moatmq/moat/internal/packet"
)

// getenv is os.Getenv; tests replace it.
var getenv = os.Getenv

// passwordEnv is the environment variable holding the MQTT password for
// moat pub and moat sub.
const passwordEnv = "MOAT_PASSWORD"

// proxyPasswordEnv holds the SOCKS5 proxy password when --proxy names a
// user without a password.
const proxyPasswordEnv = "MOAT_PROXY_PASSWORD"

// clientFlags are the connection flags shared by moat pub and moat sub,
// named as in mosquitto_pub and mosquitto_sub.
type clientFlags struct {
	host, url, proxy       string
	port                   int
	id, idPrefix           string
	username, password     string
	passwordFile           string
	authMethod             string
	version                string
	keepAlive              int
	disableClean           bool
	sessionExpiry          string
	qos                    int
	cafile, capath         string
	cert, key              string
	insecure, tls          bool
	tlsVersion             string
	osCerts                bool
	quiet                  bool
	debug, json            bool
	willTopic, willPayload string
	willQoS                int
	willRetain             bool
	connectTimeout         time.Duration
}

func (f *clientFlags) register(fs *pflag.FlagSet) {
	// -h is the host, as in mosquitto; help is --help only.
	fs.Bool("help", false, "help for this command")
	fs.StringVarP(&f.host, "host", "h", "localhost", "broker host")
	fs.IntVarP(&f.port, "port", "p", 0, "broker port (default 8883 with TLS, 1883 without)")
	fs.StringVarP(&f.url, "url", "L", "", "broker URL: mqtt://, mqtts://, ws:// or wss://host[:port][/path]; for mqtt(s) the path is the topic, as in mosquitto")
	fs.StringVarP(&f.id, "id", "i", "", "client ID (default: assigned by the server with MQTT 5, random otherwise)")
	fs.StringVarP(&f.idPrefix, "id-prefix", "I", "", "client ID prefix; a random suffix is added")
	fs.StringVarP(&f.username, "username", "u", "", "user name")
	fs.StringVarP(&f.password, "pw", "P", "", "password ON THE COMMAND LINE (visible to other users; prefer --password-file or $"+passwordEnv+")")
	fs.StringVar(&f.passwordFile, "password-file", "", "read the password from the first line of FILE")
	fs.StringVar(&f.authMethod, "auth-method", "", "MQTT 5 enhanced authentication: SCRAM-SHA-256 or SCRAM-SHA-512 with -u and the password (the password is then not sent), or moat-jwt with a JWT as the password")
	fs.StringVarP(&f.version, "protocol-version", "V", "5", "MQTT version: 5 (mqttv5), 311 (mqttv311) or 31 (mqttv31)")
	fs.IntVarP(&f.keepAlive, "keepalive", "k", 60, "keep alive in seconds (0 disables)")
	fs.BoolVarP(&f.disableClean, "disable-clean-session", "c", false, "keep the session after disconnecting (needs -i)")
	fs.StringVarP(&f.sessionExpiry, "session-expiry-interval", "x", "", "MQTT 5 session expiry in seconds, -1 or ∞ for never (default 0, or never with -c)")
	fs.IntVarP(&f.qos, "qos", "q", 0, "quality of service: 0, 1 or 2")
	fs.StringVar(&f.cafile, "cafile", "", "PEM file of trusted CA certificates; enables TLS")
	fs.StringVar(&f.capath, "capath", "", "directory of trusted CA certificates (PEM); enables TLS")
	fs.StringVar(&f.cert, "cert", "", "client certificate (PEM) for mutual TLS; enables TLS")
	fs.StringVar(&f.key, "key", "", "private key (PEM) of --cert")
	fs.BoolVar(&f.tls, "tls", false, "use TLS with the system's trusted CAs")
	fs.StringVar(&f.tlsVersion, "tls-version", "", "TLS version: tlsv1.3 or tlsv1.2 (default: either, 1.3 preferred); enables TLS")
	fs.BoolVar(&f.osCerts, "tls-use-os-certs", false, "also trust the system's CA certificates (with --cafile/--capath); enables TLS")
	fs.BoolVar(&f.insecure, "insecure", false, "do not check that the server certificate matches the host name (DANGEROUS)")
	fs.StringVar(&f.proxy, "proxy", "", "SOCKS5 proxy: socks5://[user@]host:port (local DNS) or socks5h://… (proxy resolves); password from $"+proxyPasswordEnv)
	fs.BoolVarP(&f.debug, "debug", "d", false, "print connection events on stderr")
	fs.BoolVar(&f.json, "json", false, "print JSON lines, for scripts")
	fs.StringVar(&f.willTopic, "will-topic", "", "will message topic")
	fs.StringVar(&f.willPayload, "will-payload", "", "will message payload")
	fs.IntVar(&f.willQoS, "will-qos", 0, "will message QoS")
	fs.BoolVar(&f.willRetain, "will-retain", false, "retain the will message")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 30*time.Second, "give up connecting after this long")
}

// registerPubSub adds the flags of moat pub and moat sub only (they
// parse their command line with parseClientArgs).
func (f *clientFlags) registerPubSub(fs *pflag.FlagSet) {
	// Taken out by parseClientArgs; registered for --help.
	fs.StringArrayP("property", "D", nil, "MQTT 5 property, as mosquitto: -D COMMAND PROPERTY VALUE (user-property: KEY VALUE), e.g. -D connect session-expiry-interval 60 (repeatable)")
	fs.BoolVar(&f.quiet, "quiet", false, "do not print error messages or warnings (the exit status still tells)")
}

// parseVersion accepts mosquitto's -V spellings.
func parseVersion(s string) (client.Version, error) {
	switch strings.ToLower(s) {
	case "5", "mqttv5":
		return client.V5, nil
	case "311", "mqttv311":
		return client.V311, nil
	case "31", "mqttv31":
		return client.V31, nil
	}
	return 0, fmt.Errorf("unknown protocol version %q: use 5, 311 or 31 (or mqttv5, mqttv311, mqttv31)", s)
}

// config builds the client configuration. topic is the topic taken from
// an mqtt(s):// URL path, if any.
func (f *clientFlags) config(fs *pflag.FlagSet, stdio Stdio) (cfg client.Config, topic string, err error) {
	warn := func(format string, args ...any) { fmt.Fprintf(stdio.Err, "moat: warning: "+format+"\n", args...) }
	v, err := parseVersion(f.version)
	if err != nil {
		return cfg, "", err
	}
	cfg.Version = v
	if f.qos < 0 || f.qos > 2 || f.willQoS < 0 || f.willQoS > 2 {
		return cfg, "", errors.New("QoS must be 0, 1 or 2")
	}
	if f.keepAlive < 0 || f.keepAlive > 65535 {
		return cfg, "", errors.New("keep alive must be 0..65535 seconds")
	}
	cfg.KeepAlive = time.Duration(f.keepAlive) * time.Second
	if f.keepAlive == 0 {
		cfg.KeepAlive = -1
	}
	cfg.ConnectTimeout = f.connectTimeout

	// Server address.
	useTLS := f.cafile != "" || f.capath != "" || f.cert != "" || f.tls || f.insecure || f.port == 8883 ||
		f.tlsVersion != "" || f.osCerts
	var urlPassword string
	if f.url != "" {
		if fs.Changed("host") || fs.Changed("port") {
			return cfg, "", errors.New("use either -L/--url or -h/-p, not both")
		}
		u, err := url.Parse(f.url)
		if err != nil {
			return cfg, "", fmt.Errorf("--url: %v", err)
		}
		if u.User != nil {
			if f.username == "" {
				f.username = u.User.Username()
			}
			if pw, ok := u.User.Password(); ok {
				urlPassword = pw
			}
			u.User = nil
		}
		switch strings.ToLower(u.Scheme) {
		case "mqtt", "mqtts":
			topic = strings.TrimPrefix(u.Path, "/")
			u.Path, u.RawPath = "", ""
		case "ws", "wss":
		default:
			return cfg, "", fmt.Errorf("--url %q: scheme must be mqtt, mqtts, ws or wss", u.Redacted())
		}
		cfg.Servers = []string{u.String()}
	} else {
		port := f.port
		if port == 0 {
			port = 1883
			if useTLS {
				port = 8883
			}
		}
		scheme := "mqtt"
		if useTLS {
			scheme = "mqtts"
		}
		cfg.Servers = []string{scheme + "://" + net.JoinHostPort(f.host, strconv.Itoa(port))}
	}
	if f.proxy != "" {
		pu, err := url.Parse(f.proxy)
		if err != nil {
			return cfg, "", fmt.Errorf("--proxy: %v", err)
		}
		if pu.User != nil {
			if _, ok := pu.User.Password(); ok {
				warn("--proxy puts the proxy password on the command line, where other local users can read it; give only the user name and set $%s", proxyPasswordEnv)
			} else if pw := getenv(proxyPasswordEnv); pw != "" {
				pu.User = url.UserPassword(pu.User.Username(), pw)
			}
		}
		cfg.Proxy = pu.String()
	}

	// TLS.
	if tc, err := f.tlsConfig(warn); err != nil {
		return cfg, "", err
	} else {
		cfg.TLSConfig = tc
	}

	// Identity and credentials.
	cfg.ClientID = f.id
	if f.idPrefix != "" {
		if f.id != "" {
			return cfg, "", errors.New("use either -i or -I, not both")
		}
		cfg.ClientID = f.idPrefix + strconv.FormatInt(int64(os.Getpid()), 10) + "-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
	}
	cfg.Username = f.username
	pw, err := f.readPassword(fs, urlPassword, warn)
	if err != nil {
		return cfg, "", err
	}
	cfg.Password = pw
	if f.authMethod != "" {
		if err := f.scramAuth(&cfg); err != nil {
			return cfg, "", err
		}
	}

	// Session.
	cfg.CleanStart = !f.disableClean
	if f.disableClean && cfg.ClientID == "" {
		return cfg, "", errors.New("-c (persistent session) needs a client ID: add -i ID")
	}
	expiry := f.sessionExpiry
	if expiry == "" && f.disableClean {
		expiry = "-1"
	}
	if expiry != "" && v == client.V5 {
		switch expiry {
		case "-1", "∞", "4294967295":
			cfg.SessionExpiry = math.MaxUint32
		default:
			n, err := strconv.ParseUint(expiry, 10, 32)
			if err != nil {
				return cfg, "", fmt.Errorf("-x %q: want seconds (0..4294967295), -1 or ∞", expiry)
			}
			cfg.SessionExpiry = uint32(n)
		}
	}

	if f.willTopic != "" {
		cfg.Will = &client.Will{Topic: f.willTopic, Payload: []byte(f.willPayload), QoS: byte(f.willQoS), Retain: f.willRetain}
	} else if f.willPayload != "" || f.willRetain {
		return cfg, "", errors.New("--will-payload and --will-retain need --will-topic")
	}
	if f.debug {
		cfg.Logger = slog.New(slog.NewTextHandler(stdio.Err, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg, topic, nil
}

// readPassword takes the password from --password-file, $MOAT_PASSWORD,
// or, with a warning, from -P or the URL.
func (f *clientFlags) readPassword(fs *pflag.FlagSet, urlPassword string, warn func(string, ...any)) (client.Secret, error) {
	var sources []string
	if fs.Changed("pw") {
		sources = append(sources, "-P")
	}
	if urlPassword != "" {
		sources = append(sources, "the URL")
	}
	if f.passwordFile != "" {
		sources = append(sources, "--password-file")
	}
	if len(sources) > 1 {
		return client.Secret{}, fmt.Errorf("password given by %s: use one", strings.Join(sources, " and "))
	}
	switch {
	case f.passwordFile != "":
		fi, err := os.Stat(f.passwordFile)
		if err != nil {
			return client.Secret{}, fmt.Errorf("--password-file: %v", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			warn("password file %s is readable by other users (mode %04o); chmod 600 it", f.passwordFile, fi.Mode().Perm())
		}
		b, err := os.ReadFile(f.passwordFile)
		if err != nil {
			return client.Secret{}, fmt.Errorf("--password-file: %v", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		return client.NewSecret([]byte(strings.TrimSuffix(line, "\r"))), nil
	case fs.Changed("pw"):
		warn("-P puts the password on the command line, where other local users can read it; use --password-file FILE or $%s", passwordEnv)
		if f.username == "" {
			return client.Secret{}, errors.New("-P needs -u")
		}
		return client.NewSecret([]byte(f.password)), nil
	case urlPassword != "":
		warn("the URL puts the password on the command line, where other local users can read it; use --password-file FILE or $%s", passwordEnv)
		return client.NewSecret([]byte(urlPassword)), nil
	}
	if pw := getenv(passwordEnv); pw != "" {
		return client.NewSecret([]byte(pw)), nil
	}
	return client.Secret{}, nil
}

// scramAuth replaces the CONNECT password with SCRAM enhanced
// authentication (--auth-method).
func (f *clientFlags) scramAuth(cfg *client.Config) error {
	if f.authMethod == client.JWTMethod {
		// The token from --password-file or $MOAT_PASSWORD goes in AUTH
		// data instead of the password field.
		switch {
		case cfg.Version != client.V5:
			return errors.New("--auth-method needs MQTT 5 (-V 5): enhanced authentication does not exist in 3.1.1")
		case cfg.Password.Empty():
			return fmt.Errorf("--auth-method %s needs the token: --password-file FILE or $%s", client.JWTMethod, passwordEnv)
		}
		tok := cfg.Password
		cfg.Auth = client.JWT(func(context.Context) (client.Secret, error) { return tok, nil })
		cfg.Password = client.Secret{}
		return nil
	}
	if _, err := scram.ParseMechanism(f.authMethod); err != nil {
		return fmt.Errorf("--auth-method: %w", err)
	}
	switch {
	case cfg.Version != client.V5:
		return errors.New("--auth-method needs MQTT 5 (-V 5): enhanced authentication does not exist in 3.1.1")
	case f.username == "":
		return errors.New("--auth-method needs -u USER")
	case cfg.Password.Empty():
		return fmt.Errorf("--auth-method needs the password: --password-file FILE or $%s", passwordEnv)
	}
	cfg.Auth = client.SCRAM(f.authMethod, f.username, cfg.Password)
	cfg.Password = client.Secret{}
	return nil
}

// tlsConfig builds the TLS configuration from --cafile, --capath, --cert,
// --key, --insecure, --tls-version and --tls-use-os-certs; nil when none
// is given.
func (f *clientFlags) tlsConfig(warn func(string, ...any)) (*tls.Config, error) {
	if f.cafile == "" && f.capath == "" && f.cert == "" && f.key == "" && !f.insecure && f.tlsVersion == "" && !f.osCerts {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	switch strings.ToLower(f.tlsVersion) {
	case "":
	case "tlsv1.3":
		tc.MinVersion, tc.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	case "tlsv1.2":
		tc.MinVersion, tc.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	case "tlsv1.1", "tlsv1":
		return nil, fmt.Errorf("--tls-version %s: not supported, TLS before 1.2 is insecure; use tlsv1.2 or tlsv1.3", f.tlsVersion)
	default:
		return nil, fmt.Errorf("--tls-version %q: use tlsv1.3 or tlsv1.2", f.tlsVersion)
	}
	if f.cafile != "" || f.capath != "" || f.osCerts {
		pool := x509.NewCertPool()
		if f.osCerts {
			sys, err := x509.SystemCertPool()
			if err != nil {
				return nil, fmt.Errorf("--tls-use-os-certs: the system's CA certificates: %v", err)
			}
			pool = sys
		}
		var files []string
		if f.cafile != "" {
			files = append(files, f.cafile)
		}
		if f.capath != "" {
			entries, err := os.ReadDir(f.capath)
			if err != nil {
				return nil, fmt.Errorf("--capath: %v", err)
			}
			for _, e := range entries {
				if !e.IsDir() {
					files = append(files, filepath.Join(f.capath, e.Name()))
				}
			}
		}
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				return nil, fmt.Errorf("reading CA certificates: %v", err)
			}
			if !pool.AppendCertsFromPEM(b) && file == f.cafile {
				return nil, fmt.Errorf("--cafile %s: no PEM certificate found", file)
			}
		}
		tc.RootCAs = pool
	}
	if (f.cert == "") != (f.key == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if f.cert != "" {
		c, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("loading the client certificate: %v (check that --key matches --cert)", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	if f.insecure {
		warn("--insecure: the server certificate's host name is NOT checked; anyone with a certificate from the same CA can impersonate the broker")
		roots := tc.RootCAs
		tc.InsecureSkipVerify = true
		// Still verify the chain, only not the name (as mosquitto does).
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		}
	}
	return tc, nil
}

// jsonMessage is the --json form of a message.
type jsonMessage struct {
	Topic         string          `json:"topic"`
	QoS           byte            `json:"qos"`
	Retain        bool            `json:"retain"`
	Dup           bool            `json:"dup,omitempty"`
	Payload       *string         `json:"payload,omitempty"`
	PayloadBase64 string          `json:"payload_base64,omitempty"`
	Properties    *jsonProperties `json:"properties,omitempty"`
	Status        string          `json:"status,omitempty"`
	Error         string          `json:"error,omitempty"`
	ReasonCode    *byte           `json:"reason_code,omitempty"`
}

type jsonProperties struct {
	PayloadFormat   *byte       `json:"payload_format,omitempty"`
	MessageExpiry   *uint32     `json:"message_expiry,omitempty"`
	ContentType     string      `json:"content_type,omitempty"`
	ResponseTopic   string      `json:"response_topic,omitempty"`
	CorrelationData []byte      `json:"correlation_data,omitempty"` // base64
	SubscriptionIDs []uint32    `json:"subscription_ids,omitempty"`
	User            [][2]string `json:"user_properties,omitempty"`
}

// toJSON converts m; the payload is a string when it is valid UTF-8 and
// payload_base64 otherwise.
func toJSON(m *client.Message) *jsonMessage {
	j := &jsonMessage{Topic: m.Topic, QoS: m.QoS, Retain: m.Retain, Dup: m.Duplicate}
	if utf8.Valid(m.Payload) {
		s := string(m.Payload)
		j.Payload = &s
	} else {
		j.PayloadBase64 = base64.StdEncoding.EncodeToString(m.Payload)
	}
	p := &m.Properties
	var jp jsonProperties
	if p.Has(client.PropPayloadFormat) {
		jp.PayloadFormat = &p.PayloadFormat
	}
	if p.Has(client.PropMessageExpiry) {
		jp.MessageExpiry = &p.MessageExpiry
	}
	jp.ContentType, jp.ResponseTopic, jp.CorrelationData = p.ContentType, p.ResponseTopic, p.CorrelationData
	jp.SubscriptionIDs = p.SubscriptionIDs
	for _, u := range p.User {
		jp.User = append(jp.User, [2]string{u.Key, u.Value})
	}
	if jp.PayloadFormat != nil || jp.MessageExpiry != nil || jp.ContentType != "" || jp.ResponseTopic != "" ||
		jp.CorrelationData != nil || jp.SubscriptionIDs != nil || jp.User != nil {
		j.Properties = &jp
	}
	return j
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func usesTLS(cfg client.Config) bool {
	return len(cfg.Servers) > 0 && (strings.HasPrefix(cfg.Servers[0], "mqtts:") || strings.HasPrefix(cfg.Servers[0], "wss:"))
}

// TLS alerts (RFC 8446 §6) a server sends when it refuses the handshake.
const (
	alertHandshakeFailure     = 40
	alertBadCertificate       = 42
	alertUnsupportedCert      = 43
	alertCertificateRevoked   = 44
	alertCertificateExpired   = 45
	alertCertificateUnknown   = 46
	alertUnknownCA            = 48
	alertAccessDenied         = 49
	alertProtocolVersion      = 70
	alertInsufficientSecurity = 71
	alertCertificateRequired  = 116
)

// tlsAlert returns the TLS alert the server sent when err is one
// ("remote error: tls: ..."). crypto/tls does not export the type of
// received alerts, only their uint8 kind.
func tlsAlert(err error) (byte, bool) {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" || op.Err == nil {
		return 0, false
	}
	if v := reflect.ValueOf(op.Err); v.Kind() == reflect.Uint8 {
		return byte(v.Uint()), true
	}
	return 0, false
}

// permanentConnectError reports whether a failed connection attempt is a
// refusal that retrying cannot cure: the server refused the handshake
// (our certificate, the TLS version), we refused the server's
// certificate, or the broker refused CONNECT for a reason other than
// being busy or unavailable. Everything else (connection refused, reset,
// timed out, closed) is taken as transient.
func permanentConnectError(err error) bool {
	var re *client.ReasonError
	if errors.As(err, &re) {
		switch re.Code {
		case packet.ServerUnavailable, packet.ServerBusy, packet.QuotaExceeded, packet.ConnectionRateExceeded:
			return false
		}
		return re.Op == "connect" || re.Op == "auth"
	}
	if a, ok := tlsAlert(err); ok {
		switch a {
		case alertHandshakeFailure, alertBadCertificate, alertUnsupportedCert, alertCertificateRevoked,
			alertCertificateExpired, alertCertificateUnknown, alertUnknownCA, alertAccessDenied,
			alertProtocolVersion, alertInsufficientSecurity, alertCertificateRequired:
			return true
		}
		return false
	}
	return errors.As(err, new(*tls.CertificateVerificationError)) || errors.As(err, new(x509.UnknownAuthorityError)) ||
		errors.As(err, new(x509.HostnameError)) || errors.As(err, new(x509.CertificateInvalidError))
}

// retryPolicy is the reconnection of moat sub: transient failures are
// reported on stderr and retried with backoff, a permanent refusal
// (permanentConnectError) stops the client, which then exits non-zero.
func retryPolicy(errOut io.Writer) client.ReconnectPolicy {
	return client.ReconnectPolicy{Enabled: true, MinDelay: time.Second, MaxDelay: 30 * time.Second,
		Retry: func(attempt int, err error) bool {
			if permanentConnectError(err) {
				return false
			}
			fmt.Fprintf(errOut, "moat: reconnect attempt %d failed: %v; retrying\n", attempt, err)
			return true
		}}
}

// connectHint adds an operator hint to a connection error.
func connectHint(err error, cfg client.Config) error {
	var re *client.ReasonError
	hasCert := cfg.TLSConfig != nil && len(cfg.TLSConfig.Certificates) > 0
	alert, isAlert := tlsAlert(err)
	switch {
	case errors.As(err, &re) && re.Op == "connect" && re.Code == 0x84:
		return fmt.Errorf("%w (hint: the broker may not speak MQTT %s; try -V 311)", err, cfg.Version)
	case errors.As(err, &re) && (re.Code == 0x86 || re.Code == 0x87):
		return fmt.Errorf("%w (hint: check -u and the password from --password-file or $%s)", err, passwordEnv)
	case errors.As(err, new(x509.UnknownAuthorityError)):
		return fmt.Errorf("%w (hint: the broker's certificate is from a CA not given: pass --cafile with the broker's CA, e.g. moat-data/ca/ca.pem)", err)
	case errors.As(err, new(x509.HostnameError)):
		return fmt.Errorf("%w (hint: connect with the host name in the certificate)", err)
	case isAlert && (alert == alertCertificateRequired || (!hasCert && alert == alertBadCertificate)):
		return fmt.Errorf("%w (hint: this broker requires a client certificate: pass --cert and --key)", err)
	case isAlert && alert == alertCertificateRevoked:
		return fmt.Errorf("%w (hint: the broker says the client certificate --cert is revoked: get a new one)", err)
	case isAlert && alert == alertCertificateExpired:
		return fmt.Errorf("%w (hint: the client certificate --cert has expired: renew it)", err)
	case isAlert && (alert == alertBadCertificate || alert == alertUnknownCA || alert == alertCertificateUnknown):
		return fmt.Errorf("%w (hint: the broker refused the client certificate --cert: it may be revoked, expired or issued by a CA the broker does not trust)", err)
	case isAlert && alert == alertProtocolVersion:
		return fmt.Errorf("%w (hint: the broker does not accept this TLS version: check --tls-version)", err)
	case usesTLS(cfg) && !hasCert &&
		(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		return fmt.Errorf("%w (hint: the broker may require a client certificate: --cert and --key)", err)
	}
	return err
}

// quietExit is an error not to be printed (--quiet); Main returns its
// exit status alone.
type quietExit struct {
	code int
	err  error
}

func (e *quietExit) Error() string { return e.err.Error() }
func (e *quietExit) Unwrap() error { return e.err }

// quietError marks err, if any, as not to be printed (--quiet); the exit
// status stays.
func quietError(err error) error {
	if err == nil {
		return nil
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	return &quietExit{code: code, err: err}
}
