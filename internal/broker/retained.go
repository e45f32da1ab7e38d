package broker

import "github.com/moatmq/moat/internal/topic"

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
