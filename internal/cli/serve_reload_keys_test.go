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
	"github.com/moatmq/moat/internal/testutil/testpki"
	"github.com/moatmq/moat/internal/tlsconf"
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
		"listeners[3].tls.sni_certificates[1].key": "listeners[].tls.sni_certificates*",
		"listeners[3].tls.min_version":             "listeners[].tls*",
		"listeners[0].auth[2].url":                 "listeners[].auth*",
		"auth[0].bind_dn_template":                 "auth*",
		"acl.rules[4].topics[0]":                   "acl*",
		"defense.auth_failures.threshold":          "defense.auth_failures*",
		"defense.conn_rate":                        "defense.conn_rate",
		"listeners[1].tls.crl[2]":                  "listeners[].tls.crl[]",
		"listeners[1].tls.crl_stale":               "listeners[].tls*",
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

// reloadTLSBase writes two sets of TLS files in dir (server
// certificates and keys, CA files, CRLs, a CA directory, all of one test
// CA) and returns a configuration whose TLS listener uses the first set;
// "DIR/" in it stands for dir.
func reloadTLSBase(t *testing.T, dir string) string {
	t.Helper()
	ca := testpki.NewRoot(t, "reload test CA", testpki.P256)
	for _, name := range []string{"serverA", "serverB"} {
		ca.Issue(t, testpki.ServerOptions()).WriteFiles(t, dir, name)
	}
	// serverA2.key: serverA's key at another path.
	key, err := os.ReadFile(filepath.Join(dir, "serverA.key"))
	if err != nil {
		t.Fatal(err)
	}
	testpki.WriteFile(t, filepath.Join(dir, "serverA2.key"), key)
	for _, name := range []string{"caA.pem", "caB.pem", "cadir/ca.pem"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		testpki.WriteFile(t, filepath.Join(dir, name), ca.PEM())
	}
	now := time.Now()
	for _, name := range []string{"crlA.pem", "crlB.pem"} {
		testpki.WriteFile(t, filepath.Join(dir, name), ca.CRL(t, now.Add(-time.Hour), now.Add(24*time.Hour)))
	}
	return `acl:
  rules:
    - {name: anon, effect: allow, subjects: {anonymous: true}, actions: [publish, subscribe, receive], topics: ["t/#"]}
listeners:
  - name: tls-1883
    address: "127.0.0.1:1883"
    transport: tls
    allow_anonymous: true
    tls:
      cert: DIR/serverA.pem
      key: DIR/serverA.key
      client_ca: DIR/caA.pem
      client_auth: optional
      crl: [DIR/crlA.pem]
`
}

// TestReloadAppliesEveryLiveKey changes each setting a reload applies
// live, one at a time, and checks the running plan's broker, guard,
// logger, policy or audit sampling took the new value. A live rule
// without a case here fails the test.
func TestReloadAppliesEveryLiveKey(t *testing.T) {
	t.Parallel()
	type check func(p *servePlan) error
	want := func(what string, got, want any) error {
		if got != want {
			return fmt.Errorf("%s %v, want %v", what, got, want)
		}
		return nil
	}
	tlsFiles := func(p *servePlan) tlsconf.Files { return p.listeners[0].mgr.Files() }
	cases := map[string]struct {
		yaml  string // added to the base, or "from\x00to": replacing from with to in the base
		check check
		tls   bool // the base is reloadTLSBase (a TLS listener and its files)
	}{
		"limits.message_size_limit": {"limits: {message_size_limit: 100}", func(p *servePlan) error {
			return want("MessageSizeLimit", p.srv.Limits().MessageSizeLimit, uint32(100))
		}, false},
		"limits.max_keepalive": {"limits: {max_keepalive: 120}", func(p *servePlan) error {
			return want("MaxKeepAlive", p.srv.Limits().MaxKeepAlive, uint16(120))
		}, false},
		"limits.max_inflight": {"limits: {max_inflight: 5}", func(p *servePlan) error {
			return want("MaxInflight", p.srv.Limits().MaxInflight, 5)
		}, false},
		"limits.max_queued_messages": {"limits: {max_queued_messages: 7}", func(p *servePlan) error {
			return want("MaxQueued", p.srv.Limits().MaxQueued, 7)
		}, false},
		"limits.max_queued_bytes": {"limits: {max_queued_bytes: 64KiB}", func(p *servePlan) error {
			return want("MaxQueuedBytes", p.srv.Limits().MaxQueuedBytes, int64(64<<10))
		}, false},
		"limits.max_subscriptions": {"limits: {max_subscriptions: 9}", func(p *servePlan) error {
			return want("MaxSubscriptions", p.srv.Limits().MaxSubscriptions, 9)
		}, false},
		"limits.max_subscription_bytes": {"limits: {max_subscription_bytes: 2KiB}", func(p *servePlan) error {
			return want("MaxSubscriptionBytes", p.srv.Limits().MaxSubscriptionBytes, 2048)
		}, false},
		"limits.max_sessions": {"limits: {max_sessions: 11}", func(p *servePlan) error {
			return want("MaxSessions", p.srv.Limits().MaxSessions, 11)
		}, false},
		"limits.max_connections": {"limits: {max_connections: 13}", func(p *servePlan) error {
			return want("MaxConnections", p.srv.Limits().MaxConnections, 13)
		}, false},
		"limits.connect_timeout": {"limits: {connect_timeout: 3s}", func(p *servePlan) error {
			return want("ConnectTimeout", p.srv.Limits().ConnectTimeout, 3*time.Second)
		}, false},
		"limits.reauth_grace": {"limits: {reauth_grace: 4s}", func(p *servePlan) error {
			return want("ReauthGrace", p.srv.Limits().ReauthGrace, 4*time.Second)
		}, false},
		"limits.max_retained_messages": {"limits: {max_retained_messages: 15}", func(p *servePlan) error {
			return want("MaxRetained", p.srv.Limits().MaxRetained, 15)
		}, false},
		"limits.max_retained_bytes": {"limits: {max_retained_bytes: 1MiB}", func(p *servePlan) error {
			return want("MaxRetainedBytes", p.srv.Limits().MaxRetainedBytes, int64(1<<20))
		}, false},
		"limits.max_retained_messages_per_identity": {"limits: {max_retained_messages_per_identity: 17}", func(p *servePlan) error {
			return want("MaxRetainedPerIdentity", p.srv.Limits().MaxRetainedPerIdentity, 17)
		}, false},
		"limits.max_retained_bytes_per_identity": {"limits: {max_retained_bytes_per_identity: 64KiB}", func(p *servePlan) error {
			return want("MaxRetainedBytesPerIdentity", p.srv.Limits().MaxRetainedBytesPerIdentity, int64(64<<10))
		}, false},
		"limits.pushback_messages": {"limits: {pushback_messages: 30}", func(p *servePlan) error {
			return want("PushbackMessages", p.srv.Limits().PushbackMessages, 30)
		}, false},
		"limits.pushback_bytes": {"limits: {pushback_bytes: 64KiB}", func(p *servePlan) error {
			return want("PushbackBytes", p.srv.Limits().PushbackBytes, int64(64<<10))
		}, false},
		"limits.pushback_wait": {"limits: {pushback_wait: 3s}", func(p *servePlan) error {
			return want("PushbackWait", p.srv.Limits().PushbackWait, 3*time.Second)
		}, false},
		"limits.queue_full_policy": {"limits: {queue_full_policy: block}", func(p *servePlan) error {
			return want("QueueFullPolicy", p.srv.Limits().QueueFullPolicy, broker.QueueBlock)
		}, false},
		"defense.message_rate": {"defense: {message_rate: 50}", func(p *servePlan) error {
			return want("MessageRate", p.defense.guard().ClientRates().MessageRate, 50.0)
		}, false},
		"defense.message_burst": {"defense: {message_burst: 60}", func(p *servePlan) error {
			return want("MessageBurst", p.defense.guard().ClientRates().MessageBurst, 60)
		}, false},
		"defense.byte_rate": {"defense: {byte_rate: 1MiB}", func(p *servePlan) error {
			return want("ByteRate", p.defense.guard().ClientRates().ByteRate, float64(1<<20))
		}, false},
		"defense.byte_burst": {"defense: {byte_burst: 2MiB}", func(p *servePlan) error {
			return want("ByteBurst", p.defense.guard().ClientRates().ByteBurst, 2<<20)
		}, false},
		"defense.throttle_limit": {"defense: {throttle_limit: 5s}", func(p *servePlan) error {
			return want("ThrottleLimit", p.defense.guard().ClientRates().ThrottleLimit, 5*time.Second)
		}, false},
		"defense.auth_failures*": {"defense: {auth_failures: {threshold: 3, action: log}}", func(p *servePlan) error {
			d := p.defense.guard().Detectors().AuthFailures
			return want("auth_failures", fmt.Sprint(d.Threshold, d.Action), "3 log")
		}, false},
		"defense.topic_scan*": {"defense: {topic_scan: {window: 5m}}", func(p *servePlan) error {
			return want("topic_scan window", p.defense.guard().Detectors().TopicScan.Window, 5*time.Minute)
		}, false},
		"defense.flapping*": {"defense: {flapping: {action: disconnect}}", func(p *servePlan) error {
			return want("flapping action", p.defense.guard().Detectors().Flapping.Action.String(), "disconnect")
		}, false},
		"defense.abnormal_disconnects*": {"defense: {abnormal_disconnects: {keys: [address]}}", func(p *servePlan) error {
			return want("abnormal_disconnects keys", p.defense.guard().Detectors().Abnormal.Keys.String(), "source address")
		}, false},
		"defense.undeliverable*": {"defense: {undeliverable: {disabled: true}}", func(p *servePlan) error {
			return want("undeliverable disabled", p.defense.guard().Detectors().Undeliverable.Disabled, true)
		}, false},
		"defense.silence*": {"defense: {silence: {window: 2m, ban_for: 1m, max_ban: 2m}}", func(p *servePlan) error {
			return want("silence after", p.defense.guard().SilenceAfter(), 2*time.Minute)
		}, false},
		"defense.limit_abuse*": {"defense: {limit_abuse: {threshold: 7, action: ban}}", func(p *servePlan) error {
			d := p.defense.guard().Detectors().LimitAbuse
			return want("limit_abuse", fmt.Sprint(d.Threshold, d.Action), "7 ban")
		}, false},
		"limits.max_topic_length": {"limits: {max_topic_length: 100}", func(p *servePlan) error {
			return want("MaxTopicLength", p.srv.Limits().MaxTopicLength, 100)
		}, false},
		"limits.max_topic_levels": {"limits: {max_topic_levels: 9}", func(p *servePlan) error {
			return want("MaxTopicLevels", p.srv.Limits().MaxTopicLevels, 9)
		}, false},
		"limits.max_preauth_packet_size": {"limits: {max_preauth_packet_size: 4KiB}", func(p *servePlan) error {
			return want("PreAuthMaxPacketSize", p.srv.Limits().PreAuthMaxPacketSize, uint32(4096))
		}, false},
		"sys_interval": {"sys_interval: 3s", func(p *servePlan) error {
			return want("SysInterval", p.srv.Limits().SysInterval, 3*time.Second)
		}, false},
		"defense.conn_rate": {"defense: {conn_rate: 7}", func(p *servePlan) error {
			return want("ConnRate", p.defense.guard().Limits().ConnRate, 7.0)
		}, false},
		"defense.conn_burst": {"defense: {conn_burst: 8}", func(p *servePlan) error {
			return want("ConnBurst", p.defense.guard().Limits().ConnBurst, 8)
		}, false},
		"defense.listener_conn_rate": {"defense: {listener_conn_rate: 70}", func(p *servePlan) error {
			return want("ListenerConnRate", p.defense.guard().Limits().ListenerConnRate, 70.0)
		}, false},
		"defense.listener_conn_burst": {"defense: {listener_conn_burst: 80}", func(p *servePlan) error {
			return want("ListenerConnBurst", p.defense.guard().Limits().ListenerConnBurst, 80)
		}, false},
		"defense.max_conns_per_addr": {"defense: {max_conns_per_addr: 9}", func(p *servePlan) error {
			return want("MaxConnsPerAddr", p.defense.guard().Limits().MaxConnsPerAddr, 9)
		}, false},
		"defense.tracked_keys": {"defense: {tracked_keys: 500}", func(p *servePlan) error {
			return want("TrackedKeys", p.defense.guard().Limits().TrackedKeys, 500)
		}, false},
		"defense.repeat_memory": {"defense: {repeat_memory: 2h}", func(p *servePlan) error {
			return want("RepeatMemory", p.defense.guard().Limits().RepeatMemory, 2*time.Hour)
		}, false},
		"defense.max_bans": {"defense: {max_bans: 50}", func(p *servePlan) error {
			return want("MaxBans", p.defense.guard().Limits().MaxBans, 50)
		}, false},
		"listeners[].tls.cert": {"serverA.pem\x00serverB.pem", func(p *servePlan) error {
			return want("certificate file", filepath.Base(tlsFiles(p).Certificates[0].CertFile), "serverB.pem")
		}, true},
		"listeners[].tls.key": {"serverA.key\x00serverA2.key", func(p *servePlan) error {
			return want("key file", filepath.Base(tlsFiles(p).Certificates[0].KeyFile), "serverA2.key")
		}, true},
		"listeners[].tls.sni_certificates*": {"cert: DIR/serverA.pem\x00sni_certificates: [{cert: DIR/serverB.pem, key: DIR/serverB.key}]\n      cert: DIR/serverA.pem", func(p *servePlan) error {
			f := tlsFiles(p).Certificates
			return want("SNI certificates", fmt.Sprintf("%d %s", len(f), filepath.Base(f[len(f)-1].CertFile)), "2 serverB.pem")
		}, true},
		"listeners[].tls.client_ca": {"client_ca: DIR/caA.pem\x00client_ca: DIR/caB.pem", func(p *servePlan) error {
			return want("CA file", filepath.Base(tlsFiles(p).CAFile), "caB.pem")
		}, true},
		"listeners[].tls.client_ca_dir": {"client_ca: DIR/caA.pem\x00client_ca: DIR/caA.pem\n      client_ca_dir: DIR/cadir", func(p *servePlan) error {
			return want("CA directory", filepath.Base(tlsFiles(p).CAPath), "cadir")
		}, true},
		"listeners[].tls.crl[]": {"crl: [DIR/crlA.pem]\x00crl: [DIR/crlB.pem]", func(p *servePlan) error {
			f := tlsFiles(p).CRLFiles
			return want("CRL files", fmt.Sprintf("%d %s", len(f), filepath.Base(f[0])), "1 crlB.pem")
		}, true},
		"audit.deny_sample": {"audit: {deny_sample: 3}", func(p *servePlan) error {
			return want("deny sample", p.defense.denySample.Load(), int64(3))
		}, false},
		"log.level": {"log: {level: warn}", func(p *servePlan) error {
			return want("log level", p.live.level.Level(), slog.LevelWarn)
		}, false},
		"profile": {"profile: secure-network", func(p *servePlan) error {
			return want("profile", profileName(p.runningConfig()), "secure-network")
		}, false},
		"acl*": {`"t/#"` + "\x00" + `"u/#"`, func(p *servePlan) error {
			return want("policy generation", p.access.byLn["tcp-1883"].holder.Generation(), uint64(2))
		}, false},
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
			base := reloadKeysBase
			if tc.tls {
				base = reloadTLSBase(t, dir)
			}
			writeFile(t, file, strings.ReplaceAll(base, "DIR/", dir+"/"))
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
			next := base + tc.yaml + "\n"
			if from, to, ok := strings.Cut(tc.yaml, "\x00"); ok {
				if !strings.Contains(base, from) {
					t.Fatalf("%q is not in the base", from)
				}
				next = strings.Replace(base, from, to, 1)
			}
			next = strings.ReplaceAll(next, "DIR/", dir+"/")
			writeFile(t, file, next)
			summary, err := plan.reloadConfig()
			if err != nil {
				t.Fatalf("reload: %v", err)
			}
			if !strings.Contains(indexRE.ReplaceAllString(summary, "[]"), strings.TrimSuffix(key, "*")) {
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
	t.Parallel()
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

	writeFile(t, file, reloadYAML("debug", "t/#")+"limits:\n  connect_timeout: 1s\n  max_retained_messages_per_identity: 1\ndefense:\n  ipv6_prefix: 48\n")
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: reload refused", "defense.ipv6_prefix: connections are counted per address prefix") {
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
