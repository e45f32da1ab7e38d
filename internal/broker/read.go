package broker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// armKeepAlive sets the read deadline for the next packet: one and a half
// times the keep alive from now [MQTT-3.1.2-24].
func (c *conn) armKeepAlive() {
	c.rearm = false
	if c.keepAlive > 0 {
		c.nc.SetReadDeadline(time.Now().Add(c.keepAlive * 3 / 2))
	}
}

// rearmKeepAlive runs before a read that may wait, when the reader waited
// since the deadline was set (conn.rearm): the wait was the server's,
// not the client's, so the keep alive counts from now. A kill that set
// closing before the deadline moved may have woken the reader already
// (wakeReader): the deadline is put back in the past then, so the read
// returns at once as the kill meant.
func (c *conn) rearmKeepAlive() {
	c.armKeepAlive()
	if c.closing.Load() {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
}

// readLoop reads and handles packets until the connection ends, and
// returns false then. It returns true when it handed reading over to a
// fresh goroutine (goQuiet): the caller must return at once. The read
// deadline for the first packet is already set (armKeepAlive, goQuiet).
func (c *conn) readLoop() (handedOver bool) {
	defer func() {
		if !handedOver { // else the next reader owns c.kicks (empty then)
			c.kickWriters()
		}
	}()
	for {
		if c.closing.Load() {
			// kill was called: stop reading packets (the writer wakes a
			// blocked read once it has flushed, see wakeReader).
			return false
		}
		if c.in.br.Buffered() == 0 {
			// Wait for input here, so that a short acknowledgement at
			// its start can take the fast path below.
			if _, err := c.in.br.Peek(1); err != nil {
				c.readError(err)
				return false
			}
		}
		if typ, pid, ok := c.in.r.PeekShortAck(); ok {
			// One acknowledgement arrives per QoS 1/2 message delivered:
			// the 4-byte form is taken from the read buffer without a
			// packet struct; anything else goes through the decoder.
			c.ctr.packetIn(2)
			c.setHandling(true)
			c.handleAck(typ, pid, packet.Success)
			c.setHandling(false)
			c.active = true
			if !c.throttle(4) {
				return false
			}
		} else {
			p, err := c.in.r.ReadPacket()
			if err != nil {
				c.releaseBody()
				c.readError(err)
				return false
			}
			c.ctr.packetIn(c.bodySize)
			if _, ping := p.(*packet.Pingreq); !ping {
				c.active = true
			}
			c.setHandling(true)
			ok := c.handle(p)
			c.setHandling(false)
			c.releaseBody()
			if !ok || !c.throttle(2+c.bodySize) {
				return false
			}
		}
		if c.deferred > 0 && c.deferred < maxDeferred && c.raw != nil && !isTLS(c.nc) && c.in.r.BufferedPacket() == 0 {
			// Writers are held back and the next packet is not all
			// here: take in what has arrived meanwhile, without waiting,
			// and route it before starting them.
			c.probeInput()
		}
		if c.in.br.Buffered() == 0 {
			// About to wait for input: start the writers held back for
			// the messages routed (write.go), and write what handling
			// queued on this goroutine rather than waking a writer
			// goroutine.
			c.ownHeld = 0 // written here
			c.kickWriters()
			c.writeInline()
			if c.raw != nil {
				now := time.Now()
				quiet := now.Sub(c.lastDrain) >= quietAfter
				c.lastDrain = now
				if quiet {
					if c.goQuiet() {
						return true
					}
					continue // goQuiet set the read deadline
				}
			}
			// The deadline moves only before a read that may wait:
			// packets still buffered arrived with the last read, so
			// their keep alive already counts from after it. (Moving it
			// per packet costs a timer update per message at full load.)
			c.armKeepAlive()
		} else if c.in.r.BufferedPacket() > 0 || !c.topUp() {
			// More input is waiting (perhaps only part of a packet, and
			// no more of it had arrived). Queued packets, this
			// connection's and other connections', wait for the next
			// packet only if all of it is buffered, so that handling it
			// cannot wait for the network.
			whole := c.in.r.BufferedPacket() > 0
			if c.deferred > 0 && (c.deferred >= maxDeferred || !whole) {
				c.kickWriters()
			}
			c.holdOwnWriter(whole)
		} else {
			// topUp completed the next packet: it is handled before
			// what was queued is written, as if it had come with the
			// last read.
			if c.deferred >= maxDeferred {
				c.kickWriters()
			}
			c.holdOwnWriter(true)
		}
	}
}

// holdOwnWriter runs between two packets while input is buffered. When
// all of the next packet is (whole), what handling queued on this
// connection (its acknowledgements above all) waits for it, to go out in
// one write with the next packet's: written by the reader itself once its
// input is drained (readLoop), or by the writer kickWriters starts before
// anything makes the reader wait. A writer goroutine started per packet
// would cost a hand-off, and often a write of its own, for each. The hold
// is bounded: the writer is started once maxOwnHeld packets were handled
// meanwhile, or the queue holds maxOwnHeld packets or deferWriteMax
// bytes, or when the next packet is not all here (reading the rest may
// wait for the network), or when the connection is closing.
func (c *conn) holdOwnWriter(whole bool) {
	c.outMu.Lock()
	if whole && !c.final && c.ownHeld < maxOwnHeld && len(c.out) < maxOwnHeld && c.outBytes < deferWriteMax {
		c.ownHeld++
	} else {
		c.ownHeld = 0
		c.startWriterLocked()
	}
	c.outMu.Unlock()
}

func (c *conn) readError(err error) {
	var pe *packet.Error
	switch {
	case c.closing.Load():
		// We are closing it ourselves.
	case errors.As(err, &pe):
		c.srv.stats.protocolErrors.Add(1)
		c.logViolation(err)
		c.kill(pe.Code, pe.Reason)
		if errors.Is(err, packet.ErrPacketTooLarge) {
			c.limitVerdict(LimitPacketSize, pe.Reason)
		}
	case isTimeout(err):
		c.log.Info("broker: keep alive timeout; disconnecting", "keep_alive", c.keepAlive)
		c.kill(packet.KeepAliveTimeout, "keep alive timeout")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		c.log.Debug("broker: connection closed by client", "err", err)
		c.kill(0, "client closed the connection without DISCONNECT")
	default:
		c.log.Info("broker: read error; disconnecting", "err", err)
		c.kill(0, "socket error: "+err.Error())
	}
}

// isTimeout reports whether err is a deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// protocolError disconnects for a rule broken by a well-formed packet.
func (c *conn) protocolError(code packet.ReasonCode, reason string) bool {
	c.srv.stats.protocolErrors.Add(1)
	c.log.Info("broker: protocol violation; disconnecting", "code", code, "reason", reason)
	c.kill(code, reason)
	return false
}

// handle dispatches one packet; it returns false to stop reading.
func (c *conn) handle(p packet.Packet) bool {
	switch p := p.(type) {
	case *packet.Publish:
		return c.handlePublish(p)
	case *packet.Puback:
		c.handleAck(packet.PUBACK, p.PacketID, p.ReasonCode)
	case *packet.Pubrec:
		c.handleAck(packet.PUBREC, p.PacketID, p.ReasonCode)
	case *packet.Pubrel:
		c.handleAck(packet.PUBREL, p.PacketID, p.ReasonCode)
	case *packet.Pubcomp:
		c.handleAck(packet.PUBCOMP, p.PacketID, p.ReasonCode)
	case *packet.Subscribe:
		c.handleSubscribe(p)
	case *packet.Unsubscribe:
		c.handleUnsubscribe(p)
	case *packet.Pingreq:
		if c.plim.pings > 0 {
			c.plim.pings-- // answered while the reader waited (readahead.go)
		} else {
			c.send(&packet.Pingresp{})
		}
		return c.ping()
	case *packet.Disconnect:
		return c.handleDisconnect(p)
	case *packet.Connect:
		// [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
		return c.protocolError(packet.ProtocolError, "second CONNECT")
	case *packet.Auth:
		c.kickWriters() // re-authentication may wait on the network
		return c.handleAuth(p)
	default:
		return c.protocolError(packet.ProtocolError, fmt.Sprintf("unexpected %s from a client", p.Type()))
	}
	return true
}

// handleAck handles PUBACK, PUBREC, PUBREL and PUBCOMP (their properties,
// a reason string or user properties, carry nothing the broker acts on).
func (c *conn) handleAck(typ packet.Type, pid uint16, code packet.ReasonCode) {
	switch typ {
	case packet.PUBACK:
		if !c.sess.ack(c.srv, pid, 1) {
			c.log.Debug("broker: PUBACK for unknown packet identifier", "pid", pid)
		}
	case packet.PUBREC:
		if c.sess.received(c.srv, pid, code) {
			if !code.IsError() {
				c.send(shortAck{typ: packet.PUBREL, pid: pid})
			}
		} else {
			// Answer an unknown identifier with PUBREL 0x92 so the
			// client can finish its flow [MQTT-4.3.3-4].
			c.send(shortAck{typ: packet.PUBREL, code: packet.PacketIDNotFound, pid: pid})
		}
	case packet.PUBREL:
		c.sess.mu.Lock()
		_, ok := c.sess.inboundQoS2[pid]
		delete(c.sess.inboundQoS2, pid)
		c.sess.mu.Unlock()
		code := packet.Success
		if !ok {
			code = packet.PacketIDNotFound
		} else if c.srv.persisting(c.sess) {
			// PUBCOMP follows the durable removal: a lost removal would
			// drop the client's next message with this identifier.
			c.persistRelease(pid)
			return
		}
		c.send(shortAck{typ: packet.PUBCOMP, code: code, pid: pid})
	case packet.PUBCOMP:
		if !c.sess.ack(c.srv, pid, 2) {
			c.log.Debug("broker: PUBCOMP for unknown packet identifier", "pid", pid)
		}
	}
}

func (c *conn) handleDisconnect(p *packet.Disconnect) bool {
	if c.version == packet.V5 && p.Properties.Has(packet.PropSessionExpiry) {
		if c.sessionExpiryZero && p.Properties.SessionExpiry != 0 {
			return c.protocolError(packet.ProtocolError, "session expiry raised from 0 in DISCONNECT")
		}
		c.srv.setExpiry(c.sess, p.Properties.SessionExpiry)
	}
	c.cleanEnd = !p.ReasonCode.IsError()
	if p.ReasonCode != packet.DisconnectWithWill {
		// [MQTT-3.14.4-3]: a normal DISCONNECT discards the will.
		c.normalExit.Store(true)
	}
	c.kill(0, clientDisconnectReason(p.ReasonCode))
	return false
}
