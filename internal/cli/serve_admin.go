package cli

import (
	"cmp"
	"context"
	"crypto/fips140"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/moatmq/moat/internal/admin"
	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/metrics"
	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/tlsconf"
)

// adminPlan is the admin listener of `moat serve --admin ADDR` (or YAML
// admin.listen), checked before anything binds.
type adminPlan struct {
	addr     string
	certFile string // HTTPS with this certificate and key; "" for plain HTTP on loopback
	keyFile  string

	// follow is set when the certificate is a listener's (not the
	// zero-config one): a reload that moves that listener's certificate
	// files moves the admin listener's too (followListenerCert).
	follow bool
	// mu guards certFile and keyFile once the listener runs, and setCert,
	// set by adminTLS, points its TLS configuration at other files.
	mu      sync.Mutex
	setCert func(cert, key string) error
}

// serverCert is the certificate file the admin listener serves.
func (ap *adminPlan) serverCert() string {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	return ap.certFile
}

// firstListenerCert is the certificate and key of the first TLS listener
// of cfg that names both: what the admin listener serves when the broker
// is not zero-config.
func firstListenerCert(cfg *config.Config) (cert, key string) {
	for _, l := range cfg.Listeners {
		if l.TLS != nil && l.TLS.Cert != "" && l.TLS.Key != "" {
			return l.TLS.Cert, l.TLS.Key
		}
	}
	return "", ""
}

// planAdmin decides how the admin API is served: HTTPS with the broker's
// certificate when it has one (the built-in one, else the first TLS
// listener's), plain HTTP only on a loopback address. nil when the admin
// API is off.
func planAdmin(p *servePlan, flag string) (*adminPlan, error) {
	addr := cmp.Or(flag, p.cfg.Admin.Listen)
	if addr == "" {
		return nil, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("serve: admin address %q: %w (use host:port, e.g. 127.0.0.1:9883)", addr, err)
	}
	ap := &adminPlan{addr: addr}
	switch {
	case p.zero != nil:
		ap.certFile, ap.keyFile = p.zero.serverCert, p.zero.serverKey
	default:
		ap.certFile, ap.keyFile = firstListenerCert(p.cfg)
		ap.follow = ap.certFile != ""
	}
	if ap.certFile == "" && !admin.IsLoopback(addr) {
		return nil, fmt.Errorf("serve: admin address %s is not loopback and the broker has no certificate for HTTPS; "+
			"listen on 127.0.0.1 or configure a TLS listener with cert and key", addr)
	}
	return ap, nil
}

// startAdmin serves the admin API, metrics and dashboard until ctx ends
// or stop is called; stop waits for the server's goroutine.
func (p *servePlan) startAdmin(ctx context.Context, ap *adminPlan) (stop func(), err error) {
	tokens := admin.NewTokens(filepath.Join(p.cfg.DataDir, admin.TokensFileName))
	if err := tokens.Err(); err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	// The bans file, which the metrics count when defense is off.
	bans := &guard.File{Path: p.bansFile()}
	scan := &clientScan{every: clientScanEvery}
	var (
		tc         *tls.Config
		verifyCert func(context.Context, []*x509.Certificate) error
		closeTLS   = func() {}
	)
	if ap.certFile != "" {
		if tc, verifyCert, closeTLS, err = p.adminTLS(ap); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil {
			closeTLS()
		}
	}()
	h, err := admin.New(admin.Config{
		Broker:       p.srv,
		Tokens:       tokens,
		Bans:         p.defense.banList(),
		CA:           p.adminCA(),
		AuditFile:    filepath.Join(p.cfg.DataDir, audit.DefaultFile),
		AuditKeyFile: filepath.Join(p.cfg.DataDir, audit.PubFile),
		Listeners:    p.adminListeners,
		Config:       func() any { return p.runningConfig() },
		Reload: func(context.Context) error {
			_, err := p.reloadConfig()
			return err
		},
		Posture:           func() admin.Posture { return p.adminPosture(ap) },
		Metrics:           metrics.Handler(metrics.SourceFunc(func() metrics.Snapshot { return p.metricsSnapshot(ap, bans, scan) })),
		Cluster:           p.adminCluster(),
		RemoveClusterNode: p.adminRemoveNode(),
		VerifyClientCert:  verifyCert,
		// Every change is recorded in the audit log (admin.action) when
		// it is on, and in the broker's log.
		Auditor: p.defense.adminAuditor(),
		Logger:  p.log,
	})
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	ln, err := net.Listen("tcp", ap.addr)
	if err != nil {
		return nil, fmt.Errorf("serve: admin listener: %w", err)
	}
	scheme := "http"
	if tc != nil {
		scheme = "https"
		if admin.IsLoopback(ap.addr) {
			// On loopback, where plain HTTP is accepted anyway, both
			// work on the one port.
			ln = newDualListener(ln, tc)
			scheme = "https (and http)"
		} else {
			ln = tls.NewListener(ln, tc)
		}
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error("admin: server stopped", "err", err)
		}
	})
	stopCtx := context.AfterFunc(ctx, func() { srv.Close() })
	p.log.Info("admin: serving the API, metrics and dashboard", "address", ln.Addr().String(), "scheme", scheme,
		"tokens", tokens.Path())
	if scheme == "http" {
		p.log.Warn("admin: plain HTTP on loopback: tokens cross the loopback interface unencrypted")
	}
	return func() {
		stopCtx()
		srv.Close()
		wg.Wait()
		closeTLS()
	}, nil
}

// adminTLS is the admin listener's TLS configuration. With the built-in
// CA in the data directory, it is a tlsconf.Manager that asks for a client
// certificate (optional: token clients send none) and verifies one against
// the CA and its CRL; verify checks it again on every request, so a
// certificate revoked while its connection stays open is refused at once.
// Without the CA, it serves the certificate alone and verify is nil.
// closeTLS releases what it started.
func (p *servePlan) adminTLS(ap *adminPlan) (tc *tls.Config, verify func(context.Context, []*x509.Certificate) error, closeTLS func(), err error) {
	// HTTP/2 only where the port speaks TLS alone (the dual listener
	// reads the first bytes itself).
	protos := []string{"h2", "http/1.1"}
	if admin.IsLoopback(ap.addr) {
		protos = []string{"http/1.1"}
	}
	dir := filepath.Join(p.cfg.DataDir, "ca")
	if p.zero != nil {
		dir = p.zero.caDir
	}
	caFile := filepath.Join(dir, "ca.pem")
	if _, err := os.Stat(caFile); err != nil {
		kp := &keyPairFiles{cert: ap.certFile, key: ap.keyFile}
		if _, err := kp.get(nil); err != nil {
			return nil, nil, nil, fmt.Errorf("serve: admin listener certificate: %w", err)
		}
		p.log.Info("admin: no built-in CA in the data directory: bearer tokens only, no admin client certificates", "ca", caFile)
		ap.setCert = kp.set
		return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.get, NextProtos: protos}, nil, func() {}, nil
	}
	lc := tlsconf.ListenerConfig{
		Name:         "admin",
		Certificates: []tlsconf.KeyPair{{CertFile: ap.certFile, KeyFile: ap.keyFile}},
		CAFile:       caFile,
		ClientAuth:   tlsconf.ClientAuthOptional,
		NextProtos:   protos,
		Logger:       p.log,
	}
	if crl := filepath.Join(dir, "crl.pem"); fileExists(crl) {
		lc.CRLFiles = []string{crl}
		if p.crls != nil {
			lc.CRLRenewers = p.crls.renewers("admin", lc.CRLFiles)
		}
	}
	if r := p.clusterRevocations(); r != nil {
		// Security: an operator's certificate revoked on another node
		// (which this node's copy of the CA may not know) is refused here
		// too, at the handshake and on every request (verify below).
		lc.Revoked = r.revoked
	}
	mgr, err := tlsconf.New(lc)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("serve: admin listener TLS: %w", err)
	}
	p.log.Info("admin: client certificates of the built-in CA with a role are accepted",
		"ca", caFile, "crl", lc.CRLFiles, "role_uri", admin.CertRoleURIPrefix+"viewer|operator")
	verify = func(ctx context.Context, chain []*x509.Certificate) error {
		_, err := mgr.VerifyChain(ctx, chain)
		return err
	}
	ap.setCert = func(cert, key string) error {
		f := mgr.Files()
		f.Certificates = []tlsconf.KeyPair{{CertFile: cert, KeyFile: key}}
		return mgr.SetFiles(f)
	}
	return mgr.TLSConfig(), verify, func() { mgr.Close() }, nil
}

// keyPairFiles serves a certificate and key from files, reloading them
// when either changes, so that a renewed broker certificate is used.
type keyPairFiles struct {
	cert, key string
	mu        sync.Mutex
	sig       string
	kp        *tls.Certificate
}

func (k *keyPairFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	sig := ""
	for _, f := range []string{k.cert, k.key} {
		if fi, err := os.Stat(f); err == nil {
			sig += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
		}
	}
	if k.kp != nil && sig == k.sig {
		return k.kp, nil
	}
	kp, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		if k.kp != nil {
			return k.kp, nil // keep serving the previous pair
		}
		return nil, err
	}
	k.kp, k.sig = &kp, sig
	return k.kp, nil
}

// set makes k serve cert and key from now on, once they load; on error
// it keeps the pair it serves.
func (k *keyPairFiles) set(cert, key string) error {
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cert, k.key, k.kp, k.sig = cert, key, &kp, ""
	return nil
}

// followListenerCert moves the admin listener onto the certificate files
// the reloaded configuration gives the listener it took its certificate
// from. A pair that does not load leaves the previous one in force
// (logged), as for the MQTT listeners.
func (p *servePlan) followListenerCert(check *servePlan) {
	ap := p.admin
	if ap == nil || !ap.follow {
		return
	}
	cert, key := firstListenerCert(check.cfg)
	ap.mu.Lock()
	same := cert == ap.certFile && key == ap.keyFile
	set := ap.setCert
	ap.mu.Unlock()
	if cert == "" || same || set == nil {
		return
	}
	if err := set(cert, key); err != nil {
		p.log.Error("serve: the admin listener's new certificate files do not load; it keeps its previous ones", "cert", cert, "err", err)
		return
	}
	ap.mu.Lock()
	ap.certFile, ap.keyFile = cert, key
	ap.mu.Unlock()
	p.log.Info("serve: the admin listener serves the listener's new certificate", "cert", cert, "key", key)
}

// adminCA opens the built-in CA on first use (nil when there is none).
func (p *servePlan) adminCA() func() (*pki.CA, error) {
	dir := filepath.Join(p.cfg.DataDir, "ca")
	if p.zero != nil {
		dir = p.zero.caDir
	}
	var mu sync.Mutex
	var ca *pki.CA
	return func() (*pki.CA, error) {
		mu.Lock()
		defer mu.Unlock()
		if ca != nil {
			return ca, nil
		}
		c, err := pki.Open(dir, pki.Config{Logger: p.log})
		if err != nil {
			return nil, err
		}
		ca = c
		return ca, nil
	}
}

func (p *servePlan) adminListeners() []admin.Listener {
	out := make([]admin.Listener, 0, len(p.listeners))
	active := map[string]int{}
	for _, c := range p.srv.Clients() {
		active[c.Client.Listener]++
	}
	for _, pl := range p.listeners {
		l := admin.Listener{
			Name: pl.lc.Name, Address: pl.ln.Addr().String(), Transport: string(pl.conf.Transport),
			AllowAnonymous: pl.conf.AllowAnonymous, ActiveConnections: active[pl.lc.Name],
		}
		if pl.mgr != nil {
			tc := pl.mgr.TLSConfig()
			l.TLS = true
			l.ClientAuth = clientAuthOf(pl.conf)
			l.MinVersion = tls.VersionName(tc.MinVersion)
			for _, g := range tc.CurvePreferences {
				l.Groups = append(l.Groups, g.String())
			}
			if pl.conf.TLS != nil {
				l.IdentitySource = pl.conf.TLS.Identity.UsernameFrom
			}
		}
		out = append(out, l)
	}
	return out
}

// crlFiles lists the CRL files the listeners check (their paths change
// on reload).
func (p *servePlan) crlFiles() []string {
	var files []string
	for _, l := range p.runningConfig().Listeners {
		if l.TLS != nil {
			files = append(files, l.TLS.CRL...)
		}
	}
	if p.zero != nil {
		files = append(files, p.zero.crlFile)
	}
	slices.Sort(files)
	return slices.Compact(files)
}

func readCRLTimes(path string) (this, next time.Time, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if b, _ := pem.Decode(data); b != nil {
		data = b.Bytes
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return
	}
	return crl.ThisUpdate, crl.NextUpdate, nil
}

func certNotAfter(path string) time.Time {
	data, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return time.Time{}
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return time.Time{}
	}
	return c.NotAfter
}

func (p *servePlan) adminPosture(ap *adminPlan) admin.Posture {
	ps := admin.Posture{
		Profile:    profileName(p.runningConfig()),
		FIPS:       fips140.Enabled(),
		FIPSMode:   tlsconf.FIPS140Mode(),
		FIPSModule: fips140.Version(),
		Detections: -1,
	}
	for _, a := range p.srv.Stats().Authentications {
		if !a.Success {
			ps.AuthFailures += a.N
		}
	}
	if g := p.defense.guard(); g != nil {
		ps.Detections = 0
		ps.DetectionsBy = map[string]int64{}
		for name, d := range g.Stats().Detectors {
			ps.Detections += int64(d.Detections)
			ps.DetectionsBy[name] = int64(d.Detections)
		}
	} else {
		ps.Notes = append(ps.Notes, "defense is off: no abuse detection")
	}
	if f := ap.serverCert(); f != "" {
		ps.ServerCertNotAfter = certNotAfter(f)
	}
	for _, f := range p.crlFiles() {
		this, next, err := readCRLTimes(f)
		if err == nil {
			ps.CRLs = append(ps.CRLs, admin.CRLInfo{File: f, ThisUpdate: this, NextUpdate: next})
		}
	}
	for _, pl := range p.listeners {
		if pl.mgr == nil {
			continue
		}
		o := pl.mgr.OCSPStatus()
		info := admin.OCSPInfo{Listener: pl.lc.Name, Mode: "off", Responses: o.Responses, Staples: []admin.StapleInfo{}}
		if pl.conf.TLS != nil && pl.conf.TLS.OCSP.Mode != "" {
			info.Mode = pl.conf.TLS.OCSP.Mode
		}
		for _, s := range o.Staples {
			info.Staples = append(info.Staples, admin.StapleInfo{Certificate: s.CertFile, Good: s.Good, NextUpdate: s.NextUpdate})
		}
		ps.OCSP = append(ps.OCSP, info)
	}
	return ps
}

// clientScanEvery is how often a scrape walks the connected clients for
// the live TLS connections by version and group and the soonest client
// certificate expiry. The walk costs about a microsecond per client (100
// clients: 0.13 ms; BenchmarkStats/Clients in internal/broker), so with a
// scrape every second and tens of thousands of clients it would cost a
// noticeable share of a core; in between, scrapes reuse the last walk.
const clientScanEvery = 10 * time.Second

// clientScan is the last walk of the connected clients.
type clientScan struct {
	every time.Duration

	mu       sync.Mutex
	at       time.Time
	conns    []metrics.TLSCount
	notAfter time.Time
}

// get returns the TLS connections and the soonest certificate expiry,
// walking the clients again when the last walk is older than every.
func (c *clientScan) get(srv *broker.Server, now time.Time) ([]metrics.TLSCount, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && now.Sub(c.at) < c.every {
		return c.conns, c.notAfter
	}
	type vg struct{ v, g string }
	count := map[vg]int64{}
	var soonest time.Time
	for _, cl := range srv.Clients() {
		cs, ok := cl.Client.TLS()
		if !ok {
			continue
		}
		count[vg{tls.VersionName(cs.Version), cs.CurveID.String()}]++
		if pc := cs.PeerCertificates; len(pc) > 0 && (soonest.IsZero() || pc[0].NotAfter.Before(soonest)) {
			soonest = pc[0].NotAfter
		}
	}
	c.conns = c.conns[:0:0]
	for k, n := range count {
		c.conns = append(c.conns, metrics.TLSCount{Version: k.v, Group: k.g, Count: n})
	}
	c.at, c.notAfter = now, soonest
	return c.conns, c.notAfter
}

// metricsSnapshot adapts the broker's Stats, its live connections, the
// guard, the store, the TLS managers and the files the plan serves to the
// metrics package.
func (p *servePlan) metricsSnapshot(ap *adminPlan, bans *guard.File, scan *clientScan) metrics.Snapshot {
	st := p.srv.Stats()
	s := metrics.Snapshot{
		StartTime:           time.Now().Add(-st.Uptime),
		Connections:         st.ClientsConnected,
		ConnectionsMaximum:  st.ClientsMaximum,
		ConnectionsAccepted: st.ClientsTotal,
		ConnectionsRefused: map[string]int64{
			"connect_refused": st.ConnectRefused, "over_cap": st.ConnectionsOverCap, "pre_auth_too_large": st.PreAuthTooLarge,
		},
		ProtocolErrors:     st.ProtocolErrors,
		RevokedDisconnects: st.RevokedDisconnects,
		Panics:             st.Panics,
		MessagesReceived:   st.MessagesReceivedByQoS,
		MessagesSent:       st.MessagesSentByQoS,
		PayloadReceived:    st.PayloadReceivedByQoS,
		PayloadSent:        st.PayloadSentByQoS,
		BytesReceived:      st.BytesReceived,
		BytesSent:          st.BytesSent,
		PacketsReceived:    st.PacketsReceived,
		PacketsSent:        st.PacketsSent,
		SocketsAccepted:    st.SocketsAccepted,
		Queued:             st.Queued,
		Dropped: map[string]int64{
			"queue_full": st.DroppedQueueFull, "qos0_offline": st.DroppedQoS0Offline, "slow_client": st.DroppedSlowClient,
			"oversize": st.DroppedOversize, "expired": st.Expired, "unauthorized": st.DroppedUnauthorized,
			"session_ended": st.DroppedSessionEnd,
		},
		PublishersHeld:       st.PublishersHeld,
		Pushbacks:            st.Pushbacks,
		SlowSubscribers:      st.SlowSubscribers,
		HoldCycles:           st.HoldCycles,
		Sessions:             st.Sessions,
		SessionsExpired:      st.SessionsExpired,
		Subscriptions:        st.Subscriptions,
		SharedSubscriptions:  st.SharedSubscriptions,
		SubscriptionsRefused: st.SubscriptionsRefused,
		SubscriptionsRevoked: st.SubscriptionsRevoked,
		Retained:             st.Retained,
		RetainedBytes:        st.RetainedBytes,
		RetainedRefused:      st.RetainedRefused,
		TLSHandshakeFailures: st.TLSHandshakeFailures,
		CRLs:                 map[string]time.Time{},
		OCSPResponses:        map[string]uint64{},
		StoreQuarantined:     st.StoreQuarantines,
		PersistenceFailures:  st.PersistFailures,
		Bans:                 -1,
		FIPS:                 fips140.Enabled(),
		ReadBudgetInUse:      st.ReadBudgetInUse,
		ReadBudgetPeak:       st.ReadBudgetPeak,
		ReadBudgetWaits:      st.ReadBudgetWaits,
		Cluster:              p.clusterMetrics(),
	}
	for _, a := range st.Authentications {
		s.Authentications = append(s.Authentications, metrics.Count{A: map[bool]string{true: "success", false: "failure"}[a.Success], B: a.Reason, N: a.N})
	}
	for _, a := range st.AuthzDecisions {
		s.AuthzDecisions = append(s.AuthzDecisions, metrics.Count{A: a.Kind, B: a.Reason, N: a.N})
	}
	for _, a := range st.AuthzDenials {
		s.AuthzDenials = append(s.AuthzDenials, metrics.Count{A: a.Kind, B: a.Reason, N: a.N})
	}
	for _, h := range st.TLSHandshakes {
		s.TLSHandshakes = append(s.TLSHandshakes, metrics.TLSCount{Version: h.Version, Group: h.Group, Count: h.N})
	}
	s.TLSConnections, s.ClientCertNotAfter = scan.get(p.srv, time.Now())
	if f := ap.serverCert(); f != "" {
		s.ServerCertNotAfter = certNotAfter(f)
	}
	for _, f := range p.crlFiles() {
		if this, _, err := readCRLTimes(f); err == nil {
			s.CRLs[f] = this
		}
	}
	for _, pl := range p.listeners {
		if pl.mgr == nil {
			continue
		}
		o := pl.mgr.OCSPStatus()
		for k, v := range o.Responses {
			s.OCSPResponses[k] += v
		}
		for _, sp := range o.Staples {
			s.OCSPStaples = append(s.OCSPStaples, metrics.Staple{Listener: pl.lc.Name, CertFile: sp.CertFile, Good: sp.Good, NextUpdate: sp.NextUpdate})
		}
	}
	if p.store != nil {
		ss := p.store.Stats()
		s.StoreEnabled = true
		s.StoreCommitLatency = metrics.Histogram{Bounds: ss.CommitLatency.Bounds, Counts: ss.CommitLatency.Counts, Sum: ss.CommitLatency.Sum}
		s.StoreTransactions, s.StoreFsyncs, s.StoreFailures = ss.Commits, ss.Syncs, ss.Failed
	}
	if g := p.defense.guard(); g != nil {
		gs := g.Stats()
		s.Bans = int64(gs.Bans)
		s.Detections = map[string]int64{}
		for name, d := range gs.Detectors {
			s.Detections[name] = int64(d.Detections)
		}
		s.Throttled, s.ThrottleKicks = int64(gs.Throttled), int64(gs.ThrottleDisconnects)
		s.LimitHits = p.defense.LimitHits()
		s.ConnectionsRefused["conn_rate"] = int64(gs.ConnRateRefused)
		s.ConnectionsRefused["listener_rate"] = int64(gs.ListenerRateRefused)
		s.ConnectionsRefused["conns_per_addr"] = int64(gs.ConnsPerAddrRefused)
		s.ConnectionsRefused["banned_addr"] = int64(gs.AddrBanRefused)
	} else if b, err := bans.Read(); err == nil {
		// The guard is off: the ban list is not enforced, but an operator
		// may still keep one.
		now := time.Now()
		s.Bans = int64(len(slices.DeleteFunc(b, func(x guard.Ban) bool { return !x.Expires.IsZero() && !now.Before(x.Expires) })))
	}
	return s
}

// serveAdmin starts the planned admin listener, if any.
func (p *servePlan) serveAdmin(ctx context.Context) (stop func(), err error) {
	if p.admin == nil {
		return func() {}, nil
	}
	return p.startAdmin(ctx, p.admin)
}
