package cli

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/admin"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/testutil"
)

// The cost of the admin listener to the publish path (issue: "p2p QoS 1
// and fan-out throughput within 2 % with the admin listener on and
// scraped every second"). Recorded in docs/performance.md, "Admin
// listener and metrics".
//
// BenchmarkAdminOverhead runs moat serve's own start-up plan in this
// process, with the admin listener, under a steady load from `moat
// bench` in another process, and measures pairs of short slots: in one
// slot of each pair a scraper (a third process) GETs /metrics and the
// two endpoints an open dashboard polls, /api/v1/overview and
// /api/v1/posture, every second with a viewer token over a kept-alive
// connection, as Prometheus and a dashboard do; in the other it is
// idle. Which slot comes first alternates from pair to pair. An admin
// listener nobody calls runs nothing (one goroutine blocked in accept),
// so the unscraped slot is the broker without it; measuring both halves
// on the same broker, connections and load removes the differences
// between broker starts, which on a shared machine are larger than the
// effect sought. getrusage(RUSAGE_SELF) of this process is the broker's
// CPU alone (with the admin server's and the garbage collector's): the
// load generator and the scraper run elsewhere. Each slot yields the
// broker's CPU time per message delivered to subscribers (its own
// Stats), each pair the ratio scraped/unscraped, and the benchmark the
// median ratio with a distribution-free confidence interval. Wall
// throughput is reported as well but is not the criterion: at a fixed
// offered rate it only shows that the broker kept up.

// testHelperEnv, when set in the environment of this test binary, makes
// TestMain run a helper (runTestHelper) instead of the tests: the
// benchmark's scraper runs in its own process that way.
const testHelperEnv = "MOAT_TEST_HELPER"

// runTestHelper runs the helper named by testHelperEnv and returns the
// process's exit code.
func runTestHelper(name string) int {
	switch name {
	case "scrape":
		return scrapeHelper(os.Getenv("MOAT_SCRAPE_BASE"), os.Getenv("MOAT_SCRAPE_TOKEN"), os.Stdin, os.Stdout)
	case "scrape-n":
		n, _ := strconv.Atoi(os.Getenv("MOAT_SCRAPE_N"))
		return scrapeTimes(os.Getenv("MOAT_SCRAPE_BASE"), os.Getenv("MOAT_SCRAPE_TOKEN"), n)
	}
	fmt.Fprintf(os.Stderr, "unknown test helper %q\n", name)
	return 2
}

// scrapePaths are what one scrape fetches: Prometheus's /metrics and the
// endpoints an open dashboard polls (overview page: overview; posture
// page: posture and overview).
var scrapePaths = []string{"/metrics", "/api/v1/overview", "/api/v1/posture"}

// scrapeHelper scrapes base while it is switched on: it reads "on" and
// "off" lines from stdin; on, it GETs scrapePaths at once and then every
// second, off it stops. When stdin closes it prints "scrapes=N
// failures=M" and exits non-zero when any request failed.
func scrapeHelper(base, token string, stdin io.Reader, stdout io.Writer) int {
	cmds := make(chan bool)
	go func() {
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			cmds <- sc.Text() == "on"
		}
		close(cmds)
	}()
	hc := &http.Client{Timeout: 10 * time.Second}
	var scrapes, failures int
	get := func(path string) error {
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: HTTP %d", path, resp.StatusCode)
		}
		return nil
	}
	scrape := func() {
		for _, p := range scrapePaths {
			if err := get(p); err != nil {
				failures++
				fmt.Fprintln(os.Stderr, "scrape:", err)
			}
		}
		scrapes++
	}
	t := time.NewTicker(time.Hour)
	t.Stop()
	for {
		select {
		case on, ok := <-cmds:
			if !ok {
				fmt.Fprintf(stdout, "scrapes=%d failures=%d\n", scrapes, failures)
				if failures > 0 {
					return 1
				}
				return 0
			}
			t.Stop()
			if on {
				scrape()
				t.Reset(time.Second)
			}
		case <-t.C:
			scrape()
		}
	}
}

// scrapeTimes scrapes base n times back to back over one kept-alive
// connection; it exits non-zero on the first failure.
func scrapeTimes(base, token string, n int) int {
	hc := &http.Client{Timeout: 10 * time.Second}
	for range n {
		for _, p := range scrapePaths {
			req, _ := http.NewRequest(http.MethodGet, base+p, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := hc.Do(req)
			if err != nil {
				fmt.Fprintln(os.Stderr, "scrape:", err)
				return 1
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				fmt.Fprintf(os.Stderr, "scrape %s: HTTP %d\n", p, resp.StatusCode)
				return 1
			}
		}
	}
	return 0
}

// BenchmarkAdminScrapeCPU measures what one scrape (/metrics,
// /api/v1/overview and /api/v1/posture, as the slots of
// BenchmarkAdminOverhead make every second) costs the broker's process
// in CPU time: moat serve's plan in this process with the admin
// listener and MOAT_ADMIN_SCRAPE_CLIENTS idle subscribed clients
// (default 200: the connections, sessions and subscriptions the metrics
// and the posture walk), scraped b.N times back to back by another
// process. Divided by the broker's CPU per second under load
// (BenchmarkAdminOverhead's broker-cores), it is the share of the
// broker's CPU a scrape every second takes: the effect the interleaved
// slots look for, measured without the load's noise.
func BenchmarkAdminScrapeCPU(b *testing.B) {
	clients := envInt("MOAT_ADMIN_SCRAPE_CLIENTS", 200)
	br := startInProcess(b, b.TempDir(), overheadYAML, true)
	defer br.stop()
	var conns []net.Conn
	var readers sync.WaitGroup
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
		readers.Wait()
	}()
	for i := range clients {
		nc, r := benchConn(b, br.addr, fmt.Sprintf("idle-%d", i), fmt.Sprintf("idle/%d/#", i), nil)
		conns = append(conns, nc)
		readers.Go(func() {
			for {
				if _, err := r.ReadPacket(); err != nil {
					return
				}
			}
		})
	}
	run := func(n int) time.Duration {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), testHelperEnv+"=scrape-n", "MOAT_SCRAPE_N="+strconv.Itoa(n),
			"MOAT_SCRAPE_BASE="+br.adminBase, "MOAT_SCRAPE_TOKEN="+br.token)
		cpu0 := testutil.ProcessCPU()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("scraper: %v\n%s", err, out)
		}
		return testutil.ProcessCPU() - cpu0
	}
	run(5) // warm-up: the connection, the first walk of the clients
	// The broker's own CPU while idle over the same time is left in: it
	// is the keep-alive work of idle clients, a few microseconds.
	b.ResetTimer()
	cpu := run(b.N)
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/scrape")
}

// overheadScenario is one load of BenchmarkAdminOverhead: `moat bench`
// arguments, without the address and the duration.
type overheadScenario struct {
	name string
	args []string
}

// envInt reads a positive integer knob of the benchmark.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// envDuration reads a duration knob of the benchmark.
func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// overheadScenarios are the two shapes of the target. The knobs
// (MOAT_ADMIN_BENCH_*) set the load; the defaults keep the broker busy on
// a 2-core machine without saturating it, so that the CPU per message
// is steady from round to round.
func overheadScenarios() []overheadScenario {
	pairs := strconv.Itoa(envInt("MOAT_ADMIN_BENCH_PAIRS_P2P", 50))
	p2pRate := strconv.Itoa(envInt("MOAT_ADMIN_BENCH_P2P_RATE", 300))
	fan := strconv.Itoa(envInt("MOAT_ADMIN_BENCH_FAN", 200))
	fanRate := strconv.Itoa(envInt("MOAT_ADMIN_BENCH_FAN_RATE", 300))
	return []overheadScenario{
		{"p2p-qos1", []string{"p2p", "--qos", "1", "--pubs", pairs, "--subs", pairs, "--rate", p2pRate}},
		{"fanout-qos0", []string{"fanout", "--qos", "0", "--pubs", "1", "--subs", fan, "--rate", fanRate}},
	}
}

// overheadYAML is the broker of the benchmark: one plain TCP listener,
// anonymous clients under an access policy that lets them do everything,
// defense on with a connection rate that lets the load generator connect
// all its clients at once, the audit log on, no store (the scenarios use
// clean sessions: nothing would be stored), connection messages off.
const overheadYAML = `log:
  level: info
  connection_messages: false
listeners:
  - address: 127.0.0.1:0
    transport: tcp
    allow_anonymous: true
acl:
  rules:
    - {name: bench, effect: allow, subjects: {all: true}, actions: [publish, subscribe, receive], topics: ["#"]}
persistence:
  enabled: false
defense:
  conn_rate: 100000
  conn_burst: 100000
`

// benchMoat builds moat without the race detector once: the load
// generator must not be slowed down by it.
var benchMoat = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "moat-bench-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "moat")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/moat").CombinedOutput(); err != nil {
		return "", fmt.Errorf("building moat: %v\n%s", err, out)
	}
	return bin, nil
})

// inProcessBroker is moat serve's plan served in this process.
type inProcessBroker struct {
	plan      *servePlan
	addr      string // the MQTT listener
	adminBase string // http://ADDR of the admin listener; "" without one
	token     string // a viewer token for it
	logs      *testutil.Buffer
	stop      func()
}

// startInProcess builds and serves yaml's plan in dir, with the admin
// listener on loopback when withAdmin is set, as runServe does (the
// garbage collector's tuning and the memory trimmer included).
func startInProcess(tb testing.TB, dir, yaml string, withAdmin bool) *inProcessBroker {
	tb.Helper()
	file := filepath.Join(dir, "moat.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.DataDir = filepath.Join(dir, "data")
	b := &inProcessBroker{logs: &testutil.Buffer{}}
	if withAdmin {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			tb.Fatal(err)
		}
		b.token, err = admin.CreateToken(filepath.Join(cfg.DataDir, admin.TokensFileName), "bench-scraper", admin.RoleViewer, time.Now(), rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(b.logs, nil))
	p, err := buildPlan(cfg, log, false)
	if err != nil {
		tb.Fatal(err)
	}
	if withAdmin {
		if p.admin, err = planAdmin(p, "127.0.0.1:0"); err != nil {
			p.close()
			tb.Fatal(err)
		}
	}
	b.plan = p
	ctx, cancel := context.WithCancel(context.Background())
	tuneGC(ctx, gcHeadroom)
	trim := startTrimmer(trimInterval)
	done := make(chan error, 1)
	go func() { done <- p.serve(ctx, Stdio{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard}) }()
	b.stop = func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("serve: %v", err)
		}
		trim.close()
	}
	testutil.CheckFor(tb, 20*time.Second, func() error {
		logs := b.logs.String()
		if a := logAddrs(logs, "serve: listener ready", "address"); len(a) > 0 {
			b.addr = a[0]
		}
		if a := logAddrs(logs, "admin: serving the API", "address"); len(a) > 0 {
			b.adminBase = "http://" + a[0]
		}
		if b.addr == "" || withAdmin && b.adminBase == "" {
			return errors.New("the broker is not serving yet")
		}
		return nil
	})
	return b
}

// overheadSlot is what one slot measured.
type overheadSlot struct {
	cpuPerMsg float64 // broker CPU nanoseconds per delivered message
	msgsPerS  float64 // delivered messages per second
	cores     float64 // broker CPU seconds per second
	gcPerMsg  float64 // of cpuPerMsg, the garbage collector's (runtime/metrics' estimate)
	bytesPerS float64 // heap bytes allocated per second
}

// gcSample reads the garbage collector's CPU time so far (the runtime's
// estimate) and the heap bytes allocated so far.
func gcSample() (gcCPU float64, allocated uint64) {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}, {Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Float64(), s[1].Value.Uint64()
}

// runOverheadScenario serves one broker with the admin listener, drives
// it with moat bench for the whole run, and measures pairs of slots: in
// one slot of each pair the scraper is on, in the other off, the order
// alternating from pair to pair.
func runOverheadScenario(b *testing.B, bin string, sc overheadScenario, pairs int, warm, slot time.Duration) (on, off []overheadSlot, scrapes int) {
	b.Helper()
	runtime.GC()
	br := startInProcess(b, b.TempDir(), overheadYAML, true)
	defer br.stop()
	scraper := exec.Command(os.Args[0], "-test.run=^$")
	scraper.Env = append(os.Environ(), testHelperEnv+"=scrape", "MOAT_SCRAPE_BASE="+br.adminBase, "MOAT_SCRAPE_TOKEN="+br.token)
	var scrapeOut strings.Builder
	scraper.Stdout, scraper.Stderr = &scrapeOut, &scrapeOut
	ctl, err := scraper.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := scraper.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		ctl.Close()
		if err := scraper.Wait(); err != nil {
			b.Errorf("scraper: %v\n%s", err, scrapeOut.String())
		}
		if _, err := fmt.Sscanf(scrapeOut.String(), "scrapes=%d", &scrapes); err != nil {
			b.Errorf("scraper output %q", scrapeOut.String())
		}
	}()
	// moat bench connects its clients, then publishes for the duration:
	// long enough to cover the warm-up and every slot wherever the
	// connecting ends.
	dur := warm + time.Duration(2*pairs)*slot + 10*time.Second
	load := exec.Command(bin, append([]string{"bench"}, append(sc.args, "--addr", br.addr, "--duration", dur.String(), "--quiet")...)...)
	var loadOut strings.Builder
	load.Stdout, load.Stderr = &loadOut, &loadOut
	if err := load.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		load.Process.Kill()
		load.Wait()
	}()
	srv := br.plan.srv
	// Publishing has started once messages are delivered.
	start := srv.Stats().MessagesSent
	testutil.CheckFor(b, 60*time.Second, func() error {
		if srv.Stats().MessagesSent-start < 1000 {
			return errors.New("no deliveries yet")
		}
		return nil
	})
	time.Sleep(warm)
	measure := func(scraped bool) overheadSlot {
		cmd := "off\n"
		if scraped {
			cmd = "on\n"
		}
		if _, err := io.WriteString(ctl, cmd); err != nil {
			b.Fatal(err)
		}
		gc0, heap0 := gcSample()
		cpu0, msgs0, t0 := testutil.ProcessCPU(), srv.Stats().MessagesSent, time.Now()
		time.Sleep(slot)
		cpu1, msgs1, t1 := testutil.ProcessCPU(), srv.Stats().MessagesSent, time.Now()
		gc1, heap1 := gcSample()
		n := msgs1 - msgs0
		if n <= 0 {
			b.Fatalf("no message delivered in a slot; moat bench:\n%s", loadOut.String())
		}
		return overheadSlot{
			cpuPerMsg: float64(cpu1-cpu0) / float64(n),
			msgsPerS:  float64(n) / t1.Sub(t0).Seconds(),
			cores:     (cpu1 - cpu0).Seconds() / t1.Sub(t0).Seconds(),
			gcPerMsg:  (gc1 - gc0) * 1e9 / float64(n),
			bytesPerS: float64(heap1-heap0) / t1.Sub(t0).Seconds(),
		}
	}
	for i := range pairs {
		if i%2 == 0 {
			off = append(off, measure(false))
			on = append(on, measure(true))
		} else {
			on = append(on, measure(true))
			off = append(off, measure(false))
		}
		b.Logf("pair %2d: scraped %7.0f cpu-ns/msg (gc %5.0f) %8.0f msg/s %.2f cores %5.1f MB/s | not scraped %7.0f cpu-ns/msg (gc %5.0f) %8.0f msg/s %.2f cores %5.1f MB/s | ratio %.4f",
			i+1, on[i].cpuPerMsg, on[i].gcPerMsg, on[i].msgsPerS, on[i].cores, on[i].bytesPerS/1e6,
			off[i].cpuPerMsg, off[i].gcPerMsg, off[i].msgsPerS, off[i].cores, off[i].bytesPerS/1e6, on[i].cpuPerMsg/off[i].cpuPerMsg)
	}
	if _, err := io.WriteString(ctl, "off\n"); err != nil {
		b.Fatal(err)
	}
	return on, off, scrapes
}

// BenchmarkAdminOverhead: see the comment at the top of the file. Run it
// once (-benchtime 1x); MOAT_ADMIN_BENCH_PAIRS pairs of slots per
// scenario (default 30), each slot MOAT_ADMIN_BENCH_SLOT long (default
// 2s), after a warm-up of MOAT_ADMIN_BENCH_WARM (default 3s). It reports
// the median scraped/not-scraped ratio of CPU per message with its 95 %
// confidence interval (order statistics of the pairs' ratios, no
// assumption on their distribution), and the same for throughput.
func BenchmarkAdminOverhead(b *testing.B) {
	bin, err := benchMoat()
	if err != nil {
		b.Fatal(err)
	}
	pairs := envInt("MOAT_ADMIN_BENCH_PAIRS", 30)
	warm := envDuration("MOAT_ADMIN_BENCH_WARM", 3*time.Second)
	slot := envDuration("MOAT_ADMIN_BENCH_SLOT", 2*time.Second)
	for _, sc := range overheadScenarios() {
		b.Run(sc.name, func(b *testing.B) {
			on, off, scrapes := runOverheadScenario(b, bin, sc, pairs, warm, slot)
			var cpuRatio, rateRatio, cpuOn, cpuOff, cores, gcOn, gcOff []float64
			for i := range on {
				gcOn, gcOff = append(gcOn, on[i].gcPerMsg), append(gcOff, off[i].gcPerMsg)
				cpuRatio = append(cpuRatio, on[i].cpuPerMsg/off[i].cpuPerMsg)
				rateRatio = append(rateRatio, on[i].msgsPerS/off[i].msgsPerS)
				cpuOn, cpuOff = append(cpuOn, on[i].cpuPerMsg), append(cpuOff, off[i].cpuPerMsg)
				cores = append(cores, off[i].cores)
			}
			med, lo, hi := medianCI(cpuRatio)
			rmed, rlo, rhi := medianCI(rateRatio)
			b.Logf("%s: CPU per message scraped/not scraped: median %.4f, 95%% CI [%.4f, %.4f] over %d pairs of %v slots (%d scrapes); throughput: median %.4f [%.4f, %.4f]",
				sc.name, med, lo, hi, len(cpuRatio), slot, scrapes, rmed, rlo, rhi)
			b.ReportMetric(med, "cpu-ratio-median")
			b.ReportMetric(lo, "cpu-ratio-ci-low")
			b.ReportMetric(hi, "cpu-ratio-ci-high")
			b.ReportMetric(rmed, "rate-ratio-median")
			m, _, _ := medianCI(cpuOn)
			b.ReportMetric(m, "cpu-ns/msg-scraped")
			m, _, _ = medianCI(cpuOff)
			b.ReportMetric(m, "cpu-ns/msg-unscraped")
			m, _, _ = medianCI(cores)
			b.ReportMetric(m, "broker-cores")
			m, _, _ = medianCI(gcOn)
			b.ReportMetric(m, "gc-cpu-ns/msg-scraped")
			m, _, _ = medianCI(gcOff)
			b.ReportMetric(m, "gc-cpu-ns/msg-unscraped")
		})
	}
}

// medianCI returns the median of xs and a distribution-free 95 %
// confidence interval for it: the order statistics x(k) and x(n+1-k)
// with the largest k for which P(Binomial(n, 1/2) < k) <= 2.5 %. With
// fewer than 6 values no such k exists and the interval is the range.
func medianCI(xs []float64) (med, lo, hi float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	if n%2 == 1 {
		med = s[n/2]
	} else {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	k := 0 // the number of values below the interval
	cum := 0.0
	for j := 0; j < n; j++ {
		cum += binomialHalf(n, j)
		if cum > 0.025 {
			break
		}
		k = j + 1
	}
	if k == 0 {
		return med, s[0], s[n-1]
	}
	return med, s[k-1], s[n-k]
}

// binomialHalf is P(X = j) for X ~ Binomial(n, 1/2).
func binomialHalf(n, j int) float64 {
	lg := func(x int) float64 { v, _ := math.Lgamma(float64(x + 1)); return v }
	return math.Exp(lg(n) - lg(j) - lg(n-j) - float64(n)*math.Ln2)
}

// TestMedianCI checks the interval's order statistics against the
// binomial table: for 15 values the 95 % interval is x(4)..x(12), for 20
// values x(6)..x(15).
func TestMedianCI(t *testing.T) {
	for _, tc := range []struct{ n, lo, hi int }{{15, 4, 12}, {20, 6, 15}, {10, 2, 9}, {6, 1, 6}} {
		xs := make([]float64, tc.n)
		for i := range xs {
			xs[i] = float64(tc.n - i) // order statistic i+1 is i+1
		}
		_, lo, hi := medianCI(xs)
		if lo != float64(tc.lo) || hi != float64(tc.hi) {
			t.Errorf("n=%d: interval [%v, %v], want [%d, %d]", tc.n, lo, hi, tc.lo, tc.hi)
		}
	}
}

// allocYAML is overheadYAML without the $SYS publisher (its allocations
// every 10 s would fall in one phase or the other) and with client rate
// limits above what the benchmark sends.
var allocYAML = overheadYAML + `  message_rate: 10000000
  message_burst: 10000000
sys_interval: 0
`

// allocClass is what an allocation's stack says it was for.
type allocClass int

const (
	allocOther   allocClass = iota // runtime, the guard's poll, the test's bookkeeping
	allocScrape                    // the admin handler, metrics, net/http (both ends of a scrape)
	allocPublish                   // the broker: the publish path's reads, routing, deliveries, writes
	allocClient                    // the benchmark's MQTT clients
)

// classifyStack sorts an allocation by the functions on its stack: a
// stack through the HTTP server or client, the admin handler or the
// metrics is the scrape's, even when it reaches into the broker (Stats,
// Clients); one through the broker's code is the publish path's; one
// through the benchmark's clients (internal/cli test code) is theirs.
func classifyStack(stk []uintptr) allocClass {
	frames := runtime.CallersFrames(stk)
	broker, client := false, false
	for {
		f, more := frames.Next()
		fn := f.Function
		switch {
		case strings.Contains(fn, "net/http."), strings.Contains(fn, "/internal/admin."), strings.Contains(fn, "/internal/metrics."),
			strings.Contains(fn, "prometheus"), strings.Contains(fn, "metricsSnapshot"), strings.Contains(fn, "adminPosture"),
			strings.Contains(fn, "adminListeners"), strings.Contains(fn, "clientScan"):
			return allocScrape
		case strings.Contains(fn, "moat/internal/broker."):
			broker = true
		case strings.Contains(fn, "cli.publishQoS1"), strings.Contains(fn, "cli.ackAll"), strings.Contains(fn, "cli.runAllocPhase"):
			client = true
		}
		if !more {
			break
		}
	}
	switch {
	case broker:
		return allocPublish
	case client:
		return allocClient
	}
	return allocOther
}

// allocCounts are the objects allocated so far, by class, and those of
// the publish path by allocation stack.
type allocCounts struct {
	byClass [4]int64
	publish map[string]int64
}

// allocSnapshot counts the objects allocated so far, from the heap
// profile (runtime.MemProfileRate must be 1: every allocation recorded).
// Two collections first bring the profile up to date.
func allocSnapshot() allocCounts {
	runtime.GC()
	runtime.GC()
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, true)
	for {
		recs = make([]runtime.MemProfileRecord, n+100)
		var ok bool
		if n, ok = runtime.MemProfile(recs, true); ok {
			recs = recs[:n]
			break
		}
	}
	out := allocCounts{publish: map[string]int64{}}
	for i := range recs {
		c := classifyStack(recs[i].Stack())
		out.byClass[c] += recs[i].AllocObjects
		if c == allocPublish {
			out.publish[stackKey(recs[i].Stack())] += recs[i].AllocObjects
		}
	}
	return out
}

// stackKey names an allocation stack by its functions and lines.
func stackKey(stk []uintptr) string {
	frames := runtime.CallersFrames(stk)
	var b strings.Builder
	for {
		f, more := frames.Next()
		fmt.Fprintf(&b, "%s:%d ", f.Function[strings.LastIndexByte(f.Function, '/')+1:], f.Line)
		if !more {
			break
		}
	}
	return b.String()
}

// gcCount is the number of completed garbage collections.
func gcCount() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// BenchmarkAdminPublishAllocs counts the heap allocations of the publish
// path with the admin listener scraped and not scraped: a broker served
// by moat serve's plan with its admin listener, 10 publisher/subscriber
// pairs of raw MQTT 3.1.1 clients in this process sending QoS 1 messages
// (64-byte payloads, at most 10 in flight per pair: below the overload
// control's marks, whose bookkeeping allocates by timing), in four phases:
// unscraped, scraped, unscraped, scraped. While scraped, a goroutine GETs
// /metrics, /api/v1/overview and /api/v1/posture every 50 ms (twenty
// times the target's rate). Every allocation is recorded
// (runtime.MemProfileRate = 1) and attributed by its stack (classifyStack):
// the publish path's allocations per message must be the same in every
// phase. Run it once (-benchtime 1x); MOAT_ADMIN_ALLOC_MSGS sets the
// messages per pair and phase (default 2000).
func BenchmarkAdminPublishAllocs(b *testing.B) {
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = old }()
	perPair := envInt("MOAT_ADMIN_ALLOC_MSGS", 2000)
	const pairs = 10
	br := startInProcess(b, b.TempDir(), allocYAML, true)
	defer br.stop()
	var received atomic.Int64
	var readers sync.WaitGroup
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
		readers.Wait()
	}()
	type pub struct {
		nc     net.Conn
		topic  string
		tokens chan struct{}
	}
	var pubs []pub
	for i := range pairs {
		topic := fmt.Sprintf("devices/dev%d/data", i)
		tokens := make(chan struct{}, 10)
		sc, r := benchConn(b, br.addr, fmt.Sprintf("dev%d-sub", i), topic, nil)
		conns = append(conns, sc)
		readers.Go(func() { ackAll(sc, r, &received, tokens) })
		pc, _ := benchConn(b, br.addr, fmt.Sprintf("dev%d-pub", i), "", nil)
		conns = append(conns, pc)
		readers.Go(func() { io.Copy(io.Discard, pc) })
		pubs = append(pubs, pub{pc, topic, tokens})
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	scrape := func(stop <-chan struct{}) (n int) {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			for _, p := range scrapePaths {
				req, _ := http.NewRequest(http.MethodGet, br.adminBase+p, nil)
				req.Header.Set("Authorization", "Bearer "+br.token)
				resp, err := hc.Do(req)
				if err != nil {
					b.Errorf("scrape %s: %v", p, err)
					return n
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Errorf("scrape %s: HTTP %d", p, resp.StatusCode)
				}
			}
			n++
			select {
			case <-stop:
				return n
			case <-t.C:
			}
		}
	}
	// A phase's allocations per message by class; those of the publish
	// path are split into the sites that allocate with (nearly) every
	// message, whose count is fixed by the code, and the others, whose
	// count follows timing: a writer goroutine started again after it
	// went idle, a sync.Pool refilled after a collection, a mutex's
	// waiter. With the debug knob, the second kind is listed.
	type phase struct {
		perMsg        [4]float64
		steady, timed float64
		scrapes       int
		collections   uint64
		timedSites    map[string]int64
	}
	msgs := int64(pairs * perPair)
	runPhase := func(scraped bool) phase {
		stop := make(chan struct{})
		var sw sync.WaitGroup
		var ph phase
		before := allocSnapshot()
		gc0 := gcCount()
		if scraped {
			sw.Go(func() { ph.scrapes = scrape(stop) })
		}
		want := received.Load() + msgs
		var wg sync.WaitGroup
		for _, p := range pubs {
			wg.Go(func() { publishQoS1(p.nc, p.topic, 0, perPair, p.tokens) })
		}
		wg.Wait()
		testutil.CheckFor(b, 60*time.Second, func() error {
			if got := received.Load(); got < want {
				return fmt.Errorf("received %d of %d", got, want)
			}
			return nil
		})
		close(stop)
		sw.Wait()
		ph.collections = gcCount() - gc0
		after := allocSnapshot()
		for c := range after.byClass {
			ph.perMsg[c] = float64(after.byClass[c]-before.byClass[c]) / float64(msgs)
		}
		ph.timedSites = map[string]int64{}
		for k, v := range after.publish {
			switch d := v - before.publish[k]; {
			case d >= msgs/2:
				ph.steady += float64(d) / float64(msgs)
			case d > 0:
				ph.timed += float64(d) / float64(msgs)
				ph.timedSites[k] = d
			}
		}
		return ph
	}
	runPhase(false) // warm-up: connections' buffers, the decision cache, pools
	var steady, total [2][]float64
	for i, scraped := range []bool{false, true, false, true} {
		ph := runPhase(scraped)
		k := 0
		if scraped {
			k = 1
		}
		steady[k] = append(steady[k], ph.steady)
		total[k] = append(total[k], ph.perMsg[allocPublish])
		b.Logf("phase %d scraped=%-5v: allocs per message: publish path %.4f (every message %.4f, by timing %.4f), clients %.3f, scrape %.3f, other %.3f; %d scrapes, %d collections",
			i+1, scraped, ph.perMsg[allocPublish], ph.steady, ph.timed, ph.perMsg[allocClient], ph.perMsg[allocScrape], ph.perMsg[allocOther],
			ph.scrapes, ph.collections)
		if os.Getenv("MOAT_ADMIN_ALLOC_DEBUG") != "" {
			for k, v := range ph.timedSites {
				b.Logf("    %d: %s", v, k)
			}
		}
	}
	for k := range 2 {
		if steady[k][0] != steady[k][1] || steady[k][0] != steady[1-k][0] {
			b.Errorf("the publish path's per-message allocations differ between phases: unscraped %v, scraped %v", steady[0], steady[1])
			break
		}
	}
	off := (total[0][0] + total[0][1]) / 2
	on := (total[1][0] + total[1][1]) / 2
	b.ReportMetric(steady[0][0], "publish-allocs/msg-every-message")
	b.ReportMetric(off, "publish-allocs/msg-unscraped")
	b.ReportMetric(on, "publish-allocs/msg-scraped")
}
