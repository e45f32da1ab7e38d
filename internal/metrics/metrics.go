// Package metrics exposes Moat's counters to Prometheus. Nothing is
// counted here: on every scrape the Collector asks its Source for a
// Snapshot of the counters the subsystems keep anyway (atomics on their
// own paths) and turns it into metrics, so the publish path pays nothing
// for metrics.
//
// The package imports nothing of the module; internal/cli adapts the
// broker, the guard and the TLS listeners to Source.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Snapshot is the state of the subsystems at one scrape. Counters only
// grow while the process runs. A field a subsystem does not provide is
// left at its zero value, and maps left nil produce no series.
type Snapshot struct {
	StartTime time.Time

	Connections         int64
	ConnectionsMaximum  int64
	ConnectionsAccepted int64
	// ConnectionsRefused counts refused connections by reason
	// ("connect_refused", "over_cap", "pre_auth_too_large", "ban", ...).
	ConnectionsRefused map[string]int64
	TLSFailures        int64
	ProtocolErrors     int64
	RevokedDisconnects int64
	Panics             int64

	MessagesReceived int64
	MessagesSent     int64
	BytesReceived    int64
	BytesSent        int64
	Queued           int64
	// Dropped counts undelivered messages by reason.
	Dropped map[string]int64
	// Overload control: publishers held back now, the times one was held
	// back, the times a subscriber was found too slow to hold publishers
	// back.
	PublishersHeld  int64
	Pushbacks       int64
	SlowSubscribers int64

	Sessions             int64
	Subscriptions        int64
	SubscriptionsRefused int64
	Retained             int64
	RetainedBytes        int64
	RetainedRefused      int64

	// TLSConnections counts the live TLS connections by version and key
	// exchange group.
	TLSConnections []TLSConnections
	// ServerCertNotAfter is when the broker's certificate expires;
	// ClientCertNotAfter when the soonest connected client's does. Zero:
	// unknown, no series.
	ServerCertNotAfter time.Time
	ClientCertNotAfter time.Time
	// CRLs are the CRLs in use with their thisUpdate, by file.
	CRLs map[string]time.Time

	// Guard; Bans < 0 means the guard is not running (no series).
	Bans       int64
	Detections map[string]int64 // by detector
	FIPS       bool
}

// TLSConnections is a number of live connections with one version and
// key exchange group.
type TLSConnections struct {
	Version string
	Group   string
	Count   int
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
	dStart                              = desc("start_time_seconds", "Start time of the broker since the Unix epoch, in seconds.")
	dConns                              = desc("connections", "Live client connections (CONNECT accepted).")
	dConnsMax                           = desc("connections_maximum", "Most live client connections at once since start.")
	dConnsAccepted                      = desc("connections_accepted_total", "Client connections accepted since start.")
	dConnsRefused                       = desc("connections_refused_total", "Client connections refused, by reason.", "reason")
	dTLSFail                            = desc("tls_handshake_failures_total", "TLS handshakes that failed.")
	dProtoErr                           = desc("protocol_errors_total", "Connections closed for an MQTT protocol error.")
	dRevoked                            = desc("revoked_disconnects_total", "Connected clients cut off because their certificate was revoked or expired.")
	dPanics                             = desc("panics_total", "Connection handlers that panicked (recovered; the connection was closed).")
	dMsgIn                              = desc("messages_received_total", "PUBLISH messages received from clients.")
	dMsgOut                             = desc("messages_sent_total", "PUBLISH messages sent to clients.")
	dBytesIn                            = desc("received_bytes_total", "Bytes received from clients.")
	dBytesOut                           = desc("sent_bytes_total", "Bytes sent to clients.")
	dQueued                             = desc("messages_queued", "Messages waiting in session queues.")
	dDropped                            = desc("messages_dropped_total", "Messages not delivered, by reason.", "reason")
	dHeld                               = desc("publishers_held", "Publishers held back now because a subscriber's backlog is over its mark.")
	dPushbacks                          = desc("pushbacks_total", "Times a publisher was held back for a subscriber's backlog.")
	dSlowSubs                           = desc("slow_subscribers_total", "Times a subscriber was found too slow to hold its publishers back.")
	dSessions                           = desc("sessions", "Sessions, connected and offline.")
	dSubs                               = desc("subscriptions", "Subscriptions of all sessions.")
	dSubsRefused                        = desc("subscriptions_refused_total", "Subscriptions refused by a subscription limit.")
	dRetained                           = desc("retained_messages", "Retained messages stored.")
	dRetainedBytes                      = desc("retained_bytes", "Bytes charged for retained messages stored by clients.")
	dRetainedRef                        = desc("retained_refused_total", "Retained messages refused by a retained limit.")
	dTLSConns                           = desc("tls_connections", "Live TLS client connections, by TLS version and key exchange group.", "version", "group")
	dServerCert                         = desc("server_certificate_expiry_timestamp_seconds", "Expiry of the broker's certificate since the Unix epoch, in seconds.")
	dClientCert                         = desc("client_certificate_expiry_soonest_timestamp_seconds", "Soonest expiry of a connected client's certificate since the Unix epoch, in seconds.")
	dCRLAge                             = desc("crl_age_seconds", "Seconds since the thisUpdate of each CRL in use.", "file")
	dBans                               = desc("bans", "Bans in force.")
	dDetections                         = desc("detections_total", "Abnormal behaviour detections, by detector.", "detector")
	dFIPS                               = desc("fips_mode", "1 when the process runs in FIPS 140-3 mode.")
	allDescs                            = []*prometheus.Desc{dStart, dConns, dConnsMax, dConnsAccepted, dConnsRefused, dTLSFail, dProtoErr, dRevoked, dPanics, dMsgIn, dMsgOut, dBytesIn, dBytesOut, dQueued, dDropped, dHeld, dPushbacks, dSlowSubs, dSessions, dSubs, dSubsRefused, dRetained, dRetainedBytes, dRetainedRef, dTLSConns, dServerCert, dClientCert, dCRLAge, dBans, dDetections, dFIPS}
	_              prometheus.Collector = (*Collector)(nil)
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
	if !s.StartTime.IsZero() {
		g(dStart, float64(s.StartTime.UnixNano())/1e9)
	}
	g(dConns, float64(s.Connections))
	g(dConnsMax, float64(s.ConnectionsMaximum))
	n(dConnsAccepted, s.ConnectionsAccepted)
	for r, v := range s.ConnectionsRefused {
		n(dConnsRefused, v, r)
	}
	n(dTLSFail, s.TLSFailures)
	n(dProtoErr, s.ProtocolErrors)
	n(dRevoked, s.RevokedDisconnects)
	n(dPanics, s.Panics)
	n(dMsgIn, s.MessagesReceived)
	n(dMsgOut, s.MessagesSent)
	n(dBytesIn, s.BytesReceived)
	n(dBytesOut, s.BytesSent)
	g(dQueued, float64(s.Queued))
	for r, v := range s.Dropped {
		n(dDropped, v, r)
	}
	g(dHeld, float64(s.PublishersHeld))
	n(dPushbacks, s.Pushbacks)
	n(dSlowSubs, s.SlowSubscribers)
	g(dSessions, float64(s.Sessions))
	g(dSubs, float64(s.Subscriptions))
	n(dSubsRefused, s.SubscriptionsRefused)
	g(dRetained, float64(s.Retained))
	g(dRetainedBytes, float64(s.RetainedBytes))
	n(dRetainedRef, s.RetainedRefused)
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
	if s.Bans >= 0 {
		g(dBans, float64(s.Bans))
	}
	for d, v := range s.Detections {
		n(dDetections, v, d)
	}
	fips := 0.0
	if s.FIPS {
		fips = 1
	}
	g(dFIPS, fips)
}
