package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// twoStep is an EnhancedAuthenticator for method "TEST": the client sends
// "user:NAME", the broker answers "challenge", the client "proof". Data
// over 4096 bytes fails, as SCRAM's parser refuses it.
type twoStep struct {
	expires time.Time
	groups  atomic.Pointer[[]string] // the groups the exchange returns
}

func (a *twoStep) Begin(c *Client, method string, reauth bool) (AuthExchange, error) {
	if method != "TEST" {
		return nil, fmt.Errorf("%w: %q", ErrBadAuthMethod, method)
	}
	x := &twoStepX{a: a}
	if reauth {
		x.current = c.Username
	}
	return x, nil
}

type twoStepX struct {
	a       *twoStep
	current string
	user    string
	step    int
}

func (x *twoStepX) Step(_ context.Context, data []byte) ([]byte, bool, AuthResult, error) {
	x.step++
	if len(data) > 4096 {
		return nil, false, AuthResult{Reason: "too long"}, errors.New("test: message too long")
	}
	switch x.step {
	case 1:
		name, ok := strings.CutPrefix(string(data), "user:")
		if !ok {
			return nil, false, AuthResult{Reason: "malformed"}, errors.New("test: malformed")
		}
		if name == "down" {
			return nil, false, AuthResult{Code: packet.ServerUnavailable, Reason: "store down"}, errors.New("test: unavailable")
		}
		x.user = name
		return []byte("challenge"), false, AuthResult{}, nil
	case 2:
		if string(data) != "proof" {
			return nil, false, AuthResult{Reason: "wrong proof"}, errors.New("test: wrong proof")
		}
		var groups []string
		if g := x.a.groups.Load(); g != nil {
			groups = *g
		}
		return []byte("server-final"), true, AuthResult{Allow: true, Username: x.user, Expires: x.a.expires, Groups: groups}, nil
	}
	return nil, false, AuthResult{Reason: "out of order"}, errors.New("test: out of order")
}

func authPkt(code packet.ReasonCode, method string, data string) *packet.Auth {
	return authPacket(code, method, []byte(data))
}

func eaConnect(method, data string) *packet.Connect {
	p := &packet.Connect{ClientID: "ea", KeepAlive: 60, CleanStart: true}
	p.Properties.AuthMethod = method
	p.Properties.Mark(packet.PropAuthMethod)
	p.Properties.AuthData = []byte(data)
	p.Properties.Mark(packet.PropAuthData)
	return p
}

// connectTEST runs the whole CONNECT exchange as alice.
func connectTEST(t *testing.T, addr string) *rawClient {
	t.Helper()
	c := dialRaw(t, addr, packet.V5)
	c.send(withVersion(eaConnect("TEST", "user:alice")))
	a, ok := c.recv().(*packet.Auth)
	if !ok || a.ReasonCode != packet.ContinueAuthentication || a.Properties.AuthMethod != "TEST" || string(a.Properties.AuthData) != "challenge" {
		t.Fatalf("want AUTH 0x18 challenge, got %#v", a)
	}
	c.send(authPkt(packet.ContinueAuthentication, "TEST", "proof"))
	ack, ok := c.recv().(*packet.Connack)
	if !ok || ack.ReasonCode != packet.Success || ack.Properties.AuthMethod != "TEST" || string(ack.Properties.AuthData) != "server-final" {
		t.Fatalf("want CONNACK 0x00 with the server's final data, got %#v", ack)
	}
	return c
}

func withVersion(p *packet.Connect) *packet.Connect {
	p.Version, p.ProtocolName = packet.V5, "MQTT"
	return p
}

// [MQTT-4.12.0-1] ... [MQTT-4.12.1-2]: the AUTH exchange of CONNECT, and
// re-authentication while other packets keep flowing.
func TestMQTT4_12EnhancedAuthExchange(t *testing.T) {
	_, addr := testServer(t, Config{EnhancedAuthenticator: &twoStep{}})
	c := connectTEST(t, addr)
	c.send(authPkt(packet.ReAuthenticate, "TEST", "user:alice"))
	a, ok := c.recv().(*packet.Auth)
	if !ok || a.ReasonCode != packet.ContinueAuthentication {
		t.Fatalf("want AUTH 0x18, got %#v", a)
	}
	// Other packets are handled in the middle of the exchange.
	c.send(&packet.Pingreq{})
	if _, ok := c.recv().(*packet.Pingresp); !ok {
		t.Fatal("no PINGRESP during re-authentication")
	}
	c.send(authPkt(packet.ContinueAuthentication, "TEST", "proof"))
	a, ok = c.recv().(*packet.Auth)
	if !ok || a.ReasonCode != packet.Success || string(a.Properties.AuthData) != "server-final" {
		t.Fatalf("want AUTH 0x00, got %#v", a)
	}
	c.send(&packet.Pingreq{})
	if _, ok := c.recv().(*packet.Pingresp); !ok {
		t.Fatal("connection not usable after re-authentication")
	}
}

// Hostile AUTH packets get the reason codes of docs/access-control.md.
func TestSecurityHostileAuth(t *testing.T) {
	_, addr := testServer(t, Config{EnhancedAuthenticator: &twoStep{}, AllowAnonymous: true})
	connackCode := func(t *testing.T, c *rawClient) packet.ReasonCode {
		t.Helper()
		for {
			p := c.recv()
			if ack, ok := p.(*packet.Connack); ok {
				return ack.ReasonCode
			}
		}
	}
	t.Run("auth-before-connect", func(t *testing.T) {
		// The attack: skip CONNECT and start with AUTH [MQTT-3.1.0-1].
		c := dialRaw(t, addr, packet.V5)
		c.send(authPkt(packet.ContinueAuthentication, "TEST", "proof"))
		if d := c.expectClosed(5 * time.Second); d != nil {
			t.Fatalf("got %v, want the connection closed without an answer", d)
		}
	})
	t.Run("auth-from-3.1.1", func(t *testing.T) {
		// AUTH does not exist in MQTT 3.1.1: type 15 is reserved.
		c := dialRaw(t, addr, packet.V311)
		if ack := c.connect(&packet.Connect{ClientID: "v3", CleanStart: true, KeepAlive: 60}); ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %v", ack.ReasonCode)
		}
		c.write([]byte{0xF0, 0x00})
		c.expectClosed(5 * time.Second)
	})
	t.Run("bad-method", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.send(withVersion(eaConnect("SCRAM-SHA-1", "x")))
		if code := connackCode(t, c); code != packet.BadAuthenticationMethod {
			t.Fatalf("CONNACK %v, want 0x8C", code)
		}
	})
	t.Run("connect-other-method", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.send(withVersion(eaConnect("TEST", "user:alice")))
		c.recv()
		c.send(authPkt(packet.ContinueAuthentication, "OTHER", "proof"))
		if code := connackCode(t, c); code != packet.ProtocolError {
			t.Fatalf("CONNACK %v, want 0x82", code)
		}
	})
	t.Run("connect-other-packet", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.send(withVersion(eaConnect("TEST", "user:alice")))
		c.recv()
		c.send(&packet.Pingreq{})
		if code := connackCode(t, c); code != packet.ProtocolError {
			t.Fatalf("CONNACK %v, want 0x82", code)
		}
	})
	t.Run("connect-wrong-proof", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.send(withVersion(eaConnect("TEST", "user:alice")))
		c.recv()
		c.send(authPkt(packet.ContinueAuthentication, "TEST", "guess"))
		if code := connackCode(t, c); code != packet.NotAuthorized {
			t.Fatalf("CONNACK %v, want 0x87", code)
		}
	})
	t.Run("store-unavailable", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		c.send(withVersion(eaConnect("TEST", "user:down")))
		if code := connackCode(t, c); code != packet.ServerUnavailable {
			t.Fatalf("CONNACK %v, want 0x88", code)
		}
	})
	t.Run("password-with-method", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		p := withVersion(eaConnect("TEST", "user:alice"))
		p.UsernameFlag, p.Username, p.PasswordFlag, p.Password = true, "alice", true, []byte("pw")
		c.send(p)
		if code := connackCode(t, c); code != packet.NotAuthorized {
			t.Fatalf("CONNACK %v, want 0x87", code)
		}
	})
	t.Run("oversized-before-connack", func(t *testing.T) {
		// The attack: a large AUTH before authentication, to make the
		// broker allocate; the pre-authentication limit applies.
		_, small := testServer(t, Config{EnhancedAuthenticator: &twoStep{}, PreAuthMaxPacketSize: 1024})
		c := dialRaw(t, small, packet.V5)
		c.send(withVersion(eaConnect("TEST", "user:alice")))
		c.recv()
		c.send(authPkt(packet.ContinueAuthentication, "TEST", strings.Repeat("x", 2000)))
		if code := connackCode(t, c); code != packet.PacketTooLarge {
			t.Fatalf("CONNACK %v, want 0x95", code)
		}
	})
	expectDisconnect := func(t *testing.T, c *rawClient, want packet.ReasonCode) {
		t.Helper()
		d := c.expectClosed(5 * time.Second)
		if d == nil || d.ReasonCode != want {
			t.Fatalf("DISCONNECT %v, want %v", d, want)
		}
	}
	t.Run("reauth-other-method", func(t *testing.T) {
		c := connectTEST(t, addr)
		c.send(authPkt(packet.ReAuthenticate, "OTHER", "user:alice"))
		expectDisconnect(t, c, packet.ProtocolError)
	})
	t.Run("reauth-continue-without-start", func(t *testing.T) {
		c := connectTEST(t, addr)
		c.send(authPkt(packet.ContinueAuthentication, "TEST", "proof"))
		expectDisconnect(t, c, packet.ProtocolError)
	})
	t.Run("reauth-oversized", func(t *testing.T) {
		c := connectTEST(t, addr)
		c.send(authPkt(packet.ReAuthenticate, "TEST", strings.Repeat("x", 5000)))
		expectDisconnect(t, c, packet.NotAuthorized)
	})
	t.Run("reauth-another-user", func(t *testing.T) {
		c := connectTEST(t, addr)
		c.send(authPkt(packet.ReAuthenticate, "TEST", "user:mallory"))
		c.recv()
		c.send(authPkt(packet.ContinueAuthentication, "TEST", "proof"))
		expectDisconnect(t, c, packet.NotAuthorized)
	})
	t.Run("auth-without-enhanced-connect", func(t *testing.T) {
		c := dialRaw(t, addr, packet.V5)
		if ack := c.connect(&packet.Connect{ClientID: "plain", CleanStart: true, KeepAlive: 60}); ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %v", ack.ReasonCode)
		}
		c.send(authPkt(packet.ReAuthenticate, "TEST", "user:alice"))
		expectDisconnect(t, c, packet.ProtocolError)
	})
}

// Without an EnhancedAuthenticator every Authentication Method is 0x8C.
func TestEnhancedAuthNotConfigured(t *testing.T) {
	_, addr := testServer(t, Config{AllowAnonymous: true})
	c := dialRaw(t, addr, packet.V5)
	c.send(withVersion(eaConnect("SCRAM-SHA-256", "n,,n=alice,r=abc")))
	ack, ok := c.recv().(*packet.Connack)
	if !ok || ack.ReasonCode != packet.BadAuthenticationMethod {
		t.Fatalf("got %#v, want CONNACK 0x8C", ack)
	}
}

// When authentication returns an expiry, clients that cannot
// re-authenticate are disconnected at it (MQTT 5: DISCONNECT 0x87; 3.1.1:
// closed), and those that connected with an Authentication Method get
// ReauthGrace; the timers are the injected clock's and stop with the
// connection.
func TestAuthExpiry(t *testing.T) {
	clk := newFakeClock()
	exp := clk.Now().Add(time.Hour)
	auth := AuthenticatorFunc(func(_ context.Context, req *ConnectRequest) AuthResult {
		return AuthResult{Allow: true, Username: req.Connect.Username, Expires: exp}
	})
	_, addr := testServer(t, Config{Authenticator: auth, EnhancedAuthenticator: &twoStep{expires: exp}, Clock: clk, ReauthGrace: time.Minute})
	v5 := dialRaw(t, addr, packet.V5)
	if ack := v5.connect(&packet.Connect{ClientID: "v5", CleanStart: true, KeepAlive: 60, UsernameFlag: true, Username: "u5"}); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %v", ack.ReasonCode)
	}
	v3 := dialRaw(t, addr, packet.V311)
	if ack := v3.connect(&packet.Connect{ClientID: "v3", CleanStart: true, KeepAlive: 60, UsernameFlag: true, Username: "u3"}); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %v", ack.ReasonCode)
	}
	ea := connectTEST(t, addr)
	if n := clk.pending(); n < 3 {
		t.Fatalf("%d timers pending, want one per connection", n)
	}
	clk.advance(time.Hour)
	if d := v5.expectClosed(5 * time.Second); d == nil || d.ReasonCode != packet.NotAuthorized || d.Properties.ReasonString != "token expired" {
		t.Fatalf("MQTT 5: DISCONNECT %#v, want 0x87 token expired", d)
	}
	v3.expectClosed(5 * time.Second)
	ea.send(&packet.Pingreq{})
	if _, ok := ea.recv().(*packet.Pingresp); !ok {
		t.Fatal("the client that can re-authenticate got no grace")
	}
	clk.advance(time.Minute)
	if d := ea.expectClosed(5 * time.Second); d == nil || d.ReasonCode != packet.NotAuthorized {
		t.Fatalf("after the grace: DISCONNECT %#v, want 0x87", d)
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		if n := clk.pending(); n != 0 {
			return fmt.Errorf("%d timers still pending", n)
		}
		return nil
	})
}

// reauthTEST re-authenticates c as alice and returns the broker's answer.
func reauthTEST(t *testing.T, c *rawClient) packet.Packet {
	t.Helper()
	c.send(authPkt(packet.ReAuthenticate, "TEST", "user:alice"))
	if a, ok := c.recv().(*packet.Auth); !ok || a.ReasonCode != packet.ContinueAuthentication {
		t.Fatalf("want AUTH 0x18, got %#v", a)
	}
	c.send(authPkt(packet.ContinueAuthentication, "TEST", "proof"))
	return c.recv()
}

// TestSecurityReauthWithOtherGroupsAppliesThem: alice connects with
// enhanced authentication as a member of "ops", which may read and write
// ops/#, and subscribes. Her membership is withdrawn; the attack is to
// re-authenticate with the fresh credential and keep reading and writing
// through the subscription, and the decisions cached, of the old groups.
// The re-authentication succeeds (the credential is good) and its groups
// apply at once on the loss-of-access path: the ops/# subscription is
// removed, an ops/ message published after it is not delivered, and
// publishing or subscribing there is refused, while her other subscription
// keeps working and the connection stays. A later re-authentication that
// gives "ops" back allows it again.
func TestSecurityReauthWithOtherGroupsAppliesThem(t *testing.T) {
	ea := &twoStep{}
	ea.groups.Store(&[]string{"ops"})
	authz := AuthorizerFunc(func(r *AuthzRequest) Decision {
		// The publisher (any other client) may write ops/.
		if r.Client.ClientID == "ea" && strings.HasPrefix(r.Topic, "ops/") && !slices.Contains(r.Client.Grants().Groups, "ops") {
			return Decision{Reason: "test: ops only"}
		}
		return Decision{Allow: true}
	})
	s, addr := testServer(t, Config{EnhancedAuthenticator: ea, Authorizer: authz})
	c := connectTEST(t, addr)
	if ack := subscribe(t, c, 1, packet.Subscription{Filter: "ops/#", QoS: 1}, packet.Subscription{Filter: "pub/#", QoS: 1}); ack.ReasonCodes[0] != packet.GrantedQoS1 {
		t.Fatalf("SUBACK %v: the groups of the exchange did not reach the Authorizer", ack.ReasonCodes)
	}
	p := dialRaw(t, addr, packet.V5)
	p.connect(v5connect("publisher"))
	publishAcked(t, p, 1, &packet.Publish{Topic: "ops/cmd", QoS: 1})
	if m := recvPublish(t, c); m.Topic != "ops/cmd" {
		t.Fatalf("got %q", m.Topic)
	} else {
		c.send(&packet.Puback{PacketID: m.PacketID})
	}

	ea.groups.Store(&[]string{})
	if a, ok := reauthTEST(t, c).(*packet.Auth); !ok || a.ReasonCode != packet.Success {
		t.Fatalf("re-authentication: %#v, want AUTH 0x00", a)
	}
	if st := s.Stats(); st.SubscriptionsRevoked != 1 || st.RevokedDisconnects != 0 {
		t.Errorf("stats: %d subscriptions revoked, %d disconnects; want 1 and 0", st.SubscriptionsRevoked, st.RevokedDisconnects)
	}
	publishAcked(t, p, 2, &packet.Publish{Topic: "ops/secret", QoS: 1})
	publishAcked(t, p, 3, &packet.Publish{Topic: "pub/news", QoS: 1})
	if m := recvPublish(t, c); m.Topic != "pub/news" {
		t.Fatalf("after losing ops: received %q", m.Topic)
	} else {
		c.send(&packet.Puback{PacketID: m.PacketID})
	}
	if ack := publishAcked(t, c, 3, &packet.Publish{Topic: "ops/cmd", QoS: 1}); ack.ReasonCode != packet.NotAuthorized {
		t.Fatalf("publish to ops/ after losing ops: PUBACK %v, want 0x87 (a stale cached allow?)", ack.ReasonCode)
	}
	if ack := subscribe(t, c, 4, packet.Subscription{Filter: "ops/#", QoS: 1}); ack.ReasonCodes[0] != packet.NotAuthorized {
		t.Fatalf("SUBACK %v after losing ops, want 0x87", ack.ReasonCodes[0])
	}

	ea.groups.Store(&[]string{"ops"})
	if a, ok := reauthTEST(t, c).(*packet.Auth); !ok || a.ReasonCode != packet.Success {
		t.Fatalf("re-authentication: %#v, want AUTH 0x00", a)
	}
	if ack := subscribe(t, c, 5, packet.Subscription{Filter: "ops/#", QoS: 1}); ack.ReasonCodes[0] != packet.GrantedQoS1 {
		t.Fatalf("SUBACK %v once ops is back, want granted", ack.ReasonCodes[0])
	}
	c.send(&packet.Pingreq{})
	if _, ok := c.recv().(*packet.Pingresp); !ok {
		t.Fatal("the connection did not stay")
	}
}
