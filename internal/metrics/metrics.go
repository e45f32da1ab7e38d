// Package metrics exposes Moat's counters to Prometheus. Nothing is
// counted here: on every scrape the Collector asks its Source for a
// Snapshot of the counters the subsystems keep anyway (per-connection
// shards and atomics on their own paths) and turns it into metrics, so the
// publish path pays nothing for metrics.
//
// The package imports nothing of the module; internal/cli adapts the
// broker, the guard, the store and the TLS listeners to Source.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Snapshot is the state of the subsystems at one scrape. Counters only
// grow while the process runs. A field a subsystem does not provide is
// left at its zero value, and maps and slices left nil produce no series.
type Snapshot struct {
	StartTime time.Time

	Connections         int64
	ConnectionsMaximum  int64
	ConnectionsAccepted int64
	// ConnectionsRefused counts refused connections by reason
	// ("connect_refused", "over_cap", "pre_auth_too_large", "conn_rate",
	// ...).
	ConnectionsRefused map[string]int64
	ProtocolErrors     int64
	RevokedDisconnects int64
	Panics             int64

	// Messages and their payload bytes by QoS (index 0, 1, 2); the bytes
	// of every packet in and out.
	MessagesReceived [3]int64
	MessagesSent     [3]int64
	PayloadReceived  [3]int64
	PayloadSent      [3]int64
	BytesReceived    int64
	BytesSent        int64
	PacketsReceived  int64
	PacketsSent      int64
	SocketsAccepted  int64
	Queued           int64
	// Dropped counts undelivered messages by reason.
	Dropped map[string]int64
	// Overload control: publishers held back now, the times one was held
	// back, the times a subscriber was found too slow to hold publishers
	// back.
	PublishersHeld  int64
	Pushbacks       int64
	SlowSubscribers int64
	HoldCycles      int64

	Sessions             int64
	SessionsExpired      int64
	Subscriptions        int64
	SharedSubscriptions  int64
	SubscriptionsRefused int64
	SubscriptionsRevoked int64
	Retained             int64
	RetainedBytes        int64
	RetainedRefused      int64

	// Authentications counts the results of authentication at CONNECT.
	Authentications []Count
	// AuthzDecisions counts the access policy's decisions by action and
	// result; AuthzDenials the refused requests by request and reason.
	AuthzDecisions []Count
	AuthzDenials   []Count

	// TLSHandshakes counts successful handshakes by version and group;
	// TLSHandshakeFailures failed ones by reason.
	TLSHandshakes        []TLSCount
	TLSHandshakeFailures map[string]int64
	// TLSConnections counts the live TLS connections by version and key
	// exchange group.
	TLSConnections []TLSCount
	// ServerCertNotAfter is when the broker's certificate expires;
	// ClientCertNotAfter when the soonest connected client's does. Zero:
	// unknown, no series.
	ServerCertNotAfter time.Time
	ClientCertNotAfter time.Time
	// CRLs are the CRLs in use with their thisUpdate, by file.
	CRLs map[string]time.Time
	// OCSPResponses counts OCSP responder answers by status;
	// OCSPStaples describes the staple of each served certificate that
	// names a responder.
	OCSPResponses map[string]uint64
	OCSPStaples   []Staple

	// Store; StoreEnabled false: no durable store (no store series).
	StoreEnabled        bool
	StoreCommitLatency  Histogram
	StoreTransactions   int64
	StoreFsyncs         int64
	StoreFailures       int64
	StoreQuarantined    int64
	PersistenceFailures int64

	// Guard; Bans < 0 means the guard is not running (no series).
	Bans            int64
	Detections      map[string]int64 // by detector
	Throttled       int64
	ThrottleKicks   int64
	LimitHits       map[string]int64 // by limit ("packet_size", …, "rate")
	FIPS            bool
	ReadBudgetInUse int64
	ReadBudgetWaits int64
	ReadBudgetPeak  int64

	// Cluster is this node's cluster state (cluster.go); nil without one.
	Cluster *Cluster
}

// Count is a count with two label values, whose names the metric gives.
type Count struct {
	A, B string
	N    int64
}

// TLSCount is a number of TLS handshakes or connections with one version
// and key exchange group.
type TLSCount struct {
	Version string
	Group   string
	Count   int64
}

// Staple is the OCSP staple of one served certificate.
type Staple struct {
	Listener, CertFile string
	Good               bool
	NextUpdate         time.Time // zero: none
}

// Histogram is a distribution: Counts[i] observations at most Bounds[i]
// (and above Bounds[i-1]), Counts[len(Bounds)] above every bound; Sum of
// the observed values.
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Sum    float64
}

// Source provides snapshots. Snapshot is called on every scrape, from
// the scrape's goroutine; it must be safe for concurrent use.
type Source interface {
	Snapshot() Snapshot
}

// SourceFunc adapts a function to Source.
type SourceFunc func() Snapshot

// Snapshot calls f.
func (f SourceFunc) Snapshot() Snapshot { return f() }

// Handler returns the /metrics handler: Moat's metrics from src, the Go
// runtime's and the process's. Each call makes its own registry.
func Handler(src Source) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&Collector{src: src, now: time.Now})
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, MaxRequestsInFlight: 4})
}

// NewCollector returns a Collector reading src; now is time.Now when nil.
func NewCollector(src Source, now func() time.Time) *Collector {
	if now == nil {
		now = time.Now
	}
	return &Collector{src: src, now: now}
}

// Collector is a prometheus.Collector over a Source.
type Collector struct {
	src Source
	now func() time.Time
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("moat_"+name, help, labels, nil)
}

// Every metric; docs/operations.md has the same table.
var (
	dStart          = desc("start_time_seconds", "Start time of the broker since the Unix epoch, in seconds.")
	dConns          = desc("connections", "Live client connections (CONNECT accepted).")
	dConnsMax       = desc("connections_maximum", "Most live client connections at once since start.")
	dConnsAccepted  = desc("connections_accepted_total", "Client connections accepted since start.")
	dConnsRefused   = desc("connections_refused_total", "Client connections refused, by reason.", "reason")
	dProtoErr       = desc("protocol_errors_total", "Connections closed for an MQTT protocol error.")
	dRevoked        = desc("revoked_disconnects_total", "Connected clients cut off because their certificate was revoked or expired.")
	dPanics         = desc("panics_total", "Connection handlers that panicked (recovered; the connection was closed).")
	dMsgIn          = desc("messages_received_total", "PUBLISH messages received from clients, by QoS.", "qos")
	dMsgOut         = desc("messages_sent_total", "PUBLISH messages sent to clients, by QoS.", "qos")
	dPayloadIn      = desc("payload_received_bytes_total", "Payload bytes of the PUBLISH messages received, by QoS.", "qos")
	dPayloadOut     = desc("payload_sent_bytes_total", "Payload bytes of the PUBLISH messages sent, by QoS.", "qos")
	dBytesIn        = desc("received_bytes_total", "Bytes of MQTT packets received from clients.")
	dBytesOut       = desc("sent_bytes_total", "Bytes of MQTT packets sent to clients.")
	dPacketsIn      = desc("packets_received_total", "MQTT packets received from clients.")
	dPacketsOut     = desc("packets_sent_total", "MQTT packets sent to clients.")
	dSockets        = desc("sockets_accepted_total", "Sockets accepted on the MQTT listeners, before any check.")
	dQueued         = desc("messages_queued", "Messages waiting in session queues.")
	dDropped        = desc("messages_dropped_total", "Messages not delivered, by reason.", "reason")
	dHeld           = desc("publishers_held", "Publishers held back now because a subscriber's backlog is over its mark.")
	dPushbacks      = desc("pushbacks_total", "Times a publisher was held back for a subscriber's backlog.")
	dSlowSubs       = desc("slow_subscribers_total", "Times a subscriber was found too slow to hold its publishers back.")
	dHoldCycles     = desc("hold_cycles_total", "Times publishers held for a full queue under the block policy were let go because they waited for each other.")
	dSessions       = desc("sessions", "Sessions, connected and offline.")
	dSessExpired    = desc("sessions_expired_total", "Offline sessions ended by their expiry.")
	dSubs           = desc("subscriptions", "Subscriptions of all sessions.")
	dSharedSubs     = desc("shared_subscriptions", "Members of shared subscriptions, among the subscriptions.")
	dSubsRefused    = desc("subscriptions_refused_total", "Subscriptions refused by a subscription limit.")
	dSubsRevoked    = desc("subscriptions_revoked_total", "Subscriptions removed because a changed access policy or a lost authentication no longer allows them.")
	dRetained       = desc("retained_messages", "Retained messages stored.")
	dRetainedBytes  = desc("retained_bytes", "Bytes charged for retained messages stored by clients.")
	dRetainedRef    = desc("retained_refused_total", "Retained messages refused by a retained limit.")
	dAuthn          = desc("authentications_total", "Authentications at CONNECT, by result and reason.", "result", "reason")
	dAuthzDecisions = desc("authorization_decisions_total", "Decisions of the access policy (requests the per-connection cache did not answer), by action and result.", "action", "result")
	dAuthzDenials   = desc("authorization_denials_total", "Requests refused by the access policy, by request and reason.", "request", "reason")
	dTLSHandshakes  = desc("tls_handshakes_total", "Successful TLS handshakes, by TLS version and key exchange group.", "version", "group")
	dTLSFail        = desc("tls_handshake_failures_total", "Failed TLS handshakes, by reason.", "reason")
	dTLSConns       = desc("tls_connections", "Live TLS client connections, by TLS version and key exchange group.", "version", "group")
	dServerCert     = desc("server_certificate_expiry_timestamp_seconds", "Expiry of the broker's certificate since the Unix epoch, in seconds.")
	dClientCert     = desc("client_certificate_expiry_soonest_timestamp_seconds", "Soonest expiry of a connected client's certificate since the Unix epoch, in seconds.")
	dCRLAge         = desc("crl_age_seconds", "Seconds since the thisUpdate of each CRL in use.", "file")
	dOCSPResponses  = desc("ocsp_responses_total", "Answers of OCSP responders (client certificate checks and staple fetches), by status.", "status")
	dOCSPStaple     = desc("ocsp_staple_good", "1 when a good OCSP response is stapled to the served certificate, 0 when none is.", "listener", "certificate")
	dOCSPStapleNext = desc("ocsp_staple_next_update_timestamp_seconds", "nextUpdate of the stapled OCSP response since the Unix epoch, in seconds.", "listener", "certificate")
	dStoreLatency   = desc("store_commit_duration_seconds", "Time to write and make durable one store transaction (every commit request waiting), in seconds.")
	dStoreTx        = desc("store_transactions_total", "Store transactions committed.")
	dStoreFsyncs    = desc("store_fsyncs_total", "fsyncs of the store file.")
	dStoreFailures  = desc("store_commit_failures_total", "Store commit requests that failed.")
	dStoreQuar      = desc("store_quarantined", "1 when the store was found corrupt at start and moved aside (the broker started empty).")
	dPersistFail    = desc("persistence_failures_total", "Broker state changes the store could not record.")
	dBans           = desc("bans", "Bans in force.")
	dDetections     = desc("detections_total", "Abnormal behaviour detections, by detector.", "detector")
	dThrottled      = desc("throttled_total", "Reads paused because a client went over its message or byte rate.")
	dThrottleKicks  = desc("throttle_disconnects_total", "Clients disconnected for staying over their rate limit.")
	dLimitHits      = desc("limit_hits_total", "Limits clients ran into (counted by the limit_abuse detector), by limit.", "limit")
	dReadBudget     = desc("read_budget_bytes", "Bytes of packets being read, reserved from the read budget.")
	dReadBudgetMax  = desc("read_budget_peak_bytes", "Most bytes reserved from the read budget at once.")
	dReadBudgetWait = desc("read_budget_waits_total", "Packet reads that waited for the read budget.")
	dFIPS           = desc("fips_mode", "1 when the process runs in FIPS 140-3 mode.")
	allDescs        = []*prometheus.Desc{dStart, dConns, dConnsMax, dConnsAccepted, dConnsRefused, dProtoErr, dRevoked,
		dPanics, dMsgIn, dMsgOut, dPayloadIn, dPayloadOut, dBytesIn, dBytesOut, dPacketsIn, dPacketsOut, dSockets, dQueued, dDropped, dHeld, dPushbacks, dSlowSubs, dHoldCycles, dSessions, dSessExpired, dSubs, dSharedSubs,
		dSubsRefused, dSubsRevoked, dRetained, dRetainedBytes, dRetainedRef, dAuthn, dAuthzDecisions, dAuthzDenials,
		dTLSHandshakes, dTLSFail, dTLSConns, dServerCert, dClientCert, dCRLAge, dOCSPResponses, dOCSPStaple, dOCSPStapleNext,
		dStoreLatency, dStoreTx, dStoreFsyncs, dStoreFailures, dStoreQuar, dPersistFail, dBans, dDetections, dThrottled,
		dThrottleKicks, dLimitHits, dReadBudget, dReadBudgetMax, dReadBudgetWait, dFIPS}
	_ prometheus.Collector = (*Collector)(nil)
)

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect takes a snapshot and sends its metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	n := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	bool01 := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	if !s.StartTime.IsZero() {
		g(dStart, float64(s.StartTime.UnixNano())/1e9)
	}
	g(dConns, float64(s.Connections))
	g(dConnsMax, float64(s.ConnectionsMaximum))
	n(dConnsAccepted, s.ConnectionsAccepted)
	for r, v := range s.ConnectionsRefused {
		n(dConnsRefused, v, r)
	}
	n(dProtoErr, s.ProtocolErrors)
	n(dRevoked, s.RevokedDisconnects)
	n(dPanics, s.Panics)
	for q := range 3 {
		qos := strconv.Itoa(q)
		n(dMsgIn, s.MessagesReceived[q], qos)
		n(dMsgOut, s.MessagesSent[q], qos)
		n(dPayloadIn, s.PayloadReceived[q], qos)
		n(dPayloadOut, s.PayloadSent[q], qos)
	}
	n(dBytesIn, s.BytesReceived)
	n(dBytesOut, s.BytesSent)
	n(dPacketsIn, s.PacketsReceived)
	n(dPacketsOut, s.PacketsSent)
	n(dSockets, s.SocketsAccepted)
	g(dQueued, float64(s.Queued))
	for r, v := range s.Dropped {
		n(dDropped, v, r)
	}
	g(dHeld, float64(s.PublishersHeld))
	n(dPushbacks, s.Pushbacks)
	n(dSlowSubs, s.SlowSubscribers)
	n(dHoldCycles, s.HoldCycles)
	g(dSessions, float64(s.Sessions))
	n(dSessExpired, s.SessionsExpired)
	g(dSubs, float64(s.Subscriptions))
	g(dSharedSubs, float64(s.SharedSubscriptions))
	n(dSubsRefused, s.SubscriptionsRefused)
	n(dSubsRevoked, s.SubscriptionsRevoked)
	g(dRetained, float64(s.Retained))
	g(dRetainedBytes, float64(s.RetainedBytes))
	n(dRetainedRef, s.RetainedRefused)
	for _, a := range s.Authentications {
		n(dAuthn, a.N, a.A, a.B)
	}
	for _, a := range s.AuthzDecisions {
		n(dAuthzDecisions, a.N, a.A, a.B)
	}
	for _, a := range s.AuthzDenials {
		n(dAuthzDenials, a.N, a.A, a.B)
	}
	for _, t := range s.TLSHandshakes {
		n(dTLSHandshakes, t.Count, t.Version, t.Group)
	}
	for r, v := range s.TLSHandshakeFailures {
		n(dTLSFail, v, r)
	}
	for _, t := range s.TLSConnections {
		g(dTLSConns, float64(t.Count), t.Version, t.Group)
	}
	if !s.ServerCertNotAfter.IsZero() {
		g(dServerCert, float64(s.ServerCertNotAfter.Unix()))
	}
	if !s.ClientCertNotAfter.IsZero() {
		g(dClientCert, float64(s.ClientCertNotAfter.Unix()))
	}
	now := c.now()
	for f, t := range s.CRLs {
		g(dCRLAge, now.Sub(t).Seconds(), f)
	}
	for st, v := range s.OCSPResponses {
		n(dOCSPResponses, int64(v), st)
	}
	for _, st := range s.OCSPStaples {
		g(dOCSPStaple, bool01(st.Good), st.Listener, st.CertFile)
		if st.Good && !st.NextUpdate.IsZero() {
			g(dOCSPStapleNext, float64(st.NextUpdate.Unix()), st.Listener, st.CertFile)
		}
	}
	if s.StoreEnabled {
		h := s.StoreCommitLatency
		buckets := make(map[float64]uint64, len(h.Bounds))
		var cum uint64
		for i, b := range h.Bounds {
			cum += h.Counts[i]
			buckets[b] = cum
		}
		if len(h.Counts) > len(h.Bounds) {
			cum += h.Counts[len(h.Bounds)]
		}
		ch <- prometheus.MustNewConstHistogram(dStoreLatency, cum, h.Sum, buckets)
		n(dStoreTx, s.StoreTransactions)
		n(dStoreFsyncs, s.StoreFsyncs)
		n(dStoreFailures, s.StoreFailures)
		n(dPersistFail, s.PersistenceFailures)
	}
	g(dStoreQuar, float64(s.StoreQuarantined))
	if s.Bans >= 0 {
		g(dBans, float64(s.Bans))
		for d, v := range s.Detections {
			n(dDetections, v, d)
		}
		n(dThrottled, s.Throttled)
		n(dThrottleKicks, s.ThrottleKicks)
		for l, v := range s.LimitHits {
			n(dLimitHits, v, l)
		}
	}
	g(dReadBudget, float64(s.ReadBudgetInUse))
	g(dReadBudgetMax, float64(s.ReadBudgetPeak))
	n(dReadBudgetWait, s.ReadBudgetWaits)
	g(dFIPS, bool01(s.FIPS))
	collectCluster(ch, s.Cluster)
}
