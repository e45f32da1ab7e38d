package broker

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// An idle connection should cost little memory, and two things a reader
// goroutine would hold while it waits for the next packet are large: its
// read buffer, and its stack, which a blocking read through TLS grows to
// 4 KiB (the call chain down to the socket is about 1.6 KiB deep). So a
// connection that has been quiet waits differently: it gives its read
// buffer back to a pool, and a fresh goroutine waits until the socket is
// readable (syscall.RawConn.Read, a short call chain that fits the
// smallest stack), then takes a buffer and reads on. Busy connections,
// whose next packet comes within quietAfter, keep their buffer and read as
// usual, so the extra system calls are paid only by connections that wake
// rarely.
//
// Waiting on the socket is only correct when no layer above it holds
// input already: crypto/tls may have read records it has not returned yet,
// and a PROXY protocol connection may hold bytes read with the header.
// Before going quiet, the reader therefore asks the whole stack for one
// byte with a read deadline in the past: any buffered input is returned,
// and only when every layer is empty does the read time out (a timeout is
// not fatal for a tls.Conn; it keeps a partly read record).

// quietAfter: a connection whose input runs dry at least quietAfter after
// it last did (or that sent nothing after CONNECT) waits for its next
// packet without a buffer and on a fresh goroutine.
const quietAfter = time.Second

// readBufSize is the read buffer of a connection receiving packets. 1 KiB
// holds several typical MQTT packets per system call; larger packets are
// read straight into their own buffer.
const readBufSize = 1024

// aLongTimeAgo is a read deadline that makes a read return at once.
var aLongTimeAgo = time.Unix(1, 0)

// input is the read buffer and packet decoder of a connection that is
// receiving packets.
type input struct {
	br *bufio.Reader
	r  *packet.Reader
	// c is the connection holding the input (takeInput), whose
	// reserveBody the packet reader's reserve function calls; nil in the
	// pool. The function is made once per input, not per connection and
	// take: a method value of the connection would be an allocation for
	// every connection that goes quiet and wakes.
	c *conn
}

var inputPool sync.Pool

// Set here rather than in inputPool's declaration: newInput refers, through
// the reserve function, to code that takes from the pool.
func init() { inputPool.New = newInput }

func newInput() any {
	in := &input{br: bufio.NewReaderSize(nil, readBufSize)}
	in.r = packet.NewReader(in.br, 0)
	in.r.SetReserve(in.reserve)
	return in
}

// reserve is the packet reader's reserve function (conn.reserveBody).
func (in *input) reserve(size int) error { return in.c.reserveBody(size) }

// source is what a connection's read buffer reads from: the byte a quiet
// probe took (or the error it got) first, then the network connection.
// Only the reader goroutine uses it.
type source struct {
	nc      net.Conn
	c       *conn // for holding back (overload.go)
	head    [1]byte
	pending bool  // head holds a byte not yet returned
	err     error // returned (once) before reading nc again
	peek    [1]byte
	// sr reads a plain TCP socket in nc's place, with arrival times
	// (arrival.go); nil otherwise. stamp: no kernel timestamps, so at
	// records when the last read returned.
	sr    *stampedReader
	stamp bool
	at    int64
	// top is the stampedReader under nc when nothing but the listener's
	// Conn (no TLS) lies between it and the read buffer; nil otherwise.
	// Once a read of that Conn reaches the socket, the Conn has no bytes
	// of its own left (those it read past a PROXY header come first),
	// and top becomes sr: the reader reads the socket directly.
	top *stampedReader
	// nowait: Read returns what has arrived, or errNoInput, without
	// waiting (topUp); only with sr set.
	nowait bool
	// mark is the connection's Observer when it charges a read's packets
	// at one clock reading (ReadMarker); nil otherwise.
	mark ReadMarker
}

// errNoInput is what a read that may not wait (source.nowait) returns
// when nothing has arrived.
var errNoInput = errors.New("broker: no input waiting")

func (s *source) Read(p []byte) (int, error) {
	if s.pending && len(p) > 0 {
		s.pending = false
		p[0] = s.head[0]
		return 1, nil
	}
	if s.err != nil {
		err := s.err
		s.err = nil
		return 0, err
	}
	if s.nowait {
		n, err := s.readNow(p)
		if n == 0 && err == nil {
			return 0, errNoInput
		}
		if n > 0 && s.mark != nil {
			s.mark.MarkRead()
		}
		return n, err
	}
	if c := s.c; c != nil && c.rearm {
		c.rearmKeepAlive()
	}
	var n int
	var err error
	if s.sr != nil {
		n, err = s.sr.Read(p)
	} else {
		var topReads uint64
		if s.top != nil {
			topReads = s.top.reads
		}
		n, err = s.nc.Read(p)
		if s.stamp && n > 0 {
			s.at = time.Now().UnixNano()
		}
		if s.top != nil && s.top.reads != topReads {
			s.sr, s.top = s.top, nil
		}
	}
	if c := s.c; n > 0 && c != nil && len(c.pub.holds) > 0 {
		// The client is held back (overload.go): the input this read
		// returned (at most the read buffer, or the rest of a packet
		// whose size was checked) is handed on only once the
		// subscribers the client feeds took some of their backlog, and
		// nothing more is read meanwhile.
		waited, ok := c.awaitHolds()
		if !ok {
			return 0, errHeldClosed
		}
		if waited && err == nil && s.sr != nil && n < len(p) {
			// What the client sent while it waited is taken in with
			// this input, without waiting: the reader would otherwise
			// read it on its own right after. (A read that has to wait
			// for input happens before the hold, so that a client that
			// closes its connection is seen at once.)
			m, rerr := s.readNow(p[n:])
			n += m
			if rerr != nil {
				s.err = rerr // the next read reports it
			}
		}
	}
	if n > 0 && s.mark != nil {
		s.mark.MarkRead()
	}
	return n, err
}

// readNow reads what has arrived without waiting (stampedReader.readNow).
// After a wait for a held publisher's turn the read deadline is moved
// only before the next read that may wait (conn.rearm), so it may have
// passed meanwhile: the timeout that reports is the server's wait, not
// the client's silence, and counts as nothing arrived.
func (s *source) readNow(p []byte) (int, error) {
	n, err := s.sr.readNow(p)
	if err != nil && s.c != nil && s.c.rearm && isTimeout(err) {
		return 0, nil
	}
	return n, err
}

// takeInput gives the connection a read buffer from the pool; the reader
// goroutine calls it before reading packets.
func (c *conn) takeInput() {
	in := inputPool.Get().(*input)
	in.br.Reset(&c.src)
	in.r.SetVersion(c.version)
	if c.authenticated {
		in.r.SetMaxPacketSize(c.srv.cfg.MaxPacketSize)
	} else {
		// Before authentication a peer gets a much smaller limit: it
		// costs nothing to open many connections and announce large
		// CONNECTs on each.
		in.r.SetMaxPacketSize(c.srv.limits().PreAuthMaxPacketSize)
	}
	in.c = c
	c.in = in
}

// reserveBody is the packet reader's reserve function: before a body
// larger than readBudgetThreshold is allocated, it takes its size from the
// server's read budget, waiting while the budget is spent (before CONNECT
// no longer than the connect deadline). releaseBody gives it back once
// the packet is handled.
func (c *conn) reserveBody(size int) error {
	c.bodySize = size
	if size <= readBudgetThreshold {
		return nil
	}
	c.kickWriters() // the budget, or a hold, may make the reader wait
	if len(c.pub.holds) > 0 {
		// A held client waits for its turn before it takes read budget
		// for the rest of this packet, not while holding it.
		if _, ok := c.awaitHolds(); !ok {
			return errHeldClosed
		}
	}
	var deadline time.Time
	if !c.authenticated {
		deadline = c.connectDeadline
	}
	n, err := c.srv.readBudget.acquire(int64(size), deadline, c.killed, c.srv.ctx.Done())
	if err != nil {
		return err
	}
	c.reserved = n
	if c.authenticated {
		// Time spent waiting for the budget is not the client's.
		c.armKeepAlive()
	}
	return nil
}

// releaseBody gives back the read budget held for the last packet.
func (c *conn) releaseBody() {
	if c.reserved != 0 {
		c.srv.readBudget.release(c.reserved)
		c.reserved = 0
	}
}

// releaseInput gives an empty read buffer back to the pool.
func (c *conn) releaseInput() {
	in := c.in
	c.in = nil
	in.br.Reset(nil)
	in.c = nil
	inputPool.Put(in)
}

// rawConnOf returns the socket under nc when waiting on it is known to be
// correct (see above): a TCP connection, possibly wrapped in the
// listener's Conn (which has its own SyscallConn) and in TLS. WebSocket
// connections and anything else return nil and are read as usual. arr is
// the connection's arrival reader, if any: it reads the same socket (the
// connection under any TLS layer), so its RawConn is returned rather than
// a second one kept for the connection's life.
func rawConnOf(nc net.Conn, arr *stampedReader) syscall.RawConn {
	if !canWaitReadable {
		return nil
	}
	if t, ok := nc.(*tls.Conn); ok {
		nc = t.NetConn()
	}
	var sc syscall.Conn
	switch x := nc.(type) {
	case *net.TCPConn:
		sc = x
	case interface {
		syscall.Conn
		PeerAddr() net.Addr // listener.Conn
	}:
		sc = x
	default:
		return nil
	}
	if arr != nil {
		return arr.rc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// probeInput adds input that has already arrived to the read buffer,
// without waiting: it reads only when the socket holds input (MSG_PEEK),
// so that the read returns at once. Only for plain TCP connections
// (c.raw set, no TLS): a TLS record may have arrived in part, and reading
// it would wait for the rest.
func (c *conn) probeInput() {
	want := c.in.br.Buffered() + 1
	if want > c.in.br.Size() {
		return // the rest of a packet larger than the buffer is read past it
	}
	if !inputArrived(c.raw, &c.src.peek) {
		return
	}
	if _, err := c.in.br.Peek(want); err != nil && err != bufio.ErrBufferFull {
		c.src.err = err // the next read reports it
	}
}

// topUp adds to the read buffer, without waiting, what has arrived on a
// plain TCP connection read directly (source.sr), when the buffer ends in
// part of a packet; it reports whether the next packet is now all
// buffered. It reads nothing while the client is held back (its next
// input waits for its turn, source.Read) or when the rest of the packet
// would not fit the buffer. One system call, instead of starting the
// writer for what handling queued so far and then reading anyway: the
// acknowledgements of both reads go out in one write.
func (c *conn) topUp() bool {
	s := &c.src
	if s.sr == nil || s.pending || s.err != nil || len(c.pub.holds) > 0 {
		return false
	}
	want := c.in.br.Buffered() + 1
	if want > c.in.br.Size() {
		return false
	}
	s.nowait = true
	_, err := c.in.br.Peek(want)
	s.nowait = false
	if err != nil && err != errNoInput && err != bufio.ErrBufferFull {
		s.err = err // the next read reports it
	}
	return c.in.r.BufferedPacket() > 0
}

// isTLS reports whether nc is a TLS connection.
func isTLS(nc net.Conn) bool {
	_, ok := nc.(*tls.Conn)
	return ok
}

// goQuiet runs on the reader goroutine when its input is drained and the
// connection has been quiet. If no layer holds input, it releases the read
// buffer, starts a fresh goroutine that waits for the socket to become
// readable (and parks the connection if it stays silent, park_linux.go),
// and returns true: the caller's goroutine must return without
// touching the connection's read side again. Otherwise the input (or the
// error) that was found is kept for the next read and it returns false.
func (c *conn) goQuiet() bool {
	var deadline time.Time
	if c.keepAlive > 0 {
		deadline = time.Now().Add(c.keepAlive * 3 / 2)
	}
	c.nc.SetReadDeadline(aLongTimeAgo)
	n, err := c.nc.Read(c.src.head[:])
	c.nc.SetReadDeadline(deadline)
	c.rearm = false
	if c.closing.Load() {
		// kill may have woken the reader before the deadline was set
		// back: let readLoop stop.
		c.src.pending = n > 0
		return false
	}
	if err != nil && !isTimeout(err) {
		c.src.err = err // after the byte, if one came with it
	}
	if n > 0 || c.src.err != nil {
		c.src.pending = n > 0
		return false
	}
	c.releaseInput()
	c.srv.goroutines.goTracked(goReader, func() { c.readQuiet(deadline) })
	return true
}

// readQuiet is the reader goroutine of a quiet connection: it waits until
// the socket is readable (or closed, or past the keep-alive deadline,
// which the next read then reports), then reads packets as readMain does.
// A connection that stays silent is parked instead (waitQuiet), and this
// goroutine ends. deadline is the socket's read deadline (zero: none).
func (c *conn) readQuiet(deadline time.Time) {
	defer c.recoverPanic()
	if c.waitQuiet(deadline) {
		return
	}
	c.takeInput()
	if c.readLoop() {
		return
	}
	c.finish()
	c.end()
}
