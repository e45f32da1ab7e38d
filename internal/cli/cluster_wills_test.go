package cli

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// TestClusterWillOfKilledNode: three `moat serve` processes with
// cluster.adopt_after 10s. Two mosquitto_sub clients with wills, a clean
// session and a persistent MQTT 5 one, are connected to node 3 when it
// is killed with SIGKILL. Their wills reach a subscriber on node 1 once
// each, not before node 3 is missed and the grace period has run.
func TestClusterWillOfKilledNode(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub")
	mc := startMoatCluster(t, clusterSetup{extra: "  adopt_after: 10s\n" + allowAllACL})
	watch := mosquittoSub(t, append(mc.host(0), "-i", "wwatch", "-q", "1", "-t", "wills/#")...)
	testutil.CheckFor(t, 60*time.Second, func() error {
		if o, err := run(t, 10*time.Second, "mosquitto_pub", append(mc.host(2), "-q", "1", "-t", "wills/probe", "-m", "probe")...); err != nil {
			return fmt.Errorf("mosquitto_pub: %v: %s", err, o)
		}
		if !strings.Contains(watch.String(), "wills/probe probe") {
			return fmt.Errorf("no probe received on node 1 yet: %q", watch.String())
		}
		return nil
	})
	clean := mosquittoSub(t, append(mc.host(2), "-i", "wclean", "-q", "1", "-t", "ready/#",
		"--will-topic", "wills/clean", "--will-payload", "clean gone", "--will-qos", "1")...)
	pers := mosquittoSub(t, append(mc.host(2), "-V", "5", "-c", "-x", "600", "-i", "wpers", "-q", "1", "-t", "ready/#",
		"--will-topic", "wills/pers", "--will-payload", "pers gone", "--will-qos", "1")...)
	// Both are connected and subscribed once they receive this.
	testutil.CheckFor(t, 60*time.Second, func() error {
		if o, err := run(t, 10*time.Second, "mosquitto_pub", append(mc.host(2), "-q", "1", "-t", "ready/x", "-m", "go")...); err != nil {
			return fmt.Errorf("mosquitto_pub: %v: %s", err, o)
		}
		if !strings.Contains(clean.String(), "ready/x go") || !strings.Contains(pers.String(), "ready/x go") {
			return fmt.Errorf("the will clients are not subscribed yet: %q %q", clean.String(), pers.String())
		}
		return nil
	})

	mc.procs[2].cmd.Process.Kill() // SIGKILL
	<-mc.procs[2].done
	// Missed after 6 s, adopted 10 s later: nothing before.
	time.Sleep(5 * time.Second)
	if got := payloads(watch.String(), "wills/clean"); len(got) != 0 {
		t.Fatalf("the clean session's will arrived %v before the grace period ran", got)
	}
	if got := payloads(watch.String(), "wills/pers"); len(got) != 0 {
		t.Fatalf("the persistent session's will arrived %v before the grace period ran", got)
	}
	testutil.CheckFor(t, 90*time.Second, func() error {
		if len(payloads(watch.String(), "wills/clean")) == 0 || len(payloads(watch.String(), "wills/pers")) == 0 {
			return fmt.Errorf("the wills have not arrived on node 1: %q", watch.String())
		}
		return nil
	})
	time.Sleep(3 * time.Second) // a second copy would come from the other survivor at once
	for topic, want := range map[string]string{"wills/clean": "clean gone", "wills/pers": "pers gone"} {
		if got := payloads(watch.String(), topic); len(got) != 1 || got[0] != want {
			t.Fatalf("%s: got %q; want %q once", topic, got, want)
		}
	}
}
