package cli

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/moatmq/moat/internal/testutil"
)

// TestClusterSharedSIGKILLUnderQoS1Load: a shared subscription with a
// member on node 2 (a persistent session) and one on node 3 takes QoS 1
// messages published on node 1; node 2 is killed with SIGKILL under the
// load, and its member resumes its session on node 3. Every message
// whose publisher got its PUBACK reaches the group.
func TestClusterSharedSIGKILLUnderQoS1Load(t *testing.T) {
	t.Parallel()
	procs := startMoatCluster(t, clusterSetup{extra: allowAllACL + "limits: {max_queued_messages: 100000}\n"}).procs
	const filter = "$share/k/sload/#"
	var gotMu sync.Mutex
	got := map[int]int{}
	probes := map[string]int{}
	recv := func(_ mqtt.Client, m mqtt.Message) {
		gotMu.Lock()
		defer gotMu.Unlock()
		if n, err := strconv.Atoi(string(m.Payload())); err == nil {
			got[n]++
		} else {
			probes[string(m.Payload())]++
		}
	}
	opts := func(p *moatProc, id string, clean bool) *mqtt.ClientOptions {
		return pahoOpts(p.port(0), id, clean).SetConnectTimeout(30 * time.Second).SetProtocolVersion(4).SetDefaultPublishHandler(recv)
	}
	member := func(p *moatProc, id string, clean bool) (mqtt.Client, bool, error) {
		c := mqtt.NewClient(opts(p, id, clean))
		tok := c.Connect()
		if !tok.WaitTimeout(40*time.Second) || tok.Error() != nil {
			return nil, false, fmt.Errorf("connect: %v", tok.Error())
		}
		present := tok.(*mqtt.ConnectToken).SessionPresent()
		if st := c.Subscribe(filter, 1, nil); !st.WaitTimeout(30*time.Second) || st.Error() != nil {
			c.Disconnect(0)
			return nil, false, fmt.Errorf("subscribe: %v", st.Error())
		}
		return c, present, nil
	}
	var m2, m3 mqtt.Client
	testutil.CheckFor(t, 90*time.Second, func() (err error) { m2, _, err = member(procs[1], "skm2", false); return })
	testutil.CheckFor(t, 90*time.Second, func() (err error) { m3, _, err = member(procs[2], "skm3", true); return })
	defer func() { m3.Disconnect(100) }()

	pub := mqtt.NewClient(opts(procs[0], "skpub", true))
	if tok := pub.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(100)
	// Probes until both members had one: node 1 knows both nodes of the
	// group. (They announced it when they joined; the kill comes after
	// 200 acknowledged messages, long after the announcements.)
	i := 0
	testutil.CheckFor(t, 90*time.Second, func() error {
		i++
		pub.Publish("sload/probe", 1, false, "probe"+strconv.Itoa(i)).WaitTimeout(10 * time.Second)
		gotMu.Lock()
		defer gotMu.Unlock()
		if len(probes) < 2 {
			return fmt.Errorf("probes reached %d deliveries", len(probes))
		}
		return nil
	})

	var mu sync.Mutex
	acked := map[int]bool{}
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for n := 1; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			tok := pub.Publish("sload/x", 1, false, strconv.Itoa(n))
			if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				return // not acknowledged: not owed
			}
			mu.Lock()
			acked[n] = true
			mu.Unlock()
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
	procs[1].cmd.Process.Kill() // SIGKILL, under load
	<-procs[1].done
	m2.Disconnect(0)
	var present bool
	testutil.CheckFor(t, 90*time.Second, func() (err error) { m2, present, err = member(procs[2], "skm2", false); return })
	defer func() { m2.Disconnect(100) }()
	if !present {
		t.Fatal("the member's session was not present on the survivor")
	}
	waitAcked(ackedCount() + 200)
	close(stop)
	<-pubDone

	testutil.CheckFor(t, 90*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		gotMu.Lock()
		defer gotMu.Unlock()
		var missing []int
		for n := range acked {
			if got[n] == 0 {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d acknowledged messages missing: %v", len(missing), len(acked), missing[:min(len(missing), 10)])
		}
		return nil
	})
	gotMu.Lock()
	dups := 0
	for _, c := range got {
		dups += max(c-1, 0)
	}
	gotMu.Unlock()
	t.Logf("%d messages acknowledged, all received by the group (%d again)", ackedCount(), dups)
}
