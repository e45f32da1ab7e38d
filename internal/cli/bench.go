package cli

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/internal/bench"
)

func init() { register(newBenchCmd) }

func newBenchCmd(stdio Stdio) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-test an MQTT broker (connection storms, pub/sub shapes, latency)",
		Long: `moat bench drives an MQTT broker with many simulated MQTT 3.1.1 clients and
measures connections (success rate, rate, TCP+TLS handshake latency), messages
(sent, delivered, lost, end-to-end latency from a timestamp in every payload:
p50/p90/p99/p99.9/max) and, with --broker-pid, the broker's CPU and RSS.

Scenarios:
  conn     connection storm: --clients connect at --conn-rate, stay --duration
  pub      --pubs publishers on TOPIC/pub/i, no subscribers
  sub      --subs subscribers on --filter, counting what other clients publish
  p2p      publisher i -> subscriber i (TOPIC/p2p/i)
  fanin    --pubs publishers -> --subs subscribers on TOPIC/in/+
  fanout   --pubs publishers on TOPIC/out -> every one of --subs subscribers
  shared   --pubs publishers -> --subs subscribers sharing $share/bench/TOPIC/shared/+

Helpers: "moat bench certs" writes a throw-away PKI, "moat bench compare" turns
the JSON results of two brokers into a markdown table of ratios, "moat bench
merge" combines the JSON results of several rounds into one, "moat bench
nullfwd" runs a null forwarder (MQTT framing without broker logic) as a ceiling,
"moat bench flood" offers bare TCP connection attempts at a fixed rate (what a
flood costs a broker that closes them at accept).`,
	}
	for _, s := range bench.Scenarios {
		cmd.AddCommand(newBenchScenarioCmd(stdio, s))
	}
	cmd.AddCommand(newBenchCertsCmd(stdio), newBenchCompareCmd(stdio), newBenchMergeCmd(stdio), newBenchNullfwdCmd(stdio),
		newBenchFloodCmd(stdio))
	return cmd
}

type benchOpts struct {
	cfg                   bench.Config
	tls, insecure         bool
	caFile, serverName    string
	certFile, keyFile     string
	clientCA, clientCAKey string
	kex                   string
	encrypt               bool
	encryptKey            string
	jsonOut, htmlOut      string
	quiet                 bool
	settleSet             bool // --settle given
}

var benchShort = map[bench.Scenario]string{
	bench.Conn:   "Connection storm: handshakes, success rate, memory per idle connection",
	bench.Pub:    "Publishers only",
	bench.Sub:    "Subscribers only (count what others publish)",
	bench.P2P:    "Point-to-point: publisher i to subscriber i",
	bench.FanIn:  "Fan-in: many publishers to few subscribers",
	bench.FanOut: "Fan-out: few publishers to many subscribers",
	bench.Shared: "Shared subscription: publishers to a $share group",
}

func newBenchScenarioCmd(stdio Stdio, s bench.Scenario) *cobra.Command {
	o := &benchOpts{}
	o.cfg.Scenario = s
	cmd := &cobra.Command{
		Use:   string(s) + " [flags]",
		Short: benchShort[s],
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.settleSet = cmd.Flags().Changed("settle")
			return runBench(cmd.Context(), stdio, o)
		},
	}
	f := cmd.Flags()
	c := &o.cfg
	f.StringVar(&c.Label, "label", "", "name of the run in reports (default: the scenario)")
	f.StringVarP(&c.Addr, "addr", "a", bench.DefaultAddr, "broker `HOST:PORT`")
	f.StringVar(&c.SubAddr, "sub-addr", "", "subscribers connect to `HOST:PORT` (another node of a cluster) instead of --addr")
	f.DurationVar(&c.Settle, "settle", 0, "pause between connecting and publishing (default 1s with --sub-addr: subscriptions reach the other nodes)")
	f.BoolVar(&o.tls, "tls", false, "connect with TLS (implied by --cafile, --cert, --client-ca)")
	f.StringVar(&o.caFile, "cafile", "", "CA `FILE` (PEM) that signed the broker's certificate; default: system roots")
	f.StringVar(&o.serverName, "servername", "", "TLS server name (default: the host of --addr)")
	f.BoolVar(&o.insecure, "insecure", false, "do not verify the broker's certificate (benchmarks only)")
	f.StringVar(&o.certFile, "cert", "", "shared client certificate `FILE` for mutual TLS (PEM)")
	f.StringVar(&o.keyFile, "key", "", "key `FILE` of --cert")
	f.StringVar(&o.clientCA, "client-ca", "", "CA certificate `FILE` to issue one client certificate per client (mutual TLS)")
	f.StringVar(&o.clientCAKey, "client-ca-key", "", "unencrypted key `FILE` of --client-ca")
	f.StringVar(&o.kex, "kex", "", "TLS key exchange: pq (X25519MLKEM768), classical (X25519), p256, or empty for Go's default")
	f.BoolVar(&c.Resume, "resume", false, "connect each client twice and measure the resumed TLS session")
	f.IntVarP(&c.Clients, "clients", "n", 0, "connections (conn)")
	f.IntVar(&c.Pubs, "pubs", 0, "publishers")
	f.IntVar(&c.Subs, "subs", 0, "subscribers")
	f.Float64Var(&c.ConnRate, "conn-rate", 0, "new connections per second (0: as fast as --conn-concurrency allows)")
	f.IntVar(&c.ConnConcurrency, "conn-concurrency", bench.DefaultConnConcurrency, "connections being set up at once")
	f.DurationVar(&c.ConnectTimeout, "connect-timeout", bench.DefaultConnectTimeout, "timeout of one connection setup")
	f.Uint8VarP(&c.QoS, "qos", "q", 0, "QoS of publications and subscriptions (0 or 1)")
	f.IntVarP(&c.PayloadSize, "size", "s", bench.DefaultPayloadSize, "payload size in bytes (>= 24)")
	f.Float64VarP(&c.MsgRate, "rate", "r", 0, "messages per second per publisher (0: as fast as possible)")
	f.IntVar(&c.Inflight, "inflight", bench.DefaultInflight, "QoS 1 messages awaiting PUBACK per publisher")
	f.IntVar(&c.MaxBacklog, "max-backlog", 0, "closed loop: publishers pause while more than `N` deliveries are outstanding (0: open loop)")
	f.DurationVarP(&c.Duration, "duration", "d", bench.DefaultDuration, "publishing time (conn: how long connections are held)")
	f.DurationVar(&c.Drain, "drain", bench.DefaultDrain, "time to wait for messages in flight after publishing")
	f.StringVarP(&c.Topic, "topic", "t", bench.DefaultTopic, "topic prefix")
	f.StringVar(&c.Filter, "filter", "", "topic filter of the sub scenario (default TOPIC/#)")
	f.BoolVar(&c.Persistent, "persistent", false, "connect with clean session 0: persistent sessions (with a durable store, QoS 1 goes to disk)")
	f.BoolVar(&o.encrypt, "encrypt", false, "seal payloads end to end (seed raw AES-256-GCM) with a random key")
	f.StringVar(&o.encryptKey, "encrypt-key", "", "seal payloads with the raw AES-256 key in `FILE` (32 bytes or 64 hex digits)")
	f.IntVar(&c.SourceAddrs, "source-addrs", 1, "spread connections over 127.0.0.1..127.0.0.N (past the ephemeral port limit)")
	f.IntVar(&c.BrokerPID, "broker-pid", 0, "sample this process's CPU and RSS from /proc")
	f.DurationVar(&c.SampleInterval, "interval", bench.DefaultSampleInterval, "sampling and progress interval")
	f.StringVar(&o.jsonOut, "json", "", "write the result as JSON to `FILE` (- for stdout)")
	f.StringVar(&o.htmlOut, "html", "", "write an HTML report with charts to `FILE`")
	f.BoolVar(&o.quiet, "quiet", false, "no progress line")
	return cmd
}

func (o *benchOpts) tlsConfig() (*tls.Config, error) {
	c := &o.cfg
	mutual := o.certFile != "" || o.clientCA != ""
	if !o.tls && o.caFile == "" && !mutual && o.kex == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.insecure}
	tc.ServerName = o.serverName
	if tc.ServerName == "" {
		host, _, err := net.SplitHostPort(c.Addr)
		if err != nil {
			return nil, fmt.Errorf("bench: --addr %q: %w", c.Addr, err)
		}
		tc.ServerName = host
	}
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, fmt.Errorf("bench: reading --cafile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("bench: no PEM certificate in %s", o.caFile)
		}
		tc.RootCAs = pool
	}
	switch o.kex {
	case "":
	case "pq":
		tc.CurvePreferences = []tls.CurveID{tls.X25519MLKEM768}
		tc.MinVersion = tls.VersionTLS13
	case "classical":
		tc.CurvePreferences = []tls.CurveID{tls.X25519}
	case "p256":
		tc.CurvePreferences = []tls.CurveID{tls.CurveP256}
	default:
		return nil, fmt.Errorf("bench: --kex %q: want pq, classical or p256", o.kex)
	}
	if o.certFile != "" || o.keyFile != "" {
		pair, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
		if err != nil {
			return nil, fmt.Errorf("bench: loading --cert/--key: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

func runBench(ctx context.Context, stdio Stdio, o *benchOpts) error {
	raiseFileLimit()
	c := o.cfg
	if c.SubAddr != "" && !o.settleSet {
		c.Settle = time.Second
	}
	tc, err := o.tlsConfig()
	if err != nil {
		return err
	}
	c.TLS = tc
	if (o.clientCA == "") != (o.clientCAKey == "") {
		return errors.New("bench: --client-ca and --client-ca-key go together")
	}
	if o.clientCA != "" {
		iss, err := bench.LoadIssuer(o.clientCA, o.clientCAKey)
		if err != nil {
			return err
		}
		n := c.Clients
		if c.Scenario != bench.Conn {
			n = c.Pubs + c.Subs
		}
		start := time.Now()
		if c.ClientCerts, err = iss.IssueClients("bench-", max(n, 1)); err != nil {
			return err
		}
		if !o.quiet {
			fmt.Fprintf(stdio.Err, "issued %d client certificates in %v\n", len(c.ClientCerts), time.Since(start).Round(time.Millisecond))
		}
	}
	switch {
	case o.encrypt && o.encryptKey != "":
		return errors.New("bench: --encrypt and --encrypt-key are exclusive")
	case o.encrypt:
		key := make([]byte, 32)
		rand.Read(key)
		if c.Encrypt, err = e2e.NewRawKey(key); err != nil {
			return err
		}
	case o.encryptKey != "":
		data, err := os.ReadFile(o.encryptKey)
		if err != nil {
			return fmt.Errorf("bench: reading --encrypt-key: %w", err)
		}
		if c.Encrypt, err = e2e.ParseRawKey(data); err != nil {
			return err
		}
	}
	if !o.quiet {
		c.Progress = stdio.Err
		if f, ok := stdio.Err.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			c.ProgressTTY = true
		}
	}
	c.Logger = slog.New(slog.DiscardHandler)
	res, runErr := bench.Run(ctx, c)
	if res == nil {
		return runErr
	}
	if o.jsonOut != "-" {
		res.WriteTable(stdio.Out)
	}
	if err := writeOut(stdio, o.jsonOut, res.WriteJSON); err != nil {
		return err
	}
	if err := writeOut(stdio, o.htmlOut, res.WriteHTML); err != nil {
		return err
	}
	if runErr != nil {
		return fmt.Errorf("bench: run interrupted: %w", runErr)
	}
	if res.Connect.Succeeded == 0 {
		return &exitError{2, fmt.Errorf("bench: no connection succeeded (%s); check --addr, TLS flags and the broker's log",
			strings.Join(res.Errors, "; "))}
	}
	return nil
}

func writeOut(stdio Stdio, name string, write func(io.Writer) error) error {
	switch name {
	case "":
		return nil
	case "-":
		return write(stdio.Out)
	}
	f, err := os.Create(name)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("bench: writing %s: %w", name, err)
	}
	return f.Close()
}

func newBenchCertsCmd(stdio Stdio) *cobra.Command {
	var dir, kt string
	cmd := &cobra.Command{
		Use:   "certs --dir DIR",
		Short: "Write a throw-away PKI for benchmarks (CA with unencrypted key, server and client certificates)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bench.WritePKI(dir, bench.KeyType(kt)); err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "wrote %s/{ca,server,client}.{pem,key} (%s); the CA key is unencrypted: benchmarks only\n", dir, kt)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "bench-pki", "output `DIR`")
	cmd.Flags().StringVar(&kt, "key-type", string(bench.ECDSAP256), "key type: ecdsa (P-256) or rsa (2048)")
	return cmd
}

func newBenchCompareCmd(stdio Stdio) *cobra.Command {
	var first, second string
	var extra, targets, peers []string
	var out string
	cmd := &cobra.Command{
		Use:   "compare DIR",
		Short: "Compare SCENARIO.BROKER.json results as a markdown table of ratios",
		Long: `compare reads every SCENARIO.BROKER.json file in DIR (written by
"moat bench ... --json") and prints, per scenario and metric, the value for
--first and --second, their ratio and whether each --target is met, e.g.
--target 'c-p2p:delivered_per_s>=2'. With --peers (e.g.
mosquitto,mochi,natsmqtt) instead of --second, it prints every peer's value,
the best peer of each row and --first's ratio to it; targets then apply to
that ratio. It exits with status 3 when a target is missed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ts []bench.Target
			for _, s := range targets {
				t, err := bench.ParseTarget(s)
				if err != nil {
					return err
				}
				ts = append(ts, t)
			}
			res, err := bench.LoadResults(args[0])
			if err != nil {
				return err
			}
			w := stdio.Out
			var f *os.File
			if out != "" {
				if f, err = os.Create(out); err != nil {
					return fmt.Errorf("bench: %w", err)
				}
				defer f.Close()
				w = io.MultiWriter(stdio.Out, f)
			}
			if len(peers) == 0 {
				peers = []string{second}
			}
			if missed := bench.Compare(w, res, first, peers, extra, ts); missed > 0 {
				return &exitError{3, fmt.Errorf("bench: %d target(s) missed", missed)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&first, "first", "moat", "broker in the numerator")
	cmd.Flags().StringVar(&second, "second", "mosquitto", "broker in the denominator")
	cmd.Flags().StringSliceVar(&peers, "peers", nil, "brokers compared with --first, each row against the best of them (replaces --second)")
	cmd.Flags().StringSliceVar(&extra, "extra", nil, "further brokers shown as columns (e.g. nullfwd)")
	cmd.Flags().StringArrayVar(&targets, "target", nil, "SCENARIO:METRIC>=RATIO or <=RATIO (repeatable)")
	cmd.Flags().StringVar(&out, "out", "", "also write the table to `FILE`")
	return cmd
}

func newBenchMergeCmd(stdio Stdio) *cobra.Command {
	var jsonOut, htmlOut string
	cmd := &cobra.Command{
		Use:   "merge --json OUT.json [--html OUT.html] ROUND.json...",
		Short: "Combine the JSON results of several rounds into one result",
		Long: `merge reads results of the same scenario and label (several rounds against
one broker, written by "moat bench ... --json") and writes one result as if
the rounds had been one run: counts add up, rates are totals over total time,
latency percentiles come from the merged histograms, CPU is weighted by time,
RSS peaks are the highest. It prints the merged summary table.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var rs []*bench.Result
			for _, name := range args {
				f, err := os.Open(name)
				if err != nil {
					return fmt.Errorf("bench: %w", err)
				}
				r, err := bench.ReadResult(f)
				f.Close()
				if err != nil {
					return fmt.Errorf("bench: %s: %w", name, err)
				}
				rs = append(rs, r)
			}
			m, err := bench.MergeResults(rs)
			if err != nil {
				return err
			}
			m.WriteTable(stdio.Out)
			if err := writeOut(stdio, jsonOut, m.WriteJSON); err != nil {
				return err
			}
			return writeOut(stdio, htmlOut, m.WriteHTML)
		},
	}
	cmd.Flags().StringVar(&jsonOut, "json", "", "write the merged result as JSON to `FILE`")
	cmd.Flags().StringVar(&htmlOut, "html", "", "write an HTML report of the merged result to `FILE`")
	cmd.MarkFlagRequired("json")
	return cmd
}

func newBenchNullfwdCmd(stdio Stdio) *cobra.Command {
	var listen, certFile, keyFile, caFile string
	cmd := &cobra.Command{
		Use:   "nullfwd --listen ADDR",
		Short: "Run a null forwarder: MQTT framing without broker logic, the benchmark's ceiling",
		Long: `nullfwd relays every PUBLISH to the connections subscribed to its topic,
with no authentication, sessions, retained messages or QoS 1 towards
subscribers. It exists only to measure the ceiling of the machine and the load
generator; it accepts any client, so it refuses non-loopback addresses.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			host, _, err := net.SplitHostPort(listen)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("bench: nullfwd listens on loopback addresses only, not %q", listen)
			}
			raiseFileLimit()
			nf := &bench.NullForwarder{}
			if certFile != "" {
				pair, err := tls.LoadX509KeyPair(certFile, keyFile)
				if err != nil {
					return fmt.Errorf("bench: loading --cert/--key: %w", err)
				}
				nf.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
				if caFile != "" {
					pem, err := os.ReadFile(caFile)
					if err != nil {
						return fmt.Errorf("bench: reading --cafile: %w", err)
					}
					pool := x509.NewCertPool()
					pool.AppendCertsFromPEM(pem)
					nf.TLS.ClientCAs, nf.TLS.ClientAuth = pool, tls.RequireAndVerifyClientCert
				}
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			fmt.Fprintf(stdio.Err, "nullfwd listening on %s\n", ln.Addr())
			return nf.Serve(cmd.Context(), ln)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:1884", "listen `ADDR` (loopback only)")
	cmd.Flags().StringVar(&certFile, "cert", "", "server certificate `FILE` for TLS")
	cmd.Flags().StringVar(&keyFile, "key", "", "key `FILE` of --cert")
	cmd.Flags().StringVar(&caFile, "cafile", "", "require client certificates signed by this CA `FILE`")
	return cmd
}

func newBenchFloodCmd(stdio Stdio) *cobra.Command {
	var cfg bench.FloodConfig
	var sources []string
	var jsonOut string
	cmd := &cobra.Command{
		Use:   "flood --addr HOST:PORT --rate N",
		Short: "Offer bare TCP connection attempts at a fixed rate (connection flood, loopback only)",
		Long: `flood makes --rate TCP connection attempts per second for --duration from the
--source addresses, each closed with a reset as soon as its handshake completes,
without sending a byte: a connection flood. The attempts are made with raw
non-blocking sockets, so the rate is the generator's and not bounded by the
broker's answers. With --broker-pid it reports the broker's CPU time over the
flood and per attempt. It reaches loopback addresses only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, s := range sources {
				a, err := netip.ParseAddr(s)
				if err != nil {
					return fmt.Errorf("bench: --source %q: %w", s, err)
				}
				cfg.Sources = append(cfg.Sources, a)
			}
			raiseFileLimit()
			res, err := bench.Flood(cmd.Context(), cfg)
			if res == nil {
				return err
			}
			if jsonOut != "-" {
				res.WriteTable(stdio.Out)
			}
			if werr := writeOut(stdio, jsonOut, res.WriteJSON); werr != nil {
				return werr
			}
			if err != nil {
				return fmt.Errorf("bench: flood interrupted: %w", err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&cfg.Addr, "addr", "a", bench.DefaultAddr, "broker `IP:PORT` (loopback)")
	f.StringSliceVar(&sources, "source", nil, "source `ADDR` of the attempts, taken in turn when repeated (default: the kernel's choice)")
	f.Float64Var(&cfg.Rate, "rate", 10000, "attempts per second")
	f.DurationVarP(&cfg.Duration, "duration", "d", bench.DefaultFloodDuration, "how long attempts are offered")
	f.IntVar(&cfg.Workers, "workers", bench.DefaultFloodWorkers, "threads making attempts")
	f.DurationVar(&cfg.ConnectTimeout, "connect-timeout", bench.DefaultFloodConnectTimeout, "an attempt not answered by then counts as timed out")
	f.DurationVar(&cfg.Settle, "settle", bench.DefaultFloodSettle, "wait after the last answer before reading the broker's CPU")
	f.IntVar(&cfg.BrokerPID, "broker-pid", 0, "read this process's CPU time from /proc")
	f.StringVar(&jsonOut, "json", "", "write the result as JSON to `FILE` (- for stdout)")
	return cmd
}
