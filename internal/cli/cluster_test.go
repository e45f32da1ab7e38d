package cli

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// TestClusterThreeProcesses starts three `moat serve -c nodeN.yaml`
// processes, each with its data directory, one plain listener and a
// cluster section, and checks cross-node QoS 1 with mosquitto_sub on the
// third node and mosquitto_pub on the first, and a retained message set
// on the second replayed on the third.
func TestClusterThreeProcesses(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	mc := startMoatCluster(t, clusterSetup{extra: allowAllACL})
	host := mc.host

	out := &testutil.Buffer{}
	sub := exec.Command("mosquitto_sub", append(host(2), "-i", "sub3", "-q", "1", "-t", "plant/#", "-v")...)
	sub.Stdout, sub.Stderr = out, out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Process.Kill(); sub.Wait() })

	// The subscription's interest reaches node 1 through the routes.
	testutil.CheckFor(t, 60*time.Second, func() error {
		if o, err := run(t, 10*time.Second, "mosquitto_pub", append(host(0), "-q", "1", "-t", "plant/probe", "-m", "probe")...); err != nil {
			return fmt.Errorf("mosquitto_pub: %v: %s", err, o)
		}
		if !strings.Contains(out.String(), "plant/probe probe") {
			return fmt.Errorf("no probe received on node 3 yet: %q", out.String())
		}
		return nil
	})
	var lines []string
	for i := range 50 {
		lines = append(lines, fmt.Sprintf("m%03d", i))
	}
	pub := exec.Command("mosquitto_pub", append(host(0), "-i", "pub1", "-q", "1", "-t", "plant/line1", "-l")...)
	pub.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if o, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, o)
	}
	testutil.CheckFor(t, 30*time.Second, func() error {
		var got []string
		for _, l := range strings.Split(out.String(), "\n") {
			if m, ok := strings.CutPrefix(l, "plant/line1 "); ok {
				got = append(got, m)
			}
		}
		if strings.Join(got, ",") != strings.Join(lines, ",") {
			return fmt.Errorf("node 3 received %d of %d in order: %v", len(got), len(lines), got)
		}
		return nil
	})

	// A retained message set on node 2 is replayed by node 3.
	if o, err := run(t, 10*time.Second, "mosquitto_pub", append(host(1), "-q", "1", "-r", "-t", "plant/state", "-m", "running")...); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, o)
	}
	testutil.CheckFor(t, 30*time.Second, func() error {
		o, err := run(t, 5*time.Second, "mosquitto_sub", append(host(2), "-q", "1", "-t", "plant/state", "-C", "1", "-W", "2")...)
		if err != nil || strings.TrimSpace(o) != "running" {
			return fmt.Errorf("retained replay on node 3: %v %q", err, o)
		}
		return nil
	})
}
