package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Error is one configuration problem. Its text is "file:line: message"
// (or "file: message" when no line applies), the form editors and
// operators know from compilers.
type Error struct {
	File string // the file, as named to Load or Parse ("" when built in code)
	Line int    // 1-based line, 0 if unknown
	Key  string // the key concerned, if any
	Msg  string // what is wrong and, where possible, what to do
}

func (e *Error) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.File != "":
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return e.Msg
}

// joinErrors wraps the problems in one error that starts with the package
// name; errors.As still finds each *Error.
func joinErrors(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	word := "problems"
	if len(errs) == 1 {
		word = "problem"
	}
	return fmt.Errorf("config: %d %s:\n%w", len(errs), word, errors.Join(errs...))
}

// MaxQueuedNoLimit is what limits.max_queued_messages 0, Mosquitto's "no
// maximum", means: memory must stay bounded, so a ceiling this high.
const MaxQueuedNoLimit = 1_000_000

// MaxMQTTPacket is the largest packet MQTT can encode: a fixed header of 5
// bytes and a remaining length of 268,435,455.
const MaxMQTTPacket = 268435455 + 5

// Validate checks c as a whole and returns every problem at once. Load and
// Parse already call it; call it again after changing a Config in code.
// It never modifies c.
func (c *Config) Validate() error { return joinErrors(c.validate()) }

func (c *Config) validate() []error {
	var errs []error
	top := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		file, line := c.Source, 0
		// Point at the line of the setting the message starts with.
		path, _, _ := strings.Cut(msg, " ")
		for path = strings.TrimSuffix(path, ":"); path != ""; {
			if pos, ok := c.keyPos[path]; ok {
				file, line = splitPos(pos)
				break
			}
			i := strings.LastIndexByte(path, '.')
			if i < 0 {
				break
			}
			path = path[:i]
		}
		errs = append(errs, &Error{File: file, Line: line, Msg: msg})
	}
	if len(c.Listeners) == 0 {
		top("no listener defined")
	}
	c.validateCluster(top)
	errs = append(errs, c.validateAuth("auth", c.Auth)...)
	for i := range c.Listeners {
		errs = append(errs, c.validateAuth(fmt.Sprintf("listeners[%d].auth", i), c.Listeners[i].Auth)...)
	}
	names := map[string]bool{}
	addrs := map[string]string{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		bad := func(format string, args ...any) {
			file, line := c.Source, 0
			if l.pos != "" {
				file, line = splitPos(l.pos)
			}
			errs = append(errs, &Error{File: file, Line: line, Msg: fmt.Sprintf("listener %q: ", l.Name) + fmt.Sprintf(format, args...)})
		}
		if l.Name == "" {
			bad("empty name")
		} else if names[l.Name] {
			bad("duplicate listener name (names must be unique)")
		}
		names[l.Name] = true
		host, port, err := net.SplitHostPort(l.Address)
		if err != nil {
			bad("address %q is not host:port (e.g. \":8883\" or \"127.0.0.1:1883\")", l.Address)
		} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			bad("address %q: port must be a number from 0 to 65535", l.Address)
		} else if p != 0 {
			key := l.Network + " " + strings.ToLower(host) + ":" + port
			if other, ok := addrs[key]; ok {
				bad("address %s is already used by listener %q", l.Address, other)
			}
			addrs[key] = l.Name
		}
		switch l.Network {
		case "tcp", "tcp4", "tcp6":
		default:
			bad("network %q must be tcp, tcp4 or tcp6", l.Network)
		}
		switch l.Transport {
		case TransportTCP, TransportWS:
			if l.TLS != nil {
				bad("tls settings given but transport is %s; use transport tls or wss", l.Transport)
			}
		case TransportTLS, TransportWSS:
			if l.TLS == nil {
				bad("transport %s needs tls settings", l.Transport)
			} else {
				for _, m := range l.TLS.validate() {
					bad("tls: %s", m)
				}
			}
		default:
			bad("transport %q must be tcp, tls, ws or wss", l.Transport)
		}
		if l.WebSocketPath != "" && (!l.Transport.WebSocket() || !strings.HasPrefix(l.WebSocketPath, "/")) {
			bad("websocket_path %q needs transport ws or wss and must start with /", l.WebSocketPath)
		}
		if u := l.ProxyProtocol.UsernameFrom; u != "" && !slices.Contains(identitySources, u) {
			bad("proxy_protocol.username_from %q: expected one of %s", u, strings.Join(identitySources, ", "))
		}
		if l.ProxyProtocol.Enabled && len(l.ProxyProtocol.Trusted) == 0 {
			bad("proxy_protocol.enabled needs proxy_protocol.trusted (the load balancers' CIDR ranges)")
		}
		for _, t := range l.ProxyProtocol.Trusted {
			if _, err := netip.ParsePrefix(t); err != nil {
				bad("proxy_protocol.trusted: %q is not a CIDR range such as 10.0.0.0/8", t)
			}
		}
		if l.MaxConnections < 0 {
			bad("max_connections must be 0 (no cap) or more")
		}
		if l.MaxQoS < 0 || l.MaxQoS > 2 {
			bad("max_qos must be 0, 1 or 2")
		}
		if l.MaxTopicAlias < 0 || l.MaxTopicAlias > 65535 {
			bad("max_topic_alias must be from 0 to 65535")
		}
	}
	lim := &c.Limits
	if lim.MaxPacketSize != 0 && (lim.MaxPacketSize < 20 || lim.MaxPacketSize > MaxMQTTPacket) {
		top("limits.max_packet_size must be 0 (MQTT's maximum) or from 20 bytes to %d", MaxMQTTPacket)
	}
	if lim.MessageSizeLimit < 0 || lim.MessageSizeLimit > 268435455 {
		top("limits.message_size_limit must be from 0 (no limit) to 268435455")
	}
	if lim.ConnectTimeout <= 0 {
		top("limits.connect_timeout must be positive")
	}
	if lim.ReauthGrace <= 0 {
		top("limits.reauth_grace must be positive")
	}
	if lim.MaxKeepalive < 10 || lim.MaxKeepalive > 65535 {
		top("limits.max_keepalive must be from 10 to 65535 seconds")
	}
	if lim.MaxInflight < 0 || lim.MaxInflight > 65535 {
		top("limits.max_inflight must be from 0 (no limit) to 65535")
	}
	if lim.MaxQueuedMessages < 0 {
		top("limits.max_queued_messages must be 0 (no limit) or more")
	}
	if lim.MaxInflightBytes < 0 || lim.MaxQueuedBytes < 0 {
		top("limits byte limits must not be negative")
	}
	if lim.MaxConnections < 0 {
		top("limits.max_connections must be 0 (the open-file limit less 64) or more")
	}
	if lim.PushbackMessages < 0 || lim.PushbackBytes < 0 {
		top("limits.pushback_messages and limits.pushback_bytes must be 0 (off) or more")
	}
	if lim.PushbackWait <= 0 {
		top("limits.pushback_wait must be positive")
	}
	if lim.QueueFullPolicy != QueueFullDrop && lim.QueueFullPolicy != QueueFullBlock {
		top("limits.queue_full_policy %q must be %s or %s", lim.QueueFullPolicy, QueueFullDrop, QueueFullBlock)
	}
	if lim.MaxPreAuthPacketSize < 64 || lim.MaxPreAuthPacketSize > MaxMQTTPacket {
		top("limits.max_preauth_packet_size must be from 64 bytes to %d", MaxMQTTPacket)
	}
	if lim.MaxTopicLength < 1 || lim.MaxTopicLength > 65535 {
		top("limits.max_topic_length must be from 1 to 65535 bytes")
	}
	for _, v := range []struct {
		key string
		n   Size
	}{
		{"max_subscription_bytes", lim.MaxSubscriptionBytes}, {"max_retained_bytes", lim.MaxRetainedBytes},
		{"max_retained_bytes_per_identity", lim.MaxRetainedBytesPerIdentity}, {"read_budget", lim.ReadBudget},
		{"max_retained_messages", Size(lim.MaxRetainedMessages)}, {"max_retained_messages_per_identity", Size(lim.MaxRetainedMessagesPerIdentity)},
	} {
		if v.n < 1 {
			hint := ""
			if strings.HasPrefix(v.key, "max_retained") {
				hint = " (retain_available false turns retained messages off)"
			}
			top("limits.%s must be positive%s", v.key, hint)
		}
	}
	if c.SysInterval < 0 || c.Sessions.PersistentClientExpiration < 0 || c.Persistence.AutosaveInterval < 0 {
		top("durations must not be negative")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		top("log.level %q must be debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		top("log.format %q must be text or json", c.Log.Format)
	}
	if c.Log.TimestampFormat != "" {
		if _, err := ParseTimeFormat(c.Log.TimestampFormat); err != nil {
			top("log.timestamp_format: %s", strings.TrimPrefix(err.Error(), "config: "))
		}
	}
	hasFile := false
	for _, d := range c.Log.Dest {
		switch d {
		case "stderr", "stdout":
		case "file":
			hasFile = true
		default:
			top("log.dest %q must be stderr, stdout or file", d)
		}
	}
	if hasFile != (c.Log.File != "") {
		top("log.file must be set exactly when log.dest contains file")
	}
	if c.DataDir == "" {
		top("data_dir must not be empty")
	}
	switch c.Persistence.Sync {
	case "always", "batch", "off":
	default:
		top("persistence.sync %q must be always, batch or off", c.Persistence.Sync)
	}
	if c.Persistence.BatchInterval <= 0 {
		top("persistence.batch_interval must be positive")
	}
	if c.Profile != "" && !slices.Contains(Profiles, c.Profile) {
		top("profile %q must be one of %s (or left out)", c.Profile, strings.Join(Profiles, ", "))
	}
	return errs
}

func (t *TLS) validate() []string {
	var sni []string
	for i, ck := range t.SNICertificates {
		if ck.Cert == "" || ck.Key == "" {
			sni = append(sni, fmt.Sprintf("sni_certificates[%d] needs both cert and key", i))
		}
	}
	if len(t.SNICertificates) > 0 && t.Cert == "" {
		sni = append(sni, "sni_certificates needs cert and key for the default certificate")
	}
	m := sni
	if (t.Cert == "") != (t.Key == "") {
		m = append(m, "cert and key must be given together (both empty means the built-in CA issues the server certificate)")
	}
	if len(t.ServerNames) > 0 && t.Cert != "" {
		m = append(m, "server_names names the certificate the built-in CA issues; with cert, put the names into that certificate")
	}
	switch t.ClientAuth {
	case ClientAuthNone, ClientAuthOptional, ClientAuthRequired:
	default:
		m = append(m, fmt.Sprintf("client_auth %q must be none, optional or required", t.ClientAuth))
	}
	switch t.MinVersion {
	case "1.2", "1.3":
	default:
		m = append(m, fmt.Sprintf("min_version %q must be \"1.2\" or \"1.3\"", t.MinVersion))
	}
	if len(t.CipherSuites) > 0 && t.Ciphers != "" {
		m = append(m, "cipher_suites and ciphers are both set; use one")
	}
	switch t.CRLStale {
	case "refuse", "warn":
	default:
		m = append(m, fmt.Sprintf("crl_stale %q must be refuse or warn", t.CRLStale))
	}
	switch t.OCSP.Mode {
	case "off", "fail-open", "fail-closed":
	default:
		m = append(m, fmt.Sprintf("ocsp.mode %q must be off, fail-open or fail-closed", t.OCSP.Mode))
	}
	if t.OCSP.Mode != "off" && t.OCSP.Timeout <= 0 {
		m = append(m, "ocsp.timeout must be positive")
	}
	for _, f := range []struct{ name, v string }{{"username_from", t.Identity.UsernameFrom}, {"client_id_from", t.Identity.ClientIDFrom}} {
		if !slices.Contains(identitySources, f.v) {
			m = append(m, fmt.Sprintf("identity.%s %q must be one of %s", f.name, f.v, strings.Join(identitySources, ", ")))
		} else if f.v != IdentityNone && t.ClientAuth == ClientAuthNone {
			m = append(m, fmt.Sprintf("identity.%s needs client certificates (client_auth optional or required)", f.name))
		}
	}
	if t.Identity.BindClientID && t.Identity.ClientIDFrom == IdentityNone {
		m = append(m, "identity.bind_client_id needs identity.client_id_from")
	}
	return m
}

// Warnings lists the insecure parts of c that the operator must hear about
// loudly at startup: plain (unencrypted) listeners reachable from the
// network, anonymous access from the network, missing resource limits, and
// Mosquitto quirks that made a listener more open than it looks. A
// loopback-only plain listener is not reported.
func (c *Config) Warnings() []string {
	var w []string
	for i := range c.Listeners {
		l := &c.Listeners[i]
		remote := !loopback(l.Address)
		if remote && !l.Transport.Secure() {
			w = append(w, fmt.Sprintf("%s on %s: plain %s without TLS on a network address: usernames, passwords and messages travel in clear text", l.where(), l.Address, transportWord(l.Transport)))
		}
		if remote && l.AllowAnonymous {
			w = append(w, fmt.Sprintf("%s on %s: anonymous clients are allowed from the network", l.where(), l.Address))
		}
		if l.TLS != nil && l.TLS.AllowInsecureCiphers {
			w = append(w, fmt.Sprintf("%s on %s: allow_insecure_ciphers is set: cipher suites the TLS policy refuses (CBC mode, RSA key exchange) may be negotiated", l.where(), l.Address))
		}
		if l.TLS != nil && l.TLS.ClientAuth == ClientAuthNone && !l.AllowAnonymous {
			// Not insecure as such, but without a password backend nobody
			// can authenticate: say so, it is a likely mistake.
			w = append(w, fmt.Sprintf("%s on %s: client certificates are not requested and anonymous access is refused: only clients with another way to authenticate can connect", l.where(), l.Address))
		}
	}
	if c.Limits.MaxPacketSize == 0 {
		w = append(w, "limits.max_packet_size is 0 (no limit of Moat's own): clients may send packets of up to MQTT's maximum of 256 MiB; remove it for the 1MiB default or set a limit")
	}
	if c.Limits.MaxQueuedMessages == 0 && c.Limits.MaxQueuedBytes == 0 {
		w = append(w, fmt.Sprintf("limits.max_queued_messages 0 (no limit) means at most %d messages per session", MaxQueuedNoLimit))
	}
	return append(w, c.parseWarnings...)
}

func transportWord(t Transport) string {
	if t == TransportWS {
		return "MQTT over WebSocket"
	}
	return "MQTT"
}

// loopback reports whether a listener address only accepts local clients.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// Pos returns "file:line" of the key that set the setting at path (e.g.
// "listeners[0].tls.key" or "limits.max_inflight"), else of the nearest
// enclosing setting or listener that has a line, else the file name ("" for
// a Config not read from a file). Errors found after parsing (a certificate
// file that cannot be read) use it to point at the line.
func (c *Config) Pos(path string) string {
	for p := path; ; {
		if pos, ok := c.keyPos[p]; ok {
			return pos
		}
		i := strings.LastIndexByte(p, '.')
		if i < 0 {
			break
		}
		p = p[:i]
	}
	var i int
	if _, err := fmt.Sscanf(path, "listeners[%d]", &i); err == nil && i >= 0 && i < len(c.Listeners) && c.Listeners[i].pos != "" {
		return c.Listeners[i].pos
	}
	return c.Source
}

func splitPos(pos string) (string, int) {
	i := strings.LastIndexByte(pos, ':')
	if i < 0 {
		return pos, 0
	}
	n, err := strconv.Atoi(pos[i+1:])
	if err != nil {
		return pos, 0
	}
	return pos[:i], n
}
