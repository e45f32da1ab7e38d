package cluster

import (
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// Starting three nodes costs seconds, spent mostly waiting for the
// NATS elections of the meta group, the streams and the consumers. So
// tests that need only a healthy cluster share one (commonCluster).
//
// Every other test starts nodes of its own and runs in parallel
// (t.Parallel, as many at once as -parallel allows, GOMAXPROCS by
// default). Run one after the other, the package's tests kept one core
// busy 40 % of the time (331 s of user and 83 s of system time in 17 min
// 12 s, 2026-12-07): they wait on elections and timeouts, not on the
// CPU. The tests on the common cluster run first, one at a time, as
// tests without t.Parallel do. A route port found free may be taken by
// another test's listener before a node binds it: the helpers that
// start a test's nodes (startCluster, startFresh, startOwn) then start
// them again on new ports, and those that restart nodes (startAgain,
// restartNodes) move them to new ones.

// common is the shared cluster: started by the first test that asks for
// it, closed once every test has run (TestMain), before the check for
// leaked goroutines.
var common struct {
	once     sync.Once
	nodes    []*testNode
	err      error
	mu       sync.Mutex
	cleanups []func()
	dir      string
	// log keeps the nodes' last lines, printed by a test on the
	// cluster that fails (they may include earlier tests' lines).
	log failLog
}

// commonCluster returns the shared cluster. A test on it must leave it
// healthy for the next (no node stopped, no hook left installed), use
// client IDs, topics and streams of its own, and not run in parallel
// with others; counters of the nodes' Status carry the earlier tests'
// traffic.
func commonCluster(t *testing.T) []*testNode {
	t.Helper()
	common.once.Do(func() {
		common.dir, common.err = os.MkdirTemp("", "moat-cluster-common")
		if common.err != nil {
			return
		}
		// Logged to no test: the cluster outlives the test that
		// started it.
		h := slog.NewTextHandler(&common.log, &slog.HandlerOptions{Level: slog.LevelInfo})
		for attempt := 0; attempt < 3; attempt++ {
			common.nodes, common.err = launchNodes(addCommonCleanup, h, common.dir, freePorts(t, 3), nil, nil)
			if common.err == nil {
				return
			}
		}
	})
	if common.err != nil {
		t.Fatalf("the common cluster: %v", common.err)
	}
	t.Cleanup(func() { common.log.printIfFailed(t, "the common cluster's last log lines") })
	return common.nodes
}

func addCommonCleanup(f func()) {
	common.mu.Lock()
	defer common.mu.Unlock()
	common.cleanups = append(common.cleanups, f)
}

// closeCommon stops the common cluster, if a test started it.
func closeCommon() {
	common.mu.Lock()
	fs := common.cleanups
	common.cleanups = nil
	common.mu.Unlock()
	for _, f := range slices.Backward(fs) {
		f()
	}
	if common.dir != "" {
		os.RemoveAll(common.dir)
	}
}

// closingRun runs the tests, then stops the common cluster.
type closingRun struct{ m *testing.M }

func (r closingRun) Run() int {
	defer closeCommon()
	return r.m.Run()
}

// TestMain checks, once every test has run and the common cluster is
// stopped, that no goroutine is left (testutil.VerifyTestMain, which
// would check before the cluster is stopped).
func TestMain(m *testing.M) { goleak.VerifyTestMain(closingRun{m}) }
