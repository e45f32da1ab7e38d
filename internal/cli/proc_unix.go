//go:build unix

package cli

import (
	"errors"
	"syscall"
)

// raiseFileLimit lifts the soft limit on open files to the hard limit:
// tens of thousands of connections need it.
func raiseFileLimit() {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

// processAlive reports whether a process with the ID exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// signalReload asks the broker with the process ID to reload.
func signalReload(pid int) error { return syscall.Kill(pid, syscall.SIGHUP) }
