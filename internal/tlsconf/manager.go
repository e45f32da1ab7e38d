package tlsconf

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Manager owns the TLS state of one listener: loaded certificates, CA pool,
// CRLs, OCSP cache, staples, ticket keys and the live sessions it watches.
// All methods are safe for concurrent use. The caller must Close it.
type Manager struct {
	cfg  ListenerConfig // private copy; only its files change after New, under reloadMu (files.go)
	log  *slog.Logger
	now  func() time.Time
	rand io.Reader

	base  *tls.Config
	state atomic.Pointer[state]

	reloadMu sync.Mutex // serializes Reload and the file poll; see docs/design/tls.md
	lastSig  string
	lastHash [32]byte

	ocsp     *ocspChecker
	watch    *watcher
	tickets  ticketRing
	crlFresh crlFreshness
	polls    atomic.Uint64 // loop iterations past the CRL and expiry checks

	ctx       context.Context // canceled by Close; bounds background requests
	cancel    context.CancelFunc
	goMu      sync.Mutex // guards starting goroutines against Close
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// spawn runs f in a goroutine that Close waits for; it returns false (and
// does nothing) once the Manager is closed.
func (m *Manager) spawn(f func()) bool {
	m.goMu.Lock()
	defer m.goMu.Unlock()
	if m.closed() {
		return false
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f()
	}()
	return true
}

// New validates cfg, loads every file and starts the Manager's background
// goroutine (file watch, session expiry, CRL staleness, OCSP re-checks,
// staple refresh, ticket key rotation). All configuration problems are
// returned at once. The caller must call Close.
func New(cfg ListenerConfig) (*Manager, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.Certificates = slices.Clone(cfg.Certificates)
	cfg.CipherSuites = slices.Clone(cfg.CipherSuites)
	cfg.TLS13CipherSuites = slices.Clone(cfg.TLS13CipherSuites)
	cfg.CurvePreferences = slices.Clone(cfg.CurvePreferences)
	cfg.NextProtos = slices.Clone(cfg.NextProtos)
	cfg.CRLFiles = slices.Clone(cfg.CRLFiles)
	cfg.CRLRenewers = slices.Clone(cfg.CRLRenewers)
	m := &Manager{cfg: cfg, log: cfg.Logger, now: cfg.Now, stop: make(chan struct{})}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if m.log == nil {
		m.log = slog.Default()
	}
	if m.now == nil {
		m.now = time.Now
	}
	m.rand = cfg.Rand
	if m.rand == nil {
		m.rand = rand.Reader
	}
	if cfg.AllowInsecureCipherSuites {
		for _, id := range cfg.CipherSuites {
			if s := suiteByID(id); !s.secure() {
				m.log.Warn("tlsconf: INSECURE cipher suite enabled by configuration", "listener", cfg.Name, "suite", tls.CipherSuiteName(id), "why", s.whyInsecure())
			}
		}
	}
	if cfg.ClientAuth == ClientAuthNone {
		m.log.Warn("tlsconf: client certificates are not requested on this listener; clients must authenticate in CONNECT", "listener", cfg.Name)
	}
	m.ocsp = newOCSPChecker(m)
	m.watch = newWatcher(m)

	st, err := m.load()
	if err != nil {
		m.cancel()
		return nil, err
	}
	m.lastSig = m.fileSignature()
	m.lastHash = m.contentHash()
	st.conf = m.buildConfig(st)
	m.base = m.buildConfig(st)
	m.base.GetConfigForClient = m.getConfigForClient
	if !cfg.DisableSessionTickets {
		if err := m.initTickets(); err != nil {
			m.cancel()
			return nil, err
		}
		m.base.SetSessionTicketKeys(m.tickets.keys())
		st.conf.SetSessionTicketKeys(m.tickets.keys())
	}
	m.state.Store(st)
	if !cfg.DisableOCSPStapling {
		for _, sc := range st.certs {
			m.refreshStaple(sc, true)
		}
	}
	m.spawn(m.loop)
	return m, nil
}

// TLSConfig returns the server configuration to serve with. It is the same
// *tls.Config on every call and must not be modified; its callbacks read
// the current state, so Reload takes effect for new handshakes without
// touching established connections. Cloning it (as net/http does for secure
// WebSocket) is fine.
func (m *Manager) TLSConfig() *tls.Config { return m.base }

// buildConfig makes the per-generation server config.
func (m *Manager) buildConfig(st *state) *tls.Config {
	c := &tls.Config{
		MinVersion:             tls.VersionTLS12,
		MaxVersion:             tls.VersionTLS13,
		CipherSuites:           defaultCipherSuites(),
		CurvePreferences:       defaultCurvePreferences(),
		GetCertificate:         m.getCertificate,
		VerifyConnection:       func(cs tls.ConnectionState) error { return m.verifyConnection(cs, nil) },
		Time:                   m.now,
		Rand:                   m.rand,
		SessionTicketsDisabled: m.cfg.DisableSessionTickets,
		NextProtos:             m.cfg.NextProtos,
	}
	if m.cfg.MinVersion != 0 {
		c.MinVersion = m.cfg.MinVersion
	}
	if len(m.cfg.CipherSuites) > 0 {
		c.CipherSuites = m.cfg.CipherSuites
	}
	if len(m.cfg.CurvePreferences) > 0 {
		c.CurvePreferences = m.cfg.CurvePreferences
	}
	switch m.cfg.ClientAuth {
	case ClientAuthRequired:
		// Verification is done in VerifyConnection so that it uses the
		// current CA pool, CRLs, OCSP and the injected clock, including
		// on session resumption.
		c.ClientAuth = tls.RequireAnyClientCert
	case ClientAuthOptional:
		c.ClientAuth = tls.RequestClientCert
	default:
		c.ClientAuth = tls.NoClientCert
	}
	if c.ClientAuth != tls.NoClientCert {
		c.ClientCAs = st.roots // advertised in CertificateRequest only
	}
	return c
}

// getConfigForClient hands each handshake the current generation, with the
// peer address bound into VerifyConnection for the log.
func (m *Manager) getConfigForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	st := m.state.Load()
	c := st.conf.Clone()
	var remote net.Addr
	if hello.Conn != nil {
		remote = hello.Conn.RemoteAddr()
	}
	c.VerifyConnection = func(cs tls.ConnectionState) error { return m.verifyConnection(cs, remote) }
	return c, nil
}

// getCertificate picks the certificate for the SNI name, defaulting to the first.
func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	st := m.state.Load()
	if len(st.certs) > 1 {
		for _, sc := range st.certs {
			c := sc.cert.Load()
			if hello.ServerName != "" && hello.SupportsCertificate(c) == nil {
				return c, nil
			}
		}
		// No name match: the first one whose key type the client accepts.
		for _, sc := range st.certs {
			c := sc.cert.Load()
			if hello.ServerName == "" && hello.SupportsCertificate(c) == nil {
				return c, nil
			}
		}
	}
	return st.certs[0].cert.Load(), nil
}

// Reload re-reads every certificate, key, CA and CRL file. On any error the
// previous state stays in force and the error is returned (and logged).
// Established connections are never touched by a reload, except that live
// sessions whose certificate is now revoked, or no longer chains to a
// trusted CA, are dropped through their Watch callback. The file watcher
// calls Reload on changes; call it on SIGHUP.
func (m *Manager) Reload() error {
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	return m.reloadLocked()
}

func (m *Manager) reloadLocked() error {
	m.lastSig = m.fileSignature()
	m.lastHash = m.contentHash()
	st, err := m.load()
	if err != nil {
		m.log.Error("tlsconf: reload failed; keeping the previous certificates, CAs and CRLs", "listener", m.cfg.Name, "error", err)
		return err
	}
	old := m.state.Load()
	st.conf = m.buildConfig(st)
	if !m.cfg.DisableSessionTickets {
		st.conf.SetSessionTicketKeys(m.ticketKeysSnapshot())
	}
	// Keep staples of certificates that did not change.
	for _, sc := range st.certs {
		for _, oc := range old.certs {
			if oc.leaf.Equal(sc.leaf) {
				if s := oc.staple.Load(); s != nil {
					sc.setStaple(s)
				}
			}
		}
	}
	m.state.Store(st)
	m.log.Info("tlsconf: reloaded certificates, CAs and CRLs", "listener", m.cfg.Name,
		"certificates", len(st.certs), "cas", len(st.caCerts), "crls", st.ncrl)
	if !m.cfg.DisableOCSPStapling {
		for _, sc := range st.certs {
			if sc.staple.Load() == nil {
				m.refreshStaple(sc, false)
			}
		}
	}
	m.watch.recheckAll(st, old.caSum != st.caSum)
	return nil
}

// pollFiles reloads when a watched file's content changed.
func (m *Manager) pollFiles() {
	m.reloadMu.Lock()
	defer m.reloadMu.Unlock()
	sig := m.fileSignature()
	if sig == m.lastSig {
		return
	}
	m.lastSig = sig
	if m.contentHash() == m.lastHash {
		return
	}
	m.log.Info("tlsconf: certificate, CA or CRL file changed; reloading", "listener", m.cfg.Name)
	_ = m.reloadLocked()
}

func (m *Manager) pollInterval() time.Duration {
	if m.cfg.PollInterval > 0 {
		return m.cfg.PollInterval
	}
	return defaultPollInterval
}

// loop is the Manager's one long-lived goroutine.
func (m *Manager) loop() {
	t := time.NewTicker(m.pollInterval())
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		if !m.cfg.DisableFileWatch {
			m.pollFiles()
		}
		now := m.now()
		m.checkStaleCRLs(now)
		m.warnExpiringCRLs(now)
		m.renewCRLs(now)
		m.watch.expire(now)
		m.polls.Add(1)
		if m.cfg.OCSP.Mode != OCSPOff {
			m.watch.recheckOCSP(now)
		}
		if !m.cfg.DisableOCSPStapling {
			for _, sc := range m.state.Load().certs {
				if s := sc.staple.Load(); s == nil || !now.Before(s.refreshAt) {
					m.refreshStaple(sc, false)
				}
			}
		}
		if !m.cfg.DisableSessionTickets && m.tickets.due(now, m.cfg.ticketRotation()) {
			if err := m.rotateTickets(now); err != nil {
				m.log.Error("tlsconf: session ticket key rotation failed", "listener", m.cfg.Name, "error", err)
				continue
			}
			keys := m.tickets.keys()
			m.base.SetSessionTicketKeys(keys)
			m.state.Load().conf.SetSessionTicketKeys(keys)
		}
	}
}

// checkStaleCRLs reports CRLs that passed their nextUpdate and, under
// CRLStaleRefuse, drops live sessions that depend on them.
func (m *Manager) checkStaleCRLs(now time.Time) {
	st := m.state.Load()
	turned := false
	for _, list := range st.crls {
		for _, c := range list {
			if c.list.NextUpdate.IsZero() || !now.After(c.list.NextUpdate) || c.stale.Swap(true) {
				continue
			}
			turned = true
			m.log.Error("tlsconf: CRL is past its nextUpdate; publish a fresh CRL", "listener", m.cfg.Name,
				"file", c.path, "next_update", c.list.NextUpdate, "policy", m.stalePolicyName())
		}
	}
	if turned && m.cfg.CRLStalePolicy == CRLStaleRefuse {
		m.watch.recheckAll(st, false)
	}
}

// ticketKeysSnapshot returns the current ticket keys.
func (m *Manager) ticketKeysSnapshot() [][32]byte { return m.tickets.keys() }

// Close stops the background goroutine and waits for it and for every
// OCSP request in flight. Watched sessions are not dropped. Close is
// idempotent.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		m.goMu.Lock()
		close(m.stop)
		m.goMu.Unlock()
		m.cancel()
		m.wg.Wait()
	})
	return nil
}

// ErrClosed is returned by Watch after Close.
var ErrClosed = errors.New("tlsconf: manager closed")

func (m *Manager) closed() bool {
	select {
	case <-m.stop:
		return true
	default:
		return false
	}
}

// httpClient returns the client used for OCSP requests.
func (m *Manager) httpClient() *http.Client {
	if m.cfg.OCSP.HTTPClient != nil {
		return m.cfg.OCSP.HTTPClient
	}
	return defaultOCSPClient
}

var defaultOCSPClient = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}}
