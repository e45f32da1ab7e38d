package e2e

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestTopicChecks(t *testing.T) {
	var c topicChecks
	for round := 0; round < 2; round++ { // the second round hits the cache
		for _, topic := range []string{"a", "factory/line1/temp", strings.Repeat("x", topicCacheMaxLen), strings.Repeat("y", topicCacheMaxLen+1)} {
			got, err := c.check(topic)
			if err != nil || got != computeTopicCheck(topic) {
				t.Fatalf("round %d: check(%.20q) = %x, %v", round, topic, got, err)
			}
		}
		for _, topic := range []string{"", "a/+", "a/#", "a\x00", "\xff"} {
			if _, err := c.check(topic); !errors.Is(err, ErrWrongTopic) {
				t.Fatalf("round %d: invalid topic %q: %v", round, topic, err)
			}
		}
	}
	c.mu.Lock()
	if len(c.m) != 3 {
		t.Errorf("cache holds %d names, want the 3 valid ones not longer than %d bytes", len(c.m), topicCacheMaxLen)
	}
	c.mu.Unlock()
	for i := range 3 * topicCacheEntries {
		topic := fmt.Sprintf("t/%d", i)
		if got, err := c.check(topic); err != nil || got != computeTopicCheck(topic) {
			t.Fatalf("check(%q) = %x, %v", topic, got, err)
		}
		c.mu.Lock()
		n := len(c.m)
		c.mu.Unlock()
		if n > topicCacheEntries {
			t.Fatalf("cache grew to %d entries (bound %d)", n, topicCacheEntries)
		}
	}
}
