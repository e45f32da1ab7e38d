package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
)

const (
	crashChildEnv = "MOAT_STORE_CRASH_CHILD"
	// crashCkptEnv sets the child's log checkpoint size in bytes.
	crashCkptEnv = "MOAT_STORE_CRASH_CHECKPOINT"
	// crashSyncEnv sets the child's sync mode (always by default).
	crashSyncEnv = "MOAT_STORE_CRASH_SYNC"
)

// TestCrashChild is the process TestKillDuringCommits kills: it commits
// from 8 goroutines and prints "ack N" once the commit of N returned.
// Every fourth delivery is then deleted in a commit of its own (a
// subscriber's acknowledgement, usually before the next checkpoint), and
// "del N" printed once that commit returned.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("helper process for TestKillDuringCommits")
	}
	cfg := Config{Dir: dir, KEK: testKEK(t, testKey)}
	if n, err := strconv.Atoi(os.Getenv(crashCkptEnv)); err == nil {
		cfg.logCkptBytes = int64(n)
	}
	if m := os.Getenv(crashSyncEnv); m != "" {
		var err error
		if cfg.Sync, err = ParseSyncMode(m); err != nil {
			fmt.Println("sync:", err)
			os.Exit(2)
		}
	}
	s, err := Open(cfg)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	start := s.NextID()
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := start + uint64(w); ; i += 8 {
				m := &Message{ID: s.NextID(), Topic: "crash", Payload: []byte(strconv.FormatUint(i, 10)), QoS: 1}
				d := &Delivery{ClientID: "sub", Seq: s.NextID(), MsgID: m.ID, QoS: 1}
				err := s.Commit(context.Background(), PutMessage{m}, PutDelivery{d},
					PutRetained{&Retained{Topic: fmt.Sprintf("r/%d", i), Payload: []byte("x")}})
				if err != nil {
					fmt.Println("commit:", err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Fprintf(out, "ack %d\n", i)
				out.Flush()
				mu.Unlock()
				if i%4 != 0 {
					continue
				}
				if err := s.Commit(context.Background(), DeleteDelivery{ClientID: "sub", Seq: d.Seq}); err != nil {
					fmt.Println("commit:", err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Fprintf(out, "del %d\n", i)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestKillDuringCommits kills a process that commits concurrently with
// SIGKILL, three times, and checks that every commit it reported is in the
// store afterwards, and that the store verifies (a crash never leaves a
// store that is quarantined).
func TestKillDuringCommits(t *testing.T) {
	killDuringCommits(t, "", "")
}

// TestKillDuringCommitsBatchAndOff: the same in SyncBatch and SyncOff,
// whose commits are reported once written to the operating system: a
// crash of the process loses none of them either. (A checkpoint every few
// kilobytes, as below.)
func TestKillDuringCommitsBatchAndOff(t *testing.T) {
	for _, mode := range []string{"batch", "off"} {
		t.Run(mode, func(t *testing.T) { killDuringCommits(t, "8192", mode) })
	}
}

// TestKillDuringCheckpoints: the same with a checkpoint of the commit log
// every few kilobytes, so that the kills land in and around checkpoints
// too (between the store file's commit and the new log, the previous log
// beside a store file that holds it).
func TestKillDuringCheckpoints(t *testing.T) {
	killDuringCommits(t, "8192", "")
}

func killDuringCommits(t *testing.T, checkpoint, sync string) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	mustCommit(t, s, PutSession{&Session{ClientID: "sub", ExpiryInterval: NeverExpires}})
	mustClose(t, s)
	acked, deleted := map[string]bool{}, map[string]bool{}
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+cfg.Dir, crashCkptEnv+"="+checkpoint, crashSyncEnv+"="+sync)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		n := 0
		for sc.Scan() {
			line := sc.Text()
			if id, ok := strings.CutPrefix(line, "del "); ok {
				deleted[id] = true
				continue
			}
			id, ok := strings.CutPrefix(line, "ack ")
			if !ok {
				t.Fatalf("round %d: child: %s", round, line)
			}
			acked[id] = true
			if n++; n == 300 {
				cmd.Process.Kill() // SIGKILL mid-stream; acks already printed still count
			}
		}
		cmd.Wait()
		if n < 300 {
			t.Fatalf("round %d: child stopped after %d acks", round, n)
		}
		s, err := Open(cfg)
		if err != nil {
			t.Fatalf("round %d: Open after SIGKILL: %v", round, err)
		}
		st := s.Recovered()
		have := map[string]bool{}
		for _, d := range st.Sessions["sub"].Deliveries {
			have[string(st.Messages[d.MsgID].Payload)] = true
		}
		ret := map[string]bool{}
		for _, r := range st.Retained {
			ret[strings.TrimPrefix(r.Topic, "r/")] = true
		}
		for id := range acked {
			// A delete that was not reported may have been committed
			// all the same.
			n, _ := strconv.ParseUint(id, 10, 64)
			if (!have[id] && n%4 != 0) || !ret[id] {
				t.Fatalf("round %d: acknowledged commit %s lost (delivery %v, retained %v)", round, id, have[id], ret[id])
			}
			if deleted[id] && have[id] {
				t.Fatalf("round %d: delivery %s back after its acknowledged delete", round, id)
			}
		}
		t.Logf("round %d: %d acknowledged commits, all present, %d deleted (%d in store)", round, len(acked), len(deleted), len(have))
		mustClose(t, s)
	}
}
