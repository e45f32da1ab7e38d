package cli

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// TestClusterSharedThreeProcesses runs a shared subscription whose
// members are on two of three `moat serve` processes (mosquitto_sub, MQTT
// 5), published to from the third with mosquitto_pub: every message
// reaches the group exactly once and both nodes' members get a share. A
// second group with both members on one node, next to a plain subscriber
// on another, gets each message once too, and the plain subscriber all.
func TestClusterSharedThreeProcesses(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	mc := startMoatCluster(t, clusterSetup{extra: allowAllACL})
	w1 := mosquittoSub(t, append(mc.host(0), "-V", "5", "-i", "w1", "-q", "1", "-t", "$share/workers/jobs/#")...)
	w2 := mosquittoSub(t, append(mc.host(1), "-V", "5", "-i", "w2", "-q", "1", "-t", "$share/workers/jobs/#")...)
	s1 := mosquittoSub(t, append(mc.host(1), "-V", "5", "-i", "s1", "-q", "1", "-t", "$share/solo/jobs/#")...)
	s2 := mosquittoSub(t, append(mc.host(1), "-V", "5", "-i", "s2", "-q", "1", "-t", "$share/solo/jobs/#")...)
	plain := mosquittoSub(t, append(mc.host(2), "-V", "5", "-i", "plain", "-q", "1", "-t", "jobs/#")...)

	// Probes from node 3 until every member has had one: node 3 knows the
	// queue groups of nodes 1 and 2, and the plain interest of its own.
	i := 0
	testutil.CheckFor(t, 60*time.Second, func() error {
		i++
		if o, err := run(t, 10*time.Second, "mosquitto_pub", append(mc.host(2), "-q", "1", "-t", "jobs/probe", "-m", strconv.Itoa(i))...); err != nil {
			return fmt.Errorf("mosquitto_pub: %v: %s", err, o)
		}
		for name, b := range map[string]*testutil.Buffer{"w1": w1, "w2": w2, "s1": s1, "s2": s2, "plain": plain} {
			if len(payloads(b.String(), "jobs/probe")) == 0 {
				return fmt.Errorf("no probe reached %s yet", name)
			}
		}
		return nil
	})

	const n = 100
	var lines []string
	for i := range n {
		lines = append(lines, fmt.Sprintf("d%03d", i))
	}
	pub := exec.Command("mosquitto_pub", append(mc.host(2), "-V", "5", "-i", "pub3", "-q", "1", "-t", "jobs/data", "-l")...)
	pub.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if o, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, o)
	}
	exactlyOnce := func(group string, outs ...*testutil.Buffer) []int {
		var counts []int
		testutil.CheckFor(t, 30*time.Second, func() error {
			seen := map[string]int{}
			counts = counts[:0]
			for _, o := range outs {
				got := payloads(o.String(), "jobs/data")
				counts = append(counts, len(got))
				for _, p := range got {
					seen[p]++
				}
			}
			for _, l := range lines {
				if seen[l] != 1 {
					return fmt.Errorf("group %s: %s delivered %d times (per member: %v)", group, l, seen[l], counts)
				}
			}
			if len(seen) != n {
				return fmt.Errorf("group %s: %d distinct payloads", group, len(seen))
			}
			return nil
		})
		// Nothing more comes: no late duplicate.
		time.Sleep(500 * time.Millisecond)
		total := 0
		for _, o := range outs {
			total += len(payloads(o.String(), "jobs/data"))
		}
		if total != n {
			t.Fatalf("group %s: %d deliveries for %d messages", group, total, n)
		}
		return counts
	}
	if c := exactlyOnce("workers", w1, w2); c[0] == 0 || c[1] == 0 {
		t.Errorf("group workers not split across nodes 1 and 2: %v", c)
	} else {
		t.Logf("workers: node 1 got %d, node 2 got %d", c[0], c[1])
	}
	if c := exactlyOnce("solo", s1, s2); c[0] == 0 || c[1] == 0 {
		t.Errorf("group solo's members on node 2 did not take turns: %v", c)
	}
	exactlyOnce("plain", plain)
}
