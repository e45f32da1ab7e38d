package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/testutil"
)

// serveYAML builds and serves a plan from a Moat YAML text (data in the
// test's directory) and returns the plan, its log and the port of its
// first listener (configured as 127.0.0.1:0).
func serveYAML(t *testing.T, dir, text string) (*servePlan, *testutil.Buffer, int) {
	t.Helper()
	cfg, err := config.Parse(filepath.Join(dir, "moat.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = filepath.Join(dir, "data")
	logs := &testutil.Buffer{}
	plan, err := buildPlan(cfg, slog.New(slog.NewTextHandler(logs, nil)), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range plan.warnings {
		plan.log.Warn(w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- plan.serve(ctx, Stdio{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard}) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	return plan, logs, readyPort(t, logs)
}

// TestSecurityYAMLWithoutACLDeniesByDefault: a Moat YAML configuration
// that forgot its acl section must not open every topic (the attack: any
// user of the password file writes another device's command topic). It
// gets the default policy, written to DATA_DIR/acl.yaml: alice may use
// devices/alice/# and read broadcast/#, nothing else; anonymous clients
// get nothing, and the listener that admits them is warned about.
func TestSecurityYAMLWithoutACLDeniesByDefault(t *testing.T) {
	needTool(t, "mosquitto_pub", "mosquitto_sub", "mosquitto_passwd")
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	makePasswd(t, pw, "alice", "bob")
	plan, logs, port := serveYAML(t, dir, fmt.Sprintf(`listeners:
  - {address: "127.0.0.1:0", transport: tcp, allow_anonymous: true}
auth:
  - {type: password_file, path: %s}
`, pw))
	policy := filepath.Join(dir, "data", "acl.yaml")
	if fi, err := os.Stat(policy); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("default policy file: %v %v", fi, err)
	}
	if !strings.Contains(logs.String(), "the configuration has no acl section; the default access policy applies") {
		t.Error("the default policy is not announced in the log")
	}
	if !strings.Contains(logs.String(), "admit anonymous clients, to which the default access policy") {
		t.Error("the anonymous listener under the default policy is not warned about")
	}
	if st := plan.srv.Stats(); st.AuthzDenied != 0 {
		t.Fatalf("denials before any client: %d", st.AuthzDenied)
	}

	sub := startSub(t, port, "bob", "devices/bob/#", "-V", "5")
	testutil.WaitFor(t, "bob's subscription", 15*time.Second, func() bool {
		mqttTry(t, port, "bob", "devices/bob/warm")
		return strings.Contains(sub.out.String(), "devices/bob/warm")
	})
	// MQTT 5 publishers learn the refusal from PUBACK 0x87.
	for _, tc := range []struct {
		user, topic string
		allowed     bool
	}{
		{"alice", "devices/alice/status", true},
		{"alice", "devices/bob/cmd", false},
		{"alice", "valves/7/open", false},
		{"alice", "broadcast/all", false},
		{"", "devices/bob/cmd", false},
	} {
		out, err := mqttTry(t, port, tc.user, tc.topic, "-V", "5")
		if allowed := err == nil && !strings.Contains(out, "Not authorized"); allowed != tc.allowed {
			t.Errorf("%q publishing %s: allowed %v (%v %s), want %v", tc.user, tc.topic, allowed, err, out, tc.allowed)
		}
	}
	mqttTry(t, port, "bob", "devices/bob/marker")
	testutil.WaitFor(t, "the marker", 15*time.Second, func() bool { return strings.Contains(sub.out.String(), "devices/bob/marker") })
	if strings.Contains(sub.out.String(), "devices/bob/cmd") {
		t.Errorf("bob received a message someone else wrote to his tree:\n%s", sub.out.String())
	}
}

// TestServeACLAllowAll: acl: {allow_all: true} is the explicit way to turn
// access control off; it is warned about loudly, everything is allowed,
// and rules beside it are a configuration error. moat acl test follows
// the same three cases.
func TestServeACLAllowAll(t *testing.T) {
	needTool(t, "mosquitto_pub")
	dir := t.TempDir()
	text := `listeners:
  - {address: "127.0.0.1:0", transport: tcp, allow_anonymous: true}
acl: {allow_all: true}
`
	_, logs, port := serveYAML(t, dir, text)
	if !strings.Contains(logs.String(), "ACCESS CONTROL IS OFF (acl.allow_all: true)") || !strings.Contains(logs.String(), "level=WARN") {
		t.Error("allow_all is not warned about")
	}
	if out, err := mqttTry(t, port, "", "valves/7/open", "-V", "5"); err != nil || strings.Contains(out, "Not authorized") {
		t.Errorf("publish under allow_all: %v %s", err, out)
	}
	conf := filepath.Join(dir, "moat.yaml")
	writeFile(t, conf, text)
	if code, out, _ := runMoat("acl", "test", "--config", conf, "publish", "valves/7/open"); code != 0 || !strings.Contains(out, "acl.allow_all") {
		t.Errorf("moat acl test under allow_all: %d %s", code, out)
	}

	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, `listeners:
  - {address: "127.0.0.1:1883", transport: tcp}
acl:
  allow_all: true
  rules:
    - {effect: allow, subjects: {all: true}, actions: [read], topics: ["#"]}
`)
	if code, _, errOut := runMoat("serve", "--check", "-c", bad, "--data", filepath.Join(dir, "d2")); code == 0 || !strings.Contains(errOut, "bad.yaml:4") || !strings.Contains(errOut, "would never apply") {
		t.Errorf("allow_all with rules: exit %d\n%s", code, errOut)
	}

	none := filepath.Join(dir, "none.yaml")
	writeFile(t, none, "data_dir: "+filepath.Join(dir, "d3")+"\nlisteners:\n  - {address: \"127.0.0.1:1883\", transport: tcp}\n")
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"--user", "s1", "publish", "devices/s1/t"}, 0},
		{[]string{"--user", "s1", "publish", "devices/s2/t"}, 1},
		{[]string{"publish", "devices/s1/t"}, 1},
	} {
		code, out, errOut := runMoat(append([]string{"acl", "test", "--config", none}, tc.args...)...)
		if code != tc.code || !strings.Contains(out, "built-in default policy") {
			t.Errorf("moat acl test %v on YAML without acl: %d %s %s, want %d from the default policy", tc.args, code, out, errOut, tc.code)
		}
	}
}

// A reload that adds an acl section to Moat YAML that had none replaces
// the default policy live (both are policies); one that turns access
// control off with allow_all needs a restart and is refused.
func TestServeReloadFromDefaultPolicy(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	file := filepath.Join(dir, "moat.yaml")
	// The reloads keep 127.0.0.1:0: the address in the file is what a
	// reload compares, so the listener stays.
	listener := "listeners:\n  - {address: \"127.0.0.1:0\", transport: tcp, allow_anonymous: true}\n"
	writeFile(t, file, listener)
	m := startMoat(t, dir, "-c", "moat.yaml", "--data", data)
	port := m.port(0)
	mqttTry(t, port, "", "t/before")
	if !m.waitLog(t, "broker: publish not authorized", "t/before") {
		t.Fatal("the default policy did not deny an anonymous publish")
	}
	writeFile(t, file, reloadYAML("info", "t/#"))
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: configuration reloaded", "acl") {
		t.Fatal("adding the acl section was not applied live")
	}
	s := anonSub(t, port, "t/#")
	testutil.WaitFor(t, "a message under the new policy", 15*time.Second, func() bool {
		mqttTry(t, port, "", "t/after")
		return strings.Contains(s.out.String(), "t/after m")
	})
	writeFile(t, file, listener+"acl: {allow_all: true}\n")
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: reload refused", "acl", "needs a restart") {
		t.Fatal("switching to allow_all was not refused")
	}
}
