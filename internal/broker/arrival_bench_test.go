package broker

import (
	"testing"
	"time"
)

// BenchmarkSocketRead compares a socket's own Read with the stampedReader
// (recvmsg and a timestamp control message) on 64-byte writes over
// loopback: the extra cost arrival times put on each read system call.
// Each op is one write and one read.
func BenchmarkSocketRead(b *testing.B) {
	msg := make([]byte, 64)
	buf := make([]byte, 1024)
	b.Run("read", func(b *testing.B) {
		client, server := tcpPair(b)
		b.ReportAllocs()
		for b.Loop() {
			client.Write(msg)
			if _, err := server.Read(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("recvmsg", func(b *testing.B) {
		if !kernelArrivals {
			b.Skip("no kernel receive timestamps on this system")
		}
		client, server := tcpPair(b)
		r := newStampedReader(server, server.LocalAddr(), server.RemoteAddr())
		b.ReportAllocs()
		for b.Loop() {
			client.Write(msg)
			if _, err := r.Read(buf); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRecentAdd is what recording a routed message costs the
// publisher, with publishers on all cores (each on its own shard, as
// connections are spread over the shards).
func BenchmarkRecentAdd(b *testing.B) {
	var r recentRing
	now := time.Now().UnixNano()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		shard := r.shardFor()
		m := &Message{Topic: "bench/recent", Payload: make([]byte, 64)}
		i := int64(0)
		for pb.Next() {
			i++
			m.arrived, m.recentID = now+i, 0
			r.add(shard, m)
		}
	})
}

// BenchmarkFenceAdmit is what a delivery costs routing when the session
// subscribed less than recentWindow ago (its fence stands), with a few
// replayed messages claimed.
func BenchmarkFenceAdmit(b *testing.B) {
	sess := &session{}
	now := time.Now().UnixNano()
	f := sess.fenceLocked(now)
	for i := range 8 {
		f.replayable(&Message{recentID: (1<<40 + uint64(i)) << recentShardBits, arrived: now}, shareKey{})
	}
	m := &Message{}
	b.ReportAllocs()
	i := uint64(0)
	for b.Loop() {
		i++
		m.recentID, m.arrived = i<<recentShardBits, now
		if !f.admit(sess, m, 0, false, nil, nil) {
			b.Fatal("refused")
		}
	}
}
