package testutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Peer describes an external program a test talks to (Mosquitto, slapd,
// a Python server, ...) that listens on TCP ports of 127.0.0.1.
//
// Most such programs cannot bind port 0 and report the port they got, so
// StartPeer picks ports that are free at that moment and hands them to
// Command. Another process may take one of them before the peer binds it;
// the peer then exits complaining about the address, and StartPeer tries
// again with new ports. Never pick a port and start a peer on it yourself.
type Peer struct {
	// Name is used in messages, e.g. "mosquitto".
	Name string
	// Ports is how many ports the peer listens on.
	Ports int
	// Command returns the command to run with the given ports. It is
	// called again, with new ports, for each attempt, so it must write
	// any configuration that names the ports itself. Stdout and Stderr
	// are set by StartPeer.
	Command func(ports []int) *exec.Cmd
	// Ready reports whether the peer serves. The default dials every
	// port. StartPeer polls it for up to ReadyTimeout.
	Ready func(ports []int) error
	// ReadyTimeout defaults to 15 seconds.
	ReadyTimeout time.Duration
	// BindFailed reports whether the log of a peer that exited before it
	// was ready says that it could not bind an address; such a start is
	// retried. The default recognises the usual wordings ("address
	// already in use", "Unable to create ... listener", "could not bind").
	BindFailed func(log string) bool
}

// RunningPeer is a started peer. It is killed and waited for when the
// test ends; its output is logged if the test failed. Its methods are
// meant for the test's goroutine.
type RunningPeer struct {
	// Ports are the ports the peer listens on, in Peer.Command's order.
	Ports []int
	p     Peer
	log   *Buffer // all output, across restarts
	cmd   *exec.Cmd
	done  chan struct{} // closed when cmd has exited
}

// Addr returns "127.0.0.1:port" for the i-th port.
func (r *RunningPeer) Addr(i int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Ports[i]))
}

// Log returns the peer's output so far, across restarts.
func (r *RunningPeer) Log() string { return r.log.String() }

// Exited reports whether the peer process has ended.
func (r *RunningPeer) Exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Pid returns the process ID of the running peer.
func (r *RunningPeer) Pid() int { return r.cmd.Process.Pid }

// Signal sends sig to the peer process, for peers that reload their
// configuration on SIGHUP.
func (r *RunningPeer) Signal(sig os.Signal) error { return r.cmd.Process.Signal(sig) }

// Stop kills the peer and waits for it to exit. Stopping a stopped peer
// does nothing.
func (r *RunningPeer) Stop() {
	if !r.Exited() {
		r.cmd.Process.Kill()
	}
	<-r.done
}

// Restart stops the peer and starts it again on the same ports, for tests
// of reconnection. It fails the test if the peer does not come back (for
// instance because another process took a port meanwhile).
func (r *RunningPeer) Restart(t testing.TB) {
	t.Helper()
	r.Stop()
	if err := r.run(); err != nil {
		t.Fatalf("testutil: restarting %s: %v", r.p.Name, err)
	}
}

var bindFailure = regexp.MustCompile(`(?i)address already in use|address in use|unable to create .*listener|could not bind|cannot bind|bind\(\d*\) failed|eaddrinuse|errno=?\s*98`)

// IsPortTaken reports whether a peer's log says that it could not bind an
// address ("address already in use", "Unable to create ... listener",
// "could not bind", errno 98).
func IsPortTaken(log string) bool { return bindFailure.MatchString(log) }

// ErrPortTaken is wrapped by a start function passed to RetryPorts when
// the peer could not bind one of its ports.
var ErrPortTaken = errors.New("a port was taken before the peer bound it")

// startAttempts bounds the retries of a peer whose ports were taken.
const startAttempts = 5

// RetryPorts calls start with n ports of 127.0.0.1 that are free at that
// moment until start returns nil, and returns those ports. When start's
// error wraps ErrPortTaken it is called again with new ports (up to five
// times); any other error fails the test. start must leave nothing
// running when it fails. Use it for peers that StartPeer's exec.Cmd does
// not fit, such as a server run in-process on a configured port.
func RetryPorts(t testing.TB, n int, start func(ports []int) error) []int {
	t.Helper()
	for attempt := 1; ; attempt++ {
		ports := make([]int, n)
		for i := range ports {
			ports[i] = FreePort(t)
		}
		err := start(ports)
		if err == nil {
			return ports
		}
		if !errors.Is(err, ErrPortTaken) || attempt == startAttempts {
			t.Fatalf("testutil: %v", err)
		}
		t.Logf("testutil: ports %v were taken (attempt %d), retrying with new ones", ports, attempt)
	}
}

// StartPeer starts p on fresh ports of 127.0.0.1 and waits until it is
// ready. It retries with new ports when the peer exits because a port was
// taken, and fails the test on any other early exit.
func StartPeer(t testing.TB, p Peer) *RunningPeer {
	t.Helper()
	if p.Ready == nil {
		p.Ready = dialAll
	}
	if p.ReadyTimeout == 0 {
		p.ReadyTimeout = 15 * time.Second
	}
	if p.BindFailed == nil {
		p.BindFailed = IsPortTaken
	}
	var r *RunningPeer
	RetryPorts(t, p.Ports, func(ports []int) error {
		r = &RunningPeer{Ports: ports, p: p, log: &Buffer{}}
		if err := r.run(); err != nil {
			return fmt.Errorf("starting %s: %w", p.Name, err)
		}
		return nil
	})
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", p.Name, r.log.String())
		}
	})
	return r
}

// run starts the command on r.Ports and waits until it is ready; on an
// error the process has exited.
func (r *RunningPeer) run() error {
	r.cmd = r.p.Command(r.Ports)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	r.done = make(chan struct{})
	start := len(r.log.String()) // this run's output begins here
	if err := r.cmd.Start(); err != nil {
		close(r.done)
		return err
	}
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(r.cmd, r.done)
	deadline := time.Now().Add(r.p.ReadyTimeout)
	wait := 5 * time.Millisecond
	for {
		if r.Exited() {
			log := r.log.String()[start:]
			if r.p.BindFailed(log) {
				return fmt.Errorf("%w:\n%s", ErrPortTaken, log)
			}
			return fmt.Errorf("exited early (%v):\n%s", r.cmd.ProcessState, log)
		}
		err := r.p.Ready(r.Ports)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			r.Stop()
			return fmt.Errorf("not ready within %v: %v\n%s", r.p.ReadyTimeout, err, r.log.String()[start:])
		}
		time.Sleep(wait)
		if wait < 50*time.Millisecond {
			wait *= 2
		}
	}
}

func dialAll(ports []int) error {
	for _, port := range ports {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err != nil {
			return err
		}
		c.Close()
	}
	return nil
}

// FreePort returns a port of 127.0.0.1 that was free a moment ago. Only
// StartPeer should use it: anything that can listen on port 0 must do so,
// and a peer started on a picked port must be retried when the port was
// taken in between.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testutil: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Buffer is a bytes buffer safe for one writer goroutine and concurrent
// readers, for collecting a process's or a logger's output.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// NeedTool returns the path of the program name (a name looked up in
// PATH, or an absolute path) and skips the test when it is not installed.
// `make deps` installs every Debian peer the tests use, so a full run
// skips nothing.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (make deps installs the test peers)", name)
	}
	return p
}
