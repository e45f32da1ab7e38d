//go:build !(linux && (amd64 || arm64 || loong64 || mips64 || mips64le || ppc64 || ppc64le || riscv64 || s390x))

package broker

import "syscall"

// kernelArrivals: this system gives no receive timestamps the broker
// reads; packets carry the time their read returned (see arrival.go).
const kernelArrivals = false

func enableStamps(syscall.RawConn) bool { return false }

func holdStamps() func() { return nil }

func (r *stampedReader) readFD(uintptr) bool { return true }
