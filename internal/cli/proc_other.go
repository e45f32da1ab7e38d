//go:build !unix

package cli

import "errors"

// raiseFileLimit has nothing to raise where there is no RLIMIT_NOFILE.
func raiseFileLimit() {}

// processAlive cannot tell without signals: it assumes the process runs,
// and signalReload then reports that the system has no SIGHUP.
func processAlive(int) bool { return true }

// signalReload: this system has no SIGHUP; the admin API reloads instead.
func signalReload(int) error {
	return errors.New("this system cannot signal a reload; use moat reload --admin ADDR")
}
