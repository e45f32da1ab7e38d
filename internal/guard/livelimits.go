package guard

import (
	"fmt"
	"sync/atomic"
	"time"
)

// Limits are the guard's connection limits and the bounds of its
// bookkeeping, the Config fields of the same names. They change at run
// time (SetLimits), as the per-client rates (SetClientRates) and the
// detectors (SetDetectors) do; what stays as New set it is the memory
// allocated once (ConnTableSize), the way sources are counted
// (IPv6Prefix), the bans file and its watcher. A change applies to what
// comes next:
//
//   - ConnRate, ConnBurst, ListenerConnRate, ListenerConnBurst: to the
//     next accepted socket; a source address or listener keeps the time
//     its bucket already owes, charged at the new rate from then on.
//   - MaxConnsPerAddr: to the next connection; nobody is disconnected.
//     Open connections are counted whether the limit is on or off, so a
//     limit turned on counts those already open.
//   - TrackedKeys: to the next identity a detector starts counting (a
//     table over a lowered bound makes room by forgetting idle entries
//     first, one per new identity), and to the memory of automatic bans.
//   - RepeatMemory: to the next automatic ban.
//   - MaxBans: to the next ban added and the next read of the bans file.
//     It may not be lowered below the bans in force (SetLimits refuses).
type Limits struct {
	ConnRate          float64
	ConnBurst         int
	ListenerConnRate  float64
	ListenerConnBurst int
	MaxConnsPerAddr   int
	TrackedKeys       int
	RepeatMemory      time.Duration
	MaxBans           int
}

// liveLimits holds the Limits in force and the buckets' parameters
// derived from them. Each pointer is replaced, never written through, so
// readers need no lock.
type liveLimits struct {
	lim      atomic.Pointer[Limits]
	conn     atomic.Pointer[bucketParams] // nil: no per-address rate
	listener atomic.Pointer[bucketParams] // nil: no listener rate
}

// bucketParams are a connection rate in the terms of the generic cell
// rate algorithm (rate.go): the cost of one connection and the burst
// tolerance, in nanoseconds.
type bucketParams struct {
	inc, tau int64
}

// paramsOf returns the bucket of rate per second with burst; nil when
// the rate is off (zero or negative).
func paramsOf(rate float64, burst int) *bucketParams {
	if rate <= 0 {
		return nil
	}
	inc := cost(1, rate)
	return &bucketParams{inc: inc, tau: int64(burst) * inc}
}

func (l *liveLimits) store(lim *Limits) {
	l.conn.Store(paramsOf(lim.ConnRate, lim.ConnBurst))
	l.listener.Store(paramsOf(lim.ListenerConnRate, lim.ListenerConnBurst))
	l.lim.Store(lim)
}

// limitsOf returns the Limits of resolved settings.
func limitsOf(s *settings) *Limits {
	return &Limits{
		ConnRate: s.ConnRate, ConnBurst: s.ConnBurst, ListenerConnRate: s.ListenerConnRate, ListenerConnBurst: s.ListenerConnBurst,
		MaxConnsPerAddr: s.MaxConnsPerAddr, TrackedKeys: s.TrackedKeys, RepeatMemory: s.RepeatMemory, MaxBans: s.MaxBans,
	}
}

// limits returns the Limits in force.
func (g *Guard) limits() *Limits { return g.live.lim.Load() }

// Limits returns the connection limits and bookkeeping bounds in force,
// defaults applied. Safe for concurrent use.
func (g *Guard) Limits() Limits { return *g.limits() }

// SetLimits replaces the connection limits and bookkeeping bounds; zero
// fields take their defaults and negative rates and counts turn a limit
// off, as in Config. Invalid limits change nothing and return every
// problem, and so does a MaxBans below the number of bans in force (the
// bans file could no longer be read under it: remove bans first). It
// returns the limits now in force. Safe for concurrent use.
func (g *Guard) SetLimits(l Limits) (Limits, error) {
	c := Config{ConnRate: l.ConnRate, ConnBurst: l.ConnBurst, ListenerConnRate: l.ListenerConnRate, ListenerConnBurst: l.ListenerConnBurst,
		MaxConnsPerAddr: l.MaxConnsPerAddr, TrackedKeys: l.TrackedKeys, RepeatMemory: l.RepeatMemory, MaxBans: l.MaxBans}
	s, err := c.resolve()
	if err != nil {
		return g.Limits(), err
	}
	nl := limitsOf(&s)
	// Under bansMu, so that no ban is added between the count and the
	// change.
	g.bansMu.Lock()
	defer g.bansMu.Unlock()
	if n := len(g.bans.byID); nl.MaxBans < n {
		return g.Limits(), fmt.Errorf("guard: max_bans %d is below the %d bans in force; remove bans first (moat ban remove) or keep it at %d or more", nl.MaxBans, n, n)
	}
	g.live.store(nl)
	return *nl, nil
}
