package cli

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/cluster"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/listener"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/tlsconf"
)

// servePlan is everything `moat serve` builds from a configuration before
// it binds a socket: the broker's Config and Server, and for every listener
// its listener.Config, broker.ListenerConfig and TLS Manager (every
// certificate, key, CA bundle and CRL opened and parsed). `serve` and
// `serve --check` build the same plan; --check then closes it, serve binds
// and runs it. See docs/design/startup.md.
//
// A plan owns what it started: close releases it in reverse order, and
// waits for the goroutines the plan started (SIGHUP reloads, drops of
// sessions whose certificate was revoked).
type servePlan struct {
	cfg   *config.Config
	log   *slog.Logger
	check bool
	sans  []string // --san: names of the built-in server certificate

	broker  broker.Config
	srv     *broker.Server
	auth    *certAuthenticator
	access  *accessPlan // authentication chains and access policies
	defense *defense    // guard and audit log; nil when both are off
	// guardNow and guardTick, when set, are the guard's clock and poll
	// ticker (tests); nil: the system clock.
	guardNow  func() time.Time
	guardTick <-chan time.Time
	// recheckTick, when set, replaces the tickers of the LDAP re-checks
	// (tests); nil: one ticker per backend's recheck_interval.
	recheckTick <-chan time.Time
	listeners   []*plannedListener
	zero        *zeroConfig // the built-in CA, when a listener uses it
	zeroOK      bool        // its files exist and can be loaded
	crls        *caCRLs     // nil for --check: it re-signs CRLs
	admin       *adminPlan  // nil: no admin API (serve_admin.go)
	live        *liveConfig // serve only: what a reload needs (serve_reload.go)

	// revocations are the cluster's revocation lists
	// (serve_cluster_revoked.go); nil without a cluster.
	revocations *clusterRevocations
	// clusterSec connects the node's security state to the cluster; nil
	// without a cluster.
	clusterSec *clusterSecurity

	warnings []string // to log (serve) or print (--check)
	notes    []string // what serve does at start that --check does not (creating the built-in CA)
	errs     []planProblem
	cleanup  []func()
	tasks    sync.WaitGroup // goroutines started by the plan's adapters

	// store is the durable store, nil when persistence is off (and for
	// --check); TLS listeners keep their ticket keys in it.
	store *store.Store

	// cluster is this node's membership, nil without a cluster section
	// (and for --check); serve_cluster.go.
	cluster *cluster.Node
}

// plannedListener is one listener, built but not bound.
type plannedListener struct {
	conf *config.Listener
	net  listener.Config
	lc   broker.ListenerConfig
	mgr  *tlsconf.Manager
	ln   *listener.Listener // set by bind
}

// buildPlan translates cfg and opens every file it names. It returns every
// problem at once, each with the file:line of the setting where the
// configuration has one; on error nothing is left open. check builds a
// plan for --check: it changes nothing on disk (no built-in CA is created,
// no CRL re-signed) and starts no network requests. The caller must close
// the plan.
func buildPlan(cfg *config.Config, log *slog.Logger, check bool, sans ...string) (*servePlan, error) {
	return newPlan(cfg, log, check, sans...).build()
}

// newPlan returns an empty plan for build; tests set its injected clocks
// in between.
func newPlan(cfg *config.Config, log *slog.Logger, check bool, sans ...string) *servePlan {
	return &servePlan{
		cfg:   cfg,
		log:   log,
		check: check,
		sans:  sans,
		auth:  &certAuthenticator{mappings: map[string]tlsconf.IdentityMapping{}, proxy: map[string]tlsconf.IdentitySource{}},
	}
}

// build is buildPlan's work.
func (p *servePlan) build() (*servePlan, error) {
	cfg, log, check := p.cfg, p.log, p.check
	if !check {
		p.crls = newCACRLs(log, time.Now)
	}
	p.planBroker()
	p.planStore()
	p.planDefense()
	for i := range cfg.Listeners {
		p.planListener(i)
	}
	p.planAccess()
	p.planProfile()
	p.planCluster()
	if len(p.errs) == 0 {
		p.startBroker()
	}
	if len(p.errs) > 0 {
		p.close()
		return nil, p.err()
	}
	return p, nil
}

// planProblem is one problem of a plan, at the line of the setting.
type planProblem struct {
	file string
	line int
	msg  string // starting with "file:line: " where there is one
}

// err joins the problems in file and line order.
func (p *servePlan) err() error {
	slices.SortStableFunc(p.errs, func(a, b planProblem) int {
		return cmp.Or(cmp.Compare(a.file, b.file), cmp.Compare(a.line, b.line))
	})
	msgs := make([]string, len(p.errs))
	for i, e := range p.errs {
		msgs[i] = e.msg
	}
	word := "problems"
	if len(msgs) == 1 {
		word = "problem"
	}
	return fmt.Errorf("serve: %d %s:\n%s", len(msgs), word, strings.Join(msgs, "\n"))
}

// close releases everything the plan opened, newest first, and waits for
// the plan's goroutines. It is safe to call more than once.
func (p *servePlan) close() {
	for i := len(p.cleanup) - 1; i >= 0; i-- {
		p.cleanup[i]()
	}
	p.cleanup = nil
	p.tasks.Wait()
}

// problem records an error at the setting path ("limits.max_inflight",
// "listeners[0].tls.key"), prefixed with its file:line.
// An error joined of several (errors.Join) is recorded one by one, each
// after label; the package prefixes of the errors ("tlsconf: ") are left
// out, since the whole starts with "serve: ".
func (p *servePlan) problem(path, label string, err error) {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			p.problem(path, label, e)
		}
		return
	}
	msg := err.Error()
	for _, pkg := range []string{"serve: ", "tlsconf: ", "listener: ", "broker: "} {
		msg = strings.TrimPrefix(msg, pkg)
	}
	pr := planProblem{msg: label + msg}
	if pos := p.cfg.Pos(path); pos != "" {
		pr.msg = pos + ": " + pr.msg
		pr.file = pos
		if i := strings.LastIndexByte(pos, ':'); i >= 0 {
			if n, err := strconv.Atoi(pos[i+1:]); err == nil {
				pr.file, pr.line = pos[:i], n
			}
		}
	}
	p.errs = append(p.errs, pr)
}

// listenerProblem records err for listener i at its key (a path below
// listeners[i], "" for the listener itself), naming the listener.
func (p *servePlan) listenerProblem(i int, key, label string, err error) {
	path := fmt.Sprintf("listeners[%d]", i)
	if key != "" {
		path += "." + key
	}
	p.problem(path, fmt.Sprintf("listener %q: %s", p.cfg.Listeners[i].Name, label), err)
}

// planBroker translates the file's global settings into broker.Config.
// Every value means what docs/configuration.md says; where the broker
// spells a meaning differently (0 = unlimited), the translation is written
// here, once.
func (p *servePlan) planBroker() {
	cfg, lim := p.cfg, p.cfg.Limits
	b := broker.Config{
		Logger:                     p.log,
		MessageSizeLimit:           uint32(lim.MessageSizeLimit),
		ConnectTimeout:             lim.ConnectTimeout.D(),
		ReauthGrace:                lim.ReauthGrace.D(),
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

		// Memory limits (docs/configuration.md, limits).
		MaxConnections:              lim.MaxConnections,
		PreAuthMaxPacketSize:        uint32(min(lim.MaxPreAuthPacketSize, config.MaxMQTTPacket)),
		MaxTopicLength:              lim.MaxTopicLength,
		MaxSubscriptionBytes:        int(lim.MaxSubscriptionBytes),
		MaxRetained:                 lim.MaxRetainedMessages,
		MaxRetainedBytes:            int64(lim.MaxRetainedBytes),
		MaxRetainedPerIdentity:      lim.MaxRetainedMessagesPerIdentity,
		MaxRetainedBytesPerIdentity: int64(lim.MaxRetainedBytesPerIdentity),
		ReadBudget:                  int64(lim.ReadBudget),
		MaxPacketSize:               uint32(lim.MaxPacketSize),
	}
	// max_packet_size 0: MQTT's own maximum (Validate bounds the others).
	if lim.MaxPacketSize == 0 {
		b.MaxPacketSize = packet.MaxPacketSizeLimit
	}
	// sys_interval 0 disables $SYS (the broker's zero means its default).
	if b.SysInterval == 0 {
		b.SysInterval = -1
	}
	// max_inflight 0, no limit: MQTT's packet identifiers allow at most
	// 65535 messages in flight, so that is the largest possible window.
	if b.MaxInflight == 0 {
		b.MaxInflight = maxInflightUnlimited
	}
	// max_queued_messages 0: Mosquitto's "no limit". Memory must stay
	// bounded, so Moat's documented meaning is a ceiling (Config.Warnings
	// says so).
	if b.MaxQueued == 0 {
		b.MaxQueued = config.MaxQueuedNoLimit
	}
	if lim.MaxInflightBytes != 0 {
		p.problem("limits.max_inflight_bytes", "", errors.New("limits.max_inflight_bytes is not supported yet; remove it (max_inflight, a message count, is enforced)"))
	}
	// Overload control: the config's 0 turns a mark off, the broker's
	// zero means its default.
	b.MaxQueuedBytes = int64(lim.MaxQueuedBytes)
	b.PushbackMessages, b.PushbackBytes, b.PushbackWait = lim.PushbackMessages, int64(lim.PushbackBytes), lim.PushbackWait.D()
	if b.PushbackMessages == 0 {
		b.PushbackMessages = -1
	}
	if b.PushbackBytes == 0 {
		b.PushbackBytes = -1
	}
	if lim.QueueFullPolicy == config.QueueFullBlock {
		b.QueueFullPolicy = broker.QueueBlock
	}
	b.Authenticator = p.auth
	b.CheckRetainSource = cfg.CheckRetainSource
	switch cfg.DeniedPublishV3 {
	case "", "drop":
	case "disconnect":
		b.DisconnectDeniedPublishV3 = true
	default:
		p.problem("denied_publish_v3", "", fmt.Errorf("denied_publish_v3 %q: want drop or disconnect", cfg.DeniedPublishV3))
	}
	p.broker = b
}

// maxInflightUnlimited is the broker value for max_inflight 0.
const maxInflightUnlimited = 65535

// startBroker makes the broker Server, which validates broker.Config once
// more. It starts the $SYS publisher, so the plan shuts it down on close.
func (p *servePlan) startBroker() {
	srv, err := broker.New(p.broker)
	if err != nil {
		p.problem("limits", "", err)
		return
	}
	p.srv = srv
	if p.cluster != nil {
		p.cluster.Attach(srv)
	}
	if p.access != nil {
		p.access.srv.Store(srv)
	}
	if p.defense != nil {
		p.defense.srv.Store(srv)
	}
	p.cleanup = append(p.cleanup, p.shutdown)
}

// shutdown stops the broker: it closes the listeners the broker serves and
// ends every connection, waiting at most 10 seconds. Calling it again does
// nothing more.
func (p *servePlan) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err != nil {
		p.log.Warn("serve: shutdown did not finish in time", "err", err)
	}
}

// planListener builds listener i without binding it.
func (p *servePlan) planListener(i int) {
	l := &p.cfg.Listeners[i]
	pl := &plannedListener{conf: l}
	pl.net = listener.Config{
		Name:      l.Name,
		Address:   l.Address,
		Network:   l.Network,
		Logger:    p.log,
		WebSocket: listener.WebSocketConfig{Path: l.WebSocketPath},
	}
	var err error
	if pl.net.Transport, err = listener.ParseTransport(string(l.Transport)); err != nil {
		p.listenerProblem(i, "transport", "", err)
	}
	if l.ProxyProtocol.Enabled {
		p.planProxy(i, pl)
	}
	if l.TLS != nil {
		p.planTLS(i, pl)
	}
	// The connection rates and address bans run in the listener, on the
	// bare socket, before TLS, WebSocket and the broker's own accept work.
	pl.net.Gate = p.defense.gate(l.Name)
	if pl.net.Transport == listener.WebSocketTLS {
		// Its handshakes are its HTTP server's: their failures are
		// counted and logged with the broker's own.
		pl.net.OnTLSError = func(remote net.Addr, err error) { p.srv.TLSHandshakeFailed(l.Name, remote, err) }
	}
	if err := pl.net.Validate(); err != nil {
		p.listenerProblem(i, "", "", err)
	}
	anon := l.AllowAnonymous
	q := byte(l.MaxQoS)
	alias := l.MaxTopicAlias
	pl.lc.Name = l.Name
	pl.lc.AllowAnonymous = &anon
	pl.lc.MaxConnections = l.MaxConnections
	pl.lc.MaxQoS = &q
	pl.lc.TopicAliasMaximum = &alias
	pl.lc.RefuseZeroLengthClientID = !l.AllowZeroLengthClientID
	pl.lc.AutoIDPrefix = l.AutoIDPrefix
	pl.lc.UseUsernameAsClientID = l.UseUsernameAsClientID
	p.listeners = append(p.listeners, pl)
}

// planProxy translates a listener's proxy_protocol settings.
func (p *servePlan) planProxy(i int, pl *plannedListener) {
	l := pl.conf
	pc := &listener.ProxyConfig{}
	for _, s := range l.ProxyProtocol.Trusted {
		pfx, err := parsePrefix(s)
		if err != nil {
			p.listenerProblem(i, "proxy_protocol.trusted", "", fmt.Errorf("proxy_protocol.trusted %q: %w", s, err))
			continue
		}
		pc.Trusted = append(pc.Trusted, pfx)
	}
	pl.net.Proxy = pc
	if u := l.ProxyProtocol.UsernameFrom; u != "" && u != config.IdentityNone {
		src, err := tlsconf.ParseIdentitySource(u)
		if err != nil {
			p.listenerProblem(i, "proxy_protocol.username_from", "proxy_protocol.username_from: ", err)
			return
		}
		p.auth.proxy[l.Name] = src
	}
}

// planTLS builds a listener's TLS Manager: the policy translated, every
// file checked and loaded. Problems of the translation and of the files
// are all reported.
func (p *servePlan) planTLS(i int, pl *plannedListener) {
	l := pl.conf
	// Until the Manager is built, a placeholder keeps the listener's own
	// validation to its other settings.
	pl.net.TLS = &tls.Config{}
	zc, ok := p.zeroFor(l.TLS)
	tlc := p.tlsListenerConfig(i, zc)
	if !ok {
		// The built-in CA is missing (--check; serve creates it) or could
		// not be prepared (reported): its files cannot be loaded.
		return
	}
	if !p.checkTLSFiles(i, tlc) {
		return
	}
	if p.check {
		tlc.DisableFileWatch = true
		tlc.DisableOCSPStapling = true
	} else {
		tlc.CRLRenewers = p.crls.renewers(l.Name, tlc.CRLFiles)
		if r := p.clusterRevocations(); r != nil {
			tlc.Revoked = r.revoked // revocations of the other nodes
		}
	}
	if p.store != nil {
		tlc.TicketKeyStore = storeTicketKeys{st: p.store, listener: l.Name}
	}
	mgr, err := tlsconf.New(tlc)
	if err != nil {
		p.tlsProblem(i, tlc, err)
		return
	}
	p.cleanup = append(p.cleanup, func() { mgr.Close() })
	pl.mgr = mgr
	pl.net.TLS = mgr.TLSConfig()
	p.auth.mappings[l.Name] = tlc.Identity
	pl.lc.CertWatcher = certWatcher{m: mgr, tasks: &p.tasks, d: p.defense}
}

// zeroFor returns the built-in CA's files when the listener needs them
// (no certfile, or client certificates without a CA of the file's own).
// serve creates the CA and the broker's certificate on first use; --check
// only looks, and reports ok false when serve would have to create them.
func (p *servePlan) zeroFor(tc *config.TLS) (zc *zeroConfig, ok bool) {
	if tc.Cert != "" && (tc.ClientAuth == config.ClientAuthNone || tc.ClientCA != "" || tc.ClientCADir != "") {
		return nil, true
	}
	if p.zero != nil {
		return p.zero, p.zeroOK
	}
	p.zero = zeroPaths(p.cfg.DataDir)
	names, err := zeroServerNames(p.cfg, p.sans)
	if err != nil {
		p.problem("tls.server_names", "", err)
		return p.zero, false
	}
	switch {
	case p.check && (!pki.Exists(p.zero.caDir) || needsServerCert(p.zero.serverCert)):
		p.notes = append(p.notes, fmt.Sprintf("the built-in CA in %s and the broker's certificate will be created or renewed at start; they are not checked here", p.zero.caDir))
	case p.check:
		p.zeroOK = true
	default:
		zc, err := prepareZeroConfig(p.cfg.DataDir, names, p.log)
		if err != nil {
			p.problem("data_dir", "", err)
			break
		}
		p.zero, p.zeroOK = zc, true
	}
	return p.zero, p.zeroOK
}

// zeroPaths names the built-in CA's files in dataDir, as
// prepareZeroConfig makes them.
func zeroPaths(dataDir string) *zeroConfig {
	caDir := filepath.Join(dataDir, "ca")
	return &zeroConfig{
		caDir:      caDir,
		caFile:     filepath.Join(caDir, "ca.pem"),
		crlFile:    filepath.Join(caDir, "crl.pem"),
		serverCert: filepath.Join(dataDir, "server.pem"),
		serverKey:  filepath.Join(dataDir, "server.key"),
	}
}

// tlsListenerConfig translates listener i's TLS settings into tlsconf,
// filling in the built-in CA where the file left certificates out. The
// cipher policy is tlsconf's: a suite it refuses is a problem naming the
// suite, unless allow_insecure_ciphers is set (tlsconf then warns at every
// start).
func (p *servePlan) tlsListenerConfig(i int, zc *zeroConfig) tlsconf.ListenerConfig {
	l := &p.cfg.Listeners[i]
	tc := l.TLS
	out := tlsconf.ListenerConfig{Name: l.Name, Logger: p.log}
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
			p.listenerProblem(i, "tls.min_version", "", err)
		}
		out.MinVersion = v
	}
	var err error
	switch {
	case tc.Ciphers != "":
		var ignored []string
		out.CipherSuites, ignored, err = tlsconf.ParseOpenSSLCiphers(tc.Ciphers, tc.AllowInsecureCiphers)
		for _, ig := range ignored {
			p.warnings = append(p.warnings, fmt.Sprintf("%s: listener %q: ciphers: %s (left out)", p.cfg.Pos(fmt.Sprintf("listeners[%d].tls.ciphers", i)), l.Name, ig))
		}
		if err != nil {
			p.listenerProblem(i, "tls.ciphers", "ciphers: ", err)
		}
	case len(tc.CipherSuites) > 0:
		if out.CipherSuites, err = tlsconf.ParseCipherSuiteNames(tc.CipherSuites, tc.AllowInsecureCiphers); err != nil {
			p.listenerProblem(i, "tls.cipher_suites", "cipher_suites: ", err)
		}
	}
	out.AllowInsecureCipherSuites = tc.AllowInsecureCiphers
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
	if out.Identity.Username, err = tlsconf.ParseIdentitySource(tc.Identity.UsernameFrom); err != nil {
		p.listenerProblem(i, "tls.identity.username_from", "", err)
	}
	if out.Identity.ClientID, err = tlsconf.ParseIdentitySource(tc.Identity.ClientIDFrom); err != nil {
		p.listenerProblem(i, "tls.identity.client_id_from", "", err)
	}
	if tc.Identity.BindClientID {
		if tc.Identity.ClientIDFrom == config.IdentityNone || tc.Identity.ClientIDFrom == "" {
			p.listenerProblem(i, "tls.identity.bind_client_id", "", errors.New("bind_client_id needs client_id_from"))
		}
		// Binding: the client ID must equal the certificate identity
		// rather than being replaced by it.
		out.Identity.BindClientID = "{" + tc.Identity.ClientIDFrom + "}"
		out.Identity.ClientID = tlsconf.IdentityNone
	}
	return out
}

// checkTLSFiles reports, at the key that names it, every file of tlc that
// cannot be read and every private key that is encrypted (Moat cannot ask
// for a passphrase). It returns false when there was such a problem:
// tlsconf would only repeat it with less context.
func (p *servePlan) checkTLSFiles(i int, tlc tlsconf.ListenerConfig) bool {
	tc := p.cfg.Listeners[i].TLS
	ok := true
	bad := func(key string, err error) {
		p.listenerProblem(i, key, "", err)
		ok = false
	}
	readable := func(key, what, path string) {
		if f, err := os.Open(path); err != nil {
			bad(key, fmt.Errorf("%s %s: %w", what, path, errors.Unwrap(err)))
		} else {
			f.Close()
		}
	}
	for n, kp := range tlc.Certificates {
		certKey, keyKey := "tls.cert", "tls.key"
		if n > 0 {
			certKey = fmt.Sprintf("tls.sni_certificates[%d].cert", n-1)
			keyKey = fmt.Sprintf("tls.sni_certificates[%d].key", n-1)
		}
		readable(certKey, "certfile", kp.CertFile)
		if err := checkKeyFile(kp.KeyFile); err != nil {
			bad(keyKey, err)
		}
	}
	if tlc.CAFile != "" {
		key := "tls.client_ca"
		if tc.ClientCA == "" {
			key = "data_dir"
		}
		readable(key, "cafile", tlc.CAFile)
	}
	if tlc.CAPath != "" {
		if fi, err := os.Stat(tlc.CAPath); err != nil || !fi.IsDir() {
			bad("tls.client_ca_dir", fmt.Errorf("capath %s is not a readable directory", tlc.CAPath))
		}
	}
	for _, f := range tlc.CRLFiles {
		key := "tls.crl"
		if !slices.Contains(tc.CRL, f) {
			key = "data_dir"
		}
		readable(key, "crlfile", f)
	}
	return ok
}

// checkKeyFile reports a private key file that cannot be read or is
// encrypted: PKCS #8 "ENCRYPTED PRIVATE KEY", or a legacy PEM block with
// "Proc-Type: 4,ENCRYPTED".
func checkKeyFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("keyfile %s: %w", path, errors.Unwrap(err))
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED") {
			return fmt.Errorf("keyfile %s is encrypted; Moat needs an unencrypted key file readable only by its user (decrypt with openssl pkey -in %s -out DECRYPTED.key, then chmod 600 it)", path, path)
		}
	}
	if !bytes.Contains(data, []byte("PRIVATE KEY")) {
		return fmt.Errorf("keyfile %s holds no PEM private key", path)
	}
	return nil
}

// tlsProblem records the problems tlsconf found loading listener i's
// files, each at the key naming the file it is about.
func (p *servePlan) tlsProblem(i int, tlc tlsconf.ListenerConfig, err error) {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			p.tlsProblem(i, tlc, e)
		}
		return
	}
	msg := err.Error()
	key := "tls.cert"
	switch {
	case strings.Contains(msg, "crlfile"):
		key = "tls.crl"
	case strings.Contains(msg, "capath"):
		key = "tls.client_ca_dir"
	case strings.Contains(msg, "cafile"):
		key = "tls.client_ca"
	case strings.Contains(msg, "cipher"):
		key = "tls.ciphers"
	}
	p.listenerProblem(i, key, "", err)
}

// parsePrefix reads a CIDR range or a single address.
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

// certWatcher adapts tlsconf.Manager to broker.CertWatcher.
type certWatcher struct {
	m     *tlsconf.Manager
	tasks *sync.WaitGroup // the plan's; waited for on close
	d     *defense        // records the cut-offs in the audit log; may be nil
}

func (w certWatcher) Watch(chain []*x509.Certificate, drop func(string)) func() {
	drop = w.d.cutoff(chain[0], drop)
	stop, err := w.m.Watch(chain, func(r tlsconf.Reason) { drop("client certificate " + r.String()) })
	if err != nil {
		// The chain no longer verifies (revoked between handshake and
		// CONNECT, for example): end the session now, outside the
		// caller's locks.
		w.tasks.Go(func() { drop(err.Error()) })
		return func() {}
	}
	return stop
}
