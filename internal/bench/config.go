package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/moatmq/moat/e2e"
)

// Scenario names a load shape.
type Scenario string

// Scenarios. Topic names are below Config.Topic (default "bench").
const (
	// Conn is a connection storm: Clients connect (at ConnRate), stay
	// connected for Duration, and disconnect. It measures handshakes,
	// success rate and the broker's memory per idle connection.
	Conn Scenario = "conn"
	// Pub runs Pubs publishers on TOPIC/pub/i and no subscribers.
	Pub Scenario = "pub"
	// Sub runs Subs subscribers on Filter (default TOPIC/#) and counts
	// what arrives from other publishers.
	Sub Scenario = "sub"
	// P2P pairs publisher i with subscriber i on TOPIC/p2p/i (Pubs must
	// equal Subs).
	P2P Scenario = "p2p"
	// FanIn runs Pubs publishers on TOPIC/in/i and Subs (usually 1)
	// subscribers on TOPIC/in/+.
	FanIn Scenario = "fanin"
	// FanOut runs Pubs (usually 1) publishers on TOPIC/out and Subs
	// subscribers on it: every subscriber receives every message.
	FanOut Scenario = "fanout"
	// Shared runs Pubs publishers on TOPIC/shared/i and Subs subscribers
	// in one shared subscription $share/bench/TOPIC/shared/+: each message
	// reaches one of them.
	Shared Scenario = "shared"
)

// Scenarios lists every scenario in display order.
var Scenarios = []Scenario{Conn, Pub, Sub, P2P, FanIn, FanOut, Shared}

// minPayload is the smallest payload: what PayloadSize describes.
const minPayload = 24

// Defaults applied by New for zero fields of Config.
const (
	DefaultAddr            = "127.0.0.1:1883"
	DefaultDuration        = 10 * time.Second
	DefaultDrain           = 5 * time.Second
	DefaultPayloadSize     = 64
	DefaultInflight        = 16
	DefaultConnConcurrency = 64
	DefaultTopic           = "bench"
	DefaultSampleInterval  = time.Second
	DefaultConnectTimeout  = 30 * time.Second
)

// Config describes one benchmark run. The zero value is not runnable on
// its own (a Scenario and client counts are needed); zero fields take the
// documented defaults. New does not modify the caller's Config.
type Config struct {
	// Label names the run in reports, e.g. "moat mtls". Default: the
	// scenario.
	Label string
	// Scenario is the load shape; required.
	Scenario Scenario
	// Addr is the broker's host:port. Default 127.0.0.1:1883.
	Addr string
	// SubAddr, when set, is where the subscribers connect instead of
	// Addr: another node of a cluster, so that every message crosses from
	// the publishers' node to the subscribers'. Default "": Addr.
	SubAddr string
	// Settle is a pause between the moment every client is connected and
	// the first publication: with SubAddr, the time the subscriptions
	// take to reach the publishers' node (NATS interest propagates
	// asynchronously; messages published before are not forwarded).
	// Default 0.
	Settle time.Duration
	// TLS, when non-nil, makes every client use TLS with a clone of this
	// config (set RootCAs, ServerName, CurvePreferences, ...). A shared
	// client certificate goes in its Certificates; per-client certificates
	// in ClientCerts. nil means plain TCP.
	TLS *tls.Config
	// ClientCerts, when non-empty, gives client i the certificate
	// ClientCerts[i % len]; subscribers take the first indexes, then
	// publishers. See Issuer.IssueClients.
	ClientCerts []tls.Certificate
	// Resume makes every TLS client connect once, disconnect, and connect
	// again resuming the TLS session; only the second round is measured
	// (time, broker CPU and memory).
	Resume bool
	// AfterWarmUp, when set with Resume, is called between the first
	// round (every session established) and the measured one: a caller
	// restarts the broker there, to measure the reconnect storm after a
	// restart. An error ends the run. It runs on Run's goroutine.
	AfterWarmUp func(ctx context.Context) error

	// Clients is the number of connections of the Conn scenario.
	Clients int
	// Pubs and Subs are the numbers of publishing and subscribing clients
	// of the other scenarios.
	Pubs, Subs int
	// ConnRate is the number of new connections started per second; 0
	// means as fast as ConnConcurrency allows.
	ConnRate float64
	// ConnConcurrency bounds connections being set up at once. Default 64.
	ConnConcurrency int
	// ConnectTimeout bounds one connection's TCP+TLS+CONNECT. Default 30 s.
	ConnectTimeout time.Duration

	// QoS of publications and subscriptions (0 or 1).
	QoS byte
	// PayloadSize is the plaintext payload length in bytes, at least 24:
	// a send timestamp, the run's identifier, the publisher's index and
	// its sequence number (big-endian, 8+8+4+4 bytes), then filler.
	// Default 64.
	PayloadSize int
	// MsgRate is each publisher's rate in messages per second; 0 means as
	// fast as possible (QoS 1: Inflight unacknowledged messages at most;
	// QoS 0: as fast as the connection takes them).
	MsgRate float64
	// Inflight is the QoS 1 window per publisher. Default 16.
	Inflight int
	// MaxBacklog, when positive, closes the loop: before sending a
	// message a publisher reserves its deliveries (subscribers per
	// message), and it waits while MaxBacklog deliveries are outstanding,
	// so the run measures the highest rate the broker sustains without
	// queueing up, instead of how it copes with overload. Keep it within
	// the broker's per-subscriber queue (max_queued_messages) to measure
	// without loss. When deliveries stop for 1 s (the broker dropped
	// messages) the outstanding reservations are forgiven. Only for p2p,
	// fanin, fanout and shared. Default 0: open loop.
	MaxBacklog int
	// Duration is how long publishers publish (Conn: how long the
	// connections are held). Default 10 s.
	Duration time.Duration
	// Drain is how long to wait after publishing for messages still in
	// flight. Default 5 s.
	Drain time.Duration
	// Topic is the prefix of topic names. Default "bench".
	Topic string
	// Filter is the Sub scenario's topic filter. Default TOPIC/#.
	Filter string
	// Persistent makes every client connect with clean session 0, so that
	// the broker keeps a persistent session for it (and, with a durable
	// store, writes its QoS 1 messages to disk before acknowledging them).
	// Client IDs are new in every run. Default false: clean sessions.
	Persistent bool
	// Encrypt, when set, makes publishers seal every payload in the seed's
	// raw AES-256-GCM format and subscribers open it.
	Encrypt *e2e.RawKey

	// SourceAddrs spreads connections over that many loopback source
	// addresses, 127.0.0.1 to 127.0.0.N, to get past the ephemeral port
	// range with tens of thousands of connections. Only for a 127.0.0.0/8
	// Addr. Default 1 (the system's choice).
	SourceAddrs int

	// BrokerPID, when non-zero, is the broker process whose CPU time and
	// RSS are sampled from /proc.
	BrokerPID int
	// SampleInterval is the period of the time series and progress line.
	// Default 1 s.
	SampleInterval time.Duration
	// Progress, when non-nil, receives a progress line every sample.
	Progress io.Writer
	// ProgressTTY rewrites the progress line in place ("\r") instead of
	// printing one line per sample.
	ProgressTTY bool
	// OnConnected, when set, is called once every client has connected
	// (or failed to), before the hold (conn) or the publishing starts; a
	// profiler can snapshot the broker there. It runs on Run's goroutine.
	OnConnected func()
	// Logger receives debug details of failed connections. nil discards.
	Logger *slog.Logger
}

// withDefaults returns a copy of cfg with defaults applied, or every
// problem found.
func (cfg Config) withDefaults() (Config, error) {
	c := cfg
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("bench: "+format, args...)) }
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	host, _, err := net.SplitHostPort(c.Addr)
	if err != nil {
		bad("address %q: %v", c.Addr, err)
	}
	if c.SubAddr != "" {
		if _, _, err := net.SplitHostPort(c.SubAddr); err != nil {
			bad("subscribers' address %q: %v", c.SubAddr, err)
		}
	}
	if c.Settle < 0 {
		bad("settle time must not be negative")
	}
	if c.Label == "" {
		c.Label = string(c.Scenario)
	}
	switch c.Scenario {
	case Conn:
		if c.Clients <= 0 {
			bad("scenario conn needs clients > 0")
		}
		c.Pubs, c.Subs = 0, 0
	case Pub:
		if c.Pubs <= 0 {
			bad("scenario pub needs publishers > 0")
		}
		c.Subs = 0
	case Sub:
		if c.Subs <= 0 {
			bad("scenario sub needs subscribers > 0")
		}
		c.Pubs = 0
	case P2P, FanIn, FanOut, Shared:
		if c.Pubs <= 0 || c.Subs <= 0 {
			bad("scenario %s needs publishers > 0 and subscribers > 0", c.Scenario)
		}
		if c.Scenario == P2P && c.Pubs != c.Subs {
			bad("scenario p2p needs as many publishers as subscribers (got %d and %d)", c.Pubs, c.Subs)
		}
	case "":
		bad("no scenario (want one of %v)", Scenarios)
	default:
		bad("unknown scenario %q (want one of %v)", c.Scenario, Scenarios)
	}
	if c.Clients < 0 || c.Pubs < 0 || c.Subs < 0 {
		bad("client counts must not be negative")
	}
	if c.QoS > 1 {
		bad("QoS %d not supported (0 or 1)", c.QoS)
	}
	if c.PayloadSize == 0 {
		c.PayloadSize = DefaultPayloadSize
	}
	if c.PayloadSize < minPayload || c.PayloadSize > 1<<20 {
		bad("payload size %d out of range (%d B to 1 MiB)", c.PayloadSize, minPayload)
	}
	if c.MsgRate < 0 || c.ConnRate < 0 {
		bad("rates must not be negative")
	}
	if c.Inflight == 0 {
		c.Inflight = DefaultInflight
	}
	if c.Inflight < 1 || c.Inflight > 1000 {
		bad("inflight %d out of range (1..1000)", c.Inflight)
	}
	if c.MaxBacklog < 0 {
		bad("max backlog must not be negative")
	}
	if c.MaxBacklog > 0 && (c.Scenario == Conn || c.Scenario == Pub || c.Scenario == Sub) {
		bad("max backlog needs a scenario with publishers and subscribers, not %s", c.Scenario)
	}
	if c.ConnConcurrency == 0 {
		c.ConnConcurrency = DefaultConnConcurrency
	}
	if c.ConnConcurrency < 1 {
		bad("connection concurrency must be positive")
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.Duration < 0 || c.Duration > 24*time.Hour {
		bad("duration %v out of range", c.Duration)
	}
	if c.Drain == 0 {
		c.Drain = DefaultDrain
	}
	if c.Topic == "" {
		c.Topic = DefaultTopic
	}
	if c.Filter == "" {
		c.Filter = c.Topic + "/#"
	}
	if c.SampleInterval == 0 {
		c.SampleInterval = DefaultSampleInterval
	}
	if c.SourceAddrs == 0 {
		c.SourceAddrs = 1
	}
	if c.SourceAddrs < 1 || c.SourceAddrs > 250 {
		bad("source addresses %d out of range (1..250)", c.SourceAddrs)
	}
	if c.SourceAddrs > 1 {
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() || ip.To4() == nil {
			bad("several source addresses need an IPv4 loopback broker address, not %q", host)
		}
	}
	if c.Resume && c.TLS == nil {
		bad("resumption needs TLS")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, errors.Join(errs...)
}
