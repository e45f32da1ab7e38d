package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// countingConn counts the bytes read from and written to a connection.
type countingConn struct {
	net.Conn
	in, out atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// dialCounted is dialRaw through a countingConn.
func dialCounted(t *testing.T, addr string, v packet.Version) (*rawClient, *countingConn) {
	c := dialRaw(t, addr, v)
	cc := &countingConn{Conn: c.nc}
	c.nc = cc
	c.r = packet.NewReader(cc, 0)
	c.r.SetVersion(v)
	return c, cc
}

// TestStatsTrafficByQoS: messages and payload bytes are counted by QoS in
// both directions, and the byte counters match, byte for byte, what the
// clients wrote and read.
func TestStatsTrafficByQoS(t *testing.T) {
	s, addr := testServer(t, Config{})
	sub, subConn := dialCounted(t, addr, packet.V5)
	sub.connect(&packet.Connect{ClientID: "sub", CleanStart: true})
	sub.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "t/#", QoS: 2}}})
	if _, ok := sub.recv().(*packet.Suback); !ok {
		t.Fatal("expected SUBACK")
	}
	pub, pubConn := dialCounted(t, addr, packet.V311)
	pub.connect(&packet.Connect{ClientID: "pub", CleanStart: true})

	payload := func(q int) []byte { return []byte(fmt.Sprintf("payload of QoS %d%s", q, make([]byte, 100*q))) }
	pub.send(&packet.Publish{Topic: "t/0", Payload: payload(0)})
	pub.send(&packet.Publish{Topic: "t/1", QoS: 1, PacketID: 1, Payload: payload(1)})
	if _, ok := pub.recv().(*packet.Puback); !ok {
		t.Fatal("expected PUBACK")
	}
	pub.send(&packet.Publish{Topic: "t/2", QoS: 2, PacketID: 2, Payload: payload(2)})
	if _, ok := pub.recv().(*packet.Pubrec); !ok {
		t.Fatal("expected PUBREC")
	}
	pub.send(&packet.Pubrel{PacketID: 2})
	if _, ok := pub.recv().(*packet.Pubcomp); !ok {
		t.Fatal("expected PUBCOMP")
	}
	for range 3 {
		switch p := sub.recv().(type) {
		case *packet.Publish:
			switch p.QoS {
			case 1:
				sub.send(&packet.Puback{PacketID: p.PacketID})
			case 2:
				sub.send(&packet.Pubrec{PacketID: p.PacketID})
				if _, ok := sub.recv().(*packet.Pubrel); !ok {
					t.Fatal("expected PUBREL")
				}
				sub.send(&packet.Pubcomp{PacketID: p.PacketID})
			}
		default:
			t.Fatalf("subscriber got %T", p)
		}
	}
	sub.send(&packet.Disconnect{})
	pub.send(&packet.Disconnect{})
	sub.expectClosed(5 * time.Second)
	pub.expectClosed(5 * time.Second)

	testutil.CheckFor(t, 5*time.Second, func() error {
		st := s.Stats()
		in := subConn.out.Load() + pubConn.out.Load()
		out := subConn.in.Load() + pubConn.in.Load()
		if st.BytesReceived != in || st.BytesSent != out {
			return fmt.Errorf("bytes received %d sent %d; the clients wrote %d and read %d", st.BytesReceived, st.BytesSent, in, out)
		}
		return nil
	})
	st := s.Stats()
	for q := range 3 {
		n := int64(len(payload(q)))
		if st.MessagesReceivedByQoS[q] != 1 || st.MessagesSentByQoS[q] != 1 || st.PayloadReceivedByQoS[q] != n || st.PayloadSentByQoS[q] != n {
			t.Errorf("QoS %d: received %d (%d bytes), sent %d (%d bytes); want 1 (%d bytes) each", q,
				st.MessagesReceivedByQoS[q], st.PayloadReceivedByQoS[q], st.MessagesSentByQoS[q], st.PayloadSentByQoS[q], n)
		}
	}
	if st.MessagesReceived != 3 || st.MessagesSent != 3 {
		t.Errorf("messages received %d sent %d, want 3 and 3", st.MessagesReceived, st.MessagesSent)
	}
	// CONNECT, SUBSCRIBE, PUBACK, PUBREC, PUBCOMP and DISCONNECT of the
	// subscriber; CONNECT, 3 PUBLISH, PUBREL and DISCONNECT of the
	// publisher.
	if st.PacketsReceived != 12 {
		t.Errorf("packets received %d, want 12", st.PacketsReceived)
	}
}

// TestStatsShardsSpread: connections take different counter shards, so
// that busy connections do not write the same cache line.
func TestStatsShardsSpread(t *testing.T) {
	var st stats
	seen := map[*counterShard]bool{}
	for range numShards {
		seen[st.shard()] = true
	}
	if len(seen) != numShards {
		t.Fatalf("%d connections took %d shards, want %d", numShards, len(seen), numShards)
	}
	if size := unsafe.Sizeof(counterShard{}); size%128 != 0 {
		t.Fatalf("counterShard is %d bytes; want a multiple of 128 (two padded halves)", size)
	}
}

// TestStatsAuthentications: each authentication result is counted once,
// with its reason.
func TestStatsAuthentications(t *testing.T) {
	s, addr := testServer(t, Config{
		Authenticator: AuthenticatorFunc(func(_ context.Context, req *ConnectRequest) AuthResult {
			switch req.Connect.Username {
			case "good":
				return AuthResult{Allow: true}
			case "bad":
				return AuthResult{Code: packet.BadUsernameOrPassword, Reason: "wrong password"}
			case "locked":
				return AuthResult{Reason: "account locked"}
			}
			return AuthResult{NoOpinion: true}
		}),
		AllowAnonymous: true,
	})
	for _, user := range []string{"good", "good", "bad", "locked", ""} {
		c := dialRaw(t, addr, packet.V5)
		c.connect(&packet.Connect{ClientID: "c-" + user, CleanStart: true, Username: user, UsernameFlag: user != ""})
		c.nc.Close()
	}
	want := map[string]int64{"true/credentials": 2, "false/bad_credentials": 1, "false/not_authorized": 1, "true/anonymous": 1}
	testutil.CheckFor(t, 5*time.Second, func() error {
		for _, a := range s.Stats().Authentications {
			k := fmt.Sprintf("%v/%s", a.Success, a.Reason)
			if a.N != want[k] {
				return fmt.Errorf("%s: %d, want %d", k, a.N, want[k])
			}
		}
		return nil
	})
}

// TestStatsAuthorization: the Authorizer's decisions are counted by
// action and result, and every refused request by kind and reason.
func TestStatsAuthorization(t *testing.T) {
	s, addr := testServer(t, Config{
		Authorizer: AuthorizerFunc(func(req *AuthzRequest) Decision {
			if req.Topic == "secret" || req.Topic == "secret/#" {
				return Decision{Reason: "secret topics are off limits", Rule: "rule 1"}
			}
			if req.Topic == "nobody" {
				return Decision{Reason: "no rule matches", Rule: "default"}
			}
			return Decision{Allow: true, Rule: "rule 2"}
		}),
	})
	c := dialRaw(t, addr, packet.V5)
	c.connect(&packet.Connect{ClientID: "c", CleanStart: true})
	c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "secret/#"}, {Filter: "open/#"}}})
	if _, ok := c.recv().(*packet.Suback); !ok {
		t.Fatal("expected SUBACK")
	}
	for i, topic := range []string{"secret", "secret", "nobody", "open/a", "open/a"} {
		c.send(&packet.Publish{Topic: topic, QoS: 1, PacketID: uint16(10 + i), Payload: []byte("x")})
		for acked := false; !acked; {
			switch p := c.recv().(type) {
			case *packet.Puback:
				acked = true
			case *packet.Publish: // its own message on open/#
			default:
				t.Fatalf("got %T", p)
			}
		}
	}
	st := s.Stats()
	got := map[string]int64{}
	for _, a := range st.AuthzDenials {
		got["denial "+a.Kind+"/"+a.Reason] = a.N
	}
	for _, a := range st.AuthzDecisions {
		got["decision "+a.Kind+"/"+a.Reason] = a.N
	}
	for k, n := range map[string]int64{
		"denial subscribe/rule": 1, "denial publish/rule": 2, "denial publish/default": 1, "denial delivery/rule": 0,
		// The second "secret" and "open/a" are answered by the
		// connection's decision cache; "open/a" is also checked for
		// delivery to the client itself.
		"decision subscribe/denied": 1, "decision subscribe/allowed": 1, "decision publish/denied": 2,
	} {
		if got[k] != n {
			t.Errorf("%s: %d, want %d (all: %v)", k, got[k], n, got)
		}
	}
	// The delivery check of "open/a" runs where the delivery is made,
	// and races with the reader's own stores into the connection's cache:
	// when the cache grows (a new table replaces the old one), a store
	// into the old table is lost, which costs one more decision (never a
	// wrong one). So the publish of "open/a" and its delivery are each
	// decided once, or twice when the second one missed.
	for _, k := range []string{"decision publish/allowed", "decision receive/allowed"} {
		if n := got[k]; n < 1 || n > 2 {
			t.Errorf("%s: %d, want 1 or 2 (all: %v)", k, n, got)
		}
	}
}

// TestStatsTLSHandshakes: successful handshakes are counted by version
// and key exchange group, failed ones by reason.
func TestStatsTLSHandshakes(t *testing.T) {
	s, addr := testServerTLS(t, Config{})
	handshake := func(cfg *tls.Config) error {
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		tc := tls.Client(nc, cfg)
		err = tc.Handshake()
		if err == nil {
			// The server counts once its side is done: make it finish.
			tc.Write([]byte{0xe0, 0x00}) // DISCONNECT
		}
		return err
	}
	if err := handshake(&tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	if err := handshake(&tls.Config{InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{tls.CurveP256}}); err != nil {
		t.Fatal(err)
	}
	if err := handshake(&tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}); err != nil {
		t.Fatal(err)
	}
	// A client that does not trust the server's certificate answers with
	// an alert.
	if err := handshake(&tls.Config{ServerName: "127.0.0.1"}); err == nil {
		t.Fatal("handshake with an untrusted certificate succeeded")
	}
	// Plain MQTT to the TLS port.
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 4, 't', 'e', 's', 't'})
	nc.Close()

	want := map[string]int64{
		"TLS 1.3/X25519MLKEM768": 1, "TLS 1.3/CurveP256": 1, "TLS 1.2/X25519": 1,
		"failed client_alert": 1, "failed not_tls": 1,
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		st := s.Stats()
		got := map[string]int64{}
		for _, h := range st.TLSHandshakes {
			got[h.Version+"/"+h.Group] = h.N
		}
		for r, n := range st.TLSHandshakeFailures {
			got["failed "+r] = n
		}
		for k, n := range want {
			if got[k] != n {
				return fmt.Errorf("%s: %d, want %d (all: %v)", k, got[k], n, got)
			}
		}
		if len(got) != len(want) {
			return fmt.Errorf("counted %v, want %v", got, want)
		}
		if st.TLSFailures != 2 {
			return fmt.Errorf("TLSFailures %d, want 2", st.TLSFailures)
		}
		return nil
	})
}

// TestStatsDroppedWithSession: messages queued for a session that ends
// are counted as dropped.
func TestStatsDroppedWithSession(t *testing.T) {
	s, addr := testServer(t, Config{})
	sub := dialRaw(t, addr, packet.V5)
	cp := &packet.Connect{ClientID: "sub"}
	cp.Properties.SetSessionExpiry(3600)
	sub.connect(cp)
	sub.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "q", QoS: 1}}})
	if _, ok := sub.recv().(*packet.Suback); !ok {
		t.Fatal("expected SUBACK")
	}
	sub.nc.Close()
	waitOffline(t, s, "sub")
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(&packet.Connect{ClientID: "pub", CleanStart: true})
	for i := range 3 {
		pub.send(&packet.Publish{Topic: "q", QoS: 1, PacketID: uint16(i + 1), Payload: []byte("m")})
		if _, ok := pub.recv().(*packet.Puback); !ok {
			t.Fatal("expected PUBACK")
		}
	}
	if n := s.Stats().Queued; n != 3 {
		t.Fatalf("queued %d, want 3", n)
	}
	// A clean start ends the stored session and its queue.
	again := dialRaw(t, addr, packet.V5)
	again.connect(&packet.Connect{ClientID: "sub", CleanStart: true})
	if st := s.Stats(); st.DroppedSessionEnd != 3 || st.Queued != 0 {
		t.Fatalf("dropped with the session %d, queued %d; want 3 and 0", st.DroppedSessionEnd, st.Queued)
	}
}

// BenchmarkStats is the broker's share of one scrape with 100 connected
// clients: Stats (the 64 counter shards, the sessions) and Clients (the
// per-connection view the TLS gauges are counted from).
func BenchmarkStats(b *testing.B) {
	s, addr := testServer(b, Config{})
	for i := range 100 {
		benchSubscriber(b, addr, fmt.Sprintf("c%d", i), "t/#", 0)
	}
	testutil.CheckFor(b, 5*time.Second, func() error {
		if n := s.Stats().ClientsConnected; n != 100 {
			return fmt.Errorf("%d connected", n)
		}
		return nil
	})
	b.Run("Stats", func(b *testing.B) {
		for b.Loop() {
			s.Stats()
		}
	})
	b.Run("Clients", func(b *testing.B) {
		for b.Loop() {
			s.Clients()
		}
	})
}
