package cli

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
)

// BenchmarkKeyDeliveryMQTT measures what `moat keys serve --mqtt` spends
// per member when a group changes: issue the member's bundle (serial
// update in the store, HPKE seal, signature) and publish it retained at
// QoS 1 through Moat's broker (in-process, loopback), waiting for PUBACK.
// The figure is per member; classical (X25519) and post-quantum hybrid
// (ML-KEM-768 + X25519) member keys; "issue-only" drops the bundles
// instead of publishing them, isolating the key service's share.
func BenchmarkKeyDeliveryMQTT(b *testing.B) {
	const members = 50
	srv := brokertest.Start(b, broker.Config{AllowAnonymous: true}, brokertest.Options{})
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Config{Servers: []string{"mqtt://" + srv.Addr}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()

	for _, tc := range []struct {
		name string
		kem  e2e.KEM
		pub  keyservice.Publisher
	}{
		{"x25519/mqtt", e2e.KEMX25519, mqttPublisher{c}},
		{"mlkem768x25519/mqtt", e2e.KEMMLKEM768X25519, mqttPublisher{c}},
		{"x25519/issue-only", e2e.KEMX25519, discardPublisher{}},
		{"mlkem768x25519/issue-only", e2e.KEMMLKEM768X25519, discardPublisher{}},
	} {
		kem := tc.kem
		b.Run(tc.name, func(b *testing.B) {
			kek := make([]byte, 32)
			rand.Read(kek)
			lk, _ := keyservice.NewLocalKEK(kek)
			s, err := keyservice.Open(keyservice.Config{Path: filepath.Join(b.TempDir(), "keys.db"), KEK: lk, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			s.CreateGroup("temps", "factory/+/temp", 0)
			var ids []string
			for i := range members {
				id := fmt.Sprintf("sensor-%03d", i)
				s.AddMember("temps", id, keyservice.Reader|keyservice.Writer)
				mk, _ := e2e.GenerateMemberKey(kem)
				if err := s.Register(id, mk.Public()); err != nil {
					b.Fatal(err)
				}
				ids = append(ids, id)
			}
			pub := tc.pub
			b.ResetTimer()
			for b.Loop() {
				if err := s.PublishBundles(ctx, pub, ids); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*members), "µs/member")
		})
	}
}

// discardPublisher drops bundles: it isolates the key service's cost.
type discardPublisher struct{}

func (discardPublisher) Publish(context.Context, string, []byte, bool) error { return nil }
