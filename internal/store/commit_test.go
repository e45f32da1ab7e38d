package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// TestGroupCommit: N concurrent committers in SyncAlways share fsyncs.
// The first commit is held in the committer until the other N-1 requests
// are waiting, so they must all go into the next transaction: 2 fsyncs
// for N commits.
func TestGroupCommit(t *testing.T) {
	const n = 100
	cfg := testConfig(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	cfg.hooks = &hooks{beforeCommit: func(int) { once.Do(func() { close(entered); <-release }) }}
	s := mustOpen(t, cfg)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	commit := func(i int) {
		defer wg.Done()
		id := fmt.Sprintf("c%d", i)
		m := &Message{ID: s.NextID(), Topic: "t", Payload: []byte(id), QoS: 1}
		errs <- s.Commit(context.Background(), PutSession{&Session{ClientID: id}}, PutMessage{m},
			PutDelivery{&Delivery{ClientID: id, Seq: s.NextID(), MsgID: m.ID, QoS: 1}})
	}
	wg.Add(1)
	go commit(0)
	<-entered
	for i := 1; i < n; i++ {
		wg.Add(1)
		go commit(i)
	}
	testutil.WaitFor(t, "every commit to be submitted", 10*time.Second, func() bool { return s.pendingLen() == n-1 })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.Requests != n || st.Ops != 3*n {
		t.Fatalf("stats %+v", st)
	}
	if st.Syncs != 2 || st.Commits != 2 {
		t.Fatalf("%d commits took %d transactions and %d fsyncs, want 2", n, st.Commits, st.Syncs)
	}
	mustClose(t, s)
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if got := len(s.Recovered().Sessions); got != n {
		t.Fatalf("%d sessions recovered, want %d", got, n)
	}
}

// TestGroupCommitConcurrent runs committers without any hold: far fewer
// fsyncs than commits once they overlap, and every commit lands.
func TestGroupCommitConcurrent(t *testing.T) {
	const workers, each = 50, 20
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				if err := s.Commit(context.Background(), PutRetained{&Retained{Topic: fmt.Sprintf("%d/%d", w, i), Payload: []byte("x")}}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	t.Logf("%d commits, %d fsyncs", st.Requests, st.Syncs)
	if st.Requests != workers*each || st.Syncs >= st.Requests/2 {
		t.Errorf("%d commits took %d fsyncs", st.Requests, st.Syncs)
	}
	mustClose(t, s)
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if got := len(s.Recovered().Retained); got != workers*each {
		t.Fatalf("%d retained recovered, want %d", got, workers*each)
	}
}

// TestNothingReportedBeforeCommit: while the committer is stalled inside
// a commit, neither Commit nor CommitAsync reports success; the broker
// therefore sends no PUBACK. Once the commit completes both report, and
// the data is on disk.
func TestNothingReportedBeforeCommit(t *testing.T) {
	cfg := testConfig(t)
	entered := make(chan int, 1)
	release := make(chan struct{})
	cfg.hooks = &hooks{beforeCommit: func(n int) {
		select {
		case entered <- n:
			<-release
		default:
		}
	}}
	s := mustOpen(t, cfg)
	syncDone := make(chan error, 1)
	go func() {
		syncDone <- s.Commit(context.Background(), PutRetained{&Retained{Topic: "sync", Payload: []byte("1")}})
	}()
	<-entered
	asyncDone := make(chan error, 1)
	s.CommitAsync(func(err error) { asyncDone <- err }, PutRetained{&Retained{Topic: "async", Payload: []byte("1")}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Commit(ctx, DeleteWill{"x"}); err != context.Canceled {
		t.Fatalf("Commit with a cancelled context: %v", err)
	}
	select {
	case err := <-syncDone:
		t.Fatalf("Commit returned (%v) while its transaction was stalled", err)
	case err := <-asyncDone:
		t.Fatalf("CommitAsync reported (%v) while its transaction was stalled", err)
	default:
	}
	if got := s.Stats().Requests; got != 0 {
		t.Fatalf("%d requests reported during the stall", got)
	}
	close(release)
	if err := <-syncDone; err != nil {
		t.Fatal(err)
	}
	if err := <-asyncDone; err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if got := len(s.Recovered().Retained); got != 2 {
		t.Fatalf("%d retained after reopen, want 2", got)
	}
}

// TestFailedOpFailsOnlyItsCaller: one caller's invalid op aborts the
// shared transaction; the others are retried alone and succeed.
func TestFailedOpFailsOnlyItsCaller(t *testing.T) {
	cfg := testConfig(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	cfg.hooks = &hooks{beforeCommit: func(int) { once.Do(func() { close(entered); <-release }) }}
	s := mustOpen(t, cfg)
	defer mustClose(t, s)
	first := make(chan error, 1)
	go func() { first <- s.Commit(context.Background(), DeleteWill{"x"}) }()
	<-entered
	good, bad := make(chan error, 1), make(chan error, 1)
	go func() {
		good <- s.Commit(context.Background(), PutRetained{&Retained{Topic: "ok", Payload: []byte("1")}})
	}()
	go func() {
		bad <- s.Commit(context.Background(), PutDelivery{&Delivery{ClientID: "a", Seq: 1, MsgID: 77}})
	}()
	testutil.WaitFor(t, "both commits to be submitted", 10*time.Second, func() bool { return s.pendingLen() == 2 })
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-good; err != nil {
		t.Fatalf("the good commit failed with its neighbour: %v", err)
	}
	if err := <-bad; err == nil {
		t.Fatal("the bad commit succeeded")
	}
}

// TestDiskErrorStopsCommits: after a write to the disk failed, the store
// reports nothing more as durable (what the file holds is unknown), until
// it is reopened.
func TestDiskErrorStopsCommits(t *testing.T) {
	cfg := testConfig(t)
	var fail bool
	cfg.hooks = &hooks{diskError: func() error {
		if fail {
			return errors.New("input/output error")
		}
		return nil
	}}
	s := mustOpen(t, cfg)
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("1")}})
	fail = true
	if err := s.Commit(context.Background(), PutRetained{&Retained{Topic: "b", Payload: []byte("1")}}); !errors.Is(err, ErrFailed) {
		t.Fatalf("commit during a disk error: %v, want ErrFailed", err)
	}
	fail = false
	if err := s.Commit(context.Background(), PutRetained{&Retained{Topic: "c", Payload: []byte("1")}}); !errors.Is(err, ErrFailed) {
		t.Fatalf("commit after a disk error: %v, want ErrFailed", err)
	}
	s.Close()
	cfg.hooks = nil
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if got := len(s.Recovered().Retained); got != 1 {
		t.Fatalf("%d retained after reopen, want 1", got)
	}
}

// TestCloseEndsCommitter: Close waits for the committer goroutine (and
// every mode's ticker) to end.
func TestCloseEndsCommitter(t *testing.T) {
	testutil.CheckNoLeaks(t)
	for _, mode := range []SyncMode{SyncAlways, SyncBatch, SyncOff} {
		cfg := testConfig(t)
		cfg.Sync = mode
		s := mustOpen(t, cfg)
		mustCommit(t, s, DeleteWill{"x"})
		mustClose(t, s)
	}
}

// TestBatchModeSyncsPeriodically: SyncBatch fsyncs on its own, without
// Close, once something was committed.
func TestBatchModeSyncsPeriodically(t *testing.T) {
	cfg := testConfig(t)
	cfg.Sync, cfg.BatchInterval = SyncBatch, 5*time.Millisecond
	s := mustOpen(t, cfg)
	defer mustClose(t, s)
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("1")}})
	testutil.WaitFor(t, "a periodic fsync", 10*time.Second, func() bool { return s.Stats().Syncs >= 1 })
}

// TestSecurityRollbackAfterCrash: the counter file is refreshed while the
// store runs, not only at Close. An image of the directory taken after a
// crash (no Close) opens; the same image with the store file replaced by
// a copy from before the last counter refresh is a rollback.
func TestSecurityRollbackAfterCrash(t *testing.T) {
	cfg := testConfig(t)
	now := t0
	var mu sync.Mutex
	cfg.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := mustOpen(t, cfg)
	defer s.Close()
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("old")}})
	old := filepath.Join(t.TempDir(), "old.db")
	copyFile(t, filepath.Join(cfg.Dir, DBFile), old)
	mu.Lock()
	now = now.Add(2 * time.Second) // past CounterInterval
	mu.Unlock()
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("new")}})

	crash := cfg
	crash.Dir = t.TempDir()
	crash.Now = nil
	for _, f := range []string{DBFile, CounterFile, LogFile} {
		copyFile(t, filepath.Join(cfg.Dir, f), filepath.Join(crash.Dir, f))
	}
	c := mustOpen(t, crash)
	if r := c.Recovered().Retained; len(r) != 1 || string(r[0].Payload) != "new" {
		t.Fatalf("crash image recovered %+v", r)
	}
	mustClose(t, c)
	copyFile(t, filepath.Join(cfg.Dir, CounterFile), filepath.Join(crash.Dir, CounterFile))
	copyFile(t, old, filepath.Join(crash.Dir, DBFile))
	wantOpenErr(t, crash, ErrRollback)
}

// TestCommitAsyncFromCallback: a callback may submit the next commit (the
// broker's PUBREL after a committed PUBREC, say) without deadlocking the
// committer, also when many are chained.
func TestCommitAsyncFromCallback(t *testing.T) {
	s := mustOpen(t, testConfig(t))
	defer mustClose(t, s)
	done := make(chan error, 1)
	var step func(i int) func(error)
	step = func(i int) func(error) {
		return func(err error) {
			if err != nil || i == 500 {
				done <- err
				return
			}
			s.CommitAsync(step(i+1), PutRetained{&Retained{Topic: fmt.Sprint(i), Payload: []byte("x")}})
		}
	}
	s.CommitAsync(step(0), DeleteWill{"x"})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
