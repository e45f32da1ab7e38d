package broker

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/moatmq/moat/internal/topic"
)

// The record of recent messages: every PUBLISH (and will) the broker
// routes is noted here with its arrival time just before it is matched
// against the subscription index, so that a SUBSCRIBE handled a little
// late can find the messages that arrived after it but were routed before
// its subscription was in place (fence.go).
//
// The record is bounded three ways: by count (recentPerShard per shard),
// by bytes (recentShardBytes of topics and payloads per shard; a larger
// message is not recorded), and by age (recentWindow; older entries are
// dropped when the shard is next written or searched). It is split into
// shards, each with its own lock, so that publishers on different
// connections rarely meet: a connection's messages go to one shard, chosen
// round-robin when it is accepted. Only a SUBSCRIBE searches all shards.

const (
	recentShardBits  = 4
	recentShards     = 1 << recentShardBits
	recentPerShard   = 256
	recentShardBytes = 512 << 10
	// recentWindow is how late a SUBSCRIBE may be handled after it
	// arrived and still receive the messages that arrived after it, and
	// how long a session's fence lasts after its last subscription change.
	recentWindow = int64(time.Second)
)

// recentRing is the record. Its zero value is empty and ready.
type recentRing struct {
	shards [recentShards]recentShard
	next   atomic.Uint32 // round-robin shard choice
}

type recentShard struct {
	mu sync.Mutex
	// ents holds the entries tail..head-1 at ents[seq%recentPerShard];
	// made on first use.
	ents       []recentEntry
	head, tail uint64
	bytes      int   // topic and payload bytes of the live entries
	newest     int64 // the latest arrival time recorded
	_          [64]byte
}

// recentEntry is one routed message and its arrival time (a copy of
// msg.arrived, so that a search reads the shard's memory only), and its
// recentSize, so that dropping the entry does not read the message again:
// by then, hundreds of messages later, it has left the processor's caches.
type recentEntry struct {
	msg  *Message
	at   int64
	size int
}

// shardFor chooses the shard for a new connection.
func (r *recentRing) shardFor() uint8 {
	return uint8(r.next.Add(1) % recentShards)
}

func recentSize(m *Message) int { return len(m.Topic) + len(m.Payload) }

// reserve gives m (its arrived field set) its recentID in shard, before
// anything else can see m: a retained message is reserved before it is
// stored, add records it once it is sure to be routed. Called on the
// routing goroutine.
func (r *recentRing) reserve(shard uint8, m *Message) {
	sh := &r.shards[shard%recentShards]
	sh.mu.Lock()
	sh.reserveLocked(shard%recentShards, m)
	sh.mu.Unlock()
}

// add records m (its arrived field set, reserved or not), which is about
// to be routed. Called on the routing goroutine.
func (r *recentRing) add(shard uint8, m *Message) {
	size := recentSize(m)
	if size > recentShardBytes {
		return // m.recentID, if reserved, names nothing recorded
	}
	shard %= recentShards
	if m.recentID != 0 {
		shard = uint8(m.recentID & (recentShards - 1))
	}
	sh := &r.shards[shard]
	sh.mu.Lock()
	if m.recentID == 0 {
		sh.reserveLocked(shard, m)
	}
	seq := m.recentID>>recentShardBits - 1
	old := m.arrived - recentWindow
	for sh.tail < seq {
		// Older entries go when the bytes are short or they have aged
		// past the window; an empty slot at the tail (a message reserved
		// but not recorded yet) stays unless the bytes are short.
		e := &sh.ents[sh.tail%recentPerShard]
		if sh.bytes+size <= recentShardBytes && (e.msg == nil || e.at >= old) {
			break
		}
		sh.dropTail()
	}
	if seq >= sh.tail && sh.bytes+size <= recentShardBytes {
		sh.ents[seq%recentPerShard] = recentEntry{msg: m, at: m.arrived, size: size}
		sh.bytes += size
		sh.newest = max(sh.newest, m.arrived)
	}
	sh.mu.Unlock()
}

// reserveLocked takes the next sequence number of the shard for m,
// forgetting the oldest entry when all slots are taken. sh.mu held.
func (sh *recentShard) reserveLocked(shard uint8, m *Message) {
	if sh.ents == nil {
		sh.ents = make([]recentEntry, recentPerShard)
	}
	for sh.head-sh.tail >= recentPerShard {
		sh.dropTail()
	}
	seq := sh.head
	sh.head++
	m.recentID = (seq+1)<<recentShardBits | uint64(shard)
}

// dropTail forgets the oldest entry (or the empty slot of a message
// reserved but not recorded). sh.mu held.
func (sh *recentShard) dropTail() {
	e := &sh.ents[sh.tail%recentPerShard]
	sh.bytes -= e.size // 0 for an empty slot
	*e = recentEntry{}
	sh.tail++
}

// since appends to dst every recorded message that arrived after t, and
// not before now-recentWindow, whose topic matches one of filters (without
// any $share prefix). Entries past the window are dropped on the way.
func (r *recentRing) since(t, now int64, filters []string, dst []recentEntry) []recentEntry {
	old := now - recentWindow
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for sh.tail < sh.head {
			if e := &sh.ents[sh.tail%recentPerShard]; e.msg == nil || e.at >= old {
				break
			}
			sh.dropTail()
		}
		if sh.newest > t {
			for seq := sh.tail; seq < sh.head; seq++ {
				e := sh.ents[seq%recentPerShard]
				if e.msg != nil && e.at > t && e.at >= old && matchesAny(filters, e.msg.Topic) {
					dst = append(dst, e)
				}
			}
		}
		sh.mu.Unlock()
	}
	return dst
}

func matchesAny(filters []string, name string) bool {
	for _, f := range filters {
		if topic.MatchFilter(f, name) {
			return true
		}
	}
	return false
}
