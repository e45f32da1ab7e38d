package e2e

import (
	"crypto/sha256"
	"strings"
	"sync"

	"github.com/moatmq/moat/e2e/internal/format"
)

// Bounds of a [topicChecks] cache.
const (
	// topicCacheEntries is the number of topic names remembered; the
	// cache is emptied when it is full.
	topicCacheEntries = 256
	// topicCacheMaxLen is the longest topic name remembered, so the cache
	// holds at most topicCacheEntries × topicCacheMaxLen bytes of names.
	topicCacheMaxLen = 512
)

// topicCheck is the topic check of the protected header: the first
// format.TopicCheckLen bytes of SHA-256(topic).
type topicCheck = [format.TopicCheckLen]byte

// computeTopicCheck hashes topic.
func computeTopicCheck(topic string) topicCheck {
	sum := sha256.Sum256([]byte(topic))
	return topicCheck(sum[:format.TopicCheckLen])
}

// topicChecks remembers the topic checks of recently used topic names.
// Validating and hashing a topic name costs more than a quarter of sealing
// or opening a small message, while a publisher or subscriber usually
// cycles through few names. Only names that passed ValidTopic are stored,
// so a hit stands for both the validation and the hash; the cache changes
// no result, only the time it takes. The zero value is an empty cache
// ready to use; it is safe for concurrent use.
type topicChecks struct {
	mu sync.Mutex
	m  map[string]topicCheck
}

// check validates topic (see ValidTopic) and returns its topic check.
func (c *topicChecks) check(topic string) (topicCheck, error) {
	c.mu.Lock()
	tc, ok := c.m[topic]
	c.mu.Unlock()
	if ok {
		return tc, nil
	}
	if err := ValidTopic(topic); err != nil {
		return tc, err
	}
	tc = computeTopicCheck(topic)
	if len(topic) <= topicCacheMaxLen {
		// Clone: topic may be a slice of a much larger string the caller
		// would not expect us to keep alive.
		topic = strings.Clone(topic)
		c.mu.Lock()
		if c.m == nil {
			c.m = make(map[string]topicCheck, topicCacheEntries)
		} else if len(c.m) >= topicCacheEntries {
			clear(c.m)
		}
		c.m[topic] = tc
		c.mu.Unlock()
	}
	return tc, nil
}
