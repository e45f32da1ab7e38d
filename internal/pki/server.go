package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServerConfig configures a Server. The zero value works: the EST TLS
// certificate is issued from the CA for "localhost" and 127.0.0.1.
type ServerConfig struct {
	// ESTCertificate is the TLS certificate for the EST listener; nil
	// means issue one from the CA (server profile) at NewServer for
	// ESTNames.
	ESTCertificate *tls.Certificate
	// ESTNames are the SANs of the generated EST certificate ("DNS:x",
	// "IP:y" or bare); default "localhost" and "127.0.0.1".
	ESTNames []string
	// ManufacturerRoots authorizes first enrollment by manufacturer
	// certificates, and ManufacturerNames the SANs such an enrollment
	// may get (see ESTConfig).
	ManufacturerRoots *x509.CertPool
	ManufacturerNames []string
	// ReenrollLimit and ReenrollWindow rate-limit re-enrollment per
	// device ID (see ESTConfig); zero means 3 per 24 hours.
	ReenrollLimit  int
	ReenrollWindow time.Duration
	// CRLRefresh is how often the CRL's age is checked; a CRL with less
	// than half its validity left is regenerated. Default: one tenth of
	// the CRL validity, at most 10 minutes.
	CRLRefresh time.Duration
	// RotationCheck is how often Serve checks whether another process
	// rotated the intermediate (RotateIntermediate); it then stops and
	// returns ErrRotated, so that a supervisor restarts it with the new
	// intermediate. Default 10 seconds.
	RotationCheck time.Duration
	// Logger nil means the CA's logger.
	Logger *slog.Logger
}

// Server serves OCSP, the CRL and metrics over HTTP and EST over HTTPS.
// Create it with CA.NewServer; run it with Serve.
type Server struct {
	ca      *CA
	cfg     ServerConfig
	log     *slog.Logger
	tlsCert *tls.Certificate
	reg     *prometheus.Registry
	ocspRes *prometheus.CounterVec
	estRes  *prometheus.CounterVec
}

// NewServer prepares a server; it issues the EST TLS certificate and the
// OCSP signer when needed.
func (ca *CA) NewServer(cfg ServerConfig) (*Server, error) {
	s := &Server{ca: ca, cfg: cfg, log: cfg.Logger, tlsCert: cfg.ESTCertificate}
	if s.log == nil {
		s.log = ca.cfg.logger()
	}
	if cfg.CRLRefresh < 0 || cfg.RotationCheck < 0 {
		return nil, errors.New("pki: CRLRefresh and RotationCheck must not be negative")
	}
	if cfg.ReenrollLimit < 0 || cfg.ReenrollWindow < 0 {
		return nil, errors.New("pki: ReenrollLimit and ReenrollWindow must not be negative")
	}
	if err := CheckManufacturerNames(cfg.ManufacturerNames); err != nil {
		return nil, err
	}
	if _, _, err := ca.ocspSigner(); err != nil {
		return nil, err
	}
	s.reg = prometheus.NewRegistry()
	s.ocspRes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_ca_ocsp_responses_total", Help: "OCSP responses by result."}, []string{"result"})
	s.estRes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "moat_ca_est_requests_total", Help: "EST requests by operation and result."}, []string{"operation", "result"})
	s.reg.MustRegister(s.ocspRes, s.estRes, &caCollector{ca: ca}, collectors.NewGoCollector())
	return s, nil
}

// Registry returns the server's Prometheus registry.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// HTTPHandler serves /ocsp (GET and POST), /crl (DER, the current
// intermediate's), /crl/KEYID (DER, the intermediate with this hex
// subject key identifier, current or retired), /crl.pem (all), the
// root CRL at /root-crl (DER) and /root-crl.pem, and /metrics.
func (s *Server) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	oh := s.ca.OCSPHandler(func(r string) { s.ocspRes.WithLabelValues(r).Inc() })
	mux.Handle("/ocsp", oh)
	mux.Handle("/ocsp/", oh)
	mux.HandleFunc("GET /crl", func(w http.ResponseWriter, r *http.Request) {
		der, err := s.ca.CRL()
		if err != nil {
			s.log.Error("pki: CRL", "err", err)
			http.Error(w, "CRL unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(der)
	})
	mux.HandleFunc("GET /crl/{keyid}", func(w http.ResponseWriter, r *http.Request) {
		der, err := s.ca.CRLFor(strings.ToLower(r.PathValue("keyid")))
		if errors.Is(err, ErrNotFound) {
			http.Error(w, "no CRL for this intermediate", http.StatusNotFound)
			return
		}
		if err != nil {
			s.log.Error("pki: CRL", "err", err)
			http.Error(w, "CRL unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(der)
	})
	mux.HandleFunc("GET /crl.pem", func(w http.ResponseWriter, r *http.Request) {
		p, err := s.ca.CRLPEM()
		if err != nil {
			http.Error(w, "CRL unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(p)
	})
	// The root CRL (revoked intermediates) is published next to the CRL.
	mux.HandleFunc("GET /root-crl", func(w http.ResponseWriter, r *http.Request) {
		der, err := s.ca.RootCRL()
		if err != nil {
			http.Error(w, "no root CRL", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(der)
	})
	mux.HandleFunc("GET /root-crl.pem", func(w http.ResponseWriter, r *http.Request) {
		p, err := s.ca.RootCRLPEM()
		if err != nil {
			http.Error(w, "no root CRL", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(p)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Base64 OCSP GET requests may contain "//", which ServeMux would
		// "clean" with a redirect; dispatch them before the mux.
		if strings.HasPrefix(r.URL.Path, "/ocsp/") {
			oh.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// ESTHandler is the CA's EST handler with this server's metrics.
func (s *Server) ESTHandler() http.Handler {
	return s.ca.ESTHandler(ESTConfig{ManufacturerRoots: s.cfg.ManufacturerRoots, ManufacturerNames: s.cfg.ManufacturerNames,
		ReenrollLimit: s.cfg.ReenrollLimit, ReenrollWindow: s.cfg.ReenrollWindow, Observe: func(op, res string) { s.estRes.WithLabelValues(op, res).Inc() }})
}

// ESTTLSConfig returns the TLS configuration of the EST listener: TLS 1.2
// or later, client certificates requested but verified by the handler
// (token-based enrollment has none).
func (s *Server) ESTTLSConfig() (*tls.Config, error) {
	if s.tlsCert == nil {
		names := s.cfg.ESTNames
		if len(names) == 0 {
			names = []string{"localhost", "127.0.0.1"}
		}
		tc, err := s.ca.estCertificate(names)
		if err != nil {
			return nil, err
		}
		s.tlsCert = tc
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*s.tlsCert},
		ClientAuth:   tls.RequestClientCert,
	}, nil
}

// Serve serves HTTP on httpLn and EST over TLS on estLn (either may be
// nil) until ctx is cancelled, then shuts down gracefully and returns
// nil. It also keeps the CRL fresh. When another process rotates the
// intermediate it shuts down the same way and returns ErrRotated. It
// closes the listeners.
func (s *Server) Serve(ctx context.Context, httpLn, estLn net.Listener) error {
	if httpLn == nil && estLn == nil {
		return errors.New("pki: nothing to serve (give an HTTP and/or an HTTPS address)")
	}
	var servers []*http.Server
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	start := func(srv *http.Server, ln net.Listener) {
		servers = append(servers, srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	if estLn != nil {
		tc, err := s.ESTTLSConfig()
		if err != nil {
			if httpLn != nil {
				httpLn.Close()
			}
			estLn.Close()
			return err
		}
		start(&http.Server{Handler: s.ESTHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}, tls.NewListener(estLn, tc))
	}
	if httpLn != nil {
		start(&http.Server{Handler: s.HTTPHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}, httpLn)
	}
	refresh := s.cfg.CRLRefresh
	if refresh == 0 {
		refresh = min(s.ca.settings.crlValidity()/10, 10*time.Minute)
	}
	rotation := s.cfg.RotationCheck
	if rotation == 0 {
		rotation = 10 * time.Second
	}
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(refresh)
		defer t.Stop()
		rt := time.NewTicker(rotation)
		defer rt.Stop()
		for {
			select {
			case <-stop:
				return
			case <-rt.C:
				if err := s.ca.checkCurrent(); errors.Is(err, ErrRotated) {
					s.log.Warn("pki: the intermediate was rotated; stopping so that the new one is served after a restart")
					errc <- err
					return
				}
			case <-t.C:
				if _, err := s.ca.CRL(); err != nil {
					s.log.Error("pki: refreshing CRL", "err", err)
				}
				if _, _, err := s.ca.ocspSigner(); err != nil {
					s.log.Error("pki: renewing OCSP signer", "err", err)
				}
			}
		}
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	close(stop)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		srv.Shutdown(sctx)
	}
	wg.Wait()
	return err
}

// caCollector exports inventory gauges at scrape time.
type caCollector struct{ ca *CA }

var (
	descCerts    = prometheus.NewDesc("moat_ca_certificates", "Issued certificates by status and profile.", []string{"status", "profile"}, nil)
	descSoonest  = prometheus.NewDesc("moat_ca_soonest_expiry_timestamp_seconds", "NotAfter of the valid server or device certificate that expires first (Unix time).", nil, nil)
	descCRLNext  = prometheus.NewDesc("moat_ca_crl_next_update_timestamp_seconds", "nextUpdate of the current CRL (Unix time).", nil, nil)
	descUp       = prometheus.NewDesc("moat_ca_database_up", "1 when the CA database could be read at scrape time.", nil, nil)
	metricStatus = []Status{StatusValid, StatusRevoked, StatusExpired}
)

func (c *caCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCerts
	ch <- descSoonest
	ch <- descCRLNext
	ch <- descUp
}

func (c *caCollector) Collect(ch chan<- prometheus.Metric) {
	recs, err := c.ca.List(ListFilter{})
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1)
	now := c.ca.cfg.now()
	counts := map[[2]string]int{}
	for _, p := range []Profile{ProfileServer, ProfileDevice} {
		for _, s := range metricStatus {
			counts[[2]string{string(s), string(p)}] = 0
		}
	}
	var soonest time.Time
	for _, r := range recs {
		st := r.Status(now)
		counts[[2]string{string(st), string(r.Profile)}]++
		if st == StatusValid && r.Profile != ProfileOCSP && (soonest.IsZero() || r.NotAfter.Before(soonest)) {
			soonest = r.NotAfter
		}
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(descCerts, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
	if !soonest.IsZero() {
		ch <- prometheus.MustNewConstMetric(descSoonest, prometheus.GaugeValue, float64(soonest.Unix()))
	}
	if der, err := c.ca.CRL(); err == nil {
		if crl, err := x509.ParseRevocationList(der); err == nil {
			ch <- prometheus.MustNewConstMetric(descCRLNext, prometheus.GaugeValue, float64(crl.NextUpdate.Unix()))
		}
	}
}

// estCertificate returns the EST listener's certificate from DIR/est.pem
// and DIR/est.key when they exist, name exactly names, chain to this CA and
// have more than a third of their lifetime left; otherwise it issues a new
// one (server profile) and stores it there, so restarts do not fill the
// inventory.
func (ca *CA) estCertificate(names []string) (*tls.Certificate, error) {
	dns, ips, _, err := ParseSANs(names)
	if err != nil {
		return nil, err
	}
	prefix := ca.path("est")
	if tc, err := tls.LoadX509KeyPair(prefix+".pem", prefix+".key"); err == nil {
		leaf := tc.Leaf
		now := ca.cfg.now()
		want := append(append([]string{}, dns...), ipStrings(ips)...)
		have := append(append([]string{}, leaf.DNSNames...), ipStrings(leaf.IPAddresses)...)
		if slices.Equal(want, have) && leaf.CheckSignatureFrom(ca.inter) == nil &&
			now.Before(leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore)/3)) {
			return &tc, nil
		}
	}
	iss, err := ca.Issue(IssueRequest{Profile: ProfileServer, DNSNames: dns, IPAddresses: ips, AuthorizedBy: "est-listener"})
	if err != nil {
		return nil, fmt.Errorf("pki: issuing the EST TLS certificate: %w", err)
	}
	if err := iss.WriteFiles(prefix); err != nil {
		return nil, err
	}
	tc, err := iss.TLSCertificate()
	return &tc, err
}
