package bench_test

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/bench"
	"github.com/moatmq/moat/internal/cli"
	"github.com/moatmq/moat/internal/testutil"
)

// BenchmarkHandshakeCPU measures the server CPU of one full mutual-TLS
// handshake (ECDSA P-256 certificates, the client offering Go's default
// groups, X25519MLKEM768 first) on Moat's listener and on the crypto
// floor: crypto/tls alone (the null forwarder over TLS, which answers
// CONNECT and does nothing else). Both servers run in this process, one
// at a time; the clients run in a child process (this test binary again)
// that reads this process's CPU time from /proc around its connection
// phase, as `make bench` does for a broker, so only the server's CPU is
// counted. Then the same with resumed sessions (TLS 1.3 tickets from a
// first connection of every client), the reconnect storm after a short
// outage, and the storm after a broker restart: every client connects
// once, Moat restarts, and every client connects again, resuming with the
// ticket key Moat kept in its store, or, when Moat comes back without a
// store, doing a full handshake.
//
//	go test -run '^$' -bench HandshakeCPU -benchtime 1x ./internal/bench
//
// BENCH_HS_N sets the handshakes per measurement (default 1000),
// BENCH_HS_ROUNDS the rounds (default 3): the measurements alternate
// within each round, so that a change in the machine's load hits all of
// them, and each figure reported is the median over the rounds (the
// ratio moat/floor is the median of the rounds' ratios). Reported: server
// CPU per handshake (floor-µs/hs, moat-µs/hs and moat/floor), per resumed
// handshake (…-resumed-µs/hs), after a restart with the ticket keys kept
// (moat-restart-resumed-µs/hs) and without them
// (moat-restart-full-µs/hs), and connections per second on Moat for each.
// BENCH_HS_CPUPROFILE=FILE writes a CPU profile of Moat's full handshakes
// in the first round, or of the phase BENCH_HS_PROFILE_PHASE names (a
// resumed phase's profile includes its first, full, connections).
func BenchmarkHandshakeCPU(b *testing.B) {
	n := envInt(b, "BENCH_HS_N", 1000)
	rounds := envInt(b, "BENCH_HS_ROUNDS", 3)
	dir := b.TempDir()
	pki := filepath.Join(dir, "pki")
	if err := bench.WritePKI(pki, bench.ECDSAP256); err != nil {
		b.Fatal(err)
	}
	p := func(f string) string { return filepath.Join(pki, f) }

	// The floor: crypto/tls with the server certificate, client
	// certificates required and verified, nothing else configured.
	pair, err := tls.LoadX509KeyPair(p(bench.PKIFiles.Server), p(bench.PKIFiles.ServerKey))
	if err != nil {
		b.Fatal(err)
	}
	caPEM, err := os.ReadFile(p(bench.PKIFiles.CA))
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	floorAddr := ln.Addr().String()
	nf := &bench.NullForwarder{TLS: &tls.Config{Certificates: []tls.Certificate{pair},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}}
	ctx, cancel := context.WithCancel(context.Background())
	floorDone := make(chan error, 1)
	go func() { floorDone <- nf.Serve(ctx, ln) }()
	b.Cleanup(func() {
		cancel()
		<-floorDone
	})

	// Moat: `moat serve` with the bench's mutual-TLS listener, and the
	// durable store on (its ticket keys survive a restart; the bench's
	// clients have clean sessions, so nothing else is written).
	moat := &moatServe{b: b, dir: dir, port: testutil.FreePort(b), pki: p}
	moat.start(true)
	b.Cleanup(moat.stop)
	moatAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(moat.port))

	type phase struct {
		name string
		addr string
		// resume: a first connection of every client, not measured;
		// restart, when set, runs between the two (Moat restarts).
		resume  bool
		restart func()
		results []*bench.Result
	}
	restartWith := func(persist bool) func() {
		return func() {
			moat.stop()
			moat.start(persist)
		}
	}
	phases := []*phase{
		{name: "floor", addr: floorAddr},
		{name: "moat", addr: moatAddr},
		{name: "floor-resumed", addr: floorAddr, resume: true},
		{name: "moat-resumed", addr: moatAddr, resume: true},
		{name: "moat-restart-resumed", addr: moatAddr, resume: true, restart: restartWith(true)},
		// Moat comes back without its store, then goes back to it.
		{name: "moat-restart-full", addr: moatAddr, resume: true, restart: restartWith(false)},
	}
	for b.Loop() {
		for round := range rounds {
			for _, ph := range phases {
				stopProfile := func() {}
				if ph.name == cmp.Or(os.Getenv("BENCH_HS_PROFILE_PHASE"), "moat") && round == 0 {
					stopProfile = startCPUProfile(b, os.Getenv("BENCH_HS_CPUPROFILE"))
				}
				res := handshakeChild(b, ph.addr, pki, n, ph.resume, ph.restart)
				stopProfile()
				ph.results = append(ph.results, res)
				if ph.name == "moat-restart-full" {
					moat.stop()
					moat.start(true)
				}
			}
		}
		cpu := func(r *bench.Result) float64 { return 1e3 * r.Broker.CPUPerConnectMs }
		median := func(ph *phase, f func(*bench.Result) float64) float64 {
			v := make([]float64, len(ph.results))
			for i, r := range ph.results {
				v[i] = f(r)
			}
			slices.Sort(v)
			return v[len(v)/2]
		}
		ratios := make([]float64, rounds)
		for i := range ratios {
			ratios[i] = cpu(phases[1].results[i]) / cpu(phases[0].results[i])
		}
		slices.Sort(ratios)
		perSec := func(r *bench.Result) float64 { return r.Connect.PerSecond }
		resumedShare := func(r *bench.Result) float64 { return float64(r.Connect.Resumed) / float64(r.Connect.Succeeded) }
		for _, ph := range phases {
			b.ReportMetric(median(ph, cpu), ph.name+"-µs/hs")
			if strings.HasPrefix(ph.name, "moat") {
				b.ReportMetric(median(ph, perSec), ph.name+"-conn/s")
			}
		}
		b.ReportMetric(ratios[len(ratios)/2], "moat/floor")
		b.ReportMetric(0, "ns/op")
		for _, ph := range phases {
			var line strings.Builder
			for i, r := range ph.results {
				fmt.Fprintf(&line, " [%d] %.0f µs %.0f conn/s resumed %.0f%%", i, cpu(r), perSec(r), 100*resumedShare(r))
			}
			b.Logf("%-21s%s", ph.name, line.String())
		}
		b.Logf("moat/floor per round: %.2f (median %.2f)", ratios, ratios[len(ratios)/2])
		if share := median(phases[4], resumedShare); share < 0.99 {
			b.Errorf("after a restart with the store only %.0f%% of the sessions resumed", 100*share)
		}
		if share := median(phases[5], resumedShare); share != 0 {
			b.Errorf("after a restart without the store %.0f%% of the sessions resumed", 100*share)
		}
	}
}

// envInt reads a positive number from the environment, or def.
func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// moatServe runs `moat serve` in this process for BenchmarkHandshakeCPU,
// with the bench's mutual-TLS listener on a fixed port and data directory,
// so that it can be stopped and started again (a restart).
type moatServe struct {
	b      *testing.B
	dir    string
	port   int
	pki    func(string) string
	cancel context.CancelFunc
	exited chan struct{}
}

// start starts moat serve, with the durable store when persist is set,
// and waits until it listens.
func (m *moatServe) start(persist bool) {
	// The connection-rate defense is raised out of the way: every
	// handshake comes from 127.0.0.1, far faster than one device connects.
	conf := filepath.Join(m.dir, "moat.yaml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `listeners:
  - name: mqtts
    address: 127.0.0.1:%d
    transport: tls
    tls:
      client_ca: %s
      cert: %s
      key: %s
      client_auth: required
      identity: {username_from: cn}
log: {level: error, connection_messages: false}
persistence: {enabled: %t, sync: batch}
audit: {disabled: true}
defense:
  conn_rate: 1000000
  conn_burst: 1000000
  listener_conn_rate: 1000000
  listener_conn_burst: 1000000
  max_conns_per_addr: 1000000
`, m.port, m.pki(bench.PKIFiles.CA), m.pki(bench.PKIFiles.Server), m.pki(bench.PKIFiles.ServerKey), persist), 0o600); err != nil {
		m.b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel, m.exited = cancel, make(chan struct{})
	logs := &testutil.Buffer{}
	go func(exited chan struct{}) {
		defer close(exited)
		cli.Main(ctx, []string{"serve", "-c", conf, "--data", filepath.Join(m.dir, "data")},
			cli.Stdio{In: strings.NewReader(""), Out: io.Discard, Err: logs})
	}(m.exited)
	if err := waitListening(net.JoinHostPort("127.0.0.1", strconv.Itoa(m.port)), m.exited); err != nil {
		m.b.Fatalf("moat serve: %v\n%s", err, logs.String())
	}
}

// stop ends moat serve and waits for it; it does nothing when stopped.
func (m *moatServe) stop() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	<-m.exited
	m.cancel = nil
}

// startCPUProfile writes a CPU profile of this process to file until the
// returned function is called; it does nothing when file is empty.
func startCPUProfile(b *testing.B, file string) func() {
	if file == "" {
		return func() {}
	}
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// handshakeChild runs n connections to addr in a child process (resumed
// ones when resume is set) and returns its result, whose broker figures
// are this process's. restart, when set, runs between the child's first
// and measured rounds.
func handshakeChild(b *testing.B, addr, pki string, n int, resume bool, restart func()) *bench.Result {
	b.Helper()
	child := exec.Command(os.Args[0], "-test.run=^TestHandshakeClientsChild$", "-test.v=false")
	child.Env = append(os.Environ(), fmt.Sprintf("BENCH_HS_CHILD=%s,%s,%d,%t,%t", addr, pki, n, resume, restart != nil))
	child.Stderr = os.Stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	out := bufio.NewReader(stdout)
	if restart != nil {
		line, err := out.ReadString('\n')
		if err != nil || line != "warm\n" {
			child.Process.Kill()
			child.Wait()
			b.Fatalf("client process: %q, %v (want warm)", line, err)
		}
		restart()
		stdin.Write([]byte("go\n"))
	}
	rest, err := io.ReadAll(out)
	if werr := child.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		b.Fatalf("client process: %v", err)
	}
	// The test binary may print PASS after the result.
	js, _, _ := strings.Cut(string(rest), "\nPASS")
	res, err := bench.ReadResult(strings.NewReader(js))
	if err != nil {
		b.Fatal(err)
	}
	if res.Broker == nil || res.Connect.Succeeded != int64(n) || resume && restart == nil && res.Connect.Resumed == 0 {
		b.Fatalf("client process to %s: %d of %d connected, %d resumed, broker stats %v, errors %v",
			addr, res.Connect.Succeeded, n, res.Connect.Resumed, res.Broker, res.Errors)
	}
	return res
}

// TestHandshakeClientsChild is the client process of BenchmarkHandshakeCPU:
// it connects the clients, one certificate each, with the parent process
// as the broker whose CPU is read, and prints the result as JSON. It does
// nothing in a normal test run.
func TestHandshakeClientsChild(t *testing.T) {
	spec := os.Getenv("BENCH_HS_CHILD")
	if spec == "" {
		t.Skip("client process of BenchmarkHandshakeCPU")
	}
	parts := strings.Split(spec, ",")
	addr, pki := parts[0], parts[1]
	n, _ := strconv.Atoi(parts[2])
	p := func(f string) string { return filepath.Join(pki, f) }
	iss, err := bench.LoadIssuer(p(bench.PKIFiles.CA), p(bench.PKIFiles.CAKey))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := iss.IssueClients("hs-", n)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(p(bench.PKIFiles.CA))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := bench.Config{
		Scenario: bench.Conn, Addr: addr, Clients: n, Duration: 100 * time.Millisecond,
		TLS:         &tls.Config{RootCAs: pool, ServerName: "localhost"},
		ClientCerts: certs, Resume: parts[3] == "true",
		ConnConcurrency: 16, BrokerPID: os.Getppid(), SampleInterval: time.Second,
	}
	if parts[4] == "true" {
		// The parent restarts the server between the two rounds.
		cfg.AfterWarmUp = func(context.Context) error {
			fmt.Println("warm")
			_, err := bufio.NewReader(os.Stdin).ReadString('\n')
			return err
		}
	}
	res, err := bench.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	res.Series, res.LatencyHist, res.HandshakeHist, res.ConnackHist = nil, nil, nil, nil
	res.LatencyBuckets, res.HandshakeBuckets = nil, nil
	if err := res.WriteJSON(os.Stdout); err != nil {
		t.Fatal(err)
	}
}
