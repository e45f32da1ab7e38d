package bench

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestNullForwarder(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&NullForwarder{}).Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	for _, tt := range []struct {
		name string
		cfg  Config
	}{
		{"fanout", Config{Scenario: FanOut, Pubs: 1, Subs: 4, MsgRate: 200}},
		{"fanin qos1", Config{Scenario: FanIn, Pubs: 3, Subs: 1, QoS: 1, MsgRate: 200}},
		{"p2p", Config{Scenario: P2P, Pubs: 2, Subs: 2, QoS: 1, MsgRate: 200}},
		{"shared", Config{Scenario: Shared, Pubs: 2, Subs: 1, QoS: 1, MsgRate: 200}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Addr = ln.Addr().String()
			cfg.Duration = 500 * time.Millisecond
			cfg.SampleInterval = 100 * time.Millisecond
			res, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			m := res.Messages
			if m.Delivered == 0 || m.Lost != 0 || m.Acked != int64(cfg.QoS)*m.Sent {
				t.Errorf("messages: %+v, errors %v", m, res.Errors)
			}
		})
	}
}
