package passwd

import (
	"context"
	"runtime"
)

// Limiter bounds how many password verifications run at once, so that a
// flood of logins with wrong passwords queues for a slot instead of taking
// every CPU (and, with argon2id, memory) from the broker. A waiting
// verification gives up when its context (the client's connect deadline)
// ends. A Limiter is safe for concurrent use.
type Limiter struct {
	slots chan struct{}
}

// NewLimiter returns a Limiter with n slots; n <= 0 means GOMAXPROCS.
func NewLimiter(n int) *Limiter {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	return &Limiter{slots: make(chan struct{}, n)}
}

// Do runs f in a free slot, waiting for one until ctx ends; then it returns
// ctx's error without running f.
func (l *Limiter) Do(ctx context.Context, f func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case l.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-l.slots }()
	f()
	return nil
}
