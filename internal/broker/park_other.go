//go:build !linux

package broker

import "time"

// waitQuiet waits until the socket is readable; it never parks.
func (c *conn) waitQuiet(time.Time) bool {
	waitReadable(c.raw, &c.src.peek)
	return false
}

// parker parks quiet connections without a goroutine where epoll is
// available (park_linux.go). Elsewhere a quiet connection waits on a
// goroutine of its own (readQuiet).
type parker struct{}

func (*parker) park(*conn, time.Time) bool { return false }
func (*parker) unpark(*conn)               {}
func (*parker) close()                     {}
func (*parker) parked() int                { return 0 }
