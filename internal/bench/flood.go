package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Defaults of FloodConfig.
const (
	DefaultFloodDuration       = 5 * time.Second
	DefaultFloodWorkers        = 2
	DefaultFloodConnectTimeout = time.Second
	DefaultFloodSettle         = 500 * time.Millisecond
)

// FloodConfig describes a connection flood: TCP connection attempts
// offered at a fixed rate, each closed with a reset as soon as the
// handshake completes, without sending a byte. It measures what a flood
// costs the broker when its defense closes the sockets at accept (issue
// #15: "10,000 connection attempts per second from one address").
//
// The generator makes raw non-blocking sockets (no Go netpoller, no TLS),
// so one core offers tens of thousands of attempts per second: the rate
// is the generator's, not bounded by the broker's answers (open loop).
// Sockets close with SO_LINGER 0 (a reset): neither side keeps a
// TIME_WAIT entry, so a long flood does not run out of ephemeral ports.
//
// The zero value is not runnable: Addr and Rate are required. Flood does
// not modify the caller's FloodConfig.
type FloodConfig struct {
	// Addr is the broker's numeric IP:port. Only loopback addresses are
	// accepted: the flood measures the local machine and is not a tool to
	// point at other hosts.
	Addr string
	// Sources are the local addresses the attempts come from, in turn
	// (e.g. 127.0.0.2). Default: the kernel's choice (127.0.0.1 for a
	// loopback Addr).
	Sources []netip.Addr
	// Rate is the attempts offered per second, over all workers. Required.
	Rate float64
	// Duration is how long attempts are offered. Default 5 s.
	Duration time.Duration
	// Workers is the number of OS threads making attempts, each with its
	// share of Rate. Default 2.
	Workers int
	// ConnectTimeout bounds one attempt's handshake: a SYN the broker's
	// kernel dropped (its accept queue full) is counted as timed out.
	// Default 1 s.
	ConnectTimeout time.Duration
	// Settle is the wait after the last attempt was answered before the
	// broker's CPU is read again, so that the sockets still in its accept
	// queue are counted. Default 500 ms.
	Settle time.Duration
	// BrokerPID, when set, is the process whose CPU the flood costs
	// (read from /proc, like Config.BrokerPID).
	BrokerPID int
}

// FloodResult is what a flood did and cost.
type FloodResult struct {
	Addr    string   `json:"addr"`
	Sources []string `json:"sources,omitempty"`
	// Offered counts connect calls made (SYNs sent); OfferedPerSec is
	// Offered over the time they were made in.
	Offered       int64   `json:"offered"`
	OfferedPerSec float64 `json:"offered_per_s"`
	OfferSeconds  float64 `json:"offer_s"`
	// Established counts handshakes the broker's kernel completed: each
	// put a socket in the broker's accept queue. Reset counts those the
	// broker had already accepted and closed with a reset when the
	// generator looked; both reached the broker.
	Established int64 `json:"established"`
	Reset       int64 `json:"reset"`
	// Refused counts attempts answered with a reset (nothing listening).
	Refused int64 `json:"refused"`
	// TimedOut counts attempts not answered within ConnectTimeout.
	TimedOut int64 `json:"timed_out"`
	// Errors counts attempts that failed locally (no descriptor, no
	// port); FirstError is the first of them.
	Errors     int64  `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// GeneratorCPU is the CPU time this process used during the flood.
	GeneratorCPU time.Duration `json:"generator_cpu_ns"`
	// BrokerCPU is the broker's CPU time from the first attempt until
	// Settle after the last answer; BrokerCPUPerAttempt divides it by
	// Established plus Reset. Zero without a BrokerPID.
	BrokerCPU           time.Duration `json:"broker_cpu_ns,omitempty"`
	BrokerCPUPerAttempt time.Duration `json:"broker_cpu_per_attempt_ns,omitempty"`
	BrokerSeconds       float64       `json:"broker_s,omitempty"`
}

// withDefaults checks cfg and fills in its defaults.
func (cfg FloodConfig) withDefaults() (FloodConfig, netip.AddrPort, error) {
	var errs []error
	ap, err := netip.ParseAddrPort(cfg.Addr)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("bench: flood address %q is not a numeric IP:port: %w", cfg.Addr, err))
	case !ap.Addr().Unmap().IsLoopback():
		errs = append(errs, fmt.Errorf("bench: flood address %s is not a loopback address: the flood measures the local machine only", cfg.Addr))
	}
	for _, s := range cfg.Sources {
		if !s.Unmap().IsLoopback() {
			errs = append(errs, fmt.Errorf("bench: flood source %s is not a loopback address", s))
		} else if ap.IsValid() && s.Unmap().Is4() != ap.Addr().Unmap().Is4() {
			errs = append(errs, fmt.Errorf("bench: flood source %s and address %s are not of the same IP version", s, cfg.Addr))
		}
	}
	if !(cfg.Rate > 0) || cfg.Rate > 1e6 {
		errs = append(errs, errors.New("bench: flood rate must be between 0 and 1,000,000 attempts per second"))
	}
	if cfg.Duration < 0 || cfg.Workers < 0 || cfg.ConnectTimeout < 0 || cfg.Settle < 0 {
		errs = append(errs, errors.New("bench: flood duration, workers, connect timeout and settle must not be negative"))
	}
	if cfg.Duration == 0 {
		cfg.Duration = DefaultFloodDuration
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultFloodWorkers
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultFloodConnectTimeout
	}
	if cfg.Settle == 0 {
		cfg.Settle = DefaultFloodSettle
	}
	return cfg, ap, errors.Join(errs...)
}

// WriteTable prints the result for a terminal.
func (r *FloodResult) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "flood of %s", r.Addr)
	if len(r.Sources) > 0 {
		fmt.Fprintf(w, " from %v", r.Sources)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  offered       %d attempts in %.2f s: %.0f per second\n", r.Offered, r.OfferSeconds, r.OfferedPerSec)
	fmt.Fprintf(w, "  established   %d (reached the broker's accept queue)\n", r.Established)
	fmt.Fprintf(w, "  reset first   %d (accepted and reset by the broker before the generator closed them)\n", r.Reset)
	fmt.Fprintf(w, "  refused       %d\n", r.Refused)
	fmt.Fprintf(w, "  timed out     %d\n", r.TimedOut)
	if r.Errors > 0 {
		fmt.Fprintf(w, "  local errors  %d (first: %s)\n", r.Errors, r.FirstError)
	}
	fmt.Fprintf(w, "  generator CPU %v\n", r.GeneratorCPU.Round(time.Millisecond))
	if r.BrokerSeconds > 0 {
		fmt.Fprintf(w, "  broker CPU    %v over %.2f s (%.1f%% of one core); %v per attempt that reached it\n",
			r.BrokerCPU.Round(time.Millisecond), r.BrokerSeconds, 100*r.BrokerCPU.Seconds()/r.BrokerSeconds, r.BrokerCPUPerAttempt)
	}
}

// WriteJSON writes the result as JSON.
func (r *FloodResult) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
