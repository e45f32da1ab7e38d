package broker

import (
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// Observer watches connections for abuse and records security decisions
// (defense and audit, wired in internal/cli). The server calls Accept for
// every socket it accepts, before any TLS work; each connection it admits
// then reports to its own ConnObserver. Implementations must be safe for
// concurrent use and must not block: Accept runs on the accept loop, the
// ConnObserver on the connection's reader. None of them is called with a
// server lock held, so they may call back into the server: a ban a
// detection adds ends the live clients it matches through
// Server.Reevaluate, the one loss-of-access path.
type Observer interface {
	// Accept decides on a new socket from remote on listener before the
	// TLS handshake (rate limits, address bans, connections per address).
	// A refusal closes the socket at once; its reason is logged.
	Accept(listener string, remote net.Addr) (ConnObserver, Decision)
}

// ObserverCounters is an optional interface of an Observer: each counter
// it returns (name → value, e.g. "bans" or "detections/topic_scan") is
// published as $SYS/broker/moat/NAME with the server's own.
type ObserverCounters interface {
	Counters() map[string]int64
}

// ConnObserver follows one accepted connection. Its methods are called by
// the connection's reader (the goroutine that owns reading, see conn),
// one at a time, so it needs no lock for its per-connection state.
type ConnObserver interface {
	// Connecting is called after CONNECT was read, before authentication,
	// with the claimed username: a refusal (a banned identity) answers
	// CONNACK 0x8A Banned (3.1.1: 0x05) without checking credentials.
	Connecting(c *Client) Decision
	// AuthFailed reports a refused authentication with its reason.
	AuthFailed(c *Client, reason string)
	// Connected is called once authentication succeeded, before the
	// session is attached, with the verified identity; a refusal answers
	// CONNACK 0x8A Banned as for Connecting.
	Connected(c *Client) Decision
	// Denied reports a SUBSCRIBE filter or PUBLISH topic the Authorizer
	// refused with reason.
	Denied(c *Client, a Action, topic, reason string) Verdict
	// Undeliverable reports a client PUBLISH no subscriber received.
	Undeliverable(c *Client, topic string) Verdict
	// Read charges a packet of n bytes read from the client. A non-zero
	// wait pauses reading for that long (back-pressure); a refusal
	// disconnects the client with 0x96 Message rate too high.
	Read(n int) (wait time.Duration, d Decision)
	// Ping reports a PINGREQ received after quiet, the time since the
	// client last sent anything else (silent clients).
	Ping(c *Client, quiet time.Duration) Verdict
	// Closed is called once when the connection has ended, admitted or
	// not; connected says whether CONNECT was accepted, abnormal whether
	// it ended without a normal DISCONNECT.
	Closed(c *Client, connected, abnormal bool)
}

// ReadMarker is an optional interface of a ConnObserver whose Read may
// charge the packets that came with one read of the client's socket at
// one reading of its clock: the reader calls MarkRead when a read
// returned input (after any wait for a held publisher's turn), and Read
// may charge each packet of that read at the time it charged the read's
// first, never later than the packet's own. Read still pauses after the
// packet that goes over a rate; the Observer takes a new reading after a
// pause.
type ReadMarker interface {
	MarkRead()
}

// AttachObserver is an optional interface of a ConnObserver. Attached is
// called on the reader once the client's session is attached, when
// Reevaluate can find the connection, before
// anything is written to it (CONNACK included) and before its next packet
// is read. A refusal closes the socket unwritten, so the client receives
// neither its CONNACK nor its queued messages, and ends the connection as
// the loss of access does. It closes the window between Connected and the
// attach: a ban added in it found no connection to end, and Attached is
// where the Observer checks again.
type AttachObserver interface {
	Attached(c *Client) Decision
}

// LimitObserver is an optional interface of a ConnObserver. Limited is
// called on the client's reader when the client ran into one of the
// server's limits, once the server applied it (the packet refused or
// dropped, the client disconnected): a client that keeps hitting limits
// is probing the server or broken, which the Observer may count. A
// Verdict that disconnects ends the client if the limit did not already.
// Limits refused at accept (connection rates and caps) are the
// Observer's own and are not reported here.
type LimitObserver interface {
	Limited(c *Client, l Limit, detail string) Verdict
}

// Limit names a limit a client ran into (LimitObserver).
type Limit uint8

// Limits reported to a LimitObserver.
const (
	// LimitPacketSize: a packet over the maximum packet size (before
	// authentication, the pre-authentication limit); disconnected.
	LimitPacketSize Limit = iota + 1
	// LimitTopicLength: a topic name or filter (PUBLISH, SUBSCRIBE,
	// will) longer than Config.MaxTopicLength.
	LimitTopicLength
	// LimitTopicLevels: a topic name or filter with more levels than
	// Config.MaxTopicLevels.
	LimitTopicLevels
	// LimitMessageSize: a payload over the message size limit.
	LimitMessageSize
	// LimitReceiveMaximum: more QoS 2 messages awaiting PUBREL than the
	// server's Receive Maximum; disconnected.
	LimitReceiveMaximum
	// LimitSubscriptions: a subscription refused by MaxSubscriptions or
	// MaxSubscriptionBytes.
	LimitSubscriptions
	// LimitRetained: a retained message refused by a retained limit.
	LimitRetained
	// LimitQueueFull: messages for the client dropped because its
	// session's queue or its connection's outbound buffer was full
	// (reported on its reader's next packet, with the count).
	LimitQueueFull

	// NumLimits is one more than the highest Limit, for tables indexed by
	// Limit.
	NumLimits
)

var limitNames = [NumLimits]string{"", "packet_size", "topic_length", "topic_levels", "message_size", "receive_maximum",
	"subscriptions", "retained", "queue_full"}

// String returns the limit's name in logs and metrics ("packet_size",
// "topic_length", "topic_levels", "message_size", "receive_maximum",
// "subscriptions", "retained", "queue_full").
func (l Limit) String() string {
	if l < NumLimits && l > 0 {
		return limitNames[l]
	}
	return "limit(" + strconv.Itoa(int(l)) + ")"
}

// limitVerdict reports a limit the client hit to the Observer, when it
// wants them, and returns its verdict without applying it. Called on the
// reader.
func (c *conn) limitVerdict(l Limit, detail string) Verdict {
	o, ok := c.obs.(LimitObserver)
	if !ok {
		return Verdict{}
	}
	return o.Limited(&c.client, l, detail)
}

// limited reports a limit the client hit and applies the verdict; it
// returns false when the connection is being ended.
func (c *conn) limited(l Limit, detail string) bool {
	return c.obsVerdict(c.limitVerdict(l, detail))
}

// overLimit ends the connection for a packet over a limit (a protocol
// error), then reports the limit. It returns false.
func (c *conn) overLimit(l Limit, code packet.ReasonCode, reason string) bool {
	c.protocolError(code, reason)
	c.limitVerdict(l, reason)
	return false
}

// GrantObserver is an optional interface of a ConnObserver. Regranted is
// called on the reader when MQTT 5 re-authentication changed the client's
// groups or grants (a token with other claims, an LDAP group left), once
// the new grants are in force and the session was re-checked against them
// as Reevaluate does: what they no longer allow is already taken away.
type GrantObserver interface {
	Regranted(c *Client, ch GrantChange)
}

// GrantChange is a change of a live client's grants and what it took
// away.
type GrantChange struct {
	Before, After Grants
	Reason        string
	// Unsubscribed counts the subscriptions removed, Dropped the queued
	// and in-flight messages dropped, because the new grants no longer
	// allow them.
	Unsubscribed, Dropped int
}

// regranted reports a change of grants to the ConnObserver, when it
// wants it. Called on the reader.
func (c *conn) regranted(ch GrantChange) {
	if o, ok := c.obs.(GrantObserver); ok {
		o.Regranted(&c.client, ch)
	}
}

// Verdict is an Observer's answer to an event: Disconnect asks the server
// to end the connection now with Code (a v5 reason code; 3.1.1 clients are
// simply disconnected) and Reason.
type Verdict struct {
	Disconnect bool
	Code       packet.ReasonCode
	Reason     string
}

// obsVerdict applies v from the Observer on the reader: it returns false
// when the connection is being ended.
func (c *conn) obsVerdict(v Verdict) bool {
	if !v.Disconnect {
		return true
	}
	c.log.Warn("broker: client disconnected by defense", "code", v.Code, "reason", v.Reason)
	c.kill(v.Code, v.Reason)
	return false
}

// nopConnObserver is used when Config.Observer is nil.
type nopConnObserver struct{}

func (nopConnObserver) Connecting(*Client) Decision                    { return Decision{Allow: true} }
func (nopConnObserver) AuthFailed(*Client, string)                     {}
func (nopConnObserver) Connected(*Client) Decision                     { return Decision{Allow: true} }
func (nopConnObserver) Denied(*Client, Action, string, string) Verdict { return Verdict{} }
func (nopConnObserver) Undeliverable(*Client, string) Verdict          { return Verdict{} }
func (nopConnObserver) Read(int) (time.Duration, Decision)             { return 0, Decision{Allow: true} }
func (nopConnObserver) Ping(*Client, time.Duration) Verdict            { return Verdict{} }
func (nopConnObserver) Closed(*Client, bool, bool)                     {}

// observe asks the Observer about a socket just accepted on st, before any
// TLS work. On refusal it closes the socket, releases the slot admit took
// and returns false. Refusals are counted and logged, the first and every
// 1000th at info level (a flood must not flood the log).
func (s *Server) observe(st *listenerState, nc net.Conn) (ConnObserver, bool) {
	if s.cfg.Observer == nil {
		return nopConnObserver{}, true
	}
	obs, d := s.cfg.Observer.Accept(st.name, nc.RemoteAddr())
	if d.Allow && obs != nil {
		return obs, true
	}
	nc.Close()
	s.release(st)
	n := s.stats.acceptRefused.Add(1)
	level := slog.LevelDebug
	if n == 1 || n%1000 == 0 {
		level = slog.LevelInfo
	}
	if !s.log.Enabled(s.ctx, level) {
		return nil, false
	}
	s.log.Log(s.ctx, level, "broker: connection refused at accept", "listener", st.name, "remote", nc.RemoteAddr().String(),
		"reason", d.Reason, "refused_total", n)
	return nil, false
}

// throttle charges a packet of n bytes to the client's rate limits on the
// reader. Over the rate, the reader writes what it queued and then stops
// reading for the wait the Observer asks (back-pressure: the client's
// socket buffers fill and its sends block); a client that stays over its
// rate is disconnected with 0x96. It returns false when the connection is
// ending.
//
// The pause is the server's, not the client's: the keep-alive deadline
// starts again after it, as after a wait for a held publisher's turn, so
// that a paused client whose next packet was cut in two by the pause is
// not taken for a dead one [MQTT-3.1.2-24].
//
// It also reports the messages dropped for the client since the last
// packet (LimitQueueFull), on this, the client's reader.
func (c *conn) throttle(n int) bool {
	c.bodySize = 0
	if c.limitDrops.Load() != 0 {
		if k := c.limitDrops.Swap(0); k > 0 && !c.limited(LimitQueueFull, strconv.FormatInt(k, 10)+" messages for the client dropped: its queue was full") {
			return false
		}
	}
	wait, d := c.obs.Read(n)
	if !d.Allow {
		c.log.Warn("broker: client over its rate limit; disconnecting", "reason", d.Reason)
		c.kill(packet.MessageRateTooHigh, d.Reason)
		return false
	}
	if wait <= 0 {
		return true
	}
	c.kickWriters()
	c.outMu.Lock()
	c.startWriterLocked() // what handling queued goes out during the pause
	c.outMu.Unlock()
	if !c.srv.wait(wait, c.killed, c.srv.ctx.Done()) {
		return false
	}
	c.armKeepAlive()
	return true
}

// ping reports a PINGREQ to the Observer with the time since the client
// last sent anything else, measured from the first PINGREQ after its last
// other packet (or from CONNECT). It returns false when the connection is
// ending.
func (c *conn) ping() bool {
	now := c.srv.cfg.Now()
	if c.active {
		c.active = false
		c.quietSince = now
	}
	return c.obsVerdict(c.obs.Ping(&c.client, now.Sub(c.quietSince)))
}
