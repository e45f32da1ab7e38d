//go:build !unix

package guard

// lockFile is a no-op where flock is unavailable: there, do not change the
// bans file with `moat ban` while a broker writes automatic bans to it.
func lockFile(path string) (func(), error) { return func() {}, nil }
