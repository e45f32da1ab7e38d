package guard

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Action is what a detector does when its threshold is reached. Every
// detection is logged and counted whatever its action.
type Action int

// Actions, from the mildest. ActionDefault (the zero value) selects the
// detector's documented default.
const (
	ActionDefault    Action = iota
	ActionLog               // log and count only
	ActionDisconnect        // also disconnect the client
	ActionBan               // also disconnect and ban its identities
)

func (a Action) String() string {
	switch a {
	case ActionLog:
		return "log"
	case ActionDisconnect:
		return "disconnect"
	case ActionBan:
		return "ban"
	}
	return "default"
}

// ParseAction parses "log", "disconnect" or "ban".
func ParseAction(s string) (Action, error) {
	switch s {
	case "log":
		return ActionLog, nil
	case "disconnect":
		return ActionDisconnect, nil
	case "ban":
		return ActionBan, nil
	}
	return 0, fmt.Errorf("guard: unknown action %q: use log, disconnect or ban", s)
}

// Keys is a set of identity kinds a detector counts on (and bans).
type Keys uint8

// Identity kinds a detector can count on. KeysDefault (zero) selects the
// detector's documented default.
const (
	KeyAddr     Keys = 1 << iota // source address (IPv6: its prefix, Config.IPv6Prefix)
	KeyClientID                  // MQTT client identifier
	KeyUsername                  // username (claimed at CONNECT for authentication failures)
	KeyCert                      // client certificate (SHA-256 fingerprint)

	KeysDefault Keys = 0
	KeysAll          = KeyAddr | KeyClientID | KeyUsername | KeyCert
)

// ParseKeys reads identity kinds by their configuration names: address,
// client_id, username, certificate.
func ParseKeys(names []string) (Keys, error) {
	var k Keys
	for _, n := range names {
		switch n {
		case "address":
			k |= KeyAddr
		case "client_id":
			k |= KeyClientID
		case "username":
			k |= KeyUsername
		case "certificate":
			k |= KeyCert
		default:
			return 0, fmt.Errorf("guard: unknown identity kind %q: use address, client_id, username or certificate", n)
		}
	}
	return k, nil
}

// Detector configures one behaviour detector: Threshold events within
// Window by any one identity trigger Action. Each identity kind in Keys is
// counted on its own, so that changing one (a new client ID, another
// source address) does not reset the count kept on the others. Zero fields
// take the detector's default (see Config).
type Detector struct {
	// Disabled turns the detector off: nothing is counted or logged.
	Disabled bool
	// Threshold is the number of events that triggers the action; at
	// most 10,000. For Config.Silence it is ignored: each report counts.
	Threshold int
	// Window is the period the events must fall in. For Config.Silence it
	// is how long a client may send nothing but keep-alives.
	Window time.Duration
	// Action is what happens when the threshold is reached.
	Action Action
	// Keys are the identity kinds counted, and banned with ActionBan.
	Keys Keys
	// BanFor is the first ban's duration; each further ban of the same
	// identity within Config.RepeatMemory doubles it, up to MaxBan.
	// Defaults 5m and 24h.
	BanFor time.Duration
	MaxBan time.Duration
}

// Config configures a Guard. The zero value gives the documented defaults;
// a negative rate or count turns that limit off. New never modifies the
// caller's struct.
type Config struct {
	// AuthFailures: failed authentications. Default 10 within 1m, ban for
	// 5m (doubling up to 24h) the source address, the username and the
	// client ID.
	AuthFailures Detector
	// TopicScan: SUBSCRIBE filters and PUBLISH topics the authorizer
	// denied. Default 20 within 1m, disconnect and ban for 5m (doubling)
	// the address, client ID, username and certificate.
	TopicScan Detector
	// Flapping: successful connections (connect/disconnect loops).
	// Default 10 within 1m per client ID, username or certificate; log.
	Flapping Detector
	// Abnormal: connections that ended without DISCONNECT (network error,
	// protocol error, keep-alive timeout). Default 5 within 1m per
	// address, client ID, username or certificate; log.
	Abnormal Detector
	// Undeliverable: PUBLISH packets no subscriber received. Default 100
	// within 1m per client ID, username or certificate; log.
	Undeliverable Detector
	// Silence: clients connected and sending nothing but keep-alives.
	// Window (default 10m) is the silence that is reported; log.
	Silence Detector
	// LimitAbuse: limits of the broker a client ran into (a packet,
	// topic or payload too large, too many subscriptions, a retained or
	// QoS 2 quota, its queue overflowing, its message rate: LimitHit).
	// Default 20 within 1m per address, client ID, username or
	// certificate; log.
	LimitAbuse Detector

	// ConnRate and ConnBurst bound new connections per source address
	// (IPv6: per Config.IPv6Prefix), checked at accept before any TLS
	// work. Defaults 20 per second, burst 100.
	ConnRate  float64
	ConnBurst int
	// ConnTableSize caps the addresses whose connection rate is tracked
	// (rounded up to 8 times a power of two). Default 65,536 (about 2 MiB);
	// when full, the most idle address is forgotten.
	ConnTableSize int
	// ListenerConnRate and ListenerConnBurst bound new connections per
	// listener, after the per-address check. Defaults 1,000 per second,
	// burst 5,000.
	ListenerConnRate  float64
	ListenerConnBurst int
	// MaxConnsPerAddr caps the open connections from one source address
	// (IPv6: per prefix). Default 1,024.
	MaxConnsPerAddr int
	// IPv6Prefix is the prefix length under which IPv6 addresses count as
	// one source (a host usually owns a /64). Default 64; 128 counts each
	// address on its own.
	IPv6Prefix int

	// MessageRate and MessageBurst bound the messages per second a client
	// may send; ByteRate and ByteBurst its bytes per second. Defaults
	// 10,000 messages and 32 MiB per second, bursts of the same.
	MessageRate  float64
	MessageBurst int
	ByteRate     float64
	ByteBurst    int
	// ThrottleLimit is how long a client may stay over its rate without a
	// break before it is disconnected. Default 1m.
	ThrottleLimit time.Duration

	// TrackedKeys caps the identities each detector counts at once.
	// Default 100,000; when full, stale entries and then arbitrary ones
	// are forgotten.
	TrackedKeys int
	// RepeatMemory is how long an automatic ban is remembered for doubling
	// the next one. Default 24h.
	RepeatMemory time.Duration
	// MaxBans caps the ban list (manual and automatic). Default 100,000;
	// when full, further automatic bans are refused (counted and logged)
	// and a bans file with more entries is refused.
	MaxBans int
	// BansFile is the persistent ban list (DATA_DIR/bans.json), reloaded
	// when it changes; automatic bans are written to it. Empty (and no
	// BanStore) keeps bans in memory only.
	BansFile string
	// BanStore, when set, keeps the ban list instead of a bans file (moat
	// serve: the durable store, when persistence is on). Only this Guard
	// writes it, so it is not watched for changes: the list changes
	// through AddBan, RemoveBan and the detectors. At most one of
	// BansFile and BanStore.
	BanStore BanStore
	// MaxBansFileSize bounds the bans file. Default 32 MiB.
	MaxBansFileSize int64
	// PollInterval is how often the bans file is checked and expired bans
	// are removed. Default 1s.
	PollInterval time.Duration
	// Tick, when set, replaces the PollInterval ticker (tests).
	Tick <-chan time.Time

	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// Rand makes ban IDs and the address table's hash seed. Default
	// crypto/rand.
	Rand io.Reader
	// Logger receives every detection, ban and refusal. Default
	// slog.Default().
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultConnRate          = 20
	DefaultConnBurst         = 100
	DefaultConnTableSize     = 65536
	DefaultListenerConnRate  = 1000
	DefaultListenerConnBurst = 5000
	DefaultMaxConnsPerAddr   = 1024
	DefaultIPv6Prefix        = 64
	DefaultMessageRate       = 10000
	DefaultMessageBurst      = 10000
	DefaultByteRate          = 32 << 20
	DefaultByteBurst         = 32 << 20
	DefaultThrottleLimit     = time.Minute
	DefaultTrackedKeys       = 100000
	DefaultRepeatMemory      = 24 * time.Hour
	DefaultMaxBans           = 100000
	DefaultMaxBansFileSize   = 32 << 20
	DefaultPollInterval      = time.Second
	DefaultBanFor            = 5 * time.Minute
	DefaultMaxBan            = 24 * time.Hour
	maxThreshold             = 10000
)

// Detector names, used in reasons, logs, counters and Ban.Source.
const (
	DetectAuthFailures  = "auth_failures"
	DetectTopicScan     = "topic_scan"
	DetectFlapping      = "flapping"
	DetectAbnormal      = "abnormal_disconnects"
	DetectUndeliverable = "undeliverable"
	DetectSilence       = "silence"
	DetectLimitAbuse    = "limit_abuse"
)

var detectorDefaults = map[string]Detector{
	DetectAuthFailures:  {Threshold: 10, Window: time.Minute, Action: ActionBan, Keys: KeyAddr | KeyUsername | KeyClientID},
	DetectTopicScan:     {Threshold: 20, Window: time.Minute, Action: ActionBan, Keys: KeysAll},
	DetectFlapping:      {Threshold: 10, Window: time.Minute, Action: ActionLog, Keys: KeyClientID | KeyUsername | KeyCert},
	DetectAbnormal:      {Threshold: 5, Window: time.Minute, Action: ActionLog, Keys: KeysAll},
	DetectUndeliverable: {Threshold: 100, Window: time.Minute, Action: ActionLog, Keys: KeyClientID | KeyUsername | KeyCert},
	DetectSilence:       {Threshold: 1, Window: 10 * time.Minute, Action: ActionLog, Keys: KeysAll},
	DetectLimitAbuse:    {Threshold: 20, Window: time.Minute, Action: ActionLog, Keys: KeysAll},
}

// resolve fills d's zero fields from the defaults of detector name.
func (d Detector) resolve(name string) Detector {
	def := detectorDefaults[name]
	if d.Threshold == 0 {
		d.Threshold = def.Threshold
	}
	if name == DetectSilence {
		d.Threshold = 1
	}
	if d.Window == 0 {
		d.Window = def.Window
	}
	if d.Action == ActionDefault {
		d.Action = def.Action
	}
	if d.Keys == KeysDefault {
		d.Keys = def.Keys
	}
	if d.BanFor == 0 {
		d.BanFor = DefaultBanFor
	}
	if d.MaxBan == 0 {
		d.MaxBan = DefaultMaxBan
	}
	return d
}

func (d Detector) validate(name string, add func(string, ...any)) {
	if d.Disabled {
		return
	}
	if d.Threshold < 1 || d.Threshold > maxThreshold {
		add("%s: threshold %d out of range 1..%d", name, d.Threshold, maxThreshold)
	}
	if d.Window < 0 {
		add("%s: negative window %v", name, d.Window)
	}
	if d.Action < ActionDefault || d.Action > ActionBan {
		add("%s: unknown action %d", name, d.Action)
	}
	if d.Keys&^KeysAll != 0 {
		add("%s: unknown identity kinds %#x", name, d.Keys)
	}
	if d.BanFor < 0 || d.MaxBan < 0 || d.MaxBan < d.BanFor {
		add("%s: ban durations %v..%v: need 0 < ban_for <= max_ban", name, d.BanFor, d.MaxBan)
	}
}

// settings is the resolved configuration.
type settings struct {
	Config
	detectors map[string]Detector
}

// resolve returns the configuration with defaults applied, or every
// problem at once.
func (c *Config) resolve() (settings, error) {
	s := settings{Config: *c, detectors: map[string]Detector{}}
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf("guard: "+format, a...)) }
	for name, d := range map[string]Detector{
		DetectAuthFailures: c.AuthFailures, DetectTopicScan: c.TopicScan, DetectFlapping: c.Flapping,
		DetectAbnormal: c.Abnormal, DetectUndeliverable: c.Undeliverable, DetectSilence: c.Silence,
		DetectLimitAbuse: c.LimitAbuse,
	} {
		d = d.resolve(name)
		d.validate(name, add)
		s.detectors[name] = d
	}
	deff := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	defi := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	deff(&s.ConnRate, DefaultConnRate)
	defi(&s.ConnBurst, DefaultConnBurst)
	defi(&s.ConnTableSize, DefaultConnTableSize)
	deff(&s.ListenerConnRate, DefaultListenerConnRate)
	defi(&s.ListenerConnBurst, DefaultListenerConnBurst)
	defi(&s.MaxConnsPerAddr, DefaultMaxConnsPerAddr)
	defi(&s.IPv6Prefix, DefaultIPv6Prefix)
	deff(&s.MessageRate, DefaultMessageRate)
	defi(&s.MessageBurst, DefaultMessageBurst)
	deff(&s.ByteRate, DefaultByteRate)
	defi(&s.ByteBurst, DefaultByteBurst)
	defi(&s.TrackedKeys, DefaultTrackedKeys)
	defi(&s.MaxBans, DefaultMaxBans)
	if s.ThrottleLimit == 0 {
		s.ThrottleLimit = DefaultThrottleLimit
	}
	if s.RepeatMemory == 0 {
		s.RepeatMemory = DefaultRepeatMemory
	}
	if s.MaxBansFileSize == 0 {
		s.MaxBansFileSize = DefaultMaxBansFileSize
	}
	if s.PollInterval == 0 {
		s.PollInterval = DefaultPollInterval
	}
	for _, b := range []struct {
		name  string
		rate  float64
		burst int
	}{{"conn_rate", s.ConnRate, s.ConnBurst}, {"listener_conn_rate", s.ListenerConnRate, s.ListenerConnBurst},
		{"message_rate", s.MessageRate, s.MessageBurst}, {"byte_rate", s.ByteRate, s.ByteBurst}} {
		if b.rate > 0 && b.burst < 1 {
			add("%s: burst %d must be at least 1 (or set the rate negative to turn the limit off)", b.name, b.burst)
		}
		if b.rate > 1e9 {
			add("%s: rate %g above 1e9 per second; set it negative to turn the limit off", b.name, b.rate)
		}
	}
	if s.ConnTableSize < 8 || s.ConnTableSize > 1<<24 {
		add("conn_table_size %d out of range 8..16777216", s.ConnTableSize)
	}
	if s.IPv6Prefix < 1 || s.IPv6Prefix > 128 {
		add("ipv6_prefix %d out of range 1..128", s.IPv6Prefix)
	}
	if s.TrackedKeys < 1 {
		add("tracked_keys %d must be at least 1", s.TrackedKeys)
	}
	if s.MaxBans < 1 {
		add("max_bans %d must be at least 1", s.MaxBans)
	}
	if s.BansFile != "" && s.BanStore != nil {
		add("set at most one of BansFile and BanStore")
	}
	if s.ThrottleLimit < 0 || s.RepeatMemory < 0 || s.PollInterval < 0 || s.MaxBansFileSize < 0 {
		add("negative duration or size")
	}
	return s, errors.Join(errs...)
}
