//go:build !unix

package broker

// openFileLimit returns 0: the system has no RLIMIT_NOFILE.
func openFileLimit() uint64 { return 0 }
