package cli

// End-to-end tests of `moat serve`: the real binary, real configuration
// files (mosquitto.conf and YAML), and real peers — mosquitto_pub and
// mosquitto_sub, Debian's Python paho client, openssl-made certificates.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var moatBin string

func TestMain(m *testing.M) {
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
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needTool skips the test when an external peer is not installed; `make
// test` installs them, so CI never skips.
func needTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s not installed (make test installs it)", n)
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// for configuration formats (mosquitto.conf) that cannot say "port 0".
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for a writer process and a reader test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type moatProc struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{} // closed when the process has exited
	err  error         // its exit error, valid after done
}

// startMoat runs `moat serve` with args in dir and waits until every port
// in ports accepts connections. A configuration file given with -c must
// first pass `moat serve --check`: what serve starts, --check accepts.
func startMoat(t *testing.T, dir string, ports []int, args ...string) *moatProc {
	t.Helper()
	if slices.Contains(args, "-c") {
		check := exec.Command(moatBin, append([]string{"serve", "--check"}, args...)...)
		check.Dir = dir
		if out, err := check.CombinedOutput(); err != nil {
			t.Fatalf("moat serve --check %v refuses a configuration serve is expected to start: %v\n%s", args, err, out)
		}
	}
	p := &moatProc{logs: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(moatBin, append([]string{"serve"}, args...)...)
	p.cmd.Dir = dir
	p.cmd.Stdout = p.logs
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("moat logs:\n%s", p.logs.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for _, port := range ports {
		for {
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.done:
				t.Fatalf("moat exited early: %v\n%s", p.err, p.logs.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("moat not listening on %d:\n%s", port, p.logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return p
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
	var out syncBuffer
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
	needTool(t, "mosquitto_pub", "mosquitto_sub", "/usr/bin/python3")
	dir := t.TempDir()
	tcp, ws := freePort(t), freePort(t)
	// The configuration of the conformance run, plus a WebSocket listener.
	writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf(`# plain loopback broker for interop tests
listener %d 127.0.0.1
allow_anonymous true
max_keepalive 60

listener %d 127.0.0.1
protocol websockets
allow_anonymous true
`, tcp, ws))
	startMoat(t, dir, []int{tcp, ws}, "-c", "mosquitto.conf")

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
	dir := t.TempDir()
	port := freePort(t)
	writeFile(t, filepath.Join(dir, "m.conf"), fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\n", port))
	p := startMoat(t, dir, []int{port}, "-c", "m.conf")
	nc, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
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

func TestServePprof(t *testing.T) {
	dir := t.TempDir()
	port, pp := freePort(t), freePort(t)
	writeFile(t, filepath.Join(dir, "m.conf"), fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\n", port))
	startMoat(t, dir, []int{port, pp}, "-c", "m.conf", "--pprof", "127.0.0.1:"+strconv.Itoa(pp))
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/goroutine?debug=1", pp))
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
