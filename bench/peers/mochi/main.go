// Command mochi runs mochi-mqtt v2 as a peer of the side-by-side benchmark
// (scripts/bench.sh): a plain and a mutual-TLS MQTT listener, every client
// allowed (the default auth hook that allows all), no persistence.
package main

import (
	"log/slog"
	"os"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/moatmq/moat/bench/peers/internal/peerflag"
)

func main() {
	const name = "mochi"
	f := peerflag.Parse(name)
	if err := peerflag.WaitBindable(f.Plain, f.MTLS); err != nil {
		peerflag.Fail(name, err)
	}
	// mochi's defaults: up to 8,192 writes pending per client (a channel
	// of that many slots per client, so a larger queue costs memory on
	// every connection).
	s := mqtt.New(&mqtt.Options{
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		peerflag.Fail(name, err)
	}
	if f.Plain != "" {
		if err := s.AddListener(listeners.NewTCP(listeners.Config{ID: "plain", Address: f.Plain})); err != nil {
			peerflag.Fail(name, err)
		}
	}
	if f.MTLS != "" {
		tc, err := f.TLS()
		if err != nil {
			peerflag.Fail(name, err)
		}
		if err := s.AddListener(listeners.NewTCP(listeners.Config{ID: "mtls", Address: f.MTLS, TLSConfig: tc})); err != nil {
			peerflag.Fail(name, err)
		}
	}
	if err := s.Serve(); err != nil {
		peerflag.Fail(name, err)
	}
	peerflag.WaitSignal()
	s.Close()
}
