package config

// Defense configures abuse detection, the ban list and rate limits
// (docs/defense.md). Every zero field takes the documented default, so the
// zero Defense is defense on with the defaults; a negative rate or count
// turns that limit off. The values are checked where they are used (the
// command line maps them onto the guard), with this file's line numbers.
type Defense struct {
	// Disabled turns all of defense off: no detection, bans or rate limits.
	Disabled bool `json:"disabled,omitempty" yaml:"disabled"`

	AuthFailures        Detector `json:"auth_failures,omitzero" yaml:"auth_failures"`
	TopicScan           Detector `json:"topic_scan,omitzero" yaml:"topic_scan"`
	Flapping            Detector `json:"flapping,omitzero" yaml:"flapping"`
	AbnormalDisconnects Detector `json:"abnormal_disconnects,omitzero" yaml:"abnormal_disconnects"`
	Undeliverable       Detector `json:"undeliverable,omitzero" yaml:"undeliverable"`
	Silence             Detector `json:"silence,omitzero" yaml:"silence"`
	LimitAbuse          Detector `json:"limit_abuse,omitzero" yaml:"limit_abuse"`

	ConnRate          float64  `json:"conn_rate,omitempty" yaml:"conn_rate"`
	ConnBurst         int      `json:"conn_burst,omitempty" yaml:"conn_burst"`
	ConnTableSize     int      `json:"conn_table_size,omitempty" yaml:"conn_table_size"`
	ListenerConnRate  float64  `json:"listener_conn_rate,omitempty" yaml:"listener_conn_rate"`
	ListenerConnBurst int      `json:"listener_conn_burst,omitempty" yaml:"listener_conn_burst"`
	MaxConnsPerAddr   int      `json:"max_conns_per_addr,omitempty" yaml:"max_conns_per_addr"`
	IPv6Prefix        int      `json:"ipv6_prefix,omitempty" yaml:"ipv6_prefix"`
	MessageRate       float64  `json:"message_rate,omitempty" yaml:"message_rate"`
	MessageBurst      int      `json:"message_burst,omitempty" yaml:"message_burst"`
	ByteRate          Size     `json:"byte_rate,omitempty" yaml:"byte_rate"`
	ByteBurst         Size     `json:"byte_burst,omitempty" yaml:"byte_burst"`
	ThrottleLimit     Duration `json:"throttle_limit,omitempty" yaml:"throttle_limit"`
	TrackedKeys       int      `json:"tracked_keys,omitempty" yaml:"tracked_keys"`
	RepeatMemory      Duration `json:"repeat_memory,omitempty" yaml:"repeat_memory"`
	MaxBans           int      `json:"max_bans,omitempty" yaml:"max_bans"`
	// BansFile is the persistent ban list. Default DataDir/bans.json.
	BansFile     string   `json:"bans_file,omitempty" yaml:"bans_file"`
	PollInterval Duration `json:"poll_interval,omitempty" yaml:"poll_interval"`
}

// Detector configures one behaviour detector of Defense; zero fields take
// that detector's default.
type Detector struct {
	Disabled  bool     `json:"disabled,omitempty" yaml:"disabled"`
	Threshold int      `json:"threshold,omitempty" yaml:"threshold"`
	Window    Duration `json:"window,omitempty" yaml:"window"`
	// Action is log, disconnect or ban.
	Action string `json:"action,omitempty" yaml:"action"`
	// Keys are the identities counted: address, client_id, username,
	// certificate.
	Keys   []string `json:"keys,omitempty" yaml:"keys"`
	BanFor Duration `json:"ban_for,omitempty" yaml:"ban_for"`
	MaxBan Duration `json:"max_ban,omitempty" yaml:"max_ban"`
}

// Audit configures the tamper-evident audit log (docs/audit.md). The zero
// Audit is the log on, in DataDir/audit.log, signed with DataDir/audit.key.
type Audit struct {
	// Disabled turns the audit log off (the broker warns at start).
	Disabled bool `json:"disabled,omitempty" yaml:"disabled"`
	// File is the log file. Default DataDir/audit.log.
	File string `json:"file,omitempty" yaml:"file"`
	// DenySample bounds the authorization denials recorded per client:
	// the first DenySample, then one in every DenySample more (each entry
	// carries the count). Default 10.
	DenySample int `json:"deny_sample,omitempty" yaml:"deny_sample"`
	// Syslog forwards every line to a syslog receiver (RFC 5424).
	Syslog AuditSyslog `json:"syslog,omitzero" yaml:"syslog"`
}

// AuditSyslog is where audit lines are forwarded; an empty Network means
// no forwarding.
type AuditSyslog struct {
	// Network is udp, tcp or unix.
	Network string `json:"network,omitempty" yaml:"network"`
	// Address is host:port, or a socket path for unix.
	Address string `json:"address,omitempty" yaml:"address"`
	// Facility is the syslog facility (0-23). Default 10 (authpriv).
	Facility int `json:"facility,omitempty" yaml:"facility"`
}
