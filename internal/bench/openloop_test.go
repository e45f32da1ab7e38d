package bench

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPacerOfferedRate drives the open loop's pacer with a simulated clock
// that wakes late at random-looking moments, as a busy publisher does: the
// messages it releases follow the offered rate over the run whatever the
// wake-ups, never exceed the batch limit, and nothing is due before its
// time.
func TestPacerOfferedRate(t *testing.T) {
	start := time.Unix(1000, 0)
	const rate = 2000.0 // messages per second
	p := newPacer(rate, start, 0, 1)
	now, sent := start, 0
	end := start.Add(10 * time.Second)
	for step := 0; now.Before(end); step++ {
		n, wait := p.due(now, 64)
		switch {
		case n == 0 && wait <= 0:
			t.Fatalf("at %v: nothing due and no wait", now.Sub(start))
		case n > 64:
			t.Fatalf("at %v: %d messages due, over the batch limit", now.Sub(start), n)
		case n > 0 && wait != 0:
			t.Fatalf("at %v: messages due and a wait", now.Sub(start))
		}
		sent += n
		if n == 0 {
			now = now.Add(wait)
		}
		// Late wake-ups of 0 to 13 ms.
		now = now.Add(time.Duration(step*7919%13) * time.Millisecond)
	}
	want := rate * end.Sub(start).Seconds()
	if got := float64(sent); got < want*0.99 || got > want*1.01 {
		t.Errorf("released %d messages in 10 s, want %.0f ± 1%%", sent, want)
	}
}

// TestPacerSpreadAndUnpaced checks that publishers' schedules are spread
// over one interval and that a rate of 0 does not pace.
func TestPacerSpreadAndUnpaced(t *testing.T) {
	start := time.Unix(1000, 0)
	firsts := map[time.Duration]bool{}
	for i := range 4 {
		p := newPacer(100, start, i, 4) // interval 10 ms
		_, wait := p.due(start, 64)
		if i == 0 && wait != 0 || wait >= 10*time.Millisecond {
			t.Errorf("publisher %d waits %v for its first message", i, wait)
		}
		firsts[wait] = true
	}
	if len(firsts) != 4 {
		t.Errorf("first sends not spread: %v", firsts)
	}
	p := newPacer(0, start, 0, 1)
	if n, wait := p.due(start, 64); n != 64 || wait != 0 {
		t.Errorf("unpaced: due = %d, %v; want 64, 0", n, wait)
	}
}

func TestBestPeer(t *testing.T) {
	byName := func(name string) Metric {
		for _, m := range Metrics {
			if m.Name == name {
				return m
			}
		}
		t.Fatalf("no metric %s", name)
		return Metric{}
	}
	vals := []float64{19e3, 55e3, 80e3}
	ok := []bool{true, true, false}
	if i := bestPeer(byName("delivered_per_s"), vals, ok); i != 1 {
		t.Errorf("best delivered rate: peer %d, want 1 (the highest present)", i)
	}
	if i := bestPeer(byName("latency_p99_ms"), []float64{488, 304, 100}, ok); i != 1 {
		t.Errorf("best p99: peer %d, want 1 (the lowest present)", i)
	}
	if i := bestPeer(byName("latency_p99_ms"), vals, []bool{false, false, false}); i != -1 {
		t.Errorf("no peer present: %d, want -1", i)
	}
}

// TestComparePeers checks the table against several peers: each row's best
// peer, Moat's ratio to it, targets judged on that ratio, and the accepted
// rate of an open loop shown without a ratio.
func TestComparePeers(t *testing.T) {
	open := func(delivered, accepted, p99us float64) *Result {
		return &Result{Scenario: "p2p", Params: Params{OfferedPerSecond: 200e3},
			Messages: MessageStats{DeliveredPerSecond: delivered, AcceptedPerSecond: accepted, Expected: -1},
			Latency:  LatencySummary{Count: 10, P50Us: p99us / 2, P99Us: p99us},
			Broker:   &BrokerStats{RSSPeakMiB: 10, CPUPerMessageUs: 2}}
	}
	res := map[string]map[string]*Result{"g-open": {
		"moat": open(78e3, 247e3, 7.8e6), "mosquitto": open(19e3, 19e3, 488e3),
		"mochi": open(55e3, 55e3, 304e3), "natsmqtt": open(40e3, 41e3, 600e3),
	}}
	var targets []Target
	for _, s := range []string{"g-open:delivered_per_s>=2", "g-open:latency_p99_ms<=1"} {
		tg, err := ParseTarget(s)
		if err != nil {
			t.Fatal(err)
		}
		targets = append(targets, tg)
	}
	var sb strings.Builder
	missed := Compare(&sb, res, "moat", []string{"mosquitto", "mochi", "natsmqtt"}, nil, targets)
	out := sb.String()
	t.Log("\n" + out)
	for _, want := range []string{
		"| scenario | metric | moat | mosquitto | mochi | natsmqtt | best peer | moat/best | target |",
		"| g-open | delivered msgs/s | 78000 | 19000 | 55000 | 40000 | mochi | 1.42× | >= 2× **missed** |",
		"| g-open | latency p99 (ms) | 7800 | 488 | 304 | 600 | mochi | 25.66× | <= 1× **missed** |",
		"| g-open | accepted msgs/s (open loop) | 247000 | 19000 | 55000 | 41000 | – | – |  |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if missed != 2 {
		t.Errorf("missed %d targets, want 2", missed)
	}
}

// TestOpenLoopSmoke runs the open-loop scenarios of `make bench` (g: p2p
// QoS 1 with a deep window, h: fan-out QoS 0 at a fixed input rate) in
// miniature against an in-process Moat and, when installed, Mosquitto: the
// result carries the offered and accepted rates and the broker's figures.
func TestOpenLoopSmoke(t *testing.T) {
	brokers := map[string]string{"moat": startBroker(t, nil)}
	pids := map[string]int{"moat": os.Getpid()}
	if path, err := exec.LookPath("mosquitto"); err == nil {
		brokers["mosquitto"], pids["mosquitto"] = startMosquitto(t, path)
	} else {
		t.Log("mosquitto not installed: Moat only")
	}
	for name, addr := range brokers {
		for _, cfg := range []Config{
			{Scenario: P2P, Pubs: 4, Subs: 4, QoS: 1, Inflight: 64, MsgRate: 500},
			{Scenario: FanOut, Pubs: 1, Subs: 20, MsgRate: 200},
		} {
			t.Run(name+"/"+string(cfg.Scenario), func(t *testing.T) {
				cfg.Addr, cfg.BrokerPID = addr, pids[name]
				cfg.Duration, cfg.Drain, cfg.SampleInterval = 300*time.Millisecond, 2*time.Second, 100*time.Millisecond
				cfg.Topic = "open/" + string(cfg.Scenario)
				res, err := Run(context.Background(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				var buf bytes.Buffer
				res.WriteTable(&buf)
				t.Log("\n" + buf.String())
				m := res.Messages
				offered := cfg.MsgRate * float64(cfg.Pubs)
				if res.Params.OfferedPerSecond != offered || !strings.Contains(buf.String(), "open loop") {
					t.Errorf("offered %v, want %v, in the table too", res.Params.OfferedPerSecond, offered)
				}
				if m.AcceptedPerSecond <= 0 || m.AcceptedPerSecond > 1.5*offered {
					t.Errorf("accepted %.0f/s for %.0f/s offered", m.AcceptedPerSecond, offered)
				}
				// (The broker's CPU over 300 ms may be under one clock tick:
				// not checked.)
				if m.Delivered == 0 || res.Broker == nil || res.Broker.RSSPeakMiB <= 0 {
					t.Errorf("delivered %d, broker %+v", m.Delivered, res.Broker)
				}
			})
		}
	}
}

// startMosquitto runs Mosquitto on a free loopback port with the open
// loop's queue and returns its address and process id.
func startMosquitto(t *testing.T, path string) (string, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, []byte("allow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n"+
		"max_queued_messages 100000\nuser root\nlistener "+port+" 127.0.0.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, "-c", conf)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr, cmd.Process.Pid
		}
		select {
		case <-exited:
			t.Fatalf("mosquitto exited: %s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto does not listen on %s: %s", addr, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
