package cli

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/moatmq/moat/internal/testutil"
)

// TestClusterSessionMovesWithQueue: a persistent session (mosquitto_sub
// -c) subscribes on node 1 and goes away; QoS 1 messages published on
// node 3 are queued for it; resumed on node 2 it gets them all, once, in
// order, with Session Present 1.
func TestClusterSessionMovesWithQueue(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	procs := startMoatCluster(t, clusterSetup{extra: allowAllACL}).procs

	out := &testutil.Buffer{}
	sub := exec.Command("mosquitto_sub", append(hostArgs(procs[0]), "-i", "mover", "-c", "-q", "1", "-t", "move/#", "-v")...)
	sub.Stdout, sub.Stderr = out, out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Process.Kill(); sub.Wait() })
	testutil.CheckFor(t, 90*time.Second, func() error {
		if o, err := run(t, 10*time.Second, "mosquitto_pub", append(hostArgs(procs[2]), "-q", "1", "-t", "move/probe", "-m", "probe")...); err != nil {
			return fmt.Errorf("mosquitto_pub: %v: %s", err, o)
		}
		if !strings.Contains(out.String(), "move/probe probe") {
			return fmt.Errorf("no probe received on node 1 yet: %q", out.String())
		}
		return nil
	})
	sub.Process.Kill() // gone without DISCONNECT; the session stays
	sub.Wait()

	var lines []string
	for i := range 20 {
		lines = append(lines, fmt.Sprintf("m%02d", i))
	}
	pub := exec.Command("mosquitto_pub", append(hostArgs(procs[2]), "-i", "pub3", "-q", "1", "-t", "move/x", "-l")...)
	pub.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if o, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, o)
	}

	o, err := run(t, 60*time.Second, "mosquitto_sub", append(hostArgs(procs[1]), "-i", "mover", "-c", "-q", "1", "-t", "move/#", "-v",
		"-C", "20", "-W", "50", "-T", "move/probe")...)
	if err != nil {
		t.Fatalf("mosquitto_sub on node 2: %v\n%s", err, o)
	}
	if got := payloads(o, "move/x"); !slices.Equal(got, lines) {
		t.Fatalf("node 2 delivered %v, want %v", got, lines)
	}
	// The log line comes through the process's stderr pipe, which the
	// test reads in its own goroutine: it can come after the client's
	// messages.
	testutil.WaitFor(t, "node 2 to log Session Present 1 for the resumed session", 10*time.Second, func() bool {
		return strings.Contains(procs[1].logs.String(), "session_present=true")
	})
}

// TestClusterSIGKILLUnderQoS1Load: a paho publisher streams QoS 1
// messages into node 1 for a persistent subscriber on node 2; one node is
// killed with SIGKILL under that load, and its client goes on on node 3:
// the subscriber's node (the subscriber resumes its session there), or
// the publisher's (the publisher reconnects there); or all three nodes
// at once, started again on their data, the publisher going on through
// the subscriber's old home and the subscriber resuming on node 3 (a
// crash of the whole cluster). Every message the publisher had
// acknowledged reaches the subscriber. In the last case the old home
// accepts the publisher before it has imported the session again: its
// first message waits for that import (before, the messages it took
// meanwhile reached no session and were lost).
func TestClusterSIGKILLUnderQoS1Load(t *testing.T) {
	t.Parallel()
	// Each case has a cluster of its own: they run side by side.
	t.Run("SubscriberNode", func(t *testing.T) { t.Parallel(); killUnderLoad(t, 1) })
	t.Run("PublisherNode", func(t *testing.T) { t.Parallel(); killUnderLoad(t, 0) })
	t.Run("AllNodes", func(t *testing.T) { t.Parallel(); killUnderLoad(t, -1) })
}

// killUnderLoad runs TestClusterSIGKILLUnderQoS1Load, killing node kill
// (0: the publisher's, 1: the subscriber's, -1: every node).
func killUnderLoad(t *testing.T, kill int) {
	// The session's queue may hold every message published while it
	// moves: durability is under test, not the queue limit.
	procs := startMoatCluster(t, clusterSetup{extra: allowAllACL + "limits: {max_queued_messages: 100000}\n"}).procs
	var procsMu sync.Mutex // procs change when every node is started again
	proc := func(i int32) *moatProc {
		procsMu.Lock()
		defer procsMu.Unlock()
		return procs[i]
	}
	var pubNode atomic.Int32 // where the publisher connects
	const topic = "load/x"
	var gotMu sync.Mutex
	got := map[int]int{}
	recv := func(_ mqtt.Client, m mqtt.Message) {
		n, err := strconv.Atoi(string(m.Payload()))
		if err != nil {
			return // a probe
		}
		gotMu.Lock()
		got[n]++
		gotMu.Unlock()
	}
	// A claim may take a few seconds while the cluster elects new stream
	// leaders: the connect timeout allows for it, and the protocol is
	// fixed (paho would retry a refusal with MQTT 3.1).
	opts := func(p *moatProc, id string, clean bool) *mqtt.ClientOptions {
		return pahoOpts(p.port(0), id, clean).SetConnectTimeout(30 * time.Second).SetProtocolVersion(4)
	}
	subscribe := func(p *moatProc) (mqtt.Client, bool, error) {
		c := mqtt.NewClient(opts(p, "ksub", false).SetDefaultPublishHandler(recv))
		tok := c.Connect()
		if !tok.WaitTimeout(40*time.Second) || tok.Error() != nil {
			return nil, false, fmt.Errorf("connect: %v", tok.Error())
		}
		present := tok.(*mqtt.ConnectToken).SessionPresent()
		// Subscribing again to a resumed session changes nothing; a
		// session an earlier attempt created without its subscription
		// gets it.
		if st := c.Subscribe("load/#", 1, nil); !st.WaitTimeout(30*time.Second) || st.Error() != nil {
			c.Disconnect(0)
			return nil, false, fmt.Errorf("subscribe: %v", st.Error())
		}
		return c, present, nil
	}
	var sub mqtt.Client
	testutil.CheckFor(t, 90*time.Second, func() error {
		var err error
		sub, _, err = subscribe(procs[1])
		return err
	})
	defer func() { sub.Disconnect(100) }()

	// The subscription's interest reaches node 1.
	probe := mqtt.NewClient(opts(procs[0], "kprobe", true))
	if tok := probe.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	probeSeen := make(chan struct{}, 1)
	probeSub := mqtt.NewClient(opts(procs[1], "kprobe-sub", true).SetDefaultPublishHandler(func(mqtt.Client, mqtt.Message) {
		select {
		case probeSeen <- struct{}{}:
		default:
		}
	}))
	if tok := probeSub.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := probeSub.Subscribe("load/#", 1, nil); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	testutil.CheckFor(t, 90*time.Second, func() error {
		probe.Publish("load/probe", 1, false, "probe").WaitTimeout(10 * time.Second)
		select {
		case <-probeSeen:
			return nil
		case <-time.After(200 * time.Millisecond):
			return errors.New("no probe across the nodes yet")
		}
	})
	probeSub.Disconnect(0)
	probe.Disconnect(0)

	// The publisher streams QoS 1 messages into node 1 and records what
	// was acknowledged.
	var mu sync.Mutex
	acked := map[int]bool{}
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		n := 0
		for {
			// A publication the cluster could not take (no stream leader
			// for too long) ends the connection: connect again and go on.
			c := mqtt.NewClient(opts(proc(pubNode.Load()), "kpub", true))
			if tok := c.Connect(); !tok.WaitTimeout(40*time.Second) || tok.Error() != nil {
				select {
				case <-stop:
					return
				default:
					continue
				}
			}
			for {
				select {
				case <-stop:
					c.Disconnect(100)
					return
				default:
				}
				n++
				tok := c.Publish(topic, 1, false, strconv.Itoa(n))
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					break
				}
				mu.Lock()
				acked[n] = true
				mu.Unlock()
			}
			c.Disconnect(0)
		}
	}()
	ackedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	waitAcked := func(n int) {
		t.Helper()
		testutil.CheckFor(t, 90*time.Second, func() error {
			if c := ackedCount(); c < n {
				return fmt.Errorf("%d of %d messages acknowledged", c, n)
			}
			return nil
		})
	}
	waitAcked(200)
	switch kill {
	case 0:
		pubNode.Store(2) // the publisher's next connection goes to a survivor
	case -1:
		pubNode.Store(1) // and to the subscriber's old home after the restart
	}
	if kill < 0 {
		for _, p := range procs {
			p.cmd.Process.Kill() // SIGKILL, under load
		}
		for _, p := range procs {
			<-p.done
		}
		procsMu.Lock()
		for i, p := range procs {
			procs[i] = p.restart(t)
		}
		procsMu.Unlock()
	} else {
		procs[kill].cmd.Process.Kill() // SIGKILL, under load
		<-procs[kill].done
	}
	if kill != 0 {
		// The subscriber resumes on a survivor, while the load goes on.
		sub.Disconnect(0)
		var present bool
		testutil.CheckFor(t, 90*time.Second, func() error {
			var err error
			sub, present, err = subscribe(procs[2])
			return err
		})
		if !present {
			t.Fatal("the session was not present on the survivor")
		}
	}
	waitAcked(ackedCount() + 200)
	close(stop)
	<-pubDone

	mu.Lock()
	want := make([]int, 0, len(acked))
	for n := range acked {
		want = append(want, n)
	}
	mu.Unlock()
	slices.Sort(want)
	testutil.CheckFor(t, 90*time.Second, func() error {
		gotMu.Lock()
		defer gotMu.Unlock()
		var missing []int
		for _, n := range want {
			if got[n] == 0 {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d acknowledged messages missing, first %v", len(missing), len(want), missing[:min(len(missing), 10)])
		}
		return nil
	})
	gotMu.Lock()
	dups := 0
	for _, c := range got {
		dups += c - 1
	}
	gotMu.Unlock()
	t.Logf("all %d acknowledged messages received, %d duplicates (QoS 1 allows them)", len(want), dups)
}

// TestClusterFullRestart stops all three nodes and starts them again:
// the retained message and the persistent session with the QoS 1
// messages queued for it are back, on any node.
func TestClusterFullRestart(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	procs := startMoatCluster(t, clusterSetup{extra: allowAllACL}).procs
	out := &testutil.Buffer{}
	sub := exec.Command("mosquitto_sub", append(hostArgs(procs[0]), "-i", "sleeper", "-c", "-q", "1", "-t", "fr/#", "-v")...)
	sub.Stdout, sub.Stderr = out, out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Process.Kill(); sub.Wait() })
	testutil.CheckFor(t, 90*time.Second, func() error {
		if o, err := run(t, 10*time.Second, "mosquitto_pub", append(hostArgs(procs[2]), "-q", "1", "-t", "fr/probe", "-m", "probe")...); err != nil {
			return fmt.Errorf("mosquitto_pub: %v: %s", err, o)
		}
		if !strings.Contains(out.String(), "fr/probe probe") {
			return fmt.Errorf("no probe received on node 1 yet: %q", out.String())
		}
		return nil
	})
	sub.Process.Kill()
	sub.Wait()
	var lines []string
	for i := range 10 {
		lines = append(lines, fmt.Sprintf("r%02d", i))
	}
	pub := exec.Command("mosquitto_pub", append(hostArgs(procs[2]), "-q", "1", "-t", "fr/x", "-l")...)
	pub.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if o, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, o)
	}
	if o, err := run(t, 30*time.Second, "mosquitto_pub", append(hostArgs(procs[1]), "-q", "1", "-r", "-t", "frs/state", "-m", "on")...); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, o)
	}
	testutil.CheckFor(t, 60*time.Second, func() error {
		o, err := run(t, 10*time.Second, "mosquitto_sub", append(hostArgs(procs[0]), "-q", "1", "-t", "frs/state", "-C", "1", "-W", "3")...)
		if err != nil || strings.TrimSpace(o) != "on" {
			return fmt.Errorf("retained on node 1 before the restart: %v %q", err, o)
		}
		return nil
	})

	for _, p := range procs {
		p.stop(t)
	}
	for i, p := range procs {
		procs[i] = p.restart(t)
	}

	var o string
	testutil.CheckFor(t, 120*time.Second, func() error {
		var err error
		o, err = run(t, 60*time.Second, "mosquitto_sub", append(hostArgs(procs[1]), "-i", "sleeper", "-c", "-q", "1", "-t", "fr/#", "-v",
			"-C", "10", "-W", "40", "-T", "fr/probe")...)
		if err != nil {
			return fmt.Errorf("mosquitto_sub after the restart: %v: %s", err, o)
		}
		return nil
	})
	if got := payloads(o, "fr/x"); !slices.Equal(got, lines) {
		t.Fatalf("after the restart node 2 delivered %v, want %v", got, lines)
	}
	testutil.CheckFor(t, 60*time.Second, func() error {
		o, err := run(t, 10*time.Second, "mosquitto_sub", append(hostArgs(procs[2]), "-q", "1", "-t", "frs/state", "-C", "1", "-W", "3")...)
		if err != nil || strings.TrimSpace(o) != "on" {
			return fmt.Errorf("retained on node 3 after the restart: %v %q", err, o)
		}
		return nil
	})
}

// TestClusterRetainedKeptWhileAlone: the last node running keeps the
// retained messages published to it while it has no quorum on disk; killed
// and started again with the others, it writes them to the cluster, and
// every node serves them. Before, they died with the process.
func TestClusterRetainedKeptWhileAlone(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	procs := startMoatCluster(t, clusterSetup{extra: allowAllACL}).procs
	testutil.CheckFor(t, 90*time.Second, func() error {
		if o, err := run(t, 10*time.Second, "mosquitto_pub", append(hostArgs(procs[1]), "-q", "1", "-r", "-t", "alone/state", "-m", "before")...); err != nil {
			return fmt.Errorf("mosquitto_pub: %v: %s", err, o)
		}
		o, err := run(t, 10*time.Second, "mosquitto_sub", append(hostArgs(procs[0]), "-t", "alone/state", "-C", "1", "-W", "3")...)
		if err != nil || strings.TrimSpace(o) != "before" {
			return fmt.Errorf("retained on node 1: %v %q", err, o)
		}
		return nil
	})
	procs[2].stop(t)
	procs[1].stop(t)
	if o, err := run(t, 10*time.Second, "mosquitto_pub", append(hostArgs(procs[0]), "-r", "-t", "alone/state", "-m", "alone")...); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, o)
	}
	procs[0].waitLine(t, "retained changes waiting for the cluster are kept on disk")
	procs[0].cmd.Process.Kill() // SIGKILL: nothing written at exit
	<-procs[0].done
	for i, p := range procs {
		procs[i] = p.restart(t)
	}
	procs[0].waitLine(t, "retained changes of the last run not yet in the cluster are written")
	for _, p := range procs[1:] {
		testutil.CheckFor(t, 90*time.Second, func() error {
			o, err := run(t, 10*time.Second, "mosquitto_sub", append(hostArgs(p), "-t", "alone/state", "-C", "1", "-W", "3")...)
			if err != nil || strings.TrimSpace(o) != "alone" {
				return fmt.Errorf("retained after the restart: %v %q", err, o)
			}
			return nil
		})
	}
}

// TestClusterNodeLostAfterFullRestart: after a restart of the whole
// cluster, node 1 starting alone first (its JetStream meta group, read
// back from disk, names the other peers before their server names reach
// it), the loss of one node of three leaves the other two a majority:
// neither believes itself cut off, and QoS 1 messages published on node 3
// after node 2's SIGKILL keep reaching a subscriber on node 1.
func TestClusterNodeLostAfterFullRestart(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	procs := startMoatCluster(t, clusterSetup{extra: allowAllACL}).procs
	for _, p := range procs {
		p.stop(t)
	}
	procs[0] = procs[0].restart(t)
	// The first wait for the key-value store gives up after 5 s: node 1
	// has looked at its peers several times (every second) before any
	// other node is back.
	testutil.CheckFor(t, 30*time.Second, func() error {
		if !strings.Contains(procs[0].logs.String(), "cluster: waiting for the cluster's key-value store") {
			return errors.New("node 1 has not waited for the key-value store yet")
		}
		return nil
	})
	procs[1], procs[2] = procs[1].restart(t), procs[2].restart(t)
	testutil.CheckFor(t, 120*time.Second, func() error {
		for i, p := range procs {
			if !strings.Contains(p.logs.String(), "cluster: sessions of this node imported") {
				return fmt.Errorf("node %d has not imported its sessions yet", i+1)
			}
		}
		return nil
	})

	out := &testutil.Buffer{}
	sub := exec.Command("mosquitto_sub", append(hostArgs(procs[0]), "-q", "1", "-t", "lost/#", "-v")...)
	sub.Stdout, sub.Stderr = out, out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Process.Kill(); sub.Wait() })
	testutil.CheckFor(t, 60*time.Second, func() error {
		if o, err := run(t, 10*time.Second, "mosquitto_pub", append(hostArgs(procs[2]), "-q", "1", "-t", "lost/probe", "-m", "probe")...); err != nil {
			return fmt.Errorf("mosquitto_pub: %v: %s", err, o)
		}
		if !strings.Contains(out.String(), "lost/probe probe") {
			return fmt.Errorf("no probe received on node 1 yet: %q", out.String())
		}
		return nil
	})

	if err := procs[1].cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-procs[1].done
	for _, i := range []int{0, 2} {
		testutil.CheckFor(t, 30*time.Second, func() error {
			if !regexpLine(procs[i].logs.String(), `Router connection closed.*Remote: node2`) {
				return fmt.Errorf("node %d has not lost its route to node 2 yet", i+1)
			}
			return nil
		})
	}
	// Messages over 5 s, more than two intervals of the nodes' check of
	// their routes (the heartbeat interval, 2 s): a node that took itself
	// for cut off would hold back the later ones until node 2 returns.
	var want []string
	for i := range 10 {
		m := fmt.Sprintf("m%02d", i)
		if o, err := run(t, 30*time.Second, "mosquitto_pub", append(hostArgs(procs[2]), "-q", "1", "-t", "lost/x", "-m", m)...); err != nil {
			t.Fatalf("mosquitto_pub %s with node 2 down: %v: %s", m, err, o)
		}
		want = append(want, m)
		time.Sleep(500 * time.Millisecond)
	}
	testutil.CheckFor(t, 30*time.Second, func() error {
		if got := payloads(out.String(), "lost/x"); !slices.Equal(got, want) {
			return fmt.Errorf("node 1 delivered %v, want %v", got, want)
		}
		return nil
	})
	for _, i := range []int{0, 2} {
		if strings.Contains(procs[i].logs.String(), "cut off from most of the cluster") {
			t.Errorf("node %d took itself for cut off with two nodes of three up", i+1)
		}
	}
}
