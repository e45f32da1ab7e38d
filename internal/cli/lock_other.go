//go:build !unix

package cli

// lockPath is a no-op where flock is unavailable: there, do not run two
// `moat ca` commands that record in the audit log at once.
func lockPath(string) (func(), error) { return func() {}, nil }
