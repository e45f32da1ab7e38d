package broker

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// conn is one client network connection. Its code is split by phase:
// connect.go (TLS handshake, CONNECT, authentication, CONNACK), read.go
// (the read loop and dispatch; handlers.go handles PUBLISH and
// SUBSCRIBE), write.go (the outbound queue and the writer), close.go
// (kill, finish, graceful close and drain), input.go (the read buffer and
// quiet connections); binding to a session is Server.attach and
// Server.detach (server.go).
//
// Three roles touch a conn, and each field below says which one owns it:
//
//   - the reader: the goroutine running serve (handshake and CONNECT),
//     then the one reader goroutine that serve hands over to (readMain,
//     readQuiet; a quiet connection hands reading on to a fresh goroutine,
//     see input.go). The hand-overs are go statements, so one reader at a
//     time owns its fields and each sees what the previous one wrote.
//   - the writer: whoever set writing under outMu (a writer goroutine,
//     or the reader itself in writeInline) until it clears it.
//   - any goroutine: routing (send, sendPublish, sendQoS0), a takeover or
//     Shutdown (kill), a certificate watcher; they use only outMu's
//     fields, the atomics and channels, and the fields fixed before
//     established. Routing on a publisher's reader also adds to that
//     reader's own kicks (wakeWriterLocked).
//
// "Fixed at CONNECT" means written by the reader before attach publishes
// the connection to other goroutines (under sessMu and session.mu, then
// established), and never written again.
type conn struct {
	// Immutable from newConn on.
	srv *Server
	nc  net.Conn // its methods are safe for concurrent use
	lst *listenerState
	ctr *counterShard // the publish path's counters (stats.go)
	obs ConnObserver  // the Observer's, set by the accept loop before serve starts
	// log is fixed at CONNECT (it gains the client ID there).
	log *slog.Logger
	// Reader-owned. in is the read buffer and decoder; nil while the
	// connection waits quietly for input.
	in  *input
	src source
	// raw is the socket, for waiting until it is readable; nil when the
	// transport does not allow it (see rawConnOf). Reader-owned.
	raw syscall.RawConn
	// lastDrain is when the reader last ran out of input. Reader-owned.
	lastDrain time.Time
	// pubMemo is the last publish decision (authorizePublish).
	// Reader-owned.
	pubMemo publishMemo
	// arr reads the socket with arrival times, nil when the transport
	// does not allow it (arrival.go); recentShard is the shard of the
	// server's record of recent messages this connection's PUBLISH
	// packets go to (recent.go). Reader-owned; recentShard is immutable.
	arr         *stampedReader
	recentShard uint8
	// The connection's flags sit here together, each where padding after
	// a field of its own would be (a conn beyond 1,536 bytes takes the
	// next size class, 1,792; TestSizeClasses):
	//
	// rearm: the reader waited (a held publisher's turn) since the read
	// deadline was set; it is set again before the next read that may
	// wait (source.Read). Reader-owned.
	rearm bool
	// authenticated is set once CONNECT was accepted (the full
	// MaxPacketSize applies from then on). Reader-owned.
	authenticated bool
	// Reader-owned, for the Observer: whether the client sent anything
	// but PINGREQ since the last PINGREQ (since quietSince); whether it
	// ended normally.
	active   bool
	cleanEnd bool
	// sessionExpiryZero remembers a CONNECT Session Expiry of 0, which a
	// DISCONNECT may not raise [MQTT-3.14.2-2].
	sessionExpiryZero bool
	// ownHeld counts the packets handled while the reader holds this
	// connection's own writer back (holdOwnWriter), 0 when it does not;
	// kickWriters starts the writer. Reader-owned.
	ownHeld uint8
	// version and client are fixed at CONNECT (kill reads version only
	// after established); sess is set by attach and fixed from then on.
	version packet.Version
	client  Client
	sess    *session

	// Reader-owned. connectDeadline ends the wait for CONNECT; reserved
	// is the read budget held for the packet being read and handled (see
	// reserveBody).
	connectDeadline time.Time
	reserved        int64
	// Reader-owned: the connections whose writers this reader holds
	// back while it routes the rest of its buffered input, and the
	// PUBLISH packets queued for them meanwhile (write.go, kickWriters).
	// Anything that makes the reader wait must call kickWriters first.
	kicks    []*conn
	deferred int
	// Reader-owned, for the Observer: the body size of the packet just
	// read, and since when the client sent nothing but PINGREQ (active,
	// cleanEnd: above).
	bodySize   int
	quietSince time.Time
	// limitDrops counts the messages for this client dropped because its
	// queue or outbound buffer was full, not yet reported to the
	// Observer (LimitQueueFull); added to by whoever routes, taken by the
	// reader.
	limitDrops atomic.Int64

	// Fixed at CONNECT, then read by the reader (aliasesIn is reader-owned
	// and grows as the client sends aliases; will is read by detach, which
	// runs on the reader).
	keepAlive   time.Duration // 0: no keep alive
	will        *packet.Will
	aliasesIn   map[uint16]string
	aliasMaxIn  uint16
	connectedAt time.Time
	stopWatch   func()
	// retainSnap is the identity snapshot this connection's retained
	// messages carry (Message.Publisher); reader-owned, made on first use.
	retainSnap *Client
	// authMethod is the Authentication Method of CONNECT ("" none), fixed
	// at CONNECT. reauth is the re-authentication in progress and
	// reauthRounds its AUTH packets so far (reader-owned).
	authMethod   string
	reauth       AuthExchange
	reauthRounds int
	// authMu guards the authentication expiry timer (a leaf lock).
	authMu     sync.Mutex
	expTimer   Timer
	expGen     uint64 // bumped when the timer is re-armed
	expStopped bool   // the connection ended: arm nothing
	// tracked: the connection is in Server.conns and holds a slot of its
	// listener, both given back when it is fully cleaned up (end,
	// Server.untrack). Set by the accept loop before serve starts; a
	// field rather than a function, which would be one more object per
	// connection.
	tracked bool

	// pub is what routing notes about this client as a publisher, to hold
	// it back (overload.go). Reader-owned.
	pub publisher

	// plim bounds the PUBLISH commits in flight (persist.go); its channel
	// is made by the reader. sessStored reports the commit of the
	// session's record, which CONNACK waits for; set by attach.
	plim       persistLimiter
	sessStored chan error
	// liveWill is the will attach stored in the cluster for this
	// connection (cluster_wills.go); nil: none. Read by detach.
	liveWill *StoredWill

	// willElsewhere: the cluster published or holds the will
	// (DiscardConnectionWill), so detach publishes none.
	willElsewhere atomic.Bool

	// maxOut is the client's Maximum Packet Size (0: none); fixed at
	// CONNECT, read by every role.
	maxOut uint32
	// problemInfo: the v5 client accepts Reason Strings on packets other
	// than PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29]. Fixed at
	// CONNECT.
	problemInfo bool

	// Writer-owned (aliasOutMax is fixed at CONNECT).
	wbuf   []byte
	wdlSet time.Time // when the write deadline was last moved
	// wpub is the PUBLISH being encoded where no shared encoding fits
	// (appendDelivery, appendShared: a message routed to this subscriber
	// alone, an outbound topic alias, an expiry that moved on): taken
	// from publishScratch by the first such packet of a writer's run and
	// given back when the run ends, so that a connection keeps none while
	// idle (a packet.Publish in conn made every connection 256 bytes
	// larger, in its allocation size class).
	wpub  *packet.Publish
	wclk  clock    // the time of the batch being encoded, read once if needed
	wmsgs [3]int64 // PUBLISH packets in that batch by QoS, for the statistics (countOut)
	wpay  [3]int64 // and their payload bytes
	// Shared encodings written in place (write.go, appendTail): the
	// pieces of the batch so far, wbuf's bytes from wcut on not among
	// them yet, and the shared bytes they hold. wvec is the copy a
	// writev consumes. wtcp is the TCP connection writev goes to, nil
	// when there is none (TLS, WebSocket); known once looked up.
	wsegs       net.Buffers
	wvec        net.Buffers
	wcut        int
	wshared     int
	wtcp        *net.TCPConn
	wtcpKnown   bool
	aliasOutMax uint16
	aliasesOut  map[string]uint16

	// outMu guards the fields from here to draining (lock order:
	// docs/design/locking.md).
	outMu    sync.Mutex
	out      []packet.Packet
	spare    []packet.Packet
	outBytes int  // QoS 0 bytes waiting
	outQ0    int  // QoS 0 messages waiting
	final    bool // close after the queue drains
	// q0gate holds back publishers while the QoS 0 backlog is over its
	// mark (overload.go).
	q0gate flowGate
	// canWrite is set once the connection may have a writer goroutine
	// (after CONNECT was accepted); writing is true while a writer runs.
	canWrite   bool
	writing    bool
	handling   bool          // the reader is handling a packet and will write after it
	writerDone chan struct{} // closed when the running writer stops; made by a waiter (finish)
	// kickPending: another connection's reader holds this writer back
	// and will start it (wakeWriterLocked).
	kickPending bool
	// draining is set while the reader reads and discards the input of a
	// connection it is closing (see closeGracefully).
	draining bool
	// caughtUp: the connection's first QoS 1/2 PUBLISH waited for the
	// cluster's routing (PublishGate). Reader-owned.
	caughtUp bool
	// gatedAt is when that wait ended (Unix nanoseconds, 0: no wait):
	// the arrival time of the connection's messages is at least that
	// (handlePublish). Reader-owned.
	gatedAt int64

	// Safe for any goroutine. done is closed once the connection no
	// longer holds its session (which a takeover waits for); the socket
	// may still be closing.
	done     chan struct{}
	doneOnce sync.Once
	killed   chan struct{} // closed when closing is set
	endOnce  sync.Once
	// wroteConnack: a CONNACK refusal was written. Reader-owned.
	wroteConnack bool
	closing      atomic.Bool
	normalExit   atomic.Bool // DISCONNECT 0x00 received: no will
	// established is set once CONNACK is queued; it publishes the
	// fields fixed at CONNECT to other goroutines (kill).
	established atomic.Bool
	takenOver   atomic.Bool
	endedBy     atomic.Pointer[connEnd] // why it ended (connlog.go)
}

// newConn makes the conn for an accepted socket on lst.
func (s *Server) newConn(nc net.Conn, lst *listenerState) *conn {
	c := &conn{
		srv:    s,
		nc:     nc,
		lst:    lst,
		ctr:    s.stats.shard(),
		obs:    nopConnObserver{},
		done:   make(chan struct{}),
		killed: make(chan struct{}),
	}
	c.src.nc = nc
	c.recentShard = s.recent.shardFor()
	c.src.c = c
	c.log = newConnLogger(s.log, lst.name, nc.RemoteAddr(), "")
	c.client.Listener = lst.name
	c.client.Remote = nc.RemoteAddr()
	c.client.Conn = nc
	c.client.az = newAuthzState()
	return c
}

// serve runs the TLS handshake and CONNECT on the accepting goroutine,
// then hands the connection to a fresh reader goroutine: the handshake
// grows a goroutine's stack well beyond what reading needs, and an idle
// connection should not keep that stack for its lifetime. A client that
// sent nothing after CONNECT starts quiet (see input.go).
func (c *conn) serve() {
	defer c.recoverPanic()
	if !c.handshakeAndConnect() {
		if c.wroteConnack {
			// Let the refusal reach a client that kept sending.
			c.closeGracefully()
		} else {
			c.nc.Close()
		}
		c.end()
		return
	}
	c.lastDrain = time.Now()
	c.setHandling(false)
	switch {
	case c.in.br.Buffered() == 0 && c.raw != nil && c.goQuiet():
	case c.raw == nil || c.in.br.Buffered() > 0:
		c.armKeepAlive()
		fallthrough
	default: // goQuiet found input and set the read deadline
		c.srv.goroutines.goTracked(goReader, c.readMain)
	}
	// CONNACK (and any resends) waited until the reader goroutine was
	// started: a client may send SUBSCRIBE as soon as it reads CONNACK,
	// and the reader should then be waiting for it, not still being set
	// up. This goroutine writes only from here on.
	c.writeInline()
}

// readMain is the reader goroutine of an accepted connection.
func (c *conn) readMain() {
	defer c.recoverPanic()
	if c.readLoop() {
		return
	}
	c.finish()
	c.end()
}

// recoverPanic turns a panic in one connection into a closed connection,
// counted and logged, instead of a crashed broker.
func (c *conn) recoverPanic() {
	r := recover()
	if r == nil {
		return
	}
	c.srv.stats.panics.Add(1)
	c.log.Error("broker: panic while serving connection; connection closed", "panic", r, "client", c.client.ClientID)
	c.nc.Close()
	if c.sess != nil {
		c.finish()
	}
	c.end()
}

// detached closes done: the session no longer refers to this connection.
func (c *conn) detached() {
	c.doneOnce.Do(func() { close(c.done) })
}

// end marks the connection as fully cleaned up; it runs once.
func (c *conn) end() {
	c.detached()
	c.endOnce.Do(func() {
		c.obs.Closed(&c.client, c.authenticated, !c.cleanEnd && !c.takenOver.Load() && !c.srv.closing())
		if c.tracked {
			c.srv.untrack(c)
		}
	})
}
