package cli

// End-to-end tests of `moat serve`: the real binary, real configuration
// files (mosquitto.conf and YAML), and real peers — mosquitto_pub and
// mosquitto_sub, Debian's Python paho client, openssl-made certificates.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

var moatBin string

func TestMain(m *testing.M) {
	if h := os.Getenv(testHelperEnv); h != "" {
		os.Exit(runTestHelper(h)) // a benchmark's helper process
	}
	flag.Parse()
	if !flagGiven("test.parallel") {
		// The parallel tests here mostly wait: for brokers and clusters
		// started as processes, for browsers and peers. GOMAXPROCS of them
		// at once leaves a small machine idle.
		if err := flag.Set("test.parallel", strconv.Itoa(max(4, runtime.GOMAXPROCS(0)))); err != nil {
			panic(err)
		}
	}
	dir, err := os.MkdirTemp("", "moat-bin")
	if err != nil {
		panic(err)
	}
	moatBin = filepath.Join(dir, "moat")
	out, err := exec.Command("go", "build", "-race", "-o", moatBin, "../../cmd/moat").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building moat: %v\n%s", err, out)
		os.Exit(1)
	}
	testutil.VerifyTestMain(m, func() { os.RemoveAll(dir) })
}

// flagGiven tells whether the command line set the flag name.
func flagGiven(name string) bool {
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// needTool skips the test when an external peer is not installed; `make
// test` installs them, so CI never skips.
func needTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		testutil.NeedTool(t, n)
	}
}

// moatProc is a `moat serve` process started by startMoat or startMoatOn.
// It is stopped with SIGTERM (SIGKILL after 15 s) when the test ends, and
// its log is printed if the test failed.
type moatProc struct {
	cmd   *exec.Cmd
	logs  *testutil.Buffer
	done  chan struct{} // closed when the process has exited
	err   error         // its exit error, valid after done
	addrs []string      // host:port of each bound listener, in the configuration's order
	dir   string        // serve's working directory
	args  []string      // serve's arguments
}

// addr returns the address ("127.0.0.1:port") of the i-th listener.
func (p *moatProc) addr(i int) string { return p.addrs[i] }

// port returns the port of the i-th listener.
func (p *moatProc) port(i int) int {
	_, port, _ := net.SplitHostPort(p.addrs[i])
	n, _ := strconv.Atoi(port)
	return n
}

// logAddr waits for the log line of msg ("admin: serving the API",
// "pprof: serving runtime profiles") and returns the address it names in
// key: how a test learns the port of a server started on port 0.
func (p *moatProc) logAddr(t *testing.T, msg, key string) string {
	t.Helper()
	var addr string
	testutil.CheckFor(t, 20*time.Second, func() error {
		if a := logAddrs(p.logs.String(), msg, key); len(a) > 0 {
			addr = a[0]
			return nil
		}
		if p.exited() {
			t.Fatalf("moat exited: %v\n%s", p.err, p.logs.String())
		}
		return fmt.Errorf("no %q line in the log", msg)
	})
	return addr
}

func (p *moatProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logAddrs returns the value of key in every log line (text or JSON)
// holding msg, in order.
func logAddrs(logs, msg, key string) []string {
	re := regexp.MustCompile(`"?` + regexp.QuoteMeta(key) + `"?[=:]"?([^\s",]+)`)
	var addrs []string
	for line := range strings.SplitSeq(logs, "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		if m := re.FindStringSubmatch(line); m != nil {
			addrs = append(addrs, m[1])
		}
	}
	return addrs
}

// readyPort waits until a plan served in-process with its log in logs
// has bound its first listener ("serve: listener ready") and returns that
// listener's port: how an in-process test learns the port of a listener
// configured as 127.0.0.1:0.
func readyPort(t *testing.T, logs *testutil.Buffer) int {
	t.Helper()
	var port int
	testutil.CheckFor(t, 15*time.Second, func() error {
		bound := logAddrs(logs.String(), "serve: listener ready", "address")
		if len(bound) == 0 {
			return errors.New("no \"serve: listener ready\" line in the log")
		}
		_, ps, err := net.SplitHostPort(bound[0])
		if err == nil {
			port, err = strconv.Atoi(ps)
		}
		return err
	})
	return port
}

// startMoat runs `moat serve` with args in dir on a configuration whose
// listeners bind port 0 (YAML "127.0.0.1:0"; --admin and --pprof take
// 127.0.0.1:0 as well) and waits until every listener is bound; their
// addresses are read from the log ("serve: listener ready"), so the log
// must go to stderr. The configuration must first pass `moat serve
// --check`: what serve starts, --check accepts; its listener count says
// how many to wait for. Configurations that cannot say port 0
// (mosquitto.conf) use startMoatOn.
func startMoat(t *testing.T, dir string, args ...string) *moatProc {
	t.Helper()
	n := checkMoat(t, dir, args)
	p, err := launchMoat(t, dir, args, func(p *moatProc) bool {
		logs := p.logs.String()
		p.addrs = logAddrs(logs, "serve: listener ready", "address")
		return len(p.addrs)+strings.Count(logs, "serve: optional listener not started") >= n
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startMoatOn runs `moat serve` on a configuration that names its ports:
// write is given n ports of 127.0.0.1 that were free a moment ago, writes
// the configuration for them and returns serve's arguments. When another
// process takes a port before serve binds it, serve exits saying so and
// the start is retried on new ports (testutil.RetryPorts); never pick a
// port and start serve on it without that retry. It waits until the log
// says every port is bound; p.addr(i) is 127.0.0.1 and the i-th port.
func startMoatOn(t *testing.T, dir string, n int, write func(ports []int) []string) *moatProc {
	t.Helper()
	var p *moatProc
	testutil.RetryPorts(t, n, func(ports []int) error {
		args := write(ports)
		checkMoat(t, dir, args)
		var err error
		p, err = launchMoat(t, dir, args, portsBound(ports))
		return err
	})
	return p
}

// portsBound is the readiness of startMoatOn: the log says every port is
// bound. (Not a dial: a dial could reach a process that took the port.)
func portsBound(ports []int) func(p *moatProc) bool {
	return func(p *moatProc) bool {
		bound := logAddrs(p.logs.String(), "serve: listener ready", "address")
		p.addrs = p.addrs[:0]
		for _, port := range ports {
			suffix := ":" + strconv.Itoa(port)
			if !slices.ContainsFunc(bound, func(a string) bool { return strings.HasSuffix(a, suffix) }) {
				return false
			}
			p.addrs = append(p.addrs, "127.0.0.1"+suffix)
		}
		return true
	}
}

// restart runs serve again, after p has exited, with the same arguments
// on the same ports: for crash recovery, whose stored sessions name their
// listener ("tcp-PORT"). Like testutil.RunningPeer.Restart it fails the
// test when another process took a listener's port meanwhile; a cluster
// node whose route port was taken (by another test's process or
// connection) starts on another route port, in its configuration
// (moat.yaml in its directory), as the in-process nodes do.
func (p *moatProc) restart(t *testing.T) *moatProc {
	t.Helper()
	if !p.exited() {
		t.Fatal("restart: moat is still running")
	}
	ports := make([]int, len(p.addrs))
	for i := range p.addrs {
		ports[i] = p.port(i)
	}
	q, err := launchMoat(t, p.dir, p.args, portsBound(ports))
	for attempt := 0; errors.Is(err, testutil.ErrPortTaken) && attempt < 2; attempt++ {
		cfgFile := filepath.Join(p.dir, "moat.yaml")
		data, rerr := os.ReadFile(cfgFile)
		m := routeListenLine.FindSubmatch(data)
		if rerr != nil || m == nil || !strings.Contains(err.Error(), "127.0.0.1:"+string(m[1])) {
			break // not a cluster node's route port
		}
		old, _ := moveRouteListen(t, cfgFile)
		t.Logf("route port %s taken while the node was stopped (%v); starting on another", old, err)
		q, err = launchMoat(t, p.dir, p.args, portsBound(ports))
	}
	if err != nil {
		t.Fatalf("restarting moat: %v", err)
	}
	return q
}

// checkMoat runs `moat serve --check` with args and returns the number of
// listeners it reports.
func checkMoat(t *testing.T, dir string, args []string) int {
	t.Helper()
	check := exec.Command(moatBin, append([]string{"serve", "--check"}, args...)...)
	check.Dir = dir
	out, err := check.CombinedOutput()
	if err != nil {
		t.Fatalf("moat serve --check %v refuses a configuration serve is expected to start: %v\n%s", args, err, out)
	}
	m := regexp.MustCompile(`configuration OK \(.*, (\d+) listener\(s\)\)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("moat serve --check %v: no listener count in:\n%s", args, out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// launchMoat starts `moat serve` with args in dir and polls ready until it
// reports true (for up to 20 s). A process that exits first is an error, which wraps
// testutil.ErrPortTaken when its log says an address was in use; then
// nothing is left running and no cleanup is registered.
func launchMoat(t *testing.T, dir string, args []string, ready func(*moatProc) bool) (*moatProc, error) {
	t.Helper()
	p := &moatProc{dir: dir, args: args, logs: &testutil.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(moatBin, append([]string{"serve"}, args...)...)
	p.cmd.Dir = dir
	p.cmd.Stdout = p.logs
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(20 * time.Second)
	wait := time.Millisecond
	for {
		if p.exited() {
			logs := p.logs.String()
			if testutil.IsPortTaken(logs) {
				return nil, fmt.Errorf("moat serve %v: %w:\n%s", args, testutil.ErrPortTaken, logs)
			}
			return nil, fmt.Errorf("moat exited early: %v\n%s", p.err, logs)
		}
		if ready(p) {
			break
		}
		if time.Now().After(deadline) {
			p.cmd.Process.Kill()
			<-p.done
			return nil, fmt.Errorf("moat not ready within 20s:\n%s", p.logs.String())
		}
		time.Sleep(wait)
		if wait < 50*time.Millisecond {
			wait *= 2
		}
	}
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("moat logs:\n%s", p.logs.String())
		}
	})
	return p, nil
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// run executes a command with a timeout and returns its combined output.
func run(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// mosquittoRoundTrip subscribes with mosquitto_sub, publishes with
// mosquitto_pub, and checks the message arrives.
func mosquittoRoundTrip(t *testing.T, port int, extra []string, topic, msg string, qos int) {
	t.Helper()
	base := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}, extra...)
	sub := exec.Command("mosquitto_sub", append(base, "-t", topic, "-C", "1", "-W", "10", "-q", strconv.Itoa(qos), "-v")...)
	var out testutil.Buffer
	sub.Stdout, sub.Stderr = &out, &out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	// mosquitto_sub has no "subscribed" signal; publish until it reports.
	done := make(chan error, 1)
	go func() { done <- sub.Wait() }()
	for i := 0; ; i++ {
		if o, err := run(t, 10*time.Second, "mosquitto_pub", append(base, "-t", topic, "-m", msg, "-q", strconv.Itoa(qos))...); err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, o)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("mosquitto_sub: %v\n%s", err, out.String())
			}
			if got := strings.TrimSpace(out.String()); got != topic+" "+msg {
				t.Fatalf("mosquitto_sub printed %q, want %q", got, topic+" "+msg)
			}
			return
		case <-time.After(300 * time.Millisecond):
			if i > 20 {
				sub.Process.Kill()
				t.Fatalf("mosquitto_sub received nothing: %s", out.String())
			}
		}
	}
}

func TestServeMosquittoConfPlainAndWebSocket(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub", "/usr/bin/python3")
	dir := t.TempDir()
	m := startMoatOn(t, dir, 2, func(ports []int) []string {
		// The configuration of the conformance run, plus a WebSocket listener.
		writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf(`# plain loopback broker for interop tests
listener %d 127.0.0.1
allow_anonymous true
max_keepalive 60

listener %d 127.0.0.1
protocol websockets
allow_anonymous true
`, ports[0], ports[1]))
		return []string{"-c", "mosquitto.conf"}
	})
	tcp, ws := m.port(0), m.port(1)

	for _, v := range []string{"mqttv31", "mqttv311", "mqttv5"} {
		for qos := 0; qos <= 2; qos++ {
			t.Run(fmt.Sprintf("mosquitto clients %s QoS %d", v, qos), func(t *testing.T) {
				mosquittoRoundTrip(t, tcp, []string{"-V", v}, fmt.Sprintf("interop/%s/%d", v, qos), "hello", qos)
			})
		}
	}
	for _, tr := range []struct {
		name string
		port int
	}{{"tcp", tcp}, {"websockets", ws}} {
		for _, v := range []string{"31", "311", "5"} {
			t.Run(fmt.Sprintf("python paho %s v%s", tr.name, v), func(t *testing.T) {
				out, err := run(t, 20*time.Second, "/usr/bin/python3", "testdata/paho_roundtrip.py",
					"--port", strconv.Itoa(tr.port), "--transport", tr.name, "--version", v,
					"--topic", "py/"+tr.name+"/"+v, "--message", "hi "+v)
				if err != nil || strings.TrimSpace(out) != "hi "+v {
					t.Fatalf("paho: %v\n%s", err, out)
				}
			})
		}
	}
}

func TestServeCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "good.conf"), "listener 1883 127.0.0.1\nallow_anonymous true\n")
	writeFile(t, filepath.Join(dir, "bad.conf"), "listener 1883\nallow_anonymous true\nbogus_key 1\n")
	cmd := exec.Command(moatBin, "serve", "-c", "good.conf", "--check")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "configuration OK") {
		t.Fatalf("good config: %v\n%s", err, out)
	}
	cmd = exec.Command(moatBin, "serve", "-c", "bad.conf", "--check")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "bad.conf:3") || !strings.Contains(string(out), "bogus_key") {
		t.Fatalf("bad config must fail naming file, line and key: %v\n%s", err, out)
	}
}

func TestServeGracefulShutdown(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "m.conf"), fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\n", ports[0]))
		return []string{"-c", "m.conf"}
	})
	nc, err := net.Dial("tcp", p.addr(0))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// MQTT 5 CONNECT, client "bye", clean start, keep alive 30.
	nc.Write([]byte{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 30, 0, 0, 3, 'b', 'y', 'e'})
	buf := make([]byte, 64)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := nc.Read(buf); err != nil || n < 4 || buf[0] != 0x20 {
		t.Fatalf("no CONNACK: %v % x", err, buf[:n])
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	// Expect DISCONNECT 0x8B (server shutting down), then EOF.
	var got []byte
	for {
		n, err := nc.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if len(got) < 3 || got[0] != 0xE0 || got[2] != 0x8B {
		t.Fatalf("got % x, want DISCONNECT 0x8B", got)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("moat exit: %v", p.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("moat did not exit")
	}
}

// waitLog waits until the broker's log contains all of subs. Log lines can
// trail the packets a client sees (CONNACK is written before "client
// connected" is logged), so tests poll.
func (p *moatProc) waitLog(t *testing.T, subs ...string) bool {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		logs := p.logs.String()
		all := true
		for _, s := range subs {
			if !strings.Contains(logs, s) {
				all = false
			}
		}
		if all {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLine waits up to 10 s for one line of the log holding every part and
// returns it.
func (p *moatProc) waitLine(t *testing.T, parts ...string) string {
	t.Helper()
	var found string
	testutil.CheckFor(t, 10*time.Second, func() error {
		for line := range strings.SplitSeq(p.logs.String(), "\n") {
			if !slices.ContainsFunc(parts, func(s string) bool { return !strings.Contains(line, s) }) {
				found = line
				return nil
			}
		}
		return fmt.Errorf("no log line with %q in:\n%s", parts, p.logs.String())
	})
	return found
}

func TestServePprof(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "m.conf"), fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\n", ports[0]))
		return []string{"-c", "m.conf", "--pprof", "127.0.0.1:0"}
	})
	pp := p.logAddr(t, "pprof: serving runtime profiles", "addr")
	resp, err := http.Get("http://" + pp + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "goroutine profile") {
		t.Fatalf("pprof: %s\n%.300s", resp.Status, body)
	}

	// Profiles reveal memory, so anything but loopback is refused.
	cmd := exec.Command(moatBin, "serve", "-c", "m.conf", "--pprof", "0.0.0.0:0")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "only a loopback address") {
		t.Fatalf("non-loopback --pprof must be refused: %v\n%s", err, out)
	}
}
