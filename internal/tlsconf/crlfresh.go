package tlsconf

import (
	"sync"
	"time"
)

const (
	// crlWarnFloor: a CRL with less than this left is warned about (as
	// is one with less than a third of its validity left), but never in
	// the first half of its validity, where a CA renewing at half
	// validity keeps it.
	crlWarnFloor = 48 * time.Hour
	// crlWarnEvery rate-limits the warning per CRL.
	crlWarnEvery = time.Hour
	// crlRenewRetry is the wait after a renewal attempt that left the
	// CRL still due (the CA was busy or failed).
	crlRenewRetry = time.Minute
)

// crlFreshness is the Manager's bookkeeping for CRL expiry warnings and
// renewals. Its fields are used by the loop goroutine and the renewal
// goroutine; mu guards them.
type crlFreshness struct {
	mu        sync.Mutex
	lastWarn  map[string]time.Time // by file and issuer
	renewing  bool
	lastRenew map[string]time.Time // by file: last attempt
}

// crlWarnThreshold returns how long before nextUpdate a CRL of this
// validity is warned about.
func crlWarnThreshold(validity time.Duration) time.Duration {
	return max(validity/3, min(crlWarnFloor, validity/2))
}

// crlRenewDue reports whether half of the CRL's validity has passed.
func crlRenewDue(c *crlInfo, now time.Time) bool {
	l := c.list
	if l.NextUpdate.IsZero() {
		return false
	}
	return !now.Before(l.ThisUpdate.Add(l.NextUpdate.Sub(l.ThisUpdate) / 2))
}

// warnExpiringCRLs warns, at most once an hour per CRL, about every CRL
// that nears its nextUpdate, whoever publishes it: after nextUpdate the
// stale policy applies (by default every client of that CA is refused).
func (m *Manager) warnExpiringCRLs(now time.Time) {
	st := m.state.Load()
	f := &m.crlFresh
	for issuer, list := range st.crls {
		for _, c := range list {
			l := c.list
			if l.NextUpdate.IsZero() || now.After(l.NextUpdate) {
				continue // no expiry, or already reported as stale
			}
			left := l.NextUpdate.Sub(now)
			if left >= crlWarnThreshold(l.NextUpdate.Sub(l.ThisUpdate)) {
				continue
			}
			key := c.path + "\x00" + issuer
			f.mu.Lock()
			last, seen := f.lastWarn[key]
			due := !seen || now.Sub(last) >= crlWarnEvery || now.Before(last)
			if due {
				if f.lastWarn == nil {
					f.lastWarn = map[string]time.Time{}
				}
				f.lastWarn[key] = now
			}
			f.mu.Unlock()
			if !due {
				continue
			}
			m.log.Warn("tlsconf: CRL expires soon; publish a fresh one before its nextUpdate or the stale policy applies",
				"listener", m.cfg.Name, "file", c.path, "issuer", issuerNameOf(c), "next_update", l.NextUpdate,
				"left", left.Round(time.Minute).String(), "policy", m.stalePolicyName(), "renewed_here", m.renewerFor(c.path) != nil)
		}
	}
}

func issuerNameOf(c *crlInfo) string {
	s, err := FormatDN(c.list.RawIssuer)
	if err != nil {
		return c.list.Issuer.String()
	}
	return s
}

func (m *Manager) renewerFor(path string) *CRLRenewer {
	for i := range m.cfg.CRLRenewers {
		if m.cfg.CRLRenewers[i].File == path {
			return &m.cfg.CRLRenewers[i]
		}
	}
	return nil
}

// renewCRLs starts one renewal goroutine for the CRL files this process
// re-signs whose loaded CRL is past half its validity. The goroutine
// reloads the files when Renew succeeds, so the new CRL is in use before
// the next check.
func (m *Manager) renewCRLs(now time.Time) {
	if len(m.cfg.CRLRenewers) == 0 {
		return
	}
	st := m.state.Load()
	f := &m.crlFresh
	f.mu.Lock()
	if f.renewing {
		f.mu.Unlock()
		return
	}
	var due []CRLRenewer
	for _, r := range m.cfg.CRLRenewers {
		if last, ok := f.lastRenew[r.File]; ok && now.Sub(last) < crlRenewRetry && !now.Before(last) {
			continue
		}
		if crlFileDue(st, r.File, now) {
			due = append(due, r)
		}
	}
	if len(due) == 0 {
		f.mu.Unlock()
		return
	}
	if f.lastRenew == nil {
		f.lastRenew = map[string]time.Time{}
	}
	for _, r := range due {
		f.lastRenew[r.File] = now
	}
	f.renewing = true
	f.mu.Unlock() // a leaf lock: not held while starting the goroutine
	started := m.spawn(func() {
		ok := 0
		for _, r := range due {
			if err := r.Renew(); err != nil {
				m.log.Error("tlsconf: renewing the CRL failed; retrying in a minute", "listener", m.cfg.Name,
					"file", r.File, "error", err.Error())
				continue
			}
			ok++
			m.log.Info("tlsconf: renewed the CRL at half its validity", "listener", m.cfg.Name, "file", r.File)
		}
		if ok > 0 {
			m.pollFiles()
		}
		f.mu.Lock()
		f.renewing = false
		f.mu.Unlock()
	})
	if !started {
		f.mu.Lock()
		f.renewing = false
		f.mu.Unlock()
	}
}

// crlFileDue reports whether a CRL loaded from path is past half its
// validity.
func crlFileDue(st *state, path string, now time.Time) bool {
	for _, list := range st.crls {
		for _, c := range list {
			if c.path == path && crlRenewDue(c, now) {
				return true
			}
		}
	}
	return false
}
