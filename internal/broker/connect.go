package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

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
	// authMethod is the v5 Authentication Method ("" none); authData the
	// server's last data for CONNACK; authExpires when the
	// authentication stops holding (zero: never).
	authMethod  string
	authData    []byte
	authExpires time.Time
}

// handshakeAndConnect completes TLS (if any) and CONNECT within the
// connect timeout. It returns false when the connection must be closed.
func (c *conn) handshakeAndConnect() bool {
	s := c.srv
	c.stampArrivals()
	deadline := time.Now().Add(s.connectTimeout())
	c.nc.SetDeadline(deadline)
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	if hs, ok := c.nc.(interface{ HandshakeContext(context.Context) error }); ok {
		err := hs.HandshakeContext(ctx)
		s.stats.tlsHandshake(c.nc, err)
		if err != nil {
			c.log.Info("broker: TLS handshake failed", "err", err)
			return false
		}
	} else if hasTLSState(c.nc) {
		s.stats.tlsHandshake(c.nc, nil) // secure WebSocket: the HTTP server's handshake
	}
	c.raw = rawConnOf(c.nc, c.arr)
	c.connectDeadline = deadline
	c.takeInput()
	p, err := c.in.r.ReadPacket()
	defer c.releaseBody()
	if err != nil {
		c.refuseBadConnect(p, err)
		return false
	}
	c.ctr.packetIn(c.bodySize)
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
			"err", err, "max", s.limits().PreAuthMaxPacketSize)
		c.limitVerdict(LimitPacketSize, fmt.Sprintf("first packet over the pre-authentication limit of %d bytes", s.limits().PreAuthMaxPacketSize))
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

// writeDirect encodes and writes p before the writer goroutine exists.
func (c *conn) writeDirect(p packet.Packet, v packet.Version) {
	b, err := packet.Append(nil, p, v)
	if err != nil {
		c.log.Error("broker: cannot encode packet", "type", p.Type(), "err", err)
		return
	}
	c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	n, _ := c.nc.Write(b)
	c.ctr.wireOut.Add(int64(n))
	c.ctr.packetsOut.Add(1)
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
	if why := s.withdrawal(); why != "" {
		// The node left its cluster: the client belongs on another.
		return c.refuse(pkt, packet.UseAnotherServer, why)
	}

	// Enhanced authentication (auth.go); MQTT 3.1.1 has no properties.
	if pkt.Version == packet.V5 && pkt.Properties.Has(packet.PropAuthMethod) {
		st.authMethod = pkt.Properties.AuthMethod
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
	if max := s.limits().MaxKeepAlive; max < 65535 && (ka == 0 || ka > max) {
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
		lim := s.limits()
		if len(w.Topic) > lim.MaxTopicLength {
			reason := fmt.Sprintf("will topic is longer than %d bytes", lim.MaxTopicLength)
			defer c.limitVerdict(LimitTopicLength, reason) // the client is refused anyway
			return c.refuse(pkt, packet.TopicNameInvalid, reason)
		}
		if tooDeep(w.Topic, lim.MaxTopicLevels) {
			reason := fmt.Sprintf("will topic has more than %d levels", lim.MaxTopicLevels)
			defer c.limitVerdict(LimitTopicLevels, reason)
			return c.refuse(pkt, packet.TopicNameInvalid, reason)
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
	if d := c.obs.Connecting(&c.client); !d.Allow {
		s.stats.countAuth(authBanned)
		return c.refuse(pkt, packet.Banned, d.Reason)
	}
	if st.authMethod != "" {
		if !c.enhancedConnect(ctx, pkt, &st) {
			s.stats.countAuth(authEnhancedFailed)
			return false
		}
	} else if !c.authenticate(ctx, pkt, &st) {
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
	st.owner = ownerOf(&c.client, c.lst)
	if d := c.obs.Connected(&c.client); !d.Allow {
		s.stats.countAuth(authBanned)
		return c.refuse(pkt, packet.Banned, d.Reason)
	}
	switch {
	case st.authMethod != "":
		s.stats.countAuth(authEnhanced)
	case c.client.Anonymous:
		s.stats.countAuth(authAnonymous)
	default:
		s.stats.countAuth(authAccepted)
	}

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
	c.quietSince = c.connectedAt

	// Start the writer, then attach the session: from attach on, other
	// goroutines may queue packets for this connection.
	c.nc.SetDeadline(time.Time{})
	if max := s.limits().MaxSessions; max > 0 && s.sessionCount.Load() >= int64(max) && s.lookup(st.clientID) == nil {
		return c.refuse(pkt, packet.QuotaExceeded, "the server holds its maximum number of sessions")
	}

	c.log = newConnLogger(s.log, c.lst.name, c.nc.RemoteAddr(), st.clientID)
	c.outMu.Lock()
	c.canWrite = true
	// Packets queued from now on (CONNACK first) are written by serve
	// once the connection is ready to read the client's next packet.
	c.handling = true
	c.outMu.Unlock()
	code, reason, attached := s.claimClusterSession(ctx, c, &st)
	if reason != "" {
		return c.refuse(pkt, code, reason)
	}
	_, present, refusal := s.attach(c, &st)
	attached()
	if refusal != "" {
		return c.refuse(pkt, packet.ClientIDNotValid, refusal)
	}
	c.awaitSessionStored()
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
				c.loseAccess("client certificate no longer valid: " + reason)
			})
		}
	}
	c.armExpiry(st.authExpires)
	c.in.r.SetVersion(pkt.Version)
	c.authenticated = true
	c.in.r.SetMaxPacketSize(s.cfg.MaxPacketSize)
	if ao, ok := c.obs.(AttachObserver); ok {
		if d := ao.Attached(&c.client); !d.Allow {
			// Nothing is written yet (CONNACK and any resends wait for
			// serve): the socket is closed first, so the refused client
			// receives neither; the reader then ends the attached session
			// as for any lost connection.
			c.nc.Close()
			c.loseAccess(d.Reason)
		}
	}
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
			c.client.Groups, c.client.Publish, c.client.Subscribe = res.Groups, res.Publish, res.Subscribe
			c.client.AuthBackend, c.client.AuthExpires = res.Backend, res.Expires
			st.authExpires = res.Expires
			return true
		}
		st.idBound = res.ClientIDBound
		if !res.NoOpinion {
			code := res.Code
			if code == 0 {
				code = packet.NotAuthorized
			}
			s.stats.countAuthRefusal(code)
			return c.authFailed(pkt, code, res.Reason)
		}
	}
	if !anonymousOK {
		if pkt.UsernameFlag || pkt.PasswordFlag {
			s.stats.countAuth(authBadCredentials)
			return c.authFailed(pkt, packet.BadUsernameOrPassword, "no authentication backend accepts these credentials")
		}
		s.stats.countAuth(authAnonymousRefused)
		return c.authFailed(pkt, packet.NotAuthorized, "anonymous access is not allowed on this listener")
	}
	// Admitted by the anonymous policy. Unlike Mosquitto, a username
	// sent without a backend to check it stays a claim (ClaimedUsername,
	// for logs): no Authorizer can mistake it for an identity.
	c.client.Anonymous = true
	return true
}

// authFailed reports a refused authentication to the Observer and refuses.
func (c *conn) authFailed(pkt *packet.Connect, code packet.ReasonCode, reason string) bool {
	c.obs.AuthFailed(&c.client, reason)
	return c.refuse(pkt, code, reason)
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
		if st.authMethod != "" {
			p.AuthMethod = st.authMethod
			p.Mark(packet.PropAuthMethod)
			if st.authData != nil {
				p.AuthData = st.authData
				p.Mark(packet.PropAuthData)
			}
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
