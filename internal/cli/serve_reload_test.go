package cli

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/testutil"
)

// reloadYAML is the configuration of the reload tests: one anonymous
// loopback listener on port 0, an access policy over topics, a log level.
// A reload that keeps the listener writes port 0 again: the address in
// the file is what a reload compares.
func reloadYAML(level string, topics ...string) string {
	return fmt.Sprintf(`log:
  level: %s
acl:
  rules:
    - {name: anon, effect: allow, subjects: {anonymous: true}, actions: [publish, subscribe, receive], topics: [%s]}
listeners:
  - address: 127.0.0.1:0
    transport: tcp
    allow_anonymous: true
`, level, `"`+strings.Join(topics, `", "`)+`"`)
}

// startReloadBroker starts moat serve on reloadYAML with a data
// directory, and returns it with the file's and the directory's paths.
func startReloadBroker(t *testing.T, extra ...string) (m *moatProc, port int, file, data string) {
	t.Helper()
	dir := t.TempDir()
	data = filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(dir, "moat.yaml")
	writeFile(t, file, reloadYAML("info", "t/#"))
	m = startMoat(t, dir, append([]string{"-c", "moat.yaml", "--data", data}, extra...)...)
	return m, m.port(0), file, data
}

// anonSub runs mosquitto_sub as an anonymous client.
func anonSub(t *testing.T, port int, filter string) *subscriber {
	t.Helper()
	s := &subscriber{cmd: exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-t", filter, "-q", "1", "-v", "-i", "anon-sub"), out: &testutil.Buffer{}}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	return s
}

// SIGHUP applies a changed access policy and log level: a topic the old
// policy denied is delivered, and debug records appear.
func TestServeReloadSIGHUPAppliesACLAndLogLevel(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	m, port, file, _ := startReloadBroker(t)
	mqttTry(t, port, "", "u/before")
	if !m.waitLog(t, "broker: publish not authorized", "u/before") {
		t.Fatal("u/before was not denied by the first policy")
	}
	writeFile(t, file, reloadYAML("debug", "t/#", "u/#"))
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: configuration reloaded", "acl.rules[0].topics[1]", "log.level", "level=DEBUG msg=\"serve: reload applied a changed setting\"") {
		t.Fatal("the reload was not applied")
	}
	s := anonSub(t, port, "u/#")
	testutil.WaitFor(t, "a message on u/ under the new policy", 15*time.Second, func() bool {
		mqttTry(t, port, "", "u/after")
		return strings.Contains(s.out.String(), "u/after m")
	})
}

// A reload that changes a listener's address is refused with a message
// naming the setting, and nothing else it changes is applied; a file that
// does not parse keeps the running configuration too.
func TestServeReloadRefusesRestartSettings(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	m, port, file, _ := startReloadBroker(t)
	writeFile(t, file, strings.Replace(reloadYAML("debug", "t/#", "u/#"), "127.0.0.1:0", "127.0.0.1:1883", 1))
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: reload refused", "moat.yaml:7: listeners[0].address: listeners are bound at start") {
		t.Fatal("the changed address was not refused")
	}
	mqttTry(t, port, "", "u/refused")
	if !m.waitLog(t, "broker: publish not authorized", "u/refused") {
		t.Fatal("the access policy of the refused reload was applied")
	}
	if strings.Contains(m.logs.String(), "configuration reloaded") || strings.Contains(m.logs.String(), "level=DEBUG") {
		t.Fatal("part of the refused reload was applied")
	}

	writeFile(t, file, "listeners: [\n")
	m.cmd.Process.Signal(syscall.SIGHUP)
	testutil.WaitFor(t, "the broken file to be refused", 15*time.Second, func() bool {
		return strings.Count(m.logs.String(), `msg="serve: reload refused`) == 2 && strings.Contains(m.logs.String(), "invalid YAML")
	})
	s := anonSub(t, port, "t/#")
	testutil.WaitFor(t, "a message under the running configuration", 15*time.Second, func() bool {
		mqttTry(t, port, "", "t/still")
		return strings.Contains(s.out.String(), "t/still m")
	})
}

// moat reload finds the broker through DATA_DIR/moat.pid (0600, removed at
// stop) and signals it.
func TestReloadCommandPIDFile(t *testing.T) {
	t.Parallel()
	m, _, file, data := startReloadBroker(t)
	pidFile := filepath.Join(data, pidFileName)
	// serve writes the pid file once its SIGHUP handler is in place,
	// which may be just after the port accepts connections.
	var fi os.FileInfo
	testutil.CheckFor(t, 10*time.Second, func() (err error) {
		fi, err = os.Stat(pidFile)
		return err
	})
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("pid file mode %v, want 0600", fi.Mode().Perm())
	}
	if pid, err := readPIDFile(pidFile); err != nil || pid != m.cmd.Process.Pid {
		t.Fatalf("pid file: %d, %v; want %d", pid, err, m.cmd.Process.Pid)
	}
	writeFile(t, file, reloadYAML("warn", "t/#"))
	out, err := exec.Command(moatBin, "reload", "--data", data).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("sent SIGHUP to the broker (pid %d)", m.cmd.Process.Pid)) {
		t.Fatalf("moat reload: %v\n%s", err, out)
	}
	if !m.waitLog(t, "serve: configuration reloaded", "changed=[log.level]", "log_level=warn") {
		t.Fatal("moat reload did not reload")
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(15 * time.Second):
		t.Fatal("the broker did not stop")
	}
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file left after stop: %v", err)
	}
	out, err = exec.Command(moatBin, "reload", "--data", data).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no broker is running") {
		t.Errorf("moat reload without a broker: %v\n%s", err, out)
	}
}

// moat reload --admin calls the API's reload with a token from a file,
// and prints the refusal of a change that needs a restart.
func TestReloadCommandAdmin(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	tok, err := exec.Command(moatBin, "admin", "token", "create", "ops", "--role", "operator", "--data", data).Output()
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "token")
	writeFile(t, tokFile, string(tok))
	file := filepath.Join(dir, "moat.yaml")
	writeFile(t, file, reloadYAML("info", "t/#"))
	m := startMoat(t, dir, "-c", "moat.yaml", "--data", data, "--admin", "127.0.0.1:0")
	addr := m.logAddr(t, "admin: serving the API", "address")

	writeFile(t, file, reloadYAML("info", "t/#", "v/#"))
	out, err := exec.Command(moatBin, "reload", "--data", data, "--admin", addr, "--token-file", tokFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "configuration reloaded") {
		t.Fatalf("moat reload --admin: %v\n%s", err, out)
	}
	if !m.waitLog(t, "changed=[acl.rules[0].topics[1]]") {
		t.Fatal("the API reload was not applied")
	}
	writeFile(t, file, strings.Replace(reloadYAML("info", "t/#"), "transport: tcp", "transport: ws", 1))
	out, err = exec.Command(moatBin, "reload", "--data", data, "--admin", addr, "--token-file", tokFile).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "listeners[0].transport: listeners are bound at start") {
		t.Fatalf("moat reload --admin of a transport change: %v\n%s", err, out)
	}
	cmd := exec.Command(moatBin, "reload", "--admin", addr)
	cmd.Env = append(os.Environ(), adminTokenEnv+"=")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "needs an operator token") {
		t.Errorf("moat reload --admin without a token: %v\n%s", err, out)
	}
}

// The comparison sees every setting, the options of auth entries and acl
// rules included, and tells live ones from those needing a restart.
func TestReloadDiff(t *testing.T) {
	base := `profile: open
log: {level: info}
limits: {max_inflight: 20}
auth:
  - {type: ldap, url: "ldaps://a.example", bind_dn_template: "uid=%u,dc=example"}
acl:
  rules:
    - {name: r, effect: allow, subjects: {all: true}, actions: [publish], topics: ["a/#"]}
listeners:
  - {address: "127.0.0.1:1883", transport: tcp}
`
	parse := func(s string) *config.Config {
		t.Helper()
		c, err := config.Parse("m.yaml", []byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	old := parse(base)
	for _, tc := range []struct {
		from, to string
		want     []string // path=live or path=restart
	}{
		{"", "", nil},
		{"profile: open", "profile: secure-network", []string{"profile=live"}},
		{"level: info", "level: debug", []string{"log.level=live"}},
		{`"a/#"`, `"b/#"`, []string{"acl.rules[0].topics[0]=live"}},
		{"max_inflight: 20", "max_inflight: 30", []string{"limits.max_inflight=live"}},
		{"max_inflight: 20", "max_inflight: 20, max_packet_size: 1000", []string{"limits.max_packet_size=restart"}},
		{"max_inflight: 20", "max_inflight: 20, read_budget: 1MiB", []string{"limits.read_budget=restart"}},
		{"profile: open", "profile: open\ndefense: {message_rate: 5, message_burst: 5}", []string{"defense.message_burst=live", "defense.message_rate=live"}},
		{"profile: open", "profile: open\ndefense: {conn_rate: 5}", []string{"defense.conn_rate=live"}},
		{"profile: open", "profile: open\ndefense: {ipv6_prefix: 48}", []string{"defense.ipv6_prefix=restart"}},
		{"a.example", "b.example", []string{"auth[0].url=restart"}},
		{"127.0.0.1:1883", "127.0.0.1:1884", []string{"listeners[0].address=restart", "listeners[0].name=restart"}},
	} {
		changes, err := diffConfigs(old, parse(strings.Replace(base, tc.from, tc.to, 1)))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range changes {
			kind := "live"
			if c.reason != "" {
				kind = "restart"
			}
			got = append(got, c.path+"="+kind)
		}
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%q -> %q: %q, want %q", tc.from, tc.to, got, tc.want)
		}
	}
}

// A pid file left behind and naming another process does not get that
// process signalled.
func TestReloadCommandStalePIDFile(t *testing.T) {
	data := t.TempDir()
	sleeper := exec.Command("sleep", "30")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(data, pidFileName), strconv.Itoa(sleeper.Process.Pid)+"\n")
	out, err := exec.Command(moatBin, "reload", "--data", data).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "which is not moat serve; refusing to signal it") {
		t.Errorf("moat reload with a stale pid file: %v\n%s", err, out)
	}
	// Had it been sent SIGHUP, it would have died of it before this kill.
	sleeper.Process.Kill()
	sleeper.Wait()
	if ws, ok := sleeper.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the process named by the stale pid file ended with %v", sleeper.ProcessState)
	}
}

// A reload to a profile the file does not meet is refused; one it meets
// is applied and becomes the profile in force.
func TestReloadChecksProfile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "m.yaml")
	body := "listeners:\n  - {address: \"127.0.0.1:1883\", transport: tcp, allow_anonymous: true}\n"
	writeFile(t, file, body)
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	var logs testutil.Buffer
	plan, err := buildPlan(cfg, slog.New(slog.NewTextHandler(&logs, nil)), true)
	if err != nil {
		t.Fatal(err)
	}
	defer plan.close()
	plan.live = &liveConfig{load: func() (*config.Config, error) { return config.Load(file) }, level: &slog.LevelVar{}}

	writeFile(t, file, "profile: secure-transport\n"+body)
	if _, err := plan.reloadConfig(); err == nil || !strings.Contains(err.Error(), "m.yaml:3: profile secure-transport: listener \"tcp-1883\": anonymous access is refused") {
		t.Fatalf("reload to secure-transport: %v", err)
	}
	if p := profileName(plan.runningConfig()); p != "none" {
		t.Errorf("profile after a refused reload: %s", p)
	}
	writeFile(t, file, "profile: secure-network\n"+body)
	if _, err := plan.reloadConfig(); err != nil {
		t.Fatal(err)
	}
	if p := profileName(plan.runningConfig()); p != "secure-network" {
		t.Errorf("profile after the reload: %s", p)
	}
	if !strings.Contains(logs.String(), "changed=[profile]") {
		t.Errorf("no summary in the log:\n%s", logs.String())
	}
}

// A reload applies changed limits and client rates to the running broker
// and guard; one that also changes a limit needing a restart applies none.
func TestReloadLimits(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "m.yaml")
	body := "listeners:\n  - {address: \"127.0.0.1:1883\", transport: tcp, allow_anonymous: true}\n"
	writeFile(t, file, body)
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	var logs testutil.Buffer
	plan, err := buildPlan(cfg, slog.New(slog.NewTextHandler(&logs, nil)), true)
	if err != nil {
		t.Fatal(err)
	}
	defer plan.close()
	plan.live = &liveConfig{load: func() (*config.Config, error) { return config.Load(file) }, level: &slog.LevelVar{}}
	before, rates := plan.srv.Limits(), plan.defense.guard().ClientRates()

	// A limit that needs a restart refuses the whole reload.
	writeFile(t, file, "limits: {message_size_limit: 100, max_packet_size: 2000}\n"+body)
	if _, err := plan.reloadConfig(); err == nil || !strings.Contains(err.Error(),
		"m.yaml:1: limits.max_packet_size: MQTT 5 clients are told the maximum packet size in CONNACK") {
		t.Fatalf("reload changing max_packet_size: %v", err)
	}
	if plan.srv.Limits() != before {
		t.Fatalf("a refused reload changed the limits: %+v", plan.srv.Limits())
	}

	writeFile(t, file, `limits:
  message_size_limit: 100
  max_queued_messages: 0
  max_inflight: 5
  max_subscriptions: 7
  max_keepalive: 120
defense:
  message_rate: 50
  message_burst: 60
  byte_rate: 1MiB
`+body)
	if _, err := plan.reloadConfig(); err != nil {
		t.Fatal(err)
	}
	got := plan.srv.Limits()
	want := before
	want.MessageSizeLimit, want.MaxQueued, want.MaxInflight, want.MaxSubscriptions, want.MaxKeepAlive = 100, config.MaxQueuedNoLimit, 5, 7, 120
	if got != want {
		t.Errorf("limits after the reload:\n%+v\nwant\n%+v", got, want)
	}
	r := plan.defense.guard().ClientRates()
	if r.MessageRate != 50 || r.MessageBurst != 60 || r.ByteRate != 1<<20 || r.ThrottleLimit != rates.ThrottleLimit {
		t.Errorf("client rates after the reload: %+v", r)
	}
	if !strings.Contains(logs.String(), "serve: limits changed") || !strings.Contains(logs.String(), "serve: client rate limits changed") {
		t.Errorf("the changes are not logged:\n%s", logs.String())
	}
}

// SIGHUP lowers message_size_limit on a running broker: a message it
// forwarded before is dropped after.
func TestServeReloadMessageSizeLimit(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	m, port, file, _ := startReloadBroker(t)
	s := anonSub(t, port, "t/#")
	big := strings.Repeat("x", 64)
	pub := func(topic string) {
		exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-V", "311", "-q", "1", "-t", topic, "-m", big).Run()
	}
	testutil.WaitFor(t, "a large message before the reload", 15*time.Second, func() bool {
		pub("t/before")
		return strings.Contains(s.out.String(), "t/before "+big)
	})
	writeFile(t, file, reloadYAML("info", "t/#")+"limits:\n  message_size_limit: 32\n")
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: configuration reloaded", "changed=[limits.message_size_limit]") {
		t.Fatal("the reload was not applied")
	}
	pub("t/after")
	if !m.waitLog(t, "payload exceeds message_size_limit; dropped", "t/after") {
		t.Fatal("the large message was not dropped after the reload")
	}
	mqttTry(t, port, "", "t/small")
	testutil.WaitFor(t, "a small message after the reload", 15*time.Second, func() bool { return strings.Contains(s.out.String(), "t/small") })
	if strings.Contains(s.out.String(), "t/after") {
		t.Fatal("the large message was delivered after the reload")
	}
}

// The pid file goes through one fixed name beside it: what an earlier
// build left under a random name (moat.pid.NNN) more than a minute ago is
// removed, a fresh one is left alone (it may be another process's), and
// a link left at the fixed name is replaced, not followed.
func TestPIDFileLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, pidFileName+".123456789")
	fresh := filepath.Join(dir, pidFileName+".987")
	other := filepath.Join(dir, pidFileName+".bak")
	for _, f := range []string{stale, fresh, other} {
		writeFile(t, f, "1\n")
	}
	old := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(other, old, old); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target")
	writeFile(t, target, "keep\n")
	if err := os.Symlink(target, filepath.Join(dir, pidFileName+pidTempSuffix)); err != nil {
		t.Fatal(err)
	}
	p := &servePlan{cfg: &config.Config{DataDir: dir}, log: slog.New(slog.DiscardHandler)}
	remove := p.writePIDFile()
	if pid, err := readPIDFile(filepath.Join(dir, pidFileName)); err != nil || pid != os.Getpid() {
		t.Fatalf("pid file: %d, %v; want %d", pid, err, os.Getpid())
	}
	if data, err := os.ReadFile(target); err != nil || string(data) != "keep\n" {
		t.Fatalf("the link's target: %q, %v", data, err)
	}
	for f, want := range map[string]bool{stale: false, fresh: true, other: true, filepath.Join(dir, pidFileName+pidTempSuffix): false} {
		if _, err := os.Lstat(f); (err == nil) != want {
			t.Errorf("%s: present %v, want %v", filepath.Base(f), err == nil, want)
		}
	}
	remove()
	if _, err := os.Stat(filepath.Join(dir, pidFileName)); !os.IsNotExist(err) {
		t.Errorf("pid file left after remove: %v", err)
	}
}
