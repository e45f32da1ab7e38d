// Command natsmqtt runs nats-server's MQTT side as a peer of the
// side-by-side benchmark (scripts/bench.sh): an embedded nats-server with
// JetStream (which its MQTT support requires) storing in a temporary
// directory, its NATS listener on a port of the system's choice, and the
// plain or mutual-TLS MQTT listener asked for. No authentication; the
// MQTT defaults (1,024 unacknowledged QoS 1 messages per subscription).
package main

import (
	"errors"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/moatmq/moat/bench/peers/internal/peerflag"
)

func main() {
	const name = "natsmqtt"
	f := peerflag.Parse(name)
	// nats-server has one MQTT listener: plain or mutual TLS, not both.
	if f.Plain != "" && f.MTLS != "" {
		peerflag.Fail(name, errors.New("give -plain or -mtls, not both (nats-server has one MQTT listener)"))
	}
	addr := f.Plain
	if f.MTLS != "" {
		addr = f.MTLS
	}
	host, port, err := splitAddr(addr)
	if err != nil {
		peerflag.Fail(name, err)
	}
	if err := peerflag.WaitBindable(addr); err != nil {
		peerflag.Fail(name, err)
	}
	dir := f.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "natsmqtt-"); err != nil {
			peerflag.Fail(name, err)
		}
		defer os.RemoveAll(dir)
	}
	opts := &server.Options{ServerName: "bench", Host: "127.0.0.1", Port: server.RANDOM_PORT,
		JetStream: true, StoreDir: dir, NoSigs: true}
	opts.MQTT.Host, opts.MQTT.Port = host, port
	if f.MTLS != "" {
		tc, err := f.TLS()
		if err != nil {
			peerflag.Fail(name, err)
		}
		opts.MQTT.TLSConfig = tc
		opts.MQTT.TLSTimeout = 30
	}
	s, err := server.NewServer(opts)
	if err != nil {
		peerflag.Fail(name, err)
	}
	s.ConfigureLogger()
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		peerflag.Fail(name, errors.New("server not ready within 30 s"))
	}
	peerflag.WaitSignal()
	s.Shutdown()
	s.WaitForShutdown()
}

func splitAddr(a string) (string, int, error) {
	h, p, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	return h, n, err
}
