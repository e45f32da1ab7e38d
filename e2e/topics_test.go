package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestTopicChecks(t *testing.T) {
	var c topicChecks
	for round := 0; round < 2; round++ { // the second round hits the cache
		for _, topic := range []string{"a", "factory/line1/temp", strings.Repeat("x", topicCacheMaxLen), strings.Repeat("y", topicCacheMaxLen+1)} {
			got, err := c.check(topic)
			if err != nil || got.check != computeTopicCheck(topic) {
				t.Fatalf("round %d: check(%.20q) = %x, %v", round, topic, got.check, err)
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
		if got, err := c.check(topic); err != nil || got.check != computeTopicCheck(topic) {
			t.Fatalf("check(%q) = %x, %v", topic, got.check, err)
		}
		c.mu.Lock()
		n := len(c.m)
		c.mu.Unlock()
		if n > topicCacheEntries {
			t.Fatalf("cache grew to %d entries (bound %d)", n, topicCacheEntries)
		}
	}
}

// TestTopicMatchMemo checks that the remembered filter match is always
// MatchTopic of the filter asked about, as filters change.
func TestTopicMatchMemo(t *testing.T) {
	var c topicChecks
	long := strings.Repeat("z", topicCacheMaxLen+1)
	for _, topic := range []string{"factory/a/temp", "factory/a", long} {
		for range 2 {
			for _, filter := range []string{"factory/+/temp", "factory/#", "other/#", "#", "factory/+/temp", "factory/a/temp", "+"} {
				for range 2 { // the second time may come from the memo
					info, err := c.check(topic)
					if err != nil {
						t.Fatal(err)
					}
					if got, want := c.match(info, filter, topic), MatchTopic(filter, topic); got != want {
						t.Fatalf("match(%q, %.20q) = %v, want %v", filter, topic, got, want)
					}
				}
			}
		}
	}
}

// TestAppendKeyAAD checks the fast AAD builder against the reference one
// for topic names of every length class.
func TestAppendKeyAAD(t *testing.T) {
	for _, sender := range []string{"s", strings.Repeat("s", 24), strings.Repeat("s", 255)} {
		for _, epoch := range []uint64{0, 24, 1 << 40} {
			ek, err := NewEpochKey("temps", "#", epoch, testSecret(1), nil, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			key, err := ek.SenderKey(sender)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range []int{1, 23, 24, 255, 256, 65535} {
				topic := strings.Repeat("t", n)
				protected := []byte{0xa0}
				want := appendEncAAD(nil, protected, topic, key.group, key.epoch, key.sender)
				if got := appendKeyAAD(nil, protected, topic, key); !bytes.Equal(got, want) {
					t.Fatalf("sender %d bytes, epoch %d, topic %d bytes: got %x, want %x", len(sender), epoch, n, got, want)
				}
			}
		}
	}
}

// otherEpochKeys is an OpenKeys that answers every request with one key,
// whatever epoch was asked for.
type otherEpochKeys struct{ key *SenderKey }

func (k otherEpochKeys) OpenKey(string, uint64, string) (*SenderKey, error) { return k.key, nil }

// TestOpenBindsHeaderEpoch checks that the associated data carries the
// epoch of the header even when a custom OpenKeys returns a key labelled
// with another epoch (same key material).
func TestOpenBindsHeaderEpoch(t *testing.T) {
	ek, _ := NewEpochKey("temps", "factory/#", 5, testSecret(1), nil, time.Time{})
	sealKey, _ := ek.SenderKey("sensor-1")
	msg := sealWith(sealKey, "factory/a", 1, t0.UnixMilli(), 0, []byte("x"))
	other, err := NewSenderKey("temps", "factory/#", 6, "sensor-1", sealKey.Material(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	o, err := NewGroupOpener(OpenerConfig{Keys: otherEpochKeys{other}, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	m, err := o.Open("factory/a", msg)
	if err != nil || string(m.Plaintext) != "x" || m.Epoch != 5 {
		t.Fatalf("Open = %+v, %v", m, err)
	}
}
