//go:build !unix

package broker

import "time"

// cpuTime is not measured on this platform: CPU figures read 0.
func cpuTime() time.Duration { return 0 }

// cpuSplit is not measured on this platform.
func cpuSplit() (user, sys time.Duration) { return 0, 0 }

// writeCalls is not measured on this platform.
func writeCalls() int64 { return 0 }

func readCalls() int64 { return 0 }
