package bench_test

import (
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
// outage.
//
//	go test -run '^$' -bench HandshakeCPU -benchtime 1x ./internal/bench
//
// BENCH_HS_N sets the handshakes per measurement (default 1000). Reported:
// server CPU per handshake (floor-µs/hs, moat-µs/hs and their ratio
// moat/floor), per resumed handshake (…-resumed-µs/hs), and connections
// per second, full and resumed, on Moat.
func BenchmarkHandshakeCPU(b *testing.B) {
	n := 1000
	if v := os.Getenv("BENCH_HS_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			b.Fatalf("BENCH_HS_N=%q: want a positive number", v)
		}
	}
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

	// Moat: `moat serve` with the bench's mutual-TLS listener.
	// The connection-rate defense is raised out of the way: every
	// handshake comes from 127.0.0.1, far faster than one device connects.
	port := testutil.FreePort(b)
	conf := filepath.Join(dir, "moat.yaml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `listeners:
  - address: 127.0.0.1:%d
    transport: tls
    tls:
      client_ca: %s
      cert: %s
      key: %s
      client_auth: required
      identity: {username_from: cn}
log: {level: error, connection_messages: false}
persistence: {enabled: false}
audit: {disabled: true}
defense:
  conn_rate: 1000000
  conn_burst: 1000000
  listener_conn_rate: 1000000
  listener_conn_burst: 1000000
  max_conns_per_addr: 1000000
`, port, p(bench.PKIFiles.CA), p(bench.PKIFiles.Server), p(bench.PKIFiles.ServerKey)), 0o600); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		cli.Main(ctx, []string{"serve", "-c", conf, "--data", filepath.Join(dir, "data")},
			cli.Stdio{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard})
	}()
	b.Cleanup(func() {
		cancel()
		<-exited
		<-floorDone
	})
	moatAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitListening(moatAddr, exited); err != nil {
		b.Fatalf("moat serve: %v", err)
	}

	for b.Loop() {
		floor := handshakeChild(b, floorAddr, pki, n, false)
		stopProfile := startCPUProfile(b, os.Getenv("BENCH_HS_CPUPROFILE"))
		moat := handshakeChild(b, moatAddr, pki, n, false)
		stopProfile()
		floorR := handshakeChild(b, floorAddr, pki, n, true)
		moatR := handshakeChild(b, moatAddr, pki, n, true)
		cpu := func(r *bench.Result) float64 { return 1e3 * r.Broker.CPUPerConnectMs }
		b.ReportMetric(cpu(floor), "floor-µs/hs")
		b.ReportMetric(cpu(moat), "moat-µs/hs")
		b.ReportMetric(cpu(moat)/cpu(floor), "moat/floor")
		b.ReportMetric(cpu(floorR), "floor-resumed-µs/hs")
		b.ReportMetric(cpu(moatR), "moat-resumed-µs/hs")
		b.ReportMetric(moat.Connect.PerSecond, "moat-full-conn/s")
		b.ReportMetric(moatR.Connect.PerSecond, "moat-resumed-conn/s")
		b.ReportMetric(0, "ns/op")
		b.Logf("server CPU per full handshake: Moat %.0f µs, floor %.0f µs, ratio %.2f; resumed: Moat %.0f µs (%d of %d resumed), floor %.0f µs (%d of %d); Moat %.0f conn/s full, %.0f resumed",
			cpu(moat), cpu(floor), cpu(moat)/cpu(floor), cpu(moatR), moatR.Connect.Resumed, moatR.Connect.Succeeded,
			cpu(floorR), floorR.Connect.Resumed, floorR.Connect.Succeeded, moat.Connect.PerSecond, moatR.Connect.PerSecond)
	}
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
// are this process's.
func handshakeChild(b *testing.B, addr, pki string, n int, resume bool) *bench.Result {
	b.Helper()
	child := exec.Command(os.Args[0], "-test.run=^TestHandshakeClientsChild$", "-test.v=false")
	child.Env = append(os.Environ(), fmt.Sprintf("BENCH_HS_CHILD=%s,%s,%d,%t", addr, pki, n, resume))
	child.Stderr = os.Stderr
	out, err := child.Output()
	if err != nil {
		b.Fatalf("client process: %v", err)
	}
	// The test binary may print PASS after the result.
	js, _, _ := strings.Cut(string(out), "\nPASS")
	res, err := bench.ReadResult(strings.NewReader(js))
	if err != nil {
		b.Fatal(err)
	}
	if res.Broker == nil || res.Connect.Succeeded != int64(n) || resume && res.Connect.Resumed == 0 {
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
	res, err := bench.Run(context.Background(), bench.Config{
		Scenario: bench.Conn, Addr: addr, Clients: n, Duration: 100 * time.Millisecond,
		TLS:         &tls.Config{RootCAs: pool, ServerName: "localhost"},
		ClientCerts: certs, Resume: parts[3] == "true",
		ConnConcurrency: 16, BrokerPID: os.Getppid(), SampleInterval: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	res.Series, res.LatencyHist, res.HandshakeHist, res.ConnackHist = nil, nil, nil, nil
	res.LatencyBuckets, res.HandshakeBuckets = nil, nil
	if err := res.WriteJSON(os.Stdout); err != nil {
		t.Fatal(err)
	}
}
