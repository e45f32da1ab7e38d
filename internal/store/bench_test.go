package store

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkCommit measures durable commits per second: each commit is one
// QoS 1 message (1 KiB) queued for one persistent session, from 1, 10 or
// 100 concurrent committers, per sync mode.
func BenchmarkCommit(b *testing.B) {
	for _, mode := range []SyncMode{SyncAlways, SyncBatch, SyncOff} {
		for _, c := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("%s/committers=%d", mode, c), func(b *testing.B) {
				cfg := testConfig(b)
				cfg.Sync = mode
				s := mustOpen(b, cfg)
				defer s.Close()
				for i := range c {
					mustCommit(b, s, PutSession{&Session{ClientID: fmt.Sprint(i)}})
				}
				payload := bytes.Repeat([]byte{'x'}, 1024)
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for w := range c {
					wg.Go(func() {
						id := fmt.Sprint(w)
						for next.Add(1) <= int64(b.N) {
							m := &Message{ID: s.NextID(), Topic: "bench/t", Payload: payload, QoS: 1}
							if err := s.Commit(context.Background(), PutMessage{m}, PutDelivery{&Delivery{ClientID: id, Seq: s.NextID(), MsgID: m.ID, QoS: 1}}); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				el := time.Since(start)
				b.ReportMetric(float64(b.N)/el.Seconds(), "commits/s")
				b.ReportMetric(float64(s.Stats().Syncs)/float64(b.N), "fsyncs/commit")
			})
		}
	}
}

// BenchmarkEngine compares one durable 1 KiB write with one writer: a
// bbolt transaction with fsync against an append-only log (write +
// fdatasync), the floor any engine of our own would start from.
func BenchmarkEngine(b *testing.B) {
	rec := bytes.Repeat([]byte{'x'}, 1024+64)
	b.Run("bbolt", func(b *testing.B) {
		db, err := bolt.Open(filepath.Join(b.TempDir(), "b.db"), 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType})
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err })
		b.ResetTimer()
		for i := range b.N {
			err := db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket([]byte("b")).Put(fmt.Appendf(nil, "%016x", i), rec)
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("appendlog", func(b *testing.B) {
		f, err := os.OpenFile(filepath.Join(b.TempDir(), "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		b.ResetTimer()
		for range b.N {
			if _, err := f.Write(rec); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkQueuedBytes reports bytes on disk per queued message: 10,000
// QoS 1 messages queued for one offline session, 100 per commit; the
// growth of the pages in use (not of the file, which the engine grows in
// large steps) divided by the count. Run with -benchtime=1x.
func BenchmarkQueuedBytes(b *testing.B) {
	for _, size := range []int{64, 1024} {
		b.Run(fmt.Sprintf("payload=%dB", size), func(b *testing.B) {
			for range b.N {
				cfg := testConfig(b)
				cfg.Sync = SyncOff
				s := mustOpen(b, cfg)
				mustCommit(b, s, PutSession{&Session{ClientID: "device-0001", Subscriptions: []Subscription{{Filter: "sensors/#", QoS: 1}}}})
				mustClose(b, s)
				path := filepath.Join(cfg.Dir, DBFile)
				used0, _, err := usedSize(path)
				if err != nil {
					b.Fatal(err)
				}
				s = mustOpen(b, cfg)
				payload := bytes.Repeat([]byte{'x'}, size)
				const n, per = 10000, 100
				for i := 0; i < n; i += per {
					var ops []Op
					for range per {
						m := &Message{ID: s.NextID(), Topic: "sensors/hall-3/temperature", Payload: payload, QoS: 1, From: "sensor-0042", Created: t0}
						ops = append(ops, PutMessage{m}, PutDelivery{&Delivery{ClientID: "device-0001", Seq: s.NextID(), MsgID: m.ID, QoS: 1}})
					}
					mustCommit(b, s, ops...)
				}
				mustClose(b, s)
				used1, _, _ := usedSize(path)
				b.ReportMetric(float64(used1-used0)/n, "disk-B/msg")
				if _, _, err := Compact(cfg); err == nil {
					used2, _, _ := usedSize(path)
					b.ReportMetric(float64(used2-used0)/n, "compacted-B/msg")
				}
			}
		})
	}
}

// BenchmarkCommitAsync is the broker's hot path: 100 publishers, each
// with up to 16 messages awaiting their commit (PUBACK deferred until the
// callback), SyncAlways. One commit = one 1 KiB QoS 1 message queued for
// one session.
func BenchmarkCommitAsync(b *testing.B) {
	const publishers, window = 100, 16
	cfg := testConfig(b)
	s := mustOpen(b, cfg)
	defer s.Close()
	for i := range publishers {
		mustCommit(b, s, PutSession{&Session{ClientID: fmt.Sprint(i)}})
	}
	payload := bytes.Repeat([]byte{'x'}, 1024)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range publishers {
		wg.Go(func() {
			id := fmt.Sprint(w)
			sem := make(chan struct{}, window)
			for next.Add(1) <= int64(b.N) {
				sem <- struct{}{}
				m := &Message{ID: s.NextID(), Topic: "bench/t", Payload: payload, QoS: 1}
				s.CommitAsync(func(err error) {
					if err != nil {
						b.Error(err)
					}
					<-sem
				}, PutMessage{m}, PutDelivery{&Delivery{ClientID: id, Seq: s.NextID(), MsgID: m.ID, QoS: 1}})
			}
			for range window {
				sem <- struct{}{}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.ReportMetric(float64(b.N)/el.Seconds(), "commits/s")
	b.ReportMetric(float64(s.Stats().Syncs)/float64(b.N), "fsyncs/commit")
}

// BenchmarkOpen measures a restart: Open verifies and decrypts every
// record of a store holding 10,000 persistent sessions (2 subscriptions
// each) and 100,000 retained messages (64-byte payloads).
func BenchmarkOpen(b *testing.B) {
	cfg := testConfig(b)
	cfg.Sync = SyncOff
	s := mustOpen(b, cfg)
	var ops []Op
	flush := func() {
		mustCommit(b, s, ops...)
		ops = ops[:0]
	}
	for i := range 10000 {
		ops = append(ops, PutSession{&Session{ClientID: fmt.Sprintf("device-%05d", i), Owner: "user:fleet", ExpiryInterval: time.Hour,
			Subscriptions: []Subscription{{Filter: fmt.Sprintf("cmd/%05d/#", i), QoS: 1}, {Filter: "broadcast/#", QoS: 1}}}})
		if len(ops) == 1000 {
			flush()
		}
	}
	payload := bytes.Repeat([]byte{'x'}, 64)
	for i := range 100000 {
		ops = append(ops, PutRetained{&Retained{Topic: fmt.Sprintf("site/%03d/sensor/%05d/state", i%100, i), Payload: payload, QoS: 1}})
		if len(ops) == 1000 {
			flush()
		}
	}
	mustClose(b, s)
	b.ResetTimer()
	for range b.N {
		s := mustOpen(b, cfg)
		s.Recovered()
		s.Close()
	}
}
