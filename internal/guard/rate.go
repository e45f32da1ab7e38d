package guard

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Rate limits use the generic cell rate algorithm: one "theoretical
// arrival time" (tat, in nanoseconds of the injected clock) per bucket. A
// bucket of rate r and burst b admits an event at now when, after adding
// the event's cost 1/r, tat lies at most b/r ahead of now. This is a token
// bucket that needs one integer and no refill step.

// Reasons of the rate decisions (constants: no allocation on the paths
// that return them).
const (
	ReasonConnRate         = "connection rate from this source address exceeded"
	ReasonListenerConnRate = "connection rate of the listener exceeded"
	ReasonConnsPerAddr     = "too many connections from this source address"
	ReasonThrottleLimit    = "client stayed over its message or byte rate limit too long"
)

// cost returns the nanoseconds n events cost at rate per second.
func cost(n int, rate float64) int64 { return int64(float64(n) * 1e9 / rate) }

// addrKey is a source address as the rate limits count it: IPv4, or IPv6
// cut to the configured prefix, in 16-byte form.
type addrKey [16]byte

func (g *Guard) keyOf(a netip.Addr) addrKey {
	a = a.Unmap().WithZone("")
	if a.Is6() && g.cfg.IPv6Prefix < 128 {
		if p, err := a.Prefix(g.cfg.IPv6Prefix); err == nil {
			a = p.Addr()
		}
	}
	return a.As16()
}

const tableWays = 8

type tableEntry struct {
	key  addrKey
	tat  int64
	used bool
}

type tableSet struct {
	mu   sync.Mutex
	ways [tableWays]tableEntry
}

// addrTable is a fixed-size, set-associative table of per-address token
// buckets. Its memory is allocated once: a flood from many (spoofed or
// rented) addresses replaces the most idle entries of a set and never
// grows it. Entries of limited addresses have the latest tat and are kept.
type addrTable struct {
	sets  []tableSet
	mask  uint64
	seed0 uint64
	seed1 uint64
	used  atomic.Int64
}

func newAddrTable(size int, seed [16]byte) *addrTable {
	nsets := 1
	for nsets*tableWays < size {
		nsets <<= 1
	}
	t := &addrTable{
		sets:  make([]tableSet, nsets),
		mask:  uint64(nsets - 1),
		seed0: binary.LittleEndian.Uint64(seed[:8]),
		seed1: binary.LittleEndian.Uint64(seed[8:]),
	}
	return t
}

func (t *addrTable) hash(k *addrKey) uint64 {
	h := (binary.LittleEndian.Uint64(k[:8]) ^ t.seed0) * 0x9e3779b97f4a7c15
	h ^= binary.LittleEndian.Uint64(k[8:]) ^ t.seed1
	h *= 0xbf58476d1ce4e5b9
	return h ^ h>>31
}

// allow charges one connection to k at now, at the rate of p (the
// rate in force: livelimits.go).
func (t *addrTable) allow(k addrKey, now int64, p *bucketParams) bool {
	s := &t.sets[t.hash(&k)&t.mask]
	s.mu.Lock()
	victim := -1
	for i := range s.ways {
		e := &s.ways[i]
		if !e.used {
			if victim < 0 || s.ways[victim].used {
				victim = i
			}
			continue
		}
		if e.key == k {
			tat := max(e.tat, now)
			if tat+p.inc-now > p.tau {
				s.mu.Unlock()
				return false
			}
			e.tat = tat + p.inc
			s.mu.Unlock()
			return true
		}
		if victim < 0 || (s.ways[victim].used && e.tat < s.ways[victim].tat) {
			victim = i
		}
	}
	e := &s.ways[victim]
	if !e.used {
		t.used.Add(1)
	}
	*e = tableEntry{key: k, tat: now + p.inc, used: true}
	s.mu.Unlock()
	return true
}

// gate is a lock-free bucket for one listener; its rate is the one in
// force (livelimits.go).
type gate struct {
	tat atomic.Int64
}

func (b *gate) allow(now int64, p *bucketParams) bool {
	for {
		old := b.tat.Load()
		tat := max(old, now)
		if tat+p.inc-now > p.tau {
			return false
		}
		if b.tat.CompareAndSwap(old, tat+p.inc) {
			return true
		}
	}
}

// AllowAccept reports whether a new connection from addr may proceed: call
// it right after accept, before any TLS work, and close the socket at once
// when it returns false (the reason is ReasonConnRate). It is O(1) and
// does not allocate. The zero Addr (a transport without addresses) is
// always allowed. Safe for concurrent use.
func (g *Guard) AllowAccept(addr netip.Addr) bool {
	p := g.live.conn.Load()
	if p == nil || !addr.IsValid() {
		return true
	}
	if g.conns.allow(g.keyOf(addr), g.now().UnixNano(), p) {
		return true
	}
	g.stats.connRateRefused.Add(1)
	return false
}

// Listener is the per-listener connection rate limit. Safe for concurrent
// use.
type Listener struct {
	g    *Guard
	name string
	b    *gate
}

// Listener returns the connection gate of the named listener; call it once
// per listener (each call makes a new bucket).
func (g *Guard) Listener(name string) *Listener {
	return &Listener{g: g, name: name, b: &gate{}}
}

// AllowAccept checks the source address's rate (Guard.AllowAccept) and
// then the listener's, so that a flooding address does not use up the
// listener's budget. A false result carries the reason to log. It is O(1)
// and does not allocate.
func (l *Listener) AllowAccept(addr netip.Addr) Decision {
	if !l.g.AllowAccept(addr) {
		return Decision{Reason: ReasonConnRate}
	}
	if p := l.g.live.listener.Load(); p != nil && !l.b.allow(l.g.now().UnixNano(), p) {
		l.g.stats.listenerRateRefused.Add(1)
		return Decision{Reason: ReasonListenerConnRate}
	}
	return Decision{Allow: true}
}

// connCounts counts open connections per source address. Entries exist
// only for addresses with open connections, so the map is bounded by the
// broker's connection limit.
type connCounts struct {
	mu sync.Mutex
	n  map[addrKey]int32
}

// Acquire counts a new connection from addr against MaxConnsPerAddr. When
// it allows, the caller must call Release(addr) once when the connection
// ends. Connections are counted while the limit is off too, so that one
// turned on at run time (SetLimits) counts those already open. Safe for
// concurrent use.
func (g *Guard) Acquire(addr netip.Addr) Decision {
	if !addr.IsValid() {
		return Decision{Allow: true}
	}
	k := g.keyOf(addr)
	limit := g.limits().MaxConnsPerAddr
	g.perAddr.mu.Lock()
	defer g.perAddr.mu.Unlock()
	if limit >= 0 && int(g.perAddr.n[k]) >= limit {
		g.stats.connsPerAddrRefused.Add(1)
		return Decision{Reason: ReasonConnsPerAddr}
	}
	g.perAddr.n[k]++
	return Decision{Allow: true}
}

// Release ends a connection counted by Acquire.
func (g *Guard) Release(addr netip.Addr) {
	if !addr.IsValid() {
		return
	}
	k := g.keyOf(addr)
	g.perAddr.mu.Lock()
	defer g.perAddr.mu.Unlock()
	if n := g.perAddr.n[k]; n > 1 {
		g.perAddr.n[k] = n - 1
	} else {
		delete(g.perAddr.n, k)
	}
}

// ClientLimiter holds one client's message and byte rate buckets. It is
// used by the one goroutine that reads the client's packets; it is not
// safe for concurrent use.
type ClientLimiter struct {
	g               *Guard
	msgTat, byteTat int64
	throttledSince  int64
	// perRead: the caller says when a new read of the client's socket
	// returned (NewRead); readAt is the clock reading the packets of
	// that read are charged at, 0 until the first of them.
	perRead bool
	readAt  int64
}

// NewClientLimiter returns the rate limiter for one client connection.
func (g *Guard) NewClientLimiter() *ClientLimiter { return &ClientLimiter{g: g} }

// NewRead says that the packets charged next came with a new read of the
// client's socket. From the first call on, Reserve reads the clock once
// per read (and again after a charge that asked for a pause) instead of
// once per packet: every packet is still charged, and paused after, on
// its own, at the time the read's first packet was charged, never later
// than its own. A reading earlier than the true time asks for a pause at
// least as long (by the time spent handling the read's earlier packets,
// microseconds), so the limits are not loosened. One clock reading per packet was about a hundredth of
// the broker's CPU under a fan-in of small messages.
func (l *ClientLimiter) NewRead() {
	l.perRead = true
	l.readAt = 0
}

// Reserve charges one message of n bytes and returns how long the caller
// must pause reading from the client's socket before reading the next
// packet (zero when within the limits). The charge is always made, so a
// client that does not slow down waits longer each time. When the client
// has been over its limit without a break for ThrottleLimit, the decision
// says to disconnect it (reason ReasonThrottleLimit). Reserve does not
// allocate.
func (l *ClientLimiter) Reserve(n int) (time.Duration, Decision) {
	cfg := l.g.rates.Load()
	now := l.readAt
	if now == 0 {
		now = l.g.now().UnixNano()
		if l.perRead {
			l.readAt = now
		}
	}
	var wait int64
	if cfg.MessageRate > 0 {
		inc := cost(1, cfg.MessageRate)
		l.msgTat = max(l.msgTat, now) + inc
		wait = max(wait, l.msgTat-now-int64(cfg.MessageBurst)*inc)
	}
	if cfg.ByteRate > 0 && n > 0 {
		l.byteTat = max(l.byteTat, now) + cost(n, cfg.ByteRate)
		wait = max(wait, l.byteTat-now-cost(cfg.ByteBurst, cfg.ByteRate))
	}
	if wait <= 0 {
		l.throttledSince = 0
		return 0, Decision{Allow: true}
	}
	l.readAt = 0 // the caller pauses: the next packet reads the clock again
	l.g.stats.throttled.Add(1)
	if l.throttledSince == 0 {
		l.throttledSince = now
	} else if now-l.throttledSince > int64(cfg.ThrottleLimit) {
		l.g.stats.throttleDisconnects.Add(1)
		return time.Duration(wait), Decision{Reason: ReasonThrottleLimit}
	}
	return time.Duration(wait), Decision{Allow: true}
}
