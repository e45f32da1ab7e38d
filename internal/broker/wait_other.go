//go:build !linux

package broker

import "syscall"

// canWaitReadable tells whether waitReadable is implemented here: on this
// system quiet connections are read as busy ones are.
const canWaitReadable = false

func waitReadable(syscall.RawConn, *[1]byte) {}

func inputArrived(syscall.RawConn, *[1]byte) bool { return false }
