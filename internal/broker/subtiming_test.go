package broker

import (
	"context"
	"crypto/tls"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/listener"
	"github.com/moatmq/moat/internal/packet"
)

// TestSubscribeTakesEffectOnArrival: client B writes SUBSCRIBE and,
// without waiting for SUBACK, client A publishes to the filter. A's
// PUBLISH is written after B's SUBSCRIBE, on another socket, so it was
// published after the subscription and must reach B, as it does with a
// broker that handles sockets one after the other in arrival order. The
// two packets are read by different goroutines that the Go scheduler runs
// in either order; the broker orders them by arrival time instead
// (fence.go). Both a subscriber that has just connected and one that is
// already connected are tried, over TCP and over TLS from the listener
// package (whose socket the broker reads under the TLS layer).
func TestSubscribeTakesEffectOnArrival(t *testing.T) {
	for _, transport := range []string{"tcp", "tls"} {
		t.Run(transport, func(t *testing.T) {
			dial := dialRaw
			var addr string
			if transport == "tcp" {
				_, addr = testServer(t, Config{})
			} else {
				_, addr = testServerListener(t, Config{}, listener.TLS)
				dial = dialRawTLS
			}
			waitKernelStamps(t)
			a := dial(t, addr, packet.V5)
			a.connect(v5connect("timing-a"))
			for _, fresh := range []bool{true, false} {
				name := "connected subscriber"
				if fresh {
					name = "new subscriber"
				}
				t.Run(name, func(t *testing.T) {
					var b *rawClient
					delivered := 0
					const tries = 20
					for i := range tries {
						if fresh || b == nil {
							if b != nil {
								b.nc.Close()
							}
							b = dial(t, addr, packet.V5)
							b.connect(v5connect("timing-b"))
						}
						filter := "timing/" + name + "/" + strconv.Itoa(i)
						b.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: filter}}})
						a.send(&packet.Publish{Topic: filter, Payload: []byte("m")})
						// A PINGREQ round trip on A: A's PUBLISH has been routed.
						a.send(&packet.Pingreq{})
						a.recv()
						// The PUBLISH may come before or after SUBACK.
						got, acked := false, false
						for !acked || !got {
							p, err := b.recvErr(quiet)
							if err != nil {
								break
							}
							switch p.(type) {
							case *packet.Suback:
								acked = true
							case *packet.Publish:
								got = true
							}
						}
						if !acked {
							t.Fatal("no SUBACK")
						}
						if got {
							delivered++
						}
					}
					if delivered != tries {
						report(t, "%d of %d messages published right after a SUBSCRIBE were delivered", delivered, tries)
					}
				})
			}
		})
	}
}

// testServerListener is testServer on a listener of the listener package
// with the given transport (TLS with a fresh self-signed certificate).
func testServerListener(t testing.TB, cfg Config, tr listener.Transport) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	cfg.AllowAnonymous = true
	cfg.SysInterval = -1
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lc := listener.Config{Name: "test", Address: "127.0.0.1:0", Transport: tr, Logger: cfg.Logger}
	if tr == listener.TLS {
		lc.TLS = testTLSConfig(t)
	}
	ln, err := listener.Listen(context.Background(), lc)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln, ListenerConfig{Name: "test"}) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-done
	})
	return s, ln.Addr().String()
}

// dialRawTLS is dialRaw over TLS (the server's certificate unchecked).
func dialRawTLS(t testing.TB, addr string, v packet.Version) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	tc.SetDeadline(time.Time{})
	r := packet.NewReader(tc, 0)
	r.SetVersion(v)
	return &rawClient{t: t, nc: tc, r: r, v: v}
}

// TestSubscribeTakesEffectOnArrivalPaho runs the same check with the
// Eclipse Paho Python client (Debian's python3-paho-mqtt), the way an
// independent conformance suite does: B's subscribe() writes SUBSCRIBE and
// returns without waiting for SUBACK, then A's publish() writes PUBLISH
// (testdata/subtiming.py). Mosquitto delivers 20 of 20 there.
func TestSubscribeTakesEffectOnArrivalPaho(t *testing.T) {
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import paho.mqtt.client").Run(); err != nil {
		t.Skip("python3-paho-mqtt not installed (make test installs it)")
	}
	_, addr := testServer(t, Config{})
	waitKernelStamps(t)
	host, port, _ := net.SplitHostPort(addr)
	for _, mode := range []string{"new", "connected"} {
		for _, version := range []string{"3", "5"} {
			t.Run(mode+" v"+version, func(t *testing.T) {
				out, err := exec.Command(py, "testdata/subtiming.py", host, port, mode, version).CombinedOutput()
				if err != nil {
					t.Fatalf("subtiming.py: %v\n%s", err, out)
				}
				if got := strings.TrimSpace(string(out)); got != "delivered 20 of 20" {
					report(t, "%s; want delivered 20 of 20", got)
				}
			})
		}
	}
}

// report fails the test where the kernel stamps arrivals; elsewhere the
// broker orders by the time reads return, which narrows the window
// without closing it (docs/design/broker.md), and the rate is only logged.
func report(t *testing.T, format string, args ...any) {
	t.Helper()
	if kernelArrivals {
		t.Errorf(format, args...)
	} else {
		t.Logf("no kernel receive timestamps here: "+format, args...)
	}
}
