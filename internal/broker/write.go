package broker

import (
	"net"
	"sync"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// setHandling marks whether the reader is handling a packet. While it is,
// packets queued for this connection (acknowledgements, the next
// in-flight messages) do not start a writer goroutine: the reader writes
// them itself once its input is drained, which saves a goroutine hand-off
// per exchange.
func (c *conn) setHandling(on bool) {
	c.outMu.Lock()
	c.handling = on
	c.outMu.Unlock()
}

// writeInline runs the writer on the reader goroutine if packets are
// waiting and no writer is running.
func (c *conn) writeInline() {
	c.outMu.Lock()
	if c.writing || !c.canWrite || len(c.out) == 0 {
		c.outMu.Unlock()
		return
	}
	c.writing = true
	c.outMu.Unlock()
	c.writeLoop()
}

// send queues a control packet for the writer. Packets are never dropped
// here: QoS 1/2 traffic is bounded by the in-flight window.
func (c *conn) send(p packet.Packet) {
	c.outMu.Lock()
	if !c.final {
		c.out = append(c.out, p)
		c.startWriterLocked()
	}
	c.outMu.Unlock()
}

// sendPublish queues the PUBLISH of d, in flight on this connection
// (dup: a resend). A first send is queued as d itself, which allocates
// nothing. from is the connection whose reader routes it, or nil (see
// wakeWriterLocked).
func (c *conn) sendPublish(d *delivery, dup bool, from *conn) {
	var p packet.Packet = d
	if dup {
		p = outPublish{d: d, dup: true}
	}
	c.outMu.Lock()
	if !c.final {
		c.out = append(c.out, p)
		c.wakeWriterLocked(from)
	}
	c.outMu.Unlock()
}

// sendQoS0 queues a QoS 0 PUBLISH (a *pubEnc shared with other
// connections, or a *delivery) of size bytes (topic and payload). Past
// the connection's QoS 0 byte budget (a slow consumer) the oldest QoS 0
// messages waiting are dropped to make room (overload.go). It reports
// whether the message was queued, and whether the QoS 0 backlog is over
// the mark at which its publishers are held back. from is as for
// sendPublish.
func (c *conn) sendQoS0(p packet.Packet, size int, from *conn) (sent, congested bool) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.final || c.outBytes+size > c.srv.cfg.MaxOutboundBytes && !c.dropOldestQoS0Locked(size) {
		c.srv.droppedSlow(c, 1)
		return false, false
	}
	c.outBytes += size
	c.outQ0++
	c.out = append(c.out, p)
	c.wakeWriterLocked(from)
	return true, c.q0CongestedLocked()
}

// Writers are woken once per batch of inbound messages, not once per
// message. A publisher's reader that routes a message while more complete
// packets wait in its read buffer does not start the writers of the
// receiving connections at once: it notes them (from.kicks) and starts
// them all when its buffered input is routed, before it waits for
// anything (kickWriters). The receivers' writers then find several
// messages queued and write them with one system call, where a writer
// started per message would write each alone: in a fan-out to a thousand
// subscribers this divides the writes, and the goroutines started, by the
// number of messages read at once. The hold is bounded: a connection with
// deferWriteMax bytes queued is woken at once, and a reader kicks once it
// has held back maxDeferred packets.

// deferWriteMax is the QoS 0 backlog from which a held-back writer is
// started at once: about one full write.
const deferWriteMax = 64 << 10

// maxDeferred bounds the PUBLISH packets one reader queues for other
// connections before it starts their writers, and so the delay it adds
// to the first of them (some milliseconds of routing).
const maxDeferred = 1 << 16

// maxOwnHeld bounds how many packets a reader handles, and how many it
// lets queue on its own connection, while it holds that connection's
// writer back (holdOwnWriter): a client's acknowledgements wait for at
// most that much routing.
const maxOwnHeld = 64

// wakeWriterLocked has what was just queued written: at once, or, when
// from is the connection whose reader is routing it and that reader has
// more input to route, once that reader calls kickWriters. c.outMu is
// held; the caller runs on from's reader, which owns from.kicks.
func (c *conn) wakeWriterLocked(from *conn) {
	if from == nil || from == c || c.final || c.outBytes >= deferWriteMax {
		c.startWriterLocked()
		return
	}
	if !c.canWrite {
		return
	}
	// A running writer stops after the batch it is writing (heldLocked)
	// rather than take this batch's messages one write at a time.
	if !c.kickPending {
		c.kickPending = true
		from.kicks = append(from.kicks, c)
	}
	from.deferred++
}

// heldLocked reports whether a reader holds this connection's writer
// back: a running writer then stops after its batch, unless the
// connection is closing or its QoS 0 backlog reached deferWriteMax.
// c.outMu is held.
func (c *conn) heldLocked() bool {
	return c.kickPending && !c.final && c.outBytes < deferWriteMax
}

// kickWriters starts the writers this reader held back. It runs on the
// reader, which must call it before anything that may make it wait (a
// read of input not yet buffered, the read budget, the rate limit, a
// store's commit slot, a re-authentication) and when it stops reading.
func (c *conn) kickWriters() {
	if c.ownHeld > 0 {
		// The reader held its own writer back (holdOwnWriter): started
		// even while a packet is being handled, since the reader may
		// wait.
		c.ownHeld = 0
		c.outMu.Lock()
		if len(c.out) > 0 {
			c.spawnWriterLocked()
		}
		c.outMu.Unlock()
	}
	if len(c.kicks) == 0 {
		return
	}
	for i, t := range c.kicks {
		c.kicks[i] = nil
		t.outMu.Lock()
		t.kickPending = false
		if len(t.out) > 0 {
			t.startWriterLocked()
		}
		t.outMu.Unlock()
	}
	if cap(c.kicks) > 1024 {
		c.kicks = nil // a quiet publisher keeps no large list
	} else {
		c.kicks = c.kicks[:0]
	}
	c.deferred = 0
}

// startWriterLocked starts the writer goroutine if the connection may
// write and none is running. The writer exits when the queue is empty, so
// an idle connection has only its reader goroutine. c.outMu is held.
func (c *conn) startWriterLocked() {
	if c.handling && !c.final {
		return
	}
	c.spawnWriterLocked()
}

// spawnWriterLocked starts the writer goroutine if the connection may
// write, has something to write and none is running. c.outMu is held.
func (c *conn) spawnWriterLocked() {
	if c.writing || !c.canWrite {
		return
	}
	c.writing = true
	// As goTracked does, without its closures: one writer starts per
	// batch, and this allocates only the goroutine's own.
	c.srv.goroutines.add(goWriter)
	go c.writeMain()
}

// writeMain is the writer goroutine started by startWriterLocked.
func (c *conn) writeMain() {
	defer c.srv.goroutines.done(goWriter)
	c.writeLoop()
}

// writerStoppedLocked runs when the writer clears writing: it wakes
// whoever waits for it (finish). c.outMu is held.
func (c *conn) writerStoppedLocked() {
	c.writing = false
	if c.writerDone != nil {
		close(c.writerDone)
		c.writerDone = nil
	}
}

// writeLoop is the writer goroutine: it drains the outbound queue in
// batches, encoding each batch into one buffer, and exits when the queue
// is empty (closing the socket if the connection is ending).
func (c *conn) writeLoop() {
	defer func() {
		if r := recover(); r != nil {
			c.srv.stats.panics.Add(1)
			c.log.Error("broker: panic in connection writer; connection closed", "panic", r)
			c.stopWriting()
			c.nc.Close()
		}
	}()
	const flushAt = 64 << 10
	for wrote := false; ; wrote = true {
		c.outMu.Lock()
		if len(c.out) == 0 || (wrote && c.heldLocked()) {
			// Done for now, or held back after a batch: the reader
			// holding it back starts a writer again (a writer that was
			// just started writes what it finds first, so that a kick
			// is never lost to the next hold). The writer-owned fields
			// are touched before writing is cleared: the next writer may
			// start right after. An idle connection keeps no write
			// buffer and no large queue.
			putWriteBuf(c.wbuf)
			c.wbuf = nil
			if c.wpub != nil {
				publishScratch.Put(c.wpub) // cleared after each use
				c.wpub = nil
			}
			if len(c.out) == 0 && cap(c.out) > idleQueueCap {
				c.out = nil // held back, it still has its packets
			}
			if cap(c.spare) > idleQueueCap {
				c.spare = nil
			}
			c.writerStoppedLocked()
			final := c.final
			c.outMu.Unlock()
			if final {
				// Flushed: the reader closes the connection.
				c.wakeReader()
			}
			return
		}
		// Swap the queue with the spare slice; the two never share a
		// backing array.
		batch := c.out
		c.out = c.spare[:0]
		c.spare = nil
		c.q0DrainedLocked()
		c.outBytes = 0
		c.outMu.Unlock()

		if c.wbuf == nil {
			c.wbuf = getWriteBuf(batchSize(batch))
		}
		c.wbuf = c.wbuf[:0]
		c.wclk = clock{now: c.srv.cfg.Now}
		for i, p := range batch {
			batch[i] = nil
			var err error
			c.wbuf, err = c.encode(c.wbuf, p)
			if err != nil {
				c.encodeFailed(p, err)
				continue
			}
			if len(c.wbuf)+c.wshared >= flushAt {
				c.flushCounts()
				if !c.flush() {
					c.stopWriting()
					return
				}
			}
		}
		c.flushCounts()
		if !c.flush() {
			c.stopWriting()
			return
		}
		c.outMu.Lock()
		c.spare = batch[:0]
		c.outMu.Unlock()
	}
}

// encodeFailed logs an outbound packet that could not be encoded. Not
// inlined: its arguments would make writeLoop's stack frame larger, and a
// writer goroutine starts with the smallest stack, which the encoding of
// a PUBLISH below writeLoop then has to grow.
//
//go:noinline
func (c *conn) encodeFailed(p packet.Packet, err error) {
	c.log.Error("broker: cannot encode outbound packet; dropped", "type", p.Type(), "err", err)
}

// idleQueueCap is the capacity of outbound queue slices a connection
// keeps once its writer has drained them.
const idleQueueCap = 256

// batchSize estimates the bytes batch encodes to: exact for shared
// encodings, a guess from the message for the rest.
func batchSize(batch []packet.Packet) int {
	n := 0
	for _, p := range batch {
		switch q := p.(type) {
		case *pubEnc:
			n += len(q.b)
		case *delivery:
			n += 64 + len(q.msg.Topic) + len(q.msg.Payload)
		case outPublish:
			n += 64 + len(q.d.msg.Topic) + len(q.d.msg.Payload)
		default:
			n += 16
		}
	}
	return n
}

// Write buffers are shared by all connections through pools of a few
// sizes: a writer takes one for a batch and gives it back when its queue
// is drained, so that neither a connection at rest nor one that writes
// in bursts keeps or grows a buffer of its own.
var writeBufSizes = [...]int{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10}

var writeBufPools [len(writeBufSizes)]sync.Pool

// getWriteBuf returns an empty buffer with room for n bytes, or for the
// largest pooled size when n is larger (the buffer grows as it fills).
func getWriteBuf(n int) []byte {
	for i, size := range writeBufSizes {
		if n <= size || i == len(writeBufSizes)-1 {
			if bp, ok := writeBufPools[i].Get().(*[]byte); ok {
				b := (*bp)[:0]
				*bp = nil
				bufBoxes.Put(bp)
				return b
			}
			return make([]byte, 0, size)
		}
	}
	return nil
}

// putWriteBuf gives b back to the pool of the largest size it holds.
// Buffers above a MiB (grown for a large packet) are left to the garbage
// collector.
func putWriteBuf(b []byte) {
	if cap(b) < writeBufSizes[0] || cap(b) > 1<<20 {
		return
	}
	i := len(writeBufSizes) - 1
	for cap(b) < writeBufSizes[i] {
		i--
	}
	bp := bufBoxes.Get().(*[]byte)
	*bp = b[:0]
	writeBufPools[i].Put(bp)
}

// bufBoxes holds the *[]byte that carry buffers in the pools, so that
// giving a buffer back allocates nothing.
var bufBoxes = sync.Pool{New: func() any { return new([]byte) }}

// stopWriting ends writing after a failed write: nothing more is queued.
func (c *conn) stopWriting() {
	c.outMu.Lock()
	c.final = true
	c.writerStoppedLocked()
	c.out = nil
	c.outMu.Unlock()
}

func (c *conn) flush() bool {
	if len(c.wbuf) == 0 && len(c.wsegs) == 0 {
		return true
	}
	// The write deadline is moved forward only when an eighth of the
	// timeout has passed since it was last set, so a write may block for
	// between 7/8 of WriteTimeout and all of it; updating the timer on
	// every flush showed at full load.
	if now := time.Now(); now.Sub(c.wdlSet) > c.srv.cfg.WriteTimeout/8 && !c.closing.Load() {
		c.nc.SetWriteDeadline(now.Add(c.srv.cfg.WriteTimeout))
		c.wdlSet = now
		if c.closing.Load() {
			// kill ran meanwhile: keep its shorter deadline.
			c.nc.SetWriteDeadline(now.Add(closeGrace))
		}
	}
	var n int
	var err error
	if len(c.wsegs) == 0 {
		n, err = c.nc.Write(c.wbuf)
	} else {
		// Shared tails go out in place, with the pieces of the buffer
		// between them, in one writev. wvec is consumed by WriteTo; it
		// is a field so that it does not escape per flush.
		if c.wcut < len(c.wbuf) {
			c.wsegs = append(c.wsegs, c.wbuf[c.wcut:])
		}
		c.wvec = c.wsegs
		var n64 int64
		n64, err = c.wvec.WriteTo(c.wtcp)
		n = int(n64)
		clear(c.wsegs) // no shared encoding is kept past its write
		c.wsegs, c.wvec, c.wcut, c.wshared = c.wsegs[:0], nil, 0, 0
	}
	c.ctr.wireOut.Add(int64(n))
	c.wbuf = c.wbuf[:0]
	if err != nil {
		if !c.closing.Load() {
			c.log.Info("broker: write failed; disconnecting", "err", err)
		}
		c.noteEnd(0, "socket error: "+err.Error())
		c.closing.Store(true)
		c.nc.Close()
		return false
	}
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = nil // grown for a large packet: not kept
	}
	return true
}

// encode appends p, applying outbound topic aliases to PUBLISH.
func (c *conn) encode(dst []byte, p packet.Packet) ([]byte, error) {
	c.ctr.packetsOut.Add(1)
	switch q := p.(type) {
	case shortAck:
		return packet.AppendShortAck(dst, q.typ, q.pid, q.code, c.version), nil
	case *pubEnc:
		return c.appendShared(dst, q)
	case *delivery:
		return c.appendDelivery(dst, q, false)
	case outPublish:
		return c.appendDelivery(dst, q.d, q.dup)
	case *packet.Publish:
		return c.encodePublish(dst, q)
	case *packet.Suback:
		return c.encodeAck(dst, p, &q.Properties)
	case *packet.Unsuback:
		return c.encodeAck(dst, p, &q.Properties)
	}
	return packet.Append(dst, p, c.version)
}

// appendShared appends a QoS 0 PUBLISH encoded for many connections: its
// bytes as they are, unless this connection needs others (an outbound
// topic alias, or a Message Expiry Interval that moved on while the
// packet waited [MQTT-3.3.2-6]).
func (c *conn) appendShared(dst []byte, e *pubEnc) ([]byte, error) {
	expiry := e.expiry
	if e.v5 && !e.msg.Expires.IsZero() {
		expiry = e.msg.remainingExpiry(c.wclk.get())
	}
	if c.aliasOutMax == 0 && expiry == e.expiry {
		c.countOut(0, len(e.msg.Payload))
		if c.writev(len(e.b)) {
			return c.appendTail(dst, e.b), nil
		}
		return append(dst, e.b...), nil
	}
	// Built in the writer's own packet, cleared afterwards so that an
	// idle connection does not keep the last message alive.
	p := c.scratchPublish()
	e.fill(p, expiry, 0, false)
	dst, err := c.encodePublish(dst, p)
	*p = packet.Publish{}
	return dst, err
}

// appendDelivery appends the PUBLISH of d: a copy of the routing pass's
// shared encoding with this delivery's packet identifier and DUP flag
// when it has one that fits this connection, else encoded here.
func (c *conn) appendDelivery(dst []byte, d *delivery, dup bool) ([]byte, error) {
	if e := d.enc; e != nil && c.aliasOutMax == 0 && e.v5 == (c.version == packet.V5) && (!e.v5 || e.expiry == d.expiryAt(&c.wclk)) {
		c.countOut(d.qos, len(d.msg.Payload))
		start := len(dst)
		head := len(e.b) // what this connection gets a copy of
		if d.qos > 0 {
			head = e.idAt + 2
		}
		if c.writev(len(e.b) - head) {
			dst = append(dst, e.b[:head]...)
			if d.qos > 0 {
				packet.PatchPublish(dst[start:], e.idAt, dup, d.pid)
			}
			return c.appendTail(dst, e.b[head:]), nil
		}
		dst = append(dst, e.b...)
		if d.qos > 0 {
			packet.PatchPublish(dst[start:], e.idAt, dup, d.pid)
		}
		return dst, nil
	}
	p := c.scratchPublish()
	d.fillPublish(p, &c.wclk, dup)
	dst, err := c.encodePublish(dst, p)
	*p = packet.Publish{}
	return dst, err
}

// publishScratch holds the writers' scratch packets (conn.wpub), each
// empty.
var publishScratch = sync.Pool{New: func() any { return new(packet.Publish) }}

// scratchPublish returns the writer's scratch packet, empty, taking one
// from publishScratch for this run of the writer if it has none.
func (c *conn) scratchPublish() *packet.Publish {
	if c.wpub == nil {
		c.wpub = publishScratch.Get().(*packet.Publish)
	}
	return c.wpub
}

// writevMin is the size from which a shared encoding (after the bytes a
// connection patches) is written in place with writev rather than copied
// into the write buffer: below it, copying costs less than another I/O
// vector.
const writevMin = 2 << 10

// writev reports whether n shared bytes are written in place: on plain
// TCP connections only. Through TLS each piece would become a record of
// its own; the encryption copies the bytes anyway.
func (c *conn) writev(n int) bool {
	if n < writevMin {
		return false
	}
	if !c.wtcpKnown {
		c.wtcp, c.wtcpKnown = tcpOf(c.nc), true
	}
	return c.wtcp != nil
}

// appendTail ends the current piece of the write buffer at dst's end and
// queues tail, shared and read-only, to be written in place after it. It
// returns dst, whose bytes from here on go into the next piece.
func (c *conn) appendTail(dst []byte, tail []byte) []byte {
	if c.wcut < len(dst) {
		c.wsegs = append(c.wsegs, dst[c.wcut:len(dst):len(dst)])
	}
	c.wsegs = append(c.wsegs, tail)
	c.wcut = len(dst)
	c.wshared += len(tail)
	return dst
}

// tcpOf returns the TCP connection writes to nc go to unchanged, or nil:
// nc itself, or the connection under a listener.Conn (PROXY protocol and
// listener bookkeeping), which changes how it is read and addressed but
// writes straight to its TCP connection.
func tcpOf(nc net.Conn) *net.TCPConn {
	switch x := nc.(type) {
	case *net.TCPConn:
		return x
	case interface {
		PeerAddr() net.Addr // listener.Conn
		NetConn() net.Conn
	}:
		t, _ := x.NetConn().(*net.TCPConn)
		return t
	}
	return nil
}

// encodeAck appends a SUBACK or UNSUBACK (props are its properties)
// within the client's Maximum Packet Size [MQTT-3.1.2-24]: the Reason
// String and User Properties go first [MQTT-3.9.2-1] [MQTT-3.11.2-1]
// [MQTT-3.11.2-2]; an acknowledgement still too large (a client that
// subscribed to more filters than its own limit can acknowledge) is not
// sent, which the specification requires of any packet over the limit;
// its subscriptions are made all the same.
func (c *conn) encodeAck(dst []byte, p packet.Packet, props *packet.Properties) ([]byte, error) {
	start := len(dst)
	out, err := packet.Append(dst, p, c.version)
	if err != nil || c.maxOut == 0 || uint32(len(out)-start) <= c.maxOut {
		return out, err
	}
	props.Unmark(packet.PropReasonString)
	props.User = nil
	out, err = packet.Append(out[:start], p, c.version)
	if err != nil || uint32(len(out)-start) <= c.maxOut {
		return out, err
	}
	c.log.Info("broker: acknowledgement larger than the client's Maximum Packet Size; not sent",
		"type", p.Type(), "size", len(out)-start, "max", c.maxOut)
	return out[:start], nil
}

func (c *conn) encodePublish(dst []byte, p *packet.Publish) ([]byte, error) {
	c.countOut(p.QoS, len(p.Payload))
	if c.aliasOutMax > 0 {
		c.applyAlias(p)
	}
	return packet.Append(dst, p, c.version)
}

// applyAlias assigns topic aliases to the first distinct topics sent to
// the client, up to its Topic Alias Maximum, and then sends the alias
// alone [MQTT-3.3.2-11]. Topics seen after the table is
// full go in full. An alias is not used where it would make the packet
// larger than the client's Maximum Packet Size [MQTT-3.1.2-24].
func (c *conn) applyAlias(p *packet.Publish) {
	if c.aliasesOut == nil {
		c.aliasesOut = make(map[string]uint16)
	}
	topic := p.Topic
	if a, ok := c.aliasesOut[topic]; ok {
		p.Properties.SetTopicAlias(a)
		p.Topic = ""
		if c.maxOut > 0 && !fits(p, c.version, c.maxOut) {
			p.Topic = topic
			p.Properties.Unmark(packet.PropTopicAlias)
		}
		return
	}
	if len(c.aliasesOut) < int(c.aliasOutMax) {
		a := uint16(len(c.aliasesOut) + 1)
		p.Properties.SetTopicAlias(a)
		if c.maxOut > 0 && !fits(p, c.version, c.maxOut) {
			p.Properties.Unmark(packet.PropTopicAlias)
			return
		}
		c.aliasesOut[topic] = a
	}
}

// fits reports whether p encodes in at most max bytes.
func fits(p packet.Packet, v packet.Version, max uint32) bool {
	n, err := packet.Size(p, v)
	return err == nil && uint32(n) <= max
}

// countOut counts a PUBLISH written in the writer's batch; flushCounts
// adds the batch's counts to the connection's statistics shard, once per
// flush rather than once per message (in a fan-out, many writers share a
// shard).
func (c *conn) countOut(qos byte, payload int) {
	c.wmsgs[qos]++
	c.wpay[qos] += int64(payload)
}

func (c *conn) flushCounts() {
	for q := range c.wmsgs {
		if c.wmsgs[q] != 0 {
			c.ctr.msgsOut[q].Add(c.wmsgs[q])
			c.ctr.payloadOut[q].Add(c.wpay[q])
			c.wmsgs[q], c.wpay[q] = 0, 0
		}
	}
}
