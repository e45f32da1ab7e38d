package cluster

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
)

// testLog returns the log handler of a test's nodes. With -v they log to
// the test's log as they go. Without it (make test) the last
// failLogBytes of what they logged are kept and given to the test's log
// only if the test fails: a failure in a full run, which may not come
// back in a run of its own, shows what the cluster did before it.
func testLog(t *testing.T) slog.Handler {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if testing.Verbose() {
		return slog.NewTextHandler(testWriter{t}, opts)
	}
	fl := &failLog{}
	t.Cleanup(func() { fl.printIfFailed(t, "the nodes' last log lines") })
	return slog.NewTextHandler(fl, opts)
}

// printIfFailed logs what f kept to t, under title, if t failed.
func (f *failLog) printIfFailed(t *testing.T, title string) {
	if !t.Failed() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t.Logf("%s:\n%s", title, f.buf)
}

// failLogBytes bounds what a failLog keeps.
const failLogBytes = 64 << 10

// failLog keeps the last failLogBytes written to it, whole lines only.
type failLog struct {
	mu  sync.Mutex
	buf []byte
}

func (f *failLog) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.buf = append(f.buf, p...)
	if over := len(f.buf) - failLogBytes; over > 0 {
		cut := len(f.buf)
		if i := bytes.IndexByte(f.buf[over:], '\n'); i >= 0 {
			cut = over + i + 1
		}
		f.buf = append(f.buf[:0], f.buf[cut:]...)
	}
	return len(p), nil
}

func TestFailLogKeepsLastLines(t *testing.T) {
	t.Parallel()
	var f failLog
	line := bytes.Repeat([]byte("x"), 99)
	line = append(line, '\n')
	for range 2 * failLogBytes / len(line) {
		if _, err := f.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Write([]byte("last\n")); err != nil {
		t.Fatal(err)
	}
	if len(f.buf) > failLogBytes || !bytes.HasSuffix(f.buf, []byte("\nlast\n")) || f.buf[0] != 'x' ||
		bytes.Count(f.buf, []byte("\n")) != len(f.buf)/len(line)+1 {
		t.Fatalf("kept %d bytes, starting %q, ending %q", len(f.buf), f.buf[:min(10, len(f.buf))], f.buf[max(0, len(f.buf)-10):])
	}
}
