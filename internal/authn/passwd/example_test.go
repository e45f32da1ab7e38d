package passwd_test

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/authn/passwd"
)

// Example shows the wiring of a password file into a listener's chain: one
// Limiter for the process, the File as a backend, and a watcher that the
// caller owns and waits for. Removed and changed users lose access.
func Example() {
	lim := passwd.NewLimiter(0)
	f, err := passwd.Load("/etc/moat/passwd", passwd.Config{Limiter: lim})
	if err != nil {
		slog.Error("refusing to start", "error", err) // names file:line
		return
	}
	chain := &authn.Chain{Backends: []authn.Backend{f}}
	_ = chain

	ctx, cancel := context.WithCancel(context.Background())
	t := time.NewTicker(time.Second)
	var wg sync.WaitGroup
	wg.Go(func() {
		f.Watch(ctx, t.C, func(c passwd.Change, err error) {
			if err != nil {
				slog.Error("password file not reloaded; the previous one stays in force", "error", err)
				return
			}
			slog.Info("password file reloaded", "added", c.Added, "removed", c.Removed, "changed", c.Changed)
			// Re-evaluate the live sessions of c.Removed and c.Changed.
		})
	})
	// On SIGHUP: c, err := f.Reload()
	cancel()
	wg.Wait()
	t.Stop()
}
