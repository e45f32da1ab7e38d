package listener

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// Conn is the TCP-level connection every listener produces: the accepted
// socket, annotated with the listener it came from and, behind the PROXY
// protocol, the header the balancer sent. TCP listeners return it as is; TLS
// listeners wrap it in a *tls.Conn; WebSocket listeners carry it below the
// WebSocket framing.
//
// Behind the PROXY protocol, RemoteAddr and LocalAddr report the addresses
// from the header (the real client), PeerAddr the balancer. Bytes the
// balancer sent after the header are returned by Read before anything else.
// Conn is safe for concurrent use like any net.Conn.
type Conn struct {
	net.Conn // the accepted TCP connection

	listener  string
	transport Transport
	peer      net.Addr   // the TCP peer (balancer when PROXY is used)
	proxy     *ProxyInfo // nil: no PROXY header

	mu       sync.Mutex
	buffered []byte // bytes read past the PROXY header, returned first

	// rd, when set, reads from the socket instead of the TCP
	// connection's Read (SetReader). Set before the first Read by the
	// goroutine that reads, and only read by the reading goroutine.
	rd io.Reader

	slot         chan struct{} // pending semaphore slot held, if any
	releaseOnce  sync.Once
	timerMu      sync.Mutex
	upgradeTimer *time.Timer
	timedOut     bool
}

// Read reads from the connection, first returning any bytes that arrived
// together with the PROXY header.
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.buffered) > 0 {
		n := copy(p, c.buffered)
		c.buffered = c.buffered[n:]
		if len(c.buffered) == 0 {
			c.buffered = nil
		}
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	if c.rd != nil {
		return c.rd.Read(p)
	}
	return c.Conn.Read(p)
}

// SetReader makes Read read from r, after any bytes buffered with the
// PROXY header, instead of reading the TCP connection itself; nil restores
// the default. It lets a reader under a TLS layer read the socket its own
// way (the broker reads with recvmsg to learn when each byte arrived). r
// must honour the connection's deadlines and report errors as a net.Conn
// does; a read through SyscallConn does both. Call it before the first
// Read, from the goroutine that reads; it is not safe to call concurrently
// with Read. (A reader rather than a function: the broker passes the
// value that does the reading, where a method value would be one more
// object kept per connection.)
func (c *Conn) SetReader(r io.Reader) { c.rd = r }

// Close closes the connection and frees its pending slot.
func (c *Conn) Close() error {
	c.stopUpgradeTimer()
	c.releasePending()
	return c.Conn.Close()
}

// RemoteAddr returns the client address: the source address of the PROXY
// header if one was received with the PROXY command, the TCP peer otherwise.
func (c *Conn) RemoteAddr() net.Addr {
	if c.proxy != nil && c.proxy.Source != nil {
		return c.proxy.Source
	}
	return c.peer
}

// LocalAddr returns the address the client connected to: the destination
// address of the PROXY header if there is one, the socket's otherwise.
func (c *Conn) LocalAddr() net.Addr {
	if c.proxy != nil && c.proxy.Destination != nil {
		return c.proxy.Destination
	}
	return c.Conn.LocalAddr()
}

// PeerAddr returns the address of the TCP peer: the load balancer when the
// PROXY protocol is used, the client otherwise.
func (c *Conn) PeerAddr() net.Addr { return c.peer }

// NetConn returns the underlying TCP connection. Reading from it directly
// skips bytes buffered after the PROXY header.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// SyscallConn returns the raw socket of the TCP connection, so that a
// reader can wait until it is readable without reading (the broker does
// for idle connections). Reading through it skips bytes buffered after the
// PROXY header: a Read with a deadline in the past returns those first.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("listener: the connection has no socket")
	}
	return sc.SyscallConn()
}

// ListenerName returns the name of the listener that accepted the connection.
func (c *Conn) ListenerName() string { return c.listener }

// Transport returns the transport of the listener that accepted the
// connection.
func (c *Conn) Transport() Transport { return c.transport }

// Proxy returns what the PROXY header said, or nil without PROXY protocol (or
// for an untrusted source passed through without a header). The caller must
// not modify the result.
func (c *Conn) Proxy() *ProxyInfo { return c.proxy }

// ProxyTLS returns what a TLS-terminating balancer reported about the client's
// TLS session (the PP2_TYPE_SSL TLV of a PROXY v2 header), if it did. Check
// ProxyTLSInfo.Verified, not just the presence of a certificate.
func (c *Conn) ProxyTLS() (*ProxyTLSInfo, bool) {
	if c.proxy == nil || c.proxy.TLS == nil {
		return nil, false
	}
	return c.proxy.TLS, true
}

func (c *Conn) releasePending() {
	c.releaseOnce.Do(func() {
		if c.slot != nil {
			<-c.slot
		}
	})
}

// startUpgradeTimer closes the connection if it is not handed out by then.
func (c *Conn) startUpgradeTimer(d time.Duration) {
	c.timerMu.Lock()
	defer c.timerMu.Unlock()
	c.upgradeTimer = time.AfterFunc(d, func() {
		c.timerMu.Lock()
		c.timedOut = true
		c.upgradeTimer = nil
		c.timerMu.Unlock()
		c.Close()
	})
}

// stopUpgradeTimer stops the upgrade timer; it reports false when the timer
// has already fired (and closed the connection).
func (c *Conn) stopUpgradeTimer() bool {
	c.timerMu.Lock()
	defer c.timerMu.Unlock()
	if c.timedOut {
		return false
	}
	if c.upgradeTimer != nil {
		stopped := c.upgradeTimer.Stop()
		c.upgradeTimer = nil
		if !stopped {
			// Fired: its callback is about to close the connection.
			c.timedOut = true
			return false
		}
	}
	return true
}

var (
	_ net.Conn = (*Conn)(nil)
	_ interface {
		ProxyTLS() (*ProxyTLSInfo, bool)
	} = (*Conn)(nil)
)

// ConnInfo describes an accepted connection for logs, identity mapping and
// ACLs.
type ConnInfo struct {
	Listener  string    // listener name; "" if the conn does not come from this package
	Transport Transport // meaningful only when Listener != ""

	// RemoteAddr is the client address: the PROXY source when a trusted
	// balancer sent one, the TCP peer otherwise.
	RemoteAddr net.Addr
	// LocalAddr is the address the client connected to.
	LocalAddr net.Addr
	// PeerAddr is the TCP peer (the balancer when PROXY is used).
	PeerAddr net.Addr

	// TLS is the state of the TLS session the broker terminated (TLS
	// transport after a completed handshake, or secure WebSocket); nil
	// otherwise.
	TLS *tls.ConnectionState

	// Proxy is the PROXY header, nil without one.
	Proxy *ProxyInfo
	// ProxyTLS is what a TLS-terminating balancer reported; nil if nothing.
	ProxyTLS *ProxyTLSInfo

	// WebSocket details; zero for other transports.
	WebSocketSubprotocol string
	WebSocketPath        string
}

// Info describes c. It never starts a TLS handshake, but on a *tls.Conn it
// waits for a handshake already in progress (crypto/tls holds a lock), so
// call it after HandshakeContext. It
// understands the conns this package returns (also when wrapped by a type
// with a NetConn() net.Conn method, like *tls.Conn), and for any other
// net.Conn fills in only the addresses.
func Info(c net.Conn) ConnInfo {
	info := ConnInfo{RemoteAddr: c.RemoteAddr(), LocalAddr: c.LocalAddr(), PeerAddr: c.RemoteAddr()}
	cur := c
	for range 8 { // bounded unwrapping
		switch x := cur.(type) {
		case *tls.Conn:
			if st := x.ConnectionState(); st.HandshakeComplete && info.TLS == nil {
				info.TLS = &st
			}
		case *SecureWebSocketConn:
			if info.TLS == nil {
				st := x.ConnectionState()
				info.TLS = &st
			}
			info.WebSocketSubprotocol = x.subprotocol
			info.WebSocketPath = x.path
		case *WebSocketConn:
			info.WebSocketSubprotocol = x.subprotocol
			info.WebSocketPath = x.path
		case *Conn:
			info.Listener = x.listener
			info.Transport = x.transport
			info.PeerAddr = x.peer
			info.Proxy = x.proxy
			if x.proxy != nil {
				info.ProxyTLS = x.proxy.TLS
			}
			return info
		}
		u, ok := cur.(interface{ NetConn() net.Conn })
		if !ok {
			return info
		}
		next := u.NetConn()
		if next == nil || next == cur {
			return info
		}
		cur = next
	}
	return info
}
