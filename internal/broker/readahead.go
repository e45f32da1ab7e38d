package broker

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// Reading ahead during a wait for a commit slot. A connection has at
// most the broker's Receive Maximum of PUBLISH commits in flight
// (persistLimiter); with that many waiting, its reader waits for one to
// be reported before it handles the next PUBLISH. An MQTT 5 client stops
// at that window, but an MQTT 3.1.1 client knows none and sends on, and
// while the store stalls (in a cluster, while the message stream elects
// a leader: seconds) its PINGREQ would wait in the socket behind its
// PUBLISHes: a client whose keep alive is shorter than the stall gives
// up and connects again.
//
// So the waiting reader goes on reading, but only into the free space of
// its read buffer, and answers each PINGREQ among the whole packets
// buffered at once (PINGRESP is not ordered against the PUBACKs
// [MQTT-4.6.0-2], which still go out in the order of the PUBLISHes). The
// PINGREQ stays in the buffer and is handled in its turn as keep-alive
// activity, without a second answer (persistLimiter.pings). Nothing is
// held beyond the read buffer: once it is full, or it holds a fixed
// header the reader will refuse, a packet larger than the buffer, or a
// packet other than PUBLISH, an acknowledgement or PINGREQ, the reader
// reads no further and only waits for the slot; the packets are handled
// (and an error reported) in order, as before. A SUBSCRIBE stops it
// because its arrival time is that of the read that completed it
// (arrival.go): reads past it would make it later.
//
// A commit reported while the reader is in a read ahead wakes it with a
// read deadline in the past (wakeAhead), as kill does (wakeReader). The
// reads ahead have the keep alive as deadline, counted from the start of
// the wait and from each read that returned input: a client that sends
// nothing for one and a half times its keep alive while its commits
// stall is disconnected, as one that sends nothing at all is.
//
// Only where a read that timed out can be resumed: a TCP connection, the
// listener's Conn over one, or TLS over either (crypto/tls keeps a partly
// read record). A WebSocket connection closes on a read timeout, and is
// not read ahead.

// readsAhead reports whether the reader may read ahead while it waits
// for a commit slot: not on a transport whose reads do not survive a
// timeout, nor while the client is held back (overload.go), whose next
// input waits for its turn.
func (c *conn) readsAhead() bool {
	return c.in != nil && len(c.pub.holds) == 0 && resumableReads(c.nc)
}

// resumableReads reports whether a read of nc that timed out can be
// read again (see above).
func resumableReads(nc net.Conn) bool {
	if t, ok := nc.(*tls.Conn); ok {
		nc = t.NetConn()
	}
	_, ok := belowListener(nc).(*net.TCPConn)
	return ok
}

// awaitSlotAhead waits for a commit slot as acquirePersist does, reading
// ahead meanwhile (see above). It reports whether it took a slot: false
// when the connection ends first.
func (c *conn) awaitSlotAhead() bool {
	br := c.in.br
	armed := false
	defer func() {
		if armed {
			// A wake may have left the deadline in the past; the keep
			// alive counts from the end of the wait (as after any wait
			// of the server's, conn.rearm).
			c.armAhead()
		}
	}()
read:
	for c.answerPingsAhead() && br.Buffered() < br.Size() {
		deadline := c.armAhead()
		armed = true
		c.plim.ahead.Store(true)
		// A slot freed before ahead was set wakes nobody: it is seen
		// here (see persistLimiter.ahead).
		if c.slotFree() {
			c.endAhead()
			return c.takeSlot()
		}
		_, err := br.Peek(br.Buffered() + 1)
		c.endAhead()
		switch {
		case err == nil:
			continue
		case !isTimeout(err):
			// The end of the stream or a socket error: reported in
			// order, after the packets before it (source.Read).
			if err != bufio.ErrBufferFull {
				c.src.err = err
			}
			break read
		case c.slotFree():
			return c.takeSlot()
		case c.closing.Load():
			return false // woken by kill (wakeReader)
		case deadline.IsZero() || time.Now().Before(deadline):
			continue // woken early by nothing we know of: read again
		default:
			// The client sent nothing for 1.5 times its keep alive.
			c.readError(err)
			return false
		}
	}
	return c.awaitSlot()
}

// armAhead sets the read deadline for a read ahead, or for the reads
// after the wait: the keep alive from now, or none without one; in the
// past once the connection is closing, since kill may have woken the
// reader already (rearmKeepAlive). It returns the keep-alive deadline.
func (c *conn) armAhead() time.Time {
	var d time.Time
	if c.keepAlive > 0 {
		d = time.Now().Add(c.keepAlive * 3 / 2)
	}
	c.nc.SetReadDeadline(d)
	c.rearm = false
	if c.closing.Load() {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
	return d
}

// slotFree reports whether a commit slot is free: only the reader takes
// slots, so one that is free stays free until it takes it. It reads the
// count of commits, not the channel, which a commit's report lowers after
// freeing its slot: seeing the count lowered is seeing the slot freed.
func (c *conn) slotFree() bool {
	return c.plim.n.Load() < int64(cap(c.plim.slots))
}

// takeSlot takes the commit slot slotFree found.
func (c *conn) takeSlot() bool {
	c.plim.slots <- struct{}{}
	c.plim.n.Add(1)
	return true
}

// endAhead ends a read ahead: once it returns, no commit's report sets
// the read deadline (wakeAhead).
func (c *conn) endAhead() {
	c.plim.mu.Lock()
	c.plim.ahead.Store(false)
	c.plim.mu.Unlock()
}

// wakeAhead makes a read ahead of the reader return at once; a commit's
// report calls it after freeing its slot, when it finds ahead set.
func (c *conn) wakeAhead() {
	c.plim.mu.Lock()
	if c.plim.ahead.Load() {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
	c.plim.mu.Unlock()
}

// answerPingsAhead answers the PINGREQs among the whole packets at the
// start of the read buffer that were not answered yet, and reports
// whether reading on may find more: false once it meets a packet that
// stops the reading ahead (see above). The buffer starts with the packet
// after the one being handled.
func (c *conn) answerPingsAhead() (more bool) {
	br := c.in.br
	buf, _ := br.Peek(br.Buffered())
	pings := 0
	more = true
scan:
	for len(buf) > 0 {
		t, _, size, err := packet.ParseHeader(buf, c.version, c.srv.cfg.MaxPacketSize)
		if err == io.ErrUnexpectedEOF {
			break // the rest of the fixed header is still to come
		}
		if err != nil || size > br.Size() {
			more = false
			break
		}
		if size > len(buf) {
			break
		}
		switch t {
		case packet.PINGREQ:
			if size != 2 {
				more = false // malformed: the reader reports it
				break scan
			}
			pings++
		case packet.PUBLISH, packet.PUBACK, packet.PUBREC, packet.PUBREL, packet.PUBCOMP:
		default:
			more = false
			break scan
		}
		buf = buf[size:]
	}
	if n := pings - int(c.plim.pings); n > 0 {
		c.plim.pings = uint16(pings)
		c.outMu.Lock()
		if !c.final {
			for range n {
				c.out = append(c.out, &packet.Pingresp{})
			}
			// Started although the reader is handling a packet: it
			// waits, and would write only after the wait.
			c.spawnWriterLocked()
		}
		c.outMu.Unlock()
	}
	return more
}
