package authz

import "sync"

// DefaultCacheSize is the number of decisions a Cache keeps by default.
const DefaultCacheSize = 1024

// Cache memoizes the decisions of one connection (one Subject). Decisions
// are taken from a Holder and tagged with its generation: a Swap makes
// every cached decision stale at once, so a changed policy never serves an
// old allow. When full, the cache is emptied rather than grown (its size
// is bounded whatever topics a peer uses). It is safe for concurrent use.
type Cache struct {
	mu  sync.Mutex
	gen uint64
	max int
	m   map[CacheKey]Decision
}

// NewCache returns a Cache holding at most size decisions (DefaultCacheSize
// when size <= 0).
func NewCache(size int) *Cache {
	if size <= 0 {
		size = DefaultCacheSize
	}
	return &Cache{max: size, m: make(map[CacheKey]Decision)}
}

// Decide answers req from the cache or from h's current policy. All
// requests given to one Cache must carry the same Subject.
func (c *Cache) Decide(h *Holder, req Request) Decision {
	p, gen := h.Load()
	if p == nil {
		return denyNoPolicy
	}
	k := req.Key()
	c.mu.Lock()
	if c.gen != gen {
		clear(c.m)
		c.gen = gen
	}
	d, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return d
	}
	d = p.Decide(req)
	c.mu.Lock()
	if c.gen == gen {
		if len(c.m) >= c.max {
			clear(c.m)
		}
		c.m[k] = d
	}
	c.mu.Unlock()
	return d
}
