package bench_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/bench"
	"github.com/moatmq/moat/internal/cli"
)

// BenchmarkServeIdleMTLS measures what one idle mutual-TLS connection
// costs the broker, as scenario f of `make bench` does, but with the
// broker's own counters: `moat serve` runs in this process with the
// bench's settings (one mutual-TLS listener, identity as username, the
// per-address connection limits raised out of the way as scripts/bench.sh
// does: every client comes from 127.0.0.1), and the clients, one
// certificate each, run in a child process (this test binary again), so
// that only the broker's memory is counted.
//
//	go test -run '^$' -bench ServeIdleMTLS -benchtime 1x ./internal/bench
//
// BENCH_IDLE_N sets the number of connections (default 2000). Reported
// per connection: live heap after a GC (heap-B/conn), goroutine stacks
// (stack-B/conn), the two together (heap+stack-B/conn), heap spans in use
// (inuse-B/conn, live heap plus the free slots between live objects),
// goroutines, and the growth of the process's RSS measured before that GC
// (rss-KiB/conn, what `make bench` reports; it includes the garbage the
// handshakes left that the collector has not yet returned to the system).
// BENCH_IDLE_HEAPPROFILE=FILE writes a heap profile of the idle broker,
// every allocation sampled, for `go tool pprof -sample_index=inuse_space`.
func BenchmarkServeIdleMTLS(b *testing.B) {
	n := 2000
	if v := os.Getenv("BENCH_IDLE_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			b.Fatalf("BENCH_IDLE_N=%q: want a positive number", v)
		}
	}
	if os.Getenv("BENCH_IDLE_HEAPPROFILE") != "" {
		// Every allocation, so that the profile accounts for each byte.
		defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1
	}
	dir := b.TempDir()
	pki := filepath.Join(dir, "pki")
	if err := bench.WritePKI(pki, bench.ECDSAP256); err != nil {
		b.Fatal(err)
	}
	p := func(f string) string { return filepath.Join(pki, f) }
	conf := filepath.Join(dir, "moat.yaml")
	// moat serve runs in-process (its memory is what is measured) on a
	// configured port; a port taken before it binds is retried.
	ports := testutil.RetryPorts(b, 1, func(ports []int) error {
		if err := os.WriteFile(conf, fmt.Appendf(nil, `listeners:
  - address: 127.0.0.1:%d
    transport: tls
    allow_anonymous: true
    tls:
      cert: %s
      key: %s
      client_ca: %s
      client_auth: required
      identity: {username_from: cn}
limits: {max_packet_size: 1048576, max_inflight: 20, max_queued_messages: 1000}
log: {level: warn, connection_messages: false}
persistence: {enabled: false}
audit: {disabled: true}
defense:
  conn_rate: 1000000
  conn_burst: 1000000
  listener_conn_rate: 1000000
  listener_conn_burst: 1000000
  max_conns_per_addr: 1000000
`, ports[0], p(bench.PKIFiles.Server), p(bench.PKIFiles.ServerKey), p(bench.PKIFiles.CA)), 0o600); err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan struct{}) // closed when moat serve has returned
		logs := &testutil.Buffer{}
		go func() {
			defer close(served)
			cli.Main(ctx, []string{"serve", "-c", conf, "--data", filepath.Join(dir, "data")},
				cli.Stdio{In: strings.NewReader(""), Out: io.Discard, Err: logs})
		}()
		if err := waitListening(net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), served); err != nil {
			cancel()
			<-served
			if testutil.IsPortTaken(logs.String()) {
				err = testutil.ErrPortTaken
			}
			return fmt.Errorf("moat serve: %w\n%s", err, logs.String())
		}
		b.Cleanup(func() {
			cancel()
			<-served
		})
		return nil
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))

	for b.Loop() {
		time.Sleep(500 * time.Millisecond)
		rss0 := vmRSS(b)
		ms0 := memStats()
		g0 := runtime.NumGoroutine()

		child := exec.Command(os.Args[0], "-test.run=^TestIdleClientsChild$", "-test.v=false")
		child.Env = append(os.Environ(), "BENCH_IDLE_CHILD="+addr+","+pki+","+strconv.Itoa(n))
		child.Stderr = os.Stderr
		out, err := child.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := child.Start(); err != nil {
			b.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "connected ") {
			child.Process.Kill()
			child.Wait()
			b.Fatalf("client process: %q, %v", line, err)
		}
		ok, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "connected ")))
		if ok != n {
			b.Logf("only %d of %d clients connected", ok, n)
		}
		// Let the last handshakes' goroutines end, as make bench holds
		// the connections for a few seconds before it reads the RSS.
		time.Sleep(3 * time.Second)
		rss1 := vmRSS(b)
		ms1 := memStats()
		g1 := runtime.NumGoroutine()
		if f := os.Getenv("BENCH_IDLE_HEAPPROFILE"); f != "" {
			writeHeapProfile(b, f)
		}
		child.Process.Kill()
		child.Wait()

		per := func(a, b uint64) float64 { return (float64(b) - float64(a)) / float64(ok) }
		b.ReportMetric(per(ms0.HeapAlloc, ms1.HeapAlloc), "heap-B/conn")
		b.ReportMetric(per(ms0.HeapInuse, ms1.HeapInuse), "inuse-B/conn")
		b.ReportMetric(per(ms0.StackInuse, ms1.StackInuse), "stack-B/conn")
		b.ReportMetric(per(ms0.HeapAlloc+ms0.StackInuse, ms1.HeapAlloc+ms1.StackInuse), "heap+stack-B/conn")
		b.ReportMetric(float64(g1-g0)/float64(ok), "goroutines/conn")
		b.ReportMetric(per(rss0, rss1)/1024, "rss-KiB/conn")
		b.ReportMetric(0, "ns/op")

		// Wait for the broker to drop the connections before the next round.
		deadline := time.Now().Add(30 * time.Second)
		for runtime.NumGoroutine() > g0+10 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// TestIdleClientsChild is the client process of BenchmarkServeIdleMTLS:
// it connects the clients, prints "connected N" and holds them until it is
// killed. It does nothing in a normal test run.
func TestIdleClientsChild(t *testing.T) {
	spec := os.Getenv("BENCH_IDLE_CHILD")
	if spec == "" {
		t.Skip("client process of BenchmarkServeIdleMTLS")
	}
	parts := strings.Split(spec, ",")
	addr, pki := parts[0], parts[1]
	n, _ := strconv.Atoi(parts[2])
	p := func(f string) string { return filepath.Join(pki, f) }
	iss, err := bench.LoadIssuer(p(bench.PKIFiles.CA), p(bench.PKIFiles.CAKey))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := iss.IssueClients("idle-", n)
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
		Scenario: bench.Conn, Addr: addr, Clients: n, Duration: time.Hour,
		TLS:             &tls.Config{RootCAs: pool, ServerName: "localhost", CurvePreferences: []tls.CurveID{tls.X25519}},
		ClientCerts:     certs,
		ConnConcurrency: 128,
		ConnectTimeout:  60 * time.Second,
	}
	var res *bench.Result
	cfg.OnConnected = func() {
		fmt.Printf("connected %d\n", n)
		os.Stdout.Sync()
	}
	res, err = bench.Run(context.Background(), cfg)
	_ = res
	if err != nil {
		t.Fatal(err)
	}
}

// waitListening waits until addr accepts connections; it fails when
// moat serve has exited (exited is closed) or after 20 seconds.
func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writeHeapProfile writes the heap profile (live objects as of the last
// GC) to file.
func writeHeapProfile(b *testing.B, file string) {
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

func memStats() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms
}

// vmRSS returns the process's resident set size in bytes.
func vmRSS(t testing.TB) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status: ", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	t.Skip("no VmRSS in /proc/self/status")
	return 0
}
