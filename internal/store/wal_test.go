package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/moatmq/moat/internal/testutil"
)

// logConfig is a SyncAlways store whose log is never checkpointed while
// it runs (only at Open and Close), on a clock that stands still, so
// that the counter file names only the first commit after Open.
func logConfig(t *testing.T) Config {
	cfg := testConfig(t)
	cfg.Now = func() time.Time { return t0 }
	cfg.logCkptBytes = 1 << 40
	cfg.logCkptEvery = time.Hour
	return cfg
}

// crashImage copies the store's files as a crash (SIGKILL, power loss
// after the last fsync) would leave them, without closing the store: the
// engine's file as of the last checkpoint, the log and the counter file.
func crashImage(t *testing.T, cfg Config) Config {
	t.Helper()
	img := cfg
	img.Dir = t.TempDir()
	img.Now = nil
	for _, f := range []string{DBFile, CounterFile, LogFile} {
		if _, err := os.Stat(filepath.Join(cfg.Dir, f)); err == nil {
			copyFile(t, filepath.Join(cfg.Dir, f), filepath.Join(img.Dir, f))
		}
	}
	return img
}

// logSpans returns the [start, end) offsets of each record of a log file.
func logSpans(t *testing.T, b []byte) [][2]int {
	t.Helper()
	var spans [][2]int
	for off := logHeaderLen; off < len(b); {
		n := int(binary.BigEndian.Uint32(b[off:]))
		spans = append(spans, [2]int{off, off + logLenLen + n})
		off += logLenLen + n
	}
	return spans
}

func retainedTopics(st *State) map[string]string {
	out := map[string]string{}
	for _, r := range st.Retained {
		out[r.Topic] = string(r.Payload)
	}
	return out
}

// logged commits n retained messages, one commit each, to a store that
// stays open, and returns the crash image taken afterwards.
func logged(t *testing.T, n int) (Config, *Store) {
	t.Helper()
	cfg := logConfig(t)
	s := mustOpen(t, cfg)
	t.Cleanup(func() { s.Close() })
	for i := range n {
		mustCommit(t, s, PutRetained{&Retained{Topic: fmt.Sprintf("t/%d", i), Payload: []byte(fmt.Sprint(i))}})
	}
	return cfg, s
}

// TestLogReplay: commits reported durable are in the log, not yet in
// the engine's file; a crash image opens with every one of them, and the
// store file alone does not hold them.
func TestLogReplay(t *testing.T) {
	cfg, s := logged(t, 20)
	img := crashImage(t, cfg)
	b, _ := os.ReadFile(filepath.Join(img.Dir, LogFile))
	if n := len(logSpans(t, b)); n != 20 {
		t.Fatalf("the log holds %d records, want 20 (one per commit)", n)
	}
	if st := s.Stats(); st.Syncs != 20 || st.Checkpoints != 0 {
		t.Fatalf("%d fsyncs and %d checkpoints for 20 commits, want 20 and 0", st.Syncs, st.Checkpoints)
	}
	// Without the log, the engine's file has none of them (the counter
	// file then names a commit the file lacks).
	bare := crashImage(t, cfg)
	os.Remove(filepath.Join(bare.Dir, LogFile))
	wantOpenErr(t, bare, ErrRollback)

	r := mustOpen(t, img)
	got := retainedTopics(r.Recovered())
	mustClose(t, r)
	for i := range 20 {
		if got[fmt.Sprintf("t/%d", i)] != fmt.Sprint(i) {
			t.Fatalf("commit %d lost after the crash: %v", i, got)
		}
	}
	// The image was checkpointed at Open: it opens again, and the old
	// log is gone.
	r = mustOpen(t, img)
	if n := len(r.Recovered().Retained); n != 20 {
		t.Fatalf("second open: %d retained, want 20", n)
	}
	mustClose(t, r)
	if b, _ := os.ReadFile(filepath.Join(img.Dir, LogFile)); len(b) != logHeaderLen {
		t.Fatalf("the log after a clean close is %d bytes, want an empty log", len(b))
	}
}

// TestLogBatchAndOff: SyncBatch and SyncOff write commits to the log as
// SyncAlways does, without an fsync per commit: SyncBatch fsyncs the log
// every BatchInterval (none within the test's hour), SyncOff never. A
// crash of the process (an image of the files) loses none of them.
func TestLogBatchAndOff(t *testing.T) {
	for _, mode := range []SyncMode{SyncBatch, SyncOff} {
		t.Run(mode.String(), func(t *testing.T) {
			cfg := logConfig(t)
			cfg.Sync, cfg.BatchInterval = mode, time.Hour
			s := mustOpen(t, cfg)
			defer s.Close()
			for i := range 20 {
				mustCommit(t, s, PutRetained{&Retained{Topic: fmt.Sprintf("t/%d", i), Payload: []byte(fmt.Sprint(i))}})
			}
			if st := s.Stats(); st.Syncs != 0 || st.Checkpoints != 0 || st.Commits != 20 {
				t.Fatalf("%d fsyncs, %d checkpoints and %d commits for 20 commits, want 0, 0 and 20", st.Syncs, st.Checkpoints, st.Commits)
			}
			img := crashImage(t, cfg)
			b, _ := os.ReadFile(filepath.Join(img.Dir, LogFile))
			if n := len(logSpans(t, b)); n != 20 {
				t.Fatalf("the log holds %d records, want 20 (one per commit)", n)
			}
			img.Sync = mode
			r := mustOpen(t, img)
			got := retainedTopics(r.Recovered())
			mustClose(t, r)
			for i := range 20 {
				if got[fmt.Sprintf("t/%d", i)] != fmt.Sprint(i) {
					t.Fatalf("commit %d lost after the crash: %v", i, got)
				}
			}
		})
	}
}

// TestBatchModeSyncsLog: SyncBatch fsyncs the log on its own, every
// BatchInterval, and the records it covered are marked durable for the
// next ones (recovery tells damage from a torn tail by them).
func TestBatchModeSyncsLog(t *testing.T) {
	cfg := logConfig(t)
	cfg.Sync, cfg.BatchInterval = SyncBatch, 5*time.Millisecond
	s := mustOpen(t, cfg)
	defer s.Close()
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("1")}})
	testutil.WaitFor(t, "a periodic fsync of the log", 10*time.Second, func() bool { return s.logDurable.Load() == 1 })
	mustCommit(t, s, PutRetained{&Retained{Topic: "b", Payload: []byte("2")}})
	lc, err := readLog(filepath.Join(cfg.Dir, LogFile), s.keys)
	if err != nil || len(lc.records) != 2 || lc.records[1].durable != 1 {
		t.Fatalf("log after an fsync: %v, %+v", err, lc)
	}
}

// TestLogTornTail: a crash during the append of the last record leaves
// it cut at any byte, or zero-filled: that is the end of the log, the
// records before it are applied, and the store opens.
func TestLogTornTail(t *testing.T) {
	cfg, _ := logged(t, 5)
	img := crashImage(t, cfg)
	path := filepath.Join(img.Dir, LogFile)
	full, _ := os.ReadFile(path)
	spans := logSpans(t, full)
	last := spans[len(spans)-1]
	keys := openKeys(t, img)
	for cut := last[0]; cut < last[1]; cut++ {
		lc, err := parseLog(full[:cut], keys)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if len(lc.records) != 4 || lc.torn != (cut > last[0]) {
			t.Fatalf("cut at %d: %d records, torn %v; want 4", cut, len(lc.records), lc.torn)
		}
	}
	zeroed := bytes.Clone(full)
	clear(zeroed[last[0]+2:])
	if lc, err := parseLog(zeroed, keys); err != nil || len(lc.records) != 4 || !lc.torn {
		t.Fatalf("zero-filled last record: %v", err)
	}
	// A damaged last record cannot be told from an interrupted append:
	// it is cut too.
	flipped := bytes.Clone(full)
	flipped[last[1]-3] ^= 1
	if lc, err := parseLog(flipped, keys); err != nil || len(lc.records) != 4 || !lc.torn {
		t.Fatalf("flipped byte in the last record: %v", err)
	}
	extended := append(bytes.Clone(full), make([]byte, 100)...)
	if lc, err := parseLog(extended, keys); err != nil || len(lc.records) != 5 || !lc.torn {
		t.Fatalf("log followed by zeros: %v", err)
	}
	// Whole stores, cut at a few offsets of the last record.
	for _, cut := range []int{last[0] + 1, last[0] + logLenLen, (last[0] + last[1]) / 2, last[1] - 1} {
		c := crashImage(t, img)
		os.WriteFile(filepath.Join(c.Dir, LogFile), full[:cut], 0o600)
		s := mustOpen(t, c)
		got := retainedTopics(s.Recovered())
		mustClose(t, s)
		if len(got) != 4 || got["t/4"] != "" {
			t.Fatalf("cut at %d: recovered %v, want t/0 to t/3", cut, got)
		}
	}
}

// openKeys derives the record keys of the store in cfg (closed).
func openKeys(t *testing.T, cfg Config) *recordKeys {
	t.Helper()
	c := crashImage(t, cfg)
	os.Remove(filepath.Join(c.Dir, LogFile))
	os.Remove(filepath.Join(c.Dir, CounterFile))
	c.readOnly = true
	s := &Store{cfg: c, path: filepath.Join(c.Dir, DBFile), refs: map[uint64]int{}, prefs: map[string]int{}}
	s.cfg.setDefaults()
	if err := s.resolveKEK(true); err != nil {
		t.Fatal(err)
	}
	if err := s.openDB(); err != nil {
		t.Fatal(err)
	}
	defer s.db.Close()
	if err := s.db.View(s.loadKey); err != nil {
		t.Fatal(err)
	}
	return s.keys
}

// TestSecurityLogTampered: a flipped byte in a record before the last, in
// the header, a record removed, moved or repeated, a record copied from
// another log of the same store, and a log of another store are each
// detected: the store does not open (ErrCorrupt) and is quarantined with
// its log.
func TestSecurityLogTampered(t *testing.T) {
	cfg, s := logged(t, 6)
	img := crashImage(t, cfg)
	full, _ := os.ReadFile(filepath.Join(img.Dir, LogFile))
	spans := logSpans(t, full)
	rec := func(i int) []byte { return full[spans[i][0]:spans[i][1]] }
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	// Another log of the same store: the one after a checkpoint.
	if err := s.syncView(func(*bolt.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, PutRetained{&Retained{Topic: "t/x", Payload: []byte("x")}})
	mustCommit(t, s, PutRetained{&Retained{Topic: "t/y", Payload: []byte("y")}})
	later, _ := os.ReadFile(filepath.Join(cfg.Dir, LogFile))
	lspans := logSpans(t, later)

	other, _ := logged(t, 6)
	otherLog, _ := os.ReadFile(filepath.Join(other.Dir, LogFile))

	flipped := bytes.Clone(full)
	flipped[spans[2][0]+logLenLen+5] ^= 1
	flippedLen := bytes.Clone(full)
	flippedLen[spans[1][0]+3] ^= 1
	header := bytes.Clone(full)
	header[30] ^= 1
	longer := bytes.Clone(full)
	binary.BigEndian.PutUint32(longer[spans[1][0]:], 1<<29) // past the end of the file
	cases := map[string][]byte{
		"flipped byte in a middle record": flipped,
		"flipped length of a record":      flippedLen,
		"length past the end of the file": longer,
		"flipped byte in the header":      header,
		"record removed":                  join(full[:spans[2][0]], full[spans[3][0]:]),
		"records swapped":                 join(full[:spans[2][0]], rec(3), rec(2), full[spans[4][0]:]),
		"record repeated":                 join(full[:spans[3][0]], rec(2), full[spans[3][0]:]),
		"record from another log":         join(full[:spans[2][0]], later[lspans[0][0]:lspans[0][1]], full[spans[3][0]:]),
		"log of another store":            otherLog,
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			c := crashImage(t, img)
			os.WriteFile(filepath.Join(c.Dir, LogFile), b, 0o600)
			wantOpenErr(t, c, ErrCorrupt)
			q, qe, err := OpenOrQuarantine(c)
			if err != nil || qe == nil {
				t.Fatalf("OpenOrQuarantine: %v %v", qe, err)
			}
			mustClose(t, q)
			if _, err := os.Stat(filepath.Join(c.Dir, LogFile+strings.TrimPrefix(filepath.Base(qe.Path), DBFile))); err != nil {
				t.Fatalf("the log was not moved aside with the store: %v", err)
			}
		})
	}
	// The later log beside the store file of the crash image (older
	// than the log): the store file lacks what the log starts from.
	c := crashImage(t, img)
	os.WriteFile(filepath.Join(c.Dir, LogFile), later, 0o600)
	wantOpenErr(t, c, ErrRollback)
}

// TestLogCheckpoint: the log is checkpointed into the engine's file once
// it holds logCkptBytes, and stays bounded; a crash between a
// checkpoint's engine commit and the new log (the previous log still in
// place) opens with everything.
func TestLogCheckpoint(t *testing.T) {
	cfg := logConfig(t)
	cfg.logCkptBytes = 4096
	s := mustOpen(t, cfg)
	defer s.Close()
	payload := bytes.Repeat([]byte("p"), 500)
	for i := range 100 {
		mustCommit(t, s, PutRetained{&Retained{Topic: fmt.Sprintf("t/%d", i), Payload: payload}})
		if fi, err := os.Stat(filepath.Join(cfg.Dir, LogFile)); err != nil || fi.Size() > 4096+2048 {
			t.Fatalf("the log grew to %d bytes past a 4096-byte checkpoint policy (%v)", fi.Size(), err)
		}
	}
	if n := s.Stats().Checkpoints; n < 5 {
		t.Fatalf("%d checkpoints for about 70 KB of log, want more", n)
	}
	img := crashImage(t, cfg)
	r := mustOpen(t, img)
	if n := len(r.Recovered().Retained); n != 100 {
		t.Fatalf("crash image after checkpoints: %d retained, want 100", n)
	}
	mustClose(t, r)

	// The previous log beside a checkpointed store file.
	cfg2, s2 := logged(t, 3)
	prev, _ := os.ReadFile(filepath.Join(cfg2.Dir, LogFile))
	if err := s2.syncView(func(*bolt.Tx) error { return nil }); err != nil { // a checkpoint
		t.Fatal(err)
	}
	c := crashImage(t, cfg2)
	os.WriteFile(filepath.Join(c.Dir, LogFile), prev, 0o600)
	r = mustOpen(t, c)
	if n := len(r.Recovered().Retained); n != 3 {
		t.Fatalf("checkpointed store file with the previous log: %d retained, want 3", n)
	}
	mustClose(t, r)
}

// TestLogRedoAfterFailedOp: a batch in which one request fails is rolled
// back in the engine and the log's earlier records applied again; the
// other requests of the batch and every earlier commit survive a crash.
func TestLogRedoAfterFailedOp(t *testing.T) {
	cfg := logConfig(t)
	var armed atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	batch := make(chan int, 1)
	cfg.hooks = &hooks{beforeCommit: func(n int) {
		if armed.CompareAndSwap(true, false) {
			close(entered)
			<-release
		} else if n > 1 {
			batch <- n
		}
	}}
	s := mustOpen(t, cfg)
	defer s.Close()
	for i := range 3 {
		mustCommit(t, s, PutRetained{&Retained{Topic: fmt.Sprintf("t/%d", i), Payload: []byte("a")}})
	}
	// Hold the committer so that the next three requests are committed
	// as one batch.
	armed.Store(true)
	first := make(chan error, 1)
	s.CommitAsync(func(err error) { first <- err }, PutRetained{&Retained{Topic: "t/3", Payload: []byte("a")}})
	<-entered
	good, bad := make(chan error, 2), make(chan error, 1)
	s.CommitAsync(func(err error) { good <- err }, PutRetained{&Retained{Topic: "t/4", Payload: []byte("a")}})
	s.CommitAsync(func(err error) { bad <- err }, PutDelivery{&Delivery{ClientID: "nobody", Seq: s.NextID(), MsgID: 77}})
	s.CommitAsync(func(err error) { good <- err }, PutRetained{&Retained{Topic: "t/5", Payload: []byte("a")}})
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if n := <-batch; n != 3 {
		t.Fatalf("the batch held %d requests, want 3", n)
	}
	for range 2 {
		if err := <-good; err != nil {
			t.Fatalf("a good commit failed with its neighbour: %v", err)
		}
	}
	if err := <-bad; !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("the bad commit: %v, want ErrUnknownSession", err)
	}
	mustCommit(t, s, PutRetained{&Retained{Topic: "t/6", Payload: []byte("a")}})
	r := mustOpen(t, crashImage(t, cfg))
	got := retainedTopics(r.Recovered())
	mustClose(t, r)
	if len(got) != 7 {
		t.Fatalf("recovered %v, want t/0 to t/6", got)
	}
}

// TestLogReadOnlyCommands: verify and export of a crash image apply the
// log first, as the broker's start would.
func TestLogReadOnlyCommands(t *testing.T) {
	cfg, _ := logged(t, 4)
	img := crashImage(t, cfg)
	rep, err := Verify(img)
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify: %v %v", err, rep.Problems)
	}
	var out bytes.Buffer
	if err := Export(img, &out); err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(out.Bytes(), []byte(`"kind":"retained"`)); n != 4 {
		t.Fatalf("export of a crash image lists %d retained messages, want 4", n)
	}
	r := mustOpen(t, img)
	if n := len(r.Recovered().Retained); n != 4 {
		t.Fatalf("open after verify: %d retained, want 4", n)
	}
	mustClose(t, r)
}

// TestLogOtherSyncModes: a store left with a log by SyncAlways opens in
// SyncBatch and SyncOff with the log applied, and back in SyncAlways.
func TestLogOtherSyncModes(t *testing.T) {
	for _, mode := range []SyncMode{SyncBatch, SyncOff} {
		t.Run(mode.String(), func(t *testing.T) {
			cfg, _ := logged(t, 3)
			img := crashImage(t, cfg)
			img.Sync = mode
			s := mustOpen(t, img)
			if n := len(s.Recovered().Retained); n != 3 {
				t.Fatalf("%d retained, want 3", n)
			}
			mustCommit(t, s, PutRetained{&Retained{Topic: "t/9", Payload: []byte("9")}})
			mustClose(t, s)
			img.Sync = SyncAlways
			s = mustOpen(t, img)
			if n := len(s.Recovered().Retained); n != 4 {
				t.Fatalf("back in always: %d retained, want 4", n)
			}
			mustClose(t, s)
		})
	}
}

// TestLogConcurrentCommits: commits from many goroutines, grouped into
// batches, are all in the log when they are reported.
func TestLogConcurrentCommits(t *testing.T) {
	cfg := logConfig(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 25 {
				mustCommit(t, s, PutRetained{&Retained{Topic: fmt.Sprintf("w%d/%d", w, i), Payload: []byte("x")}})
			}
		})
	}
	wg.Wait()
	r := mustOpen(t, crashImage(t, cfg))
	if n := len(r.Recovered().Retained); n != 200 {
		t.Fatalf("%d retained after a crash, want the 200 reported", n)
	}
	mustClose(t, r)
}

// TestLogUnsyncedRecordsAfterTornOne: records the committer wrote while
// an fsync was running (their durable count below the torn record's
// index) may survive a crash after a torn one: the log ends at the torn
// record. A damaged record that a later record says was durable is
// damage.
func TestLogUnsyncedRecordsAfterTornOne(t *testing.T) {
	keys := fuzzLogKeys(t)
	dir := t.TempDir()
	w, err := createLog(dir, keys, [16]byte{4}, 10, true)
	if err != nil {
		t.Fatal(err)
	}
	// Records 0-2 each written after the one before was durable; 3 and
	// 4 while 2 was being synced.
	for i, d := range []uint64{0, 1, 2, 2, 2} {
		r := &logRecord{counter: 11 + uint64(i), durable: d, ops: []logOp{{kind: logOpPut, bucket: bktRetained, key: []byte{byte(i)}, val: []byte("v")}}}
		if err := w.append(encodeLogBatch(r)); err != nil {
			t.Fatal(err)
		}
	}
	w.close()
	full, _ := os.ReadFile(filepath.Join(dir, LogFile))
	spans := logSpans(t, full)
	torn := bytes.Clone(full)
	clear(torn[spans[3][0]+20 : spans[3][1]]) // record 3 never reached the disk; 4 did
	lc, err := parseLog(torn, keys)
	if err != nil || len(lc.records) != 3 || !lc.torn {
		t.Fatalf("torn record before an unsynced one: %v", err)
	}
	damaged := bytes.Clone(full)
	damaged[spans[1][0]+20] ^= 1 // record 2 says 2 records were durable
	if _, err := parseLog(damaged, keys); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged durable record: %v, want ErrCorrupt", err)
	}
}

// TestLogBatchTooLarge: a batch too large for one log record is undone
// and its requests committed one by one; a request too large alone fails
// alone, and the store goes on.
func TestLogBatchTooLarge(t *testing.T) {
	defer func(l int) { logRecordLimit = l }(logRecordLimit)
	logRecordLimit = 4000
	cfg := logConfig(t)
	var armed atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	cfg.hooks = &hooks{beforeCommit: func(int) {
		if armed.CompareAndSwap(true, false) {
			close(entered)
			<-release
		}
	}}
	s := mustOpen(t, cfg)
	defer s.Close()
	mustCommit(t, s, PutRetained{&Retained{Topic: "t/0", Payload: []byte("a")}})
	armed.Store(true)
	first := make(chan error, 1)
	s.CommitAsync(func(err error) { first <- err }, PutRetained{&Retained{Topic: "t/1", Payload: []byte("a")}})
	<-entered
	results := make(chan error, 4)
	for i := range 3 {
		s.CommitAsync(func(err error) { results <- err }, PutRetained{&Retained{Topic: fmt.Sprintf("t/%d", i+2), Payload: bytes.Repeat([]byte("p"), 1500)}})
	}
	tooLarge := make(chan error, 1)
	s.CommitAsync(func(err error) { tooLarge <- err }, PutRetained{&Retained{Topic: "big", Payload: bytes.Repeat([]byte("p"), 5000)}})
	testutil.WaitFor(t, "the requests to queue", 10*time.Second, func() bool { return s.pendingLen() == 4 })
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-results; err != nil {
			t.Fatalf("a request of a batch too large for one record failed: %v", err)
		}
	}
	if err := <-tooLarge; !errors.Is(err, errLogRecordTooLarge) {
		t.Fatalf("a request too large alone: %v, want errLogRecordTooLarge", err)
	}
	mustCommit(t, s, PutRetained{&Retained{Topic: "t/5", Payload: []byte("a")}})
	r := mustOpen(t, crashImage(t, cfg))
	got := retainedTopics(r.Recovered())
	mustClose(t, r)
	if len(got) != 6 || got["big"] != "" {
		t.Fatalf("recovered %d retained (%v), want t/0 to t/5", len(got), slices.Collect(maps.Keys(got)))
	}
}

// TestLogSyncFailureStopsCommits: when an fsync of the log fails, the
// requests it was to make durable fail with ErrFailed, and so does every
// later one (what the disk holds is no longer known) until the store is
// reopened; a reopened store holds what was acknowledged before, and
// never a request that was refused without being written.
func TestLogSyncFailureStopsCommits(t *testing.T) {
	cfg := logConfig(t)
	var fail atomic.Bool
	cfg.hooks = &hooks{logSync: func() error {
		if fail.Load() {
			return errors.New("input/output error")
		}
		return nil
	}}
	s := mustOpen(t, cfg)
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("1")}})
	fail.Store(true)
	if err := s.Commit(context.Background(), PutRetained{&Retained{Topic: "b", Payload: []byte("1")}}); !errors.Is(err, ErrFailed) {
		t.Fatalf("commit whose fsync failed: %v, want ErrFailed", err)
	}
	fail.Store(false)
	if err := s.Commit(context.Background(), PutRetained{&Retained{Topic: "c", Payload: []byte("1")}}); !errors.Is(err, ErrFailed) {
		t.Fatalf("commit after a failed fsync: %v, want ErrFailed", err)
	}
	if st := s.Stats(); st.Syncs != 1 {
		t.Errorf("%d fsyncs counted, want the first commit's only", st.Syncs)
	}
	_ = s.Close()
	cfg.hooks = nil
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	got := map[string]bool{}
	for _, r := range s.Recovered().Retained {
		got[r.Topic] = true
	}
	// b was written to the log and never acknowledged: it may be there
	// or not. c was refused before anything was written.
	if !got["a"] || got["c"] {
		t.Fatalf("after reopen: %v; want a, never c", got)
	}
}
