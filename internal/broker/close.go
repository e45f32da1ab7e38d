package broker

import (
	"crypto/tls"
	"net"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// kill starts closing the connection. For a v5 client that completed
// CONNECT and a non-zero code, DISCONNECT with that code is sent first
// [MQTT-4.13.2-1]. Safe to call from any goroutine, more than once.
//
// Before CONNECT completes, kill closes the socket: there is nothing to
// deliver and closing is what interrupts the handshake. After it, the
// writer flushes what is queued within closeGrace and then wakes the
// reader, which detaches the session and closes the socket gracefully
// (finish); the socket is never closed under a DISCONNECT still on its
// way, nor before the session is gone.
func (c *conn) kill(code packet.ReasonCode, reason string) {
	c.noteEnd(code, reason)
	// closing is set, and the DISCONNECT queued, under one hold of outMu:
	// a reader that stops meanwhile runs finish, whose kill waits here
	// until the DISCONNECT is queued and the writer started, and then
	// waits for that writer. With closing set before outMu was taken,
	// finish could end all writing in between and the DISCONNECT was
	// lost. Nothing below takes a lock while outMu is held
	// (SetWriteDeadline takes none in net, crypto/tls or the listener
	// package).
	c.outMu.Lock()
	if !c.closing.CompareAndSwap(false, true) {
		c.outMu.Unlock()
		return
	}
	close(c.killed)
	if !c.established.Load() {
		c.outMu.Unlock()
		c.nc.Close()
		return
	}
	// A peer that does not read cannot hold the connection open: the
	// remaining writes get closeGrace (flush does not move this deadline
	// once closing is set).
	c.nc.SetWriteDeadline(time.Now().Add(closeGrace))
	if code != 0 && c.established.Load() && c.version == packet.V5 {
		d := &packet.Disconnect{ReasonCode: code}
		if reason != "" {
			d.Properties.SetReasonString(reason)
			if c.maxOut > 0 && !fits(d, c.version, c.maxOut) {
				// [MQTT-3.14.2-3]
				d.Properties.Unmark(packet.PropReasonString)
			}
		}
		c.out = append(c.out, d)
	}
	c.final = true
	c.q0gate.release() // nobody waits for a connection that is closing
	c.startWriterLocked()
	wake := !c.writing // nothing to flush: wake the reader here
	c.outMu.Unlock()
	if wake {
		c.wakeReader()
	}
}

// wakeReader makes a read blocked on the connection return at once (a
// timeout, which the reader ignores once closing is set), so that the
// reader goroutine runs finish.
func (c *conn) wakeReader() {
	c.nc.SetReadDeadline(aLongTimeAgo)
	c.srv.parked.unpark(c) // a parked connection has no reader to wake: start one
}

// closeGrace bounds how long a connection the server ends may take to
// close: the last writes, and the draining of the client's input.
const closeGrace = 2 * time.Second

// drainMax bounds the input read and discarded while closing.
const drainMax = 1 << 20

// closeGracefully closes the socket so that what the server wrote last (a
// DISCONNECT, a CONNACK refusal) reaches the client. Closing a TCP socket
// that holds unread input makes the kernel send a reset and discard what
// is still in the send queue, so a client that keeps sending would lose
// the reason it was disconnected. Instead the write side is shut down
// (after a TLS close_notify), which the client reads as the end of the
// stream after the last packet, and the input is read and discarded until
// the client closes too, for at most closeGrace or drainMax bytes. Runs
// on the reader goroutine; Shutdown cuts the wait short (stopDrain).
// WebSocket connections send a close frame when closed instead.
func (c *conn) closeGracefully() {
	if c.in != nil && halfClose(c.nc) && c.startDrain() {
		c.in.br.Discard(drainMax)
	}
	c.nc.Close()
}

// startDrain sets the drain deadline unless the server is shutting down.
func (c *conn) startDrain() bool {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.srv.closing() {
		return false
	}
	c.draining = true
	c.nc.SetReadDeadline(time.Now().Add(closeGrace))
	return true
}

// stopDrain ends a drain in progress; Shutdown calls it after cancelling
// the server's context, so no drain starts after it.
func (c *conn) stopDrain() {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.draining {
		c.nc.SetReadDeadline(aLongTimeAgo)
	}
}

// halfClose shuts down the write side of nc: a TLS close_notify, then the
// TCP FIN. It reports false when nc cannot be half-closed (WebSocket,
// or the TLS alert could not be written).
func halfClose(nc net.Conn) bool {
	if t, ok := nc.(*tls.Conn); ok {
		if t.CloseWrite() != nil {
			return false
		}
		nc = t.NetConn()
	}
	cw, ok := belowListener(nc).(interface{ CloseWrite() error })
	return ok && cw.CloseWrite() == nil
}

// belowListener returns the connection under nc when nc is the listener
// package's Conn (a PROXY header's reader), else nc.
func belowListener(nc net.Conn) net.Conn {
	if lc, ok := nc.(interface {
		PeerAddr() net.Addr // listener.Conn
		NetConn() net.Conn
	}); ok {
		return lc.NetConn()
	}
	return nc
}

// finish runs after the reader stops: it waits for the writer, detaches
// the session (publishing the will if due) and only then closes the
// socket, so a client that sees its connection end finds its session
// ended too (a publish right after cannot reach it).
func (c *conn) finish() {
	c.kill(0, "")
	c.leaveHolds()
	// No writer may start from now on; wait for the one running, if any.
	c.outMu.Lock()
	c.final = true
	c.canWrite = false
	var exit chan struct{}
	if c.writing {
		if c.writerDone == nil {
			c.writerDone = make(chan struct{})
		}
		exit = c.writerDone
	}
	c.outMu.Unlock()
	if exit != nil {
		<-exit
	}
	if c.stopWatch != nil {
		c.stopWatch()
	}
	c.stopExpiry()
	if c.sess != nil {
		c.srv.detach(c)
		c.srv.stats.disconnected()
		c.logDisconnect()
	}
	c.detached()
	c.closeGracefully()
}
