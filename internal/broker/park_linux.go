//go:build linux

package broker

import (
	"container/heap"
	"errors"
	"os"
	"sync"
	"syscall"
	"time"
)

// A quiet connection without a goroutine. A goroutine waiting for a
// quiet socket costs its stack (2 KiB at least) and its descriptor
// (about 0.5 KiB, kept by the runtime for reuse) for as long as the
// client stays silent, which for most devices of a fleet is most of the
// time: about a sixth of what an idle mutual-TLS connection cost the
// broker. So a connection whose quiet reader (readQuiet) has waited
// parkAfter without input is parked instead: its socket is registered
// with an epoll instance of the server's own (EPOLLONESHOT: one wake-up
// per parking), the reader goroutine ends, and one goroutine, the
// poller, waits for that instance through the runtime's network poller
// and starts a reader goroutine (readWoken) for each socket that becomes
// readable. The poller also wakes connections whose keep-alive deadline
// passes (the reader then finds its read deadline passed and disconnects
// the client), and wakeReader (kill, Shutdown) takes a parked connection
// out and starts its reader at once.
//
// Waiting parkAfter on a goroutine first keeps the wake-up of a
// connection that is quiet only briefly (a client that subscribes right
// after CONNACK, a sensor reporting every second) as direct as before:
// the network poller wakes its reader. A parked connection's wake-up
// takes one goroutine hop more, through the poller.
//
// A parked connection's socket is never closed while it is parked: only
// its reader closes it (finish), and Shutdown past its deadline, after
// closing the poller. The epoll calls on a socket run inside
// RawConn.Control, which holds the descriptor, so they cannot reach
// another socket that reused its number.

// parkAfter is how long a quiet connection's reader goroutine waits for
// input before the connection is parked.
const parkAfter = time.Second

// waitQuiet waits until the socket is readable, for at most parkAfter;
// a connection still silent then is parked, and waitQuiet returns true:
// the caller's goroutine must return without touching the connection.
// deadline is the socket's read deadline (zero: none), which a wait cut
// short by parkAfter restores. Called by c's quiet reader.
func (c *conn) waitQuiet(deadline time.Time) bool {
	wait := time.Now().Add(parkAfter)
	if !deadline.IsZero() && !wait.Before(deadline) {
		// The keep-alive deadline comes first: wait for it here.
		waitReadable(c.raw, &c.src.peek)
		return false
	}
	c.nc.SetReadDeadline(wait)
	ready := readableBy(c.raw, &c.src.peek)
	c.nc.SetReadDeadline(deadline)
	// kill sets closing before it wakes the reader (with a deadline in
	// the past, which the line above may have replaced): a closing
	// connection is read on, and readLoop stops at once.
	if ready || c.closing.Load() {
		return false
	}
	return c.srv.parked.park(c, deadline)
}

// readableBy waits as waitReadable does and reports whether the socket
// became readable (or reached its end, or failed), rather than the read
// deadline passing.
func readableBy(rc syscall.RawConn, buf *[1]byte) bool {
	err := rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch err {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			}
			return true
		}
	})
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// parker holds the parked connections of one server. The zero value is
// ready: the epoll instance and the poller start with the first parking.
// Its methods are safe for concurrent use; mu is a leaf lock.
type parker struct {
	mu      sync.Mutex
	started bool
	closed  bool
	epfd    int
	file    *os.File        // epfd, waited on through the runtime poller
	rc      syscall.RawConn // file's
	armed   time.Time       // the read deadline set on file; zero: none
	nextID  uint64
	byID    map[uint64]*parkedConn
	byConn  map[*conn]*parkedConn
	due     parkHeap // by keep-alive deadline; those without one are not in it
	srv     *Server
	stopErr error // why the poller could not start or failed: park refuses
}

// parkedConn is one parked connection.
type parkedConn struct {
	c        *conn
	id       uint64
	deadline time.Time // zero: no keep alive
	idx      int       // in parker.due; -1 when not there
}

// park parks c, whose quiet reader holds no read buffer and returns right
// after, or reports false when it cannot be parked (the server is
// shutting down, or epoll failed): the caller then reads on its own
// goroutine. deadline is the socket's read deadline (zero: none).
func (p *parker) park(c *conn, deadline time.Time) bool {
	p.mu.Lock()
	if !p.startLocked(c.srv) {
		p.mu.Unlock()
		return false
	}
	p.nextID++
	pc := &parkedConn{c: c, id: p.nextID, deadline: deadline, idx: -1}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
		Fd: int32(uint32(pc.id)), Pad: int32(uint32(pc.id >> 32))}
	var err error
	if cerr := c.raw.Control(func(fd uintptr) {
		err = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	}); cerr != nil {
		err = cerr
	}
	if err != nil {
		p.mu.Unlock()
		return false
	}
	p.byID[pc.id] = pc
	p.byConn[c] = pc
	if !deadline.IsZero() {
		heap.Push(&p.due, pc)
		if p.armed.IsZero() || deadline.Before(p.armed) {
			p.armLocked(deadline)
		}
	}
	p.mu.Unlock()
	// kill sets closing before it wakes the reader: either it finds c
	// parked (above) and starts its reader, or c sees closing here.
	if c.closing.Load() {
		p.unpark(c)
	}
	return true
}

// unpark takes c out and starts its reader, if c is parked; otherwise
// it does nothing. Safe from any goroutine.
func (p *parker) unpark(c *conn) {
	p.mu.Lock()
	pc := p.byConn[c]
	if pc != nil {
		p.removeLocked(pc)
	}
	p.mu.Unlock()
	if pc != nil {
		c.srv.goroutines.goTracked(goReader, c.readWoken)
	}
}

// close takes every connection out (their readers start) and stops the
// poller. Shutdown calls it once every connection has been killed; a
// connection that tries to park afterwards waits on a goroutine.
func (p *parker) close() {
	p.mu.Lock()
	p.closed = true
	if p.started {
		p.armLocked(aLongTimeAgo) // wakes the poller, which does the rest
	}
	p.mu.Unlock()
}

// parked returns the number of parked connections.
func (p *parker) parked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byConn)
}

// startLocked makes the epoll instance and starts the poller on first
// use; it reports false once closed or when epoll is not available.
func (p *parker) startLocked(s *Server) bool {
	if p.closed || p.stopErr != nil {
		return false
	}
	if p.started {
		return true
	}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		p.stopErr = err
		return false
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		p.stopErr = err
		return false
	}
	p.file = os.NewFile(uintptr(epfd), "epoll")
	rc, err := p.file.SyscallConn()
	if err != nil {
		p.file.Close()
		p.stopErr = err
		return false
	}
	p.epfd, p.rc, p.srv = epfd, rc, s
	p.byID = map[uint64]*parkedConn{}
	p.byConn = map[*conn]*parkedConn{}
	p.started = true
	// Started by a reader goroutine, which the tracker still counts, so
	// the server cannot have become idle (see tracker).
	s.goroutines.goTracked(goPoller, p.poll)
	return true
}

// armLocked sets the time the poller wakes at without input.
func (p *parker) armLocked(t time.Time) {
	p.armed = t
	p.file.SetReadDeadline(t)
}

// removeLocked takes pc out of the epoll instance and the indexes.
func (p *parker) removeLocked(pc *parkedConn) {
	delete(p.byID, pc.id)
	delete(p.byConn, pc.c)
	if pc.idx >= 0 {
		heap.Remove(&p.due, pc.idx)
	}
	pc.c.raw.Control(func(fd uintptr) {
		syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// poll is the poller goroutine: it waits until a parked socket is
// readable or the next keep-alive deadline passes, and starts the readers
// of the connections concerned.
func (p *parker) poll() {
	defer p.file.Close()
	var events [128]syscall.EpollEvent
	var woken []*conn
	for {
		n := 0
		var werr error
		err := p.rc.Read(func(fd uintptr) bool {
			for {
				n, werr = syscall.EpollWait(int(fd), events[:], 0)
				if werr != syscall.EINTR {
					break
				}
			}
			if werr == syscall.EAGAIN {
				werr = nil
			}
			return n > 0 || werr != nil
		})
		if err == nil && werr != nil {
			err = werr
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// The instance failed (it never should): hand every
			// connection back to a goroutine of its own and stop.
			p.mu.Lock()
			p.stopErr = err
			p.closed = true
			p.mu.Unlock()
		}
		p.mu.Lock()
		woken = woken[:0]
		if p.closed {
			for _, pc := range p.byID {
				p.removeLocked(pc)
				woken = append(woken, pc.c)
			}
			p.mu.Unlock()
			p.start(woken)
			return
		}
		for _, ev := range events[:max(n, 0)] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if pc := p.byID[id]; pc != nil {
				p.removeLocked(pc)
				woken = append(woken, pc.c)
			}
		}
		now := time.Now()
		for len(p.due) > 0 && !p.due[0].deadline.After(now) {
			pc := p.due[0]
			p.removeLocked(pc)
			woken = append(woken, pc.c)
		}
		next := time.Time{}
		if len(p.due) > 0 {
			next = p.due[0].deadline
		}
		p.armLocked(next)
		p.mu.Unlock()
		p.start(woken)
	}
}

// start starts the readers of woken connections.
func (p *parker) start(woken []*conn) {
	for _, c := range woken {
		p.srv.goroutines.goTracked(goReader, c.readWoken)
	}
	clear(woken)
}

// parkHeap orders parked connections by keep-alive deadline.
type parkHeap []*parkedConn

func (h parkHeap) Len() int           { return len(h) }
func (h parkHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h parkHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *parkHeap) Push(x any) {
	pc := x.(*parkedConn)
	pc.idx = len(*h)
	*h = append(*h, pc)
}
func (h *parkHeap) Pop() any {
	old := *h
	pc := old[len(old)-1]
	old[len(old)-1] = nil
	pc.idx = -1
	*h = old[:len(old)-1]
	return pc
}

// readWoken is the reader goroutine of a connection the parker woke: its
// socket has input or has reached its end, its keep-alive deadline
// passed, or it is being closed; readLoop finds out which.
func (c *conn) readWoken() {
	defer c.recoverPanic()
	c.takeInput()
	if c.readLoop() {
		return
	}
	c.finish()
	c.end()
}
