package guard

import (
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// Close stops the watcher goroutine (the default ticker included) and
// writes automatic bans not yet in the bans file.
func TestCloseStopsWatcherAndFlushes(t *testing.T) {
	before := runtime.NumGoroutine()
	path := filepath.Join(t.TempDir(), BansFileName)
	g, err := New(Config{BansFile: path, PollInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.AddBan(Ban{Kind: KindUsername, Value: "eve", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	g.Close() // idempotent
	testutil.WaitFor(t, "the watcher to exit", 5*time.Second, func() bool { return runtime.NumGoroutine() <= before })
	bans, err := File{Path: path}.Read()
	if err != nil || len(bans) != 1 || bans[0].Value != "eve" || bans[0].Source != SourceManual {
		t.Fatalf("bans file after Close: %+v, %v", bans, err)
	}
	// A new Guard starts with it.
	g2, _ := newGuard(t, Config{BansFile: path}, nil, nil)
	if _, ok := g2.BannedIdentity(Identity{Username: "eve"}); !ok {
		t.Error("ban not loaded after restart")
	}
}

// The hooks are safe for concurrent use while the watcher reloads the
// bans file (run with -race).
func TestConcurrentUse(t *testing.T) {
	clk := newClock()
	tick := make(chan time.Time)
	g, _ := newGuard(t, Config{BansFile: filepath.Join(t.TempDir(), BansFileName)}, clk, tick)
	g.OnBan(func(m Match) { m.Matches(Identity{Addr: ip("127.0.0.1")}) })
	done := make(chan struct{})
	for w := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			a := ip("127.0.0." + string(rune('2'+w)))
			l := g.NewClientLimiter()
			for i := range 300 {
				id := Identity{Addr: a, ClientID: "c", Username: "u"}
				g.AllowAccept(a)
				g.Acquire(a)
				g.AuthFailed(id, "x")
				g.Denied(id, "publish", "t")
				g.BannedIdentity(id)
				g.Undeliverable(id, "t")
				g.Release(a)
				if i%50 == 0 {
					_ = g.Stats()
				}
				l.Reserve(10)
			}
		}()
	}
	go func() {
		for range 5 {
			clk.Advance(time.Minute)
			tick <- clk.Now()
		}
		done <- struct{}{}
	}()
	for range 5 {
		<-done
	}
}
