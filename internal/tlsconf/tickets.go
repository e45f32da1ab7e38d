package tlsconf

import (
	"fmt"
	"io"
	"sync"
	"time"
)

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

// keys returns a copy of the current keys, newest first.
func (r *ticketRing) keys() [][32]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][32]byte(nil), r.ring...)
}
