//go:build unix

package broker

import "syscall"

// openFileLimit returns the process's soft RLIMIT_NOFILE, or 0 when it
// cannot be read. (Go raises the soft limit to the hard one at start.)
func openFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return uint64(rl.Cur) // int64 on some systems
}
