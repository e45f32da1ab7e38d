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
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/metrics"
	"github.com/moatmq/moat/internal/pki"
)

// adminPlan is the admin listener of `moat serve --admin ADDR` (or YAML
// admin.listen), checked before anything binds.
type adminPlan struct {
	addr     string
	certFile string // HTTPS with this certificate and key; "" for plain HTTP on loopback
	keyFile  string
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
		for _, l := range p.cfg.Listeners {
			if l.TLS != nil && l.TLS.Cert != "" && l.TLS.Key != "" {
				ap.certFile, ap.keyFile = l.TLS.Cert, l.TLS.Key
				break
			}
		}
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
	bans := &guard.File{Path: filepath.Join(p.cfg.DataDir, guard.BansFileName)}
	h, err := admin.New(admin.Config{
		Broker:       p.srv,
		Tokens:       tokens,
		Bans:         bans,
		CA:           p.adminCA(),
		AuditFile:    filepath.Join(p.cfg.DataDir, audit.DefaultFile),
		AuditKeyFile: filepath.Join(p.cfg.DataDir, audit.PubFile),
		Listeners:    p.adminListeners,
		Config:       func() any { return p.runningConfig() },
		Reload: func(context.Context) error {
			_, err := p.reloadConfig()
			return err
		},
		Posture: func() admin.Posture { return p.adminPosture(ap) },
		Metrics: metrics.Handler(metrics.SourceFunc(func() metrics.Snapshot { return p.metricsSnapshot(ap, bans) })),
		// Auditor stays nil: moat serve does not open the audit log yet,
		// so changes are recorded in the broker's log only.
		Logger: p.log,
	})
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	ln, err := net.Listen("tcp", ap.addr)
	if err != nil {
		return nil, fmt.Errorf("serve: admin listener: %w", err)
	}
	scheme := "http"
	if ap.certFile != "" {
		kp := &keyPairFiles{cert: ap.certFile, key: ap.keyFile}
		if _, err := kp.get(nil); err != nil {
			ln.Close()
			return nil, fmt.Errorf("serve: admin listener certificate: %w", err)
		}
		tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: kp.get, NextProtos: []string{"h2", "http/1.1"}}
		scheme = "https"
		if admin.IsLoopback(ap.addr) {
			// On loopback, where plain HTTP is accepted anyway, both
			// work on the one port.
			tc.NextProtos = []string{"http/1.1"}
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
	}, nil
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

// crlFiles lists the CRL files the listeners check.
func (p *servePlan) crlFiles() []string {
	var files []string
	for _, l := range p.cfg.Listeners {
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
		Profile:      profileName(p.runningConfig()),
		FIPS:         fips140.Enabled(),
		AuthFailures: p.srv.Stats().ConnectRefused,
		Detections:   -1,
		Notes:        []string{"the abuse detectors are not wired to the admin API yet"},
	}
	if ap.certFile != "" {
		ps.ServerCertNotAfter = certNotAfter(ap.certFile)
	}
	for _, f := range p.crlFiles() {
		this, next, err := readCRLTimes(f)
		if err == nil {
			ps.CRLs = append(ps.CRLs, admin.CRLInfo{File: f, ThisUpdate: this, NextUpdate: next})
		}
	}
	return ps
}

// metricsSnapshot adapts the broker's Stats, its live connections and the
// files the plan serves to the metrics package.
func (p *servePlan) metricsSnapshot(ap *adminPlan, bans *guard.File) metrics.Snapshot {
	st := p.srv.Stats()
	s := metrics.Snapshot{
		StartTime:           time.Now().Add(-st.Uptime),
		Connections:         st.ClientsConnected,
		ConnectionsMaximum:  st.ClientsMaximum,
		ConnectionsAccepted: st.ClientsTotal,
		ConnectionsRefused: map[string]int64{
			"connect_refused": st.ConnectRefused, "over_cap": st.ConnectionsOverCap, "pre_auth_too_large": st.PreAuthTooLarge,
		},
		TLSFailures:        st.TLSFailures,
		ProtocolErrors:     st.ProtocolErrors,
		RevokedDisconnects: st.RevokedDisconnects,
		Panics:             st.Panics,
		MessagesReceived:   st.MessagesReceived,
		MessagesSent:       st.MessagesSent,
		BytesReceived:      st.BytesReceived,
		BytesSent:          st.BytesSent,
		Queued:             st.Queued,
		Dropped: map[string]int64{
			"queue_full": st.DroppedQueueFull, "qos0_offline": st.DroppedQoS0Offline, "slow_client": st.DroppedSlowClient,
			"oversize": st.DroppedOversize, "expired": st.Expired,
		},
		PublishersHeld:       st.PublishersHeld,
		Pushbacks:            st.Pushbacks,
		SlowSubscribers:      st.SlowSubscribers,
		Sessions:             st.Sessions,
		Subscriptions:        st.Subscriptions,
		SubscriptionsRefused: st.SubscriptionsRefused,
		Retained:             st.Retained,
		RetainedBytes:        st.RetainedBytes,
		RetainedRefused:      st.RetainedRefused,
		CRLs:                 map[string]time.Time{},
		Bans:                 -1,
		FIPS:                 fips140.Enabled(),
	}
	type vg struct{ v, g string }
	tlsCount := map[vg]int{}
	for _, c := range p.srv.Clients() {
		cs, ok := c.Client.TLS()
		if !ok {
			continue
		}
		tlsCount[vg{tls.VersionName(cs.Version), cs.CurveID.String()}]++
		if pc := cs.PeerCertificates; len(pc) > 0 && (s.ClientCertNotAfter.IsZero() || pc[0].NotAfter.Before(s.ClientCertNotAfter)) {
			s.ClientCertNotAfter = pc[0].NotAfter
		}
	}
	for k, n := range tlsCount {
		s.TLSConnections = append(s.TLSConnections, metrics.TLSConnections{Version: k.v, Group: k.g, Count: n})
	}
	if ap.certFile != "" {
		s.ServerCertNotAfter = certNotAfter(ap.certFile)
	}
	for _, f := range p.crlFiles() {
		if this, _, err := readCRLTimes(f); err == nil {
			s.CRLs[f] = this
		}
	}
	if b, err := bans.Read(); err == nil {
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
