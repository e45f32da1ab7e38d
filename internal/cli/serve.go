package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/listener"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/tlsconf"
)

type serveOptions struct {
	configFile string
	dataDir    string
	check      bool
	pprof      string
	sans       []string
}

func init() {
	register(func(stdio Stdio) *cobra.Command {
		var o serveOptions
		cmd := &cobra.Command{
			Use:   "serve [-c FILE] [--data DIR] [--check]",
			Short: "Run the MQTT broker",
			Long: `Run the MQTT broker.

Without -c, Moat starts its secure default: one TLS listener on port 8883
that requires client certificates issued by a local CA, which is created in
DIR/ca (default moat-data/ca) on first run together with a server
certificate for this host. Anonymous access is refused and there is no
plain listener.

FILE is either Moat's YAML configuration (see examples/moat.yaml) or a
mosquitto.conf, which runs unchanged. --check validates FILE and exits.
SIGHUP reloads certificates, keys, CA bundles and CRLs.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				return runServe(cmd.Context(), stdio, o, cmd.Flags().Changed("data"))
			},
		}
		cmd.Flags().StringVarP(&o.configFile, "config", "c", "", "configuration `FILE` (Moat YAML or mosquitto.conf)")
		cmd.Flags().StringVar(&o.dataDir, "data", "moat-data", "data `DIR` for the built-in CA and state")
		cmd.Flags().BoolVar(&o.check, "check", false, "validate the configuration and exit")
		cmd.Flags().StringSliceVar(&o.sans, "san", nil, "names of the built-in server certificate: DNS:name,IP:addr; auto = localhost, the host name and its addresses (the default)")
		cmd.Flags().StringVar(&o.pprof, "pprof", "", "serve Go runtime profiles on loopback `ADDR` (e.g. 127.0.0.1:6060), for performance work")
		return cmd
	})
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
	return cfg, nil
}

func runServe(ctx context.Context, stdio Stdio, o serveOptions, dataSet bool) error {
	cfg, err := loadServeConfig(o, dataSet)
	if err != nil {
		return err
	}
	if o.check {
		for _, w := range cfg.Warnings() {
			fmt.Fprintf(stdio.Err, "warning: %s\n", w)
		}
		// Build everything that can fail without binding sockets.
		if _, err := brokerConfig(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
			return err
		}
		src := cfg.Source
		if src == "" {
			src = "built-in default"
		}
		fmt.Fprintf(stdio.Out, "%s: configuration OK (%s syntax, %d listener(s))\n", src, formatName(cfg.Format), len(cfg.Listeners))
		return nil
	}

	log, closeLog, err := newLogger(cfg.Log, stdio.Err)
	if err != nil {
		return err
	}
	defer closeLog()
	for _, w := range cfg.Warnings() {
		log.Warn("config: " + w)
	}
	for _, n := range cfg.Notes {
		log.Debug("config: " + n)
	}
	if cfg.Persistence.Enabled {
		log.Warn("persistence: the disk store is not available in this version; sessions, queued and retained messages are kept in memory only and are lost on restart")
	}
	if cfg.PIDFile != "" {
		if err := os.WriteFile(cfg.PIDFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return fmt.Errorf("serve: writing pid_file: %w", err)
		}
		defer os.Remove(cfg.PIDFile)
	}

	bcfg, err := brokerConfig(cfg, log)
	if err != nil {
		return err
	}
	tuneGC(ctx, gcHeadroom)
	if o.pprof != "" {
		if err := startPprof(ctx, o.pprof, log); err != nil {
			return err
		}
	}
	auth := &certAuthenticator{mappings: map[string]tlsconf.IdentityMapping{}, proxy: map[string]tlsconf.IdentitySource{}}
	bcfg.Authenticator = auth
	srv, err := broker.New(bcfg)
	if err != nil {
		return err
	}

	// Build every listener before serving any, so a bad one stops the
	// start-up instead of leaving a half-running broker.
	type running struct {
		ln  *listener.Listener
		lc  broker.ListenerConfig
		mgr *tlsconf.Manager
	}
	var lns []running
	closeAll := func() {
		for _, r := range lns {
			r.ln.Close()
			if r.mgr != nil {
				r.mgr.Close()
			}
		}
	}
	var zc *zeroConfig
	for i := range cfg.Listeners {
		l := &cfg.Listeners[i]
		r := running{}
		lcfg := listener.Config{
			Name:      l.Name,
			Address:   l.Address,
			Logger:    log,
			WebSocket: listener.WebSocketConfig{Path: l.WebSocketPath},
		}
		if lcfg.Transport, err = listener.ParseTransport(string(l.Transport)); err != nil {
			closeAll()
			return err
		}
		if l.Network != "" && l.Network != "tcp" {
			closeAll()
			return fmt.Errorf("serve: listener %s: network %q (socket_domain) is not supported yet; use an IPv4 or IPv6 address instead", l.Name, l.Network)
		}
		if l.ProxyProtocol.Enabled {
			pc := &listener.ProxyConfig{}
			for _, s := range l.ProxyProtocol.Trusted {
				p, err := parsePrefix(s)
				if err != nil {
					closeAll()
					return fmt.Errorf("serve: listener %s: proxy_protocol.trusted %q: %w", l.Name, s, err)
				}
				pc.Trusted = append(pc.Trusted, p)
			}
			lcfg.Proxy = pc
			if u := l.ProxyProtocol.UsernameFrom; u != "" && u != config.IdentityNone {
				src, err := tlsconf.ParseIdentitySource(u)
				if err != nil {
					closeAll()
					return fmt.Errorf("serve: listener %s: proxy_protocol.username_from: %w", l.Name, err)
				}
				auth.proxy[l.Name] = src
			}
		}
		if l.TLS != nil {
			tc := l.TLS
			if tc.Cert == "" || (tc.ClientAuth != config.ClientAuthNone && tc.ClientCA == "" && tc.ClientCADir == "") {
				if zc == nil {
					names, err := zeroServerNames(cfg, o.sans)
					if err != nil {
						closeAll()
						return err
					}
					if zc, err = prepareZeroConfig(cfg.DataDir, names, log); err != nil {
						closeAll()
						return err
					}
				}
			}
			tlc, err := tlsListenerConfig(l, zc, log)
			if err != nil {
				closeAll()
				return err
			}
			mgr, err := tlsconf.New(tlc)
			if err != nil {
				closeAll()
				return fmt.Errorf("serve: listener %s: %w", l.Name, err)
			}
			r.mgr = mgr
			lcfg.TLS = mgr.TLSConfig()
			auth.mappings[l.Name] = tlc.Identity
			r.lc.CertWatcher = certWatcher{mgr}
		}
		ln, err := listener.Listen(ctx, lcfg)
		if err != nil {
			if r.mgr != nil {
				r.mgr.Close()
			}
			if l.Optional {
				log.Info("serve: optional listener not started", "listener", l.Name, "err", err)
				continue
			}
			closeAll()
			return fmt.Errorf("serve: listener %s: %w", l.Name, err)
		}
		r.ln = ln
		r.lc.Name = l.Name
		anon := l.AllowAnonymous
		r.lc.AllowAnonymous = &anon
		r.lc.MaxConnections = l.MaxConnections
		q := byte(l.MaxQoS)
		r.lc.MaxQoS = &q
		alias := l.MaxTopicAlias
		r.lc.TopicAliasMaximum = &alias
		r.lc.RefuseZeroLengthClientID = !l.AllowZeroLengthClientID
		r.lc.AutoIDPrefix = l.AutoIDPrefix
		r.lc.UseUsernameAsClientID = l.UseUsernameAsClientID
		lns = append(lns, r)
		log.Info("serve: listener ready", "listener", l.Name, "address", ln.Addr().String(), "transport", l.Transport,
			"client_certificates", clientAuthOf(l), "anonymous", l.AllowAnonymous)
	}
	if len(lns) == 0 {
		return errors.New("serve: no listener could be started")
	}
	if zc != nil {
		zc.printInstructions(stdio.Err, lns[0].ln.Addr().String())
	}

	// SIGHUP reloads TLS material on every listener.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Info("serve: SIGHUP received; reloading certificates, CA bundles and CRLs")
			for _, r := range lns {
				if r.mgr != nil {
					if err := r.mgr.Reload(); err != nil {
						log.Error("serve: reload failed; keeping the previous TLS configuration", "listener", r.lc.Name, "err", err)
					}
				}
			}
		}
	}()

	errc := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, r := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ctx, r.ln, r.lc); err != nil && !errors.Is(err, broker.ErrServerClosed) {
				errc <- fmt.Errorf("serve: listener %s: %w", r.lc.Name, err)
			}
		}()
	}
	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("serve: shutting down")
	case serveErr = <-errc:
		log.Error("serve: listener failed; shutting down", "err", serveErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("serve: shutdown did not finish in time", "err", err)
	}
	closeAll()
	wg.Wait()
	log.Info("serve: stopped")
	return serveErr
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

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// brokerConfig maps the file's settings onto broker.Config.
func brokerConfig(cfg *config.Config, log *slog.Logger) (broker.Config, error) {
	lim := cfg.Limits
	b := broker.Config{
		Logger:                     log,
		MessageSizeLimit:           uint32(lim.MessageSizeLimit),
		ConnectTimeout:             lim.ConnectTimeout.D(),
		MaxKeepAlive:               uint16(lim.MaxKeepalive),
		MaxInflight:                lim.MaxInflight,
		MaxQueued:                  lim.MaxQueuedMessages,
		QueueQoS0:                  lim.QueueQoS0,
		MaxTopicLevels:             lim.MaxTopicLevels,
		MaxSubscriptions:           lim.MaxSubscriptions,
		MaxSessions:                lim.MaxSessions,
		QuietConnections:           !cfg.Log.ConnectionMessages,
		PersistentClientExpiration: cfg.Sessions.PersistentClientExpiration.D(),
		IgnoreSessionOwner:         cfg.Sessions.IgnoreOwner,
		RetainDisabled:             !cfg.RetainAvailable,
		SysInterval:                cfg.SysInterval.D(),
		Version:                    "moat " + Version,
	}
	switch {
	case lim.MaxPacketSize == 0 || lim.MaxPacketSize > packet.MaxPacketSizeLimit:
		b.MaxPacketSize = packet.MaxPacketSizeLimit
	default:
		b.MaxPacketSize = uint32(lim.MaxPacketSize)
	}
	if b.SysInterval == 0 {
		b.SysInterval = -1
	}
	if b.MaxInflight == 0 {
		b.MaxInflight = 65535 // mosquitto: 0 means no limit
	}
	if b.MaxQueued == 0 {
		// mosquitto: 0 means no limit. Memory must stay bounded, so "no
		// limit" is a large one.
		b.MaxQueued = 1_000_000
		log.Warn("config: max_queued_messages 0 (unlimited) is capped at 1000000 messages per session")
	}
	if lim.MaxInflightBytes != 0 || lim.MaxQueuedBytes != 0 {
		return b, errors.New("config: max_inflight_bytes and max_queued_bytes are not supported yet; remove them (message counts are enforced)")
	}
	// All listeners share one broker; the per-listener settings that the
	// broker keeps server-wide must agree.
	return b, nil
}

// tlsListenerConfig maps a listener's TLS settings onto tlsconf, filling
// in the built-in CA where the file left certificates out.
func tlsListenerConfig(l *config.Listener, zc *zeroConfig, log *slog.Logger) (tlsconf.ListenerConfig, error) {
	tc := l.TLS
	out := tlsconf.ListenerConfig{Name: l.Name, Logger: log}
	cert, key := tc.Cert, tc.Key
	if cert == "" {
		cert, key = zc.serverCert, zc.serverKey
	}
	out.Certificates = []tlsconf.KeyPair{{CertFile: cert, KeyFile: key}}
	for _, ck := range tc.SNICertificates {
		out.Certificates = append(out.Certificates, tlsconf.KeyPair{CertFile: ck.Cert, KeyFile: ck.Key})
	}
	out.CAFile, out.CAPath = tc.ClientCA, tc.ClientCADir
	if out.CAFile == "" && out.CAPath == "" && tc.ClientAuth != config.ClientAuthNone {
		out.CAFile = zc.caFile
		out.CRLFiles = append(out.CRLFiles, zc.crlFile)
	}
	switch tc.ClientAuth {
	case config.ClientAuthNone:
		out.ClientAuth = tlsconf.ClientAuthNone
	case config.ClientAuthOptional:
		out.ClientAuth = tlsconf.ClientAuthOptional
	default:
		out.ClientAuth = tlsconf.ClientAuthRequired
	}
	if tc.MinVersion != "" {
		v, err := tlsconf.ParseTLSVersion("tlsv" + tc.MinVersion)
		if err != nil {
			return out, fmt.Errorf("serve: listener %s: %w", l.Name, err)
		}
		out.MinVersion = v
	}
	for _, name := range tc.CipherSuites {
		id, ok := suiteID(name)
		if !ok {
			return out, fmt.Errorf("serve: listener %s: unknown cipher suite %q", l.Name, name)
		}
		out.CipherSuites = append(out.CipherSuites, id)
	}
	out.CRLFiles = append(out.CRLFiles, tc.CRL...)
	if tc.CRLStale == "warn" {
		out.CRLStalePolicy = tlsconf.CRLStaleWarn
	}
	switch tc.OCSP.Mode {
	case "fail-open":
		out.OCSP.Mode = tlsconf.OCSPFailOpen
	case "fail-closed":
		out.OCSP.Mode = tlsconf.OCSPFailClosed
	}
	out.OCSP.Timeout = tc.OCSP.Timeout.D()
	out.OCSP.CacheTTL = tc.OCSP.CacheTTL.D()
	out.OCSP.LiveRecheck = tc.OCSP.Recheck.D()
	var err error
	if out.Identity.Username, err = tlsconf.ParseIdentitySource(tc.Identity.UsernameFrom); err != nil {
		return out, fmt.Errorf("serve: listener %s: %w", l.Name, err)
	}
	if out.Identity.ClientID, err = tlsconf.ParseIdentitySource(tc.Identity.ClientIDFrom); err != nil {
		return out, fmt.Errorf("serve: listener %s: %w", l.Name, err)
	}
	if tc.Identity.BindClientID {
		if tc.Identity.ClientIDFrom == config.IdentityNone || tc.Identity.ClientIDFrom == "" {
			return out, fmt.Errorf("serve: listener %s: bind_client_id needs client_id_from", l.Name)
		}
		// Binding: the client ID must equal the certificate identity
		// rather than being replaced by it.
		out.Identity.BindClientID = "{" + tc.Identity.ClientIDFrom + "}"
		out.Identity.ClientID = tlsconf.IdentityNone
	}
	return out, nil
}

func suiteID(name string) (uint16, bool) {
	for _, s := range tls.CipherSuites() {
		if s.Name == name {
			return s.ID, true
		}
	}
	for _, s := range tls.InsecureCipherSuites() {
		if s.Name == name {
			return s.ID, true
		}
	}
	return 0, false
}

// certWatcher adapts tlsconf.Manager to broker.CertWatcher.
type certWatcher struct{ m *tlsconf.Manager }

func (w certWatcher) Watch(chain []*x509.Certificate, drop func(string)) func() {
	stop, err := w.m.Watch(chain, func(r tlsconf.Reason) { drop("client certificate " + r.String()) })
	if err != nil {
		// The chain no longer verifies (revoked between handshake and
		// CONNECT, for example): end the session now.
		go drop(err.Error())
		return func() {}
	}
	return stop
}
