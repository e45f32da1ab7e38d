// Command failoverstorm measures the reconnection storm after a cluster
// node dies. It connects -n persistent MQTT 5 sessions to node 3, each
// subscribed at QoS 1 to a topic of its own, and publishes one QoS 1
// message to each topic from node 1 ("before"). Then it kills node 3
// (SIGKILL to -pid3), publishes one more message to each topic
// ("after"), and reconnects every client with its client ID, half to
// node 1 and half to node 2, -conc at once, each trying again until it
// connects. It reports how long after the kill each session resumed
// (with Session Present or not) and whether each received its "after"
// message, once.
//
// run.sh starts the three nodes and runs it:
//
//	scripts/failoverstorm/run.sh ./moat 2000 /tmp/storm
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/client"
)

func main() {
	n := flag.Int("n", 1000, "sessions")
	a1 := flag.String("n1", "127.0.0.1:27811", "MQTT address of node 1")
	a2 := flag.String("n2", "127.0.0.1:27812", "MQTT address of node 2")
	a3 := flag.String("n3", "127.0.0.1:27813", "MQTT address of node 3")
	pid3 := flag.Int("pid3", 0, "process ID of node 3")
	conc := flag.Int("conc", 64, "connections set up at once")
	flag.Parse()
	if *pid3 <= 0 || *n <= 0 || *conc <= 0 {
		fmt.Fprintln(os.Stderr, "failoverstorm: -pid3, -n and -conc must be positive")
		os.Exit(2)
	}
	s := &storm{got: make(map[string]map[string]int)}
	ctx := context.Background()
	ids := make([]string, *n)
	for i := range ids {
		ids[i] = "storm" + strconv.Itoa(i)
	}
	clients := make([]*client.Client, *n)

	start := time.Now()
	s.each(ids, *conc, func(i int, id string) {
		c, err := s.dial(ctx, *a3, id)
		if err != nil {
			fail("connecting %s to node 3: %v", id, err)
		}
		if _, err := c.Subscribe(ctx, client.Subscription{Filter: "storm/" + id, QoS: 1}); err != nil {
			fail("subscribing %s: %v", id, err)
		}
		clients[i] = c
	})
	fmt.Printf("%d sessions on node 3 in %.2fs\n", *n, time.Since(start).Seconds())

	pub, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + *a1}, ClientID: "stormpub",
		Version: client.V5, ConnectTimeout: time.Minute})
	if err != nil {
		fail("connecting the publisher: %v", err)
	}
	defer pub.Close()
	s.publish(ctx, pub, ids, "before")
	deadline := time.Now().Add(30 * time.Second)
	for s.count("before") < *n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("received before the kill: %d of %d\n", s.count("before"), *n)

	// Process.Kill is SIGKILL on Unix.
	p3, err := os.FindProcess(*pid3)
	if err == nil {
		err = p3.Kill()
	}
	if err != nil {
		fail("killing node 3: %v", err)
	}
	killed := time.Now()
	fmt.Println("node 3 killed")
	var closing sync.WaitGroup
	for _, c := range clients {
		closing.Go(func() { c.Close() })
	}
	s.publish(ctx, pub, ids, "after")
	fmt.Printf("\"after\" published %.2fs after the kill\n", time.Since(killed).Seconds())
	closing.Wait()

	resumed := make([]time.Duration, *n)
	var present, attempts atomic.Int32
	s.each(ids, *conc, func(i int, id string) {
		addr := *a1
		if i%2 == 1 {
			addr = *a2
		}
		for {
			attempts.Add(1)
			c, err := s.dial(ctx, addr, id)
			if err != nil {
				time.Sleep(500 * time.Millisecond)
				continue
			}
			resumed[i] = time.Since(killed)
			if c.ConnectInfo().SessionPresent {
				present.Add(1)
			}
			clients[i] = c
			return
		}
	})
	fmt.Printf("all resumed %.2fs after the kill; %d with Session Present, %d attempts\n",
		time.Since(killed).Seconds(), present.Load(), attempts.Load())
	slices.Sort(resumed)
	q := func(p float64) float64 { return resumed[int(p*float64(len(resumed)-1))].Seconds() }
	fmt.Printf("resumed after the kill: p50 %.2fs p90 %.2fs p99 %.2fs max %.2fs\n", q(0.5), q(0.9), q(0.99), q(1))

	deadline = time.Now().Add(30 * time.Second)
	for s.count("after") < *n && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	missing, twice := s.check(ids, "after")
	fmt.Printf("\"after\": %d of %d sessions missing it, %d with it more than once\n", missing, *n, twice)
	for _, c := range clients {
		c.Close()
	}
	if missing > 0 || present.Load() != int32(*n) {
		os.Exit(1)
	}
}

// storm counts, per client ID, the payloads received.
type storm struct {
	mu  sync.Mutex
	got map[string]map[string]int
}

func (s *storm) dial(ctx context.Context, addr, id string) (*client.Client, error) {
	return client.Dial(ctx, client.Config{Servers: []string{"tcp://" + addr}, ClientID: id, Version: client.V5,
		SessionExpiry: 3600, ConnectTimeout: time.Minute, OnMessage: func(m *client.Message) {
			s.mu.Lock()
			if s.got[id] == nil {
				s.got[id] = make(map[string]int)
			}
			s.got[id][string(m.Payload)]++
			s.mu.Unlock()
		}})
}

// count is how many sessions received payload at least once.
func (s *storm) count(payload string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := 0
	for _, m := range s.got {
		if m[payload] > 0 {
			c++
		}
	}
	return c
}

// check counts the sessions of ids that did not receive payload, and
// those that received it more than once.
func (s *storm) check(ids []string, payload string) (missing, twice int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		switch c := s.got[id][payload]; {
		case c == 0:
			missing++
		case c > 1:
			twice++
		}
	}
	return missing, twice
}

// each calls f for every ID, conc at once, and waits for all.
func (s *storm) each(ids []string, conc int, f func(int, string)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	for i, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(i, id)
		})
	}
	wg.Wait()
}

// publish sends payload at QoS 1 to each ID's topic, 256 at once, each
// tried up to six times (a stream electing its leader answers late).
func (s *storm) publish(ctx context.Context, pub *client.Client, ids []string, payload string) {
	var failed atomic.Int32
	s.each(ids, 256, func(_ int, id string) {
		for try := 0; try < 6; try++ {
			pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := pub.Publish(pctx, &client.Message{Topic: "storm/" + id, Payload: []byte(payload), QoS: 1})
			cancel()
			if err == nil {
				return
			}
		}
		failed.Add(1)
	})
	fmt.Printf("published %q to %d topics (%d failed)\n", payload, len(ids), failed.Load())
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "failoverstorm: "+format+"\n", args...)
	os.Exit(1)
}
