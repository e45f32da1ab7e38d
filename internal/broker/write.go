package broker

import (
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
	exit := make(chan struct{})
	c.writerExit = exit
	c.outMu.Unlock()
	defer close(exit)
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

// sendQoS0 queues a QoS 0 PUBLISH of size bytes (topic and payload).
// Past the connection's QoS 0 byte budget (a slow consumer) the oldest
// QoS 0 messages waiting are dropped to make room (overload.go). It
// reports whether the message was queued, and whether the QoS 0 backlog
// is over the mark at which its publishers are held back.
func (c *conn) sendQoS0(p outPublish, size int) (sent, congested bool) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.final || c.outBytes+size > c.srv.cfg.MaxOutboundBytes && !c.dropOldestQoS0Locked(size) {
		c.srv.droppedSlow(c, 1)
		return false, false
	}
	c.outBytes += size
	c.outQ0++
	c.out = append(c.out, p)
	c.startWriterLocked()
	return true, c.q0CongestedLocked()
}

// startWriterLocked starts the writer goroutine if the connection may
// write and none is running. The writer exits when the queue is empty, so
// an idle connection has only its reader goroutine. c.outMu is held.
func (c *conn) startWriterLocked() {
	if c.writing || !c.canWrite || (c.handling && !c.final) {
		return
	}
	c.writing = true
	exit := make(chan struct{})
	c.writerExit = exit
	c.srv.goroutines.goTracked(goWriter, func() {
		defer close(exit)
		c.writeLoop()
	})
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
	for {
		c.outMu.Lock()
		if len(c.out) == 0 {
			// Done for now. The writer-owned fields are touched before
			// writing is cleared: the next writer may start right after.
			if cap(c.wbuf) > 4<<10 {
				c.wbuf = nil // an idle connection keeps no large buffer
			}
			c.writing = false
			c.writerExit = nil
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

		c.wbuf = c.wbuf[:0]
		for i, p := range batch {
			batch[i] = nil
			var err error
			c.wbuf, err = c.encode(c.wbuf, p)
			if err != nil {
				c.log.Error("broker: cannot encode outbound packet; dropped", "type", p.Type(), "err", err)
				continue
			}
			if len(c.wbuf) >= flushAt {
				if !c.flush() {
					c.stopWriting()
					return
				}
			}
		}
		if !c.flush() {
			c.stopWriting()
			return
		}
		c.outMu.Lock()
		c.spare = batch[:0]
		c.outMu.Unlock()
	}
}

// stopWriting ends writing after a failed write: nothing more is queued.
func (c *conn) stopWriting() {
	c.outMu.Lock()
	c.final = true
	c.writing = false
	c.writerExit = nil
	c.out = nil
	c.outMu.Unlock()
}

func (c *conn) flush() bool {
	if len(c.wbuf) == 0 {
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
	n, err := c.nc.Write(c.wbuf)
	c.srv.stats.bytesOut.Add(int64(n))
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
		c.wbuf = nil // do not keep a large buffer for an idle connection
	}
	return true
}

// encode appends p, applying outbound topic aliases to PUBLISH.
func (c *conn) encode(dst []byte, p packet.Packet) ([]byte, error) {
	switch q := p.(type) {
	case shortAck:
		return packet.AppendShortAck(dst, q.typ, q.pid, q.code, c.version), nil
	case outPublish:
		// Built in the writer's own packet, cleared afterwards so that an
		// idle connection does not keep the last message alive.
		q.d.fillPublish(&c.wpub, &clock{now: c.srv.cfg.Now}, q.dup)
		dst, err := c.encodePublish(dst, &c.wpub)
		c.wpub = packet.Publish{}
		return dst, err
	case *packet.Publish:
		return c.encodePublish(dst, q)
	case *packet.Suback:
		return c.encodeAck(dst, p, &q.Properties)
	case *packet.Unsuback:
		return c.encodeAck(dst, p, &q.Properties)
	}
	return packet.Append(dst, p, c.version)
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
	c.srv.stats.messagesOut.Add(1)
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
