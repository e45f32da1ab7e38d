package cli

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/admin"
	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/packet"
)

// defense is the broker.Observer of moat serve: it adapts the guard
// (detection, bans, rate limits) to the broker and records every security
// decision in the audit log. Either part may be off (nil). See
// docs/design/guard.md for the calls and docs/audit.md for the events.
type defense struct {
	g          *guard.Guard // nil: defense disabled
	audit      *audit.Log   // nil: audit log disabled
	log        *slog.Logger
	denySample atomic.Int64                  // audit.deny_sample; a reload changes it
	srv        atomic.Pointer[broker.Server] // set once the broker exists

	lmu       sync.Mutex
	listeners map[string]*defListener

	// refusals at accept, for sampling their audit entries
	acceptRefused atomic.Int64

	// limitHits counts the limits clients ran into, by broker.Limit; the
	// last slot is the per-client message and byte rate (limitRate).
	limitHits [limitRate + 1]atomic.Int64

	// checked, set by tests, runs in Connected right after the identity
	// passed the ban check (the window Attached closes).
	checked atomic.Pointer[func(c *broker.Client)]

	// banOrigin, in a cluster, names the node a ban (by ID) was added or
	// removed on, for the audit log (serve_cluster_security.go). Set
	// before serving; nil without a cluster.
	banOrigin func(id string) string
}

var (
	_ broker.Observer         = (*defense)(nil)
	_ broker.ObserverCounters = (*defense)(nil)
	_ broker.ConnObserver     = (*connDefense)(nil)
	_ broker.AttachObserver   = (*connDefense)(nil)
	_ broker.GrantObserver    = (*connDefense)(nil)
	_ broker.LimitObserver    = (*connDefense)(nil)
	_ broker.ReadMarker       = (*connDefense)(nil)
)

// limitRate is the limit of the per-client rates (the guard's own, which
// the broker applies as read pauses), after the broker's limits.
const limitRate = broker.NumLimits

// limitName names a limit for counters and the guard: the broker's
// names, and "rate".
func limitName(l broker.Limit) string {
	if l == limitRate {
		return "rate"
	}
	return l.String()
}

// acceptSample: of the connections refused at accept (a flood), the first
// and then one in acceptSample is recorded in the audit log, with the count.
const acceptSample = 1000

// planDefense opens the audit log and the guard as the configuration says
// and makes them the broker's Observer. --check validates the settings and
// reads the bans file but opens and writes nothing. Both are closed after
// the broker is shut down (cleanup runs newest first), the audit log last,
// with its final checkpoint.
func (p *servePlan) planDefense() {
	dc, ac := p.cfg.Defense, p.cfg.Audit
	d := &defense{log: p.log, listeners: map[string]*defListener{}}
	d.setDenySample(ac.DenySample)
	if ac.DenySample < 0 {
		p.problem("audit.deny_sample", "", errors.New("audit.deny_sample must not be negative"))
	}
	var gc guard.Config
	if !dc.Disabled {
		gc = p.guardConfig(dc)
	}
	if len(p.errs) > 0 {
		return
	}
	if !p.check && (!ac.Disabled || !dc.Disabled) {
		if err := os.MkdirAll(p.cfg.DataDir, 0o700); err != nil {
			p.problem("data_dir", "", fmt.Errorf("creating the data directory %s: %w", p.cfg.DataDir, err))
			return
		}
	}
	if ac.Disabled {
		p.log.Warn("serve: the audit log is disabled (audit.disabled): security decisions are only in the log")
	} else if !p.check {
		cfg := audit.Config{Dir: p.cfg.DataDir, File: ac.File, Logger: p.log}
		if ac.Syslog.Network != "" {
			cfg.Syslog = &audit.SyslogConfig{Network: ac.Syslog.Network, Address: ac.Syslog.Address, Facility: ac.Syslog.Facility}
		}
		l, err := audit.Open(cfg)
		if err != nil {
			p.problem("audit", "", err)
			return
		}
		d.audit = l
		p.cleanup = append(p.cleanup, func() {
			if err := l.Close(); err != nil {
				p.log.Error("serve: closing the audit log", "err", err)
			}
		})
	}
	if dc.Disabled {
		p.log.Warn("serve: defense is disabled (defense.disabled): no abuse detection, bans or rate limits")
	} else {
		if p.check {
			if _, err := (guard.File{Path: gc.BansFile, MaxBans: gc.MaxBans}).Read(); err != nil {
				p.problem("defense.bans_file", "", err)
			}
			gc.BansFile = ""
		} else if p.planBanStore(d, &gc); len(p.errs) > 0 {
			return
		}
		gc.Logger = slog.New(&auditTee{next: p.log.Handler(), d: d})
		gc.Now, gc.Tick = p.guardNow, p.guardTick
		g, err := guard.New(gc)
		if err != nil {
			p.problem("defense", "", err)
			return
		}
		d.g = g
		p.cleanup = append(p.cleanup, func() {
			if err := g.Close(); err != nil {
				p.log.Error("serve: writing the bans file at shutdown", "err", err)
			}
		})
		g.OnBan(d.onBan)
		// After OnBan: a ban the watcher loaded in between is listed here
		// (and maybe also as ban.add), never in neither.
		d.recordBansInForce()
		if !p.check {
			p.serveBanControl(d)
		}
	}
	if d.g != nil || d.audit != nil {
		p.broker.Observer = d
		p.defense = d
	}
}

// bansFile is the ban list's file: defense.bans_file, or bans.json in the
// data directory.
func (p *servePlan) bansFile() string {
	return cmp.Or(p.cfg.Defense.BansFile, filepath.Join(p.cfg.DataDir, guard.BansFileName))
}

// adminAuditor records the admin API's changes in the audit log; nil
// (nothing recorded there) when the log is off. d may be nil.
func (d *defense) adminAuditor() admin.Auditor {
	if d == nil || d.audit == nil {
		return nil
	}
	return adminAudit{d}
}

type adminAudit struct{ d *defense }

// AdminAction records one change made through the admin API as an
// admin.action entry: who (the token's name and address), what, and the
// result. The change itself is recorded as well where it takes effect
// (a ban added through the API is also a ban.add once the broker loads it).
func (a adminAudit) AdminAction(x admin.Action) {
	a.d.record(audit.TypeAdminAction, audit.String("reason", "admin API"), audit.String("action", x.Action),
		audit.String("target", x.Target), audit.String("token", x.Token), audit.String("remote", x.Remote),
		audit.String("result", x.Result))
}

// guardConfig translates the defense section, reporting bad actions and
// keys at their lines.
func (p *servePlan) guardConfig(dc config.Defense) guard.Config {
	gc := guard.Config{
		ConnRate: dc.ConnRate, ConnBurst: dc.ConnBurst, ConnTableSize: dc.ConnTableSize,
		ListenerConnRate: dc.ListenerConnRate, ListenerConnBurst: dc.ListenerConnBurst,
		MaxConnsPerAddr: dc.MaxConnsPerAddr, IPv6Prefix: dc.IPv6Prefix,
		MessageRate: dc.MessageRate, MessageBurst: dc.MessageBurst,
		ByteRate: float64(dc.ByteRate), ByteBurst: int(dc.ByteBurst), ThrottleLimit: dc.ThrottleLimit.D(),
		TrackedKeys: dc.TrackedKeys, RepeatMemory: dc.RepeatMemory.D(), MaxBans: dc.MaxBans,
		BansFile:     p.bansFile(),
		PollInterval: dc.PollInterval.D(),
	}
	for _, det := range []struct {
		key string
		in  config.Detector
		out *guard.Detector
	}{
		{guard.DetectAuthFailures, dc.AuthFailures, &gc.AuthFailures},
		{guard.DetectTopicScan, dc.TopicScan, &gc.TopicScan},
		{guard.DetectFlapping, dc.Flapping, &gc.Flapping},
		{guard.DetectAbnormal, dc.AbnormalDisconnects, &gc.Abnormal},
		{guard.DetectUndeliverable, dc.Undeliverable, &gc.Undeliverable},
		{guard.DetectSilence, dc.Silence, &gc.Silence},
		{guard.DetectLimitAbuse, dc.LimitAbuse, &gc.LimitAbuse},
	} {
		path := "defense." + det.key
		*det.out = guard.Detector{Disabled: det.in.Disabled, Threshold: det.in.Threshold, Window: det.in.Window.D(),
			BanFor: det.in.BanFor.D(), MaxBan: det.in.MaxBan.D()}
		if det.in.Action != "" {
			a, err := guard.ParseAction(det.in.Action)
			if err != nil {
				p.problem(path+".action", path+".action: ", err)
			}
			det.out.Action = a
		}
		if len(det.in.Keys) > 0 {
			k, err := guard.ParseKeys(det.in.Keys)
			if err != nil {
				p.problem(path+".keys", path+".keys: ", err)
			}
			det.out.Keys = k
		}
	}
	return gc
}

// record queues an audit event; a no-op when the log is off.
func (d *defense) record(typ string, fields ...audit.Field) {
	if d.audit != nil {
		d.audit.Record(audit.Event{Type: typ, Fields: fields})
	}
}

// defListener is a listener's connection gate.
type defListener struct {
	gl *guard.Listener
	// gated: the listener runs the accept checks itself (gate), before
	// TLS and the WebSocket upgrade; Accept only counts the connection.
	gated bool
}

func (d *defense) listener(name string) *defListener {
	d.lmu.Lock()
	defer d.lmu.Unlock()
	l, ok := d.listeners[name]
	if !ok {
		l = &defListener{gl: d.g.Listener(name)}
		d.listeners[name] = l
	}
	return l
}

// gate returns the listener.Config.Gate of a listener: the connection
// rates and address bans are checked there, on the bare socket (before
// TLS, the WebSocket upgrade and the broker's own accept work), and the
// broker's Accept only counts connections per address. A refusal costs
// no allocation and no log line (it is counted, and sampled into the
// audit log). nil when defense is off. Called while planning, before
// serving.
func (d *defense) gate(name string) func(net.Addr) bool {
	if d == nil || d.g == nil {
		return nil
	}
	l := d.listener(name)
	d.lmu.Lock()
	l.gated = true
	d.lmu.Unlock()
	return func(remote net.Addr) bool {
		return d.preTLS(l, name, guard.AddrOf(remote), false).Allow
	}
}

// preTLS runs the checks that cost no TLS work: the source address's and
// the listener's connection rates, then address bans. The reason of a ban
// refusal is built only when withReason is set or the refusal is sampled
// into the audit log: a flood of banned sockets allocates nothing.
func (d *defense) preTLS(l *defListener, listener string, addr netip.Addr, withReason bool) broker.Decision {
	if dec := l.gl.AllowAccept(addr); !dec.Allow {
		if n, sample := d.sampleRefusal(); sample {
			d.recordRefusal(audit.TypeLimit, listener, addr, dec.Reason, n)
		}
		return broker.Decision{Reason: dec.Reason}
	}
	if b, ok := d.g.BannedAddr(addr); ok {
		var reason string
		if n, sample := d.sampleRefusal(); sample || withReason {
			reason = b.Refusal()
			if sample {
				d.recordRefusal(audit.TypeBanRefuse, listener, addr, reason, n)
			}
		}
		return broker.Decision{Reason: reason}
	}
	return broker.Decision{Allow: true}
}

// Accept runs the checks that cost no TLS work: the source address's and
// the listener's connection rates, address bans, connections per address.
func (d *defense) Accept(listener string, remote net.Addr) (broker.ConnObserver, broker.Decision) {
	addr := guard.AddrOf(remote)
	if d.g == nil {
		return &connDefense{d: d, addr: addr, listener: listener}, broker.Decision{Allow: true}
	}
	if l := d.listener(listener); !l.gated {
		if dec := d.preTLS(l, listener, addr, true); !dec.Allow {
			return nil, dec
		}
	}
	if dec := d.g.Acquire(addr); !dec.Allow {
		if n, sample := d.sampleRefusal(); sample {
			d.recordRefusal(audit.TypeLimit, listener, addr, dec.Reason, n)
		}
		return nil, broker.Decision{Reason: dec.Reason}
	}
	return &connDefense{d: d, addr: addr, listener: listener, acquired: true}, broker.Decision{Allow: true}
}

// sampleRefusal counts a refusal at accept and reports whether it is to
// be recorded in the audit log: the first and then one in acceptSample,
// so that a flood cannot fill the audit log (the guard counts every one).
// It returns the count so far with the answer.
func (d *defense) sampleRefusal() (int64, bool) {
	n := d.acceptRefused.Add(1)
	return n, d.audit != nil && (n == 1 || n%acceptSample == 0)
}

// recordRefusal records sampled refusal number n at accept.
func (d *defense) recordRefusal(typ, listener string, addr netip.Addr, reason string, n int64) {
	d.record(typ, audit.String("reason", reason), audit.String("addr", addr.String()), audit.String("listener", listener),
		audit.String("stage", "accept"), audit.Int("refused_total", n))
}

// recordBansInForce records every ban in force when the broker starts
// (from the bans file), one ban.load entry each, so that the audit chain
// shows every ban that refuses clients, not only those added while it
// ran. The entries are written before serving and none is dropped (the
// list is bounded by max_bans); an error is logged, not fatal: the bans
// are in force either way.
func (d *defense) recordBansInForce() {
	if d.audit == nil || d.g == nil {
		return
	}
	bans := d.g.Bans()
	if len(bans) == 0 {
		return
	}
	evs := make([]audit.Event, 0, len(bans))
	for _, b := range bans {
		fields := []audit.Field{audit.String("ban", b.ID), audit.String("kind", string(b.Kind)), audit.String("value", b.Value),
			audit.String("reason", cmp.Or(b.Reason, "unspecified")), audit.String("source", b.Source),
			audit.String("created", b.Created.UTC().Format(time.RFC3339)), audit.Int("count", int64(len(bans)))}
		if !b.Expires.IsZero() {
			fields = append(fields, audit.String("expires", b.Expires.UTC().Format(time.RFC3339)))
		}
		evs = append(evs, audit.Event{Type: audit.TypeBanLoad, Fields: fields})
	}
	if err := d.audit.RecordWait(evs...); err != nil {
		d.log.Error("serve: recording the bans in force in the audit log", "bans", len(bans), "err", err)
	}
}

// onBan records a new ban and disconnects the live clients it matches
// through the one loss-of-access path (broker.Reevaluate, each client
// recorded as access.lost): v5 clients get DISCONNECT 0x98 or 0x87 with
// the ban as reason, 3.1.1 clients are closed.
func (d *defense) onBan(m guard.Match) {
	b := m.Ban
	fields := []audit.Field{audit.String("ban", b.ID), audit.String("kind", string(b.Kind)), audit.String("value", b.Value),
		audit.String("reason", cmp.Or(b.Reason, "unspecified")), audit.String("source", b.Source)}
	if !b.Expires.IsZero() {
		fields = append(fields, audit.String("expires", b.Expires.UTC().Format(time.RFC3339)))
	}
	if d.banOrigin != nil {
		fields = append(fields, audit.String("origin_node", d.banOrigin(b.ID)))
	}
	// MQTT 5 has no Banned (0x8A) in DISCONNECT: an operator's ban is an
	// Administrative action (0x98), a detector's Not authorized (0x87).
	code := packet.NotAuthorized
	if b.Source == guard.SourceManual {
		code = packet.AdministrativeAction
	}
	// The clients the ban ends are recorded (access.lost) before the
	// ban.add entry that counts them.
	if srv := d.srv.Load(); srv != nil {
		res := reevaluate(srv, d.record, "ban", broker.Reevaluation{
			Match:      func(c *broker.Client) bool { return m.Matches(liveIdentity(c)) },
			Disconnect: true,
			Code:       code,
			Reason:     b.Refusal(),
		})
		fields = append(fields, audit.Int("disconnected", int64(res.Disconnected)))
	}
	d.record(audit.TypeBanAdd, fields...)
}

// liveIdentity is the guard identity of a connected client.
func liveIdentity(c *broker.Client) guard.Identity {
	id := guard.Identity{Addr: guard.AddrOf(c.Remote), ClientID: c.ClientID, Username: c.Username}
	if certs := c.PeerCertificates(); len(certs) > 0 {
		id.CertFingerprint, id.CertSerial = guard.CertIdentity(certs[0])
	}
	return id
}

// Counters are published under $SYS/broker/moat/.
func (d *defense) Counters() map[string]int64 {
	out := map[string]int64{}
	if d.g != nil {
		st := d.g.Stats()
		out["bans"] = int64(st.Bans)
		out["bans/added"] = int64(st.BansAdded)
		out["bans/automatic"] = int64(st.AutoBans)
		out["bans/expired"] = int64(st.BansExpired)
		out["bans/removed"] = int64(st.BansRemoved)
		out["bans/refused_full"] = int64(st.BansRefusedFull)
		out["bans/file_errors"] = int64(st.BansFileErrors)
		out["refused/conn_rate"] = int64(st.ConnRateRefused)
		out["refused/listener_rate"] = int64(st.ListenerRateRefused)
		out["refused/conns_per_addr"] = int64(st.ConnsPerAddrRefused)
		out["refused/banned_addr"] = int64(st.AddrBanRefused)
		out["refused/banned_identity"] = int64(st.IdentityBanRefused)
		out["throttled"] = int64(st.Throttled)
		out["throttle_disconnects"] = int64(st.ThrottleDisconnects)
		for name, ds := range st.Detectors {
			out["detections/"+name] = int64(ds.Detections)
			out["events/"+name] = int64(ds.Events)
		}
	}
	for name, n := range d.LimitHits() {
		out["limits/"+name] = n
	}
	if d.audit != nil {
		st := d.audit.Stats()
		out["audit/written"] = int64(st.Written)
		out["audit/dropped"] = int64(st.Dropped)
		out["audit/write_errors"] = int64(st.WriteErrors)
	}
	return out
}

// LimitHits returns the limits clients ran into, by name ("packet_size",
// …, "queue_full", "rate"), those never hit included. d may be nil.
func (d *defense) LimitHits() map[string]int64 {
	if d == nil {
		return nil
	}
	out := make(map[string]int64, len(d.limitHits))
	for l := broker.Limit(1); l <= limitRate; l++ {
		out[limitName(l)] = d.limitHits[l].Load()
	}
	return out
}

// connDefense follows one connection; the broker calls it from the
// connection's reader only.
type connDefense struct {
	d        *defense
	addr     netip.Addr
	listener string
	acquired bool // counted by guard.Acquire: Release when closed
	lim      *guard.ClientLimiter
	certDone bool
	fp, ser  string
	denies   int64
	silent   bool   // a silent period was reported and has not ended
	epoch    uint64 // guard.BanEpoch when Connected checked the identity
	// client is the broker's client, known from CONNECT on (Read is
	// called without it); limits counts the limits it ran into; overRate
	// is set while its reads are paused by its rate.
	client   *broker.Client
	limits   int64
	overRate bool
}

// id builds the guard identity; username is the verified one, or the
// claimed one where nothing is verified yet.
func (cd *connDefense) id(c *broker.Client, username string) guard.Identity {
	if !cd.certDone {
		cd.certDone = true
		if certs := c.PeerCertificates(); len(certs) > 0 {
			cd.fp, cd.ser = guard.CertIdentity(certs[0])
		}
	}
	return guard.Identity{Addr: cd.addr, ClientID: c.ClientID, Username: username, CertFingerprint: cd.fp, CertSerial: cd.ser}
}

// who is the audit description of a client.
func (cd *connDefense) who(c *broker.Client, fields ...audit.Field) []audit.Field {
	fields = append(fields, audit.String("addr", cd.addr.String()), audit.String("listener", cd.listener),
		audit.String("client_id", c.ClientID))
	if u := cmp.Or(c.Username, c.ClaimedUsername); u != "" {
		fields = append(fields, audit.String("username", u))
	}
	if cd.fp != "" {
		fields = append(fields, audit.String("cert_sha256", cd.fp))
	}
	return fields
}

// verdict records a detection and turns the guard's verdict into the
// broker's: a disconnect uses 0x87 Not authorized (a ban the detection
// added has already ended the client through onBan).
func (cd *connDefense) verdict(c *broker.Client, v guard.Verdict) broker.Verdict {
	if v.Detected == "" {
		return broker.Verdict{}
	}
	var disconnect int64
	if v.Disconnect {
		disconnect = 1
	}
	// Bans the detection added are recorded by onBan (ban.add, source
	// the detector), before this entry.
	cd.d.record(audit.TypeDetect, cd.who(c, audit.String("detector", v.Detected), audit.String("reason", v.Reason),
		audit.Int("disconnect", disconnect))...)
	return broker.Verdict{Disconnect: v.Disconnect, Code: packet.NotAuthorized, Reason: v.Reason}
}

func (cd *connDefense) banned(c *broker.Client, id guard.Identity, stage string) broker.Decision {
	if cd.d.g == nil {
		return broker.Decision{Allow: true}
	}
	b, ok := cd.d.g.BannedIdentity(id)
	if !ok {
		return broker.Decision{Allow: true}
	}
	cd.d.record(audit.TypeBanRefuse, cd.who(c, audit.String("reason", b.Refusal()), audit.String("ban", b.ID), audit.String("stage", stage))...)
	return broker.Decision{Reason: b.Refusal()}
}

func (cd *connDefense) Connecting(c *broker.Client) broker.Decision {
	cd.client = c
	return cd.banned(c, cd.id(c, c.ClaimedUsername), "connect")
}

// Limited counts a limit the client ran into for the limit_abuse
// detector, and records it in the audit log (limit; per connection the
// first audit.deny_sample and then one in every deny_sample, with the
// count).
func (cd *connDefense) Limited(c *broker.Client, l broker.Limit, detail string) broker.Verdict {
	return cd.limited(c, l, detail)
}

func (cd *connDefense) limited(c *broker.Client, l broker.Limit, detail string) broker.Verdict {
	if l > 0 && l <= limitRate {
		cd.d.limitHits[l].Add(1)
	}
	cd.limits++
	if n, every := cd.limits, cd.d.denySample.Load(); n <= every || n%every == 0 {
		cd.d.record(audit.TypeLimit, cd.who(c, audit.String("reason", detail), audit.String("limit", limitName(l)),
			audit.String("stage", "session"), audit.Int("limited_total", n))...)
	}
	if cd.d.g == nil {
		return broker.Verdict{}
	}
	return cd.verdict(c, cd.d.g.LimitHit(cd.id(c, cmp.Or(c.Username, c.ClaimedUsername)), limitName(l), detail))
}

func (cd *connDefense) AuthFailed(c *broker.Client, reason string) {
	reason = cmp.Or(reason, "refused")
	cd.d.record(audit.TypeAuthFailure, cd.who(c, audit.String("reason", reason))...)
	if cd.d.g != nil {
		cd.verdict(c, cd.d.g.AuthFailed(cd.id(c, c.ClaimedUsername), reason))
	}
}

func (cd *connDefense) Connected(c *broker.Client) broker.Decision {
	id := cd.id(c, c.Username)
	if cd.d.g != nil {
		// Read before the check: a ban added after it moves the epoch.
		cd.epoch = cd.d.g.BanEpoch()
	}
	if d := cd.banned(c, id, "authenticated"); !d.Allow {
		return d
	}
	if f := cd.d.checked.Load(); f != nil {
		(*f)(c)
	}
	method := "backend"
	switch {
	case c.Anonymous:
		method = "anonymous"
	case cd.fp != "":
		method = "certificate"
	}
	cd.d.record(audit.TypeAuthSuccess, cd.who(c, audit.String("reason", "authenticated"), audit.String("method", method))...)
	if cd.d.g == nil {
		return broker.Decision{Allow: true}
	}
	if v := cd.verdict(c, cd.d.g.Connected(id)); v.Disconnect {
		return broker.Decision{Reason: v.Reason}
	}
	return broker.Decision{Allow: true}
}

// Attached checks the identity again when a ban was added since
// Connected checked it: until the attach, the ban's OnBan callback could
// not find this client to end it. A ban added after this reading of the
// epoch finds the client attached. (guard.BanEpoch)
func (cd *connDefense) Attached(c *broker.Client) broker.Decision {
	if cd.d.g == nil || cd.d.g.BanEpoch() == cd.epoch {
		return broker.Decision{Allow: true}
	}
	return cd.banned(c, cd.id(c, c.Username), "attached")
}

func (cd *connDefense) Denied(c *broker.Client, a broker.Action, topic, reason string) broker.Verdict {
	cd.denies++
	if n, every := cd.denies, cd.d.denySample.Load(); n <= every || n%every == 0 {
		cd.d.record(audit.TypeAuthzDeny, cd.who(c, audit.String("reason", cmp.Or(reason, "not authorized")), audit.String("action", a.String()),
			audit.String("topic", topic), audit.Int("denied_total", n))...)
	}
	if cd.d.g == nil {
		return broker.Verdict{}
	}
	return cd.verdict(c, cd.d.g.Denied(cd.id(c, c.Username), a.String(), topic))
}

func (cd *connDefense) Undeliverable(c *broker.Client, topic string) broker.Verdict {
	if cd.d.g == nil {
		return broker.Verdict{}
	}
	return cd.verdict(c, cd.d.g.Undeliverable(cd.id(c, c.Username), topic))
}

func (cd *connDefense) Read(n int) (time.Duration, broker.Decision) {
	if cd.d.g == nil {
		return 0, broker.Decision{Allow: true}
	}
	if cd.lim == nil {
		cd.lim = cd.d.g.NewClientLimiter()
	}
	wait, dec := cd.lim.Reserve(n)
	if !dec.Allow {
		cd.d.record(audit.TypeLimit, audit.String("reason", dec.Reason), audit.String("addr", cd.addr.String()),
			audit.String("listener", cd.listener), audit.String("action", "disconnect"))
		return wait, broker.Decision{Allow: dec.Allow, Reason: dec.Reason}
	}
	// Each time the client goes over its rate (not each packet read while
	// it stays over) is a limit hit.
	if paused := wait > 0; paused != cd.overRate {
		cd.overRate = paused
		if paused && cd.client != nil {
			if v := cd.limited(cd.client, limitRate, "over its message or byte rate: reading paused for "+wait.String()); v.Disconnect {
				return wait, broker.Decision{Reason: v.Reason}
			}
		}
	}
	return wait, broker.Decision{Allow: true}
}

// MarkRead lets the client's rate limits read the clock once per read
// of its socket rather than once per packet (guard.ClientLimiter.NewRead).
func (cd *connDefense) MarkRead() {
	if cd.lim != nil {
		cd.lim.NewRead()
	}
}

func (cd *connDefense) Ping(c *broker.Client, quiet time.Duration) broker.Verdict {
	if cd.d.g == nil {
		return broker.Verdict{}
	}
	after := cd.d.g.SilenceAfter()
	if after <= 0 || quiet < after {
		cd.silent = false
		return broker.Verdict{}
	}
	if cd.silent {
		return broker.Verdict{}
	}
	cd.silent = true
	return cd.verdict(c, cd.d.g.Silent(cd.id(c, c.Username), quiet))
}

// Regranted records a change of a live client's groups or grants by
// MQTT 5 re-authentication (auth.regrant): what was added and removed,
// and what the re-check of its session took away. The lists are clipped
// (regrantListMax); the counts are whole.
func (cd *connDefense) Regranted(c *broker.Client, ch broker.GrantChange) {
	fields := cd.who(c, audit.String("reason", ch.Reason))
	if ch.After.Backend != "" || ch.Before.Backend != "" {
		fields = append(fields, audit.String("backend", ch.After.Backend))
		if ch.Before.Backend != ch.After.Backend {
			fields = append(fields, audit.String("backend_before", ch.Before.Backend))
		}
	}
	for _, l := range []struct {
		name          string
		before, after []string
	}{{"groups", ch.Before.Groups, ch.After.Groups}, {"publish", ch.Before.Publish, ch.After.Publish},
		{"subscribe", ch.Before.Subscribe, ch.After.Subscribe}} {
		added, removed := listChanges(l.before, l.after)
		if len(added) > 0 {
			fields = append(fields, audit.String(l.name+"_added", clipList(added)))
		}
		if len(removed) > 0 {
			fields = append(fields, audit.String(l.name+"_removed", clipList(removed)))
		}
	}
	fields = append(fields, audit.Int("unsubscribed", int64(ch.Unsubscribed)), audit.Int("dropped", int64(ch.Dropped)))
	cd.d.record(audit.TypeAuthRegrant, fields...)
}

// regrantListMax bounds a list of groups or grants in an auth.regrant
// entry: a token may carry many, and the audit log must stay small.
const regrantListMax = 1024

// listChanges returns what is in after and not in before, and the
// reverse, each once, in order. Linear: a token's lists may be long.
func listChanges(before, after []string) (added, removed []string) {
	diff := func(from, other []string) []string {
		have := make(map[string]bool, len(other))
		for _, s := range other {
			have[s] = true
		}
		var out []string
		for _, s := range from {
			if !have[s] {
				have[s] = true // once
				out = append(out, s)
			}
		}
		return out
	}
	return diff(after, before), diff(before, after)
}

// clipList joins a list with commas, cut to regrantListMax bytes with a
// note of how many items were left out.
func clipList(list []string) string {
	var b strings.Builder
	for i, s := range list {
		if b.Len()+len(s)+1 > regrantListMax {
			fmt.Fprintf(&b, " (and %d more)", len(list)-i)
			break
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(s)
	}
	return b.String()
}

func (cd *connDefense) Closed(c *broker.Client, connected, abnormal bool) {
	if cd.d.g == nil {
		return
	}
	if cd.acquired {
		cd.d.g.Release(cd.addr)
	}
	if connected {
		detail := "DISCONNECT"
		if abnormal {
			detail = "ended without DISCONNECT"
		}
		cd.verdict(c, cd.d.g.Disconnected(cd.id(c, c.Username), abnormal, detail))
	}
}

// auditTee passes the guard's log records on and records the ones that
// are security decisions the broker does not see itself: bans expired,
// and bans removed (by `moat ban remove` or from the bans file).
type auditTee struct {
	next  slog.Handler
	d     *defense
	attrs []slog.Attr
}

var teeTypes = map[string]string{
	"guard: ban expired":                    audit.TypeBanExpire,
	"guard: ban removed":                    audit.TypeBanRemove,
	"guard: ban removed from the bans file": audit.TypeBanRemove,
}

func (t *auditTee) Enabled(ctx context.Context, l slog.Level) bool {
	return t.d.audit != nil || t.next.Enabled(ctx, l)
}

func (t *auditTee) Handle(ctx context.Context, r slog.Record) error {
	if typ, ok := teeTypes[r.Message]; ok && t.d.audit != nil {
		var fields []audit.Field
		var ban string
		add := func(a slog.Attr) bool {
			v := a.Value.Resolve()
			if a.Key == "ban" {
				ban = v.String()
			}
			if v.Kind() == slog.KindInt64 {
				fields = append(fields, audit.Int(a.Key, v.Int64()))
			} else {
				fields = append(fields, audit.String(a.Key, v.String()))
			}
			return true
		}
		for _, a := range t.attrs {
			add(a)
		}
		r.Attrs(add)
		if typ == audit.TypeBanRemove {
			fields = append(fields, audit.String("reason", strings.TrimPrefix(r.Message, "guard: ")))
			if t.d.banOrigin != nil {
				fields = append(fields, audit.String("origin_node", t.d.banOrigin(ban)))
			}
		}
		t.d.record(typ, fields...)
	}
	if !t.next.Enabled(ctx, r.Level) {
		return nil
	}
	return t.next.Handle(ctx, r)
}

func (t *auditTee) WithAttrs(as []slog.Attr) slog.Handler {
	return &auditTee{next: t.next.WithAttrs(as), d: t.d, attrs: append(t.attrs[:len(t.attrs):len(t.attrs)], as...)}
}

func (t *auditTee) WithGroup(name string) slog.Handler {
	return &auditTee{next: t.next.WithGroup(name), d: t.d, attrs: t.attrs}
}

// cutoff wraps a certificate watcher's drop so that every revocation or
// expiry cut-off is recorded. d may be nil.
func (d *defense) cutoff(leaf *x509.Certificate, drop func(string)) func(string) {
	if d == nil || d.audit == nil {
		return drop
	}
	return func(reason string) {
		d.record(audit.TypeRevokeCutoff, audit.String("reason", reason), audit.String("subject", leaf.Subject.String()),
			audit.String("serial", leaf.SerialNumber.Text(16)))
		drop(reason)
	}
}

// reloaded records a listener's TLS reload (SIGHUP). d may be nil.
func (d *defense) reloaded(changed []string, err error) {
	if d == nil {
		return
	}
	if err != nil {
		d.record(audit.TypeConfigReload, audit.String("reason", "reload requested"),
			audit.String("result", "refused"), audit.String("error", err.Error()))
		return
	}
	d.record(audit.TypeConfigReload, audit.String("reason", "reload requested"), audit.String("result", "applied"),
		audit.String("changed", strings.Join(changed, ",")))
}

// setDenySample sets audit.deny_sample (0: the default, 10) and returns
// the value in force.
func (d *defense) setDenySample(n int) int64 {
	v := int64(cmp.Or(n, 10))
	d.denySample.Store(v)
	return v
}

// banList is the admin API's ban list: the guard, nil when defense is off
// (the API's ban endpoints then answer 501). d may be nil.
func (d *defense) banList() admin.BanList {
	if d == nil || d.g == nil {
		return nil
	}
	return d.g
}

// guard returns the guard, nil when defense is off. d may be nil.
func (d *defense) guard() *guard.Guard {
	if d == nil {
		return nil
	}
	return d.g
}
