package cluster

import (
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

func TestRateLog(t *testing.T) {
	t.Parallel()
	var r rateLog
	t0 := time.Unix(1000, 0)
	if ok, n := r.allow(t0, 10*time.Second); !ok || n != 0 {
		t.Fatalf("first line: %v %d", ok, n)
	}
	for i := range 5 {
		if ok, _ := r.allow(t0.Add(time.Duration(i+1)*time.Second), 10*time.Second); ok {
			t.Fatalf("line %d within the interval let through", i)
		}
	}
	if ok, n := r.allow(t0.Add(10*time.Second), 10*time.Second); !ok || n != 5 {
		t.Fatalf("after the interval: %v, %d suppressed; want true, 5", ok, n)
	}
	if ok, _ := r.allow(t0.Add(11*time.Second), 10*time.Second); ok {
		t.Fatal("a line right after the last let through")
	}
}

// TestForwardFailuresLoggedOncePerInterval: a failing forward path
// counts every failure but logs one line per interval.
func TestForwardFailuresLoggedOncePerInterval(t *testing.T) {
	t.Parallel()
	var buf testutil.Buffer
	n := &Node{log: slog.New(slog.NewTextHandler(&buf, nil))}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 250 {
				n.forwardFailed("cluster: message not forwarded", "a/b", errors.New("nats: connection closed"))
			}
		})
	}
	wg.Wait()
	if got := n.stats.forwardErrors.Load(); got != 1000 {
		t.Errorf("forward errors %d, want 1000", got)
	}
	if lines := strings.Count(buf.String(), "message not forwarded"); lines != 1 {
		t.Errorf("%d lines logged for 1000 failures within the interval, want 1:\n%s", lines, buf.String())
	}
}
