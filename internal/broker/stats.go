package broker

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// stats are the server's counters. The counters of the publish path
// (packets, messages and bytes in and out) live in shards, one per group
// of connections, so that connections on different cores never write the
// same cache line; Stats sums the shards. The rest are single atomics,
// updated at connection set-up and on rare events (drops, refusals).
type stats struct {
	clientsConnected   atomic.Int64
	clientsMax         atomic.Int64
	clientsTotal       atomic.Int64
	connectRefused     atomic.Int64
	connRejected       atomic.Int64 // over a connection cap
	acceptRefused      atomic.Int64 // refused by the Observer at accept
	tlsFailures        atomic.Int64
	protocolErrors     atomic.Int64
	panics             atomic.Int64
	revokedDisconnects atomic.Int64

	authzDenied         atomic.Int64
	subsRevoked         atomic.Int64
	droppedUnauthorized atomic.Int64

	queued           atomic.Int64 // messages waiting in session queues
	droppedQueueFull atomic.Int64 // QoS 1/2 and queued QoS 0 lost to a full queue
	droppedQoS0      atomic.Int64 // QoS 0 for offline sessions (not queued by design)
	droppedSlow      atomic.Int64 // QoS 0 to a client whose backlog is full
	droppedOversize  atomic.Int64 // over the client's Maximum Packet Size
	expired          atomic.Int64 // expired before delivery

	pushbacks       atomic.Int64 // times a publisher was held back
	held            atomic.Int64 // publishers held back now
	slowSubscribers atomic.Int64 // times a subscriber was found slow
	holdCycles      atomic.Int64 // cycles of publishers held for full queues, broken

	subsRefused   atomic.Int64 // subscriptions over MaxSubscriptions or MaxSubscriptionBytes
	preAuthTooBig atomic.Int64 // CONNECTs over PreAuthMaxPacketSize
	persistFailed atomic.Int64 // Persistence commits that failed

	droppedSessionEnd atomic.Int64 // queued and in-flight messages of sessions that ended
	sessionsExpired   atomic.Int64 // offline sessions ended by their expiry

	auth        [numAuthOutcomes]atomic.Int64
	authzAsked  [numActions][2]atomic.Int64 // Authorizer decisions by action, [0] denied, [1] allowed
	authzDenyBy [numDenyKinds][numDenyReasons]atomic.Int64

	tlsMu       sync.Mutex
	tlsOK       map[tlsKey]int64
	tlsFailedBy map[string]int64

	sysMu sync.Mutex // serializes publishSys
	sys   sysLoads

	nextShard atomic.Uint32
	shards    [numShards]counterShard
}

// numShards is the number of counter shards. Connections take shards in
// turn, so up to numShards busy connections count without sharing a cache
// line, and a scrape sums numShards shards, not every connection.
const numShards = 64

// counterShard holds the publish path's counters of the connections
// assigned to it. The inbound half is written by their readers, the
// outbound half by their writers; each half's 64 bytes of counters are
// followed by 64 bytes of padding, so no two halves share a cache line
// whatever the array's alignment.
type counterShard struct {
	packetsIn  atomic.Int64
	wireIn     atomic.Int64 // bytes of packets read
	msgsIn     [3]atomic.Int64
	payloadIn  [3]atomic.Int64
	_          [64]byte
	wireOut    atomic.Int64 // bytes written
	packetsOut atomic.Int64
	msgsOut    [3]atomic.Int64
	payloadOut [3]atomic.Int64
	_          [64]byte
}

// shard assigns a new connection its counter shard. It is called once
// per accepted socket, so nextShard also counts the sockets.
func (st *stats) shard() *counterShard {
	return &st.shards[st.nextShard.Add(1)%numShards]
}

// packetIn counts a packet of remaining length rl read from the client.
func (sh *counterShard) packetIn(rl int) {
	sh.packetsIn.Add(1)
	sh.wireIn.Add(int64(wireSize(rl)))
}

// publishIn counts a PUBLISH received.
func (sh *counterShard) publishIn(qos byte, payload int) {
	sh.msgsIn[qos].Add(1)
	sh.payloadIn[qos].Add(int64(payload))
}

// wireSize is the size of a packet of remaining length rl: the first
// byte, the remaining length's variable byte integer and the body.
func wireSize(rl int) int {
	n := 2
	for v := rl >> 7; v > 0; v >>= 7 {
		n++
	}
	return n + rl
}

// authOutcome is a result of authentication at CONNECT.
type authOutcome uint8

const (
	authAnonymous        authOutcome = iota // admitted by the anonymous policy
	authAccepted                            // an Authenticator accepted the credentials
	authEnhanced                            // MQTT 5 enhanced authentication succeeded
	authBadCredentials                      // refused as a bad user name or password (0x86)
	authNotAuthorized                       // refused by an Authenticator for another reason
	authAnonymousRefused                    // no credentials and anonymous access is off
	authBanned                              // refused by the Observer (a ban)
	authEnhancedFailed                      // the enhanced authentication exchange failed
	numAuthOutcomes
)

var authOutcomeNames = [numAuthOutcomes]struct {
	ok     bool
	reason string
}{
	{true, "anonymous"}, {true, "credentials"}, {true, "enhanced"},
	{false, "bad_credentials"}, {false, "not_authorized"}, {false, "anonymous_refused"},
	{false, "banned"}, {false, "enhanced_failed"},
}

func (st *stats) countAuth(o authOutcome) { st.auth[o].Add(1) }

// countAuthRefusal counts an Authenticator's refusal with code.
func (st *stats) countAuthRefusal(code packet.ReasonCode) {
	if code == packet.BadUsernameOrPassword {
		st.countAuth(authBadCredentials)
	} else {
		st.countAuth(authNotAuthorized)
	}
}

// numActions sizes arrays indexed by Action (1 to 3).
const numActions = int(ActionReceive) + 1

// countedAuthorizer counts the decisions of the Authorizer it wraps:
// the requests the per-connection cache did not answer.
type countedAuthorizer struct {
	Authorizer
	st *stats
}

func (a countedAuthorizer) Authorize(req *AuthzRequest) Decision {
	d := a.Authorizer.Authorize(req)
	a.st.countDecision(req.Action, d)
	return d
}

// countDecision counts one decision of the Authorizer (a uniform one
// counts once per connection, action, policy generation and identity).
func (st *stats) countDecision(a Action, d Decision) {
	if int(a) < numActions {
		allow := 0
		if d.Allow {
			allow = 1
		}
		st.authzAsked[a][allow].Add(1)
	}
}

// Kinds and reasons of authorization denials (Stats.AuthzDenials).
const (
	denyPublish = iota
	denyWill
	denySubscription
	denyRetained
	denyDelivery
	numDenyKinds
)

const (
	denyDefault = iota // no rule allowed it: denied by default
	denyRule           // a rule denied it
	numDenyReasons
)

var (
	denyKindNames   = [numDenyKinds]string{"publish", "will", "subscribe", "retained", "delivery"}
	denyReasonNames = [numDenyReasons]string{"default", "rule"}
)

// countDenial counts a denied request; what is denied's description.
func (st *stats) countDenial(what string, d Decision) {
	k := denyDelivery
	switch what {
	case "publish":
		k = denyPublish
	case "will":
		k = denyWill
	case "subscription":
		k = denySubscription
	case "retained message":
		k = denyRetained
	}
	r := denyRule
	if d.Rule == "" || d.Rule == "default" {
		r = denyDefault
	}
	st.authzDenyBy[k][r].Add(1)
}

// tlsKey is a TLS version and key exchange group.
type tlsKey struct {
	version uint16
	group   tls.CurveID
}

// tlsHandshake counts the outcome of a server TLS handshake on nc.
// Connection set-up is not the publish path: a lock is fine here.
func (st *stats) tlsHandshake(nc net.Conn, err error) {
	st.tlsMu.Lock()
	defer st.tlsMu.Unlock()
	if err != nil {
		st.tlsFailures.Add(1)
		if st.tlsFailedBy == nil {
			st.tlsFailedBy = map[string]int64{}
		}
		st.tlsFailedBy[tlsFailureReason(err)]++
		return
	}
	k := tlsKey{}
	if cs, ok := nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		s := cs.ConnectionState()
		k = tlsKey{s.Version, s.CurveID}
	}
	if st.tlsOK == nil {
		st.tlsOK = map[tlsKey]int64{}
	}
	st.tlsOK[k]++
}

// TLSHandshakeFailed counts a TLS handshake that failed before its
// connection could reach Serve: a secure WebSocket listener's, which the
// listener's HTTP server makes (listener.Config.OnTLSError). It is
// counted by reason with the server's own handshakes
// (Stats.TLSHandshakeFailures) and logged as they are. Safe for
// concurrent use.
func (s *Server) TLSHandshakeFailed(listener string, remote net.Addr, err error) {
	if err == nil {
		return
	}
	s.stats.tlsHandshake(nil, err)
	var addr string
	if remote != nil {
		addr = remote.String()
	}
	s.log.Info("broker: TLS handshake failed", "listener", listener, "remote", addr, "err", err)
}

// hasTLSState reports whether nc carries a TLS connection state (secure
// WebSocket).
func hasTLSState(nc net.Conn) bool {
	_, ok := nc.(interface{ ConnectionState() tls.ConnectionState })
	return ok
}

// lostWithSession counts the messages an ending session loses: those
// queued or in flight, except shared subscriptions' messages (handed to
// another member) and QoS 2 messages already received (PUBREL stage).
func lostWithSession(lists ...[]*delivery) int64 {
	var n int64
	for _, list := range lists {
		for _, d := range list {
			if d.share == nil && !d.released {
				n++
			}
		}
	}
	return n
}

// tlsFailureReason sorts a failed handshake into a few reasons, a bounded
// set a metric can carry.
func tlsFailureReason(err error) string {
	var hf interface{ HandshakeFailure() string }
	var rh tls.RecordHeaderError
	var ve *tls.CertificateVerificationError
	var oe *net.OpError
	switch {
	case errors.As(err, &hf):
		// The TLS policy's own verdict (tlsconf.VerifyError: revoked,
		// expired, untrusted, ...).
		return hf.HandshakeFailure()
	case errors.As(err, &oe) && oe.Op == "remote error":
		// The client sent an alert: typically it does not trust the
		// server's certificate.
		return "client_alert"
	case errors.As(err, &rh):
		return "not_tls"
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return "certificate_missing"
	case errors.As(err, &ve), strings.Contains(err.Error(), "certificate"):
		return "certificate"
	case isTimeout(err), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "closed"
	}
	// No version, cipher suite or group in common, or another protocol
	// error of the client's.
	return "negotiation"
}

// traffic is the sum of the shards.
type traffic struct {
	packetsIn, packetsOut int64
	wireIn, wireOut       int64
	msgsIn, msgsOut       [3]int64
	payloadIn, payloadOut [3]int64
}

func (st *stats) traffic() traffic {
	var t traffic
	for i := range st.shards {
		sh := &st.shards[i]
		t.packetsIn += sh.packetsIn.Load()
		t.packetsOut += sh.packetsOut.Load()
		t.wireIn += sh.wireIn.Load()
		t.wireOut += sh.wireOut.Load()
		for q := range 3 {
			t.msgsIn[q] += sh.msgsIn[q].Load()
			t.msgsOut[q] += sh.msgsOut[q].Load()
			t.payloadIn[q] += sh.payloadIn[q].Load()
			t.payloadOut[q] += sh.payloadOut[q].Load()
		}
	}
	return t
}

func (st *stats) connected(s *Server) {
	n := st.clientsConnected.Add(1)
	st.clientsTotal.Add(1)
	for {
		m := st.clientsMax.Load()
		if n <= m || st.clientsMax.CompareAndSwap(m, n) {
			break
		}
	}
}

func (st *stats) disconnected() { st.clientsConnected.Add(-1) }

// Stats is a snapshot of the server's counters.
type Stats struct {
	Uptime             time.Duration
	ClientsConnected   int64
	ClientsMaximum     int64
	ClientsTotal       int64 // connections accepted since start
	Sessions           int64 // live and offline sessions
	ConnectRefused     int64
	ConnectionsOverCap int64
	AcceptRefused      int64 // sockets the Observer refused at accept (rate, ban)
	TLSFailures        int64
	ProtocolErrors     int64
	Panics             int64
	RevokedDisconnects int64
	// MessagesReceived and MessagesSent count PUBLISH packets from and
	// to clients; BytesReceived and BytesSent every byte of every packet
	// read and written after the TLS layer (MQTT bytes, as Mosquitto's
	// $SYS/broker/bytes counts them). PacketsReceived counts the packets
	// read, CONNECT included.
	MessagesReceived int64
	MessagesSent     int64
	BytesReceived    int64
	BytesSent        int64
	PacketsReceived  int64
	PacketsSent      int64
	// ByQoS split the PUBLISH messages and their payload bytes by QoS
	// (index 0, 1, 2).
	MessagesReceivedByQoS [3]int64
	MessagesSentByQoS     [3]int64
	PayloadReceivedByQoS  [3]int64
	PayloadSentByQoS      [3]int64

	Subscriptions      int64
	Retained           int64
	Queued             int64
	DroppedQueueFull   int64
	DroppedQoS0Offline int64
	DroppedSlowClient  int64
	DroppedOversize    int64
	Expired            int64

	// Overload control (docs/design/broker.md): Pushbacks counts the
	// times a publisher was held back because a subscriber's backlog was
	// over its mark (or its queue full under QueueBlock), PublishersHeld
	// the publishers held back now, SlowSubscribers the times a subscriber
	// was found too slow to hold its publishers back any longer,
	// HoldCycles the times publishers held for a full queue under
	// QueueBlock were let go because they waited for each other (the
	// queue's further messages are counted in DroppedQueueFull).
	Pushbacks       int64
	PublishersHeld  int64
	SlowSubscribers int64
	HoldCycles      int64

	// RetainedBytes is what the retained messages stored from clients are
	// charged against MaxRetainedBytes; RetainedRefused counts retained
	// messages refused by a retained limit.
	RetainedBytes   int64
	RetainedRefused int64
	// SubscriptionsRefused counts subscriptions refused by
	// MaxSubscriptions or MaxSubscriptionBytes.
	SubscriptionsRefused int64
	// PreAuthTooLarge counts connections closed because their CONNECT
	// was larger than PreAuthMaxPacketSize.
	PreAuthTooLarge int64
	// ReadBudgetInUse and ReadBudgetPeak are the bytes of packet bodies
	// reserved from the ReadBudget now and at most so far;
	// ReadBudgetWaits counts reads that had to wait for it, and
	// ReadBudgetWaiting those waiting now.
	ReadBudgetInUse   int64
	ReadBudgetPeak    int64
	ReadBudgetWaits   int64
	ReadBudgetWaiting int64
	// AuthzDenied counts requests the Authorizer refused (publish,
	// subscribe, delivery); SubscriptionsRevoked and DroppedUnauthorized
	// count the subscriptions removed and the queued or in-flight messages
	// dropped by Reevaluate and at delivery because access was lost.
	AuthzDenied          int64
	SubscriptionsRevoked int64
	DroppedUnauthorized  int64
	// PersistFailures counts changes the Persistence could not store;
	// StoreQuarantines is Config.StoreQuarantines (stores moved aside as
	// corrupt at start).
	PersistFailures  int64
	StoreQuarantines int64

	// DroppedSessionEnd counts the queued and in-flight messages lost
	// with a session that ended (expired, or replaced by a clean start).
	DroppedSessionEnd int64
	// SessionsExpired counts offline sessions ended by their expiry;
	// SharedSubscriptions the members of shared subscriptions among
	// Subscriptions; SocketsAccepted every socket accepted, before any
	// check.
	SessionsExpired     int64
	SharedSubscriptions int64
	SocketsAccepted     int64
	// Authentications counts the results of authentication at CONNECT.
	Authentications []AuthCount
	// AuthzDecisions counts the Authorizer's decisions (requests its
	// per-connection cache did not answer); AuthzDenials every refused
	// request, by kind and reason.
	AuthzDecisions []AuthzCount
	AuthzDenials   []AuthzCount
	// TLSHandshakes counts the server TLS handshakes that succeeded, by
	// version and key exchange group; TLSHandshakeFailures those that
	// failed, by reason ("certificate_revoked", "client_alert",
	// "timeout", ...). Secure WebSocket connections, whose handshake the
	// HTTP server makes, count when their CONNECT arrives, and their
	// failures when the listener reports them (TLSHandshakeFailed).
	TLSHandshakes        []TLSCount
	TLSHandshakeFailures map[string]int64
}

// AuthCount is a number of authentications with one result: Success,
// and Reason ("anonymous", "credentials", "enhanced" for successes;
// "bad_credentials", "not_authorized", "anonymous_refused", "banned",
// "enhanced_failed" for refusals).
type AuthCount struct {
	Success bool
	Reason  string
	N       int64
}

// AuthzCount is a number of authorization results. In AuthzDecisions,
// Kind is the action ("publish", "subscribe", "receive") and Reason
// "allowed" or "denied"; in AuthzDenials, Kind is the request
// ("publish", "will", "subscribe", "retained", "delivery") and Reason
// "default" (no rule allowed it) or "rule" (a rule denied it).
type AuthzCount struct {
	Kind   string
	Reason string
	N      int64
}

// TLSCount is a number of TLS handshakes with one version ("TLS 1.3")
// and key exchange group ("X25519MLKEM768"; "none" when the handshake
// used none).
type TLSCount struct {
	Version string
	Group   string
	N       int64
}

// Stats returns a snapshot of the server's counters. Safe for concurrent
// use.
func (s *Server) Stats() Stats {
	st := &s.stats
	var sessions int64
	s.sessions.Range(func(_, _ any) bool { sessions++; return true })
	t := st.traffic()
	tlsCounts, tlsFailed := st.tlsSnapshot()
	return Stats{
		Uptime:             s.cfg.Now().Sub(s.start),
		ClientsConnected:   st.clientsConnected.Load(),
		ClientsMaximum:     st.clientsMax.Load(),
		ClientsTotal:       st.clientsTotal.Load(),
		Sessions:           sessions,
		ConnectRefused:     st.connectRefused.Load(),
		ConnectionsOverCap: st.connRejected.Load(),
		AcceptRefused:      st.acceptRefused.Load(),
		TLSFailures:        st.tlsFailures.Load(),
		ProtocolErrors:     st.protocolErrors.Load(),
		Panics:             st.panics.Load(),
		RevokedDisconnects: st.revokedDisconnects.Load(),
		MessagesReceived:   t.msgsIn[0] + t.msgsIn[1] + t.msgsIn[2],
		MessagesSent:       t.msgsOut[0] + t.msgsOut[1] + t.msgsOut[2],
		BytesReceived:      t.wireIn,
		BytesSent:          t.wireOut,
		PacketsReceived:    t.packetsIn,
		PacketsSent:        t.packetsOut,

		MessagesReceivedByQoS: t.msgsIn,
		MessagesSentByQoS:     t.msgsOut,
		PayloadReceivedByQoS:  t.payloadIn,
		PayloadSentByQoS:      t.payloadOut,

		Subscriptions:      int64(s.index.Count()),
		Retained:           int64(s.cfg.Retained.Len()),
		Queued:             st.queued.Load(),
		DroppedQueueFull:   st.droppedQueueFull.Load(),
		DroppedQoS0Offline: st.droppedQoS0.Load(),
		DroppedSlowClient:  st.droppedSlow.Load(),
		DroppedOversize:    st.droppedOversize.Load(),
		Expired:            st.expired.Load(),
		Pushbacks:          st.pushbacks.Load(),
		PublishersHeld:     st.held.Load(),
		SlowSubscribers:    st.slowSubscribers.Load(),
		HoldCycles:         st.holdCycles.Load(),

		RetainedBytes:        s.retained.usage().bytes,
		RetainedRefused:      s.retained.refused.Load(),
		SubscriptionsRefused: st.subsRefused.Load(),
		PreAuthTooLarge:      st.preAuthTooBig.Load(),
		ReadBudgetInUse:      s.readBudget.inUse.Load(),
		ReadBudgetPeak:       s.readBudget.maxUsed.Load(),
		ReadBudgetWaits:      s.readBudget.waits.Load(),
		ReadBudgetWaiting:    int64(s.readBudget.waiting()),
		AuthzDenied:          st.authzDenied.Load(),
		SubscriptionsRevoked: st.subsRevoked.Load(),
		DroppedUnauthorized:  st.droppedUnauthorized.Load(),
		PersistFailures:      st.persistFailed.Load(),
		StoreQuarantines:     int64(s.cfg.StoreQuarantines),
		DroppedSessionEnd:    st.droppedSessionEnd.Load(),
		SessionsExpired:      st.sessionsExpired.Load(),
		SharedSubscriptions:  int64(s.index.SharedCount()),
		SocketsAccepted:      int64(st.nextShard.Load()),

		Authentications:      st.authCounts(),
		AuthzDecisions:       st.authzDecisions(),
		AuthzDenials:         st.authzDenials(),
		TLSHandshakes:        tlsCounts,
		TLSHandshakeFailures: tlsFailed,
	}
}

func (st *stats) authCounts() []AuthCount {
	out := make([]AuthCount, 0, numAuthOutcomes)
	for o := range numAuthOutcomes {
		n := authOutcomeNames[o]
		out = append(out, AuthCount{Success: n.ok, Reason: n.reason, N: st.auth[o].Load()})
	}
	return out
}

func (st *stats) authzDecisions() []AuthzCount {
	var out []AuthzCount
	for a := ActionPublish; a <= ActionReceive; a++ {
		out = append(out, AuthzCount{Kind: a.String(), Reason: "denied", N: st.authzAsked[a][0].Load()},
			AuthzCount{Kind: a.String(), Reason: "allowed", N: st.authzAsked[a][1].Load()})
	}
	return out
}

func (st *stats) authzDenials() []AuthzCount {
	var out []AuthzCount
	for k := range numDenyKinds {
		for r := range numDenyReasons {
			out = append(out, AuthzCount{Kind: denyKindNames[k], Reason: denyReasonNames[r], N: st.authzDenyBy[k][r].Load()})
		}
	}
	return out
}

// tlsSnapshot copies the TLS handshake counters.
func (st *stats) tlsSnapshot() ([]TLSCount, map[string]int64) {
	st.tlsMu.Lock()
	defer st.tlsMu.Unlock()
	counts := make([]TLSCount, 0, len(st.tlsOK))
	for k, n := range st.tlsOK {
		g := "none"
		if k.group != 0 {
			g = k.group.String()
		}
		counts = append(counts, TLSCount{Version: tls.VersionName(k.version), Group: g, N: n})
	}
	slices.SortFunc(counts, func(a, b TLSCount) int {
		return cmp.Or(cmp.Compare(a.Version, b.Version), cmp.Compare(a.Group, b.Group))
	})
	return counts, maps.Clone(st.tlsFailedBy)
}
