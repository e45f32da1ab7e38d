//go:build linux

package broker

import "syscall"

// canWaitReadable tells whether waitReadable is implemented here.
const canWaitReadable = true

// waitReadable blocks until the socket has input, has reached its end or
// failed, or the read deadline passes or the connection is closed; the
// caller's next read reports which. buf receives one byte that is looked
// at but left in the socket. The readiness check (MSG_PEEK) runs after the
// poller is armed, so input that arrived earlier is not missed.
func waitReadable(rc syscall.RawConn, buf *[1]byte) {
	rc.Read(func(fd uintptr) bool {
		for {
			n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return false
			}
			_ = n // input (n > 0), end of stream (0) or an error: read it
			return true
		}
	})
}

// inputArrived reports, without waiting, whether the socket holds input
// (or has reached its end or failed: the next read then returns at once
// too).
func inputArrived(rc syscall.RawConn, buf *[1]byte) bool {
	arrived := false
	rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err == syscall.EINTR {
				continue
			}
			arrived = err != syscall.EAGAIN
			return true
		}
	})
	return arrived
}
