package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// moatCluster is three `moat serve -c moat.yaml` processes joined in one
// cluster on loopback, each with its directory (dirs[i], holding
// moat.yaml and the data directory "data") and one plain listener.
type moatCluster struct {
	dirs  []string
	procs []*moatProc
	mqtt  []int
}

// startMoatCluster writes the three nodes' configurations, with extra
// (YAML, may use %[1]d for the node's number 1..3) added to each, and
// starts them.
func startMoatCluster(t *testing.T, extra string) *moatCluster {
	t.Helper()
	return startMoatClusterWith(t, extra, nil)
}

// startMoatClusterWith is startMoatCluster with prepare run in each node's
// directory before the node starts (files its configuration names).
func startMoatClusterWith(t *testing.T, extra string, prepare func(dir string)) *moatCluster {
	t.Helper()
	mc := &moatCluster{}
	procs := launchCluster(t, func(routes []int, launched *[]*moatProc) error {
		dir := t.TempDir()
		var peers []string
		for _, r := range routes {
			peers = append(peers, fmt.Sprintf("%q", "127.0.0.1:"+strconv.Itoa(r)))
		}
		mc.dirs = nil
		for i := range 3 {
			nd := filepath.Join(dir, fmt.Sprintf("node%d", i+1))
			if err := os.MkdirAll(nd, 0o700); err != nil {
				t.Fatal(err)
			}
			ex := extra
			if strings.Contains(ex, "%[1]d") {
				ex = fmt.Sprintf(ex, i+1)
			}
			writeFile(t, filepath.Join(nd, "moat.yaml"), fmt.Sprintf(`data_dir: data
listeners:
  - {address: "127.0.0.1:0", transport: tcp, allow_anonymous: true}
cluster:
  name: test
  node: node%d
  listen: "127.0.0.1:%d"
  peers: [%s]
`, i+1, routes[i], strings.Join(peers, ", "))+ex)
			mc.dirs = append(mc.dirs, nd)
			if prepare != nil {
				prepare(nd)
			}
		}
		for i := range 3 {
			p, err := launchNode(t, mc.dirs[i])
			if err != nil {
				return err
			}
			*launched = append(*launched, p)
		}
		return nil
	})
	for _, p := range procs {
		mc.procs = append(mc.procs, p)
		mc.mqtt = append(mc.mqtt, p.port(0))
	}
	return mc
}

// host returns mosquitto's arguments to reach node i (0..2).
func (mc *moatCluster) host(i int) []string {
	return []string{"-h", "127.0.0.1", "-p", strconv.Itoa(mc.mqtt[i])}
}

// allowAllACL lets every client do everything: routing is under test,
// not the policy.
const allowAllACL = `acl:
  rules:
    - {name: all, effect: allow, subjects: {all: true}, actions: [publish, subscribe, receive], topics: ["#"]}
`

// mosquittoSub runs mosquitto_sub with args (-v is added) until the test
// ends, and returns its output.
func mosquittoSub(t *testing.T, args ...string) *testutil.Buffer {
	t.Helper()
	out := &testutil.Buffer{}
	sub := exec.Command("mosquitto_sub", append(args, "-v")...)
	sub.Stdout, sub.Stderr = out, out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Process.Kill(); sub.Wait() })
	return out
}

// payloads returns the payloads of topic in a mosquitto_sub -v output.
func payloads(out, topic string) []string {
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if p, ok := strings.CutPrefix(l, topic+" "); ok {
			got = append(got, p)
		}
	}
	return got
}

// TestClusterSharedThreeProcesses runs a shared subscription whose
// members are on two of three `moat serve` processes (mosquitto_sub, MQTT
// 5), published to from the third with mosquitto_pub: every message
// reaches the group exactly once and both nodes' members get a share. A
// second group with both members on one node, next to a plain subscriber
// on another, gets each message once too, and the plain subscriber all.
func TestClusterSharedThreeProcesses(t *testing.T) {
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	mc := startMoatCluster(t, allowAllACL)
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
