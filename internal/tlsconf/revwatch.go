package tlsconf

import (
	"container/heap"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"
)

// maxOCSPRechecksPerTick bounds the OCSP re-checks started per poll.
const maxOCSPRechecksPerTick = 64

// watchEntry is one watched live session.
type watchEntry struct {
	id       uint64
	chain    []*x509.Certificate // verified, leaf to root
	ocspKey  string              // "" when OCSP is off or there is no issuer
	notAfter time.Time           // earliest NotAfter in the chain
	drop     func(Reason)
	heapIdx  int
}

// watcher indexes live sessions by certificate (for OCSP answers) and by
// expiry (a min-heap), so 20,000 sessions cost one goroutine in total.
type watcher struct {
	m        *Manager
	mu       sync.Mutex
	nextID   uint64
	entries  map[uint64]*watchEntry
	byKey    map[string]map[uint64]*watchEntry
	expiry   expiryHeap
	checking map[string]bool // OCSP re-checks in flight
}

func newWatcher(m *Manager) *watcher {
	return &watcher{m: m, entries: map[uint64]*watchEntry{}, byKey: map[string]map[uint64]*watchEntry{}, checking: map[string]bool{}}
}

// Watch registers a live session authenticated by peer (the certificates
// from tls.ConnectionState.PeerCertificates). drop is called at most once,
// from the Manager's goroutine, when the session must end: the certificate
// or a CA of its chain was revoked (CRL reload, OCSP re-check), expired, its
// CRL went stale under CRLStaleRefuse, or its CA was removed. It is called
// within PollInterval (+ the OCSP cache TTL for OCSP revocations); drop must
// not block (close the connection or signal a channel). The returned stop
// func unregisters the session (call it when the connection closes; it is
// idempotent). If the chain does not verify now, Watch returns the
// *VerifyError and registers nothing.
func (m *Manager) Watch(peer []*x509.Certificate, drop func(Reason)) (stop func(), err error) {
	if m.closed() {
		return func() {}, ErrClosed
	}
	chain, err := m.verifyPeer(m.ctx, m.state.Load(), peer)
	if err != nil {
		return func() {}, err
	}
	e := &watchEntry{chain: chain, drop: drop, notAfter: chain[0].NotAfter}
	for _, c := range chain[1:] {
		if c.NotAfter.Before(e.notAfter) {
			e.notAfter = c.NotAfter
		}
	}
	if m.cfg.OCSP.Mode != OCSPOff && len(chain) > 1 {
		e.ocspKey = ocspKey(chain[0], chain[1])
	}
	w := m.watch
	w.mu.Lock()
	w.nextID++
	e.id = w.nextID
	w.entries[e.id] = e
	if e.ocspKey != "" {
		set := w.byKey[e.ocspKey]
		if set == nil {
			set = map[uint64]*watchEntry{}
			w.byKey[e.ocspKey] = set
		}
		set[e.id] = e
	}
	heap.Push(&w.expiry, e)
	w.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { w.remove(e.id) }) }, nil
}

// Watched returns the number of sessions being watched.
func (m *Manager) Watched() int {
	m.watch.mu.Lock()
	defer m.watch.mu.Unlock()
	return len(m.watch.entries)
}

// remove unregisters an entry; it reports whether it was still registered.
func (w *watcher) remove(id uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.removeLocked(id) != nil
}

func (w *watcher) removeLocked(id uint64) *watchEntry {
	e, ok := w.entries[id]
	if !ok {
		return nil
	}
	delete(w.entries, id)
	if e.ocspKey != "" {
		if set := w.byKey[e.ocspKey]; set != nil {
			delete(set, id)
			if len(set) == 0 {
				delete(w.byKey, e.ocspKey)
			}
		}
	}
	if e.heapIdx >= 0 && e.heapIdx < len(w.expiry) && w.expiry[e.heapIdx] == e {
		heap.Remove(&w.expiry, e.heapIdx)
	}
	return e
}

// fire unregisters the entries and calls their drop funcs, outside the lock.
func (w *watcher) fire(ids []uint64, reasons []Reason, details []string) {
	type todo struct {
		e      *watchEntry
		r      Reason
		detail string
	}
	var run []todo
	w.mu.Lock()
	for i, id := range ids {
		if e := w.removeLocked(id); e != nil {
			run = append(run, todo{e, reasons[i], details[i]})
		}
	}
	w.mu.Unlock()
	for _, t := range run {
		leaf := t.e.chain[0]
		subj, _ := SubjectDN(leaf)
		w.m.log.Warn("tlsconf: disconnecting live session", "listener", w.m.cfg.Name, "reason", t.r.String(),
			"subject", subj, "serial", fmt.Sprintf("%X", leaf.SerialNumber), "detail", t.detail)
		t.e.drop(t.r)
	}
}

// expire drops sessions whose chain has passed its NotAfter.
func (w *watcher) expire(now time.Time) {
	var ids []uint64
	var reasons []Reason
	var details []string
	w.mu.Lock()
	for len(w.expiry) > 0 && now.After(w.expiry[0].notAfter) {
		e := heap.Pop(&w.expiry).(*watchEntry)
		ids = append(ids, e.id)
		reasons = append(reasons, ReasonExpired)
		details = append(details, "certificate chain expired at "+e.notAfter.UTC().Format(time.RFC3339))
	}
	w.mu.Unlock()
	w.fire(ids, reasons, details)
}

// recheckAll applies the CRLs of st (and, when caChanged, the CA pool) to
// every watched session. Called after a reload and when a CRL turns stale.
func (w *watcher) recheckAll(st *state, caChanged bool) {
	w.mu.Lock()
	snap := make([]*watchEntry, 0, len(w.entries))
	for _, e := range w.entries {
		snap = append(snap, e)
	}
	w.mu.Unlock()
	if len(snap) == 0 {
		return
	}
	now := w.m.now()
	var ids []uint64
	var reasons []Reason
	var details []string
	for _, e := range snap {
		var err error
		if caChanged {
			// Re-verify against the new pool (OCSP is not consulted here:
			// its cache is checked on its own cadence).
			_, err = w.m.verifyChainNoOCSP(st, e.chain, now)
		} else {
			err = w.m.checkCRLs(st, e.chain, now)
		}
		var ve *VerifyError
		if errors.As(err, &ve) {
			ids = append(ids, e.id)
			reasons = append(reasons, ve.Reason)
			details = append(details, ve.Detail)
		}
	}
	w.fire(ids, reasons, details)
}

// verifyChainNoOCSP re-verifies a previously verified chain against st.
func (m *Manager) verifyChainNoOCSP(st *state, chain []*x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	leaf := chain[0]
	if st.roots == nil {
		return nil, certError(ReasonUntrusted, leaf, "no CA is configured")
	}
	opts := x509.VerifyOptions{Roots: st.roots, Intermediates: x509.NewCertPool(), CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	chains, err := leaf.Verify(opts)
	if err != nil {
		ve := classifyVerifyError(leaf, err, now)
		if ve.Reason == ReasonUntrusted {
			ve.Detail = "its CA is no longer trusted after a reload: " + ve.Detail
		}
		return nil, ve
	}
	var firstErr error
	for _, c := range chains {
		if err := m.checkCRLs(st, c, now); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		return c, nil
	}
	return nil, firstErr
}

// recheckOCSP starts re-checks for watched certificates whose cached OCSP
// answer has expired, and drops sessions whose certificate is now revoked.
func (w *watcher) recheckOCSP(now time.Time) {
	type job struct {
		key          string
		leaf, issuer *x509.Certificate
	}
	var jobs []job
	w.mu.Lock()
	for key, set := range w.byKey {
		if len(jobs) >= maxOCSPRechecksPerTick {
			break
		}
		if w.checking[key] || w.m.ocsp.fresh(key, now, w.m.ocspRecheck()) != nil {
			continue
		}
		for _, e := range set {
			jobs = append(jobs, job{key, e.chain[0], e.chain[1]})
			break
		}
		w.checking[key] = true
	}
	w.mu.Unlock()
	for _, j := range jobs {
		started := w.m.spawn(func() {
			// The cached answer is older than the re-check period (or
			// gone): ask the responder again.
			r := w.m.ocsp.refresh(w.m.ctx, j.leaf, j.issuer)
			w.mu.Lock()
			delete(w.checking, j.key)
			var ids []uint64
			if r.err == nil && r.status == ocsp.Revoked {
				for id := range w.byKey[j.key] {
					ids = append(ids, id)
				}
			}
			w.mu.Unlock()
			if r.err != nil {
				subj, _ := SubjectDN(j.leaf)
				w.m.log.Warn("tlsconf: OCSP re-check of a live session failed; keeping it", "listener", w.m.cfg.Name,
					"subject", subj, "serial", fmt.Sprintf("%X", j.leaf.SerialNumber), "error", r.err.Error())
			}
			if len(ids) == 0 {
				return
			}
			reasons := make([]Reason, len(ids))
			details := make([]string, len(ids))
			for i := range ids {
				reasons[i] = ReasonRevoked
				details[i] = "OCSP responder says revoked at " + r.revokedAt.UTC().Format(time.RFC3339)
			}
			w.fire(ids, reasons, details)
		})
		if !started {
			w.mu.Lock()
			delete(w.checking, j.key)
			w.mu.Unlock()
		}
	}
}

// expiryHeap orders entries by notAfter.
type expiryHeap []*watchEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].notAfter.Before(h[j].notAfter) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*watchEntry)
	e.heapIdx = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	e.heapIdx = -1
	*h = old[:n-1]
	return e
}
