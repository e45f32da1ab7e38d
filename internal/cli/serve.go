package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/cluster"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/listener"
)

type serveOptions struct {
	configFile string
	dataDir    string
	check      bool
	pprof      string
	admin      string
	profile    string
	sans       []string
}

func init() { register(newServeCommand) }

func newServeCommand(stdio Stdio) *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve [-c FILE] [--data DIR] [--check] [--admin ADDR]",
		Short: "Run the MQTT broker",
		Long: `Run the MQTT broker.

Without -c, Moat starts its secure default: one TLS listener on port 8883
that requires client certificates issued by a local CA, which is created in
DIR/ca (default moat-data/ca) on first run together with a server
certificate for this host. Anonymous access is refused and there is no
plain listener.

FILE is either Moat's YAML configuration (see examples/moat.yaml) or a
mosquitto.conf, which runs unchanged. --check builds everything serve
would, loading every certificate, key, CA bundle and CRL, without binding
a port, and exits: non-zero with every problem at its file:line.
SIGHUP (or moat reload) reloads the configuration: certificates, keys, CA
bundles and CRLs (their contents and paths), password files, access
policies, limits, rate limits, detectors, log.level and profile change
live; a reload that changes anything else is refused as a whole, naming
each such setting (docs/operations.md lists every setting).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), stdio, o, cmd.Flags().Changed("data"))
		},
	}
	cmd.Flags().StringVarP(&o.configFile, "config", "c", "", "configuration `FILE` (Moat YAML or mosquitto.conf)")
	cmd.Flags().StringVar(&o.dataDir, "data", "moat-data", "data `DIR` for the built-in CA and state")
	cmd.Flags().BoolVar(&o.check, "check", false, "check the configuration and the files it names without binding, and exit")
	cmd.Flags().StringSliceVar(&o.sans, "san", nil, "names of the built-in server certificate: DNS:name,IP:addr; auto = localhost, the host name and its addresses (the default)")
	cmd.Flags().StringVar(&o.profile, "profile", "", "security `PROFILE` (open, secure-network, secure-transport, industry; overrides the file's profile; see docs/profiles.md)")
	cmd.Flags().StringVar(&o.admin, "admin", "", "serve the admin API, metrics and dashboard on `ADDR` (loopback unless HTTPS; see docs/operations.md)")
	cmd.Flags().StringVar(&o.pprof, "pprof", "", "serve Go runtime profiles on loopback `ADDR` (e.g. 127.0.0.1:6060), for performance work")
	return cmd
}

func loadServeConfig(o serveOptions, dataSet bool) (*config.Config, error) {
	var cfg *config.Config
	if o.configFile == "" {
		cfg = config.Default()
	} else {
		var err error
		if cfg, err = config.Load(o.configFile); err != nil {
			return nil, err
		}
	}
	if dataSet || o.configFile == "" {
		cfg.DataDir = o.dataDir
	}
	if o.profile != "" {
		if !slices.Contains(config.Profiles, o.profile) {
			return nil, fmt.Errorf("serve: --profile %q must be one of %s", o.profile, strings.Join(config.Profiles, ", "))
		}
		cfg.Profile = o.profile
	}
	return cfg, nil
}

// runServe is `moat serve`: load the file, build the start-up plan, and
// either report on it (--check) or bind and serve it until ctx ends.
func runServe(ctx context.Context, stdio Stdio, o serveOptions, dataSet bool) error {
	cfg, err := loadServeConfig(o, dataSet)
	if err != nil {
		return err
	}
	if o.check {
		return checkServe(stdio, cfg, o.sans)
	}
	log, level, closeLog, err := newLevelLogger(cfg.Log, stdio.Err)
	if err != nil {
		return err
	}
	defer closeLog()
	logConfig(log, cfg)
	logFIPS(log)
	plan, err := buildPlan(cfg, log, false, o.sans...)
	if err != nil {
		return err
	}
	defer plan.close()
	plan.live = &liveConfig{load: func() (*config.Config, error) { return loadServeConfig(o, dataSet) }, level: level}
	if plan.admin, err = planAdmin(plan, o.admin); err != nil {
		return err
	}
	for _, w := range plan.warnings {
		log.Warn("config: " + w)
	}
	if cfg.PIDFile != "" {
		if err := os.WriteFile(cfg.PIDFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return fmt.Errorf("serve: writing pid_file: %w", err)
		}
		defer os.Remove(cfg.PIDFile)
	}
	tuneGC(ctx, gcHeadroom)
	trim := startTrimmer(trimInterval)
	defer trim.close()
	if o.pprof != "" {
		stop, err := startPprof(ctx, o.pprof, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	return plan.serve(ctx, stdio)
}

// checkServe is `moat serve --check`: it builds the same plan as serve,
// which opens and parses every file, and closes it. Only whether the
// addresses are free is left unknown.
func checkServe(stdio Stdio, cfg *config.Config, sans []string) error {
	plan, err := buildPlan(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), true, sans...)
	if err != nil {
		return err
	}
	plan.close()
	if _, err := planAdmin(plan, ""); err != nil {
		return err
	}
	for _, w := range append(cfg.Warnings(), plan.warnings...) {
		fmt.Fprintf(stdio.Err, "warning: %s\n", w)
	}
	for _, n := range plan.notes {
		fmt.Fprintf(stdio.Err, "note: %s\n", n)
	}
	src := cfg.Source
	if src == "" {
		src = "built-in default"
	}
	fmt.Fprintf(stdio.Out, "%s: configuration OK (%s syntax, %d listener(s))\n", src, formatName(cfg.Format), len(cfg.Listeners))
	return nil
}

// logConfig logs what the file asks the operator to hear about.
func logConfig(log *slog.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings() {
		log.Warn("config: " + w)
	}
	for _, n := range cfg.Notes {
		log.Debug("config: " + n)
	}
	if sd := cfg.SafeDefaults(); len(sd) > 0 {
		log.Info("config: mosquitto.conf leaves these limits unlimited or has no key for them; Moat's safe defaults apply (each can be set in the file, see docs/configuration.md)",
			"limits", strings.Join(sd, " "))
	}
}

// serve binds every listener, serves them until ctx ends or one fails,
// and shuts the broker down.
func (p *servePlan) serve(ctx context.Context, stdio Stdio) error {
	hup := catchSIGHUP()
	if err := p.bind(ctx); err != nil {
		signal.Stop(hup)
		return err
	}
	if p.zero != nil {
		p.zero.printInstructions(stdio.Err, p.listeners[0].ln.Addr().String())
		p.access.printDefaultPolicy(stdio.Err, p.zero.caDir)
	}
	stopHUP := p.reloadOnSIGHUP(hup)
	defer stopHUP()
	stopAdmin, err := p.serveAdmin(ctx)
	if err != nil {
		return err
	}
	defer stopAdmin()

	errc := make(chan error, len(p.listeners))
	var wg sync.WaitGroup
	for _, pl := range p.listeners {
		wg.Go(func() {
			if err := p.srv.Serve(ctx, pl.ln, pl.lc); err != nil && !errors.Is(err, broker.ErrServerClosed) {
				errc <- fmt.Errorf("serve: listener %s: %w", pl.lc.Name, err)
			}
		})
	}
	var serveErr error
	// A node removed from its cluster while it runs keeps running and
	// refuses every client (CONNACK 0x9C sends them elsewhere); one that
	// finds at start that it was removed stops with the reason.
	var removed <-chan struct{}
	if p.cluster != nil {
		removed = p.cluster.Removed()
	}
wait:
	for {
		select {
		case <-ctx.Done():
			p.log.Info("serve: shutting down")
			break wait
		case serveErr = <-errc:
			p.log.Error("serve: listener failed; shutting down", "err", serveErr)
			break wait
		case <-removed:
			removed = nil
			if err := p.cluster.RemovedErr(); errors.Is(err, cluster.ErrRejoinRefused) {
				serveErr = fmt.Errorf("serve: %w", err)
				p.log.Error("serve: this node refuses to rejoin the cluster it was removed from; shutting down", "err", err)
				break wait
			}
		}
	}
	stopHUP() // a reload in progress finishes (and is audited) first
	p.shutdown()
	wg.Wait()
	p.close() // the listeners, the TLS managers, the plan's goroutines
	p.log.Info("serve: stopped")
	return serveErr
}

// bind opens every planned listener's socket. A listener that cannot bind
// stops the start-up, closing the others, unless it is optional (the [::1]
// listener of Mosquitto's local-only mode); those are dropped from the
// plan.
func (p *servePlan) bind(ctx context.Context) error {
	bound := p.listeners[:0]
	for _, pl := range p.listeners {
		ln, err := listener.Listen(ctx, pl.net)
		if err != nil {
			if pl.conf.Optional {
				p.log.Info("serve: optional listener not started", "listener", pl.conf.Name, "err", err)
				if pl.mgr != nil {
					pl.mgr.Close()
				}
				continue
			}
			for _, b := range bound {
				b.ln.Close()
			}
			return fmt.Errorf("serve: listener %s: %w", pl.conf.Name, err)
		}
		pl.ln = ln
		bound = append(bound, pl)
		p.log.Info("serve: listener ready", "listener", pl.conf.Name, "address", ln.Addr().String(), "transport", pl.conf.Transport,
			"client_certificates", clientAuthOf(pl.conf), "anonymous", pl.conf.AllowAnonymous)
	}
	p.listeners = bound
	if len(bound) == 0 {
		return errors.New("serve: no listener could be started")
	}
	p.cleanup = append(p.cleanup, func() {
		for _, pl := range bound {
			pl.ln.Close()
		}
	})
	return nil
}

func formatName(f config.Format) string {
	if f == "" {
		return "default"
	}
	return string(f)
}

func clientAuthOf(l *config.Listener) string {
	if l.TLS == nil {
		return "none"
	}
	return string(l.TLS.ClientAuth)
}
