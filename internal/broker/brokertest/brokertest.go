// Package brokertest starts Moat's broker in-process for the tests of other
// packages (the client, the command line, the benchmarks): a broker.Server
// serving a listener on 127.0.0.1:0, shut down and waited for when the
// test ends.
//
// The broker's own tests cannot import it (it imports the broker); they
// have testServer in package broker, which also runs them against the
// persistence model.
package brokertest

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
)

// Options say how Start serves. The zero value serves plain MQTT over TCP
// on a new 127.0.0.1:0 listener with a zero broker.ListenerConfig (the
// listener is named by its address).
type Options struct {
	// Listener configures the served listener (name, anonymous access,
	// limits) as broker.Server.Serve takes it.
	Listener broker.ListenerConfig
	// TLS, when set, wraps the listener in crypto/tls with this
	// configuration.
	TLS *tls.Config
	// Net, when set, is served instead of a new 127.0.0.1:0 TCP listener
	// (for instance one of internal/listener's WebSocket listeners). Start
	// takes ownership: it is closed when the broker stops.
	Net net.Listener
}

// Broker is a running in-process broker.
type Broker struct {
	// Server is the running broker.
	Server *broker.Server
	// Addr is the host:port clients dial.
	Addr string

	t    testing.TB
	ln   net.Listener
	done chan error // Serve's result
	once sync.Once
}

// Start creates a broker.Server from cfg, serves it on 127.0.0.1:0 as o
// says and returns it once it accepts connections. cfg is used as given,
// except that a nil Logger discards the broker's logs. The broker is
// stopped when the test ends (see Stop); New failing fails the test.
func Start(t testing.TB, cfg broker.Config, o Options) *Broker {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	srv, err := broker.New(cfg)
	if err != nil {
		t.Fatalf("brokertest: %v", err)
	}
	ln := o.Net
	if ln == nil {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatalf("brokertest: %v", err)
		}
	}
	b := &Broker{Server: srv, Addr: ln.Addr().String(), t: t, ln: ln, done: make(chan error, 1)}
	if o.TLS != nil {
		ln = tls.NewListener(ln, o.TLS)
	}
	go func() { b.done <- srv.Serve(context.Background(), ln, o.Listener) }()
	t.Cleanup(b.Stop)
	return b
}

// Port returns the port of Addr.
func (b *Broker) Port() int {
	_, port, err := net.SplitHostPort(b.Addr)
	if err != nil {
		b.t.Fatalf("brokertest: %v", err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		b.t.Fatalf("brokertest: %v", err)
	}
	return n
}

// Stop shuts the broker down, waiting up to 10 seconds for its
// connections and goroutines, and waits for Serve to return. It fails the
// test when Shutdown reports goroutines still running or Serve ends with
// anything but broker.ErrServerClosed. Stopping a stopped broker does
// nothing; Start registers Stop as a cleanup, so tests call it only to
// stop the broker early.
func (b *Broker) Stop() {
	b.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Server.Shutdown(ctx); err != nil {
			b.t.Errorf("brokertest: Shutdown: %v", err)
		}
		if err := <-b.done; !errors.Is(err, broker.ErrServerClosed) {
			b.t.Errorf("brokertest: Serve returned %v, want broker.ErrServerClosed", err)
		}
		b.ln.Close()
	})
}
