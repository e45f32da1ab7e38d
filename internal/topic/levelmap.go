package topic

import "sync"

// levelMap maps one topic level to a child node. Load and Range are
// lock-free and safe concurrently with Store and Delete (it wraps sync.Map,
// a concurrent hash trie since Go 1.24, whose Load does not allocate for a
// string key). Writers in this package are serialized by their index's
// mutex, so the map never sees concurrent writes to the same key.
type levelMap[N any] struct {
	m sync.Map // string → *N
}

func (l *levelMap[N]) load(level string) *N {
	v, ok := l.m.Load(level)
	if !ok {
		return nil
	}
	return v.(*N)
}

func (l *levelMap[N]) store(level string, n *N) { l.m.Store(level, n) }

func (l *levelMap[N]) delete(level string) { l.m.Delete(level) }

// each calls fn for every entry until fn returns false; it reports whether
// the iteration ran to the end.
func (l *levelMap[N]) each(fn func(level string, n *N) bool) bool {
	done := true
	l.m.Range(func(k, v any) bool {
		if !fn(k.(string), v.(*N)) {
			done = false
		}
		return done
	})
	return done
}
