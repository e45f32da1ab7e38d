package cli

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// startMosquittoSub runs mosquitto_sub with client ID id on the filters,
// anonymously, until the test ends.
func startMosquittoSub(t *testing.T, port int, id string, filters ...string) *subscriber {
	t.Helper()
	args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-q", "1", "-v", "-i", id}
	for _, f := range filters {
		args = append(args, "-t", f)
	}
	s := &subscriber{cmd: exec.Command("mosquitto_sub", args...), out: &testutil.Buffer{}}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	return s
}

// TestServeReloadLiveLimitsAndConnectionLimits: through SIGHUP, against a
// running moat serve and mosquitto clients, the topic bounds, the
// connections per address and the $SYS period change live; a max_bans
// below the bans in force is refused and nothing of that reload applies.
func TestServeReloadLiveLimitsAndConnectionLimits(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	m, port, file, data := startReloadBroker(t)
	base := reloadYAML("info", "t/#", "$SYS/#")
	writeFile(t, file, base)
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: configuration reloaded", "acl.rules[0].topics[1]") {
		t.Fatal("the first reload was not applied")
	}
	sub := startMosquittoSub(t, port, "live-sub", "t/#", "$SYS/broker/uptime")
	testutil.WaitFor(t, "the subscriber", 15*time.Second, func() bool {
		mqttTry(t, port, "", "t/a/b/c")
		return strings.Contains(sub.out.String(), "t/a/b/c m")
	})

	writeFile(t, file, base+"limits:\n  max_topic_levels: 2\nsys_interval: 1s\ndefense:\n  max_conns_per_addr: 1\n")
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: configuration reloaded", "limits.max_topic_levels", "sys_interval", "defense.max_conns_per_addr",
		"serve: connection limits changed", "MaxConnsPerAddr:1") {
		t.Fatal("the limits were not applied")
	}
	// The subscriber holds the one connection 127.0.0.1 may have now: a
	// publisher is refused at accept.
	if out, err := mqttTry(t, port, "", "t/x"); err == nil {
		t.Fatalf("a second connection from 127.0.0.1 was accepted under max_conns_per_addr 1:\n%s", out)
	}
	if !m.waitLog(t, "too many connections from this source address") {
		t.Fatal("the refusal is not logged with its reason")
	}
	// $SYS every second instead of every 10 s.
	n0 := strings.Count(sub.out.String(), "$SYS/broker/uptime")
	testutil.WaitFor(t, "$SYS updates every second", 15*time.Second, func() bool {
		return strings.Count(sub.out.String(), "$SYS/broker/uptime")-n0 >= 3
	})

	// The subscriber leaves: the limit of one connection lets a publisher
	// in, whose topic of three levels is refused.
	sub.cmd.Process.Kill()
	sub.cmd.Wait()
	testutil.WaitFor(t, "a publisher once the subscriber left", 15*time.Second, func() bool {
		mqttTry(t, port, "", "t/a/b")
		return strings.Contains(m.logs.String(), "topic has more than 2 levels")
	})

	// Three bans in force; max_bans 2 is refused, and the other change
	// of that reload (the log level) is not applied.
	for _, id := range []string{"x1", "x2", "x3"} {
		if code, out, errOut := runMoat("ban", "add", "--client-id", id, "--reason", "test", "--data", data); code != 0 {
			t.Fatalf("moat ban add: %d %s %s", code, out, errOut)
		}
	}
	// moat ban reaches the running broker through its control socket and
	// returns once the ban is in force; its log lines reach the test
	// through a pipe, a little later.
	testutil.WaitFor(t, "the three bans in the log", 15*time.Second, func() bool {
		return strings.Count(m.logs.String(), "guard: ban added") >= 3
	})
	writeFile(t, file, strings.Replace(base, "level: info", "level: debug", 1)+
		"limits:\n  max_topic_levels: 2\nsys_interval: 1s\ndefense:\n  max_conns_per_addr: 1\n  max_bans: 2\n")
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: reload refused", "defense.max_bans 2 is below the 3 bans in force") {
		t.Fatal("max_bans below the bans in force was not refused")
	}
	if strings.Contains(m.logs.String(), "level=DEBUG") {
		t.Fatal("part of the refused reload was applied")
	}
}

// TestServeReloadTLSFilePaths: a listener's certificate, key and CA paths
// change through SIGHUP: mosquitto_pub trusting only the new server
// certificate's CA is refused before and accepted after, and the one
// trusting the old CA the other way round. Moving the listener onto the
// built-in CA is refused with its reason. The admin listener, which
// serves the listener's certificate, follows it.
func TestServeReloadTLSFilePaths(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub")
	dir := t.TempDir()
	for _, name := range []string{"a", "b"} {
		root := testpki.NewRoot(t, "reload CA "+name, testpki.P256)
		root.WritePEM(t, filepath.Join(dir, "ca-"+name+".pem"))
		root.Issue(t, testpki.ServerOptions()).WriteFiles(t, dir, "server-"+name)
	}
	conf := func(set string) string {
		return fmt.Sprintf(`log:
  level: info
acl:
  rules:
    - {name: anon, effect: allow, subjects: {anonymous: true}, actions: [publish, subscribe, receive], topics: ["t/#"]}
listeners:
  - name: tls
    address: 127.0.0.1:0
    transport: tls
    allow_anonymous: true
    tls:
      cert: %[1]s/server-%[2]s.pem
      key: %[1]s/server-%[2]s.key
      client_auth: none
`, dir, set)
	}
	file := filepath.Join(dir, "moat.yaml")
	writeFile(t, file, conf("a"))
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	m := startMoat(t, dir, "-c", "moat.yaml", "--data", data, "--admin", "127.0.0.1:0")
	port := m.port(0)
	pub := func(ca string) error {
		_, err := mqttTry(t, port, "", "t/tls", "--cafile", filepath.Join(dir, "ca-"+ca+".pem"))
		if err == nil {
			// The admin listener serves the same certificate.
			err = adminHandshake(t, m.logAddr(t, "admin: serving the API", "address"), filepath.Join(dir, "ca-"+ca+".pem"))
		}
		return err
	}
	if pub("a") != nil || pub("b") == nil {
		t.Fatal("before the reload: want the server certificate of CA a")
	}
	writeFile(t, file, conf("b"))
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: TLS files changed", "listener=tls", "server-b.pem", "serve: configuration reloaded", "listeners[0].tls.cert", "listeners[0].tls.key",
		"serve: the admin listener serves the listener's new certificate") {
		t.Fatal("the new paths were not applied")
	}
	if pub("b") != nil || pub("a") == nil {
		t.Fatal("after the reload: want the server certificate of CA b")
	}

	// No cert: the built-in CA's certificate, set up at start.
	writeFile(t, file, strings.Replace(strings.Replace(conf("b"), "      cert: "+dir+"/server-b.pem\n", "", 1), "      key: "+dir+"/server-b.key\n", "", 1))
	m.cmd.Process.Signal(syscall.SIGHUP)
	if !m.waitLog(t, "serve: reload refused", "listeners[0].tls.cert: moving a listener onto or off the built-in CA needs a restart") {
		t.Fatal("moving onto the built-in CA was not refused with its reason")
	}
	if pub("b") != nil {
		t.Fatal("the refused reload changed the served certificate")
	}
}

// adminHandshake completes a TLS handshake with the admin listener at addr
// trusting only the CA in caFile.
func adminHandshake(t *testing.T, addr, caFile string) error {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		return err
	}
	return c.Close()
}

// TestServeReloadProfileThroughAPI: a profile the running configuration
// violates is refused through the admin API with every violation, and
// nothing changes; a profile it meets applies and the posture shows it.
func TestServeReloadProfileThroughAPI(t *testing.T) {
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
	base := reloadYAML("info", "t/#")
	writeFile(t, file, base)
	m := startMoat(t, dir, "-c", "moat.yaml", "--data", data, "--admin", "127.0.0.1:0")
	addr := m.logAddr(t, "admin: serving the API", "address")
	reload := func() (string, error) {
		out, err := exec.Command(moatBin, "reload", "--data", data, "--admin", addr, "--token-file", tokFile).CombinedOutput()
		return string(out), err
	}
	posture := func() string {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/api/v1/posture", nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var p struct {
			Profile string `json:"profile"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
			t.Fatal(err)
		}
		return p.Profile
	}

	writeFile(t, file, "profile: secure-transport\n"+strings.Replace(base, "level: info", "level: debug", 1))
	out, err := reload()
	if err == nil {
		t.Fatalf("a profile the configuration violates was applied:\n%s", out)
	}
	for _, want := range []string{"profile secure-transport", "anonymous access is refused", "no way to authenticate"} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}
	if got := posture(); got != "none" {
		t.Fatalf("profile %q after the refused reload", got)
	}
	if strings.Contains(m.logs.String(), "level=DEBUG") {
		t.Fatal("part of the refused reload was applied")
	}

	writeFile(t, file, "profile: secure-network\n"+base)
	if out, err := reload(); err != nil {
		t.Fatalf("secure-network, which the configuration meets: %v\n%s", err, out)
	}
	if got := posture(); got != "secure-network" {
		t.Fatalf("profile %q after the reload, want secure-network", got)
	}
}
