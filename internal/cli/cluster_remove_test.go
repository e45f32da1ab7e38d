package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/cluster"
	"github.com/moatmq/moat/internal/testutil"
)

// TestClusterRemoveNodeThreeProcesses: `moat cluster remove-node` against
// three `moat serve` processes. A viewer's token is refused; a node that
// is alive is refused with a clear message (exit 1); once node 3 is
// SIGKILLed it is removed, and node 1's status no longer counts it: two
// nodes, JetStream cluster size 2, node 3 listed as removed.
func TestClusterRemoveNodeThreeProcesses(t *testing.T) {
	t.Parallel()
	var operatorFile, viewerFile string
	procs := startMoatCluster(t, clusterSetup{name: "plant-r", extra: allowAllACL,
		prepare: func(i int, dir string) {
			if i != 0 {
				return
			}
			f, err := os.OpenFile(filepath.Join(dir, "moat.yaml"), os.O_APPEND|os.O_WRONLY, 0)
			if err == nil {
				_, err = f.WriteString("admin: {listen: \"127.0.0.1:0\"}\n")
				err = errors.Join(err, f.Close())
			}
			if err != nil {
				t.Fatal(err)
			}
			operatorFile, viewerFile = filepath.Join(dir, "operator.token"), filepath.Join(dir, "viewer.token")
			writeFile(t, operatorFile, createToken(t, dir, "ops", "operator")+"\n")
			writeFile(t, viewerFile, createToken(t, dir, "look", "viewer")+"\n")
		}}).procs
	adminAddr := procs[0].logAddr(t, "admin: serving the API", "address")
	remove := func(tokenFile string, args ...string) (string, string, int) {
		return moat(t, append([]string{"cluster", "remove-node", "--admin", adminAddr, "--token-file", tokenFile}, args...)...)
	}
	testutil.CheckFor(t, 60*time.Second, func() error {
		out, errs, code := moat(t, "cluster", "status", "--admin", adminAddr, "--token-file", viewerFile)
		if code != 0 {
			return fmt.Errorf("exit %d:\n%s%s", code, out, errs)
		}
		return nil
	})

	if out, errs, code := remove(viewerFile, "node3"); code != 1 || !strings.Contains(errs, "operator") {
		t.Errorf("a viewer's removal: exit %d\n%s%s", code, out, errs)
	}
	if out, errs, code := remove(operatorFile, "node3"); code != 1 || !strings.Contains(errs, "the node is alive: node3 (heard from") ||
		!strings.Contains(errs, "--force") {
		t.Errorf("removing a live node: exit %d\n%s%s", code, out, errs)
	}
	if out, errs, code := remove(operatorFile, "node9"); code != 1 || !strings.Contains(errs, `no node "node9"`) {
		t.Errorf("removing an unknown node: exit %d\n%s%s", code, out, errs)
	}

	if err := procs[2].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-procs[2].done
	// Once the dead node's streams have elected other leaders the
	// removal takes seconds; on a loaded machine an attempt may run into
	// the elections and fail or take long, so there is room for more.
	testutil.CheckFor(t, 5*time.Minute, func() error {
		out, errs, code := remove(operatorFile, "node3")
		// A second attempt finds it out of the meta group already.
		if code != 0 || !strings.Contains(out, "node node3 removed from the cluster: it left the JetStream meta group") &&
			!strings.Contains(out, "node node3 removed from the cluster: it was no longer in the JetStream meta group") {
			return fmt.Errorf("exit %d:\n%s%s", code, out, errs)
		}
		return nil
	})
	testutil.CheckFor(t, 60*time.Second, func() error {
		out, errs, code := moat(t, "cluster", "status", "--admin", adminAddr, "--token-file", viewerFile, "--json")
		var st cluster.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return fmt.Errorf("exit %d: %v\n%s%s", code, err, out, errs)
		}
		var names []string
		for _, n := range st.Nodes {
			names = append(names, n.Node)
		}
		if st.MetaSize != 2 || !slices.Equal(names, []string{"node1", "node2"}) || !slices.Equal(st.Removed, []string{"node3"}) {
			return fmt.Errorf("status after the removal: size %d, nodes %q, removed %q, problems %q", st.MetaSize, names, st.Removed, st.Problems)
		}
		return nil
	})

	// Started again on its data directory, node 3 finds its stored
	// removal and stops with the reason and what to do (exit 1).
	again, err := launchMoat(t, procs[2].dir, procs[2].args, func(*moatProc) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-again.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the removed node, started again on its data, still runs:\n%s", again.logs.String())
	}
	var exit *exec.ExitError
	logs := again.logs.String()
	if !errors.As(again.err, &exit) || exit.ExitCode() != 1 || !strings.Contains(logs, "refuses to rejoin") ||
		!strings.Contains(logs, "removed from cluster plant-r by node node1") || !strings.Contains(logs, "give it a new cluster.node") {
		t.Fatalf("the removed node started again: %v\n%s", again.err, logs)
	}
}
