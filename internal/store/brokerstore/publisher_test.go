package brokerstore_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/store/brokerstore"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// manualClock is a broker.Clock that moves only when the test says.
type manualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer
}

type manualTimer struct {
	c    *manualClock
	when time.Time
	f    func()
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) AfterFunc(d time.Duration, f func()) broker.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &manualTimer{c: c, when: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *manualTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i >= 0 {
		t.c.timers = slices.Delete(t.c.timers, i, i+1)
	}
	return i >= 0
}

// advance moves the clock by d and runs the timers that fall due.
func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*manualTimer
	c.timers = slices.DeleteFunc(c.timers, func(t *manualTimer) bool {
		if !t.when.After(c.now) {
			due = append(due, t)
			return true
		}
		return false
	})
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

// tlsBroker serves a broker over mutual TLS (listener "mtls") on the
// store in dir; the verified certificate's CN is the username.
func tlsBroker(t *testing.T, dir string, srvTLS *tls.Config, clk broker.Clock, az broker.Authorizer) (string, func()) {
	t.Helper()
	st, err := store.Open(store.Config{Dir: dir, KeyFile: filepath.Join(dir, store.KeyFile)})
	if err != nil {
		t.Fatal(err)
	}
	authn := broker.AuthenticatorFunc(func(_ context.Context, req *broker.ConnectRequest) broker.AuthResult {
		certs := req.Client.PeerCertificates()
		if len(certs) == 0 {
			return broker.AuthResult{Reason: "no certificate"}
		}
		return broker.AuthResult{Allow: true, Username: certs[0].Subject.CommonName, Groups: []string{"devices"}}
	})
	srv, err := broker.New(broker.Config{Persistence: brokerstore.New(st), Authenticator: authn, Authorizer: az,
		CheckRetainSource: true, Clock: clk, SysInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(context.Background(), tls.NewListener(ln, srvTLS), broker.ListenerConfig{Name: "mtls"})
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		<-done
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func dialTLS(t *testing.T, addr string, cfg *tls.Config, conn *packet.Connect) *client {
	t.Helper()
	nc, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	r := packet.NewReader(nc, 0)
	r.SetVersion(packet.V5)
	c := &client{t: t, nc: nc, r: r}
	conn.ProtocolName, conn.Version, conn.KeepAlive = "MQTT", packet.V5, 60
	c.send(conn)
	if ack, ok := c.recv().(*packet.Connack); !ok || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: %#v", ack)
	}
	return c
}

// identityAuthz records who each RetainSource and will request was about
// and refuses the publishers in denied. It checks that the identity is
// whole: the certificate (leaf CN = username), the listener, the address.
type identityAuthz struct {
	mu     sync.Mutex
	denied map[string]bool
	seen   []string
}

func (a *identityAuthz) Authorize(r *broker.AuthzRequest) broker.Decision {
	c := r.Client
	if r.Action != broker.ActionPublish {
		return broker.Decision{Allow: true}
	}
	certs := c.PeerCertificates()
	ip := ""
	if ta, ok := c.Remote.(*net.TCPAddr); ok {
		ip = ta.IP.String()
	}
	id := fmt.Sprintf("%s topic=%s retain_source=%v user=%s listener=%s ip=%s groups=%v certs=%d", c.ClientID, r.Topic,
		r.RetainSource, c.Username, c.Listener, ip, c.Groups, len(certs))
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen = append(a.seen, id)
	if len(certs) == 0 || certs[0].Subject.CommonName != c.Username || c.Listener != "mtls" || ip != "127.0.0.1" {
		return broker.Decision{Reason: "identity incomplete: " + id}
	}
	if a.denied[c.Username] {
		return broker.Decision{Reason: c.Username + " may not publish"}
	}
	return broker.Decision{Allow: true}
}

// Across a clean shutdown and restart on the real store, over mutual TLS:
// a retained message's replay is checked against its publisher, whose
// whole identity (certificate chain, listener, address, groups) came back
// from the store, and a publisher that lost its rights meanwhile feeds no
// one; a will whose delay was running when the broker stopped (its
// client was connected and the shutdown closed the connection) fires on
// time after the restart, authorized as its client.
func TestPublisherAndWillAcrossRestart(t *testing.T) {
	ca := testpki.NewRoot(t, "test CA", testpki.P256)
	srvTLS := &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, testpki.ServerOptions()).TLS()}, ClientCAs: ca.Pool(),
		ClientAuth: tls.RequireAndVerifyClientCert}
	cli := func(cn string) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, testpki.Options{CN: cn, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}).TLS()},
			RootCAs: ca.Pool(), ServerName: "127.0.0.1"}
	}
	devA, devB, watch := cli("dev-a"), cli("dev-b"), cli("watcher")
	dir := t.TempDir()
	clk := &manualClock{now: time.Now()}
	az := &identityAuthz{}
	addr, stop := tlsBroker(t, dir, srvTLS, clk, az)

	w := dialTLS(t, addr, watch, &packet.Connect{ClientID: "watcher", Properties: expiry(3600)})
	w.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "status/#", QoS: 1}}})
	w.recv()
	for i, d := range []struct {
		cfg *tls.Config
		id  string
	}{{devA, "dev-a"}, {devB, "dev-b"}} {
		c := dialTLS(t, addr, d.cfg, &packet.Connect{ClientID: d.id})
		c.send(&packet.Publish{Topic: "r/" + d.id, QoS: 1, PacketID: uint16(i + 1), Retain: true, Payload: []byte(d.id)})
		if ack, ok := c.recv().(*packet.Puback); !ok || ack.ReasonCode.IsError() {
			t.Fatalf("PUBACK: %#v", ack)
		}
	}
	// dev-a is connected, with a will delayed 30 s, when the broker stops.
	wc := &packet.Connect{ClientID: "dev-a-will", Properties: expiry(3600),
		Will: &packet.Will{Topic: "status/dev-a", Payload: []byte("offline"), QoS: 1}}
	wc.Will.Properties.SetWillDelay(30)
	dialTLS(t, addr, devA, wc)
	stop()

	az.mu.Lock()
	az.denied = map[string]bool{"dev-b": true}
	az.seen = nil
	az.mu.Unlock()
	clk.advance(5 * time.Second) // down for 5 s
	addr, _ = tlsBroker(t, dir, srvTLS, clk, az)
	s := dialTLS(t, addr, watch, &packet.Connect{ClientID: "reader"})
	s.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "r/#", QoS: 1}}})
	if _, ok := s.recv().(*packet.Suback); !ok {
		t.Fatal("want SUBACK")
	}
	if p, ok := s.recv().(*packet.Publish); !ok || p.Topic != "r/dev-a" {
		t.Fatalf("replayed %#v, want r/dev-a only", p)
	}
	s.nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if p, err := s.r.ReadPacket(); err == nil {
		t.Fatalf("r/dev-b replayed although its publisher lost the right: %#v", p)
	}

	w = dialTLS(t, addr, watch, &packet.Connect{ClientID: "watcher", Properties: expiry(3600)})
	clk.advance(24 * time.Second) // 29 s after the shutdown
	w.nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if p, err := w.r.ReadPacket(); err == nil {
		t.Fatalf("will before its time: %#v", p)
	}
	clk.advance(2 * time.Second)
	if p, ok := w.recv().(*packet.Publish); !ok || p.Topic != "status/dev-a" {
		t.Fatalf("want the will 30 s after the shutdown, got %#v", p)
	}
	az.mu.Lock()
	defer az.mu.Unlock()
	want := []string{
		"dev-a topic=r/dev-a retain_source=true user=dev-a listener=mtls ip=127.0.0.1 groups=[devices] certs=1",
		"dev-b topic=r/dev-b retain_source=true user=dev-b listener=mtls ip=127.0.0.1 groups=[devices] certs=1",
		"dev-a-will topic=status/dev-a retain_source=false user=dev-a listener=mtls ip=127.0.0.1 groups=[devices] certs=1",
	}
	for _, id := range want {
		if !slices.Contains(az.seen, id) {
			t.Errorf("no request about %q; seen: %q", id, az.seen)
		}
	}
}

func expiry(secs uint32) packet.Properties {
	var p packet.Properties
	p.SetSessionExpiry(secs)
	return p
}
