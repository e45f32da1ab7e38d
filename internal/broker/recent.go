package broker

import (
	"errors"
	"slices"
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
//
// A session moving to this node from another (cluster_sessions.go) needs
// every message of this node's clients that arrived since its claim
// began, however long the claim takes. While a claim is under way it pins
// the record (RecentPin): an entry that arrived at or after the oldest
// pin's start and leaves a shard's ring (for any of the three bounds) is
// kept in the shard's spill instead, until the last pin that may need it
// is released. The spill of all shards together is bounded by
// maxPinnedMessages and maxPinnedBytes; an entry that does not fit is
// dropped and noted (lostAt), and a pin that needed it reports
// errRecentOverrun, so that its claim fails instead of losing the
// message. Without a pin the only cost on the publish path is an atomic
// load per message.

const (
	recentShardBits  = 4
	recentShards     = 1 << recentShardBits
	recentPerShard   = 256
	recentShardBytes = 512 << 10
	// recentWindow is how late a SUBSCRIBE may be handled after it
	// arrived and still receive the messages that arrived after it, and
	// how long a session's fence lasts after its last subscription change.
	recentWindow = int64(time.Second)

	// maxPinnedMessages and maxPinnedBytes (topics and payloads) bound
	// the entries kept for pinned claims beyond the rings: about two
	// seconds of 30,000 messages a second of 1 KiB, or 64 messages of the
	// largest size a client may send by default (1 MiB).
	maxPinnedMessages = 65536
	maxPinnedBytes    = 64 << 20
)

// recentRing is the record. Its zero value is empty and ready.
type recentRing struct {
	shards [recentShards]recentShard
	next   atomic.Uint32 // round-robin shard choice

	// pinAt is the start (Unix nanoseconds) of the oldest pin, 0 when
	// there is none; written under pinMu, read by publishers under their
	// shard's lock.
	pinAt atomic.Int64
	pinMu sync.Mutex
	pins  []*RecentPin // guarded by pinMu
	// spilled counts the entries and bytes in the shards' spills.
	spilled, spilledBytes atomic.Int64
	// lostAt is the latest arrival of an entry dropped, while pinned,
	// because the spills were full.
	lostAt atomic.Int64
	// pinLimits, when set (tests), replace maxPinnedMessages and
	// maxPinnedBytes.
	pinLimits struct{ messages, bytes int64 }
}

type recentShard struct {
	mu sync.Mutex
	// ents holds the entries tail..head-1 at ents[seq%recentPerShard];
	// made on first use.
	ents       []recentEntry
	head, tail uint64
	bytes      int   // topic and payload bytes of the live entries
	newest     int64 // the latest arrival time recorded
	// spill holds, while pinned, the entries that left the ring (or
	// could not enter it) and arrived at or after the oldest pin's start.
	spill []recentEntry
	_     [64]byte
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
	sh.reserveLocked(r, r.pinAt.Load(), shard%recentShards, m)
	sh.mu.Unlock()
}

// add records m (its arrived field set, reserved or not), which is about
// to be routed. Called on the routing goroutine.
func (r *recentRing) add(shard uint8, m *Message) {
	size := recentSize(m)
	if size > recentShardBytes && r.pinAt.Load() == 0 {
		return // m.recentID, if reserved, names nothing recorded
	}
	shard %= recentShards
	if m.recentID != 0 {
		shard = uint8(m.recentID & (recentShards - 1))
	}
	sh := &r.shards[shard]
	sh.mu.Lock()
	pin := r.pinAt.Load()
	if m.recentID == 0 {
		sh.reserveLocked(r, pin, shard, m)
	}
	seq := m.recentID>>recentShardBits - 1
	old := m.arrived - recentWindow
	for sh.tail < seq && size <= recentShardBytes {
		// Older entries go when the bytes are short or they have aged
		// past the window; an empty slot at the tail (a message reserved
		// but not recorded yet) stays unless the bytes are short.
		e := &sh.ents[sh.tail%recentPerShard]
		if sh.bytes+size <= recentShardBytes && (e.msg == nil || e.at >= old) {
			break
		}
		sh.dropTail(r, pin)
	}
	if seq >= sh.tail && sh.bytes+size <= recentShardBytes {
		sh.ents[seq%recentPerShard] = recentEntry{msg: m, at: m.arrived, size: size}
		sh.bytes += size
		sh.newest = max(sh.newest, m.arrived)
	} else if pin != 0 && m.arrived >= pin {
		// Too large for the ring, or its reserved slot is gone.
		r.keep(sh, recentEntry{msg: m, at: m.arrived, size: size})
		sh.newest = max(sh.newest, m.arrived)
	}
	sh.mu.Unlock()
}

// reserveLocked takes the next sequence number of the shard for m,
// forgetting the oldest entry when all slots are taken (pin is r.pinAt,
// read under the lock). sh.mu held.
func (sh *recentShard) reserveLocked(r *recentRing, pin int64, shard uint8, m *Message) {
	if sh.ents == nil {
		sh.ents = make([]recentEntry, recentPerShard)
	}
	for sh.head-sh.tail >= recentPerShard {
		sh.dropTail(r, pin)
	}
	seq := sh.head
	sh.head++
	m.recentID = (seq+1)<<recentShardBits | uint64(shard)
}

// dropTail forgets the oldest entry (or the empty slot of a message
// reserved but not recorded), keeping it in the spill when a pin (pin,
// the oldest pin's start, 0: none) may need it. sh.mu held.
func (sh *recentShard) dropTail(r *recentRing, pin int64) {
	e := &sh.ents[sh.tail%recentPerShard]
	if pin != 0 && e.msg != nil && e.at >= pin {
		r.keep(sh, *e)
	}
	sh.bytes -= e.size // 0 for an empty slot
	*e = recentEntry{}
	sh.tail++
}

// keep puts e in sh's spill, or, when the spills are full, notes it lost.
// sh.mu held.
func (r *recentRing) keep(sh *recentShard, e recentEntry) {
	maxN, maxB := int64(maxPinnedMessages), int64(maxPinnedBytes)
	if l := r.pinLimits; l.messages != 0 {
		maxN, maxB = l.messages, l.bytes
	}
	n, b := r.spilled.Add(1), r.spilledBytes.Add(int64(e.size))
	if n > maxN || b > maxB {
		r.spilled.Add(-1)
		r.spilledBytes.Add(-int64(e.size))
		for {
			l := r.lostAt.Load()
			if e.at <= l || r.lostAt.CompareAndSwap(l, e.at) {
				return
			}
		}
	}
	sh.spill = append(sh.spill, e)
}

// trimSpill forgets the spilled entries that arrived before oldest, the
// oldest pin's start (0: every entry). sh.mu held.
func (sh *recentShard) trimSpill(r *recentRing, oldest int64) {
	if len(sh.spill) == 0 {
		return
	}
	var n, b int64
	sh.spill = slices.DeleteFunc(sh.spill, func(e recentEntry) bool {
		if oldest != 0 && e.at >= oldest {
			return false
		}
		n++
		b += int64(e.size)
		return true
	})
	if len(sh.spill) == 0 {
		sh.spill = nil
	}
	r.spilled.Add(-n)
	r.spilledBytes.Add(-b)
}

// errRecentOverrun is a pin's error when an entry it needed was dropped.
var errRecentOverrun = errors.New("broker: the record of recent messages reached its bound while a session moved here")

// RecentPin keeps the record of recent messages from the moment it was
// made (Server.PinRecent) until Release, within maxPinnedMessages and
// maxPinnedBytes: a session moving to this node is replayed the messages
// of this node's clients that arrived since its claim began
// (ReplayLocal), however long the claim took. The caller must Release
// it. Safe for concurrent use.
type RecentPin struct {
	r  *recentRing
	at int64
}

// PinRecent pins the record of recent messages from now on. A Cluster
// moving a session to this node pins it before its claim begins, and
// releases the pin once ReplayLocal has run.
func (s *Server) PinRecent() *RecentPin { return s.recent.pin(time.Now().UnixNano()) }

// pin pins r from at, the latest start of any pin so far.
func (r *recentRing) pin(at int64) *RecentPin {
	r.pinMu.Lock()
	defer r.pinMu.Unlock()
	p := &RecentPin{r: r, at: at}
	r.pins = append(r.pins, p)
	if r.pinAt.Load() == 0 {
		r.pinAt.Store(p.at)
	}
	return p
}

// Since returns the moment the pin was made (Unix nanoseconds): every
// message that arrived after it is kept while Err is nil.
func (p *RecentPin) Since() int64 { return p.at }

// Err returns an error once a message that arrived since the pin was
// made has been dropped because the record reached its bound: a claim
// holding the pin would miss it.
func (p *RecentPin) Err() error {
	if p.r.lostAt.Load() >= p.at {
		return errRecentOverrun
	}
	return nil
}

// Release ends the pin; the entries no other pin needs are forgotten.
// Further calls do nothing.
func (p *RecentPin) Release() {
	r := p.r
	r.pinMu.Lock()
	defer r.pinMu.Unlock()
	i := slices.Index(r.pins, p)
	if i < 0 {
		return
	}
	r.pins = slices.Delete(r.pins, i, i+1)
	var oldest int64
	for _, q := range r.pins {
		if oldest == 0 || q.at < oldest {
			oldest = q.at
		}
	}
	r.pinAt.Store(oldest)
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		sh.trimSpill(r, oldest)
		sh.mu.Unlock()
	}
}

// pinned reports whether a pin covers the arrivals after t: the record
// then holds all of them (see RecentPin.Err).
func (r *recentRing) pinned(t int64) bool {
	at := r.pinAt.Load()
	return at != 0 && at <= t
}

// since appends to dst every recorded message that arrived after t, and
// not before now-recentWindow, whose topic matches one of filters (without
// any $share prefix). Entries past the window are dropped on the way.
func (r *recentRing) since(t, now int64, filters []string, dst []recentEntry) []recentEntry {
	return r.search(t, now-recentWindow, filters, dst)
}

// search is since for the arrivals not before old (0: all the record
// holds, the spills included).
func (r *recentRing) search(t, old int64, filters []string, dst []recentEntry) []recentEntry {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		pin := r.pinAt.Load()
		for sh.tail < sh.head {
			if e := &sh.ents[sh.tail%recentPerShard]; e.msg == nil || e.at >= old {
				break
			}
			sh.dropTail(r, pin)
		}
		for _, e := range sh.spill {
			if e.at > t && e.at >= old && matchesAny(filters, e.msg.Topic) {
				dst = append(dst, e)
			}
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
