package client

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// conn is one network connection of a Client, with its reader and writer
// goroutines. Fields marked "c.mu" are guarded by the Client's lock.
type conn struct {
	c         *Client
	nc        net.Conn
	r         *packet.Reader
	v         Version
	server    server
	keepAlive time.Duration
	recvMax   int // our Receive Maximum
	maxWrite  int // largest single Write, 0 unlimited

	wbuf          []byte        // c.mu: encoded packets waiting for the writer
	spare         []byte        // c.mu: the writer's other buffer
	drained       chan struct{} // c.mu: closed when the writer takes wbuf
	disconnecting bool          // c.mu: close after writing wbuf
	recvInflight  int           // c.mu: inbound QoS 1/2 not yet acknowledged
	warnedRecvMax bool          // c.mu: the server exceeded our Receive Maximum
	pub           packet.Publish

	aliases  map[uint16]string // reader only: inbound topic aliases
	aliasOut map[string]uint16 // c.mu: outbound topic aliases
	aliasMax uint16            // the server's Topic Alias Maximum when Config.TopicAliases, else 0

	wake     chan struct{}
	done     chan struct{}
	failOnce sync.Once
	err      error // set before done is closed
	lastSent atomic.Int64
	pingSent atomic.Int64
	stalled  atomic.Bool // the reader waits for the application to take a message
	wg       sync.WaitGroup
}

// appendLocked encodes p into the write buffer and wakes the writer. It
// returns the offset where p starts. c.mu must be held.
func (cn *conn) appendLocked(p packet.Packet) (int, error) {
	start := len(cn.wbuf)
	b, err := packet.Append(cn.wbuf, p, cn.v)
	if err != nil {
		return 0, err
	}
	cn.wbuf = b
	if cn.c.debug {
		cn.c.logPacket("client: sending", p)
	}
	select {
	case cn.wake <- struct{}{}:
	default:
	}
	return start, nil
}

// fail ends the connection with err (the first error wins) and makes
// new operations wait for the next connection. It must not be called with
// c.mu held.
func (cn *conn) fail(err error) {
	cn.failOnce.Do(func() {
		cn.err = err
		close(cn.done)
		cn.nc.Close()
		c := cn.c
		c.mu.Lock()
		if c.cn == cn {
			c.cn = nil
			c.up = make(chan struct{})
		}
		c.mu.Unlock()
	})
}

// connect dials the next server, performs the CONNECT exchange and
// installs the connection.
func (c *Client) connect(ctx context.Context) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, orDefault(c.cfg.ConnectTimeout, DefaultConnectTimeout))
	defer cancel()
	c.mu.Lock()
	sv := c.servers[c.serverIdx%len(c.servers)]
	c.serverIdx++
	c.mu.Unlock()

	nc, err := c.dial(ctx, sv)
	if err != nil {
		return nil, fmt.Errorf("client: connect to %s: %w", sv.raw, err)
	}
	cn, ack, err := c.handshake(ctx, nc, sv)
	if err != nil {
		nc.Close()
		if errors.Is(err, ErrRejected) {
			return nil, err
		}
		return nil, fmt.Errorf("client: connect to %s: %w", sv.raw, err)
	}
	if err := c.install(cn, ack); err != nil {
		nc.Close()
		return nil, err
	}
	return cn, nil
}

// handshake sends CONNECT and reads CONNACK, running enhanced
// authentication in between.
func (c *Client) handshake(ctx context.Context, nc net.Conn, sv server) (*conn, *packet.Connack, error) {
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	defer stop()

	c.mu.Lock()
	clientID := c.clientID
	clean := c.cfg.CleanStart && (!c.connected || c.version != V5)
	c.mu.Unlock()

	v := c.version
	cp := &packet.Connect{
		Version:    v,
		CleanStart: clean,
		KeepAlive:  c.cfg.keepAliveSeconds(),
		ClientID:   clientID,
		Will:       c.cfg.Will,
	}
	if c.cfg.Username != "" {
		cp.UsernameFlag, cp.Username = true, c.cfg.Username
	}
	if !c.cfg.Password.Empty() {
		cp.PasswordFlag, cp.Password = true, c.cfg.Password.Bytes()
	}
	if v == V5 {
		pr := c.cfg.ConnectProperties
		pr.User = slices.Clone(pr.User)
		if c.cfg.SessionExpiry != 0 {
			pr.SessionExpiry = c.cfg.SessionExpiry
			pr.Mark(packet.PropSessionExpiry)
		}
		if rm := c.cfg.ReceiveMaximum; rm != 0 && rm != 65535 {
			pr.ReceiveMaximum = rm
			pr.Mark(packet.PropReceiveMaximum)
		}
		if c.cfg.MaxPacketSize != 0 {
			pr.MaximumPacketSize = c.cfg.MaxPacketSize
			pr.Mark(packet.PropMaximumPacketSize)
		}
		if c.cfg.TopicAliasMaximum != 0 {
			pr.TopicAliasMaximum = c.cfg.TopicAliasMaximum
			pr.Mark(packet.PropTopicAliasMaximum)
		}
		if a := c.cfg.Auth; a != nil {
			data, err := a.Start(ctx)
			if err != nil {
				return nil, nil, fmt.Errorf("authentication: %w", err)
			}
			pr.AuthMethod = a.Method()
			pr.Mark(packet.PropAuthMethod)
			if data != nil {
				pr.AuthData = data
				pr.Mark(packet.PropAuthData)
			}
		}
		cp.Properties = pr
	}
	b, err := packet.Append(nil, cp, v)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding CONNECT: %w", err)
	}
	if c.debug {
		c.log.Debug("client: sending", "type", "CONNECT", "server", sv.raw, "version", v.String(), "client_id", clientID,
			"clean_start", clean, "keep_alive", cp.KeepAlive, "username", cp.Username != "", "will", cp.Will != nil)
	}
	if _, err := nc.Write(b); err != nil {
		return nil, nil, ctxErr(ctx, err)
	}
	r := packet.NewReader(bufio.NewReaderSize(nc, 16<<10), c.cfg.MaxPacketSize)
	r.SetVersion(v)
	var ack *packet.Connack
	for ack == nil {
		p, err := r.ReadPacket()
		if err != nil {
			return nil, nil, ctxErr(ctx, err)
		}
		if c.debug {
			c.logPacket("client: received", p)
		}
		switch p := p.(type) {
		case *packet.Connack:
			ack = p
		case *packet.Auth:
			if c.cfg.Auth == nil || p.ReasonCode != packet.ContinueAuthentication {
				return nil, nil, fmt.Errorf("unexpected AUTH (%s) during CONNECT", p.ReasonCode)
			}
			resp, err := c.authResponse(ctx, p)
			if err != nil {
				return nil, nil, err
			}
			b, err := packet.Append(nil, resp, v)
			if err != nil {
				return nil, nil, fmt.Errorf("encoding AUTH: %w", err)
			}
			if _, err := nc.Write(b); err != nil {
				return nil, nil, ctxErr(ctx, err)
			}
		default:
			return nil, nil, fmt.Errorf("server sent %s before CONNACK", p.Type())
		}
	}
	if v != V5 {
		if ack.ReasonCode != packet.V3Accepted {
			return nil, nil, &ReasonError{Op: "connect", Code: v3ConnackToV5(ack.ReasonCode), V3Code: byte(ack.ReasonCode)}
		}
	} else if ack.ReasonCode != packet.Success {
		e := &ReasonError{Op: "connect", Code: ack.ReasonCode, Reason: ack.Properties.ReasonString}
		if ack.Properties.Has(packet.PropServerReference) {
			e.Reason += " (server reference: " + ack.Properties.ServerReference + ")"
		}
		return nil, nil, e
	}
	if f, ok := c.cfg.Auth.(AuthFinisher); ok && v == V5 {
		if err := f.Finish(ctx, &ack.Properties); err != nil {
			return nil, nil, fmt.Errorf("authentication: %w", err)
		}
	}
	if !stop() {
		return nil, nil, ctx.Err()
	}
	nc.SetDeadline(time.Time{})

	ka := time.Duration(c.cfg.keepAliveSeconds()) * time.Second
	if v == V5 && ack.Properties.Has(packet.PropServerKeepAlive) {
		ka = time.Duration(ack.Properties.ServerKeepAlive) * time.Second
	}
	cn := &conn{
		c:         c,
		nc:        nc,
		r:         r,
		v:         v,
		server:    sv,
		keepAlive: ka,
		recvMax:   int(orDefault(c.cfg.ReceiveMaximum, 65535)),
		maxWrite:  maxWriteFor(sv),
		wake:      make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
	cn.lastSent.Store(c.now().UnixNano())
	return cn, ack, nil
}

// authResponse asks the Authenticator to answer an AUTH challenge.
func (c *Client) authResponse(ctx context.Context, in *packet.Auth) (*packet.Auth, error) {
	a := c.cfg.Auth
	if in.Properties.AuthMethod != a.Method() {
		return nil, fmt.Errorf("server changed the authentication method to %q", in.Properties.AuthMethod)
	}
	resp, err := a.Challenge(ctx, in)
	if err != nil {
		return nil, fmt.Errorf("authentication: %w", err)
	}
	if resp == nil {
		resp = &packet.Auth{}
	}
	out := *resp
	if out.ReasonCode == 0 {
		out.ReasonCode = packet.ContinueAuthentication
	}
	out.Properties.AuthMethod = a.Method()
	out.Properties.Mark(packet.PropAuthMethod)
	return &out, nil
}

// ctxErr prefers the context's error over the I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// install makes cn the current connection: it applies the server's
// limits, resends the session's in-flight messages and starts the reader
// and writer.
func (c *Client) install(cn *conn, ack *packet.Connack) error {
	pr := &ack.Properties
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.closeErr
	}
	if pr.Has(packet.PropAssignedClientID) {
		c.clientID = pr.AssignedClientID
	}
	c.quota = 65535
	if pr.Has(packet.PropReceiveMaximum) && pr.ReceiveMaximum > 0 {
		c.quota = int(pr.ReceiveMaximum)
	}
	c.maxQoS = 2
	if pr.Has(packet.PropMaximumQoS) {
		c.maxQoS = pr.MaximumQoS
	}
	c.retainOK = !pr.Has(packet.PropRetainAvailable) || pr.RetainAvailable == 1
	c.maxPacket = 0
	if pr.Has(packet.PropMaximumPacketSize) {
		c.maxPacket = pr.MaximumPacketSize
	}
	if c.cfg.TopicAliases && pr.Has(packet.PropTopicAliasMaximum) {
		cn.aliasMax = pr.TopicAliasMaximum
	}
	resumed := ack.SessionPresent
	first := !c.connected
	c.connected = true
	c.cn = cn
	c.info = ConnectInfo{Server: cn.server.raw, ClientID: c.clientID, SessionPresent: resumed, Properties: *pr}

	// Resend in the original order [MQTT-4.6.0-1]: PUBLISH with DUP when
	// the session was resumed [MQTT-4.4.0-1], as new messages otherwise
	// (the server has forgotten them, but the application has not).
	// PUBRELs of a lost session are complete: the server had the message.
	var pending []*Token
	for _, t := range c.ids {
		if t.kind == opPublish {
			pending = append(pending, t)
		}
	}
	slices.SortFunc(pending, func(a, b *Token) int { return cmp.Compare(a.seq, b.seq) })
	for _, t := range pending {
		switch {
		case t.rel && resumed:
			cn.appendLocked(&packet.Pubrel{PacketID: t.id})
		case t.rel:
			c.completeLocked(t, nil)
		default:
			if err := c.encodePublishLocked(cn, t.msg, t.id, resumed); err != nil {
				c.completeLocked(t, err)
				continue
			}
		}
	}
	if !resumed {
		clear(c.recvQoS2)
	}
	if !resumed && !first {
		for _, s := range slices.Clone(c.subs) {
			t, err := c.sendRequestLocked(cn, opSubscribe, &packet.Subscribe{Properties: s.props, Subscriptions: []Subscription{s.sub}})
			if err == nil {
				t.resub = true
			}
		}
	}
	close(c.up)
	cn.wg.Add(2)
	go cn.reader()
	go cn.writer()
	info := c.info
	c.mu.Unlock()

	c.log.Info("client: connected", "server", cn.server.raw, "client_id", info.ClientID,
		"version", c.version.String(), "session_present", resumed, "resent", len(pending))
	if f := c.cfg.OnConnect; f != nil {
		c.callbacks.Add(1)
		f(c, info)
		c.callbacks.Add(-1)
	}
	return nil
}

// writer flushes the write buffer whenever packets are queued, and sends
// PINGREQ when the connection has been idle.
func (cn *conn) writer() {
	defer cn.wg.Done()
	c := cn.c
	var tick <-chan time.Time
	if cn.keepAlive > 0 {
		t := time.NewTicker(max(cn.keepAlive/4, 50*time.Millisecond))
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-cn.wake:
		case <-tick:
			if err := cn.checkKeepAlive(); err != nil {
				cn.fail(err)
				return
			}
			continue
		case <-cn.done:
			return
		}
		c.mu.Lock()
		buf := cn.wbuf
		cn.wbuf, cn.spare = cn.spare, nil
		closeAfter := cn.disconnecting
		if cn.drained != nil {
			close(cn.drained)
			cn.drained = nil
		}
		c.mu.Unlock()
		for b := buf; len(b) > 0; {
			n := len(b)
			if cn.maxWrite > 0 {
				n = min(n, cn.maxWrite)
			}
			if _, err := cn.nc.Write(b[:n]); err != nil {
				cn.fail(err)
				return
			}
			b = b[n:]
			cn.lastSent.Store(c.now().UnixNano())
		}
		if closeAfter {
			cn.closeAfterDisconnect()
			return
		}
		if cap(buf) <= 2*c.limit {
			c.mu.Lock()
			cn.spare = buf[:0]
			c.mu.Unlock()
		}
	}
}

// checkKeepAlive sends PINGREQ after three quarters of the keep alive
// interval without sending, and fails when a PINGRESP is overdue. While
// the reader is stalled behind the application (and so cannot see
// PINGRESP), pings go on but are not timed.
func (cn *conn) checkKeepAlive() error {
	now := cn.c.now().UnixNano()
	sent, stalled := cn.pingSent.Load(), cn.stalled.Load()
	switch {
	case sent != 0 && stalled:
		cn.pingSent.Store(now)
	case sent != 0 && time.Duration(now-sent) > cn.keepAlive:
		return ErrKeepAliveTimeout
	case sent != 0:
		return nil // one ping outstanding is enough
	}
	if time.Duration(now-cn.lastSent.Load()) < cn.keepAlive*3/4 {
		return nil
	}
	if sent == 0 {
		cn.pingSent.Store(now)
	}
	cn.c.mu.Lock()
	defer cn.c.mu.Unlock()
	_, err := cn.appendLocked(&packet.Pingreq{})
	return err
}

// reader reads and dispatches packets until the connection ends.
func (cn *conn) reader() {
	defer cn.wg.Done()
	for {
		p, err := cn.r.ReadPacket()
		if err == nil {
			if cn.c.debug {
				cn.c.logPacket("client: received", p)
			}
			err = cn.handle(p)
		}
		if err != nil {
			select {
			case <-cn.done:
			default:
				cn.abort(err)
			}
			return
		}
	}
}

// abort ends the connection after a protocol violation by the server,
// telling it why first (MQTT 5) when the error carries a reason code.
func (cn *conn) abort(err error) {
	var pe *packet.Error
	code := packet.CodeOf(err)
	if cn.v == V5 && (errors.As(err, &pe) || code != packet.UnspecifiedError) {
		if b, e := packet.Append(nil, &packet.Disconnect{ReasonCode: code}, cn.v); e == nil {
			cn.nc.SetWriteDeadline(time.Now().Add(time.Second))
			cn.nc.Write(b)
		}
	}
	cn.fail(err)
}

// protoErr is a protocol violation by the server.
func protoErr(code ReasonCode, format string, args ...any) error {
	return &packet.Error{Code: code, Reason: fmt.Sprintf(format, args...), Err: packet.ErrProtocol}
}

func (cn *conn) handle(p packet.Packet) error {
	c := cn.c
	switch p := p.(type) {
	case *packet.Publish:
		return cn.handlePublish(p)
	case *packet.Puback:
		c.mu.Lock()
		defer c.mu.Unlock()
		if t := c.ids[p.PacketID]; t != nil && t.kind == opPublish && t.msg.QoS == 1 {
			c.completeLocked(t, reasonErr("publish", p.ReasonCode, &p.Properties, t.msg.Topic))
		} else {
			c.log.Debug("client: PUBACK for unknown packet identifier", "id", p.PacketID)
		}
	case *packet.Pubrec:
		c.mu.Lock()
		defer c.mu.Unlock()
		t := c.ids[p.PacketID]
		if t == nil || t.kind != opPublish || t.msg.QoS != 2 {
			rel := &packet.Pubrel{PacketID: p.PacketID, ReasonCode: packet.PacketIDNotFound}
			_, err := cn.appendLocked(rel)
			return err
		}
		if p.ReasonCode.IsError() {
			c.completeLocked(t, reasonErr("publish", p.ReasonCode, &p.Properties, t.msg.Topic))
			return nil
		}
		t.rel = true
		start, err := cn.appendLocked(&packet.Pubrel{PacketID: p.PacketID})
		if err != nil {
			return err
		}
		c.storePutLocked(p.PacketID, cn.wbuf[start:])
	case *packet.Pubcomp:
		c.mu.Lock()
		defer c.mu.Unlock()
		if t := c.ids[p.PacketID]; t != nil && t.kind == opPublish && t.rel {
			c.completeLocked(t, reasonErr("publish", p.ReasonCode, &p.Properties, t.msg.Topic))
		}
	case *packet.Pubrel:
		c.mu.Lock()
		defer c.mu.Unlock()
		code := packet.Success
		if _, ok := c.recvQoS2[p.PacketID]; ok {
			delete(c.recvQoS2, p.PacketID)
			cn.recvInflight = max(cn.recvInflight-1, 0)
		} else {
			code = packet.PacketIDNotFound
		}
		_, err := cn.appendLocked(&packet.Pubcomp{PacketID: p.PacketID, ReasonCode: code})
		return err
	case *packet.Suback:
		c.mu.Lock()
		defer c.mu.Unlock()
		t := c.ids[p.PacketID]
		if t == nil || t.kind != opSubscribe {
			return protoErr(packet.ProtocolError, "SUBACK for unknown packet identifier %d", p.PacketID)
		}
		delete(c.ids, p.PacketID)
		if len(p.ReasonCodes) != len(t.subs) {
			return protoErr(packet.ProtocolError, "SUBACK has %d reason codes for %d subscriptions", len(p.ReasonCodes), len(t.subs))
		}
		t.codes = p.ReasonCodes
		c.recordSubscriptionsLocked(t.subs, t.subProps, t.codes)
		if t.resub {
			for i, code := range t.codes {
				if code.IsError() {
					c.log.Warn("client: resubscribing failed", "filter", t.subs[i].Filter, "reason", code.String())
				}
			}
		}
		if p.Properties.ReasonString != "" {
			for i, code := range t.codes {
				if code.IsError() {
					t.finish(&ReasonError{Op: "subscribe", Code: code, Reason: p.Properties.ReasonString, Topic: t.subs[i].Filter})
					return nil
				}
			}
		}
		t.finish(nil)
	case *packet.Unsuback:
		c.mu.Lock()
		defer c.mu.Unlock()
		t := c.ids[p.PacketID]
		if t == nil || t.kind != opUnsubscribe {
			return protoErr(packet.ProtocolError, "UNSUBACK for unknown packet identifier %d", p.PacketID)
		}
		delete(c.ids, p.PacketID)
		t.codes = p.ReasonCodes
		if cn.v != V5 {
			t.codes = make([]ReasonCode, len(t.filters))
		}
		if len(t.codes) != len(t.filters) {
			return protoErr(packet.ProtocolError, "UNSUBACK has %d reason codes for %d filters", len(t.codes), len(t.filters))
		}
		for i, f := range t.filters {
			if !t.codes[i].IsError() {
				c.subs = slices.DeleteFunc(c.subs, func(s savedSub) bool { return s.sub.Filter == f })
			}
		}
		t.finish(nil)
	case *packet.Pingresp:
		cn.pingSent.Store(0)
	case *packet.Disconnect:
		return &ReasonError{Op: "disconnect", Code: p.ReasonCode, Reason: p.Properties.ReasonString}
	case *packet.Auth:
		return cn.handleAuth(p)
	default:
		return protoErr(packet.ProtocolError, "unexpected %s from server", p.Type())
	}
	return nil
}

// handlePublish resolves topic aliases, deduplicates QoS 2 and queues the
// message for delivery.
func (cn *conn) handlePublish(p *packet.Publish) error {
	c := cn.c
	if p.Properties.Has(packet.PropTopicAlias) {
		a := p.Properties.TopicAlias
		if a == 0 || a > c.cfg.TopicAliasMaximum {
			return protoErr(packet.TopicAliasInvalid, "topic alias %d outside 1..%d", a, c.cfg.TopicAliasMaximum)
		}
		if p.Topic != "" {
			if cn.aliases == nil {
				cn.aliases = make(map[uint16]string)
			}
			cn.aliases[a] = p.Topic
		} else if t, ok := cn.aliases[a]; ok {
			p.Topic = t
		} else {
			return protoErr(packet.ProtocolError, "unknown topic alias %d", a)
		}
		p.Properties.Unmark(packet.PropTopicAlias)
		p.Properties.TopicAlias = 0
	}
	if p.QoS > 0 {
		c.mu.Lock()
		if p.QoS == 2 {
			if _, seen := c.recvQoS2[p.PacketID]; seen {
				// Already delivered; the PUBREC was lost or not sent yet.
				_, err := cn.appendLocked(&packet.Pubrec{PacketID: p.PacketID})
				c.mu.Unlock()
				return err
			}
			c.recvQoS2[p.PacketID] = struct{}{}
		}
		cn.recvInflight++
		n := cn.recvInflight
		over := n > cn.recvMax && !cn.warnedRecvMax
		if over {
			cn.warnedRecvMax = true
		}
		c.mu.Unlock()
		// The server breaks flow control [MQTT-3.3.4-9]. Debian's
		// Mosquitto 2.0.11 does once acknowledgements flow; disconnecting
		// would only hurt, so the client tolerates it and says so once per
		// connection.
		if over {
			c.log.Warn("client: server exceeded our Receive Maximum", "receive_maximum", cn.recvMax, "unacknowledged", n)
		}
	}
	m := &Message{Topic: p.Topic, Payload: p.Payload, QoS: p.QoS, Retain: p.Retain, Duplicate: p.Dup, Properties: p.Properties}
	if p.QoS > 0 && c.cfg.ManualAck {
		m.ackConn, m.ackID = cn, p.PacketID
	}
	d := delivery{m: m, cn: cn, id: p.PacketID, qos: p.QoS}
	select {
	case c.deliverQ <- d:
		return nil
	default:
	}
	// The application is behind. While the reader waits here it cannot
	// see PINGRESP, so keep alive must not count this time against the
	// server.
	cn.stalled.Store(true)
	defer cn.stalled.Store(false)
	select {
	case c.deliverQ <- d:
	case <-cn.done:
	case <-c.ctx.Done():
	}
	return nil
}

// handleAuth runs a server-initiated step of re-authentication.
func (cn *conn) handleAuth(p *packet.Auth) error {
	c := cn.c
	if c.cfg.Auth == nil {
		return protoErr(packet.ProtocolError, "AUTH without enhanced authentication")
	}
	switch p.ReasonCode {
	case packet.ContinueAuthentication:
		resp, err := c.authResponse(c.ctx, p)
		if err != nil {
			return err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		_, err = cn.appendLocked(resp)
		return err
	case packet.Success:
		var err error
		if f, ok := c.cfg.Auth.(AuthFinisher); ok {
			err = f.Finish(c.ctx, &p.Properties)
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.reauth != nil {
			c.reauth.finish(err)
			c.reauth = nil
		}
		return err
	}
	return protoErr(packet.ProtocolError, "AUTH with reason %s", p.ReasonCode)
}

// wsMessageSize is the largest WebSocket message the client sends. Each
// Write on a WebSocket connection is one message, and servers bound
// message sizes (Moat's listener at about 1 MiB by default); MQTT packets
// may span messages [MQTT-6.0.0-2], so batches are cut to this size.
const wsMessageSize = 64 << 10

func maxWriteFor(sv server) int {
	if sv.scheme == "ws" || sv.scheme == "wss" {
		return wsMessageSize
	}
	return 0
}

// logPacket logs a packet at Debug level, as mosquitto's -d does: type,
// packet identifier, topic, QoS and sizes, never payloads or passwords.
func (c *Client) logPacket(msg string, p packet.Packet) {
	attrs := []any{"type", p.Type().String()}
	switch p := p.(type) {
	case *packet.Publish:
		attrs = append(attrs, "id", p.PacketID, "topic", p.Topic, "qos", p.QoS, "retain", p.Retain, "dup", p.Dup, "bytes", len(p.Payload))
	case *packet.Puback:
		attrs = append(attrs, "id", p.PacketID, "reason", p.ReasonCode.String())
	case *packet.Pubrec:
		attrs = append(attrs, "id", p.PacketID, "reason", p.ReasonCode.String())
	case *packet.Pubrel:
		attrs = append(attrs, "id", p.PacketID)
	case *packet.Pubcomp:
		attrs = append(attrs, "id", p.PacketID)
	case *packet.Subscribe:
		attrs = append(attrs, "id", p.PacketID, "filters", len(p.Subscriptions))
	case *packet.Suback:
		attrs = append(attrs, "id", p.PacketID, "codes", fmt.Sprint(p.ReasonCodes))
	case *packet.Unsubscribe:
		attrs = append(attrs, "id", p.PacketID, "filters", len(p.Filters))
	case *packet.Disconnect:
		attrs = append(attrs, "reason", p.ReasonCode.String())
	case *packet.Auth:
		attrs = append(attrs, "reason", p.ReasonCode.String(), "method", p.Properties.AuthMethod)
	case *packet.Connack:
		attrs = append(attrs, "session_present", p.SessionPresent, "reason", p.ReasonCode.String())
	}
	c.log.Debug(msg, attrs...)
}

// disconnectLinger bounds how long the client waits, after DISCONNECT,
// for the server to close the connection.
const disconnectLinger = 2 * time.Second

// closeAfterDisconnect ends the connection after DISCONNECT was written.
// Where the transport can half-close (TCP, TLS), it shuts down its side
// and lets the reader wait for the server's close: the server has then
// processed everything sent before DISCONNECT (acknowledgements above
// all), so a new connection of the same client cannot overtake them.
func (cn *conn) closeAfterDisconnect() {
	cw, ok := cn.nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		cn.fail(ErrClosed)
		return
	}
	time.AfterFunc(disconnectLinger, func() { cn.fail(ErrClosed) })
}
