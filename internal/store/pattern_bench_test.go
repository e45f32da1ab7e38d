package store

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// BenchmarkCommitP2PPattern replays the store's side of p2p QoS 1 with
// persistent, online subscribers, one batch at a time, so that the two
// phases can be timed apart on one goroutine each: submitting (the ops
// prepared on the caller's goroutine) and committing (the committer's
// transaction). Per batch, each of 100 sessions gets 4 new messages (a
// message and its delivery, one request each); half of them are
// acknowledged within the batch (the delete follows in the same batch,
// so they are coalesced) and the other half in the next batch. The CPU
// time of the process is reported per phase and message (the garbage
// collector's included), which a machine shared with other work disturbs
// less than the elapsed time. seal=committer is the store as it runs:
// messages and deliveries sealed only once the committer writes them;
// seal=submitter seals them on the submitting goroutine (sealEagerly).
func BenchmarkCommitP2PPattern(b *testing.B) {
	for _, run := range []struct {
		mode  SyncMode
		eager bool
	}{{SyncOff, false}, {SyncOff, true}, {SyncAlways, false}, {SyncAlways, true}} {
		mode := run.mode
		name := mode.String() + "/seal=committer"
		if run.eager {
			name = mode.String() + "/seal=submitter"
		}
		b.Run(name, func(b *testing.B) {
			defer func(e bool) { sealEagerly = e }(sealEagerly)
			sealEagerly = run.eager
			sessions, per := 100, 4
			if n, err := strconv.Atoi(os.Getenv("PATTERN_SESSIONS")); err == nil {
				sessions, per = n, 400/n
			}
			release := make(chan struct{})
			var hold bool
			cfg := testConfig(b)
			cfg.Sync = mode
			cfg.hooks = &hooks{beforeCommit: func(int) {
				if hold {
					hold = false
					<-release
				}
			}}
			s := mustOpen(b, cfg)
			defer s.Close()
			for i := range sessions {
				mustCommit(b, s, PutSession{&Session{ClientID: fmt.Sprintf("sub-%d", i), Owner: "anon:x", ExpiryInterval: time.Hour}})
			}
			payload := make([]byte, 64)
			var clients, topics, froms []string
			for i := range sessions {
				clients = append(clients, fmt.Sprintf("sub-%d", i))
				topics = append(topics, fmt.Sprintf("p2p/%d", i))
				froms = append(froms, fmt.Sprintf("pub-%d", i))
			}
			type pending struct {
				client string
				seq    uint64
			}
			var late []pending
			var submit, commit time.Duration
			msgs := 0
			st0 := s.db.Stats()
			s0 := s.Stats()
			b.ResetTimer()
			for range b.N {
				var wg sync.WaitGroup
				done := func(err error) {
					if err != nil {
						b.Error(err)
					}
					wg.Done()
				}
				// Hold the committer: everything below is one batch.
				hold = true
				wg.Add(1)
				s.CommitAsync(done)
				t0 := time.Now()
				c0 := testutil.ProcessCPU()
				var next []pending
				for _, p := range late {
					wg.Add(1)
					s.CommitAsync(done, DeleteDelivery{p.client, p.seq})
				}
				for i := range sessions {
					client := clients[i]
					for k := range per {
						m := &Message{ID: s.NextID(), Topic: topics[i], Payload: payload, QoS: 1, From: froms[i], Created: t0}
						d := &Delivery{ClientID: client, Seq: s.NextID(), MsgID: m.ID, QoS: 1}
						wg.Add(1)
						s.CommitAsync(done, PutMessage{m}, PutDelivery{d})
						if k%2 == 0 {
							wg.Add(1)
							s.CommitAsync(done, DeleteDelivery{client, d.Seq})
						} else {
							next = append(next, pending{client, d.Seq})
						}
						msgs++
					}
				}
				t1 := testutil.ProcessCPU()
				release <- struct{}{}
				wg.Wait()
				submit += t1 - c0
				commit += testutil.ProcessCPU() - t1
				late = next
			}
			b.StopTimer()
			st1 := s.db.Stats()
			c1 := s.Stats()
			txs := max(c1.Commits-s0.Commits, 1)
			b.ReportMetric(float64(submit.Nanoseconds())/float64(msgs), "submit-cpu-ns/msg")
			b.ReportMetric(float64(commit.Nanoseconds())/float64(msgs), "commit-cpu-ns/msg")
			b.ReportMetric(float64(st1.TxStats.GetPageCount()-st0.TxStats.GetPageCount())/float64(txs), "pages/tx")
			b.ReportMetric(float64(c1.Coalesced-s0.Coalesced)/float64(msgs), "coalesced/msg")
		})
	}
}
