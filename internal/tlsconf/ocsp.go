package tlsconf

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"
)

const (
	ocspMaxResponse   = 64 << 10
	ocspErrorCacheTTL = 10 * time.Second // failures are retried after this
	ocspClockSkew     = 5 * time.Minute
	stapleRetry       = time.Minute
)

// ocspResult is one cached OCSP answer (or failure) for a certificate.
type ocspResult struct {
	status    int // ocsp.Good, ocsp.Revoked, ocsp.Unknown; -1 on error
	revokedAt time.Time
	raw       []byte
	this      time.Time
	next      time.Time
	expires   time.Time // by the Manager's clock
	fetched   time.Time // when the responder was asked, by the Manager's clock
	err       error
}

// ocspChecker queries responders with caching and one request in flight
// per certificate.
type ocspChecker struct {
	m        *Manager
	mu       sync.Mutex
	cache    map[string]*ocspResult
	inflight map[string]chan struct{}
	answers  ocspAnswers // status.go
}

func newOCSPChecker(m *Manager) *ocspChecker {
	return &ocspChecker{m: m, cache: map[string]*ocspResult{}, inflight: map[string]chan struct{}{}}
}

// ocspKey identifies a certificate by its issuer's key and its serial.
func ocspKey(leaf, issuer *x509.Certificate) string {
	h := sha256.Sum256(issuer.RawSubjectPublicKeyInfo)
	return string(h[:]) + leaf.SerialNumber.String()
}

func (m *Manager) ocspTimeout() time.Duration {
	if m.cfg.OCSP.Timeout > 0 {
		return m.cfg.OCSP.Timeout
	}
	return defaultOCSPTimeout
}

// ocspRecheck is the live re-check period; 0 means "when the cache
// expires".
func (m *Manager) ocspRecheck() time.Duration {
	switch r := m.cfg.OCSP.LiveRecheck; {
	case r < 0:
		return 0
	case r > 0:
		return r
	}
	return defaultOCSPRecheck
}

// fresh returns the cached result if it has not expired and was fetched
// less than maxAge ago (maxAge 0: any age).
func (o *ocspChecker) fresh(key string, now time.Time, maxAge time.Duration) *ocspResult {
	r := o.cached(key, now)
	if r == nil || (maxAge > 0 && now.Sub(r.fetched) >= maxAge) {
		return nil
	}
	return r
}

func (m *Manager) ocspTTL() time.Duration {
	if m.cfg.OCSP.CacheTTL > 0 {
		return m.cfg.OCSP.CacheTTL
	}
	return defaultOCSPCacheTTL
}

// cached returns the cached result if it has not expired.
func (o *ocspChecker) cached(key string, now time.Time) *ocspResult {
	o.mu.Lock()
	defer o.mu.Unlock()
	if r, ok := o.cache[key]; ok && now.Before(r.expires) {
		return r
	}
	return nil
}

// get returns a fresh answer for leaf, querying the responder when the
// cache has none. Concurrent callers for the same certificate share one
// request.
func (o *ocspChecker) get(ctx context.Context, leaf, issuer *x509.Certificate) *ocspResult {
	key := ocspKey(leaf, issuer)
	for {
		now := o.m.now()
		o.mu.Lock()
		if r, ok := o.cache[key]; ok && now.Before(r.expires) {
			o.mu.Unlock()
			return r
		}
		if ch, ok := o.inflight[key]; ok {
			o.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return &ocspResult{status: -1, err: ctx.Err()}
			}
		}
		ch := make(chan struct{})
		o.inflight[key] = ch
		o.mu.Unlock()

		r := o.query(ctx, leaf, issuer)
		r.fetched = o.m.now()
		o.mu.Lock()
		o.cache[key] = r
		delete(o.inflight, key)
		o.mu.Unlock()
		close(ch)
		return r
	}
}

// refresh asks the responder again regardless of the cache and stores the
// answer only when there is one: a failed re-check must not replace a good
// cached answer (new handshakes would otherwise fail closed on a passing
// responder outage).
func (o *ocspChecker) refresh(ctx context.Context, leaf, issuer *x509.Certificate) *ocspResult {
	r := o.query(ctx, leaf, issuer)
	r.fetched = o.m.now()
	if r.err == nil {
		o.mu.Lock()
		o.cache[ocspKey(leaf, issuer)] = r
		o.mu.Unlock()
	}
	return r
}

// query asks the certificate's responders in turn and validates the answer.
func (o *ocspChecker) query(ctx context.Context, leaf, issuer *x509.Certificate) *ocspResult {
	m := o.m
	fail := func(err error) *ocspResult {
		return o.answers.count(&ocspResult{status: -1, err: err, expires: m.now().Add(min(ocspErrorCacheTTL, m.ocspTTL()))})
	}
	if len(leaf.OCSPServer) == 0 {
		return fail(errors.New("the certificate names no OCSP responder (AIA)"))
	}
	req, err := ocsp.CreateRequest(leaf, issuer, nil)
	if err != nil {
		return fail(fmt.Errorf("build OCSP request: %w", err))
	}
	var errs []error
	for _, url := range leaf.OCSPServer {
		r, err := o.ask(ctx, url, req, leaf, issuer)
		if err == nil {
			return o.answers.count(r)
		}
		errs = append(errs, fmt.Errorf("%s: %w", url, err))
	}
	return fail(errors.Join(errs...))
}

func (o *ocspChecker) ask(ctx context.Context, url string, req []byte, leaf, issuer *x509.Certificate) (*ocspResult, error) {
	m := o.m
	ctx, cancel := context.WithTimeout(ctx, m.ocspTimeout())
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(req))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/ocsp-request")
	hreq.Header.Set("Accept", "application/ocsp-response")
	resp, err := m.httpClient().Do(hreq)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, ocspMaxResponse+1))
	if err != nil {
		return nil, err
	}
	if len(body) > ocspMaxResponse {
		return nil, errors.New("response too large")
	}
	return o.validate(body, leaf, issuer)
}

// validate parses a DER response and checks signature, responder
// authorization and freshness.
func (o *ocspChecker) validate(der []byte, leaf, issuer *x509.Certificate) (*ocspResult, error) {
	m := o.m
	resp, err := ocsp.ParseResponseForCert(der, leaf, issuer)
	if err != nil {
		return nil, fmt.Errorf("invalid OCSP response: %w", err)
	}
	now := m.now()
	if rc := resp.Certificate; rc != nil && !rc.Equal(issuer) {
		// Delegated responder: signed by the issuer (checked by the ocsp
		// package), must carry id-kp-OCSPSigning and be currently valid.
		if !slices.Contains(rc.ExtKeyUsage, x509.ExtKeyUsageOCSPSigning) {
			return nil, errors.New("delegated OCSP responder certificate lacks the OCSPSigning usage")
		}
		if now.Before(rc.NotBefore) || now.After(rc.NotAfter) {
			return nil, errors.New("delegated OCSP responder certificate is outside its validity period")
		}
	}
	if resp.ThisUpdate.After(now.Add(ocspClockSkew)) {
		return nil, fmt.Errorf("OCSP response thisUpdate %s is in the future", resp.ThisUpdate.UTC().Format(time.RFC3339))
	}
	if !resp.NextUpdate.IsZero() && now.After(resp.NextUpdate) {
		return nil, fmt.Errorf("OCSP response expired at %s", resp.NextUpdate.UTC().Format(time.RFC3339))
	}
	expires := now.Add(m.ocspTTL())
	if !resp.NextUpdate.IsZero() && resp.NextUpdate.Before(expires) {
		expires = resp.NextUpdate
	}
	return &ocspResult{status: resp.Status, revokedAt: resp.RevokedAt, raw: der, this: resp.ThisUpdate, next: resp.NextUpdate, expires: expires}, nil
}

// checkOCSP applies the OCSP policy to a leaf during verification.
func (m *Manager) checkOCSP(ctx context.Context, leaf, issuer *x509.Certificate, now time.Time) error {
	r := m.ocsp.get(ctx, leaf, issuer)
	switch {
	case r.err == nil && r.status == ocsp.Good:
		return nil
	case r.err == nil && r.status == ocsp.Revoked:
		return certError(ReasonRevoked, leaf, "OCSP responder says revoked at %s", r.revokedAt.UTC().Format(time.RFC3339))
	}
	why := "OCSP responder answered unknown"
	if r.err != nil {
		why = "OCSP check failed: " + r.err.Error()
	}
	if m.cfg.OCSP.Mode == OCSPFailClosed {
		return certError(ReasonOCSPUnavailable, leaf, "%s (policy fail-closed)", why)
	}
	subj, _ := SubjectDN(leaf)
	m.log.Warn("tlsconf: OCSP status unavailable, accepting the client (policy fail-open)", "listener", m.cfg.Name,
		"subject", subj, "serial", fmt.Sprintf("%X", leaf.SerialNumber), "error", why)
	return nil
}

// setStaple publishes a staple by replacing the served certificate.
func (sc *servedCert) setStaple(s *staple) {
	c := *sc.cert.Load()
	c.OCSPStaple = s.der
	sc.cert.Store(&c)
	sc.staple.Store(s)
}

// refreshStaple fetches a new staple for sc in the background when the
// certificate names a responder. With wait set it also waits (New uses it
// so the first handshakes already carry a staple when the responder is up).
func (m *Manager) refreshStaple(sc *servedCert, wait bool) {
	if len(sc.leaf.OCSPServer) == 0 || sc.issuer == nil {
		return
	}
	// Mark as in progress so the loop does not start another fetch.
	cur := sc.staple.Load()
	pending := &staple{refreshAt: m.now().Add(m.ocspTimeout() + stapleRetry)}
	if cur != nil {
		p := *cur
		p.refreshAt = pending.refreshAt
		pending = &p
	}
	sc.staple.Store(pending)
	done := make(chan struct{})
	started := m.spawn(func() {
		defer close(done)
		r := m.ocsp.query(m.ctx, sc.leaf, sc.issuer)
		now := m.now()
		if r.err != nil || r.status != ocsp.Good {
			why := "status not good"
			if r.err != nil {
				why = r.err.Error()
			}
			m.log.Warn("tlsconf: OCSP staple fetch failed; retrying later", "listener", m.cfg.Name, "certificate", sc.pair.CertFile, "error", why)
			s := &staple{refreshAt: now.Add(stapleRetry)}
			if cur != nil && (cur.nextUpdate.IsZero() || now.Before(cur.nextUpdate)) {
				s.der, s.nextUpdate = cur.der, cur.nextUpdate
			}
			sc.setStaple(s)
			return
		}
		// Refresh half-way to nextUpdate (or to the cache TTL).
		end := r.next
		if end.IsZero() {
			end = now.Add(m.ocspTTL())
		}
		refresh := now.Add(end.Sub(now) / 2)
		sc.setStaple(&staple{der: r.raw, nextUpdate: r.next, refreshAt: refresh})
		m.log.Debug("tlsconf: OCSP staple refreshed", "listener", m.cfg.Name, "certificate", sc.pair.CertFile, "next_update", r.next)
	})
	if started && wait {
		<-done
	}
}

// Staple returns the OCSP response currently stapled to the first server
// certificate, or nil. For tests and status pages.
func (m *Manager) Staple() []byte {
	return m.state.Load().certs[0].cert.Load().OCSPStaple
}
