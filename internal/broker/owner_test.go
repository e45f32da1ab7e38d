package broker

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/moatmq/moat/internal/packet"
)

// ownerTestAuth admits alice, bob and carol with their passwords (carol's
// client IDs are bound to her, as a certificate binding would) and has no
// opinion on anybody else, leaving them to the listener's anonymous policy.
var ownerTestAuth = AuthenticatorFunc(func(_ context.Context, req *ConnectRequest) AuthResult {
	p := req.Connect
	if req.Client.Username != "" {
		panic("Client.Username set before authentication")
	}
	if p.PasswordFlag && string(p.Password) == "pw-"+p.Username {
		switch p.Username {
		case "alice", "bob":
			return AuthResult{Allow: true, Reason: "password"}
		case "carol":
			return AuthResult{Allow: true, Reason: "password", ClientIDBound: true}
		}
	}
	return AuthResult{NoOpinion: true}
})

// ownerServer starts a server whose "test" listener admits only
// authenticated clients, plus two anonymous listeners "open" and "open2".
func ownerServer(t *testing.T, cfg Config) (s *Server, secure, open, open2 string) {
	t.Helper()
	cfg.Authenticator = ownerTestAuth
	s, secure = testServer(t, cfg)
	yes := true
	open = serveExtra(t, s, ListenerConfig{Name: "open", AllowAnonymous: &yes})
	open2 = serveExtra(t, s, ListenerConfig{Name: "open2", AllowAnonymous: &yes})
	return s, secure, open, open2
}

// serveExtra serves one more 127.0.0.1:0 listener on s until the test ends.
func serveExtra(t *testing.T, s *Server, lc ListenerConfig) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, lc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve %s returned %v, want ErrServerClosed", lc.Name, err)
		}
	})
	return ln.Addr().String()
}

// ownerConnect builds a CONNECT; a non-empty user sends a username and,
// when pw is not empty, a password. clean false asks for a persistent
// session (v5: one hour).
func ownerConnect(v packet.Version, id, user, pw string, clean bool) *packet.Connect {
	p := &packet.Connect{Version: v, ClientID: id, CleanStart: clean, KeepAlive: 30}
	if user != "" {
		p.UsernameFlag, p.Username = true, user
	}
	if pw != "" {
		p.PasswordFlag, p.Password = true, []byte(pw)
	}
	if v == packet.V5 && !clean {
		p.Properties.SessionExpiry = 3600
		p.Properties.Mark(packet.PropSessionExpiry)
	}
	return p
}

// wantRefused connects with p on addr and checks that the broker refuses
// the client ID: 0x85 Client Identifier not valid for v5, 0x02 identifier
// rejected for 3.1.1.
func wantRefused(t *testing.T, addr string, p *packet.Connect) {
	t.Helper()
	c := dialRaw(t, addr, p.Version)
	ack := c.connect(p)
	want := packet.ClientIDNotValid
	if p.Version != packet.V5 {
		want = packet.V3IdentifierRejected
	}
	if ack.ReasonCode != want || ack.SessionPresent {
		t.Fatalf("attacker CONNACK code %#x session present %v, want %#x and 0", byte(ack.ReasonCode), ack.SessionPresent, byte(want))
	}
	c.expectClosed(5 * time.Second)
}

func versionName(v packet.Version) string {
	if v == packet.V5 {
		return "v5"
	}
	return "v3.1.1"
}

// TestSecuritySessionOwner performs the takeover attacks of the review
// against a victim (alice, authenticated) holding a persistent session
// with a queued message: another authenticated identity (bob), an
// anonymous client on an anonymous listener, and an anonymous client that
// claims alice's username without her password each connect with the
// victim's client ID, with clean session 0 (to steal the session and its
// messages) and 1 (to kick the victim off). Every attempt must be refused
// with the client-identifier code, also while the victim is online, and
// the victim must keep its session, its queued message and its connection.
func TestSecuritySessionOwner(t *testing.T) {
	for _, v := range []packet.Version{packet.V311, packet.V5} {
		t.Run(versionName(v), func(t *testing.T) {
			_, secure, open, _ := ownerServer(t, Config{})
			id, tp := "victim-"+versionName(v), "own/"+versionName(v)

			victim := dialRaw(t, secure, v)
			if ack := victim.connect(ownerConnect(v, id, "alice", "pw-alice", false)); ack.ReasonCode != 0 {
				t.Fatalf("victim refused: %#x", byte(ack.ReasonCode))
			}
			subscribe(t, victim, 1, packet.Subscription{Filter: tp, QoS: 1})
			closeAndWait(t, victim, &packet.Disconnect{})

			pub := dialRaw(t, secure, packet.V311)
			pub.connect(ownerConnect(packet.V311, "publisher-"+versionName(v), "bob", "pw-bob", true))
			publishAcked(t, pub, 1, &packet.Publish{Topic: tp, Payload: []byte("queued-1")})

			attacks := []struct {
				name string
				addr string
				p    *packet.Connect
			}{
				{"other identity resumes", secure, ownerConnect(v, id, "bob", "pw-bob", false)},
				{"other identity clean start", secure, ownerConnect(v, id, "bob", "pw-bob", true)},
				{"anonymous resumes", open, ownerConnect(v, id, "", "", false)},
				{"anonymous clean start", open, ownerConnect(v, id, "", "", true)},
				{"anonymous claiming the victim's username", open, ownerConnect(v, id, "alice", "", false)},
			}
			for _, a := range attacks {
				t.Run("offline/"+a.name, func(t *testing.T) { wantRefused(t, a.addr, a.p) })
			}

			victim = dialRaw(t, secure, v)
			if ack := victim.connect(ownerConnect(v, id, "alice", "pw-alice", false)); ack.ReasonCode != 0 || !ack.SessionPresent {
				t.Fatalf("victim lost its session: code %#x session present %v", byte(ack.ReasonCode), ack.SessionPresent)
			}
			if m := recvPublish(t, victim); string(m.Payload) != "queued-1" {
				t.Fatalf("victim got %q, want its queued message", m.Payload)
			} else {
				victim.send(&packet.Puback{PacketID: m.PacketID})
			}

			for _, a := range attacks {
				t.Run("online/"+a.name, func(t *testing.T) { wantRefused(t, a.addr, a.p) })
			}
			// Still connected: the next message arrives on the same connection.
			publishAcked(t, pub, 2, &packet.Publish{Topic: tp, Payload: []byte("live")})
			if m := recvPublish(t, victim); string(m.Payload) != "live" {
				t.Fatalf("victim got %q, want live", m.Payload)
			}
		})
	}
}

// TestSecurityAnonymousSessionPerListener: an anonymous session belongs to
// its listener. An anonymous client on another anonymous listener tries to
// resume it (and so read its queued message); it is refused, while an
// anonymous client on the same listener resumes it as before.
func TestSecurityAnonymousSessionPerListener(t *testing.T) {
	_, secure, open, open2 := ownerServer(t, Config{})
	c := dialRaw(t, open, packet.V311)
	c.connect(ownerConnect(packet.V311, "anon-1", "", "", false))
	subscribe(t, c, 1, packet.Subscription{Filter: "anon/1", QoS: 1})
	closeAndWait(t, c, &packet.Disconnect{})
	pub := dialRaw(t, secure, packet.V311)
	pub.connect(ownerConnect(packet.V311, "anon-pub", "bob", "pw-bob", true))
	publishAcked(t, pub, 1, &packet.Publish{Topic: "anon/1", Payload: []byte("q")})

	wantRefused(t, open2, ownerConnect(packet.V311, "anon-1", "", "", false))
	wantRefused(t, open2, ownerConnect(packet.V5, "anon-1", "", "", false))

	c = dialRaw(t, open, packet.V311)
	if ack := c.connect(ownerConnect(packet.V311, "anon-1", "", "", false)); ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("same listener: code %#x session present %v", byte(ack.ReasonCode), ack.SessionPresent)
	}
	if m := recvPublish(t, c); string(m.Payload) != "q" {
		t.Fatalf("got %q", m.Payload)
	}
}

// TestSessionOwnerReplacesForeign covers the two cases where a different
// identity ends the old session instead of being refused, so that nobody
// can reserve a client ID: an authenticated client meets an anonymous
// client's session, and a client whose ID the Authenticator bound to it
// (carol) meets another identity's session. The old session is ended, not
// resumed, and its live connection is taken over.
func TestSessionOwnerReplacesForeign(t *testing.T) {
	_, secure, open, _ := ownerServer(t, Config{})
	for _, tc := range []struct {
		name    string
		addr    string
		squat   *packet.Connect
		claimer *packet.Connect
	}{
		{"authenticated over anonymous", open, ownerConnect(packet.V5, "dev-1", "", "", false), ownerConnect(packet.V5, "dev-1", "alice", "pw-alice", false)},
		{"bound client ID over another identity", secure, ownerConnect(packet.V5, "dev-2", "bob", "pw-bob", false), ownerConnect(packet.V5, "dev-2", "carol", "pw-carol", false)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sq := dialRaw(t, tc.addr, packet.V5)
			sq.connect(tc.squat)
			subscribe(t, sq, 1, packet.Subscription{Filter: "squat/#", QoS: 1})
			c := dialRaw(t, secure, packet.V5)
			if ack := c.connect(tc.claimer); ack.ReasonCode != 0 || ack.SessionPresent {
				t.Fatalf("code %#x session present %v, want a fresh session", byte(ack.ReasonCode), ack.SessionPresent)
			}
			expectDisconnect(t, sq, packet.SessionTakenOver)
			pub := dialRaw(t, secure, packet.V5)
			pub.connect(ownerConnect(packet.V5, "pub-"+tc.claimer.ClientID, "bob", "pw-bob", true))
			pub.send(&packet.Publish{Topic: "squat/x", Payload: []byte("x")})
			expectNone(t, c) // the squatter's subscription was not inherited
		})
	}
}

// TestSessionOwnerIgnored: with IgnoreSessionOwner any identity resumes a
// session by client ID, as in Mosquitto.
func TestSessionOwnerIgnored(t *testing.T) {
	_, secure, open, _ := ownerServer(t, Config{IgnoreSessionOwner: true})
	c := dialRaw(t, secure, packet.V311)
	c.connect(ownerConnect(packet.V311, "shared", "alice", "pw-alice", false))
	closeAndWait(t, c, &packet.Disconnect{})
	c = dialRaw(t, open, packet.V311)
	if ack := c.connect(ownerConnect(packet.V311, "shared", "", "", false)); ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("code %#x session present %v, want the session resumed", byte(ack.ReasonCode), ack.SessionPresent)
	}

	// Relaxing the check is said at start.
	var buf bytes.Buffer
	s, err := New(Config{IgnoreSessionOwner: true, AllowAnonymous: true, SysInterval: -1, Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "level=WARN") || !strings.Contains(buf.String(), "session owner check is off") {
		t.Errorf("no start warning in %q", buf.String())
	}
}

// TestSecurityUnverifiedUsername: on an anonymous listener a client sends
// the username "admin" without any backend checking it, hoping that an
// Authorizer grants admin's rights on the name. The Authorizer must see an
// empty Username (the claim only in ClaimedUsername) and Anonymous set;
// an authenticated client's Username is its verified name.
func TestSecurityUnverifiedUsername(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]Client{}
	authz := authorizerFunc(func(c *Client, a Action, topic string, _ byte, _ bool) Decision {
		if a == ActionPublish {
			mu.Lock()
			seen[c.ClientID] = *c
			mu.Unlock()
		}
		return Decision{Allow: c.Username == "admin" || topic != "admin/only"}
	})
	_, secure, open, _ := ownerServer(t, Config{Authorizer: authz})

	a := dialRaw(t, open, packet.V5)
	a.connect(ownerConnect(packet.V5, "claims-admin", "admin", "", true))
	a.send(&packet.Publish{Topic: "admin/only", QoS: 1, PacketID: 1})
	if ack, ok := a.recv().(*packet.Puback); !ok || ack.ReasonCode != packet.NotAuthorized {
		t.Fatalf("claimed username was trusted: %#v", ack)
	}
	b := dialRaw(t, secure, packet.V5)
	b.connect(ownerConnect(packet.V5, "real-alice", "alice", "pw-alice", true))
	publishAcked(t, b, 1, &packet.Publish{Topic: "x"})

	mu.Lock()
	defer mu.Unlock()
	if c := seen["claims-admin"]; c.Username != "" || c.ClaimedUsername != "admin" || !c.Anonymous {
		t.Errorf("anonymous client: Username %q ClaimedUsername %q Anonymous %v, want \"\", admin, true", c.Username, c.ClaimedUsername, c.Anonymous)
	}
	if c := seen["real-alice"]; c.Username != "alice" || c.Anonymous {
		t.Errorf("authenticated client: Username %q Anonymous %v, want alice, false", c.Username, c.Anonymous)
	}
}

type authorizerFunc func(c *Client, a Action, topic string, qos byte, retain bool) Decision

func (f authorizerFunc) Authorize(r *AuthzRequest) Decision {
	return f(r.Client, r.Action, r.Topic, r.QoS, r.Retain)
}

// TestSecurityOwnerKeyFromListener: the owner keys a listener keeps for
// its clients without a verified name are the keys ownerOf makes without
// it; another listener's, or a listener state whose keys were never made,
// are not used (an empty key would be shared by every such client).
func TestSecurityOwnerKeyFromListener(t *testing.T) {
	lst := &listenerState{name: "l1"}
	lst.anonOwner, lst.authOwner = "anon:l1", "auth:l1"
	for _, c := range []*Client{
		{Listener: "l1", Anonymous: true},
		{Listener: "l1"},
		{Listener: "l1", Username: "u"},
		{Listener: "l2", Anonymous: true},
	} {
		want := ownerOf(c, nil)
		if got := ownerOf(c, lst); got != want {
			t.Errorf("%+v: owner %+v with the listener's keys, %+v without", c, got, want)
		}
		if got := ownerOf(c, &listenerState{name: c.Listener}); got != want || got.key == "" {
			t.Errorf("%+v: owner %+v from a state without keys, want %+v", c, got, want)
		}
	}
	if o := ownerOf(&Client{Listener: "l1", Anonymous: true}, lst); unsafe.StringData(o.key) != unsafe.StringData(lst.anonOwner) {
		t.Error("an anonymous client's owner key is not the listener's")
	}
}
