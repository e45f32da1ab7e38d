package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// ctlDialer dials real TCP connections that a test can freeze (drop
// everything the server sends) or cut, and records what the client wrote.
type ctlDialer struct {
	mu       sync.Mutex
	conns    []*ctlConn
	failNext int
	dials    int
}

type ctlConn struct {
	net.Conn
	frozen atomic.Bool
	mu     sync.Mutex
	wrote  bytes.Buffer
	read   bytes.Buffer
}

func (d *ctlDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.dials++
	if d.failNext > 0 {
		d.failNext--
		d.mu.Unlock()
		return nil, errors.New("test: dial refused")
	}
	d.mu.Unlock()
	var nd net.Dialer
	nc, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := &ctlConn{Conn: nc}
	d.mu.Lock()
	d.conns = append(d.conns, c)
	d.mu.Unlock()
	return c, nil
}

func (d *ctlDialer) last() *ctlConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conns[len(d.conns)-1]
}

func (d *ctlDialer) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns)
}

func (c *ctlConn) Read(b []byte) (int, error) {
	for {
		n, err := c.Conn.Read(b)
		if err != nil || !c.frozen.Load() {
			c.mu.Lock()
			c.read.Write(b[:n])
			c.mu.Unlock()
			return n, err
		}
	}
}

// received decodes the packets the client read on c.
func (c *ctlConn) received(t *testing.T, v Version) []packet.Packet {
	c.mu.Lock()
	b := bytes.Clone(c.read.Bytes())
	c.mu.Unlock()
	return decodeAll(t, b, v)
}

func decodeAll(t *testing.T, b []byte, v Version) []packet.Packet {
	var out []packet.Packet
	for len(b) > 0 {
		p, n, err := packet.Decode(b, v, 0)
		if err != nil {
			t.Fatalf("decoding recorded packets: %v", err)
		}
		out = append(out, p)
		b = b[n:]
	}
	return out
}

func (c *ctlConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.wrote.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// written decodes the packets the client wrote on c.
func (c *ctlConn) written(t *testing.T, v Version) []packet.Packet {
	c.mu.Lock()
	b := bytes.Clone(c.wrote.Bytes())
	c.mu.Unlock()
	return decodeAll(t, b, v)
}

func resendBrokers(t *testing.T) map[string]string {
	brokers := map[string]string{"moat": startMoat(t, broker.Config{})}
	if _, err := exec.LookPath("mosquitto"); err == nil {
		brokers["mosquitto"] = startMosquitto(t, "").tcp
	}
	return brokers
}

// TestResendAfterConnectionDrop cuts the connection while a QoS 1 or 2
// message waits for its acknowledgement: the client must reconnect,
// resume the session and resend the message with DUP set
// [MQTT-4.4.0-1] [MQTT-3.3.1-1], and a QoS 2 message must reach the
// subscriber exactly once.
func TestResendAfterConnectionDrop(t *testing.T) {
	for name, addr := range resendBrokers(t) {
		for _, v := range []Version{V311, V5} {
			for _, qos := range []byte{1, 2} {
				t.Run(fmt.Sprintf("%s/%s/qos%d", name, v, qos), func(t *testing.T) {
					t.Parallel()
					ctx := ctxT(t)
					topic := fmt.Sprintf("resend/%s/%s/%d", name, v, qos)
					sub := dial(t, Config{Servers: []string{addr}, Version: v})
					if _, err := sub.Subscribe(ctx, Subscription{Filter: topic, QoS: 2}); err != nil {
						t.Fatal(err)
					}
					d := &ctlDialer{}
					var lost atomic.Int32
					cfg := Config{
						Servers: []string{addr}, Version: v, Dialer: d,
						ClientID:         fmt.Sprintf("resender-%s-%d", v, qos),
						CleanStart:       true,
						Reconnect:        ReconnectPolicy{Enabled: true, MinDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond},
						OnConnectionLost: func(*Client, error) { lost.Add(1) },
					}
					if v == V5 {
						cfg.SessionExpiry = 300
					} else {
						cfg.CleanStart = false
					}
					pub := dial(t, cfg)
					d.last().frozen.Store(true)
					tok := pub.PublishAsync(ctx, &Message{Topic: topic, Payload: []byte("once"), QoS: qos})
					// Moat forwards a QoS 2 message on PUBLISH, mosquitto
					// only on PUBREL, which the client cannot send yet.
					received := drain(sub, 300*time.Millisecond)
					if tok.Err() != nil || len(received) > 1 || (qos == 1 && len(received) == 0) {
						t.Fatalf("before the cut: token %v, %d messages", tok.Err(), len(received))
					}
					select {
					case <-tok.Done():
						t.Fatalf("token completed although the acknowledgement was dropped: %v", tok.Err())
					default:
					}
					d.last().Conn.Close()
					if err := tok.Wait(ctx); err != nil {
						t.Fatalf("after reconnect: %v", err)
					}
					if d.count() != 2 || lost.Load() != 1 {
						t.Fatalf("%d connections, %d losses; want 2 and 1", d.count(), lost.Load())
					}
					if !pub.ConnectInfo().SessionPresent {
						t.Fatal("session not resumed")
					}
					var dup *packet.Publish
					for _, p := range d.last().written(t, v) {
						if p, ok := p.(*packet.Publish); ok {
							dup = p
						}
					}
					if dup == nil || !dup.Dup || string(dup.Payload) != "once" || dup.QoS != qos {
						t.Fatalf("resent PUBLISH = %+v, want DUP set", dup)
					}
					received = append(received, drain(sub, 300*time.Millisecond)...)
					for _, m := range received {
						if string(m.Payload) != "once" {
							t.Fatalf("received %q", m.Payload)
						}
					}
					if len(received) == 0 || (qos == 2 && len(received) != 1) {
						t.Fatalf("subscriber received %d copies of a QoS %d message", len(received), qos)
					}
				})
			}
		}
	}
}

// TestSessionStoreAcrossClients closes a client with a message in flight
// and lets a new Client with the same Store and client ID resend it.
func TestSessionStoreAcrossClients(t *testing.T) {
	for name, addr := range resendBrokers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := ctxT(t)
			topic := "store/" + name
			sub := dial(t, Config{Servers: []string{addr}})
			if _, err := sub.Subscribe(ctx, Subscription{Filter: topic, QoS: 2}); err != nil {
				t.Fatal(err)
			}
			store := &MemoryStore{}
			d := &ctlDialer{}
			cfg := Config{Servers: []string{addr}, ClientID: "stored-" + name, CleanStart: true, SessionExpiry: 300, Store: store, Dialer: d}
			p1 := dial(t, cfg)
			d.last().frozen.Store(true)
			t1 := p1.PublishAsync(ctx, &Message{Topic: topic, Payload: []byte("q1"), QoS: 1})
			t2 := p1.PublishAsync(ctx, &Message{Topic: topic, Payload: []byte("q2"), QoS: 2})
			received := drain(sub, 300*time.Millisecond)
			if store.Len() != 2 {
				t.Fatalf("store holds %d entries, want 2", store.Len())
			}
			p1.Close()
			if !errors.Is(t1.Err(), ErrClosed) || !errors.Is(t2.Err(), ErrClosed) {
				t.Fatalf("tokens after Close: %v, %v", t1.Err(), t2.Err())
			}
			cfg.CleanStart = false
			p2 := dial(t, cfg)
			testutil.CheckFor(t, 5*time.Second, func() error {
				if n := store.Len(); n != 0 {
					return fmt.Errorf("store still holds %d entries", n)
				}
				return nil
			})
			// QoS 1 may be delivered twice; QoS 2 exactly once.
			count := map[string]int{}
			for _, m := range append(received, drain(sub, 300*time.Millisecond)...) {
				count[string(m.Payload)]++
			}
			if count["q1"] < 1 || count["q2"] != 1 || len(count) != 2 {
				t.Fatalf("subscriber received %v", count)
			}
			p2.Disconnect(ctx)
		})
	}
}

// TestReconnectBackoff fails the first reconnect attempts and checks that
// the client keeps trying, and that it gives up after MaxAttempts.
func TestReconnectBackoff(t *testing.T) {
	addr := startMoat(t, broker.Config{})
	t.Run("recovers", func(t *testing.T) {
		d := &ctlDialer{}
		var ups atomic.Int32
		c := dial(t, Config{Servers: []string{addr}, Dialer: d,
			Reconnect: ReconnectPolicy{Enabled: true, MinDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond},
			OnConnect: func(*Client, ConnectInfo) { ups.Add(1) }})
		ctx := ctxT(t)
		if _, err := c.SubscribeWith(ctx, Properties{SubscriptionIDs: []uint32{9}}, Subscription{Filter: "rb/#"}); err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		d.failNext = 3
		d.mu.Unlock()
		d.last().Conn.Close()
		testutil.CheckFor(t, 5*time.Second, func() error {
			if ups.Load() != 2 {
				return fmt.Errorf("%d connections", ups.Load())
			}
			return nil
		})
		if d.dials != 5 {
			t.Errorf("%d dials, want 5 (1 + 3 refused + 1)", d.dials)
		}
		// The subscription was made again on the new, clean session.
		if err := c.Publish(ctx, &Message{Topic: "rb/x", Payload: []byte("back"), QoS: 1}); err != nil {
			t.Fatal(err)
		}
		if m := recv(t, c); string(m.Payload) != "back" || fmt.Sprint(m.Properties.SubscriptionIDs) != "[9]" {
			t.Fatalf("got %q with subscription identifiers %v", m.Payload, m.Properties.SubscriptionIDs)
		}
	})
	t.Run("gives-up", func(t *testing.T) {
		d := &ctlDialer{}
		c := dial(t, Config{Servers: []string{addr}, Dialer: d,
			Reconnect: ReconnectPolicy{Enabled: true, MinDelay: time.Millisecond, MaxDelay: 2 * time.Millisecond, MaxAttempts: 2}})
		d.mu.Lock()
		d.failNext = 100
		d.mu.Unlock()
		d.last().Conn.Close()
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("client did not give up")
		}
		if err := c.Err(); err == nil || !bytes.Contains([]byte(err.Error()), []byte("giving up after 2")) {
			t.Fatalf("Err = %v", err)
		}
		if err := c.Publish(ctxT(t), &Message{Topic: "x"}); err == nil {
			t.Fatal("publish on a dead client succeeded")
		}
	})
	t.Run("retry-hook-stops", func(t *testing.T) {
		// Retry sees every failed attempt; false stops the client with
		// that attempt's error.
		d := &ctlDialer{}
		var attempts []int
		c := dial(t, Config{Servers: []string{addr}, Dialer: d,
			Reconnect: ReconnectPolicy{Enabled: true, MinDelay: time.Millisecond, MaxDelay: 2 * time.Millisecond,
				Retry: func(attempt int, err error) bool {
					attempts = append(attempts, attempt)
					return attempt < 3
				}}})
		d.mu.Lock()
		d.failNext = 100
		d.mu.Unlock()
		d.last().Conn.Close()
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("client did not stop")
		}
		if err := c.Err(); err == nil || !strings.Contains(err.Error(), "reconnecting stopped") || !strings.Contains(err.Error(), "test: dial refused") {
			t.Fatalf("Err = %v", err)
		}
		if fmt.Sprint(attempts) != "[1 2 3]" {
			t.Fatalf("Retry saw attempts %v, want [1 2 3]", attempts)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		d := &ctlDialer{}
		c := dial(t, Config{Servers: []string{addr}, Dialer: d})
		d.last().Conn.Close()
		<-c.Done()
		if !errors.Is(c.Err(), ErrConnectionLost) {
			t.Fatalf("Err = %v, want ErrConnectionLost", c.Err())
		}
	})
}

type fixedRand byte

func (f fixedRand) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte(f)
	}
	return len(b), nil
}

func TestBackoffSchedule(t *testing.T) {
	cases := []struct {
		attempt  int
		min, max time.Duration
	}{
		{0, 50 * time.Millisecond, 100 * time.Millisecond},
		{1, 100 * time.Millisecond, 200 * time.Millisecond},
		{3, 400 * time.Millisecond, 800 * time.Millisecond},
		{10, 500 * time.Millisecond, time.Second},
		{1000, 500 * time.Millisecond, time.Second},
	}
	for _, tc := range cases {
		for _, r := range []io.Reader{fixedRand(0), fixedRand(0xff), fixedRand(0x5a)} {
			c := &Client{cfg: Config{Reconnect: ReconnectPolicy{MinDelay: 100 * time.Millisecond, MaxDelay: time.Second}}, rand: r}
			if d := c.backoff(tc.attempt); d < tc.min || d > tc.max {
				t.Errorf("attempt %d: delay %v outside [%v, %v]", tc.attempt, d, tc.min, tc.max)
			}
		}
	}
	c := &Client{rand: fixedRand(0)}
	if d := c.backoff(0); d != DefaultMinBackoff/2 {
		t.Errorf("zero policy, zero randomness: %v", d)
	}
}

// TestKeepAliveTimeout drops everything the server sends: the client must
// notice the missing PINGRESP and end the connection.
func TestKeepAliveTimeout(t *testing.T) {
	t.Parallel()
	addr := startMoat(t, broker.Config{})
	d := &ctlDialer{}
	c := dial(t, Config{Servers: []string{addr}, Dialer: d, KeepAlive: time.Second})
	d.last().frozen.Store(true)
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("no keep alive timeout")
	}
	if !errors.Is(c.Err(), ErrKeepAliveTimeout) {
		t.Fatalf("Err = %v, want ErrKeepAliveTimeout", c.Err())
	}
	var pings int
	for _, p := range d.last().written(t, V5) {
		if _, ok := p.(*packet.Pingreq); ok {
			pings++
		}
	}
	if pings != 1 {
		t.Fatalf("%d PINGREQs, want 1", pings)
	}
}

// TestSOCKS5Proxy connects through Debian's microsocks, with and without
// proxy authentication, resolving the broker name locally (socks5) and at
// the proxy (socks5h).
func TestSOCKS5Proxy(t *testing.T) {
	bin, err := exec.LookPath("microsocks")
	if err != nil {
		t.Skip("microsocks not installed (apt-get install microsocks)")
	}
	m := startMosquitto(t, "")
	_, port, _ := net.SplitHostPort(m.tcp)
	_, wsPort, _ := net.SplitHostPort(m.ws)
	proxy := testutil.StartPeer(t, testutil.Peer{
		Name:  "microsocks",
		Ports: 1,
		Command: func(ports []int) *exec.Cmd {
			return exec.Command(bin, "-i", "127.0.0.1", "-p", strconv.Itoa(ports[0]), "-u", "proxyuser", "-P", "proxypass")
		},
	})
	pport := strconv.Itoa(proxy.Ports[0])
	cases := []struct {
		name, proxy, server string
		ok                  bool
	}{
		{"socks5", "socks5://proxyuser:proxypass@127.0.0.1:" + pport, "mqtt://localhost:" + port, true},
		{"socks5h", "socks5h://proxyuser:proxypass@127.0.0.1:" + pport, "mqtt://localhost:" + port, true},
		{"socks5h-websocket", "socks5h://proxyuser:proxypass@127.0.0.1:" + pport, "ws://localhost:" + wsPort + "/mqtt", true},
		{"wrong-password", "socks5://proxyuser:nope@127.0.0.1:" + pport, "mqtt://127.0.0.1:" + port, false},
		{"no-credentials", "socks5://127.0.0.1:" + pport, "mqtt://127.0.0.1:" + port, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Servers: []string{tc.server}, Proxy: tc.proxy}
			if !tc.ok {
				_, err := Dial(ctxT(t), cfg)
				if err == nil {
					t.Fatal("connected through the proxy with bad credentials")
				}
				if bytes.Contains([]byte(err.Error()), []byte("nope")) {
					t.Fatalf("proxy password in error: %v", err)
				}
				return
			}
			exchange(t, cfg, "socks/"+tc.name)
		})
	}
}

// drain collects the messages that arrive on c within d.
func drain(c *Client, d time.Duration) []*Message {
	var out []*Message
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-c.Messages():
			if !ok {
				return out
			}
			out = append(out, m)
		case <-timer.C:
			return out
		}
	}
}

// TestSlowConsumerKeepsConnection lets messages pile up unread for
// longer than the keep alive interval: the client must not mistake its
// own backlog for a dead server.
func TestSlowConsumerKeepsConnection(t *testing.T) {
	t.Parallel()
	addr := startMoat(t, broker.Config{})
	c := dial(t, Config{Servers: []string{addr}, KeepAlive: time.Second, MessageBuffer: 1})
	ctx := ctxT(t)
	if _, err := c.Subscribe(ctx, Subscription{Filter: "slow/#"}); err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		if err := c.Publish(ctx, &Message{Topic: "slow/x", Payload: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2500 * time.Millisecond) // over two keep alive intervals without reading
	if !c.IsConnected() {
		t.Fatalf("connection dropped: %v", c.Err())
	}
	for i := range n {
		if m := recv(t, c); m.Payload[0] != byte(i) {
			t.Fatalf("message %d has payload %d", i, m.Payload[0])
		}
	}
}

// TestManualAck acknowledges only the first of three QoS 1 messages: the
// other two must come again when the session resumes.
func TestManualAck(t *testing.T) {
	for name, addr := range resendBrokers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := ctxT(t)
			topic := "manual/" + name
			cfg := Config{Servers: []string{addr}, ClientID: "manual-" + name, CleanStart: true, SessionExpiry: 300, ManualAck: true}
			a := dial(t, cfg)
			if _, err := a.Subscribe(ctx, Subscription{Filter: topic, QoS: 1}); err != nil {
				t.Fatal(err)
			}
			pub := dial(t, Config{Servers: []string{addr}})
			for _, p := range []string{"m1", "m2", "m3"} {
				if err := pub.Publish(ctx, &Message{Topic: topic, Payload: []byte(p), QoS: 1}); err != nil {
					t.Fatal(err)
				}
			}
			first := recv(t, a)
			a.Ack(first)
			recv(t, a)
			recv(t, a)
			a.Disconnect(ctx)
			cfg.CleanStart = false
			b := dial(t, cfg)
			var got []string
			for _, m := range drain(b, 300*time.Millisecond) {
				got = append(got, string(m.Payload))
				b.Ack(m)
			}
			if fmt.Sprint(got) != "[m2 m3]" {
				t.Fatalf("redelivered %v, want [m2 m3]", got)
			}
			b.Disconnect(ctx)
		})
	}
}

// TestOurReceiveMaximum announces Receive Maximum 2 and acknowledges
// nothing at first: the broker must stop after two QoS 1 messages, and
// send the rest as acknowledgements come.
func TestOurReceiveMaximum(t *testing.T) {
	for name, addr := range resendBrokers(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := ctxT(t)
			topic := "ourrm/" + name
			c := dial(t, Config{Servers: []string{addr}, ReceiveMaximum: 2, ManualAck: true})
			if _, err := c.Subscribe(ctx, Subscription{Filter: topic, QoS: 1}); err != nil {
				t.Fatal(err)
			}
			pub := dial(t, Config{Servers: []string{addr}})
			for i := range 6 {
				if err := pub.Publish(ctx, &Message{Topic: topic, Payload: []byte{byte('0' + i)}, QoS: 1}); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			for round := 0; len(got) < 6 && round < 4; round++ {
				batch := drain(c, 300*time.Millisecond)
				// Debian's mosquitto 2.0.11 sends more than the Receive
				// Maximum once acknowledgements start (4 after 2 PUBACKs);
				// the client tolerates it, so only Moat is held to it.
				if len(batch) > 2 && (name == "moat" || round == 0) {
					t.Fatalf("round %d: %d unacknowledged messages, Receive Maximum is 2", round, len(batch))
				}
				for _, m := range batch {
					got = append(got, string(m.Payload))
					c.Ack(m)
				}
			}
			if fmt.Sprint(got) != "[0 1 2 3 4 5]" || !c.IsConnected() {
				t.Fatalf("received %v (connected %v, err %v)", got, c.IsConnected(), c.Err())
			}
		})
	}
}
