package broker

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// aheadWindow is the Receive Maximum of the tests below: the commits one
// connection has in flight before its reader waits for a slot.
const aheadWindow = 2

// heldStoreServer starts a server whose store holds commits back
// (model.setHold), with a Receive Maximum of aheadWindow, and an offline
// persistent subscriber to "t/#", so that every QoS 1 PUBLISH there
// waits for a commit before its PUBACK. With tls set, on a TLS listener.
func heldStoreServer(t *testing.T, tls bool) (*Server, *modelPersistence, string) {
	t.Helper()
	model := newModel()
	cfg := Config{Persistence: model, ReceiveMaximum: aheadWindow}
	var srv *Server
	var addr string
	if tls {
		srv, addr = testServerTLS(t, cfg)
	} else {
		srv, addr = testServer(t, cfg)
	}
	sub := dialAhead(t, addr, tls, packet.V5)
	sub.connect(persistentConnect("ahead-sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t/#", QoS: 1})
	sub.nc.Close()
	waitOffline(t, srv, "ahead-sub")
	model.setHold(true)
	return srv, model, addr
}

func dialAhead(t *testing.T, addr string, tls bool, v packet.Version) *rawClient {
	t.Helper()
	if tls {
		c, _ := dialTLSHeld(t, addr, v)
		return c
	}
	return dialRaw(t, addr, v)
}

// encodeAll encodes ps back to back, to be written at once.
func encodeAll(t *testing.T, v packet.Version, ps ...packet.Packet) []byte {
	t.Helper()
	var b []byte
	for _, p := range ps {
		var err error
		if b, err = packet.Append(b, p, v); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func qos1Burst(from, to uint16, payload int) []packet.Packet {
	var ps []packet.Packet
	for pid := from; pid <= to; pid++ {
		ps = append(ps, &packet.Publish{Topic: fmt.Sprintf("t/%d", pid), QoS: 1, PacketID: pid,
			Payload: bytes.Repeat([]byte{'x'}, payload)})
	}
	return ps
}

// heldCommits is the number of commits the model holds.
func heldCommits(m *modelPersistence) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.held)
}

// recvAcks reads until the PUBACK of last and checks that the PUBACKs
// from first come in order [MQTT-4.6.0-2]; it returns the PINGRESPs
// read meanwhile.
func recvAcks(t *testing.T, c *rawClient, first, last uint16) int {
	t.Helper()
	pings := 0
	for want := first; want <= last; {
		switch p := c.recv().(type) {
		case *packet.Pingresp:
			pings++
		case *packet.Puback:
			if p.PacketID != want {
				t.Fatalf("PUBACK %d, want %d: acknowledgements out of order", p.PacketID, want)
			}
			want++
		default:
			t.Fatalf("got %s, want PUBACK %d", p.Type(), want)
		}
	}
	return pings
}

// waitGone waits until the clean session id is gone with its connection.
func waitGone(t *testing.T, srv *Server, id string) {
	t.Helper()
	testutil.WaitFor(t, "session "+id+" to end", 5*time.Second, func() bool { return srv.lookup(id) == nil })
}

// TestReadAheadAnswersPingreq: a publisher past the window while its
// commits are held — an MQTT 3.1.1 client knows no Receive Maximum —
// gets PINGRESP for the PINGREQ behind its PUBLISHes, and for one sent
// once its reader waits, before any commit is done; after the release
// the PUBACKs come in the order of the PUBLISHes, and each PINGREQ was
// answered once [MQTT-3.12.4-1].
func TestReadAheadAnswersPingreq(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool
		v    packet.Version
	}{
		{"tcp 3.1.1", false, packet.V311},
		{"tls 3.1.1", true, packet.V311},
		{"tcp 5", false, packet.V5}, // past the Receive Maximum it announced
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, model, addr := heldStoreServer(t, tc.tls)
			pub := dialAhead(t, addr, tc.tls, tc.v)
			pub.connect(&packet.Connect{ClientID: "ahead-pub", CleanStart: true, KeepAlive: 30})

			pub.write(encodeAll(t, tc.v, append(qos1Burst(1, 6, 10), &packet.Pingreq{})...))
			if p := pub.recv(); p.Type() != packet.PINGRESP {
				t.Fatalf("got %s, want PINGRESP while the commits are held", p.Type())
			}
			testutil.WaitFor(t, "the reader to wait for a commit slot", 5*time.Second, func() bool {
				return heldCommits(model) == aheadWindow
			})
			// Read from the socket while the reader waits.
			pub.send(&packet.Pingreq{})
			if p := pub.recv(); p.Type() != packet.PINGRESP {
				t.Fatalf("got %s, want PINGRESP while the commits are held", p.Type())
			}
			if n := heldCommits(model); n != aheadWindow {
				t.Fatalf("%d commits held, want %d: the reader went past its window", n, aheadWindow)
			}

			model.release()
			if n := recvAcks(t, pub, 1, 6); n != 0 {
				t.Fatalf("%d PINGRESPs after the release: PINGREQs answered twice", n)
			}
			// Whatever was still to come for the two buffered PINGREQs
			// would come before this PUBACK.
			pub.write(encodeAll(t, tc.v, &packet.Pingreq{}, qos1Burst(7, 7, 10)[0]))
			if n := recvAcks(t, pub, 7, 7); n != 1 {
				t.Fatalf("%d PINGRESPs for one PINGREQ", n)
			}
		})
	}
}

// TestReadAheadBufferFull: a publisher that sends more than the read
// buffer holds past its window, then PINGREQ, is not read further while
// its commits are held (the buffer is the bound) and does not deadlock:
// after the release every PUBACK comes in order, and one PINGRESP.
func TestReadAheadBufferFull(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"tcp", false}, {"tls", true}} {
		t.Run(tc.name, func(t *testing.T) {
			_, model, addr := heldStoreServer(t, tc.tls)
			pub := dialAhead(t, addr, tc.tls, packet.V311)
			pub.connect(&packet.Connect{ClientID: "ahead-pub", CleanStart: true, KeepAlive: 30})
			const n = 60 // 60 × 75 bytes: over four read buffers
			pub.write(encodeAll(t, packet.V311, append(qos1Burst(1, n, 70), &packet.Pingreq{})...))
			testutil.WaitFor(t, "the reader to wait for a commit slot", 5*time.Second, func() bool {
				return heldCommits(model) == aheadWindow
			})
			model.release()
			if got := recvAcks(t, pub, 1, n); got > 1 {
				t.Fatalf("%d PINGRESPs for one PINGREQ", got)
			} else if got == 0 {
				if p := pub.recv(); p.Type() != packet.PINGRESP {
					t.Fatalf("got %s, want PINGRESP", p.Type())
				}
			}
			pub.write(encodeAll(t, packet.V311, &packet.Pingreq{}, qos1Burst(n+1, n+1, 10)[0]))
			if got := recvAcks(t, pub, n+1, n+1); got != 1 {
				t.Fatalf("%d PINGRESPs for one PINGREQ", got)
			}
		})
	}
}

// waitingPublisher returns a server whose store holds its commits and a
// 3.1.1 client of it, ahead-pub with keepAlive, that has sent more QoS 1
// PUBLISHes than the broker's window: its reader waits for a commit
// slot.
func waitingPublisher(t *testing.T, keepAlive uint16) (*Server, *modelPersistence, *rawClient) {
	t.Helper()
	srv, model, addr := heldStoreServer(t, false)
	pub := dialRaw(t, addr, packet.V311)
	pub.connect(&packet.Connect{ClientID: "ahead-pub", CleanStart: true, KeepAlive: keepAlive})
	pub.write(encodeAll(t, packet.V311, qos1Burst(1, 4, 10)...))
	testutil.WaitFor(t, "the reader to wait for a commit slot", 5*time.Second, func() bool {
		return heldCommits(model) == aheadWindow
	})
	return srv, model, pub
}

// TestReadAheadEnds: a reader waiting for a commit slot while it reads
// ahead ends with its connection: kicked by an operator, after its
// client closed the socket (seen once the reader reaches it), and when
// its client sends nothing for one and a half times its keep alive
// [MQTT-3.1.2-24]; a client that keeps sending PINGREQ stays.
func TestReadAheadEnds(t *testing.T) {
	t.Run("kicked", func(t *testing.T) {
		srv, model, pub := waitingPublisher(t, 30)
		if !srv.Kick("ahead-pub", "test") {
			t.Fatal("not connected")
		}
		pub.expectClosed(5 * time.Second)
		waitGone(t, srv, "ahead-pub")
		model.release()
	})
	t.Run("client gone", func(t *testing.T) {
		srv, model, pub := waitingPublisher(t, 30)
		pub.nc.Close()
		model.release()
		waitGone(t, srv, "ahead-pub")
		// The PUBLISHes before the end of the stream were handled.
		model.mu.Lock()
		n := len(model.dlv["ahead-sub"])
		model.mu.Unlock()
		if n != 4 {
			t.Fatalf("%d deliveries stored, want 4", n)
		}
	})
	t.Run("MQTT-3.1.2-24 keep alive", func(t *testing.T) {
		if testing.Short() {
			t.Skip("waits for a keep alive of 1 s")
		}
		srv, model, pub := waitingPublisher(t, 1)
		// Two keep-alive deadlines pass while the client pings.
		for range 6 {
			time.Sleep(500 * time.Millisecond) // the client's pace: real time, as the socket's deadline
			pub.send(&packet.Pingreq{})
			if p := pub.recv(); p.Type() != packet.PINGRESP {
				t.Fatalf("got %s, want PINGRESP", p.Type())
			}
		}
		start := time.Now()
		pub.expectClosed(5 * time.Second)
		if d := time.Since(start); d < time.Second {
			t.Fatalf("closed %v after the last PINGREQ, before its keep alive ran out", d)
		}
		waitGone(t, srv, "ahead-pub")
		model.release()
	})
}

// TestPahoV311ReadAheadKeepsConnection: the Paho 3.1.1 client, with a
// keep alive and a PINGRESP timeout of 1 s each, publishes past the
// broker's window while the store holds its commits for longer than
// both: its PINGREQs are answered, it stays connected, and every
// message is acknowledged once the commits are done.
func TestPahoV311ReadAheadKeepsConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("holds the store for 4 s of the client's keep alive")
	}
	_, model, addr := heldStoreServer(t, false)
	lost := make(chan error, 1)
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("paho-ahead").SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4).
		SetKeepAlive(time.Second).SetPingTimeout(time.Second).
		SetConnectionLostHandler(func(_ paho3.Client, err error) { lost <- err })
	c := paho3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	var toks []paho3.Token
	for i := range 10 {
		toks = append(toks, c.Publish(fmt.Sprintf("t/%d", i), 1, false, "m"))
	}
	testutil.WaitFor(t, "the reader to wait for a commit slot", 5*time.Second, func() bool {
		return heldCommits(model) == aheadWindow
	})
	select {
	case err := <-lost:
		t.Fatalf("connection lost while the commits were held: %v", err)
	case <-time.After(4 * time.Second): // the client's keep alive runs on real time
	}
	model.release()
	for i, tok := range toks {
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("message %d not acknowledged: %v", i, tok.Error())
		}
	}
	select {
	case err := <-lost:
		t.Fatalf("connection lost: %v", err)
	default:
	}
	if !c.IsConnectionOpen() {
		t.Fatal("connection closed")
	}
}

// TestReadAheadStops: what the reader meets in its buffer while it reads
// ahead stops it there, and is handled in its turn once the commits are
// done: a fixed header it refuses (reported after the PUBLISHes before
// it are acknowledged; the PINGREQ behind it is never answered), a
// packet larger than the read buffer, and a SUBSCRIBE (whose arrival
// time reads ahead would move); the PINGREQ behind those is answered
// after them, and nothing before the commits the reader waited for are
// done. The commits after those may still be in flight: SUBACK and
// PINGRESP are not ordered against their PUBACKs [MQTT-4.6.0-2].
func TestReadAheadStops(t *testing.T) {
	big := qos1Burst(5, 5, 2048)[0]
	sub := &packet.Subscribe{PacketID: 9, Subscriptions: []packet.Subscription{{Filter: "other", QoS: 1}}}
	for _, tc := range []struct {
		name   string
		after  []byte
		acks   uint16
		closed bool
		then   packet.Type // after the PUBACKs
	}{
		{name: "MQTT-2.1.3-1 malformed fixed header", after: []byte{0xC1, 0x00}, closed: true},
		{name: "packet too large", after: []byte{0x32, 0x80, 0x80, 0x80, 0x01}, closed: true},
		{name: "larger than the buffer", after: encodeAll(t, packet.V311, big), acks: 5},
		{name: "SUBSCRIBE", after: encodeAll(t, packet.V311, sub), acks: 4, then: packet.SUBACK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, model, addr := heldStoreServer(t, false)
			pub := dialRaw(t, addr, packet.V311)
			pub.connect(&packet.Connect{ClientID: "ahead-pub", CleanStart: true, KeepAlive: 30})
			b := encodeAll(t, packet.V311, qos1Burst(1, 4, 10)...)
			b = append(b, tc.after...)
			pub.write(append(b, encodeAll(t, packet.V311, &packet.Pingreq{})...))
			testutil.WaitFor(t, "the reader to wait for a commit slot", 5*time.Second, func() bool {
				return heldCommits(model) == aheadWindow
			})
			model.release()
			if tc.closed {
				// The connection ends at the refused packet: the PUBACKs
				// of commits done by then come in order, the PINGREQ
				// behind it is never answered.
				for want := uint16(1); ; want++ {
					p, err := pub.recvErr(5 * time.Second)
					if isTimeout(err) {
						t.Fatal("connection still open")
					}
					if err != nil {
						return
					}
					if ack, ok := p.(*packet.Puback); !ok || ack.PacketID != want {
						t.Fatalf("got %#v, want PUBACK %d or the end of the connection", p, want)
					}
				}
			}
			want, sawThen, sawPing := uint16(1), tc.then == 0, false
			for want <= tc.acks || !sawThen || !sawPing {
				p := pub.recv()
				if want <= aheadWindow {
					if ack, ok := p.(*packet.Puback); !ok || ack.PacketID != want {
						t.Fatalf("got %#v, want PUBACK %d: the reader read past the packet that stops it", p, want)
					}
				}
				switch p := p.(type) {
				case *packet.Puback:
					if p.PacketID != want {
						t.Fatalf("PUBACK %d, want %d: acknowledgements out of order", p.PacketID, want)
					}
					want++
				case *packet.Pingresp:
					if !sawThen || sawPing {
						t.Fatalf("PINGRESP before the %s, or twice", tc.then)
					}
					sawPing = true
				default:
					if p.Type() != tc.then || sawThen {
						t.Fatalf("got %s, want PUBACK %d or PINGRESP", p.Type(), want)
					}
					sawThen = true
				}
			}
		})
	}
}
