package brokerstore_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/store/brokerstore"
	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// benchTLS is mutual TLS for the benchmark: the server's and one client's
// configuration, both from one test CA.
type benchTLS struct{ server, client *tls.Config }

func newBenchTLS(b *testing.B) *benchTLS {
	ca := testpki.NewRoot(b, "bench CA", testpki.P256)
	srv := ca.Issue(b, testpki.ServerOptions())
	cl := ca.Issue(b, testpki.Options{CN: "bench-client", EKU: testpki.ClientAuth})
	return &benchTLS{
		server: &tls.Config{Certificates: []tls.Certificate{srv.TLS()}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert},
		client: &tls.Config{Certificates: []tls.Certificate{cl.TLS()}, RootCAs: ca.Pool(), ServerName: "127.0.0.1"},
	}
}

// benchBroker serves a broker with the store in the given sync mode, or in
// memory for mode "memory" (the store is then nil); with mutual TLS when
// tc is not nil.
func benchBroker(b *testing.B, mode string, tc *benchTLS) (string, *store.Store) {
	b.Helper()
	cfg := broker.Config{AllowAnonymous: true, SysInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var st *store.Store
	if mode != "memory" {
		sm, err := store.ParseSyncMode(mode)
		if err != nil {
			b.Fatal(err)
		}
		dir := b.TempDir()
		st, err = store.Open(store.Config{Dir: dir, Sync: sm, KeyFile: filepath.Join(dir, store.KeyFile)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		cfg.Persistence = brokerstore.New(st)
	}
	var o brokertest.Options
	if tc != nil {
		o.TLS = tc.server
	}
	return brokertest.Start(b, cfg, o).Addr, st
}

func benchDial(b *testing.B, addr, id string, expiry uint32, tc *benchTLS) (net.Conn, *packet.Reader) {
	b.Helper()
	var nc net.Conn
	var err error
	if tc != nil {
		nc, err = tls.Dial("tcp", addr, tc.client)
	} else {
		nc, err = net.Dial("tcp", addr)
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close() })
	r := packet.NewReader(nc, 0)
	r.SetVersion(packet.V5)
	c := &packet.Connect{ProtocolName: "MQTT", Version: packet.V5, ClientID: id, KeepAlive: 0}
	c.Properties.SetSessionExpiry(expiry)
	write(b, nc, c)
	if _, err := r.ReadPacket(); err != nil {
		b.Fatal(err)
	}
	return nc, r
}

func write(b *testing.B, nc net.Conn, p packet.Packet) {
	buf, err := packet.Append(nil, p, packet.V5)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := nc.Write(buf); err != nil {
		b.Error(err)
	}
}

// BenchmarkP2PQoS1Persistent: 100 publishers each send QoS 1 messages
// (64-byte payload, up to 16 unacknowledged) to their own persistent
// subscriber (session expiry 1 h, online, acknowledging), over plain TCP
// and over mutual TLS. With a store, every PUBACK waits for the commit of
// the message and its delivery, and every subscriber PUBACK deletes the
// delivery. Reported: messages/s.
func BenchmarkP2PQoS1Persistent(b *testing.B) {
	for _, mode := range []string{"memory", "always", "batch", "off"} {
		b.Run(mode, func(b *testing.B) { benchP2P(b, mode, nil, 100, 16) })
		b.Run("mtls-"+mode, func(b *testing.B) { benchP2P(b, mode, newBenchTLS(b), 100, 16) })
	}
}

// BenchmarkP2PQoS1PersistentLone is one publisher with one message
// unacknowledged at a time, to its persistent subscriber: every message
// waits for its own commit, nothing is grouped, and the rate is bound by
// the commit's latency: an fsync (two for the engine) with sync always,
// a write to the operating system with batch and off.
func BenchmarkP2PQoS1PersistentLone(b *testing.B) {
	for _, mode := range []string{"memory", "always", "batch", "off"} {
		b.Run(mode, func(b *testing.B) { benchP2P(b, mode, nil, 1, 1) })
	}
}

func benchP2P(b *testing.B, mode string, tc *benchTLS, pairs, window int) {
	addr, st := benchBroker(b, mode, tc)
	per := max(b.N/pairs, 1)
	payload := make([]byte, 64)
	var subsReady, wg sync.WaitGroup
	for i := range pairs {
		nc, r := benchDial(b, addr, fmt.Sprintf("sub-%d", i), 3600, tc)
		write(b, nc, &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: fmt.Sprintf("p2p/%d", i), QoS: 1}}})
		if _, err := r.ReadPacket(); err != nil {
			b.Fatal(err)
		}
		subsReady.Add(1)
		wg.Go(func() {
			subsReady.Done()
			for n := 0; n < per; {
				p, err := r.ReadPacket()
				if err != nil {
					b.Error(err)
					return
				}
				if pub, ok := p.(*packet.Publish); ok {
					n++
					write(b, nc, &packet.Puback{PacketID: pub.PacketID})
				}
			}
		})
	}
	subsReady.Wait()
	pubs := make([]net.Conn, pairs)
	readers := make([]*packet.Reader, pairs)
	for i := range pairs {
		pubs[i], readers[i] = benchDial(b, addr, fmt.Sprintf("pub-%d", i), 0, tc)
	}
	b.ResetTimer()
	start := time.Now()
	cpu0 := testutil.ProcessCPU()
	for i := range pairs {
		wg.Go(func() {
			sem := make(chan struct{}, window)
			acks := make(chan struct{})
			go func() {
				defer close(acks)
				for n := 0; n < per; {
					p, err := readers[i].ReadPacket()
					if err != nil {
						b.Error(err)
						return
					}
					if _, ok := p.(*packet.Puback); ok {
						n++
						<-sem
					}
				}
			}()
			topic := fmt.Sprintf("p2p/%d", i)
			for n := range per {
				sem <- struct{}{}
				write(b, pubs[i], &packet.Publish{Topic: topic, QoS: 1, PacketID: uint16(n%60000 + 1), Payload: payload})
			}
			<-acks
		})
	}
	wg.Wait()
	b.ReportMetric(float64(per*pairs)/time.Since(start).Seconds(), "msg/s")
	// CPU per message of the whole process (broker, store and the
	// clients, the same in every mode): robust where the rate depends on
	// what else the machine runs.
	b.ReportMetric(float64((testutil.ProcessCPU()-cpu0).Microseconds())/float64(per*pairs), "cpu-µs/msg")
	if st != nil {
		// How well commits were grouped: requests per transaction, and
		// fsyncs per message.
		s := st.Stats()
		b.ReportMetric(float64(s.Requests)/float64(max(s.Commits, 1)), "req/commit")
		b.ReportMetric(float64(s.Syncs)/float64(per*pairs), "fsync/msg")
		// The mean time of one transaction, fsync included: the serial
		// path every acknowledgement waits for.
		b.ReportMetric(s.CommitLatency.Sum*1000/float64(max(s.CommitLatency.Count(), 1)), "commit-ms")
		// Ops left out because the subscriber acknowledged before the
		// commit (at most 3 per message: message, delivery, delete).
		b.ReportMetric(float64(s.Coalesced)/float64(per*pairs), "coalesced/msg")
	}
}

// BenchmarkRestart measures opening a store holding 10,000 persistent
// sessions (one subscription and one queued QoS 1 message each) and
// 100,000 retained messages (64-byte payloads), verifying and decrypting
// every record, and rebuilding the broker's memory from it (store.Open
// and broker.New).
func BenchmarkRestart(b *testing.B) {
	const sessions, retained = 10000, 100000
	dir := b.TempDir()
	cfg := store.Config{Dir: dir, Sync: store.SyncOff, KeyFile: filepath.Join(dir, store.KeyFile)}
	st, err := store.Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 64)
	var ops []store.Op
	flush := func() {
		if err := st.Commit(context.Background(), ops...); err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := range sessions {
		id := fmt.Sprintf("device-%05d", i)
		ops = append(ops, store.PutSession{Session: &store.Session{ClientID: id, Owner: "anon:test", ExpiryInterval: store.NeverExpires,
			ProtocolVersion: 5, Subscriptions: []store.Subscription{{Filter: "cmd/" + id, QoS: 1}}}})
		m := &store.Message{ID: st.NextID(), Topic: "cmd/" + id, Payload: payload, QoS: 1}
		ops = append(ops, store.PutMessage{Message: m},
			store.PutDelivery{Delivery: &store.Delivery{ClientID: id, Seq: st.NextID(), MsgID: m.ID, QoS: 1}})
		if len(ops) >= 3000 {
			flush()
		}
	}
	for i := range retained {
		ops = append(ops, store.PutRetained{Retained: &store.Retained{Topic: fmt.Sprintf("state/%06d", i), Payload: payload, QoS: 1}})
		if len(ops) >= 3000 {
			flush()
		}
	}
	flush()
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	var heap uint64
	b.ResetTimer()
	for b.Loop() {
		st, err := store.Open(cfg)
		if err != nil {
			b.Fatal(err)
		}
		srv, err := broker.New(broker.Config{Persistence: brokerstore.New(st), SysInterval: -1,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		if n := srv.Stats().Sessions; n != sessions {
			b.Fatalf("%d sessions recovered", n)
		}
		b.StopTimer()
		// What the recovered state keeps in memory (the broker's
		// sessions, queues, retained index), measured with it alive.
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		heap = ms.HeapAlloc
		srv.Shutdown(context.Background())
		st.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(heap)/(1<<20), "MiB-heap")
	if fi, err := os.Stat(filepath.Join(dir, store.DBFile)); err == nil {
		b.ReportMetric(float64(fi.Size())/(1<<20), "MiB-on-disk")
	}
}
