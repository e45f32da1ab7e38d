package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/config"
)

// configKeys lists every setting of config.Config by its reload path,
// "[]" standing for a list index, as the reload's comparison names them
// (configView): the type is walked, so a field added later is listed.
func configKeys() []string {
	skip := map[string]bool{"source": true, "format": true, "set": true, "notes": true} // not settings
	var keys []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case t == reflect.TypeFor[config.ACL](), t == reflect.TypeFor[config.AuthBackend]():
			// Decoded whole by configView: any path below may change.
			keys = append(keys, prefix)
			return
		case t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
			walk(prefix+"[]", t.Elem())
			return
		case t.Kind() != reflect.Struct:
			keys = append(keys, prefix)
			return
		}
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || name == "-" || name == "" || prefix == "" && skip[name] {
				continue
			}
			p := name
			if prefix != "" {
				p = prefix + "." + name
			}
			walk(p, f.Type)
		}
	}
	walk("", reflect.TypeFor[config.Config]())
	return keys
}

// TestReloadRulesCoverEveryKey: every setting of the configuration is
// either applied live by a reload or refused with its own reason; none
// falls through to the rule for unknown settings, and no rule is stale.
func TestReloadRulesCoverEveryKey(t *testing.T) {
	keys := configKeys()
	if len(keys) < 100 {
		t.Fatalf("only %d settings found: %q", len(keys), keys)
	}
	used := map[string]bool{}
	for _, k := range keys {
		r := reloadRuleFor(k)
		switch {
		case r.why == whyUnknown:
			t.Errorf("%s: no reload rule; add one to reloadRules (live or with its reason) and to docs/operations.md", k)
		case (r.apply == "") == (r.why == ""):
			t.Errorf("%s: rule %q must either apply live or say why it needs a restart", k, r.key)
		}
		used[r.key] = true
	}
	for _, r := range reloadRules {
		if !used[r.key] {
			t.Errorf("reload rule %q matches no setting", r.key)
		}
	}
	// Concrete paths, as diffConfigs reports them, find the same rules.
	for path, want := range map[string]string{
		"listeners[3].tls.sni_certificates[1].key": "listeners[].tls*",
		"listeners[0].auth[2].url":                 "listeners[].auth*",
		"auth[0].bind_dn_template":                 "auth*",
		"acl.rules[4].topics[0]":                   "acl*",
		"defense.auth_failures.threshold":          "defense.auth_failures*",
		"defense.conn_rate":                        "defense.*",
		"log.dest[0]":                              "log.*",
		"limits.connect_timeout":                   "limits.connect_timeout",
	} {
		if got := reloadRuleFor(path).key; got != want {
			t.Errorf("%s: rule %q, want %q", path, got, want)
		}
	}
}

// reloadKeysBase is the configuration the live-key test starts from.
const reloadKeysBase = `acl:
  rules:
    - {name: anon, effect: allow, subjects: {anonymous: true}, actions: [publish, subscribe, receive], topics: ["t/#"]}
listeners:
  - {address: "127.0.0.1:1883", transport: tcp, allow_anonymous: true}
`

// TestReloadAppliesEveryLiveKey changes each setting a reload applies
// live, one at a time, and checks the running plan's broker, guard,
// logger, policy or audit sampling took the new value. A live rule
// without a case here fails the test.
func TestReloadAppliesEveryLiveKey(t *testing.T) {
	type check func(p *servePlan) error
	want := func(what string, got, want any) error {
		if got != want {
			return fmt.Errorf("%s %v, want %v", what, got, want)
		}
		return nil
	}
	cases := map[string]struct {
		yaml  string // added to reloadKeysBase, or replacing its acl topic
		check check
	}{
		"limits.message_size_limit": {"limits: {message_size_limit: 100}", func(p *servePlan) error {
			return want("MessageSizeLimit", p.srv.Limits().MessageSizeLimit, uint32(100))
		}},
		"limits.max_keepalive": {"limits: {max_keepalive: 120}", func(p *servePlan) error {
			return want("MaxKeepAlive", p.srv.Limits().MaxKeepAlive, uint16(120))
		}},
		"limits.max_inflight": {"limits: {max_inflight: 5}", func(p *servePlan) error {
			return want("MaxInflight", p.srv.Limits().MaxInflight, 5)
		}},
		"limits.max_queued_messages": {"limits: {max_queued_messages: 7}", func(p *servePlan) error {
			return want("MaxQueued", p.srv.Limits().MaxQueued, 7)
		}},
		"limits.max_subscriptions": {"limits: {max_subscriptions: 9}", func(p *servePlan) error {
			return want("MaxSubscriptions", p.srv.Limits().MaxSubscriptions, 9)
		}},
		"limits.max_subscription_bytes": {"limits: {max_subscription_bytes: 2KiB}", func(p *servePlan) error {
			return want("MaxSubscriptionBytes", p.srv.Limits().MaxSubscriptionBytes, 2048)
		}},
		"limits.max_sessions": {"limits: {max_sessions: 11}", func(p *servePlan) error {
			return want("MaxSessions", p.srv.Limits().MaxSessions, 11)
		}},
		"limits.max_connections": {"limits: {max_connections: 13}", func(p *servePlan) error {
			return want("MaxConnections", p.srv.Limits().MaxConnections, 13)
		}},
		"limits.connect_timeout": {"limits: {connect_timeout: 3s}", func(p *servePlan) error {
			return want("ConnectTimeout", p.srv.Limits().ConnectTimeout, 3*time.Second)
		}},
		"limits.reauth_grace": {"limits: {reauth_grace: 4s}", func(p *servePlan) error {
			return want("ReauthGrace", p.srv.Limits().ReauthGrace, 4*time.Second)
		}},
		"limits.max_retained_messages": {"limits: {max_retained_messages: 15}", func(p *servePlan) error {
			return want("MaxRetained", p.srv.Limits().MaxRetained, 15)
		}},
		"limits.max_retained_bytes": {"limits: {max_retained_bytes: 1MiB}", func(p *servePlan) error {
			return want("MaxRetainedBytes", p.srv.Limits().MaxRetainedBytes, int64(1<<20))
		}},
		"limits.max_retained_messages_per_identity": {"limits: {max_retained_messages_per_identity: 17}", func(p *servePlan) error {
			return want("MaxRetainedPerIdentity", p.srv.Limits().MaxRetainedPerIdentity, 17)
		}},
		"limits.max_retained_bytes_per_identity": {"limits: {max_retained_bytes_per_identity: 64KiB}", func(p *servePlan) error {
			return want("MaxRetainedBytesPerIdentity", p.srv.Limits().MaxRetainedBytesPerIdentity, int64(64<<10))
		}},
		"limits.pushback_messages": {"limits: {pushback_messages: 30}", func(p *servePlan) error {
			return want("PushbackMessages", p.srv.Limits().PushbackMessages, 30)
		}},
		"limits.pushback_bytes": {"limits: {pushback_bytes: 64KiB}", func(p *servePlan) error {
			return want("PushbackBytes", p.srv.Limits().PushbackBytes, int64(64<<10))
		}},
		"limits.pushback_wait": {"limits: {pushback_wait: 3s}", func(p *servePlan) error {
			return want("PushbackWait", p.srv.Limits().PushbackWait, 3*time.Second)
		}},
		"limits.queue_full_policy": {"limits: {queue_full_policy: block}", func(p *servePlan) error {
			return want("QueueFullPolicy", p.srv.Limits().QueueFullPolicy, broker.QueueBlock)
		}},
		"defense.message_rate": {"defense: {message_rate: 50}", func(p *servePlan) error {
			return want("MessageRate", p.defense.guard().ClientRates().MessageRate, 50.0)
		}},
		"defense.message_burst": {"defense: {message_burst: 60}", func(p *servePlan) error {
			return want("MessageBurst", p.defense.guard().ClientRates().MessageBurst, 60)
		}},
		"defense.byte_rate": {"defense: {byte_rate: 1MiB}", func(p *servePlan) error {
			return want("ByteRate", p.defense.guard().ClientRates().ByteRate, float64(1<<20))
		}},
		"defense.byte_burst": {"defense: {byte_burst: 2MiB}", func(p *servePlan) error {
			return want("ByteBurst", p.defense.guard().ClientRates().ByteBurst, 2<<20)
		}},
		"defense.throttle_limit": {"defense: {throttle_limit: 5s}", func(p *servePlan) error {
			return want("ThrottleLimit", p.defense.guard().ClientRates().ThrottleLimit, 5*time.Second)
		}},
		"defense.auth_failures*": {"defense: {auth_failures: {threshold: 3, action: log}}", func(p *servePlan) error {
			d := p.defense.guard().Detectors().AuthFailures
			return want("auth_failures", fmt.Sprint(d.Threshold, d.Action), "3 log")
		}},
		"defense.topic_scan*": {"defense: {topic_scan: {window: 5m}}", func(p *servePlan) error {
			return want("topic_scan window", p.defense.guard().Detectors().TopicScan.Window, 5*time.Minute)
		}},
		"defense.flapping*": {"defense: {flapping: {action: disconnect}}", func(p *servePlan) error {
			return want("flapping action", p.defense.guard().Detectors().Flapping.Action.String(), "disconnect")
		}},
		"defense.abnormal_disconnects*": {"defense: {abnormal_disconnects: {keys: [address]}}", func(p *servePlan) error {
			return want("abnormal_disconnects keys", p.defense.guard().Detectors().Abnormal.Keys.String(), "source address")
		}},
		"defense.undeliverable*": {"defense: {undeliverable: {disabled: true}}", func(p *servePlan) error {
			return want("undeliverable disabled", p.defense.guard().Detectors().Undeliverable.Disabled, true)
		}},
		"defense.silence*": {"defense: {silence: {window: 2m, ban_for: 1m, max_ban: 2m}}", func(p *servePlan) error {
			return want("silence after", p.defense.guard().SilenceAfter(), 2*time.Minute)
		}},
		"defense.limit_abuse*": {"defense: {limit_abuse: {threshold: 7, action: ban}}", func(p *servePlan) error {
			d := p.defense.guard().Detectors().LimitAbuse
			return want("limit_abuse", fmt.Sprint(d.Threshold, d.Action), "7 ban")
		}},
		"audit.deny_sample": {"audit: {deny_sample: 3}", func(p *servePlan) error {
			return want("deny sample", p.defense.denySample.Load(), int64(3))
		}},
		"log.level": {"log: {level: warn}", func(p *servePlan) error {
			return want("log level", p.live.level.Level(), slog.LevelWarn)
		}},
		"profile": {"profile: secure-network", func(p *servePlan) error {
			return want("profile", profileName(p.runningConfig()), "secure-network")
		}},
		"acl*": {`"t/#"` + "\x00" + `"u/#"`, func(p *servePlan) error {
			return want("policy generation", p.access.byLn["tcp-1883"].holder.Generation(), uint64(2))
		}},
	}
	for _, r := range reloadRules {
		if _, ok := cases[r.key]; r.apply != "" && !ok {
			t.Errorf("live setting %s has no case in this test", r.key)
		}
	}
	for key, tc := range cases {
		t.Run(key, func(t *testing.T) {
			if r := reloadRuleFor(strings.TrimSuffix(key, "*")); r.apply == "" {
				t.Fatalf("%s is not a live setting: %s", key, r.why)
			}
			dir := t.TempDir()
			file := filepath.Join(dir, "m.yaml")
			writeFile(t, file, reloadKeysBase)
			cfg, err := config.Load(file)
			if err != nil {
				t.Fatal(err)
			}
			plan, err := buildPlan(cfg, slog.New(slog.DiscardHandler), true)
			if err != nil {
				t.Fatal(err)
			}
			defer plan.close()
			plan.live = &liveConfig{load: func() (*config.Config, error) { return config.Load(file) }, level: &slog.LevelVar{}}
			next := reloadKeysBase + tc.yaml + "\n"
			if from, to, ok := strings.Cut(tc.yaml, "\x00"); ok {
				next = strings.Replace(reloadKeysBase, from, to, 1)
			}
			writeFile(t, file, next)
			summary, err := plan.reloadConfig()
			if err != nil {
				t.Fatalf("reload: %v", err)
			}
			if !strings.Contains(summary, strings.TrimSuffix(key, "*")) {
				t.Errorf("summary %q does not name %s", summary, key)
			}
			if err := tc.check(plan); err != nil {
				t.Errorf("after the reload: %v", err)
			}
		})
	}
}

// SIGHUP lowers connect_timeout and the retained-message limit of a
// running broker: a silent connection is closed after the new timeout,
// and an identity's second retained message is refused (the broker's own
// $SYS messages count towards max_retained_messages, so the test lowers
// the limit per identity). A change to the guard's connection rate is
// refused with its reason, and nothing of that reload is applied. A
// lowered detector threshold applies: two denied publications are
// detected.
func TestServeReloadConnectTimeoutRetainedAndDefense(t *testing.T) {
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	m, port, file, _ := startReloadBroker(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	writeFile(t, file, reloadYAML("info", "t/#")+"limits:\n  connect_timeout: 1s\n  max_retained_messages_per_identity: 1\n")
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: configuration reloaded", "limits.connect_timeout", "limits.max_retained_messages_per_identity") {
		t.Fatal("the reload was not applied")
	}

	// The default (10 s) would keep this connection open past the wait.
	start := time.Now()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(6 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err == nil || errors.Is(err, syscall.ETIMEDOUT) || isNetTimeout(err) {
		t.Fatalf("a connection sending no CONNECT: read %v after %v; want it closed after about 1 s", err, time.Since(start))
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("closed after %v, before the timeout", d)
	}

	if out, err := mqttTry(t, port, "", "t/first", "-r"); err != nil {
		t.Fatalf("first retained message: %v\n%s", err, out)
	}
	if out, err := mqttTry(t, port, "", "t/second", "-r"); err != nil {
		t.Fatalf("second retained message: %v\n%s", err, out)
	}
	if !m.waitLog(t, "broker: retained message refused", "topic=t/second", "this identity holds its maximum number of retained messages") {
		t.Fatal("the second retained message was not refused")
	}

	writeFile(t, file, reloadYAML("debug", "t/#")+"limits:\n  connect_timeout: 1s\n  max_retained_messages_per_identity: 1\ndefense:\n  conn_rate: 5\n")
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: reload refused", "defense.conn_rate: the guard is built with it at start") {
		t.Fatal("the defense change was not refused with its reason")
	}
	if n := strings.Count(m.logs.String(), "serve: configuration reloaded"); n != 1 || strings.Contains(m.logs.String(), "level=DEBUG") {
		t.Fatalf("part of the refused reload was applied (%d reloads)", n)
	}

	// A detector's threshold and action change live: two denied
	// publications from this address are detected now (the default is
	// 20), and only logged.
	writeFile(t, file, reloadYAML("info", "t/#")+"limits:\n  connect_timeout: 1s\n  max_retained_messages_per_identity: 1\n"+
		"defense:\n  topic_scan: {threshold: 2, action: log}\n")
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: detectors changed", "defense.topic_scan.action", "defense.topic_scan.threshold") {
		t.Fatal("the detector change was not applied")
	}
	mqttTry(t, port, "", "u/one")
	mqttTry(t, port, "", "u/two")
	if !m.waitLog(t, "guard: topic scan detected", "2 denied topics", "action=log") {
		t.Fatal("two denied publications were not detected under the new threshold")
	}
	if strings.Contains(m.logs.String(), "guard: ban added") {
		t.Fatal("the detection banned under action log")
	}
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// The documentation lists every rule: a rule missing from
// docs/operations.md fails.
func TestReloadRulesDocumented(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, live, _ := strings.Cut(string(data), "## Live reload")
	live, _, _ = strings.Cut(live, "\n## ")
	for _, r := range reloadRules {
		name := strings.TrimSuffix(strings.TrimSuffix(r.key, "*"), ".")
		if !strings.Contains(live, "`"+name) {
			t.Errorf("docs/operations.md, Live reload: setting %s (rule %q) is not listed", name, r.key)
		}
	}
}
