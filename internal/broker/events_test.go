package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// recObserver records the Observer calls and answers as its fields say.
type recObserver struct {
	mu     sync.Mutex
	calls  []string
	refuse string // Accept refuses with this reason when set
	deny   bool   // Denied asks to disconnect
}

func (o *recObserver) add(s string) {
	o.mu.Lock()
	o.calls = append(o.calls, s)
	o.mu.Unlock()
}

func (o *recObserver) seen() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.calls)
}

func (o *recObserver) Accept(listener string, remote net.Addr) (ConnObserver, Decision) {
	o.add("accept " + listener)
	if o.refuse != "" {
		return nil, Decision{Reason: o.refuse}
	}
	return recConn{o}, Decision{Allow: true}
}

type recConn struct{ o *recObserver }

func (r recConn) Connecting(c *Client) Decision {
	r.o.add("connecting " + c.ClientID)
	return Decision{Allow: c.ClientID != "banned"}
}
func (r recConn) AuthFailed(c *Client, reason string) { r.o.add("authfailed " + reason) }
func (r recConn) Connected(c *Client) Decision {
	r.o.add("connected " + c.ClientID)
	return Decision{Allow: true}
}
func (r recConn) Denied(c *Client, a Action, topic, reason string) Verdict {
	r.o.add("denied " + a.String() + " " + topic)
	return Verdict{Disconnect: r.o.deny, Code: packet.NotAuthorized, Reason: "scanning"}
}
func (r recConn) Undeliverable(c *Client, topic string) Verdict {
	r.o.add("undeliverable " + topic)
	return Verdict{}
}
func (r recConn) Read(n int) (time.Duration, Decision) { return 0, Decision{Allow: true} }
func (r recConn) Ping(c *Client, quiet time.Duration) Verdict {
	r.o.add("ping")
	return Verdict{}
}
func (r recConn) Closed(c *Client, connected, abnormal bool) {
	if connected {
		r.o.add("closed " + c.ClientID + map[bool]string{true: " abnormal", false: " normal"}[abnormal])
	}
}

type denyPrefix string

func (p denyPrefix) Authorize(r *AuthzRequest) Decision {
	if strings.HasPrefix(r.Topic, string(p)) {
		return Decision{Reason: "denied by test"}
	}
	return Decision{Allow: true}
}

// TestSecurityObserverRefusesBeforeTLS: a socket the Observer refuses
// (a flooding or banned address) is closed at accept: the TLS handshake
// never starts, so it costs the broker no TLS work.
func TestSecurityObserverRefusesBeforeTLS(t *testing.T) {
	obs := &recObserver{refuse: "flood"}
	s, err := New(Config{Logger: testLogger(t), AllowAnonymous: true, SysInterval: -1, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- s.Serve(context.Background(), tls.NewListener(ln, testTLSConfig(t)), ListenerConfig{Name: "tls"})
	}()
	defer func() {
		s.Shutdown(context.Background())
		<-done
	}()
	for range 3 {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			c.Close()
			t.Fatal("TLS handshake completed with a refused socket")
		}
	}
	// The client sees the socket close before the accept loop counts the
	// refusal: wait for the count.
	testutil.CheckFor(t, 5*time.Second, func() error {
		if st := s.Stats(); st.AcceptRefused != 3 || st.TLSFailures != 0 {
			return fmt.Errorf("accept refusals %d, TLS failures %d; want 3 and 0", st.AcceptRefused, st.TLSFailures)
		}
		return nil
	})
}

// TestObserverSeesConnectionEvents: the Observer is told of CONNECT,
// denials, undeliverable publishes, PINGREQ and the end; a banned client
// ID is refused with CONNACK 0x8A; a Denied verdict ends the client with
// DISCONNECT.
func TestObserverSeesConnectionEvents(t *testing.T) {
	obs := &recObserver{}
	_, addr := testServer(t, Config{Observer: obs, Authorizer: denyPrefix("deny/")})

	b := dialRaw(t, addr, packet.V5)
	if ack := b.connect(&packet.Connect{ClientID: "banned", CleanStart: true}); ack.ReasonCode != packet.Banned {
		t.Fatalf("banned client: CONNACK %v", ack.ReasonCode)
	}

	c := dialRaw(t, addr, packet.V5)
	c.connect(&packet.Connect{ClientID: "a", CleanStart: true})
	c.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "deny/x"}}})
	c.recv() // SUBACK 0x87
	c.send(&packet.Publish{Topic: "nobody/here", QoS: 1, PacketID: 2})
	c.recv() // PUBACK 0x10
	c.send(&packet.Pingreq{})
	c.recv()
	c.send(&packet.Disconnect{})
	c.expectClosed(5 * time.Second)
	want := []string{"connecting a", "connected a", "denied subscribe deny/x", "undeliverable nobody/here", "ping", "closed a normal"}
	testutil.CheckFor(t, 5*time.Second, func() error {
		got := obs.seen()
		for _, w := range want {
			if !slices.Contains(got, w) {
				return errors.New("observer calls " + strings.Join(got, ", ") + "; missing " + w)
			}
		}
		return nil
	})

	obs.mu.Lock()
	obs.deny = true
	obs.mu.Unlock()
	d := dialRaw(t, addr, packet.V5)
	d.connect(&packet.Connect{ClientID: "scanner", CleanStart: true})
	d.send(&packet.Publish{Topic: "deny/y", QoS: 0})
	if disc := d.expectClosed(5 * time.Second); disc == nil || disc.ReasonCode != packet.NotAuthorized {
		t.Fatalf("scanner: DISCONNECT %v, want 0x87", disc)
	}
}
