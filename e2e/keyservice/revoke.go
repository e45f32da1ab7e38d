package keyservice

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrRevoked is wrapped by a [CertChecker]'s errors when a certificate of
// the chain is revoked.
var ErrRevoked = errors.New("keyservice: certificate revoked")

// CertChecker verifies members' client certificates against the current CA
// pool, CRLs and OCSP, and watches them for a later revocation. moat keys
// serve passes the listener's internal/tlsconf.Manager (the broker's
// checker: CRL files reloaded when they change, OCSP with a cache and live
// re-checks). Implementations are safe for concurrent use.
type CertChecker interface {
	// VerifyChain verifies the certificates a client presented (leaf
	// first) and returns the verified chain, leaf to root. The error wraps
	// ErrRevoked when a certificate of the chain is revoked.
	VerifyChain(ctx context.Context, peer []*x509.Certificate) ([]*x509.Certificate, error)
	// Watch watches a verified chain. ended is called at most once, from
	// another goroutine, when the chain stops being valid: revoked is true
	// for a revocation (CRL or OCSP) and false for other ends (expiry, a
	// CA no longer trusted, a stale CRL); ended must not block. stop ends
	// the watch and is idempotent. When the chain is not valid now, Watch
	// returns an error (wrapping ErrRevoked for a revocation) and watches
	// nothing.
	Watch(chain []*x509.Certificate, ended func(revoked bool, detail string)) (stop func(), err error)
}

// certWatch is the watch of a member's latest certificate.
type certWatch struct {
	leaf [32]byte // SHA-256 of the leaf certificate
	stop func()   // nil while not watched (not started, or ended)
}

// pendingRevocation is a revocation waiting for Run to apply it.
type pendingRevocation struct {
	leaf   [32]byte
	serial string
	detail string
}

// revokedRec records why a member was removed from its groups.
type revokedRec struct {
	Serial string    `json:"serial"`
	Detail string    `json:"detail"`
	Groups []string  `json:"groups"`
	At     time.Time `json:"at"`
}

func leafSum(chain []*x509.Certificate) [32]byte { return sha256.Sum256(chain[0].Raw) }

// verifyMember verifies the client's certificates with Config.Certs,
// records the chain as the member's latest, and watches it. It returns the
// error to answer with.
func (s *Service) verifyMember(ctx context.Context, id string, peer []*x509.Certificate) error {
	chain, err := s.cfg.Certs.VerifyChain(ctx, peer)
	if err != nil {
		if errors.Is(err, ErrRevoked) {
			s.queueRevocation(id, leafSum(peer), fmt.Sprintf("%X", peer[0].SerialNumber), err.Error())
		}
		return err
	}
	return s.noteChain(id, chain)
}

// noteChain stores chain as the latest certificate of member id (when id
// is a member of some group) and watches it.
func (s *Service) noteChain(id string, chain []*x509.Certificate) error {
	sum := leafSum(chain)
	s.watchMu.Lock()
	w := s.watches[id]
	same := w != nil && w.leaf == sum && w.stop != nil
	s.watchMu.Unlock()
	if same {
		return nil
	}
	ders := make([][]byte, len(chain))
	for i, c := range chain {
		ders[i] = c.Raw
	}
	stored := false
	s.mu.Lock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		if !isMember(tx, id) {
			return nil
		}
		mb := tx.Bucket(bktMembers)
		var m memberRec
		if _, err := getJSON(mb, []byte(id), &m); err != nil {
			return err
		}
		m.Chain = ders
		stored = true
		return putJSON(mb, []byte(id), &m)
	})
	s.mu.Unlock()
	if err != nil || !stored {
		return err
	}
	s.watchChain(id, chain)
	return nil
}

// watchChain starts watching chain as member id's latest certificate,
// ending the watch of an earlier one.
func (s *Service) watchChain(id string, chain []*x509.Certificate) {
	sum := leafSum(chain)
	serial := fmt.Sprintf("%X", chain[0].SerialNumber)
	s.watchMu.Lock()
	if s.watchClosed {
		s.watchMu.Unlock()
		return
	}
	var prev func()
	if w := s.watches[id]; w != nil {
		if w.leaf == sum && w.stop != nil {
			s.watchMu.Unlock()
			return
		}
		prev = w.stop
	}
	s.watches[id] = &certWatch{leaf: sum}
	s.watchMu.Unlock()
	if prev != nil {
		prev()
	}
	stop, err := s.cfg.Certs.Watch(chain, func(revoked bool, detail string) {
		if revoked {
			s.queueRevocation(id, sum, serial, detail)
			return
		}
		s.watchMu.Lock()
		if w := s.watches[id]; w != nil && w.leaf == sum {
			w.stop = nil // watched again by the next rewatch
		}
		s.watchMu.Unlock()
		s.log.Info("keyservice: member certificate no longer watched", "member", id, "serial", serial, "reason", detail)
	})
	if err != nil {
		if errors.Is(err, ErrRevoked) {
			s.queueRevocation(id, sum, serial, err.Error())
		} else {
			s.log.Debug("keyservice: member certificate not watched", "member", id, "serial", serial, "err", err)
		}
		return
	}
	s.watchMu.Lock()
	if w := s.watches[id]; w != nil && w.leaf == sum && w.stop == nil && !s.watchClosed {
		w.stop = stop
		stop = nil
	}
	s.watchMu.Unlock()
	if stop != nil {
		stop()
	}
}

// queueRevocation hands a revocation to Run; it never blocks.
func (s *Service) queueRevocation(id string, leaf [32]byte, serial, detail string) {
	s.watchMu.Lock()
	s.pending[id] = pendingRevocation{leaf: leaf, serial: serial, detail: detail}
	s.watchMu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// rewatch watches the stored latest certificate of every member that is
// not watched now: at start (revocations published while the service was
// stopped take effect then) and after a watch ended without a revocation.
func (s *Service) rewatch() {
	if s.cfg.Certs == nil {
		return
	}
	type rec struct {
		id    string
		chain []*x509.Certificate
	}
	var recs []rec
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktMembers).ForEach(func(k, v []byte) error {
			var m memberRec
			if _, err := getJSON(tx.Bucket(bktMembers), k, &m); err != nil || len(m.Chain) == 0 {
				return err
			}
			chain := make([]*x509.Certificate, 0, len(m.Chain))
			for _, der := range m.Chain {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return fmt.Errorf("keyservice: stored certificate of %q: %w", k, err)
				}
				chain = append(chain, c)
			}
			recs = append(recs, rec{string(k), chain})
			return nil
		})
	})
	if err != nil {
		s.log.Error("keyservice: reading member certificates", "err", err)
		return
	}
	for _, r := range recs {
		s.watchMu.Lock()
		w := s.watches[r.id]
		watched := w != nil && w.stop != nil && w.leaf == leafSum(r.chain)
		s.watchMu.Unlock()
		if !watched {
			s.watchChain(r.id, r.chain)
		}
	}
}

// applyRevocations removes every member whose latest certificate was
// revoked from all its groups.
func (s *Service) applyRevocations() {
	s.watchMu.Lock()
	pending := s.pending
	s.pending = map[string]pendingRevocation{}
	s.watchMu.Unlock()
	ids := make([]string, 0, len(pending))
	for id := range pending {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := s.removeRevoked(id, pending[id]); err != nil {
			s.log.Error("keyservice: removing a member whose certificate was revoked failed; retrying", "member", id, "err", err)
			s.watchMu.Lock()
			if _, ok := s.pending[id]; !ok {
				s.pending[id] = pending[id]
			}
			s.watchMu.Unlock()
		}
	}
}

// removeRevoked removes id from every group, starting a new epoch in each,
// forgets its registered key and certificate, and records why. A
// revocation of a certificate that is no longer the member's latest (the
// member has since authenticated with another one) changes nothing: the
// revoked certificate cannot authenticate any more.
func (s *Service) removeRevoked(id string, p pendingRevocation) error {
	var groups, members []string
	s.mu.Lock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bktMembers)
		var m memberRec
		ok, err := getJSON(mb, []byte(id), &m)
		if err != nil {
			return err
		}
		if ok && len(m.Chain) > 0 && sha256.Sum256(m.Chain[0]) != p.leaf {
			return nil // superseded by a newer certificate
		}
		var all []*groupRec
		if err := tx.Bucket(bktGroups).ForEach(func(k, v []byte) error {
			g, err := s.loadGroup(tx, string(k))
			if err == nil {
				all = append(all, g)
			}
			return err
		}); err != nil {
			return err
		}
		for _, g := range all {
			if _, in := g.Members[id]; !in {
				continue
			}
			delete(g.Members, id)
			if err := s.newEpoch(tx, g); err != nil {
				return err
			}
			groups = append(groups, g.Name)
			members = append(members, g.memberIDs()...)
		}
		if !ok {
			return nil
		}
		m.PublicKey, m.Chain = nil, nil
		m.Revoked = &revokedRec{Serial: p.serial, Detail: p.detail, Groups: groups, At: s.cfg.Now()}
		return putJSON(mb, []byte(id), &m)
	})
	s.mu.Unlock()
	if err != nil {
		return err
	}
	var stop func()
	s.watchMu.Lock()
	if w := s.watches[id]; w != nil {
		stop = w.stop
		delete(s.watches, id)
	}
	s.watchMu.Unlock()
	if stop != nil {
		stop()
	}
	if len(groups) == 0 {
		return nil
	}
	s.log.Warn("keyservice: member certificate revoked; removed from its groups, new epochs started",
		"member", id, "serial", p.serial, "reason", p.detail, "groups", groups)
	slices.Sort(members)
	s.changed(slices.Compact(members))
	return nil
}

// stopWatches ends every certificate watch; Close calls it.
func (s *Service) stopWatches() {
	s.watchMu.Lock()
	s.watchClosed = true
	ws := s.watches
	s.watches = map[string]*certWatch{}
	s.watchMu.Unlock()
	for _, w := range ws {
		if w.stop != nil {
			w.stop()
		}
	}
}

// RevokedInfo describes the last removal of a member for a revoked
// certificate.
type RevokedInfo struct {
	Member string
	Serial string   // the revoked certificate's serial number, hex
	Detail string   // why the checker reported it revoked
	Groups []string // the groups it was removed from
	At     time.Time
}

// Revoked returns the members removed for a revoked certificate, sorted by
// member ID. A member added again keeps its record until it is removed
// again.
func (s *Service) Revoked() ([]RevokedInfo, error) {
	var out []RevokedInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bktMembers)
		return mb.ForEach(func(k, v []byte) error {
			var m memberRec
			if _, err := getJSON(mb, k, &m); err != nil || m.Revoked == nil {
				return err
			}
			r := m.Revoked
			out = append(out, RevokedInfo{Member: string(k), Serial: r.Serial, Detail: r.Detail, Groups: slices.Clone(r.Groups), At: r.At})
			return nil
		})
	})
	return out, err
}
