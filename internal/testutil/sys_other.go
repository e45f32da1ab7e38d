//go:build !unix

package testutil

import (
	"errors"
	"time"
)

// The tests run on Linux (they start Debian's peers); elsewhere these
// only let the test files build.

// ProcessCPU returns 0: the CPU time is not read on this system.
func ProcessCPU() time.Duration { return 0 }

// SetsockoptInt reports errors.ErrUnsupported on this system.
func SetsockoptInt(fd uintptr, level, opt, value int) error { return errors.ErrUnsupported }

// GetsockoptInt reports errors.ErrUnsupported on this system.
func GetsockoptInt(fd uintptr, level, opt int) (int, error) { return 0, errors.ErrUnsupported }

// Umask does nothing on this system and returns 0.
func Umask(mask int) int { return 0 }
