package brokerstore_test

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/broker/brokertest"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/store/brokerstore"
)

// startBroker opens the store in dir and serves a broker on it; stop shuts
// the broker down and closes the store.
func startBroker(t *testing.T, dir string) (addr string, srv *broker.Server, stop func()) {
	t.Helper()
	st, err := store.Open(store.Config{Dir: dir, KeyFile: filepath.Join(dir, store.KeyFile)})
	if err != nil {
		t.Fatal(err)
	}
	b := brokertest.Start(t, broker.Config{Persistence: brokerstore.New(st), AllowAnonymous: true, SysInterval: -1},
		brokertest.Options{Listener: broker.ListenerConfig{Name: "test"}})
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		b.Stop()
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(stop)
	return b.Addr, b.Server, stop
}

type client struct {
	t  *testing.T
	nc net.Conn
	r  *packet.Reader
}

func dial(t *testing.T, addr, id string, expiry uint32) (*client, *packet.Connack) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	r := packet.NewReader(nc, 0)
	r.SetVersion(packet.V5)
	c := &client{t: t, nc: nc, r: r}
	conn := &packet.Connect{ProtocolName: "MQTT", Version: packet.V5, ClientID: id, KeepAlive: 60}
	conn.Properties.SetSessionExpiry(expiry)
	c.send(conn)
	ack, ok := c.recv().(*packet.Connack)
	if !ok {
		t.Fatal("want CONNACK")
	}
	return c, ack
}

func (c *client) send(p packet.Packet) {
	c.t.Helper()
	b, err := packet.Append(nil, p, packet.V5)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) recv() packet.Packet {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	p, err := c.r.ReadPacket()
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}

// A persistent session, its queued message with its properties and
// subscription identifier, and a retained message come back from the
// encrypted store after a restart; the store's files show none of them.
func TestRestartThroughStore(t *testing.T) {
	dir := t.TempDir()
	addr, srv, stop := startBroker(t, dir)
	sub, _ := dial(t, addr, "bs-subscriber-41c9", 300)
	s := &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "bs/topic-a71e/#", QoS: 1}}}
	s.Properties.SubscriptionIDs = []uint32{7}
	sub.send(s)
	if _, ok := sub.recv().(*packet.Suback); !ok {
		t.Fatal("want SUBACK")
	}
	sub.nc.Close()
	for deadline := time.Now().Add(5 * time.Second); srv.Stats().ClientsConnected > 0; {
		if time.Now().After(deadline) {
			t.Fatal("subscriber still connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	pub, _ := dial(t, addr, "bs-publisher-0b3d", 0)
	m := &packet.Publish{Topic: "bs/topic-a71e/x", QoS: 1, PacketID: 1, Payload: []byte("queued-payload-5e2c")}
	m.Properties.SetContentType("text/plain")
	m.Properties.User = []packet.UserProperty{{Key: "k", Value: "v"}}
	pub.send(m)
	if ack, ok := pub.recv().(*packet.Puback); !ok || ack.ReasonCode.IsError() {
		t.Fatalf("want PUBACK, got %#v", ack)
	}
	pub.send(&packet.Publish{Topic: "bs/retained-8d21", QoS: 1, PacketID: 2, Retain: true, Payload: []byte("retained-payload-93fa")})
	pub.recv()
	stop()

	addr, srv, stop = startBroker(t, dir)
	if n := srv.Stats().Retained; n != 1 {
		t.Fatalf("%d retained after restart, want 1", n)
	}
	sub, ack := dial(t, addr, "bs-subscriber-41c9", 300)
	if !ack.SessionPresent {
		t.Fatal("session not present after restart")
	}
	p, ok := sub.recv().(*packet.Publish)
	if !ok || string(p.Payload) != "queued-payload-5e2c" || p.Properties.ContentType != "text/plain" ||
		len(p.Properties.User) != 1 || len(p.Properties.SubscriptionIDs) != 1 || p.Properties.SubscriptionIDs[0] != 7 {
		t.Fatalf("queued message after restart: %#v", p)
	}
	sub.send(&packet.Puback{PacketID: p.PacketID})
	// The subscription itself came back.
	pub, _ = dial(t, addr, "bs-publisher-0b3d", 0)
	pub.send(&packet.Publish{Topic: "bs/topic-a71e/y", QoS: 1, PacketID: 3, Payload: []byte("live")})
	pub.recv()
	if p, ok := sub.recv().(*packet.Publish); !ok || string(p.Payload) != "live" {
		t.Fatalf("after restart: %#v", p)
	}
	stop()

	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, s := range []string{"bs-subscriber-41c9", "bs-publisher-0b3d", "topic-a71e", "retained-8d21",
			"queued-payload-5e2c", "retained-payload-93fa", "text/plain"} {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s contains %q in plaintext", filepath.Base(f), s)
			}
		}
	}
}
