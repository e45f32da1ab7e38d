package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is the outcome of one Run. It marshals to the JSON written by
// `moat bench --json`; field names are stable.
type Result struct {
	Label      string    `json:"label"`
	Scenario   string    `json:"scenario"`
	Params     Params    `json:"params"`
	Start      time.Time `json:"start"`
	Elapsed    float64   `json:"elapsed_s"`
	GoMaxProcs int       `json:"gomaxprocs"`

	Connect  ConnectStats   `json:"connect"`
	Messages MessageStats   `json:"messages"`
	Latency  LatencySummary `json:"latency"`
	// Dropped counts connections the broker closed during the run.
	Dropped int64        `json:"dropped_connections"`
	Broker  *BrokerStats `json:"broker,omitempty"`
	// Host is the machine's CPU over the publishing phase (conn: the
	// hold), from /proc/stat; nil where it cannot be read.
	Host *HostStats `json:"host,omitempty"`

	LatencyBuckets   []Bucket `json:"latency_buckets,omitempty"`
	HandshakeBuckets []Bucket `json:"handshake_buckets,omitempty"`
	// The exact histograms of latency, handshake and CONNACK latency,
	// for MergeResults.
	LatencyHist   *HistData `json:"latency_hist,omitempty"`
	HandshakeHist *HistData `json:"handshake_hist,omitempty"`
	ConnackHist   *HistData `json:"connack_hist,omitempty"`
	Series        []Sample  `json:"series,omitempty"`
	Errors        []string  `json:"errors,omitempty"`
}

// Params echoes the configuration of a run.
type Params struct {
	Addr        string  `json:"addr"`
	SubAddr     string  `json:"sub_addr,omitempty"`
	TLS         bool    `json:"tls"`
	MutualTLS   bool    `json:"mtls"`
	KeyExchange string  `json:"key_exchange,omitempty"`
	ClientCerts int     `json:"client_certs"`
	Resume      bool    `json:"resume"`
	Clients     int     `json:"clients,omitempty"`
	Pubs        int     `json:"pubs,omitempty"`
	Subs        int     `json:"subs,omitempty"`
	ConnRate    float64 `json:"conn_rate,omitempty"`
	QoS         byte    `json:"qos"`
	PayloadSize int     `json:"payload_size"`
	MsgRate     float64 `json:"msg_rate"`
	Inflight    int     `json:"inflight"`
	MaxBacklog  int     `json:"max_backlog,omitempty"`
	Persistent  bool    `json:"persistent,omitempty"`
	// OfferedPerSecond is the open loop's offered load, messages per
	// second over all publishers (a rate and no max backlog); 0 otherwise.
	OfferedPerSecond float64 `json:"offered_per_s,omitempty"`
	DurationSeconds  float64 `json:"duration_s"`
	Encrypted        bool    `json:"encrypted"`
}

// ConnectStats describes the connection phase.
type ConnectStats struct {
	Attempted   int64   `json:"attempted"`
	Succeeded   int64   `json:"succeeded"`
	Failed      int64   `json:"failed"`
	Resumed     int64   `json:"resumed"`
	SuccessRate float64 `json:"success_rate"`
	// Seconds is the length of the connection phase, failures included;
	// PerSecond is Succeeded over the time to the last success.
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
	// Handshake is TCP connect + TLS handshake; Connack is CONNECT to
	// CONNACK.
	Handshake LatencySummary `json:"handshake"`
	Connack   LatencySummary `json:"connack"`
}

// MessageStats counts messages. Expected is -1 when the scenario cannot
// know it (pub, sub).
type MessageStats struct {
	Sent  int64 `json:"sent"`
	Acked int64 `json:"acked"`
	// AckedInWindow counts the PUBACKs received while publishing.
	AckedInWindow     int64   `json:"acked_in_window"`
	Delivered         int64   `json:"delivered"`
	DeliveredInWindow int64   `json:"delivered_in_window"`
	Expected          int64   `json:"expected"`
	Lost              int64   `json:"lost"`
	LossRate          float64 `json:"loss_rate"`
	Foreign           int64   `json:"foreign"`
	// OutOfOrder counts deliveries (closed loop, not shared) whose
	// sequence number was not above the last one seen from the same
	// publisher: reordered or repeated messages.
	OutOfOrder         int64   `json:"out_of_order,omitempty"`
	DecryptErrors      int64   `json:"decrypt_errors"`
	WindowSeconds      float64 `json:"window_s"`
	SentPerSecond      float64 `json:"sent_per_s"`
	DeliveredPerSecond float64 `json:"delivered_per_s"`
	// AcceptedPerSecond is what the broker took from the publishers in
	// the window: PUBACKs per second at QoS 1, SentPerSecond at QoS 0.
	// Above DeliveredPerSecond, the broker is queueing.
	AcceptedPerSecond float64 `json:"accepted_per_s"`
}

// BrokerStats are the broker's CPU and memory figures from /proc.
type BrokerStats struct {
	PID                int     `json:"pid"`
	RSSBeforeMiB       float64 `json:"rss_before_mib"`
	RSSAfterConnectMiB float64 `json:"rss_after_connect_mib"`
	RSSEndMiB          float64 `json:"rss_end_mib"`
	RSSPeakMiB         float64 `json:"rss_peak_mib"`
	// RSSPerConnKiB is (RSS at the end of the hold − RSS before
	// connecting) / connections, for the conn scenario.
	RSSPerConnKiB     float64 `json:"rss_per_conn_kib,omitempty"`
	ConnectCPUSeconds float64 `json:"connect_cpu_s"`
	ConnectCPUPercent float64 `json:"connect_cpu_pct"`
	CPUPerConnectMs   float64 `json:"cpu_per_connect_ms"`
	PhaseCPUSeconds   float64 `json:"phase_cpu_s"`
	// CPUPercent is the average over the publish phase (conn: the hold),
	// in percent of one core.
	CPUPercent      float64 `json:"cpu_pct"`
	CPUPercentMax   float64 `json:"cpu_pct_max"`
	CPUPerMessageUs float64 `json:"cpu_per_msg_us,omitempty"`
}

// HostStats describes the machine during a phase, in percent of all its
// CPUs' time. On a virtual machine StealPct is the time the hypervisor
// gave the CPUs to someone else: latency tails follow it closely.
type HostStats struct {
	StealPct float64 `json:"steal_pct"`
	IdlePct  float64 `json:"idle_pct"`
}

// WriteJSON writes r as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadResult parses a Result written by WriteJSON.
func ReadResult(rd io.Reader) (*Result, error) {
	var r Result
	if err := json.NewDecoder(rd).Decode(&r); err != nil {
		return nil, fmt.Errorf("bench: parsing result: %w", err)
	}
	return &r, nil
}

func us(v float64) string { return fmtDur(time.Duration(v * 1e3)) }

// WriteTable writes a human-readable summary of r.
func (r *Result) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	p := r.Params
	transport := "tcp"
	if p.MutualTLS {
		transport = "mtls"
	} else if p.TLS {
		transport = "tls"
	}
	if p.KeyExchange != "" {
		transport += " (" + p.KeyExchange + ")"
	}
	loop := ""
	if p.MaxBacklog > 0 {
		loop = fmt.Sprintf(", closed loop (max backlog %d)", p.MaxBacklog)
	} else if p.OfferedPerSecond > 0 {
		loop = fmt.Sprintf(", open loop (%.0f msgs/s offered)", p.OfferedPerSecond)
	}
	if p.Persistent {
		loop += ", persistent sessions"
	}
	to := p.Addr
	if p.SubAddr != "" {
		to += " (subscribers on " + p.SubAddr + ")"
	}
	row("run", "%s: %s over %s to %s%s", r.Label, r.Scenario, transport, to, loop)
	c := r.Connect
	row("connections", "%d/%d ok (%.2f%%), %d failed, %.0f/s, %d resumed", c.Succeeded, c.Attempted, 100*c.SuccessRate, c.Failed, c.PerSecond, c.Resumed)
	if c.Handshake.Count > 0 {
		h := c.Handshake
		row("handshake", "p50 %s  p90 %s  p99 %s  max %s", us(h.P50Us), us(h.P90Us), us(h.P99Us), us(h.MaxUs))
		h = c.Connack
		row("connack", "p50 %s  p90 %s  p99 %s  max %s", us(h.P50Us), us(h.P90Us), us(h.P99Us), us(h.MaxUs))
	}
	if r.Scenario != string(Conn) {
		m := r.Messages
		row("messages", "sent %d (%.0f/s), accepted %.0f/s, delivered %d (%.0f/s in window), acked %d", m.Sent, m.SentPerSecond, m.AcceptedPerSecond, m.Delivered, m.DeliveredPerSecond, m.Acked)
		if m.Expected >= 0 {
			row("loss", "%d of %d expected (%.3f%%)", m.Lost, m.Expected, 100*m.LossRate)
		}
		if m.OutOfOrder > 0 {
			row("order", "%d delivered out of order or repeated", m.OutOfOrder)
		}
		if m.DecryptErrors > 0 || m.Foreign > 0 {
			row("rejected", "%d failed to decrypt, %d not from this run", m.DecryptErrors, m.Foreign)
		}
		l := r.Latency
		row("latency", "p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (n=%d)", us(l.P50Us), us(l.P90Us), us(l.P99Us), us(l.P999Us), us(l.MaxUs), l.Count)
	}
	if r.Dropped > 0 {
		row("dropped", "%d connections closed by the broker", r.Dropped)
	}
	if b := r.Broker; b != nil {
		row("broker cpu", "%.1f%% avg, %.1f%% max; connect phase %.2fs cpu (%.3f ms/conn, %.0f%%)", b.CPUPercent, b.CPUPercentMax, b.ConnectCPUSeconds, b.CPUPerConnectMs, b.ConnectCPUPercent)
		row("broker rss", "%.1f MiB before, %.1f after connect, %.1f end, %.1f peak", b.RSSBeforeMiB, b.RSSAfterConnectMiB, b.RSSEndMiB, b.RSSPeakMiB)
		if b.RSSPerConnKiB != 0 {
			row("rss/conn", "%.1f KiB", b.RSSPerConnKiB)
		}
		if b.CPUPerMessageUs != 0 {
			row("cpu/msg", "%.2f µs", b.CPUPerMessageUs)
		}
	}
	if h := r.Host; h != nil {
		row("machine", "%.1f%% idle, %.1f%% stolen by the hypervisor", h.IdlePct, h.StealPct)
	}
	for _, e := range r.Errors {
		row("error", "%s", strings.TrimSpace(e))
	}
	return tw.Flush()
}
