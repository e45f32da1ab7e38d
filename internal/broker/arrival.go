package broker

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Arrival times. Two clients' packets arrive on two sockets, read by two
// reader goroutines that the Go scheduler runs in whatever order it likes,
// so the order in which the broker handles them says little about the
// order in which they reached it. To order a SUBSCRIBE against PUBLISH
// packets from other connections (fence.go), every packet carries the time
// its bytes reached the host: on Linux the kernel's receive timestamp of
// the socket's input, read with recvmsg; elsewhere, and on transports
// whose socket the broker does not read itself (WebSocket, TLS over a
// connection that does not come from the listener package), the time the
// read that returned the bytes came back.
//
// A read returns the timestamp of the newest segment it took bytes from
// (TCP merges segments that wait in the socket, keeping the newest stamp),
// so a packet's arrival time is that of the read which completed it: exact
// when the packet ended the input that was waiting, later than the truth
// when more bytes had arrived behind it. Times are Unix nanoseconds on the
// system's real-time clock, which the kernel's stamps and time.Now share.

// stampedReader reads a TCP socket with recvmsg and remembers when the
// newest bytes it returned reached the host. Only the connection's reader
// uses it.
type stampedReader struct {
	rc syscall.RawConn
	// readFn is r.readFD for rc.Read, made once; while nowait is set
	// (readNow) it does not wait for input but reports n = -1.
	readFn func(fd uintptr) bool
	nowait bool
	p      []byte // the caller's buffer during a read
	n      int
	err    error
	oob    [32]byte // room for one timestamp control message
	// at is the arrival time of the newest bytes returned (0 before the
	// first read).
	at int64
	// kernel: at is the kernel's stamp, not the time of the read.
	kernel       bool
	laddr, raddr net.Addr
	// reads counts the calls of Read, so that a caller reading through a
	// layer that may answer from its own buffer (listener.Conn after a
	// PROXY header) can tell when a read reached the socket.
	reads uint64
}

// newStampedReader returns a reader for sc's socket with kernel receive
// timestamps turned on, or nil where the system cannot give them.
func newStampedReader(sc syscall.Conn, laddr, raddr net.Addr) *stampedReader {
	if !kernelArrivals {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil || !enableStamps(rc) {
		return nil
	}
	r := &stampedReader{rc: rc, laddr: laddr, raddr: raddr}
	// One function for both kinds of read: each is an allocation kept
	// for the connection's life.
	r.readFn = func(fd uintptr) bool {
		if r.readFD(fd) {
			return true
		}
		if r.nowait {
			r.n, r.err = -1, nil // nothing there
			return true
		}
		return false
	}
	return r
}

// Read reads like the socket's own Read (the same deadlines, errors and
// end of stream) and sets r.at.
func (r *stampedReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.reads++
	r.p = p
	err := r.rc.Read(r.readFn)
	r.p = nil
	if err != nil {
		// A deadline or a closed socket, reported by the poller.
		if oe, ok := err.(*net.OpError); ok {
			oe.Op = "read"
		}
		return 0, err
	}
	return r.result()
}

// readNow is Read without waiting: it returns 0 and no error when nothing
// has arrived.
func (r *stampedReader) readNow(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.nowait = p, true
	err := r.rc.Read(r.readFn)
	r.p, r.nowait = nil, false
	if err != nil {
		if oe, ok := err.(*net.OpError); ok {
			oe.Op = "read"
		}
		return 0, err
	}
	if r.n < 0 {
		r.n = 0
		return 0, nil
	}
	return r.result()
}

// result returns what the last recvmsg read.
func (r *stampedReader) result() (int, error) {
	n, err := r.n, r.err
	r.n, r.err = 0, nil
	switch {
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: r.laddr, Addr: r.raddr, Err: os.NewSyscallError("recvmsg", err)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readerSetter is a TCP connection whose reads can be redirected from
// under a TLS layer (listener.Conn).
type readerSetter interface {
	syscall.Conn
	SetReader(io.Reader)
}

// stampArrivals arranges for the connection's packets to carry arrival
// times; the reader calls it before the first read.
func (c *conn) stampArrivals() {
	under := c.nc
	if t, ok := under.(*tls.Conn); ok {
		under = t.NetConn()
	}
	switch x := under.(type) {
	case readerSetter:
		if r := newStampedReader(x, under.LocalAddr(), under.RemoteAddr()); r != nil {
			// r itself, not its Read method: a method value would be
			// one more allocation kept for the connection's life.
			x.SetReader(r)
			c.arr = r
			if under == c.nc {
				// No TLS between the socket and the read buffer: once
				// the Conn's own bytes are read, the reader reads the
				// socket directly (source.top).
				c.src.top = r
			}
			return
		}
	case *net.TCPConn:
		if under == c.nc {
			if r := newStampedReader(x, x.LocalAddr(), x.RemoteAddr()); r != nil {
				c.src.sr = r
				c.arr = r
				return
			}
		}
	}
	c.src.stamp = true
}

// stampHold keeps the kernel's receive timestamps switched on while the
// server runs. The kernel stamps packets only while some socket asks for
// stamps, and switches stamping on some time after the first one does
// (from a deferred work item): without a socket of its own that keeps
// asking, a server whose connections had all closed would read its next
// client's first packets without stamps. The zero value holds nothing.
type stampHold struct {
	once    sync.Once
	release func()
}

func (h *stampHold) hold() { h.release = holdStamps() }

func (h *stampHold) drop() {
	h.once.Do(func() {
		if h.release != nil {
			h.release()
		}
	})
}

// arrivalTime is when the packet being handled reached the host, in Unix
// nanoseconds (see above). Reader-only.
func (c *conn) arrivalTime() int64 {
	if c.arr != nil && c.arr.at != 0 {
		return c.arr.at
	}
	if c.src.at != 0 {
		return c.src.at
	}
	return time.Now().UnixNano()
}
