package broker

import (
	"sync"
	"sync/atomic"

	"github.com/moatmq/moat/internal/topic"
)

// RetainedStore holds retained messages by topic name. Implementations
// must be safe for concurrent use. The in-memory store is the default; a
// disk or clustered store implements the same interface.
type RetainedStore interface {
	// Set stores msg as the retained message of its topic, replacing any.
	Set(msg *Message)
	// Delete removes the retained message of topic.
	Delete(topic string)
	// Match calls fn for every retained message whose topic matches the
	// filter, until fn returns false.
	Match(filter string, fn func(*Message) bool)
	// Len returns the number of retained messages.
	Len() int
}

// NewMemoryRetained returns an in-memory RetainedStore.
func NewMemoryRetained() RetainedStore {
	return &memoryRetained{idx: topic.NewRetained[*Message]()}
}

type memoryRetained struct {
	idx *topic.Retained[*Message]
}

func (m *memoryRetained) Set(msg *Message)    { m.idx.Set(msg.Topic, msg) }
func (m *memoryRetained) Delete(topic string) { m.idx.Delete(topic) }
func (m *memoryRetained) Len() int            { return m.idx.Len() }
func (m *memoryRetained) Match(filter string, fn func(*Message) bool) {
	m.idx.Match(filter, func(_ string, msg *Message) bool { return fn(msg) })
}

// retainedOverhead approximates what a retained message costs beyond its
// topic, payload and properties: the Message, its index node and the
// accounting entry.
const retainedOverhead = 128

// retainedSize is the number of bytes a retained message is charged.
func retainedSize(m *Message) int64 {
	n := int64(len(m.Topic) + len(m.Payload) + retainedOverhead)
	if p := m.Props; p != nil {
		n += int64(len(p.ContentType) + len(p.ResponseTopic) + len(p.CorrelationData))
		for _, u := range p.User {
			n += int64(len(u.Key) + len(u.Value))
		}
	}
	return n
}

// retainedUsage is what one identity (or the whole store) holds.
type retainedUsage struct {
	count int
	bytes int64
}

type retainedEntry struct {
	owner string
	size  int64
}

// retainedQuota stores and clears retained messages through the
// RetainedStore, enforcing Config.MaxRetained* on the way. The check and
// the store update happen under one lock, so the accounting matches the
// store whatever the order of concurrent publications.
type retainedQuota struct {
	store                   RetainedStore
	maxCount, maxOwnerCount int
	maxBytes, maxOwnerBytes int64
	refused                 atomic.Int64
	mu                      sync.Mutex
	total                   retainedUsage
	byTopic                 map[string]retainedEntry
	byOwner                 map[string]*retainedUsage
}

func newRetainedQuota(cfg *Config) *retainedQuota {
	return &retainedQuota{
		store:         cfg.Retained,
		maxCount:      cfg.MaxRetained,
		maxBytes:      cfg.MaxRetainedBytes,
		maxOwnerCount: cfg.MaxRetainedPerIdentity,
		maxOwnerBytes: cfg.MaxRetainedBytesPerIdentity,
		byTopic:       make(map[string]retainedEntry),
		byOwner:       make(map[string]*retainedUsage),
	}
}

// retain stores msg as its topic's retained message (or clears the topic
// for an empty payload [MQTT-3.3.1-6] [MQTT-3.3.1-7]) on behalf of owner.
// owner "" is the server itself ($SYS), which is not limited. It returns
// a non-empty reason when a limit refused the message; nothing was
// changed then.
func (q *retainedQuota) retain(msg *Message, owner string) (refused string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	old, had := q.byTopic[msg.Topic]
	if len(msg.Payload) == 0 {
		q.store.Delete(msg.Topic)
		if had {
			q.unchargeLocked(msg.Topic, old)
		}
		return ""
	}
	size := retainedSize(msg)
	if owner != "" {
		// What the store and the owner would hold once the old message
		// (if any) is replaced.
		total := q.total
		var mine retainedUsage
		if u := q.byOwner[owner]; u != nil {
			mine = *u
		}
		if had {
			total.count--
			total.bytes -= old.size
			if old.owner == owner {
				mine.count--
				mine.bytes -= old.size
			}
		}
		switch {
		case total.count+1 > q.maxCount:
			return "the broker holds its maximum number of retained messages"
		case total.bytes+size > q.maxBytes:
			return "the broker holds its maximum bytes of retained messages"
		case mine.count+1 > q.maxOwnerCount:
			return "this identity holds its maximum number of retained messages"
		case mine.bytes+size > q.maxOwnerBytes:
			return "this identity holds its maximum bytes of retained messages"
		}
	}
	q.store.Set(msg)
	if had {
		q.unchargeLocked(msg.Topic, old)
	}
	q.byTopic[msg.Topic] = retainedEntry{owner: owner, size: size}
	q.total.count++
	q.total.bytes += size
	u := q.byOwner[owner]
	if u == nil {
		u = &retainedUsage{}
		q.byOwner[owner] = u
	}
	u.count++
	u.bytes += size
	return ""
}

func (q *retainedQuota) unchargeLocked(topic string, e retainedEntry) {
	delete(q.byTopic, topic)
	q.total.count--
	q.total.bytes -= e.size
	if u := q.byOwner[e.owner]; u != nil {
		u.count--
		u.bytes -= e.size
		if u.count == 0 {
			delete(q.byOwner, e.owner)
		}
	}
}

// usage returns the number and bytes of retained messages stored.
func (q *retainedQuota) usage() retainedUsage {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.total
}
