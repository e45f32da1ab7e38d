package bench

import (
	"context"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
)

// The Benchmark functions below run the side-by-side scenarios against an
// in-process Moat broker so that the broker can be profiled with the
// standard tools, without touching the broker or `moat serve`:
//
//	go test -run '^$' -bench 'Broker/fanin' -benchtime 1x \
//	    -cpuprofile cpu.out -memprofile mem.out ./internal/bench
//	go tool pprof -top -focus 'internal/broker' bench.test cpu.out
//
// The load generator runs in the same process, so focus the profile on the
// broker's packages. Each sub-benchmark runs its scenario once per
// iteration for a few seconds (use -benchtime 1x) and reports
// delivered msgs/s and p99 latency. BENCH_HEAP_PROFILE=FILE writes the
// in-use heap once the clients are connected to FILE.NAME:
//
//	BENCH_HEAP_PROFILE=/tmp/heap go test -run '^$' -bench 'Broker/idle' \
//	    -benchtime 1x ./internal/bench
//	go tool pprof -sample_index=inuse_space -top /tmp/heap.idle-mtls
func BenchmarkBroker(b *testing.B) {
	srv, cli, iss := testPKI(b)
	plain := startBroker(b, nil)
	mtls := startBroker(b, srv)
	certs, err := iss.IssueClients("prof-", 1000)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		tls  bool
		cfg  Config
	}{
		{"p2p-qos1-mtls", true, Config{Scenario: P2P, Pubs: 100, Subs: 100, QoS: 1}},
		{"fanout-qos0", false, Config{Scenario: FanOut, Pubs: 1, Subs: 200}},
		{"fanin-qos1", false, Config{Scenario: FanIn, Pubs: 200, Subs: 1, QoS: 1}},
		{"storm-mtls", true, Config{Scenario: Conn, Clients: 500, Duration: time.Millisecond}},
		{"idle-mtls", true, Config{Scenario: Conn, Clients: 1000, Duration: time.Second}},
	} {
		b.Run(c.name, func(b *testing.B) {
			cfg := c.cfg
			cfg.Addr = plain
			if c.tls {
				cfg.Addr, cfg.TLS, cfg.ClientCerts = mtls, cli, certs
			}
			if cfg.Duration == 0 {
				cfg.Duration = 3 * time.Second
			}
			cfg.Drain = 2 * time.Second
			if cfg.Scenario == Conn {
				cfg.OnConnected = func() {
					var ms runtime.MemStats
					runtime.GC()
					runtime.ReadMemStats(&ms)
					n := float64(cfg.Clients)
					// Client and broker share the process: both sides count.
					b.Logf("per connection (client+broker): heap in use %.1f KiB, stacks %.1f KiB, goroutines %.1f",
						float64(ms.HeapInuse)/1024/n, float64(ms.StackInuse)/1024/n, float64(runtime.NumGoroutine())/n)
				}
			}
			if f := os.Getenv("BENCH_HEAP_PROFILE"); f != "" {
				// In-use heap while the clients are connected, e.g. to see
				// what an idle connection holds.
				logMem := cfg.OnConnected
				cfg.OnConnected = func() {
					if logMem != nil {
						logMem()
					}
					runtime.GC()
					out, err := os.Create(f + "." + c.name)
					if err != nil {
						b.Fatal(err)
					}
					defer out.Close()
					pprof.Lookup("heap").WriteTo(out, 0)
				}
			}
			for b.Loop() {
				res, err := Run(context.Background(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				if cfg.Scenario == Conn {
					b.ReportMetric(res.Connect.PerSecond, "conn/s")
				} else {
					b.ReportMetric(res.Messages.DeliveredPerSecond, "msgs/s")
					b.ReportMetric(res.Latency.P99Us, "p99-µs")
				}
			}
		})
	}
}
