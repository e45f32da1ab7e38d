package tlsconf

import (
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// TicketKey is a session ticket key and when it was made. String leaves
// the key out.
type TicketKey struct {
	Key     [32]byte
	Created time.Time
}

// String describes k without its key bytes.
func (k TicketKey) String() string {
	return "session ticket key created " + k.Created.UTC().Format(time.RFC3339)
}

// GoString is String, so that %#v does not print the key either.
func (k TicketKey) GoString() string { return k.String() }

// TicketKeyStore keeps one listener's session ticket keys across restarts
// (in moat serve: the durable store, where every record is sealed). The
// keys are secrets: whoever holds one can read the session state inside
// every ticket it sealed (the client's certificates, the resumption
// secret), so a store must keep them encrypted. Implementations must be
// safe for concurrent use.
type TicketKeyStore interface {
	// LoadTicketKeys returns the saved keys, in any order; none saved is
	// not an error.
	LoadTicketKeys() ([]TicketKey, error)
	// SaveTicketKeys replaces the saved keys and returns once they are
	// durable.
	SaveTicketKeys(keys []TicketKey) error
}

// ticketRing holds the session ticket keys, newest first. The newest key
// encrypts new tickets; all of them decrypt, so a session stays resumable
// until its key is older than the configured lifetime.
type ticketRing struct {
	mu      sync.Mutex
	ring    [][32]byte
	created []time.Time
}

// due reports whether the newest key is older than the rotation interval.
func (r *ticketRing) due(now time.Time, rotation time.Duration) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.created) == 0 || now.Sub(r.created[0]) >= rotation
}

// rotate adds a fresh key and drops the keys whose lifetime has passed.
func (r *ticketRing) rotate(now time.Time, rnd io.Reader, rotation, lifetime time.Duration) error {
	var k [32]byte
	if _, err := io.ReadFull(rnd, k[:]); err != nil {
		return fmt.Errorf("tlsconf: session ticket key: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ring = append([][32]byte{k}, r.ring...)
	r.created = append([]time.Time{now}, r.created...)
	n := 1
	for n < len(r.created) && now.Sub(r.created[n]) < lifetime {
		n++
	}
	clear(r.ring[n:])
	r.ring, r.created = r.ring[:n], r.created[:n]
	return nil
}

// restore replaces the ring with the saved keys still usable at now:
// younger than lifetime, and not made later than one rotation interval
// from now (a clock that went back cannot age such a key properly). It
// returns how many it kept.
func (r *ticketRing) restore(saved []TicketKey, now time.Time, rotation, lifetime time.Duration) int {
	keep := make([]TicketKey, 0, len(saved))
	for _, k := range saved {
		if age := now.Sub(k.Created); age < lifetime && age > -rotation {
			keep = append(keep, k)
		}
	}
	slices.SortStableFunc(keep, func(a, b TicketKey) int { return b.Created.Compare(a.Created) })
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.ring)
	r.ring, r.created = nil, nil
	for _, k := range keep {
		r.ring = append(r.ring, k.Key)
		r.created = append(r.created, k.Created)
	}
	return len(keep)
}

// keys returns a copy of the current keys, newest first.
func (r *ticketRing) keys() [][32]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][32]byte(nil), r.ring...)
}

// saved returns the current keys with their creation times, newest first,
// as a TicketKeyStore keeps them.
func (r *ticketRing) saved() []TicketKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]TicketKey, len(r.ring))
	for i := range r.ring {
		out[i] = TicketKey{Key: r.ring[i], Created: r.created[i]}
	}
	return out
}

// initTickets sets the ticket keys up at New: the saved keys still within
// their lifetime when a TicketKeyStore is configured, and a new key when
// the newest is due for rotation (or there is none).
func (m *Manager) initTickets() error {
	now := m.now()
	if s := m.cfg.TicketKeyStore; s != nil {
		saved, err := s.LoadTicketKeys()
		if err != nil {
			// Resumption is an optimisation: start with new keys (clients
			// do full handshakes) rather than not at all.
			m.log.Error("tlsconf: could not load the saved session ticket keys; starting with new ones (clients do full handshakes)",
				"listener", m.cfg.Name, "error", err)
		} else if n := m.tickets.restore(saved, now, m.cfg.ticketRotation(), m.cfg.ticketLifetime()); n > 0 {
			m.log.Info("tlsconf: session ticket keys restored; clients resume their sessions", "listener", m.cfg.Name,
				"keys", n, "expired", len(saved)-n)
		}
	}
	if m.tickets.due(now, m.cfg.ticketRotation()) {
		return m.rotateTickets(now)
	}
	return nil
}

// rotateTickets makes a new ticket key, drops those past their lifetime
// and saves the ring, before the new key seals any ticket (the caller
// installs it afterwards). A failed save is logged, not fatal: tickets
// sealed with the new key then do not survive a restart.
func (m *Manager) rotateTickets(now time.Time) error {
	if err := m.tickets.rotate(now, m.rand, m.cfg.ticketRotation(), m.cfg.ticketLifetime()); err != nil {
		return err
	}
	if s := m.cfg.TicketKeyStore; s != nil {
		if err := s.SaveTicketKeys(m.tickets.saved()); err != nil {
			m.log.Error("tlsconf: could not save the session ticket keys; after a restart clients do full handshakes",
				"listener", m.cfg.Name, "error", err)
		}
	}
	return nil
}
