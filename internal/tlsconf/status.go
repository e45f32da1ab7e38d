package tlsconf

import (
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ocsp"
)

// OCSPStatus is a Manager's OCSP state, for metrics and status pages.
type OCSPStatus struct {
	// Responses counts the answers of OCSP responders, to client
	// certificate checks and staple fetches, by status: "good",
	// "revoked", "unknown", or "error" (no valid answer).
	Responses map[string]uint64
	// Staples lists the served certificates that name an OCSP responder,
	// with the state of their staple.
	Staples []StapleStatus
}

// StapleStatus is the OCSP staple of one served certificate.
type StapleStatus struct {
	CertFile string
	// Good: a "good" response is stapled to the certificate now.
	Good bool
	// NextUpdate is the stapled response's nextUpdate (zero: none, or
	// the responder gave none).
	NextUpdate time.Time
}

// ocspAnswers counts responder answers by status (ocsp.Good, ocsp.Revoked,
// ocsp.Unknown, then errors).
type ocspAnswers [4]atomic.Uint64

var ocspAnswerNames = [4]string{"good", "revoked", "unknown", "error"}

// count counts r and returns it.
func (a *ocspAnswers) count(r *ocspResult) *ocspResult {
	i := 3
	if r.err == nil && r.status >= ocsp.Good && r.status <= ocsp.Unknown {
		i = r.status
	}
	a[i].Add(1)
	return r
}

// OCSPStatus returns the OCSP counters and the staples served. Safe for
// concurrent use.
func (m *Manager) OCSPStatus() OCSPStatus {
	st := OCSPStatus{Responses: map[string]uint64{}}
	for i, name := range ocspAnswerNames {
		st.Responses[name] = m.ocsp.answers[i].Load()
	}
	for _, sc := range m.state.Load().certs {
		if len(sc.leaf.OCSPServer) == 0 || sc.issuer == nil || m.cfg.DisableOCSPStapling {
			continue
		}
		s := StapleStatus{CertFile: sc.pair.CertFile}
		if p := sc.staple.Load(); p != nil && p.der != nil {
			s.Good, s.NextUpdate = true, p.nextUpdate
		}
		st.Staples = append(st.Staples, s)
	}
	return st
}
