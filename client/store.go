package client

import (
	"slices"
	"sync"
)

// Store persists the outgoing QoS 1 and 2 state of a session: the PUBLISH
// packets not yet acknowledged and the PUBREL packets not yet completed,
// encoded for the session's protocol version. A Client calls it while
// holding its lock, so implementations should be fast; they must be safe
// for concurrent use if several Clients share one (with different client
// IDs they should not).
//
// With Config.CleanStart, Dial calls Reset; otherwise Dial loads the
// stored packets and resends them (DUP set) if the server resumes the
// session.
type Store interface {
	// Put stores data under packet identifier id, replacing any previous
	// entry for id but keeping its position in the order. data is only
	// valid during the call.
	Put(id uint16, data []byte) error
	// Delete removes the entry for id; a missing id is not an error.
	Delete(id uint16) error
	// Load returns the entries in the order they were first put.
	Load() ([]StoredPacket, error)
	// Reset removes every entry.
	Reset() error
}

// StoredPacket is one entry of a Store.
type StoredPacket struct {
	ID   uint16
	Data []byte // an encoded PUBLISH or PUBREL
}

// MemoryStore is a Store in memory, for handing a session from one Client
// to the next within a process. The zero value is ready; it is safe for
// concurrent use.
type MemoryStore struct {
	mu      sync.Mutex
	entries []StoredPacket
}

var _ Store = (*MemoryStore)(nil)

func (m *MemoryStore) Put(id uint16, data []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := slices.Clone(data)
	for i := range m.entries {
		if m.entries[i].ID == id {
			m.entries[i].Data = d
			return nil
		}
	}
	m.entries = append(m.entries, StoredPacket{ID: id, Data: d})
	return nil
}

func (m *MemoryStore) Delete(id uint16) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries = slices.DeleteFunc(m.entries, func(e StoredPacket) bool { return e.ID == id })
	return nil
}

func (m *MemoryStore) Load() ([]StoredPacket, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]StoredPacket, len(m.entries))
	for i, e := range m.entries {
		out[i] = StoredPacket{ID: e.ID, Data: slices.Clone(e.Data)}
	}
	return out, nil
}

func (m *MemoryStore) Reset() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries = nil
	return nil
}

// Len returns the number of stored entries.
func (m *MemoryStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries)
}
