//go:build linux && (amd64 || arm64 || loong64 || mips64 || mips64le || ppc64 || ppc64le || riscv64 || s390x)

package broker

import (
	"encoding/binary"
	"syscall"
	"time"
)

// kernelArrivals: this system stamps received packets (see arrival.go).
// 64-bit Linux only: there the control message's layout (a 16-byte header,
// a timespec of two 64-bit fields) is the same on every architecture.
const kernelArrivals = true

// enableStamps turns on the kernel's software receive timestamps for the
// socket. SO_TIMESTAMPNS rather than SO_TIMESTAMPING: both report the same
// software stamp, taken when the network stack first sees a packet (on
// loopback, inside the sender's write); SO_TIMESTAMPNS needs no flags and
// delivers one timespec.
func enableStamps(rc syscall.RawConn) bool {
	var err error
	if cerr := rc.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); cerr != nil {
		return false
	}
	return err == nil
}

// holdStamps opens a socket that asks for receive timestamps, so that
// the kernel keeps stamping (see stampHold), and returns the function
// that closes it.
func holdStamps() func() {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = syscall.Socket(syscall.AF_INET6, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		return nil
	}
	if syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1) != nil {
		syscall.Close(fd)
		return nil
	}
	return func() { syscall.Close(fd) }
}

// readFD is the syscall.RawConn read function: one recvmsg, or false to
// wait for input.
func (r *stampedReader) readFD(fd uintptr) bool {
	for {
		n, oobn, _, _, err := syscall.Recvmsg(int(fd), r.p, r.oob[:], 0)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		r.n, r.err = n, err
		if n > 0 {
			// Bytes that arrived before the kernel stamped packets have
			// no stamp: the time of the read stands in.
			r.at = stampOf(r.oob[:oobn])
			if r.kernel = r.at != 0; !r.kernel {
				r.at = time.Now().UnixNano()
			}
		}
		return true
	}
}

// cmsgHeader is the size of struct cmsghdr on 64-bit Linux.
const cmsgHeader = 16

// stampOf returns the SO_TIMESTAMPNS time in a control message buffer, in
// Unix nanoseconds, or 0 if there is none.
func stampOf(oob []byte) int64 {
	for len(oob) >= cmsgHeader {
		n := binary.NativeEndian.Uint64(oob)
		level := int32(binary.NativeEndian.Uint32(oob[8:]))
		typ := int32(binary.NativeEndian.Uint32(oob[12:]))
		if n < cmsgHeader || n > uint64(len(oob)) {
			return 0
		}
		if level == syscall.SOL_SOCKET && typ == syscall.SO_TIMESTAMPNS && n >= cmsgHeader+16 {
			sec := int64(binary.NativeEndian.Uint64(oob[cmsgHeader:]))
			nsec := int64(binary.NativeEndian.Uint64(oob[cmsgHeader+8:]))
			return sec*int64(time.Second) + nsec
		}
		next := (n + 7) &^ 7 // messages are aligned to 8 bytes
		if next >= uint64(len(oob)) {
			return 0
		}
		oob = oob[next:]
	}
	return 0
}
