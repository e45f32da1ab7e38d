//go:build !unix

package e2e

// lockFile is a no-op where flock is unavailable: only one process may use
// a FileSequenceStore there.
func lockFile(path string) (func(), error) { return func() {}, nil }
