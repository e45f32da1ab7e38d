package testutil

import (
	"errors"
	"fmt"
	"net"
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
// test ends; its output is logged if the test failed.
type RunningPeer struct {
	// Ports are the ports the peer listens on, in Peer.Command's order.
	Ports []int
	log   *Buffer
	done  chan struct{}
}

// Addr returns "127.0.0.1:port" for the i-th port.
func (p *RunningPeer) Addr(i int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Ports[i]))
}

// Log returns the peer's output so far.
func (p *RunningPeer) Log() string { return p.log.String() }

// Exited reports whether the peer process has ended.
func (p *RunningPeer) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

var bindFailure = regexp.MustCompile(`(?i)address already in use|address in use|unable to create .*listener|could not bind|cannot bind|bind\(\) failed|eaddrinuse|errno 98`)

// startAttempts bounds the retries of a peer whose ports were taken.
const startAttempts = 5

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
		p.BindFailed = bindFailure.MatchString
	}
	for attempt := 1; ; attempt++ {
		r, err := startOnce(t, p)
		if err == nil {
			return r
		}
		if !errors.Is(err, errBind) || attempt == startAttempts {
			t.Fatalf("testutil: starting %s: %v", p.Name, err)
		}
		t.Logf("testutil: %s could not bind its ports (attempt %d), retrying with new ones", p.Name, attempt)
	}
}

var errBind = errors.New("a port was taken before the peer bound it")

func startOnce(t testing.TB, p Peer) (*RunningPeer, error) {
	t.Helper()
	ports := make([]int, p.Ports)
	for i := range ports {
		ports[i] = FreePort(t)
	}
	r := &RunningPeer{Ports: ports, log: &Buffer{}, done: make(chan struct{})}
	cmd := p.Command(ports)
	cmd.Stdout, cmd.Stderr = r.log, r.log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { cmd.Wait(); close(r.done) }()
	stop := func() {
		cmd.Process.Kill()
		<-r.done
	}
	deadline := time.Now().Add(p.ReadyTimeout)
	wait := 5 * time.Millisecond
	for {
		if r.Exited() {
			log := r.log.String()
			if p.BindFailed(log) {
				return nil, fmt.Errorf("%w:\n%s", errBind, log)
			}
			return nil, fmt.Errorf("exited early (%v):\n%s", cmd.ProcessState, log)
		}
		err := p.Ready(ports)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("not ready within %v: %v\n%s", p.ReadyTimeout, err, r.log.String())
		}
		time.Sleep(wait)
		if wait < 50*time.Millisecond {
			wait *= 2
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", p.Name, r.log.String())
		}
	})
	return r, nil
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
