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
	// holds at most topicCacheEntries × topicCacheMaxLen bytes of names
	// (plus one filter per name, at most format.MaxGroup bytes each).
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

// topicChecks remembers, for recently used topic names, their topic check
// and whether the last key filter they were matched against covers them.
// Validating and hashing a topic name costs more than a quarter of sealing
// or opening a small message, while a publisher or subscriber usually
// cycles through few names, each always sealed under the same group.
// Only names that passed ValidTopic are stored, so a hit stands for both
// the validation and the hash, and a remembered match is MatchTopic of
// exactly the same filter and topic: the cache changes no result, only the
// time it takes. The zero value is an empty cache ready to use; it is safe
// for concurrent use.
type topicChecks struct {
	mu sync.Mutex
	m  map[string]topicInfo
}

// topicInfo is what topicChecks remembers about one valid topic name.
type topicInfo struct {
	check topicCheck
	// filter, when matched is true, is the last filter the topic was
	// matched against and match is MatchTopic(filter, topic).
	filter  string
	matched bool
	match   bool
}

// check validates topic (see ValidTopic) and returns its topic check, and
// what is remembered about it for topicChecks.match.
func (c *topicChecks) check(topic string) (topicInfo, error) {
	c.mu.Lock()
	info, ok := c.m[topic]
	c.mu.Unlock()
	if ok {
		return info, nil
	}
	if err := ValidTopic(topic); err != nil {
		return topicInfo{}, err
	}
	info = topicInfo{check: computeTopicCheck(topic)}
	if len(topic) <= topicCacheMaxLen {
		// Clone: topic may be a slice of a much larger string the caller
		// would not expect us to keep alive.
		topic = strings.Clone(topic)
		c.mu.Lock()
		if c.m == nil {
			c.m = make(map[string]topicInfo, topicCacheEntries)
		} else if len(c.m) >= topicCacheEntries {
			clear(c.m)
		}
		c.m[topic] = info
		c.mu.Unlock()
	}
	return info, nil
}

// match returns MatchTopic(filter, topic), where info is what check
// returned for topic, and remembers the answer for the next message on
// topic if topic is still in the cache.
func (c *topicChecks) match(info topicInfo, filter, topic string) bool {
	if info.matched && info.filter == filter {
		return info.match
	}
	m := MatchTopic(filter, topic)
	// Clone for the same reason as the topic (this is rare: a topic is
	// normally always matched against the same filter).
	info.filter, info.matched, info.match = strings.Clone(filter), true, m
	c.mu.Lock()
	if _, ok := c.m[topic]; ok {
		c.m[topic] = info
	}
	c.mu.Unlock()
	return m
}
