package broker

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func recentMsg(topic string, payload int, at int64) *Message {
	return &Message{Topic: topic, Payload: make([]byte, payload), arrived: at}
}

func liveEntries(r *recentRing) (n, bytes int) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for seq := sh.tail; seq < sh.head; seq++ {
			if sh.ents[seq%recentPerShard].msg != nil {
				n++
			}
		}
		bytes += sh.bytes
		sh.mu.Unlock()
	}
	return n, bytes
}

// TestRecentRingBounds: the record keeps at most recentPerShard entries and
// recentShardBytes per shard, forgets what has aged past the window, and
// does not record a message larger than a shard may hold.
func TestRecentRingBounds(t *testing.T) {
	now := time.Now().UnixNano()
	t.Run("count", func(t *testing.T) {
		var r recentRing
		for i := range 3 * recentPerShard {
			r.add(1, recentMsg("c", 0, now+int64(i)))
		}
		if n, _ := liveEntries(&r); n != recentPerShard {
			t.Fatalf("%d entries, want %d", n, recentPerShard)
		}
		got := r.since(now-1, now, []string{"#"}, nil)
		if len(got) != recentPerShard || got[0].at != now+2*recentPerShard {
			t.Fatalf("found %d, the oldest at +%d; want the newest %d", len(got), got[0].at-now, recentPerShard)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		var r recentRing
		size := recentShardBytes / 4
		for i := range 10 {
			r.add(2, recentMsg("b", size-1, now+int64(i)))
		}
		if n, b := liveEntries(&r); n != 4 || b != 4*size {
			t.Fatalf("%d entries of %d bytes, want 4 of %d", n, b, 4*size)
		}
		r.add(2, recentMsg("big", recentShardBytes, now+100))
		if got := r.since(now+50, now, []string{"#"}, nil); len(got) != 0 {
			t.Fatal("a message larger than a shard was recorded")
		}
	})
	t.Run("age", func(t *testing.T) {
		var r recentRing
		r.add(3, recentMsg("a", 10, now-2*recentWindow))
		r.add(3, recentMsg("a", 10, now))
		if n, _ := liveEntries(&r); n != 1 {
			t.Fatalf("%d entries, want the recent one alone", n)
		}
		r.add(4, recentMsg("a", 10, now-recentWindow/2))
		if got := r.since(0, now+recentWindow, []string{"a"}, nil); len(got) != 1 {
			t.Fatalf("found %d entries past the window's start, want 1", len(got))
		}
		if n, _ := liveEntries(&r); n != 1 {
			t.Fatalf("%d entries after a search, want the aged one forgotten", n)
		}
	})
}

// TestRecentRingSince: a search finds the messages that arrived after the
// given time and match one of the filters, in every shard.
func TestRecentRingSince(t *testing.T) {
	var r recentRing
	now := time.Now().UnixNano()
	for i, topic := range []string{"a/1", "a/2", "b/1", "$SYS/x", "a/3"} {
		r.add(uint8(i), recentMsg(topic, 1, now+int64(i)))
	}
	var got []string
	for _, e := range r.since(now, now, []string{"a/+", "$SYS/#", "#"}, nil) {
		got = append(got, e.msg.Topic)
	}
	// "#" does not match $SYS [MQTT-4.7.2-1], "$SYS/#" does; a/1 arrived
	// at t itself, not after it.
	if strings.Join(got, " ") != "a/2 b/1 $SYS/x a/3" {
		t.Fatalf("found %v", got)
	}
}

// TestRecentRingReserve: a message reserved before it is stored is found
// once recorded; one reserved and never recorded (refused) is never found
// and holds no place once the shard moves on.
func TestRecentRingReserve(t *testing.T) {
	var r recentRing
	now := time.Now().UnixNano()
	kept, refused := recentMsg("r/kept", 1, now+1), recentMsg("r/refused", 1, now+2)
	r.reserve(5, kept)
	r.reserve(5, refused)
	if kept.recentID == 0 || refused.recentID == 0 || kept.recentID == refused.recentID {
		t.Fatalf("recentIDs %d, %d", kept.recentID, refused.recentID)
	}
	if got := r.since(now, now, []string{"#"}, nil); len(got) != 0 {
		t.Fatalf("found %d before anything was recorded", len(got))
	}
	r.add(0, recentMsg("r/other", 1, now+3)) // another shard
	r.add(9, kept)                           // its reserved shard wins
	got := r.since(now, now, []string{"r/#"}, nil)
	if len(got) != 2 || got[0].msg != kept && got[1].msg != kept {
		t.Fatalf("found %d entries without the reserved one", len(got))
	}
	for range recentPerShard {
		r.add(5, recentMsg("r/fill", 0, now+4))
	}
	for _, e := range r.since(now, now, []string{"r/#"}, nil) {
		if e.msg == refused {
			t.Fatal("a refused message was found")
		}
	}
}

func spillLen(r *recentRing) (n int) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		n += len(sh.spill)
		sh.mu.Unlock()
	}
	return n
}

// TestRecentPinKeeps: while pinned, every message that arrived since the
// pin's start is found, in per-shard order, however many arrived and
// however long ago (beyond the ring's count, bytes and age bounds, a
// message larger than a shard, a reserved message whose slot was reused);
// an older one is not kept; the release forgets what no pin needs.
func TestRecentPinKeeps(t *testing.T) {
	var r recentRing
	now := time.Now().UnixNano()
	r.add(0, recentMsg("p/before", 1, now-1))
	p := r.pin(now)
	late := recentMsg("p/reserved", 1, now+1)
	r.reserve(3, late)
	const n = 20 * recentPerShard * recentShards / 16 // 5,120
	step := 3 * recentWindow / n                      // over three windows
	var want []*Message
	for i := range n {
		m := recentMsg("p/"+string(rune('a'+i%4)), 100, now+2+int64(i)*step)
		r.add(uint8(i%3), m)
		want = append(want, m)
	}
	big := recentMsg("p/big", recentShardBytes+1, now+3*recentWindow)
	r.add(1, big)
	r.add(3, late) // its slot was reused long ago
	want = append(want, big, late)
	end := now + 3*recentWindow
	if !r.pinned(now) || r.pinned(now-1) {
		t.Fatal("pinned(t) wrong about the pin's start")
	}
	// A search within the window (a SUBSCRIBE's) forgets nothing pinned.
	r.since(end, end, []string{"#"}, nil)
	got := r.search(now, 0, []string{"p/#"}, nil)
	if len(got) != len(want) {
		t.Fatalf("found %d messages, want %d", len(got), len(want))
	}
	found := make(map[*Message]bool)
	last := make(map[uint64]uint64) // shard → last sequence, per arrival order
	slices.SortFunc(got, func(a, b recentEntry) int { return cmp.Compare(a.at, b.at) })
	for _, e := range got {
		found[e.msg] = true
		if e.msg == late || e.msg == big {
			continue
		}
		shard, seq := e.msg.recentID&(recentShards-1), e.msg.recentID>>recentShardBits
		if seq <= last[shard] {
			t.Fatalf("shard %d: sequence %d after %d", shard, seq, last[shard])
		}
		last[shard] = seq
	}
	for _, m := range want {
		if !found[m] {
			t.Fatalf("%s (+%d) not found", m.Topic, m.arrived-now)
		}
	}
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	p.Release()
	p.Release()
	if r.pinAt.Load() != 0 || spillLen(&r) != 0 || r.spilled.Load() != 0 || r.spilledBytes.Load() != 0 {
		t.Fatalf("after the release: pinAt %d, %d spilled (%d counted, %d bytes)",
			r.pinAt.Load(), spillLen(&r), r.spilled.Load(), r.spilledBytes.Load())
	}
}

// TestRecentPinBound: beyond the bound (messages or bytes) a pinned
// message is dropped and the pins that needed it report it; a pin made
// later does not; releasing the older pin keeps what the younger needs.
func TestRecentPinBound(t *testing.T) {
	for _, tc := range []struct {
		name            string
		messages, bytes int64
		payload         int
	}{
		{"messages", 100, 1 << 30, 1},
		{"bytes", 1 << 30, 50 * 1000, 999}, // topic "q/x" + 999 = 1,002 bytes
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r recentRing
			r.pinLimits.messages, r.pinLimits.bytes = tc.messages, tc.bytes
			now := time.Now().UnixNano()
			old := r.pin(now)
			for i := range recentPerShard + 150 {
				r.add(7, recentMsg("q/x", tc.payload, now+1+int64(i)))
			}
			if old.Err() == nil {
				t.Fatal("no error after the bound was overrun")
			}
			if got := r.spilled.Load(); got > tc.messages || r.spilledBytes.Load() > tc.bytes {
				t.Fatalf("%d spilled (%d bytes), bound %d (%d)", got, r.spilledBytes.Load(), tc.messages, tc.bytes)
			}
			young := r.pin(now + 1_000_000)
			r.add(7, recentMsg("q/young", tc.payload, now+1_000_001))
			old.Release()
			if young.Err() != nil {
				t.Fatalf("a pin made after the overrun reports %v", young.Err())
			}
			got := r.search(young.Since(), 0, []string{"q/young"}, nil)
			if len(got) != 1 {
				t.Fatalf("found %d of the younger pin's message", len(got))
			}
			young.Release()
			if r.spilled.Load() != 0 || spillLen(&r) != 0 {
				t.Fatal("spill left after the last release")
			}
		})
	}
}

// BenchmarkRecentAddPinned is BenchmarkRecentAdd while a claim pins the
// record: every message leaving a ring goes to the spill. The pin is
// renewed every 32,768 messages per publisher, as claims come and go,
// so that the spills stay within their bound.
func BenchmarkRecentAddPinned(b *testing.B) {
	var r recentRing
	now := time.Now().UnixNano()
	var mu sync.Mutex
	pin := r.pin(now)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		shard := r.shardFor()
		m := &Message{Topic: "bench/recent", Payload: make([]byte, 64)}
		i := int64(0)
		for pb.Next() {
			i++
			m.arrived, m.recentID = now+i, 0
			r.add(shard, m)
			if i%32768 == 0 {
				mu.Lock()
				old := pin
				pin = r.pin(now + i)
				old.Release()
				mu.Unlock()
			}
		}
	})
	pin.Release()
	if pin.Err() != nil {
		b.Log("the bound was reached")
	}
}
