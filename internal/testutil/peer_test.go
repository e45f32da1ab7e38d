package testutil

import (
	"errors"
	"os/exec"
	"testing"
)

func TestMain(m *testing.M) { VerifyTestMain(m) }

// TestStartPeerRetriesTakenPort: a peer that exits saying its address is
// in use is started again on new ports, as Mosquitto does when another
// process binds the picked port first.
func TestStartPeerRetriesTakenPort(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	var seen [][]int
	p := StartPeer(t, Peer{
		Name:  "fake",
		Ports: 2,
		Command: func(ports []int) *exec.Cmd {
			seen = append(seen, ports)
			if len(seen) == 1 {
				return exec.Command(sh, "-c", "echo 'Error: Unable to create websockets listener on port 1.' >&2; exit 1")
			}
			return exec.Command(sh, "-c", "exec sleep 60")
		},
		// The first attempt never binds, so it is never ready.
		Ready: func([]int) error {
			if len(seen) == 1 {
				return errors.New("not listening")
			}
			return nil
		},
	})
	if len(seen) != 2 {
		t.Fatalf("peer started %d times, want 2", len(seen))
	}
	if p.Exited() || len(p.Ports) != 2 || p.Ports[0] != seen[1][0] {
		t.Fatalf("running peer %v, want the second attempt's ports %v", p.Ports, seen[1])
	}
}
