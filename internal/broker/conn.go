package broker

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// conn is one client network connection. The reader goroutine owns the
// fields above outMu (there is one reader goroutine at a time: a quiet
// connection hands reading over to a fresh one, see input.go); the writer
// goroutine owns wbuf and the outbound alias table; fields below outMu are
// guarded by it.
type conn struct {
	srv *Server
	nc  net.Conn
	lst *listenerState
	log *slog.Logger
	// in is the read buffer and decoder; nil while the connection waits
	// quietly for input.
	in  *input
	src source
	// raw is the socket, for waiting until it is readable; nil when the
	// transport does not allow it (see rawConnOf).
	raw syscall.RawConn
	// lastDrain is when the reader last ran out of input.
	lastDrain time.Time
	version   packet.Version
	client    Client
	sess      *session

	// connectDeadline ends the wait for CONNECT; authenticated is set
	// once CONNECT was accepted (the full MaxPacketSize applies from
	// then on); reserved is the read budget held for the packet being
	// read and handled (see reserveBody).
	connectDeadline time.Time
	authenticated   bool
	reserved        int64

	keepAlive   time.Duration // 0: no keep alive
	will        *packet.Will
	aliasesIn   map[uint16]string
	aliasMaxIn  uint16
	connectedAt time.Time
	// sessionExpiryZero remembers a CONNECT Session Expiry of 0, which a
	// DISCONNECT may not raise [MQTT-3.14.2-2].
	sessionExpiryZero bool
	stopWatch         func()
	// onEnd runs once when the connection is fully cleaned up (the
	// server's bookkeeping); set before serve starts.
	onEnd func()

	// maxOut is the client's Maximum Packet Size (0: none); set before
	// the writer starts and never changed.
	maxOut uint32
	// problemInfo: the v5 client accepts Reason Strings on packets other
	// than PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29].
	problemInfo bool

	// writer-owned
	wbuf        []byte
	wdlSet      time.Time      // when the write deadline was last moved
	wpub        packet.Publish // the PUBLISH being encoded
	aliasOutMax uint16
	aliasesOut  map[string]uint16

	outMu    sync.Mutex
	out      []packet.Packet
	spare    []packet.Packet
	outBytes int  // QoS 0 bytes waiting
	final    bool // close after the queue drains
	// canWrite is set once the connection may have a writer goroutine
	// (after CONNECT was accepted); writing is true while one runs.
	canWrite   bool
	writing    bool
	handling   bool          // the reader is handling a packet and will write after it
	writerExit chan struct{} // closed when the running writer returns; nil when none runs
	// draining is set while the reader reads and discards the input of a
	// connection it is closing (see closeGracefully).
	draining bool

	// done is closed once the connection no longer holds its session
	// (which a takeover waits for); the socket may still be closing.
	done         chan struct{}
	doneOnce     sync.Once
	killed       chan struct{} // closed when closing is set
	endOnce      sync.Once
	wroteConnack bool // a CONNACK refusal was written (reader-owned)
	closing      atomic.Bool
	normalExit   atomic.Bool // DISCONNECT 0x00 received: no will
	// established is set once CONNACK is queued; it publishes version to
	// other goroutines (kill).
	established atomic.Bool
	takenOver   atomic.Bool
	endedBy     atomic.Pointer[connEnd] // why it ended (connlog.go)
}

// connectState is the result of CONNECT processing, applied once the
// session is attached.
type connectState struct {
	pkt        *packet.Connect
	clientID   string
	assignedID bool
	expiry     time.Duration
	serverKA   uint16 // Server Keep Alive to announce, 0 none
	owner      sessionOwner
	// idBound: the Authenticator proved the client's right to clientID.
	idBound bool
}

func (s *Server) newConn(nc net.Conn, lst *listenerState) *conn {
	c := &conn{
		srv:    s,
		nc:     nc,
		lst:    lst,
		done:   make(chan struct{}),
		killed: make(chan struct{}),
	}
	c.src.nc = nc
	c.log = newConnLogger(s.log, lst.name, nc.RemoteAddr(), "")
	c.client.Listener = lst.name
	c.client.Remote = nc.RemoteAddr()
	c.client.Conn = nc
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
		c.srv.track(c.readMain)
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
		if c.onEnd != nil {
			c.onEnd()
		}
	})
}

// handshakeAndConnect completes TLS (if any) and CONNECT within the
// connect timeout. It returns false when the connection must be closed.
func (c *conn) handshakeAndConnect() bool {
	s := c.srv
	deadline := time.Now().Add(s.cfg.ConnectTimeout)
	c.nc.SetDeadline(deadline)
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	if hs, ok := c.nc.(interface{ HandshakeContext(context.Context) error }); ok {
		if err := hs.HandshakeContext(ctx); err != nil {
			s.stats.tlsFailures.Add(1)
			c.log.Info("broker: TLS handshake failed", "err", err)
			return false
		}
	}
	c.raw = rawConnOf(c.nc)
	c.connectDeadline = deadline
	c.takeInput()
	p, err := c.in.r.ReadPacket()
	defer c.releaseBody()
	if err != nil {
		c.refuseBadConnect(p, err)
		return false
	}
	pkt, ok := p.(*packet.Connect)
	if !ok {
		// [MQTT-3.1.0-1]: the first packet must be CONNECT.
		c.log.Info("broker: first packet is not CONNECT; connection closed", "type", p.Type())
		s.stats.protocolErrors.Add(1)
		return false
	}
	return c.connect(ctx, pkt)
}

// refuseBadConnect answers an undecodable CONNECT when the answer can be
// understood (a known protocol version), then lets the caller close.
func (c *conn) refuseBadConnect(p packet.Packet, err error) {
	s := c.srv
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err) {
		c.log.Debug("broker: connection closed before CONNECT", "err", err)
		return
	}
	if errors.Is(err, errBudgetWait) {
		c.log.Info("broker: connection closed before CONNECT: the read budget stayed spent until the connect timeout", "err", err)
		return
	}
	if errors.Is(err, packet.ErrPacketTooLarge) {
		// Refused from the fixed header alone, before any allocation;
		// the client's version is not known yet, so no CONNACK.
		s.stats.preAuthTooBig.Add(1)
		c.log.Info("broker: first packet larger than the limit before authentication; connection closed",
			"err", err, "max", s.cfg.PreAuthMaxPacketSize)
		return
	}
	s.stats.protocolErrors.Add(1)
	c.log.Info("broker: invalid CONNECT", "err", err)
	var pe *packet.Error
	if !errors.As(err, &pe) {
		return
	}
	v := packet.V311
	if cp, ok := p.(*packet.Connect); ok && cp != nil {
		v = cp.Version
	}
	code := pe.Code
	switch {
	case errors.Is(err, packet.ErrUnsupportedVersion):
		// [MQTT-3.1.2-2]: answer with "unacceptable protocol version" in
		// the 3.1.1 encoding, the one every client version can read.
		c.writeDirect(&packet.Connack{ReasonCode: packet.V3UnacceptableProtocolVersion}, packet.V311)
	case v == packet.V5:
		c.writeDirect(&packet.Connack{ReasonCode: code}, v)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// writeDirect encodes and writes p before the writer goroutine exists.
func (c *conn) writeDirect(p packet.Packet, v packet.Version) {
	b, err := packet.Append(nil, p, v)
	if err != nil {
		c.log.Error("broker: cannot encode packet", "type", p.Type(), "err", err)
		return
	}
	c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	c.nc.Write(b)
	c.wroteConnack = true
}

// refuse sends a CONNACK refusal (code is a v5 reason code) and logs it.
func (c *conn) refuse(pkt *packet.Connect, code packet.ReasonCode, reason string) bool {
	c.srv.stats.connectRefused.Add(1)
	c.log.Info("broker: connection refused", "client", pkt.ClientID, "username", c.client.Username,
		"claimed_username", c.client.ClaimedUsername, "code", code, "reason", reason)
	ack := &packet.Connack{ReasonCode: code}
	if pkt.Version != packet.V5 {
		ack.ReasonCode = packet.V3ConnackCode(code)
	} else if reason != "" {
		// CONNACK may carry a Reason String whatever Request Problem
		// Information says [MQTT-3.1.2-29], but not if it would make the
		// packet larger than the client accepts [MQTT-3.2.2-19].
		ack.Properties.SetReasonString(reason)
		if pkt.Properties.Has(packet.PropMaximumPacketSize) && !fits(ack, packet.V5, pkt.Properties.MaximumPacketSize) {
			ack.Properties.Unmark(packet.PropReasonString)
		}
	}
	c.writeDirect(ack, pkt.Version)
	return false
}

// connect processes CONNECT: identity, authentication, session and
// CONNACK. It returns false when the connection was refused.
func (c *conn) connect(ctx context.Context, pkt *packet.Connect) bool {
	s := c.srv
	c.version = pkt.Version
	c.client.Version = pkt.Version
	c.client.ClientID = pkt.ClientID
	// The CONNECT username is a claim until an Authenticator accepts it.
	c.client.ClaimedUsername = pkt.Username
	st := connectState{pkt: pkt, clientID: pkt.ClientID}

	// Enhanced authentication is not offered yet.
	if pkt.Version == packet.V5 && pkt.Properties.Has(packet.PropAuthMethod) {
		return c.refuse(pkt, packet.BadAuthenticationMethod, "enhanced authentication is not supported")
	}

	// Client identifier rules.
	if st.clientID == "" {
		switch {
		case c.lst.refuseEmptyID:
			return c.refuse(pkt, packet.ClientIDNotValid, "zero-length client identifiers are not allowed on this listener")
		case pkt.Version == packet.V31:
			return c.refuse(pkt, packet.ClientIDNotValid, "MQTT 3.1 requires a client identifier")
		case pkt.Version == packet.V311 && !pkt.CleanStart:
			// [MQTT-3.1.3-8]
			return c.refuse(pkt, packet.ClientIDNotValid, "a zero-length client identifier requires clean session")
		}
		st.clientID = s.assignClientID(c.lst.idPrefix)
		st.assignedID = true
	} else if pkt.Version == packet.V31 && len(st.clientID) > 23 {
		return c.refuse(pkt, packet.ClientIDNotValid, "MQTT 3.1 client identifiers are at most 23 bytes")
	}

	// Keep alive against max_keepalive.
	ka := pkt.KeepAlive
	if max := s.cfg.MaxKeepAlive; max < 65535 && (ka == 0 || ka > max) {
		if pkt.Version == packet.V5 {
			st.serverKA = max
			ka = max
		} else if ka > max {
			// No way to tell a 3.x client: refuse it, as Mosquitto does.
			return c.refuse(pkt, packet.ClientIDNotValid, fmt.Sprintf("keep alive %ds exceeds the server maximum %ds", ka, max))
		}
	}
	c.keepAlive = time.Duration(ka) * time.Second

	// Will checks that do not depend on the session.
	if w := pkt.Will; w != nil {
		if len(w.Topic) > s.cfg.MaxTopicLength {
			return c.refuse(pkt, packet.TopicNameInvalid, fmt.Sprintf("will topic is longer than %d bytes", s.cfg.MaxTopicLength))
		}
		if tooDeep(w.Topic, s.cfg.MaxTopicLevels) {
			return c.refuse(pkt, packet.TopicNameInvalid, fmt.Sprintf("will topic has more than %d levels", s.cfg.MaxTopicLevels))
		}
		if w.Retain && s.cfg.RetainDisabled {
			return c.refuse(pkt, packet.RetainNotSupported, "retained messages are not available")
		}
		if w.QoS > c.lst.maxQoS {
			return c.refuse(pkt, packet.QoSNotSupported, fmt.Sprintf("will QoS %d exceeds the maximum QoS %d", w.QoS, c.lst.maxQoS))
		}
	}

	// Authentication.
	c.client.ClientID = st.clientID
	if !c.authenticate(ctx, pkt, &st) {
		return false
	}
	if name := cmp.Or(c.client.Username, c.client.ClaimedUsername); c.lst.usernameAsID && name != "" && name != st.clientID {
		// An unverified username may name the client ID as in Mosquitto:
		// the client could have sent that ID itself, and the session owner
		// check below does not depend on it.
		st.clientID = name
		c.client.ClientID = st.clientID
		st.assignedID = true
	}
	st.owner = ownerOf(&c.client)

	// Session expiry.
	switch {
	case pkt.Version == packet.V5:
		e := pkt.Properties.SessionExpiry
		c.sessionExpiryZero = e == 0
		switch {
		case e == 0:
			st.expiry = 0
		case e == 0xFFFFFFFF:
			st.expiry = neverExpires
		default:
			st.expiry = time.Duration(e) * time.Second
		}
	case pkt.CleanStart:
		st.expiry = 0
	default:
		st.expiry = neverExpires
	}
	if pce := s.cfg.PersistentClientExpiration; pce > 0 && (st.expiry == neverExpires || st.expiry > pce) {
		st.expiry = pce
	}

	// Per-connection protocol state.
	c.will = pkt.Will
	if pkt.Version == packet.V5 {
		c.aliasMaxIn = uint16(c.lst.aliasMax)
		c.aliasOutMax = pkt.Properties.TopicAliasMaximum
		if pkt.Properties.Has(packet.PropMaximumPacketSize) {
			c.maxOut = pkt.Properties.MaximumPacketSize
		}
		c.problemInfo = !pkt.Properties.Has(packet.PropRequestProblemInfo) || pkt.Properties.RequestProblemInfo != 0
	}
	c.connectedAt = s.cfg.Now()

	// Start the writer, then attach the session: from attach on, other
	// goroutines may queue packets for this connection.
	c.nc.SetDeadline(time.Time{})
	if max := s.cfg.MaxSessions; max > 0 && s.sessionCount.Load() >= int64(max) && s.lookup(st.clientID) == nil {
		return c.refuse(pkt, packet.QuotaExceeded, "the server holds its maximum number of sessions")
	}

	c.log = newConnLogger(s.log, c.lst.name, c.nc.RemoteAddr(), st.clientID)
	c.outMu.Lock()
	c.canWrite = true
	// Packets queued from now on (CONNACK first) are written by serve
	// once the connection is ready to read the client's next packet.
	c.handling = true
	c.outMu.Unlock()
	_, present, refusal := s.attach(c, &st)
	if refusal != "" {
		return c.refuse(pkt, packet.ClientIDNotValid, refusal)
	}
	s.stats.connected(s)
	level := slog.LevelInfo
	if s.cfg.QuietConnections {
		level = slog.LevelDebug
	}
	c.log.Log(ctx, level, "broker: client connected", "version", pkt.Version.String(), "username", c.client.Username,
		"claimed_username", c.client.ClaimedUsername, "anonymous", c.client.Anonymous, "clean", pkt.CleanStart, "session_present", present, "keep_alive", ka)

	if w := c.lst.certWatcher; w != nil {
		if chain := c.client.PeerCertificates(); len(chain) > 0 {
			c.stopWatch = w.Watch(chain, func(reason string) {
				c.log.Warn("broker: client certificate no longer valid; disconnecting", "reason", reason)
				s.stats.revokedDisconnects.Add(1)
				c.kill(packet.NotAuthorized, reason)
			})
		}
	}
	c.in.r.SetVersion(pkt.Version)
	c.authenticated = true
	c.in.r.SetMaxPacketSize(s.cfg.MaxPacketSize)
	return true
}

// authenticate runs the Authenticator (or the anonymous policy) and
// applies its result. It sends the refusal itself.
func (c *conn) authenticate(ctx context.Context, pkt *packet.Connect, st *connectState) bool {
	s := c.srv
	anonymousOK := s.cfg.AllowAnonymous
	if c.lst.allowAnonymous != nil {
		anonymousOK = *c.lst.allowAnonymous
	}
	if s.cfg.Authenticator != nil {
		res := s.cfg.Authenticator.Authenticate(ctx, &ConnectRequest{Client: &c.client, Connect: pkt})
		if res.Allow {
			// The Authenticator vouches for the name it returned, or else
			// for the CONNECT username it accepted.
			c.client.Username = cmp.Or(res.Username, pkt.Username)
			st.idBound = res.ClientIDBound
			if res.ClientID != "" && res.ClientID != st.clientID {
				st.clientID = res.ClientID
				st.assignedID = true
				c.client.ClientID = res.ClientID
			}
			c.client.Attributes = res.Attributes
			return true
		}
		st.idBound = res.ClientIDBound
		if !res.NoOpinion {
			code := res.Code
			if code == 0 {
				code = packet.NotAuthorized
			}
			return c.refuse(pkt, code, res.Reason)
		}
	}
	if !anonymousOK {
		if pkt.UsernameFlag || pkt.PasswordFlag {
			return c.refuse(pkt, packet.BadUsernameOrPassword, "no authentication backend accepts these credentials")
		}
		return c.refuse(pkt, packet.NotAuthorized, "anonymous access is not allowed on this listener")
	}
	// Admitted by the anonymous policy. Unlike Mosquitto, a username
	// sent without a backend to check it stays a claim (ClaimedUsername,
	// for logs): no Authorizer can mistake it for an identity.
	c.client.Anonymous = true
	return true
}

// connack builds and queues CONNACK for a new session attachment. Called
// by attach with the session locked, so it precedes any resend.
func (c *conn) connack(st *connectState, present bool) {
	s := c.srv
	ack := &packet.Connack{SessionPresent: present}
	if c.version == packet.V5 {
		p := &ack.Properties
		p.ReceiveMaximum = s.cfg.ReceiveMaximum
		p.Mark(packet.PropReceiveMaximum)
		if s.cfg.MaxPacketSize < 268435455 {
			// Absent means "no limit" beyond the protocol's own; clients
			// check the value against the largest remaining length.
			p.MaximumPacketSize = s.cfg.MaxPacketSize
			p.Mark(packet.PropMaximumPacketSize)
		}
		p.TopicAliasMaximum = c.aliasMaxIn
		p.Mark(packet.PropTopicAliasMaximum)
		if s.cfg.RetainDisabled {
			p.RetainAvailable = 0
			p.Mark(packet.PropRetainAvailable)
		}
		if c.lst.maxQoS < 2 {
			p.MaximumQoS = c.lst.maxQoS
			p.Mark(packet.PropMaximumQoS)
		}
		if st.assignedID {
			p.AssignedClientID = st.clientID
			p.Mark(packet.PropAssignedClientID)
		}
		if st.serverKA != 0 {
			p.ServerKeepAlive = st.serverKA
			p.Mark(packet.PropServerKeepAlive)
		}
		if req := st.pkt.Properties.SessionExpiry; st.pkt.Properties.Has(packet.PropSessionExpiry) || st.expiry != 0 {
			granted := req
			if st.expiry != neverExpires && st.expiry >= 0 {
				granted = uint32(st.expiry / time.Second)
			}
			if granted != req {
				p.SessionExpiry = granted
				p.Mark(packet.PropSessionExpiry)
			}
		}
	}
	c.send(ack)
}

// armKeepAlive sets the read deadline for the next packet: one and a half
// times the keep alive from now [MQTT-3.1.2-24].
func (c *conn) armKeepAlive() {
	if c.keepAlive > 0 {
		c.nc.SetReadDeadline(time.Now().Add(c.keepAlive * 3 / 2))
	}
}

// readLoop reads and handles packets until the connection ends, and
// returns false then. It returns true when it handed reading over to a
// fresh goroutine (goQuiet): the caller must return at once. The read
// deadline for the first packet is already set (armKeepAlive, goQuiet).
func (c *conn) readLoop() (handedOver bool) {
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
		if typ, pid, ok := c.in.shortAckIn(); ok {
			c.srv.stats.packetsIn.Add(1)
			c.setHandling(true)
			c.handleAck(typ, pid, packet.Success)
			c.setHandling(false)
		} else {
			p, err := c.in.r.ReadPacket()
			if err != nil {
				c.releaseBody()
				c.readError(err)
				return false
			}
			c.srv.stats.packetsIn.Add(1)
			c.setHandling(true)
			ok := c.handle(p)
			c.setHandling(false)
			c.releaseBody()
			if !ok {
				return false
			}
		}
		if c.in.br.Buffered() == 0 {
			// About to wait for input: write what handling queued on
			// this goroutine rather than waking a writer goroutine.
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
		} else {
			// More input is waiting (perhaps only part of a packet):
			// never hold queued packets back for it.
			c.outMu.Lock()
			c.startWriterLocked()
			c.outMu.Unlock()
		}
	}
}

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

func (c *conn) readError(err error) {
	var pe *packet.Error
	switch {
	case c.closing.Load():
		// We are closing it ourselves.
	case errors.As(err, &pe):
		c.srv.stats.protocolErrors.Add(1)
		c.logViolation(err)
		c.kill(pe.Code, pe.Reason)
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
		c.send(&packet.Pingresp{})
	case *packet.Disconnect:
		return c.handleDisconnect(p)
	case *packet.Connect:
		// [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
		return c.protocolError(packet.ProtocolError, "second CONNECT")
	case *packet.Auth:
		return c.protocolError(packet.ProtocolError, "AUTH without enhanced authentication")
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
		}
		c.send(shortAck{typ: packet.PUBCOMP, code: code, pid: pid})
	case packet.PUBCOMP:
		if !c.sess.ack(c.srv, pid, 2) {
			c.log.Debug("broker: PUBCOMP for unknown packet identifier", "pid", pid)
		}
	}
}

// shortAckIn takes a buffered PUBACK, PUBREC, PUBREL or PUBCOMP of the
// 4-byte form (packet identifier only, Success) straight from the read
// buffer, without decoding it into a packet struct: one arrives per QoS 1
// message delivered. Anything else, including a malformed acknowledgement
// (wrong flags, identifier 0), is left for the decoder and its errors.
func (in *input) shortAckIn() (typ packet.Type, pid uint16, ok bool) {
	if in.br.Buffered() < 4 {
		return 0, 0, false
	}
	b, _ := in.br.Peek(4)
	typ = packet.Type(b[0] >> 4)
	flags := b[0] & 0x0F
	switch {
	case b[1] != 2:
		return 0, 0, false
	case typ == packet.PUBACK || typ == packet.PUBREC || typ == packet.PUBCOMP:
		if flags != 0 {
			return 0, 0, false
		}
	case typ == packet.PUBREL:
		if flags != 0x02 {
			return 0, 0, false
		}
	default:
		return 0, 0, false
	}
	pid = uint16(b[2])<<8 | uint16(b[3])
	if pid == 0 {
		return 0, 0, false
	}
	in.br.Discard(4)
	return typ, pid, true
}

func (c *conn) handleDisconnect(p *packet.Disconnect) bool {
	if c.version == packet.V5 && p.Properties.Has(packet.PropSessionExpiry) {
		if c.sessionExpiryZero && p.Properties.SessionExpiry != 0 {
			return c.protocolError(packet.ProtocolError, "session expiry raised from 0 in DISCONNECT")
		}
		c.srv.setExpiry(c.sess, p.Properties.SessionExpiry)
	}
	if p.ReasonCode != packet.DisconnectWithWill {
		// [MQTT-3.14.4-3]: a normal DISCONNECT discards the will.
		c.normalExit.Store(true)
	}
	c.kill(0, clientDisconnectReason(p.ReasonCode))
	return false
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

// sendQoS0 queues a QoS 0 PUBLISH unless the connection's QoS 0 backlog is
// over its byte budget (a slow consumer), in which case it is dropped.
func (c *conn) sendQoS0(p outPublish, size int) bool {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	if c.final || c.outBytes+size > c.srv.cfg.MaxOutboundBytes {
		c.srv.stats.droppedSlow.Add(1)
		return false
	}
	c.outBytes += size
	c.out = append(c.out, p)
	c.startWriterLocked()
	return true
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
	c.srv.track(func() {
		defer close(exit)
		c.writeLoop()
	})
}

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
	if !c.closing.CompareAndSwap(false, true) {
		return
	}
	close(c.killed)
	if !c.established.Load() {
		c.nc.Close()
		return
	}
	// A peer that does not read cannot hold the connection open: the
	// remaining writes get closeGrace (flush does not move this deadline
	// once closing is set).
	c.nc.SetWriteDeadline(time.Now().Add(closeGrace))
	c.outMu.Lock()
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
	if lc, ok := nc.(interface {
		PeerAddr() net.Addr // listener.Conn
		NetConn() net.Conn
	}); ok {
		nc = lc.NetConn()
	}
	cw, ok := nc.(interface{ CloseWrite() error })
	return ok && cw.CloseWrite() == nil
}

// finish runs after the reader stops: it waits for the writer, detaches
// the session (publishing the will if due) and only then closes the
// socket, so a client that sees its connection end finds its session
// ended too (a publish right after cannot reach it).
func (c *conn) finish() {
	c.kill(0, "")
	// No writer may start from now on; wait for the one running, if any.
	c.outMu.Lock()
	c.final = true
	c.canWrite = false
	var exit chan struct{}
	if c.writing {
		exit = c.writerExit
	}
	c.outMu.Unlock()
	if exit != nil {
		<-exit
	}
	if c.stopWatch != nil {
		c.stopWatch()
	}
	if c.sess != nil {
		c.srv.detach(c)
		c.srv.stats.disconnected()
		c.logDisconnect()
	}
	c.detached()
	c.closeGracefully()
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
		return q.appendTo(dst, c.version), nil
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
