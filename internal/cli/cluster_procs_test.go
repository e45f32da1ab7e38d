package cli

import (
	"errors"
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
}

// clusterSetup is what differs between the clusters the tests start.
type clusterSetup struct {
	// name is the cluster's name; "" is "test".
	name string
	// extra is YAML added to every node's configuration; %[1]d in it is
	// the node's number (1..3).
	extra string
	// prepare, if set, runs for node i (0..2) in its directory once
	// every node's configuration is written, before any node starts
	// (files its configuration names, admin tokens).
	prepare func(i int, dir string)
}

// startMoatCluster starts three `moat serve -c moat.yaml` processes as
// one cluster, each with its data directory, one plain listener on a
// port of its own, named alike on every node (so that the sessions of
// anonymous clients belong to the same owner on every node), a cluster
// section and cs.extra. They restart on the same ports
// (moatProc.restart). It returns once every node has its JetStream
// quorum and has imported its sessions: until then persistent sessions
// are refused (0x88), and mosquitto_sub does not retry.
func startMoatCluster(t *testing.T, cs clusterSetup) *moatCluster {
	t.Helper()
	name := cs.name
	if name == "" {
		name = "test"
	}
	mc := &moatCluster{}
	mc.procs = launchCluster(t, func(routes []int, launched *[]*moatProc) error {
		dir := t.TempDir()
		var peers []string
		for _, r := range routes {
			peers = append(peers, fmt.Sprintf("%q", "127.0.0.1:"+strconv.Itoa(r)))
		}
		mc.dirs = nil
		ports := make([]int, 3)
		for i := range 3 {
			nd := filepath.Join(dir, fmt.Sprintf("node%d", i+1))
			if err := os.MkdirAll(nd, 0o700); err != nil {
				t.Fatal(err)
			}
			ex := cs.extra
			if strings.Contains(ex, "%[1]d") {
				ex = fmt.Sprintf(ex, i+1)
			}
			ports[i] = testutil.FreePort(t)
			writeFile(t, filepath.Join(nd, "moat.yaml"), fmt.Sprintf(`data_dir: data
listeners:
  - {name: mqtt, address: "127.0.0.1:%d", transport: tcp, allow_anonymous: true}
cluster:
  name: %s
  node: node%d
  listen: "127.0.0.1:%d"
  peers: [%s]
`, ports[i], name, i+1, routes[i], strings.Join(peers, ", "))+ex)
			mc.dirs = append(mc.dirs, nd)
		}
		for i, nd := range mc.dirs {
			if cs.prepare != nil {
				cs.prepare(i, nd)
			}
		}
		for i, nd := range mc.dirs {
			args := []string{"-c", "moat.yaml"}
			checkMoat(t, nd, args)
			p, err := launchMoat(t, nd, args, portsBound([]int{ports[i]}))
			if err != nil {
				return err
			}
			*launched = append(*launched, p)
		}
		return nil
	})
	testutil.CheckFor(t, 120*time.Second, func() error {
		for i, p := range mc.procs {
			if !strings.Contains(p.logs.String(), "cluster: sessions of this node imported") {
				return fmt.Errorf("node %d has not imported its sessions yet", i+1)
			}
		}
		return nil
	})
	return mc
}

// launchCluster starts the three processes of a cluster with start, which
// is given three route ports of 127.0.0.1 that were free a moment ago
// and appends each process it launched to launched. The configurations
// share those ports, so the retry of one process on new ports
// (startMoatOn) cannot help when another process takes one: when start
// fails with testutil.ErrPortTaken, the processes it launched are
// stopped and the cluster starts again on new ports (up to five times);
// any other error fails the test.
func launchCluster(t *testing.T, start func(routes []int, launched *[]*moatProc) error) []*moatProc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		routes := []int{testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)}
		var procs []*moatProc
		err := start(routes, &procs)
		if err == nil {
			return procs
		}
		for _, p := range procs {
			p.cmd.Process.Kill()
			<-p.done
		}
		if !errors.Is(err, testutil.ErrPortTaken) || attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("cluster start, attempt %d: a port was taken; starting again on new ports", attempt)
	}
}

// host returns mosquitto's arguments to reach node i (0..2).
func (mc *moatCluster) host(i int) []string { return hostArgs(mc.procs[i]) }

func hostArgs(p *moatProc) []string {
	return []string{"-h", "127.0.0.1", "-p", strconv.Itoa(p.port(0))}
}

// allowAllACL lets every client do everything: the cluster is under
// test, not the policy.
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
