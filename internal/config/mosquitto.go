package config

import (
	"cmp"
	"fmt"
	"io/fs"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file reads Mosquitto 2.0's mosquitto.conf. The rules below were
// taken from mosquitto.conf(5) and checked against the mosquitto 2.0.11
// binary; where Moat is deliberately stricter, the comment says so.
//
// Line syntax (as Mosquitto): a line whose first character is '#' is a
// comment; the key is the text up to the first space (tabs are part of the
// key, so "listener<TAB>1883" is an unknown key); words are separated by
// runs of spaces; a string value is the rest of the line with surrounding
// blanks removed, so "cafile /x # note" names the file "/x # note".
// Stricter than Mosquitto: numbers must be whole integers (Mosquitto reads
// "10abc" as 10 and "abc" as 0), and extra words after a one-word value are
// an error unless they start with '#'.

// readDirFunc lists a directory for include_dir; tests and the fuzzer
// replace it.
type readDirFunc func(dir string) ([]fs.DirEntry, error)

type mosqParser struct {
	cfg      *Config
	errs     []error
	readDir  readDirFunc
	readFile func(string) ([]byte, error)

	pls       bool // per_listener_settings
	secUsed   bool // a security option was set (per_listener_settings must come first)
	localOnly bool // no listener, port or bind_address seen
	global    mosqSecurity
	def       *mosqListener   // Mosquitto's implicit default listener
	listeners []*mosqListener // explicit listeners in order

	portSeen   bool
	logDest    []string
	logDestSet bool
	logTypes   map[string]bool
	logTypeSet bool
	logFileSet bool
	set        map[string]bool
}

// mosqSecurity holds the options per_listener_settings moves between the
// global scope and each listener.
type mosqSecurity struct {
	allowAnon     int // -1 unset, 0 false, 1 true
	allowZeroLen  int // -1 unset
	autoIDPrefix  string
	autoIDSet     bool
	allowAnonLine string
	passwordFile  string // password_file
	passwordLine  string // its file:line
	aclFile       string // acl_file
	aclLine       string
}

type mosqListener struct {
	isDefault   bool
	pos         string // file:line of the listener line, or of the first key for the default listener
	port        int
	host        string
	protocol    string
	network     string
	maxConn     int
	maxQoS      int
	maxAlias    int
	useUserAsID bool

	strs  map[string]string // string-valued TLS keys by Mosquitto name
	bools map[string]bool   // require_certificate, use_identity_as_username, use_subject_as_username, allow_insecure_ciphers
	sec   mosqSecurity
	set   map[string]bool   // YAML sub-paths set explicitly
	where map[string]string // YAML sub-path -> file:line of the key that set it
}

func newMosqListener(isDefault bool) *mosqListener {
	return &mosqListener{
		isDefault: isDefault, protocol: "mqtt", network: "tcp", maxConn: -1, maxQoS: 2, maxAlias: 10,
		strs: map[string]string{}, bools: map[string]bool{}, set: map[string]bool{}, where: map[string]string{},
		sec: mosqSecurity{allowAnon: -1, allowZeroLen: -1},
	}
}

// needed reports whether Mosquitto 2.0.11 would start the default
// listener: only some keys given before the first "listener" line do that
// (tls_version, max_topic_alias, acl_file, auto_id_prefix and
// allow_anonymous do not; they are kept for when it is started).
func (l *mosqListener) needed(pls bool) bool {
	for _, k := range []string{"cafile", "capath", "certfile", "keyfile", "ciphers", "ciphers_tls1.3", "crlfile", "dhparamfile"} {
		if _, ok := l.strs[k]; ok {
			return true
		}
	}
	if l.bools["require_certificate"] || l.bools["use_identity_as_username"] || l.bools["use_subject_as_username"] || l.useUserAsID {
		return true
	}
	if l.host != "" || l.port != 0 || l.maxConn != -1 || l.maxQoS != 2 || l.protocol != "mqtt" || l.network != "tcp" {
		return true
	}
	return pls && l.sec.allowZeroLen == 0
}

// line is one configuration line split the way Mosquitto splits it.
type line struct {
	file  string
	no    int
	key   string
	words []string // value words (after the key), split on spaces
	rest  string   // the text after the key, blanks trimmed
}

func (ln *line) pos() string { return fmt.Sprintf("%s:%d", ln.file, ln.no) }

func (p *mosqParser) errorf(ln *line, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: ln.file, Line: ln.no, Key: ln.key, Msg: fmt.Sprintf(format, args...)})
}

func (p *mosqParser) note(ln *line, format string, args ...any) {
	p.cfg.Notes = append(p.cfg.Notes, ln.pos()+": "+fmt.Sprintf(format, args...))
}

func (p *mosqParser) warn(ln *line, format string, args ...any) {
	p.cfg.parseWarnings = append(p.cfg.parseWarnings, ln.pos()+": "+fmt.Sprintf(format, args...))
}

// parseMosquitto reads a mosquitto.conf. It returns the config (with
// defaults applied) and every problem found; it does not run Validate.
func parseMosquitto(name string, data []byte, readDir readDirFunc, readFile func(string) ([]byte, error)) (*Config, []error) {
	c := &Config{
		Source:          name,
		Format:          FormatMosquitto,
		RetainAvailable: true,
		SysInterval:     Duration(10e9),
		Log:             defaultLog(),
		DataDir:         "moat-data",
		Limits:          defaultLimits(),
		Persistence:     Persistence{AutosaveInterval: Duration(1800e9), Sync: "always", BatchInterval: Duration(1e9)},
		keyPos:          map[string]string{},
	}
	c.CheckRetainSource = true // Mosquitto's default
	p := &mosqParser{
		cfg: c, readDir: readDir, readFile: readFile, localOnly: true,
		global: mosqSecurity{allowAnon: -1, allowZeroLen: -1},
		def:    newMosqListener(true),
		set:    map[string]bool{},
	}
	p.parseFile(name, data, 0)
	p.finish()
	return c, p.errs
}

func (p *mosqParser) parseFile(name string, data []byte, level int) {
	cur := p.def // every file, included ones too, starts on the default listener
	for i, raw := range strings.Split(string(data), "\n") {
		ln := &line{file: name, no: i + 1}
		text := strings.TrimRight(raw, "\r\n")
		if text == "" || text[0] == '#' {
			continue
		}
		if !utf8.ValidString(text) {
			p.errorf(ln, "line is not valid UTF-8")
			continue
		}
		fields := strings.FieldsFunc(text, func(r rune) bool { return r == ' ' })
		if len(fields) == 0 {
			continue
		}
		ln.key = fields[0]
		ln.words = fields[1:]
		_, after, _ := strings.Cut(strings.TrimLeft(text, " "), " ")
		ln.rest = strings.Trim(after, " \t")
		if ln.key == "include_dir" {
			p.includeDir(ln, level)
			continue
		}
		cur = p.apply(ln, cur)
	}
}

func (p *mosqParser) includeDir(ln *line, level int) {
	if level > 0 {
		// Mosquitto only honours include_dir in the main file and skips it
		// silently elsewhere; Moat skips it too, but says so.
		p.note(ln, "include_dir is only read from the main configuration file (as in Mosquitto); ignored here")
		return
	}
	if ln.rest == "" {
		p.errorf(ln, "include_dir needs a directory")
		return
	}
	entries, err := p.readDir(ln.rest)
	if err != nil {
		p.errorf(ln, "include_dir: %v", err)
		return
	}
	var files []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".conf") && !e.IsDir() {
			files = append(files, e.Name())
		}
	}
	// Mosquitto's order: case-insensitive, upper case first on a tie
	// (00.conf 01.conf A.conf a.conf B.conf b.conf).
	slices.SortFunc(files, func(a, b string) int {
		if c := cmp.Compare(strings.ToLower(a), strings.ToLower(b)); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	for _, f := range files {
		path := ln.rest + "/" + f
		data, err := p.readFile(path)
		if err != nil {
			p.errorf(ln, "include_dir: %v", err)
			continue
		}
		p.parseFile(path, data, level+1)
	}
}

// value returns the single word after the key, or reports an error.
func (p *mosqParser) value(ln *line) (string, bool) {
	if len(ln.words) == 0 {
		p.errorf(ln, "%s needs a value", ln.key)
		return "", false
	}
	if len(ln.words) > 1 && !strings.HasPrefix(ln.words[1], "#") {
		p.errorf(ln, "%s takes one value; unexpected %q (comments must start with #)", ln.key, ln.words[1])
		return "", false
	}
	return ln.words[0], true
}

func (p *mosqParser) boolean(ln *line) (bool, bool) {
	v, ok := p.value(ln)
	if !ok {
		return false, false
	}
	switch v {
	case "true", "1":
		return true, true
	case "false", "0":
		return false, true
	}
	p.errorf(ln, "%s: invalid value %q (want true or false)", ln.key, v)
	return false, false
}

// integer reads a whole number within [lo, hi].
func (p *mosqParser) integer(ln *line, lo, hi int64) (int64, bool) {
	v, ok := p.value(ln)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		p.errorf(ln, "%s: invalid value %q (want a whole number)", ln.key, v)
		return 0, false
	}
	if n < lo || n > hi {
		p.errorf(ln, "%s: %d is out of range (want %d to %d)", ln.key, n, lo, hi)
		return 0, false
	}
	return n, true
}

// str reads a string value (the rest of the line). Like Mosquitto, a key
// given twice for the same scope is an error.
func (p *mosqParser) str(ln *line, seen map[string]string) (string, bool) {
	if ln.rest == "" {
		p.errorf(ln, "%s needs a value", ln.key)
		return "", false
	}
	if seen != nil {
		if _, dup := seen[ln.key]; dup {
			p.errorf(ln, "duplicate %s (it may be given once per listener)", ln.key)
			return "", false
		}
	}
	if strings.Contains(ln.rest, " #") {
		p.warn(ln, "the value of %s contains \" #\": mosquitto.conf has no trailing comments on string values, so %q is used as the whole value", ln.key, ln.rest)
	}
	return ln.rest, true
}

func (p *mosqParser) security(cur *mosqListener) *mosqSecurity {
	p.secUsed = true
	if p.pls {
		return &cur.sec
	}
	return &p.global
}

// apply handles one line and returns the listener later lines apply to.
func (p *mosqParser) apply(ln *line, cur *mosqListener) *mosqListener {
	key := ln.key
	switch key {
	case "port", "bind_address":
		p.touch(p.def, ln)
	case "protocol", "socket_domain", "max_connections", "max_qos", "maximum_qos", "max_topic_alias", "use_username_as_clientid",
		"cafile", "capath", "certfile", "keyfile", "crlfile", "ciphers", "ciphers_tls1.3", "tls_version", "dhparamfile",
		"require_certificate", "use_identity_as_username", "use_subject_as_username", "allow_insecure_ciphers":
		p.touch(cur, ln)
	}
	defer p.place(ln, cur)
	switch key {
	case "listener":
		return p.listener(ln, cur)
	case "port":
		p.localOnly = false
		n, ok := p.integer(ln, 1, 65535)
		if ok {
			if p.portSeen {
				p.note(ln, "port given more than once: the last one is used (as in Mosquitto)")
			}
			p.portSeen = true
			p.def.port = int(n)
			p.def.set["address"] = true
		}
	case "bind_address":
		p.localOnly = false
		if p.def.host != "" {
			p.errorf(ln, "duplicate bind_address")
		} else if v, ok := p.str(ln, nil); ok {
			p.def.host = v
			p.def.set["address"] = true
		}
	case "protocol":
		if v, ok := p.value(ln); ok {
			switch v {
			case "mqtt", "websockets":
				cur.protocol = v
				cur.set["transport"] = true
			default:
				p.errorf(ln, "protocol: invalid value %q (want mqtt or websockets)", v)
			}
		}
	case "socket_domain":
		if v, ok := p.value(ln); ok {
			switch v {
			case "ipv4":
				cur.network = "tcp4"
			case "ipv6":
				cur.network = "tcp6"
			default:
				p.errorf(ln, "socket_domain: invalid value %q (want ipv4 or ipv6)", v)
			}
			cur.set["network"] = true
		}
	case "max_connections":
		if n, ok := p.integer(ln, math.MinInt32, math.MaxInt32); ok {
			if n < 0 {
				n = -1
			}
			cur.maxConn = int(n)
			cur.set["max_connections"] = true
		}
	case "max_qos", "maximum_qos":
		if n, ok := p.integer(ln, 0, 2); ok {
			cur.maxQoS = int(n)
			cur.set["max_qos"] = true
		}
	case "max_topic_alias":
		if n, ok := p.integer(ln, 0, 65535); ok {
			cur.maxAlias = int(n)
			cur.set["max_topic_alias"] = true
		}
	case "use_username_as_clientid":
		if b, ok := p.boolean(ln); ok {
			cur.useUserAsID = b
			cur.set["use_username_as_client_id"] = true
		}

	// TLS, per listener.
	case "cafile", "capath", "certfile", "keyfile", "crlfile", "ciphers", "ciphers_tls1.3", "tls_version", "dhparamfile":
		if v, ok := p.str(ln, cur.strs); ok {
			cur.strs[key] = v
			p.tlsKey(ln, cur, key, v)
		}
	case "require_certificate", "use_identity_as_username", "use_subject_as_username":
		if b, ok := p.boolean(ln); ok {
			cur.bools[key] = b
			if key == "require_certificate" {
				cur.set["tls.client_auth"] = true
			} else {
				cur.set["tls.identity.username_from"] = true
			}
		}
	case "allow_insecure_ciphers":
		// Moat extension: the override of the cipher policy for this
		// listener's ciphers line.
		if b, ok := p.boolean(ln); ok {
			cur.bools[key] = b
			cur.set["tls.allow_insecure_ciphers"] = true
		}

	// Security options that per_listener_settings moves.
	case "per_listener_settings":
		if p.pls {
			return cur // once true it stays true (Mosquitto)
		}
		if b, ok := p.boolean(ln); ok {
			if b && p.secUsed {
				p.errorf(ln, "per_listener_settings must be set before any other security setting")
			}
			p.pls = b
		}
	case "allow_anonymous":
		if b, ok := p.boolean(ln); ok {
			s := p.security(cur)
			s.allowAnon = b2i(b)
			s.allowAnonLine = ln.pos()
		}
	case "password_file", "acl_file":
		// Mosquitto 2.0: global, or per listener with
		// per_listener_settings true; given twice for one scope is an
		// error, as in Mosquitto.
		s := p.security(cur)
		dst, pos := &s.passwordFile, &s.passwordLine
		if key == "acl_file" {
			dst, pos = &s.aclFile, &s.aclLine
		}
		if *dst != "" {
			p.errorf(ln, "duplicate %s (first at %s)", key, *pos)
		} else if v, ok := p.str(ln, nil); ok {
			*dst, *pos = v, ln.pos()
		}
	case "allow_zero_length_clientid":
		if b, ok := p.boolean(ln); ok {
			p.security(cur).allowZeroLen = b2i(b)
		}
	case "auto_id_prefix":
		s := p.security(cur)
		if s.autoIDSet {
			p.errorf(ln, "duplicate auto_id_prefix")
		} else if v, ok := p.str(ln, nil); ok {
			s.autoIDPrefix, s.autoIDSet = v, true
		}

	// Global limits.
	case "max_keepalive":
		if n, ok := p.integer(ln, 10, 65535); ok {
			p.cfg.Limits.MaxKeepalive = int(n)
			p.mark(ln, "limits.max_keepalive")
		}
	case "max_packet_size":
		if n, ok := p.integer(ln, 20, math.MaxInt32); ok {
			if n > MaxMQTTPacket {
				p.note(ln, "max_packet_size %d is above MQTT's largest packet; no limit applies", n)
				n = 0
			}
			p.cfg.Limits.MaxPacketSize = Size(n)
			p.mark(ln, "limits.max_packet_size")
		}
	case "message_size_limit":
		if n, ok := p.integer(ln, 0, 268435455); ok {
			p.cfg.Limits.MessageSizeLimit = Size(n)
			p.mark(ln, "limits.message_size_limit")
		}
	case "max_inflight_messages":
		if n, ok := p.integer(ln, math.MinInt32, 65535); ok {
			if n < 0 || n == 65535 {
				n = 0
			}
			p.cfg.Limits.MaxInflight = int(n)
			p.mark(ln, "limits.max_inflight")
		}
	case "max_inflight_bytes", "max_queued_bytes":
		if n, ok := p.integer(ln, math.MinInt32, math.MaxInt32); ok {
			n = max(n, 0)
			if key == "max_inflight_bytes" {
				p.cfg.Limits.MaxInflightBytes = Size(n)
				p.mark(ln, "limits.max_inflight_bytes")
			} else {
				p.cfg.Limits.MaxQueuedBytes = Size(n)
				p.mark(ln, "limits.max_queued_bytes")
			}
		}
	case "max_queued_messages":
		if n, ok := p.integer(ln, math.MinInt32, math.MaxInt32); ok {
			p.cfg.Limits.MaxQueuedMessages = int(max(n, 0))
			p.mark(ln, "limits.max_queued_messages")
		}
	case "global_max_connections", "max_topic_length", "max_topic_levels", "max_subscriptions", "max_sessions",
		"max_retained_messages", "max_retained_messages_per_identity", "connect_timeout",
		"max_preauth_packet_size", "max_subscription_bytes", "max_retained_bytes", "max_retained_bytes_per_identity", "read_budget",
		"pushback_messages", "pushback_bytes", "pushback_wait", "queue_full_policy":
		p.limit(ln)
	case "queue_qos0_messages":
		if b, ok := p.boolean(ln); ok {
			p.cfg.Limits.QueueQoS0 = b
			p.mark(ln, "limits.queue_qos0")
		}
	case "persistent_client_expiration":
		if v, ok := p.value(ln); ok {
			if d, err := parseExpiration(v); err != nil {
				p.errorf(ln, "persistent_client_expiration: %v", err)
			} else {
				p.cfg.Sessions.PersistentClientExpiration = d
				p.mark(ln, "sessions.persistent_client_expiration")
			}
		}
	case "session_owner_check":
		// Moat extension: Mosquitto has no owner check to turn off.
		if b, ok := p.boolean(ln); ok {
			p.cfg.Sessions.IgnoreOwner = !b
			p.mark(ln, "sessions.ignore_owner")
		}
	case "retain_available":
		if b, ok := p.boolean(ln); ok {
			p.cfg.RetainAvailable = b
			p.mark(ln, "retain_available")
		}
	case "sys_interval":
		if n, ok := p.integer(ln, 0, 65535); ok {
			p.cfg.SysInterval = Duration(n * 1e9)
			p.mark(ln, "sys_interval")
		}

	// Persistence.
	case "persistence", "retained_persistence":
		if b, ok := p.boolean(ln); ok {
			p.cfg.Persistence.Enabled = b
			p.mark(ln, "persistence.enabled")
		}
	case "persistence_location":
		if p.cfg.Persistence.Location != "" {
			p.errorf(ln, "duplicate persistence_location")
		} else if v, ok := p.str(ln, nil); ok {
			p.cfg.Persistence.Location = v
			p.mark(ln, "persistence.location")
		}
	case "autosave_interval":
		if n, ok := p.integer(ln, math.MinInt32, math.MaxInt32); ok {
			p.cfg.Persistence.AutosaveInterval = Duration(max(n, 0) * 1e9)
			p.mark(ln, "persistence.autosave_interval")
		}
	case "persistence_file":
		if _, ok := p.str(ln, nil); ok {
			p.note(ln, "persistence_file is ignored: Moat's store keeps store.db, store.counter and store.key inside persistence_location")
		}
	case "autosave_on_changes":
		if _, ok := p.boolean(ln); ok {
			p.note(ln, "autosave_on_changes is ignored: Moat's store commits every change before acknowledging it")
		}

	// Logging and process.
	case "log_dest":
		p.logDestination(ln)
	case "log_type":
		p.logType(ln)
	case "log_timestamp":
		if b, ok := p.boolean(ln); ok {
			p.cfg.Log.Timestamps = b
			p.mark(ln, "log.timestamps")
		}
	case "log_timestamp_format":
		if v, ok := p.str(ln, nil); ok {
			p.cfg.Log.TimestampFormat = v
			p.mark(ln, "log.timestamp_format")
		}
	case "connection_messages":
		if b, ok := p.boolean(ln); ok {
			p.cfg.Log.ConnectionMessages = b
			p.mark(ln, "log.connection_messages")
		}
	case "pid_file":
		if p.cfg.PIDFile != "" {
			p.errorf(ln, "duplicate pid_file")
		} else if v, ok := p.str(ln, nil); ok {
			p.cfg.PIDFile = v
			p.mark(ln, "pid_file")
		}
	case "user":
		if v, ok := p.str(ln, nil); ok {
			p.note(ln, "user %q is ignored: Moat never changes user itself; start it as the user it should run as (systemd User=, container USER)", v)
		}

	// Accepted, no effect in Moat.
	case "log_facility":
		if _, ok := p.integer(ln, 0, 7); ok {
			p.note(ln, "log_facility is ignored: Moat does not log to syslog")
		}
	case "allow_duplicate_messages":
		if _, ok := p.boolean(ln); ok {
			p.note(ln, "allow_duplicate_messages is deprecated in Mosquitto and ignored")
		}
	case "retry_interval":
		p.note(ln, "retry_interval is no longer used (as in Mosquitto 2.0) and is ignored")
	case "set_tcp_nodelay":
		if _, ok := p.boolean(ln); ok {
			p.note(ln, "set_tcp_nodelay is ignored: Moat always disables Nagle's algorithm")
		}
	case "check_retain_source":
		if b, ok := p.boolean(ln); ok {
			p.cfg.CheckRetainSource = b
			p.mark(ln, "check_retain_source")
		}
	case "websockets_log_level", "websockets_headers_size":
		if _, ok := p.integer(ln, math.MinInt32, math.MaxInt32); ok {
			p.note(ln, "%s is ignored: Moat's WebSocket transport is not libwebsockets", key)
		}

	default:
		if hint, ok := unsupportedKey(key); ok {
			p.errorf(ln, "%s is not supported yet: %s", key, hint)
		} else {
			p.unknown(ln)
		}
	}
	return cur
}

func (p *mosqParser) unknown(ln *line) {
	if strings.HasPrefix(ln.key, "#") {
		p.errorf(ln, "unknown key %q: a comment must start with # in the first column (mosquitto.conf)", ln.key)
		return
	}
	if strings.ContainsAny(ln.key, "\t") {
		p.errorf(ln, "unknown key %q: separate the key and its value with spaces, not tabs", ln.key)
		return
	}
	if ln.key != strings.ToLower(ln.key) {
		if _, ok := unsupportedKey(strings.ToLower(ln.key)); ok || knownKeys[strings.ToLower(ln.key)] {
			p.errorf(ln, "unknown key %q: keys are lower case (%s)", ln.key, strings.ToLower(ln.key))
			return
		}
	}
	p.errorf(ln, "unknown key %q", ln.key)
}

// listenerKeyPaths maps per-listener mosquitto.conf keys to the setting
// they configure, so that problems found later (a key file that cannot be
// read, a cipher the policy refuses) point at the key's line.
var listenerKeyPaths = map[string]string{
	"certfile": "tls.cert", "keyfile": "tls.key", "cafile": "tls.client_ca", "capath": "tls.client_ca_dir",
	"crlfile": "tls.crl", "ciphers": "tls.ciphers", "tls_version": "tls.min_version",
	"require_certificate": "tls.client_auth", "use_identity_as_username": "tls.identity.username_from",
	"use_subject_as_username": "tls.identity.username_from", "allow_insecure_ciphers": "tls.allow_insecure_ciphers",
	"protocol": "transport", "socket_domain": "network", "max_connections": "max_connections",
	"max_qos": "max_qos", "maximum_qos": "max_qos", "max_topic_alias": "max_topic_alias",
	"use_username_as_clientid": "use_username_as_client_id",
}

// place records the line of a per-listener key on the listener it applies
// to.
func (p *mosqParser) place(ln *line, cur *mosqListener) {
	if path, ok := listenerKeyPaths[ln.key]; ok {
		cur.where[path] = ln.pos()
	}
}

// limit reads one of Moat's limits that Mosquitto has no key for (a Moat
// extension; global_max_connections is Mosquitto 2.1's name for the same
// cap). Counts are whole numbers, sizes take units (64KiB) as in YAML,
// connect_timeout is in seconds like sys_interval. The ranges are checked
// by Validate, with the YAML key's wording.
func (p *mosqParser) limit(ln *line) {
	v, ok := p.value(ln)
	if !ok {
		return
	}
	lim := &p.cfg.Limits
	var path string
	switch ln.key {
	case "queue_full_policy":
		lim.QueueFullPolicy, path = v, ln.key // Validate checks the value
	case "pushback_wait":
		// Seconds, as connect_timeout, or a duration such as 500ms.
		d, err := ParseDuration(v)
		if n, nerr := strconv.ParseInt(v, 10, 32); nerr == nil {
			d, err = Duration(n*1e9), nil
		}
		if err != nil {
			p.errorf(ln, "%s: %v", ln.key, err)
			return
		}
		lim.PushbackWait, path = d, ln.key
	case "max_preauth_packet_size", "max_subscription_bytes", "max_retained_bytes", "max_retained_bytes_per_identity", "read_budget", "pushback_bytes":
		n, err := ParseSize(v)
		if err != nil {
			p.errorf(ln, "%s: %v", ln.key, err)
			return
		}
		path = ln.key
		*map[string]*Size{
			"max_preauth_packet_size":         &lim.MaxPreAuthPacketSize,
			"max_subscription_bytes":          &lim.MaxSubscriptionBytes,
			"max_retained_bytes":              &lim.MaxRetainedBytes,
			"max_retained_bytes_per_identity": &lim.MaxRetainedBytesPerIdentity,
			"read_budget":                     &lim.ReadBudget,
			"pushback_bytes":                  &lim.PushbackBytes,
		}[ln.key] = n
	default:
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil {
			p.errorf(ln, "%s: invalid value %q (want a whole number)", ln.key, v)
			return
		}
		path = ln.key
		switch ln.key {
		case "global_max_connections":
			lim.MaxConnections, path = int(n), "max_connections"
		case "connect_timeout":
			lim.ConnectTimeout = Duration(n * 1e9)
		default:
			*map[string]*int{
				"max_topic_length":                   &lim.MaxTopicLength,
				"max_topic_levels":                   &lim.MaxTopicLevels,
				"max_subscriptions":                  &lim.MaxSubscriptions,
				"max_sessions":                       &lim.MaxSessions,
				"max_retained_messages":              &lim.MaxRetainedMessages,
				"max_retained_messages_per_identity": &lim.MaxRetainedMessagesPerIdentity,
				"pushback_messages":                  &lim.PushbackMessages,
			}[ln.key] = int(n)
		}
	}
	p.mark(ln, "limits."+path)
}

func (p *mosqParser) mark(ln *line, path string) {
	p.set[path] = true
	p.cfg.keyPos[path] = ln.pos()
}

// touch records where the default listener was first configured, so that
// errors about it point at a line.
func (p *mosqParser) touch(l *mosqListener, ln *line) {
	if l.isDefault && l.pos == "" {
		l.pos = ln.pos()
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (p *mosqParser) listener(ln *line, cur *mosqListener) *mosqListener {
	p.localOnly = false
	if len(ln.words) == 0 {
		p.errorf(ln, "listener needs a port: listener PORT [ADDRESS]")
		return cur
	}
	port, err := strconv.Atoi(ln.words[0])
	if err != nil || port < 0 || port > 65535 {
		p.errorf(ln, "listener: invalid port %q (want 1 to 65535)", ln.words[0])
		return cur
	}
	l := newMosqListener(false)
	l.pos = ln.pos()
	l.port = port
	l.set["address"] = true
	if len(ln.words) > 1 && !strings.HasPrefix(ln.words[1], "#") {
		l.host = ln.words[1]
		if len(ln.words) > 2 && !strings.HasPrefix(ln.words[2], "#") {
			p.errorf(ln, "listener: unexpected %q after the address (listener PORT [ADDRESS])", ln.words[2])
		}
	}
	if port == 0 {
		if l.host != "" {
			p.errorf(ln, "listener: Unix domain sockets (port 0 with a path) are not supported yet")
		} else {
			p.errorf(ln, "listener: invalid port 0 (want 1 to 65535)")
		}
		return l // keep going so later keys do not land on the wrong listener
	}
	p.listeners = append(p.listeners, l)
	return l
}

// tlsKey validates a TLS string key as it is read.
func (p *mosqParser) tlsKey(ln *line, cur *mosqListener, key, v string) {
	switch key {
	case "tls_version":
		switch v {
		case "tlsv1.3", "tlsv1.2":
		case "tlsv1.1":
			p.warn(ln, "tls_version tlsv1.1 is raised to TLS 1.2: Moat does not offer TLS 1.1 (NIST SP 800-52r2)")
		default:
			p.errorf(ln, "tls_version: invalid value %q (want tlsv1.3, tlsv1.2 or tlsv1.1)", v)
		}
		cur.set["tls.min_version"] = true
	case "ciphers":
		// Kept as written; moat serve translates it with the TLS policy
		// (internal/tlsconf), which is also where it is refused.
		cur.set["tls.ciphers"] = true
	case "ciphers_tls1.3":
		for _, c := range strings.Split(v, ":") {
			if !slices.Contains(tls13Suites, c) {
				p.errorf(ln, "ciphers_tls1.3: unknown TLS 1.3 suite %q (want %s)", c, strings.Join(tls13Suites, ", "))
				return
			}
		}
		p.note(ln, "ciphers_tls1.3 is accepted but has no effect: Go's TLS 1.3 always offers its AEAD suites (AES-GCM, ChaCha20-Poly1305)")
	case "dhparamfile":
		p.note(ln, "dhparamfile is ignored: Moat uses ECDHE and hybrid post-quantum key exchange, not finite-field DH")
	case "cafile":
		cur.set["tls.client_ca"] = true
	case "capath":
		cur.set["tls.client_ca_dir"] = true
	case "certfile":
		cur.set["tls.cert"] = true
	case "keyfile":
		cur.set["tls.key"] = true
	case "crlfile":
		cur.set["tls.crl"] = true
	}
}

var tls13Suites = []string{"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256"}

// parseExpiration reads persistent_client_expiration: a positive whole
// number followed by h, d, w, m (30 days) or y (365 days).
func parseExpiration(v string) (Duration, error) {
	if len(v) < 2 {
		return 0, fmt.Errorf("invalid duration %q (want e.g. 2h, 14d, 1w, 1m, 1y)", v)
	}
	var unit int64
	switch v[len(v)-1] {
	case 'h':
		unit = 3600
	case 'd':
		unit = 86400
	case 'w':
		unit = 7 * 86400
	case 'm':
		unit = 30 * 86400
	case 'y':
		unit = 365 * 86400
	default:
		return 0, fmt.Errorf("invalid duration %q: the unit must be h, d, w, m (month) or y", v)
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid duration %q (want a positive whole number and a unit, e.g. 14d)", v)
	}
	if n > math.MaxInt64/int64(1e9)/unit {
		return 0, fmt.Errorf("duration %q is too large", v)
	}
	return Duration(n * unit * 1e9), nil
}

func (p *mosqParser) logDestination(ln *line) {
	if len(ln.words) == 0 {
		p.errorf(ln, "log_dest needs a value: stdout, stderr, file PATH or none")
		return
	}
	if !p.logDestSet {
		p.logDestSet = true
		p.logDest = nil // the first log_dest replaces the default
		p.mark(ln, "log.dest")
	}
	add := func(d string) {
		if !slices.Contains(p.logDest, d) {
			p.logDest = append(p.logDest, d)
		}
	}
	switch ln.words[0] {
	case "none":
		p.logDest = nil
	case "stdout", "stderr":
		add(ln.words[0])
	case "file":
		path := strings.Trim(strings.TrimPrefix(ln.rest, "file"), " \t")
		switch {
		case p.logFileSet:
			p.errorf(ln, "duplicate log_dest file (only one log file may be configured)")
		case path == "":
			p.errorf(ln, "log_dest file needs a path")
		default:
			p.logFileSet = true
			p.cfg.Log.File = path
			p.mark(ln, "log.file")
			add("file")
		}
	case "syslog":
		add("stderr")
		p.note(ln, "log_dest syslog: Moat logs to stderr instead (journald and most service managers collect it)")
	case "topic", "dlt":
		p.note(ln, "log_dest %s is not supported and ignored", ln.words[0])
	default:
		p.errorf(ln, "log_dest: invalid value %q (want stdout, stderr, file PATH or none)", ln.words[0])
	}
}

var logTypes = []string{"debug", "error", "warning", "notice", "information", "subscribe", "unsubscribe", "websockets", "internal", "none", "all"}

func (p *mosqParser) logType(ln *line) {
	v, ok := p.value(ln)
	if !ok {
		return
	}
	if !slices.Contains(logTypes, v) {
		p.errorf(ln, "log_type: invalid value %q (want one of %s)", v, strings.Join(logTypes, ", "))
		return
	}
	if !p.logTypeSet || v == "none" {
		p.logTypeSet = true
		p.logTypes = map[string]bool{}
	}
	if v != "none" {
		p.logTypes[v] = true
	}
	p.mark(ln, "log.level")
}

// finish resolves Mosquitto's implicit rules into cfg.
func (p *mosqParser) finish() {
	c := p.cfg
	if p.logDestSet {
		c.Log.Dest = p.logDest
		if c.Log.Dest == nil {
			c.Log.Dest = []string{}
		}
	}
	if p.logTypeSet {
		t := p.logTypes
		switch {
		case len(t) == 0:
			c.Log.Dest = []string{} // log_type none: nothing is logged
			c.Log.File = ""
		case t["debug"] || t["all"]:
			c.Log.Level = "debug"
		case t["information"] || t["notice"] || t["subscribe"] || t["unsubscribe"] || t["websockets"] || t["internal"]:
			c.Log.Level = "info"
		case t["warning"]:
			c.Log.Level = "warn"
		default:
			c.Log.Level = "error"
		}
	}

	all := p.listeners
	if p.def.pos == "" {
		p.def.pos = c.Source
	}
	if p.def.needed(p.pls) {
		if p.def.port == 0 {
			p.def.port = 1883
		}
		all = append(all, p.def)
	}
	if len(all) == 0 {
		// Mosquitto 2.0 "local only" mode: loopback 1883, anonymous allowed.
		c.Notes = append(c.Notes, c.Source+": no listener defined: Mosquitto 2.0 local-only mode (plain MQTT on 127.0.0.1:1883 and [::1]:1883, anonymous clients allowed)")
		v4, v6 := newMosqListener(false), newMosqListener(false)
		v4.port, v4.host = 1883, "127.0.0.1"
		v6.port, v6.host = 1883, "::1"
		all = []*mosqListener{v4, v6}
		defer func() { c.Listeners[1].Optional = true }()
	}
	if !p.pls {
		if g := &p.global; g.passwordFile != "" {
			c.Auth = []AuthBackend{{Type: AuthPasswordFile, Path: g.passwordFile}}
			c.keyPos["auth[0].path"] = g.passwordLine
			p.set["auth"] = true
		}
		if g := &p.global; g.aclFile != "" {
			c.ACL = &ACL{File: g.aclFile}
			c.keyPos["acl.acl_file"] = g.aclLine
			p.set["acl.acl_file"] = true
		}
	}
	used := map[string]bool{}
	for i, ml := range all {
		l := p.convert(ml)
		if p.pls {
			// per_listener_settings true: each listener has its own
			// password_file and acl_file, or none.
			if ml.sec.passwordFile != "" {
				l.Auth = []AuthBackend{{Type: AuthPasswordFile, Path: ml.sec.passwordFile}}
				ml.where["auth[0].path"] = ml.sec.passwordLine
				ml.set["auth"] = true
			}
			if ml.sec.aclFile != "" {
				l.ACLFile = ml.sec.aclFile
				ml.where["acl_file"] = ml.sec.aclLine
			}
		}
		// Anonymous access, Mosquitto 2.0: forced on in local-only mode
		// (even for a default listener started by a TLS key, which then
		// listens on every interface); otherwise false unless set.
		sec := &p.global
		if p.pls {
			sec = &ml.sec
		}
		switch {
		case p.localOnly:
			l.AllowAnonymous = true
			if ml.isDefault {
				p.cfg.parseWarnings = append(p.cfg.parseWarnings, fmt.Sprintf("%s: keys before the first listener line started Mosquitto's default listener on port %d on all interfaces, and without any listener or port line Mosquitto allows anonymous clients on it; add an explicit \"listener\" line and allow_anonymous false", ml.pos, ml.port))
			}
		default:
			l.AllowAnonymous = sec.allowAnon == 1
		}
		if sec.allowAnon != -1 || p.localOnly {
			ml.set["allow_anonymous"] = true
		}
		if sec.allowZeroLen != -1 {
			l.AllowZeroLengthClientID = sec.allowZeroLen == 1
			ml.set["allow_zero_length_client_id"] = true
		}
		if sec.autoIDSet {
			l.AutoIDPrefix = sec.autoIDPrefix
			ml.set["auto_id_prefix"] = true
		}
		// Names: transport-port, unique.
		base := fmt.Sprintf("%s-%d", l.Transport, ml.port)
		name := base
		for n := 2; used[name]; n++ {
			name = fmt.Sprintf("%s-%d", base, n)
		}
		used[name] = true
		l.Name = name
		for k := range ml.set {
			p.set[fmt.Sprintf("listeners[%d].%s", i, k)] = true
		}
		for k, pos := range ml.where {
			c.keyPos[fmt.Sprintf("listeners[%d].%s", i, k)] = pos
		}
		c.Listeners = append(c.Listeners, l)
	}
	for k := range p.set {
		c.Set = append(c.Set, k)
	}
	slices.Sort(c.Set)
}

// convert turns a Mosquitto listener into a Listener, reporting the TLS
// combinations Mosquitto would silently serve as plain MQTT.
func (p *mosqParser) convert(ml *mosqListener) Listener {
	l := defaultListener()
	l.pos = ml.pos
	l.Address = net.JoinHostPort(ml.host, strconv.Itoa(ml.port))
	l.Network = ml.network
	l.MaxConnections = max(ml.maxConn, 0)
	l.MaxQoS = ml.maxQoS
	l.MaxTopicAlias = ml.maxAlias
	l.UseUsernameAsClientID = ml.useUserAsID
	file, line := splitPos(ml.pos)
	bad := func(format string, args ...any) {
		p.errs = append(p.errs, &Error{File: file, Line: line, Msg: fmt.Sprintf("listener on port %d: ", ml.port) + fmt.Sprintf(format, args...)})
	}
	cert, key := ml.strs["certfile"], ml.strs["keyfile"]
	secure := cert != "" && key != ""
	switch {
	case cert != "" && key == "":
		bad("certfile is set but keyfile is not: both are needed for TLS (Mosquitto would silently serve plain MQTT here)")
	case key != "" && cert == "":
		bad("keyfile is set but certfile is not: both are needed for TLS (Mosquitto would silently serve plain MQTT here)")
	case !secure:
		var tlsOnly []string
		for _, k := range []string{"cafile", "capath", "crlfile", "ciphers", "ciphers_tls1.3", "tls_version", "dhparamfile"} {
			if _, ok := ml.strs[k]; ok {
				tlsOnly = append(tlsOnly, k)
			}
		}
		for _, k := range []string{"require_certificate", "use_identity_as_username", "use_subject_as_username", "allow_insecure_ciphers"} {
			if ml.bools[k] {
				tlsOnly = append(tlsOnly, k)
			}
		}
		if len(tlsOnly) > 0 {
			bad("%s set without certfile and keyfile: Mosquitto would silently serve plain MQTT on this listener; add certfile and keyfile to enable TLS", strings.Join(tlsOnly, ", "))
		}
	}
	switch {
	case ml.protocol == "websockets" && secure:
		l.Transport = TransportWSS
	case ml.protocol == "websockets":
		l.Transport = TransportWS
	case secure:
		l.Transport = TransportTLS
	default:
		l.Transport = TransportTCP
	}
	if !secure {
		l.TLS = nil
		return l
	}
	t := l.TLS
	t.Cert, t.Key = cert, key
	t.ClientCA, t.ClientCADir = ml.strs["cafile"], ml.strs["capath"]
	t.ClientAuth = ClientAuthNone
	if ml.bools["require_certificate"] {
		t.ClientAuth = ClientAuthRequired
		if t.ClientCA == "" && t.ClientCADir == "" {
			bad("require_certificate needs cafile or capath: the CA certificates that sign client certificates")
		}
	}
	switch ml.strs["tls_version"] {
	case "tlsv1.3":
		t.MinVersion = "1.3"
	default:
		t.MinVersion = "1.2"
	}
	t.Ciphers = ml.strs["ciphers"]
	t.AllowInsecureCiphers = ml.bools["allow_insecure_ciphers"]
	if v, ok := ml.strs["crlfile"]; ok {
		t.CRL = []string{v}
	}
	switch {
	case ml.bools["use_identity_as_username"]:
		t.Identity.UsernameFrom = IdentityCN // takes priority over use_subject_as_username
	case ml.bools["use_subject_as_username"]:
		t.Identity.UsernameFrom = IdentitySubject
	}
	if t.Identity.UsernameFrom != IdentityNone && t.ClientAuth != ClientAuthRequired {
		bad("use_identity_as_username and use_subject_as_username need require_certificate true")
		t.Identity.UsernameFrom = IdentityNone
	}
	return l
}

// osReadDir and osReadFile are the production include_dir accessors.
func osReadDir(dir string) ([]fs.DirEntry, error) { return os.ReadDir(filepath.FromSlash(dir)) }
func osReadFile(path string) ([]byte, error)      { return os.ReadFile(filepath.FromSlash(path)) }
