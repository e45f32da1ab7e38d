package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/config"
)

// Live reload (docs/operations.md, "Live reload"). SIGHUP, `moat reload`
// and the admin API's POST /api/v1/config/reload all call
// servePlan.reloadConfig: the file is read again and built into a
// check-mode start-up plan, which loads every file it names; the result is
// compared with the configuration in force; what can change at run time is
// applied, and a reload that changes anything else is refused as a whole,
// naming each such setting. Nothing is applied before everything was
// validated.

// liveConfig is what a running broker needs to reload its configuration.
type liveConfig struct {
	load  func() (*config.Config, error) // reads the configuration as serve did at start
	level *slog.LevelVar                 // the log level in force

	mu  sync.Mutex                    // one reload at a time
	cur atomic.Pointer[config.Config] // the configuration in force; nil: the plan's
}

// pidFileName is the file in the data directory that names the running
// broker's process, for `moat reload`.
const pidFileName = "moat.pid"

// newLevelLogger is newLogger with a log level that can change at run
// time: the handler writes everything, and the returned LevelVar decides.
func newLevelLogger(lc config.Log, stderr io.Writer) (*slog.Logger, *slog.LevelVar, func(), error) {
	var lv slog.LevelVar
	if err := lv.UnmarshalText([]byte(cmpOr(lc.Level, "info"))); err != nil {
		return nil, nil, nil, fmt.Errorf("log: unknown level %q", lc.Level)
	}
	all := lc
	all.Level = "debug"
	log, closeLog, err := newLogger(all, stderr)
	if err != nil {
		return nil, nil, nil, err
	}
	return slog.New(levelHandler{log.Handler(), &lv}), &lv, closeLog, nil
}

// levelHandler filters records below a LevelVar.
type levelHandler struct {
	slog.Handler
	level *slog.LevelVar
}

func (h levelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level.Level() && h.Handler.Enabled(ctx, l)
}

func (h levelHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return levelHandler{h.Handler.WithAttrs(as), h.level}
}

func (h levelHandler) WithGroup(name string) slog.Handler {
	return levelHandler{h.Handler.WithGroup(name), h.level}
}

// runningConfig is the configuration in force: the start's, or the last
// one a reload applied.
func (p *servePlan) runningConfig() *config.Config {
	if p.live != nil {
		if c := p.live.cur.Load(); c != nil {
			return c
		}
	}
	return p.cfg
}

// catchSIGHUP makes SIGHUP arrive on the channel it returns rather than
// end the process (the signal's default action). serve calls it before
// it binds the listeners: a SIGHUP sent as soon as a listener is logged
// ready is then kept until reloadOnSIGHUP handles it.
func catchSIGHUP() chan os.Signal {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup
}

// reloadOnSIGHUP reloads the configuration on each SIGHUP caught on hup
// (catchSIGHUP), and writes DATA_DIR/moat.pid, so that `moat reload`
// never signals a broker that would die of it. The returned stop ends the
// goroutine, waits for it, stops catching SIGHUP and removes the pid
// file; calling it again does nothing.
func (p *servePlan) reloadOnSIGHUP(hup chan os.Signal) (stop func()) {
	removePID := p.writePIDFile()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
				p.log.Info("serve: SIGHUP received; reloading the configuration")
				_, _ = p.reloadConfig() // the outcome is logged
			}
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(hup)
			close(done)
			wg.Wait()
			removePID()
		})
	}
}

// writePIDFile writes DATA_DIR/moat.pid (mode 0600) and returns what
// removes it, if it still names this process.
func (p *servePlan) writePIDFile() (remove func()) {
	path := filepath.Join(p.cfg.DataDir, pidFileName)
	if fi, err := os.Stat(p.cfg.DataDir); err != nil || !fi.IsDir() {
		p.log.Info("serve: no pid file: the data directory does not exist; moat reload needs --admin to reach this broker", "data_dir", p.cfg.DataDir)
		return func() {}
	}
	me := strconv.Itoa(os.Getpid()) + "\n"
	if old, err := readPIDFile(path); err == nil && old != os.Getpid() && processAlive(old) {
		p.log.Warn("serve: the pid file names another running process; is a second broker using this data directory?", "file", path, "pid", old)
	}
	removeStalePIDTemps(p.cfg.DataDir)
	// Written beside it and renamed into place: a reader (moat reload)
	// never finds the file empty, as it could between the creation and
	// the write (seen once in TestReloadCommandPIDFile). The name beside
	// it is fixed, so that a crash between the two leaves one file that
	// the next start replaces, not one more each time; it is removed and
	// created anew (O_EXCL), so that a link left in its place is not
	// followed.
	tmp := filepath.Join(p.cfg.DataDir, pidFileName+pidTempSuffix)
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		err = f.Chmod(0o600)
		if _, werr := f.WriteString(me); err == nil {
			err = werr
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, path)
		}
		if err != nil {
			os.Remove(tmp)
		}
	}
	if err != nil {
		p.log.Warn("serve: cannot write the pid file; moat reload needs --admin to reach this broker", "err", err)
		return func() {}
	}
	return func() {
		if pid, err := readPIDFile(path); err == nil && pid == os.Getpid() {
			os.Remove(path)
		}
	}
}

// pidTempSuffix names the file the pid file is written to before it is
// renamed into place.
const pidTempSuffix = ".new"

// removeStalePIDTemps removes what earlier builds, which wrote the pid
// file under a random name beside it (moat.pid.123456789), left there
// when they died between the write and the rename. Only names of that
// form older than a minute are removed: another broker started on the
// same directory by mistake holds its own for microseconds.
func removeStalePIDTemps(dir string) {
	names, err := filepath.Glob(filepath.Join(dir, pidFileName+".*"))
	if err != nil {
		return
	}
	for _, name := range names {
		suffix := strings.TrimPrefix(filepath.Base(name), pidFileName+".")
		if suffix == "" || strings.Trim(suffix, "0123456789") != "" {
			continue
		}
		if fi, err := os.Lstat(name); err == nil && fi.Mode().IsRegular() && time.Since(fi.ModTime()) > time.Minute {
			os.Remove(name)
		}
	}
}

// readPIDFile reads the process ID on the first line of a pid file.
func readPIDFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("%s does not hold a process ID", path)
	}
	return pid, nil
}

// reloadSetting is one setting that changed, and whether it can change at
// run time.
type reloadSetting struct {
	path   string
	apply  string // what applies it live (a live* kind); "" when it needs a restart
	reason string // why it needs a restart; "" when it applies live
}

// reloadConfig re-reads the configuration and applies it, or refuses it
// as a whole. It returns a summary of what changed.
func (p *servePlan) reloadConfig() (string, error) {
	if p.live == nil {
		return "", errors.New("serve: reload is not available (the configuration cannot be read again)")
	}
	p.live.mu.Lock()
	defer p.live.mu.Unlock()
	fail := func(err error) (string, error) {
		p.log.Error("serve: reload refused; nothing was applied and the running configuration stays in force", "err", err)
		p.defense.reloaded(nil, err)
		return "", err
	}
	old := p.runningConfig()
	next, err := p.live.load()
	if err != nil {
		return fail(err)
	}
	// The check-mode plan loads every file the new configuration names
	// (certificates, keys, CRLs, password files, policies) and checks the
	// profile, without binding or writing anything.
	check, err := buildPlan(next, slog.New(slog.DiscardHandler), true, p.sans...)
	if err != nil {
		return fail(err)
	}
	defer check.close()
	changes, err := diffConfigs(old, next)
	if err != nil {
		return fail(err)
	}
	acl := p.pairPolicies(check)
	var restart []string
	needRestart := slices.ContainsFunc(changes, func(c reloadSetting) bool { return c.reason != "" })
	for _, c := range changes {
		if c.apply == liveACL && acl == nil && !needRestart {
			c.reason = "adding or removing the access policy, or giving listeners different ones, needs a restart"
		}
		if (c.apply == liveRates || c.apply == liveDetectors || c.apply == liveGuardLimits) && (p.defense.guard() == nil || check.defense.guard() == nil) {
			c.reason = "defense is off: turning it on needs a restart"
		}
		if c.apply == liveTLSFiles {
			c.reason = tlsFilesRefusal(old, next, c.path)
		}
		if c.reason != "" {
			at := next.Pos(c.path)
			if at == "" || at == next.Source {
				at = old.Pos(c.path)
			}
			restart = append(restart, fmt.Sprintf("%s: %s: %s", cmpOr(at, "(built-in)"), c.path, c.reason))
		}
	}
	if len(restart) > 0 {
		return fail(fmt.Errorf("serve: reload refused: %d setting(s) need a restart (systemctl restart moat):\n%s", len(restart), strings.Join(restart, "\n")))
	}
	// What the running state can still refuse is checked before anything
	// is applied.
	if slices.ContainsFunc(changes, func(c reloadSetting) bool { return c.apply == liveGuardLimits }) {
		want, bans := check.defense.guard().Limits().MaxBans, p.defense.guard().Stats().Bans
		if want < bans {
			return fail(fmt.Errorf("serve: reload refused: %s: defense.max_bans %d is below the %d bans in force; remove bans first (moat ban remove) or keep it at %d or more",
				cmpOr(next.Pos("defense.max_bans"), next.Source), want, bans, bans))
		}
	}

	// Everything is validated: apply. Every change left has a live kind
	// (the others refused the reload), and each kind is applied here.
	var changed []string
	kinds := map[string]bool{}
	for _, c := range changes {
		changed = append(changed, c.path)
		kinds[c.apply] = true
	}
	if kinds[liveACL] {
		p.swapPolicies(acl)
	}
	// The check plan's broker and guard hold the new limits with the
	// start-up plan's translation and defaults, and validated them.
	if kinds[liveLimits] {
		lim, err := p.srv.SetLimits(check.srv.Limits())
		if err != nil {
			// Not reached: the check plan's broker.New validated them.
			p.log.Error("serve: reload: the limits do not apply", "err", err)
		}
		p.log.Info("serve: limits changed", "limits", fmt.Sprintf("%+v", lim))
	}
	if kinds[liveRates] {
		r, err := p.defense.guard().SetClientRates(check.defense.guard().ClientRates())
		if err != nil {
			p.log.Error("serve: reload: the client rates do not apply", "err", err)
		}
		p.log.Info("serve: client rate limits changed", "rates", fmt.Sprintf("%+v", r))
	}
	if kinds[liveDetectors] {
		ds, err := p.defense.guard().SetDetectors(check.defense.guard().Detectors())
		if err != nil {
			p.log.Error("serve: reload: the detectors do not apply", "err", err)
		}
		p.log.Info("serve: detectors changed", "detectors", fmt.Sprintf("%+v", ds))
	}
	if kinds[liveGuardLimits] {
		l, err := p.defense.guard().SetLimits(check.defense.guard().Limits())
		if err != nil {
			// Reached only when bans were added since the check above.
			p.log.Error("serve: reload: the connection limits do not apply", "err", err)
		}
		p.log.Info("serve: connection limits changed", "limits", fmt.Sprintf("%+v", l))
	}
	var tlsSet, tlsFailed []string
	if kinds[liveTLSFiles] {
		tlsSet, tlsFailed = p.setTLSFiles(check)
		p.followListenerCert(check)
	}
	if kinds[liveAudit] && p.defense != nil {
		n := p.defense.setDenySample(next.Audit.DenySample)
		p.log.Info("serve: audit sampling of denials changed", "deny_sample", n)
	}
	// liveLevel is applied last (below), liveProfile by storing next: the
	// check plan verified the new profile.
	p.access.reload() // password files and policy files, as loaded by the check
	for _, pl := range p.listeners {
		if pl.mgr == nil {
			continue
		}
		if slices.Contains(tlsSet, pl.lc.Name) || slices.Contains(tlsFailed, pl.lc.Name) {
			continue // loaded, or reported, by setTLSFiles
		}
		if err := pl.mgr.Reload(); err != nil {
			tlsFailed = append(tlsFailed, pl.lc.Name)
			p.log.Error("serve: TLS files changed again during the reload and do not load; the listener keeps its previous ones", "listener", pl.lc.Name, "err", err)
		}
	}
	p.live.cur.Store(next)
	p.defense.reloaded(changed, nil)
	// In a cluster, a changed access file goes to the other nodes; one
	// the cluster refuses is in force here only, and the reload says so.
	var notShared error
	if p.clusterSec != nil {
		notShared = p.clusterSec.shareFiles()
	}
	summary := "configuration reloaded; certificates, CRLs, password files and access policies re-read"
	if len(changed) > 0 {
		summary += "; changed: " + strings.Join(changed, ", ")
	}
	// The summary goes out at the level in force before the reload.
	p.log.Info("serve: configuration reloaded", "changed", changed, "profile", profileName(next), "log_level", next.Log.Level, "tls_not_reloaded", tlsFailed)
	var lv slog.Level
	if lv.UnmarshalText([]byte(next.Log.Level)) == nil {
		p.live.level.Set(lv)
	}
	for _, c := range changed {
		p.log.Debug("serve: reload applied a changed setting", "setting", c)
	}
	if notShared != nil {
		p.log.Error("serve: reload applied here; access files not sent to the cluster", "err", notShared)
		return summary, notShared
	}
	return summary, nil
}

// pairPolicies maps each running access policy to the check plan's
// policy of the same listeners. It returns nil when the two cannot be
// paired: a policy was added or removed, or listeners that shared one no
// longer do.
func (p *servePlan) pairPolicies(check *servePlan) map[*policySource]*policySource {
	pairs := map[*policySource]*policySource{}
	for name, ps := range p.access.byLn {
		nps, ok := check.access.byLn[name]
		if !ok || (ps == nil) != (nps == nil) {
			return nil
		}
		if ps == nil {
			continue
		}
		if prev, ok := pairs[ps]; ok && prev != nps {
			return nil
		}
		pairs[ps] = nps
	}
	if len(check.access.byLn) != len(p.access.byLn) {
		return nil
	}
	return pairs
}

// swapPolicies installs the check plan's compiled policies in the running
// holders, then re-evaluates the sessions of each swapped policy's
// listeners (Reevaluate drops every cached decision first): subscriptions,
// queued and in-flight messages the new policy refuses are removed.
func (p *servePlan) swapPolicies(pairs map[*policySource]*policySource) {
	a := p.access
	a.policyMu.Lock()
	defer a.policyMu.Unlock()
	for ps, nps := range pairs {
		if ps.holder == nil || nps.holder == nil {
			continue
		}
		pol, _ := nps.holder.Load()
		ps.spec, ps.rules, ps.source, ps.desc, ps.sum, ps.failed = nps.spec, nps.rules, nps.source, nps.desc, nps.sum, [32]byte{}
		gen := ps.holder.Swap(pol)
		p.log.Info("access: policy reloaded", "policy", ps.desc, "generation", gen)
		a.reevaluate("reload", broker.Reevaluation{
			Match:  func(c *broker.Client) bool { return a.byLn[c.Listener] == ps },
			Reason: "access policy " + ps.desc + " changed",
		})
	}
}

// diffConfigs lists the settings whose values differ between two
// configurations, by YAML path, each with why it needs a restart ("" when
// it can change at run time).
func diffConfigs(old, next *config.Config) ([]reloadSetting, error) {
	a, err := configView(old)
	if err != nil {
		return nil, err
	}
	b, err := configView(next)
	if err != nil {
		return nil, err
	}
	var paths []string
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			paths = append(paths, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			paths = append(paths, k)
		}
	}
	slices.Sort(paths)
	out := make([]reloadSetting, len(paths))
	for i, path := range paths {
		r := reloadRuleFor(path)
		out[i] = reloadSetting{path: path, apply: r.apply, reason: r.why}
	}
	return out, nil
}

// How a reload treats each setting (what applies it live).
const (
	liveACL       = "access policy"  // swapPolicies, then the sessions re-evaluated
	liveLimits    = "broker limits"  // broker.Server.SetLimits
	liveRates     = "client rates"   // guard.Guard.SetClientRates
	liveDetectors = "detectors"      // guard.Guard.SetDetectors
	liveLevel     = "log level"      // the LevelVar of the logger
	liveProfile   = "profile"        // checked by the reload's plan; in force as the running configuration
	liveAudit     = "audit sampling" // defense.denySample

	liveGuardLimits = "connection limits" // guard.Guard.SetLimits
	liveTLSFiles    = "TLS files"         // tlsconf.Manager.SetFiles (setTLSFiles)
)

// reloadRule says how a reload treats the settings whose path matches
// key: applied live by apply, or refused because of why. In key, "[]"
// stands for any index and a final "*" for anything that follows.
type reloadRule struct {
	key   string
	apply string // one of the live* kinds; "" when the setting needs a restart
	why   string // why it needs a restart
}

// Reasons shared by several rules.
const (
	whyBrokerStart = "the broker reads it at start"
	whyAuthChain   = "authentication chains are built at start (the password files' contents reload live)"
	whyAuditOpen   = "the audit log is opened at start (only audit.deny_sample reloads)"
)

// reloadRules lists every setting of config.Config (TestReloadRulesCoverEveryKey
// checks it against the type), first match wins. docs/operations.md has
// the same list for operators.
var reloadRules = []reloadRule{
	{key: "profile", apply: liveProfile},
	{key: "log.level", apply: liveLevel},
	{key: "log.*", why: "the log output is opened at start (only log.level reloads)"},
	{key: "acl*", apply: liveACL},

	{key: "limits.message_size_limit", apply: liveLimits},
	{key: "limits.max_keepalive", apply: liveLimits},
	{key: "limits.max_inflight", apply: liveLimits},
	{key: "limits.max_queued_messages", apply: liveLimits},
	{key: "limits.max_queued_bytes", apply: liveLimits},
	{key: "limits.max_subscriptions", apply: liveLimits},
	{key: "limits.max_subscription_bytes", apply: liveLimits},
	{key: "limits.max_sessions", apply: liveLimits},
	{key: "limits.max_connections", apply: liveLimits},
	{key: "limits.connect_timeout", apply: liveLimits},
	{key: "limits.reauth_grace", apply: liveLimits},
	{key: "limits.max_retained_messages", apply: liveLimits},
	{key: "limits.max_retained_bytes", apply: liveLimits},
	{key: "limits.max_retained_messages_per_identity", apply: liveLimits},
	{key: "limits.max_retained_bytes_per_identity", apply: liveLimits},
	{key: "limits.pushback_messages", apply: liveLimits},
	{key: "limits.pushback_bytes", apply: liveLimits},
	{key: "limits.pushback_wait", apply: liveLimits},
	{key: "limits.queue_full_policy", apply: liveLimits},
	{key: "limits.max_packet_size", why: "MQTT 5 clients are told the maximum packet size in CONNACK for the whole connection"},
	{key: "limits.read_budget", why: "the read budget is a memory bound sized at start"},
	{key: "limits.max_inflight_bytes", why: "not supported yet (a non-zero value is refused at start too)"},
	{key: "limits.max_preauth_packet_size", apply: liveLimits},
	{key: "limits.max_topic_levels", apply: liveLimits},
	{key: "limits.max_topic_length", apply: liveLimits},
	{key: "limits.queue_qos0", why: "it decides whether a session's QoS 0 messages go through its queue; a change while queues hold QoS 0 messages would deliver new ones before them, breaking their order [MQTT-4.6.0-6]"},

	{key: "defense.message_rate", apply: liveRates},
	{key: "defense.message_burst", apply: liveRates},
	{key: "defense.byte_rate", apply: liveRates},
	{key: "defense.byte_burst", apply: liveRates},
	{key: "defense.throttle_limit", apply: liveRates},
	{key: "defense.auth_failures*", apply: liveDetectors},
	{key: "defense.topic_scan*", apply: liveDetectors},
	{key: "defense.flapping*", apply: liveDetectors},
	{key: "defense.abnormal_disconnects*", apply: liveDetectors},
	{key: "defense.undeliverable*", apply: liveDetectors},
	{key: "defense.silence*", apply: liveDetectors},
	{key: "defense.limit_abuse*", apply: liveDetectors},
	{key: "defense.disabled", why: "turning defense on or off needs a restart"},
	{key: "defense.ipv6_prefix", why: "connections are counted per address prefix: those open would be released under another prefix than they were counted under"},
	{key: "defense.conn_table_size", why: "the connection-rate table's memory is allocated once, at start"},
	{key: "defense.bans_file", why: "the ban list's file is read and watched from the start (its contents reload live: moat ban, the admin API)"},
	{key: "defense.poll_interval", why: "the ban list's watcher ticks at the period set at start"},
	{key: "defense.conn_rate", apply: liveGuardLimits},
	{key: "defense.conn_burst", apply: liveGuardLimits},
	{key: "defense.listener_conn_rate", apply: liveGuardLimits},
	{key: "defense.listener_conn_burst", apply: liveGuardLimits},
	{key: "defense.max_conns_per_addr", apply: liveGuardLimits},
	{key: "defense.tracked_keys", apply: liveGuardLimits},
	{key: "defense.repeat_memory", apply: liveGuardLimits},
	{key: "defense.max_bans", apply: liveGuardLimits},

	{key: "audit.deny_sample", apply: liveAudit},
	{key: "audit.*", why: whyAuditOpen},

	{key: "auth*", why: whyAuthChain},
	{key: "listeners[].auth*", why: whyAuthChain},
	{key: "listeners[].acl_file", why: "per-listener access policies are set up at start (the files' contents reload live)"},
	{key: "listeners[].tls.cert", apply: liveTLSFiles},
	{key: "listeners[].tls.key", apply: liveTLSFiles},
	{key: "listeners[].tls.sni_certificates*", apply: liveTLSFiles},
	{key: "listeners[].tls.client_ca", apply: liveTLSFiles},
	{key: "listeners[].tls.client_ca_dir", apply: liveTLSFiles},
	{key: "listeners[].tls.crl[]", apply: liveTLSFiles},
	{key: "listeners[].tls*", why: "TLS settings other than the file paths are read at start (the files' paths and contents reload live)"},
	{key: "listeners*", why: "listeners are bound at start"},

	{key: "data_dir", why: "the data directory and the store are opened at start"},
	{key: "persistence.*", why: "the data directory and the store are opened at start"},
	{key: "admin.*", why: "the admin listener is bound at start"},
	{key: "cluster.*", why: "the cluster node is started, and joins its peers, before the broker"},
	{key: "pid_file", why: "the pid file is written at start"},
	{key: "sys_interval", apply: liveLimits},
	{key: "sessions.*", why: whyBrokerStart},
	{key: "retain_available", why: whyBrokerStart},
	{key: "check_retain_source", why: whyBrokerStart},
	{key: "denied_publish_v3", why: whyBrokerStart},
}

// whyUnknown is the reason for a setting no rule names: refused, never
// silently ignored.
const whyUnknown = "not known to the reload (a restart applies it)"

// reloadRuleFor returns the rule of a setting's path ("listeners[2].tls.crl[0]").
func reloadRuleFor(path string) reloadRule {
	norm := indexRE.ReplaceAllString(path, "[]")
	for _, r := range reloadRules {
		if k, ok := strings.CutSuffix(r.key, "*"); ok {
			if strings.HasPrefix(norm, k) {
				return r
			}
		} else if norm == r.key {
			return r
		}
	}
	return reloadRule{key: norm, why: whyUnknown}
}

// indexRE matches a list index in a setting's path.
var indexRE = regexp.MustCompile(`\[[0-9]+\]`)

// configView flattens a configuration into "path: value" for comparison.
// auth entries and the acl section are decoded whole: their JSON form
// shows only type, path and acl_file.
func configView(c *config.Config) (map[string]string, error) {
	data, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("serve: reload: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("serve: reload: %w", err)
	}
	for _, k := range []string{"source", "format", "set", "notes"} {
		delete(m, k)
	}
	m["auth"] = authView(c.Auth)
	if ls, ok := m["listeners"].([]any); ok {
		for i := range min(len(ls), len(c.Listeners)) {
			if lm, ok := ls[i].(map[string]any); ok {
				lm["auth"] = authView(c.Listeners[i].Auth)
			}
		}
	}
	if c.ACL != nil {
		var v map[string]any
		if err := c.ACL.Decode(&v); err != nil {
			return nil, fmt.Errorf("serve: reload: acl: %w", err)
		}
		m["acl"] = v
	}
	out := map[string]string{}
	flattenView("", m, out)
	return out, nil
}

func authView(list []config.AuthBackend) any {
	if list == nil {
		return nil
	}
	out := make([]any, len(list))
	for i := range list {
		var v map[string]any
		if err := list[i].Decode(&v); err != nil {
			out[i] = list[i]
			continue
		}
		out[i] = v
	}
	return out
}

func flattenView(prefix string, v any, out map[string]string) {
	switch t := v.(type) {
	case map[string]any:
		if len(t) == 0 && prefix != "" {
			out[prefix] = "{}"
		}
		for k, x := range t {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			flattenView(p, x, out)
		}
	case []any:
		if len(t) == 0 {
			out[prefix] = "[]"
		}
		for i, x := range t {
			flattenView(fmt.Sprintf("%s[%d]", prefix, i), x, out)
		}
	default:
		b, _ := json.Marshal(t)
		out[prefix] = string(b)
	}
}
