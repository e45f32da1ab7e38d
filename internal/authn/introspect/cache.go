package introspect

import (
	"container/list"
	"sync"
	"time"
)

// cache maps token hashes to answers until a deadline, bounded in entries:
// when full, the least recently used entry is evicted; an expired entry
// is removed when it is next looked up. Safe for concurrent use.
type cache struct {
	max int

	mu    sync.Mutex
	order *list.List // of *entry, most recently used first
	byKey map[[32]byte]*list.Element
}

type entry struct {
	key   [32]byte
	a     answer
	until time.Time
}

func newCache(max int) *cache {
	return &cache{max: max, order: list.New(), byKey: map[[32]byte]*list.Element{}}
}

func (c *cache) get(key [32]byte, now time.Time) (answer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[key]
	if !ok {
		return answer{}, false
	}
	e := el.Value.(*entry)
	if !now.Before(e.until) {
		c.order.Remove(el)
		delete(c.byKey, key)
		return answer{}, false
	}
	c.order.MoveToFront(el)
	return e.a, true
}

func (c *cache) put(key [32]byte, a answer, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[key]; ok {
		e := el.Value.(*entry)
		e.a, e.until = a, until
		c.order.MoveToFront(el)
		return
	}
	for c.order.Len() >= c.max {
		el := c.order.Back()
		c.order.Remove(el)
		delete(c.byKey, el.Value.(*entry).key)
	}
	c.byKey[key] = c.order.PushFront(&entry{key: key, a: a, until: until})
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
