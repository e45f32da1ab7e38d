//go:build unix

package testutil

import (
	"syscall"
	"time"
)

// ProcessCPU returns the CPU time (user and system) this process has
// used, for benchmarks that report CPU per operation; 0 when the system
// does not tell.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// SetsockoptInt sets an integer socket option on fd (from
// syscall.RawConn.Control).
func SetsockoptInt(fd uintptr, level, opt, value int) error {
	return syscall.SetsockoptInt(int(fd), level, opt, value)
}

// GetsockoptInt reads an integer socket option of fd (from
// syscall.RawConn.Control).
func GetsockoptInt(fd uintptr, level, opt int) (int, error) {
	return syscall.GetsockoptInt(int(fd), level, opt)
}

// Umask sets the process's file mode creation mask and returns the old
// one.
func Umask(mask int) int { return syscall.Umask(mask) }
