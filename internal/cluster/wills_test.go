package cluster

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// dialLiveWill connects id to addr with a will on topic (delay seconds,
// session expiry seconds: 0 is a clean session) carrying properties.
func dialLiveWill(t *testing.T, addr, id, topic string, delay, expiry uint32) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := &client.Will{Topic: topic, Payload: []byte(id + " gone"), QoS: 1}
	w.Properties.SetWillDelay(delay)
	w.Properties.SetContentType("text/plain")
	w.Properties.SetResponseTopic("cw/reply/" + id)
	w.Properties.SetMessageExpiry(3600)
	w.Properties.User = []packet.UserProperty{{Key: "site", Value: "plant-a"}}
	c, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + addr}, ClientID: id, SessionExpiry: expiry,
		CleanStart: expiry == 0, Will: w})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recordData reads the last value of subj through via (nil: none or
// removed).
func recordData(t *testing.T, via *Node, subj string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := via.getRecord(ctx, subj)
	if err != nil {
		t.Fatal(err)
	}
	if r == nil {
		return nil
	}
	return r.data
}

// receiveWills collects the topics of n messages on c within d, probes
// skipped.
func receiveWills(t *testing.T, c *client.Client, n int, d time.Duration) []string {
	t.Helper()
	var got []string
	deadline := time.After(d)
	for len(got) < n {
		select {
		case m := <-c.Messages():
			if isProbe(m) {
				continue // a late probe of awaitRoute
			}
			if m.Properties.ContentType != "text/plain" || m.Properties.ResponseTopic == "" ||
				len(m.Properties.User) != 1 || m.Properties.User[0] != (packet.UserProperty{Key: "site", Value: "plant-a"}) ||
				!m.Properties.Has(packet.PropMessageExpiry) || m.Properties.MessageExpiry == 0 {
				t.Fatalf("will %s arrived without its properties: %+v", m.Topic, m.Properties)
			}
			got = append(got, m.Topic)
		case <-deadline:
			t.Fatalf("got wills %v within %v; want %d", got, d, n)
		}
	}
	slices.Sort(got)
	return got
}

// TestWillsOfCrashedNode: clients with wills are connected to n3 when it
// crashes. Nothing is published within the grace period (the test's
// clock); after it, exactly one survivor publishes each owed will once,
// with its properties: the clean session's and the persistent session's
// without delay at once, the one with a delay longer than the grace
// period when its delay has run since n3 was last heard from. Clients
// that disconnected normally (0x00) leave no will behind; a persistent
// session resumed on a survivor within its will delay cancels its will.
// n3 coming back publishes nothing.
func TestWillsOfCrashedNode(t *testing.T) {
	t.Parallel()
	clk := newTestClock()
	nodes, dir, routes := startOwn(t, 3, clk.hook(), adoptAfter(time.Minute))
	watch := dial(t, nodes[0].addr, "cwwatch", client.V5)
	subscribe(t, watch, 1, "cw/#")
	probe := dial(t, nodes[2].addr, "cwprobe", client.V5)
	awaitRoute(t, probe, watch, "cw/probe")
	probe.Close()

	c3 := nodes[2]
	dialLiveWill(t, c3.addr, "wclean", "cw/clean", 0, 0)
	dialLiveWill(t, c3.addr, "wnow", "cw/now", 0, 600)
	// Its delay runs 5 s past the 70 s the clock is moved by below.
	dialLiveWill(t, c3.addr, "wlater", "cw/later", 75, 600)
	dialLiveWill(t, c3.addr, "wback", "cw/back", 3600, 600)
	disconnect(t, dialLiveWill(t, c3.addr, "wbye", "cw/bye", 0, 0))
	disconnect(t, dialLiveWill(t, c3.addr, "wbyep", "cw/byep", 0, 600))

	n1 := nodes[0].node
	cleanSubj := func(id string) string { return cleanWillSubject(id, c3.node.origin) }
	testutil.WaitFor(t, "the live wills in the cluster, the normal ends' removed", 30*time.Second, func() bool {
		for _, id := range []string{"wnow", "wlater", "wback"} {
			w, err := decodeWill(recordData(t, n1, sessSubject(id, "w")), id)
			if err != nil || !w.Live {
				return false
			}
		}
		w, wr, err := decodeWillRecord(recordData(t, n1, cleanSubj("wclean")), "wclean")
		return err == nil && w.Live && wr.Node == "n3" && len(recordData(t, n1, cleanSubj("wbye"))) == 0 &&
			len(recordData(t, n1, sessSubject("wbyep", "w"))) == 0
	})
	if d := recordData(t, n1, sessSubject("wlater", "w")); d != nil {
		if w, _ := decodeWill(d, "wlater"); w.Delay != 75*time.Second {
			t.Fatalf("the live will's delay is %v", w.Delay)
		}
	}

	crashNode(t, c3)
	expectNone(t, watch, time.Second)

	// wback resumes on n2 within its will delay: the will is cancelled.
	back, present := dialSession(t, nodes[1].addr, "wback", client.V5)
	if !present {
		t.Fatal("Session Present 0 for a session of the crashed node")
	}
	testutil.WaitFor(t, "the resumed session's will removed", 30*time.Second, func() bool {
		return len(recordData(t, n1, sessSubject("wback", "w"))) == 0
	})

	sinceHeard(clk, "n3", 30*time.Second, nodes[:2]...)
	for range 3 {
		for _, tn := range nodes[:2] {
			tn.node.adoptDue()
		}
	}
	expectNone(t, watch, time.Second)

	adopted := func() (sessions, wills uint64) {
		for _, tn := range nodes[:2] {
			sessions += tn.node.adopt.sessions.Load()
			wills += tn.node.adopt.wills.Load()
		}
		return
	}
	testutil.WaitFor(t, "the sessions and the clean session's will adopted", 60*time.Second, func() bool {
		sinceHeard(clk, "n3", 70*time.Second, nodes[:2]...)
		s, w := adopted()
		return s == 3 && w == 1 // wnow, wlater, wbyep; wclean
	})
	if got := receiveWills(t, watch, 2, 30*time.Second); !slices.Equal(got, []string{"cw/clean", "cw/now"}) {
		t.Fatalf("wills %v; want cw/clean and cw/now", got)
	}
	if len(recordData(t, n1, cleanSubj("wclean"))) != 0 {
		t.Fatal("the clean session's will is still in the cluster")
	}
	// wlater's delay has 5 s to run.
	expectNone(t, watch, 1500*time.Millisecond)
	if got := receiveWills(t, watch, 1, 30*time.Second); !slices.Equal(got, []string{"cw/later"}) {
		t.Fatalf("wills %v; want cw/later", got)
	}
	testutil.WaitFor(t, "the fired will removed", 30*time.Second, func() bool {
		return len(recordData(t, n1, sessSubject("wlater", "w"))) == 0
	})

	// n3 comes back: nothing is left to it.
	again := restartWithListener(t, dir, routes, 2, clk.set)
	select {
	case <-again.node.sess.ready:
	case <-time.After(60 * time.Second):
		t.Fatal("the returning node's sessions not ready")
	}
	if w := again.node.adopt.wills.Load(); w != 0 {
		t.Fatalf("the returning node published %d wills", w)
	}
	expectNone(t, watch, 2*time.Second)
	disconnect(t, back)
	expectNone(t, watch, 500*time.Millisecond)
}

// TestWillsOfRestartedNode: a node that crashes and is back within the
// grace period publishes the wills of its previous run's clean sessions
// itself, once; its persistent sessions' wills wait for their delay
// there, as their sessions are its own again.
func TestWillsOfRestartedNode(t *testing.T) {
	t.Parallel()
	clk := newTestClock()
	nodes, dir, routes := startOwn(t, 3, clk.hook(), adoptAfter(time.Minute))
	watch := dial(t, nodes[0].addr, "rwwatch", client.V5)
	subscribe(t, watch, 1, "cw/#")
	probe := dial(t, nodes[2].addr, "rwprobe", client.V5)
	awaitRoute(t, probe, watch, "cw/probe")
	probe.Close()
	dialLiveWill(t, nodes[2].addr, "rclean", "cw/rclean", 0, 0)
	dialLiveWill(t, nodes[2].addr, "rnow", "cw/rnow", 0, 600)
	n1 := nodes[0].node
	testutil.WaitFor(t, "the live wills in the cluster", 30*time.Second, func() bool {
		return len(recordData(t, n1, cleanWillSubject("rclean", nodes[2].node.origin))) > 0 &&
			len(recordData(t, n1, sessSubject("rnow", "w"))) > 0
	})
	crashNode(t, nodes[2])
	expectNone(t, watch, time.Second)
	again := restartWithListener(t, dir, routes, 2, clk.set)
	if got := receiveWills(t, watch, 2, 60*time.Second); !slices.Equal(got, []string{"cw/rclean", "cw/rnow"}) {
		t.Fatalf("wills %v; want cw/rclean and cw/rnow", got)
	}
	if w := again.node.adopt.wills.Load(); w != 1 {
		t.Fatalf("the restarted node published %d clean sessions' wills; want 1", w)
	}
	// The grace period passes for nobody: the node is back.
	clk.Advance(2 * time.Minute)
	for range 3 {
		for _, tn := range nodes[:2] {
			tn.node.adoptDue()
		}
	}
	expectNone(t, watch, 2*time.Second)
}

// TestConnectWillCost measures what keeping the wills of open
// connections in the cluster costs a connection: CONNECT to CONNACK and
// the whole cycle (connect, DISCONNECT 0x00, connection closed) on one
// node of three, for clean and persistent sessions with and without a
// will, the four kinds taking turns. A measurement, not a check: run it
// with MOAT_BENCH_CLUSTER_WILLS=N (N cycles of each kind), e.g.
//
//	MOAT_BENCH_CLUSTER_WILLS=300 go test -race=false -run TestConnectWillCost -v ./internal/cluster/
func TestConnectWillCost(t *testing.T) {
	t.Parallel()
	rounds, _ := strconv.Atoi(os.Getenv("MOAT_BENCH_CLUSTER_WILLS"))
	if rounds <= 0 {
		t.Skip("a measurement: set MOAT_BENCH_CLUSTER_WILLS to the number of cycles")
	}
	nodes := startCluster(t, 3)
	addr := nodes[0].addr
	type kind struct {
		name          string
		expiry        uint32
		will          bool
		connect, full []time.Duration
	}
	kinds := []*kind{{name: "clean", expiry: 0}, {name: "clean+will", expiry: 0, will: true},
		{name: "persistent", expiry: 600}, {name: "persistent+will", expiry: 600, will: true}}
	cycle := func(k *kind) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cfg := client.Config{Servers: []string{"tcp://" + addr}, ClientID: "cost-" + strings.ReplaceAll(k.name, "+", "-"), SessionExpiry: k.expiry,
			CleanStart: k.expiry == 0}
		if k.will {
			cfg.Will = &client.Will{Topic: "cost/" + strings.ReplaceAll(k.name, "+", "-"), Payload: make([]byte, 64), QoS: 1}
		}
		start := time.Now()
		c, err := client.Dial(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		k.connect = append(k.connect, time.Since(start))
		if err := c.Disconnect(ctx); err != nil {
			t.Fatal(err)
		}
		<-c.Done()
		k.full = append(k.full, time.Since(start))
	}
	for _, k := range kinds { // warm up
		cycle(k)
		k.connect, k.full = nil, nil
	}
	for range rounds {
		for _, k := range kinds {
			cycle(k)
		}
	}
	pct := func(d []time.Duration, p int) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[min(len(s)-1, len(s)*p/100)]
	}
	mean := func(d []time.Duration) time.Duration {
		var sum time.Duration
		for _, x := range d {
			sum += x
		}
		return sum / time.Duration(len(d))
	}
	for _, k := range kinds {
		t.Logf("%-16s connect mean %8v p50 %8v p99 %8v | cycle mean %8v p50 %8v", k.name,
			mean(k.connect).Round(time.Microsecond), pct(k.connect, 50).Round(time.Microsecond), pct(k.connect, 99).Round(time.Microsecond),
			mean(k.full).Round(time.Microsecond), pct(k.full, 50).Round(time.Microsecond))
	}
}
