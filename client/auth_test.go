package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// challengeAuth answers every challenge with "response:" + challenge and
// checks the server's final data.
type challengeAuth struct {
	final  string
	steps  []string
	finish []string
}

func (a *challengeAuth) Method() string                        { return "TEST-CHALLENGE" }
func (a *challengeAuth) Start(context.Context) ([]byte, error) { return []byte("hello"), nil }
func (a *challengeAuth) Challenge(_ context.Context, in *AuthPacket) (*AuthPacket, error) {
	a.steps = append(a.steps, string(in.Properties.AuthData))
	out := &AuthPacket{}
	out.Properties.AuthData = append([]byte("response:"), in.Properties.AuthData...)
	out.Properties.Mark(packet.PropAuthData)
	return out, nil
}
func (a *challengeAuth) Finish(_ context.Context, p *Properties) error {
	a.finish = append(a.finish, string(p.AuthData))
	if string(p.AuthData) != a.final {
		return fmt.Errorf("server proof %q is wrong", p.AuthData)
	}
	return nil
}

var _ AuthFinisher = (*challengeAuth)(nil)

// authServer plays the server side of MQTT 5 enhanced authentication
// with the codec: CONNECT, one challenge, CONNACK; then one
// re-authentication. Nothing in Debian implements enhanced authentication
// without plugins, so this scripted peer stands in for one.
func authServer(t *testing.T, ln net.Listener, final string) <-chan error {
	errc := make(chan error, 1)
	go func() {
		errc <- func() error {
			nc, err := ln.Accept()
			if err != nil {
				return err
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(10 * time.Second))
			r := packet.NewReader(nc, 0)
			send := func(p packet.Packet) error {
				b, err := packet.Append(nil, p, packet.V5)
				if err == nil {
					_, err = nc.Write(b)
				}
				return err
			}
			auth := func(code packet.ReasonCode, data string) *packet.Auth {
				a := &packet.Auth{ReasonCode: code}
				a.Properties.AuthMethod, a.Properties.AuthData = "TEST-CHALLENGE", []byte(data)
				a.Properties.Mark(packet.PropAuthMethod)
				a.Properties.Mark(packet.PropAuthData)
				return a
			}
			expectAuth := func(code packet.ReasonCode, data string) error {
				p, err := r.ReadPacket()
				if err != nil {
					return err
				}
				a, ok := p.(*packet.Auth)
				if !ok || a.ReasonCode != code || string(a.Properties.AuthData) != data || a.Properties.AuthMethod != "TEST-CHALLENGE" {
					return fmt.Errorf("got %#v, want AUTH %s %q", p, code, data)
				}
				return nil
			}
			p, err := r.ReadPacket()
			if err != nil {
				return err
			}
			c, ok := p.(*packet.Connect)
			if !ok || c.Properties.AuthMethod != "TEST-CHALLENGE" || string(c.Properties.AuthData) != "hello" {
				return fmt.Errorf("CONNECT without the expected authentication: %#v", p)
			}
			if err := send(auth(packet.ContinueAuthentication, "challenge-1")); err != nil {
				return err
			}
			if err := expectAuth(packet.ContinueAuthentication, "response:challenge-1"); err != nil {
				return err
			}
			ack := &packet.Connack{}
			ack.Properties = auth(0, final).Properties
			if err := send(ack); err != nil {
				return err
			}
			// Re-authentication started by the client.
			if err := expectAuth(packet.ReAuthenticate, "hello"); err != nil {
				return err
			}
			if err := send(auth(packet.ContinueAuthentication, "challenge-2")); err != nil {
				return err
			}
			if err := expectAuth(packet.ContinueAuthentication, "response:challenge-2"); err != nil {
				return err
			}
			if err := send(auth(packet.Success, final)); err != nil {
				return err
			}
			p, err = r.ReadPacket()
			if _, ok := p.(*packet.Disconnect); !ok {
				return fmt.Errorf("want DISCONNECT, got %v %v", p, err)
			}
			return nil
		}()
	}()
	return errc
}

func TestEnhancedAuth(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Run("challenge-and-reauth", func(t *testing.T) {
		errc := authServer(t, ln, "server-proof")
		a := &challengeAuth{final: "server-proof"}
		c := dial(t, Config{Servers: []string{ln.Addr().String()}, Auth: a})
		if err := c.Reauthenticate(ctxT(t)); err != nil {
			t.Fatalf("Reauthenticate: %v", err)
		}
		if err := c.Disconnect(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("server: %v", err)
		}
		if fmt.Sprint(a.steps, a.finish) != "[challenge-1 challenge-2] [server-proof server-proof]" {
			t.Fatalf("authenticator saw %v %v", a.steps, a.finish)
		}
	})
	t.Run("bad-server-proof", func(t *testing.T) {
		errc := authServer(t, ln, "forged")
		_, err := Dial(ctxT(t), Config{Servers: []string{ln.Addr().String()}, Auth: &challengeAuth{final: "server-proof"}})
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte("server proof")) {
			t.Fatalf("Dial = %v, want the authenticator's refusal", err)
		}
		<-errc
	})
	t.Run("needs-v5", func(t *testing.T) {
		_, err := Dial(ctxT(t), Config{Servers: []string{ln.Addr().String()}, Auth: &challengeAuth{}, Version: V311})
		if err == nil {
			t.Fatal("enhanced authentication accepted with MQTT 3.1.1")
		}
	})
}

// TestConnectRefused checks that CONNACK refusals come back as
// *ReasonError for both protocol generations.
func TestConnectRefused(t *testing.T) {
	addr := startMoat(t, broker.Config{Authenticator: broker.AuthenticatorFunc(
		func(context.Context, *broker.ConnectRequest) broker.AuthResult {
			return broker.AuthResult{Code: packet.BadUsernameOrPassword, Reason: "test"}
		})})
	for _, v := range []Version{V311, V5} {
		_, err := Dial(ctxT(t), Config{Servers: []string{addr}, Version: v, Username: "u", Password: NewSecret([]byte("p"))})
		var re *ReasonError
		if !errors.As(err, &re) || re.Code != packet.BadUsernameOrPassword || re.Op != "connect" {
			t.Fatalf("%s: Dial = %v, want bad user name or password", v, err)
		}
		if v == V311 && re.V3Code != 4 {
			t.Fatalf("3.1.1 return code %d, want 4", re.V3Code)
		}
	}
}

// TestNoGoroutineLeak checks that Close and Disconnect stop every
// goroutine the clients started.
func TestNoGoroutineLeak(t *testing.T) {
	addr := startMoat(t, broker.Config{})
	before := runtime.NumGoroutine()
	for i := range 5 {
		c, err := Dial(ctxT(t), Config{Servers: []string{addr}, Reconnect: ReconnectPolicy{Enabled: true},
			OnMessage: func(*Message) {}})
		if err != nil {
			t.Fatal(err)
		}
		c.Subscribe(ctxT(t), Subscription{Filter: "leak/#", QoS: 1})
		c.Publish(ctxT(t), &Message{Topic: "leak/x", QoS: 1})
		if i%2 == 0 {
			c.Close()
		} else {
			c.Disconnect(ctxT(t))
		}
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > before {
			return fmt.Errorf("%d goroutines, %d before", n, before)
		}
		return nil
	})
}

// BenchmarkPublish measures the client's publish path against Moat's
// broker in-process (the broker's work is included).
func BenchmarkPublish(b *testing.B) {
	addr := startMoat(b, broker.Config{})
	payload := bytes.Repeat([]byte("x"), 64)
	for _, qos := range []byte{0, 1, 2} {
		b.Run(fmt.Sprintf("qos%d", qos), func(b *testing.B) {
			c := dial(b, Config{Servers: []string{addr}})
			ctx := context.Background()
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			msgs := make([]Message, 256)
			toks := make([]*Token, 256)
			for i := 0; b.Loop(); i++ {
				j := i % len(msgs)
				if toks[j] != nil {
					if err := toks[j].Wait(ctx); err != nil {
						b.Fatal(err)
					}
				}
				msgs[j] = Message{Topic: "bench/x", Payload: payload, QoS: qos}
				toks[j] = c.PublishAsync(ctx, &msgs[j])
			}
			for _, t := range toks {
				if t != nil {
					t.Wait(ctx)
				}
			}
		})
	}
}

// TestCloseFromCallback closes the client from its own OnMessage.
func TestCloseFromCallback(t *testing.T) {
	addr := startMoat(t, broker.Config{})
	var c *Client
	ready := make(chan struct{})
	closed := make(chan struct{})
	c = dial(t, Config{Servers: []string{addr}, OnMessage: func(*Message) {
		<-ready
		c.Disconnect(context.Background())
		close(closed)
	}})
	close(ready)
	ctx := ctxT(t)
	if _, err := c.Subscribe(ctx, Subscription{Filter: "cb"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, &Message{Topic: "cb", QoS: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Disconnect from OnMessage did not return")
	}
	<-c.Done()
}

// sinkServer accepts one MQTT connection, answers CONNACK and PUBACK for
// every QoS 1 PUBLISH, and drops everything else: a peer that costs
// almost nothing, to measure the client alone.
func sinkServer(b *testing.B, ack bool) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		r := packet.NewReader(nc, 0)
		r.SetVersion(packet.V5)
		var out []byte
		for {
			p, err := r.ReadPacket()
			if err != nil {
				return
			}
			out = out[:0]
			switch p := p.(type) {
			case *packet.Connect:
				out, _ = packet.Append(out, &packet.Connack{}, packet.V5)
				if !ack {
					nc.Write(out)
					io.Copy(io.Discard, nc)
					return
				}
			case *packet.Publish:
				if p.QoS == 1 {
					out, _ = packet.Append(out, &packet.Puback{PacketID: p.PacketID}, packet.V5)
				}
			}
			if len(out) > 0 {
				if _, err := nc.Write(out); err != nil {
					return
				}
			}
		}
	}()
	return ln.Addr().String()
}

// BenchmarkPublishClientOnly measures the client's own cost per message
// (encoding, batching, acknowledgement tracking) against a sink server.
func BenchmarkPublishClientOnly(b *testing.B) {
	payload := bytes.Repeat([]byte("x"), 64)
	for _, qos := range []byte{0, 1} {
		b.Run(fmt.Sprintf("qos%d", qos), func(b *testing.B) {
			c := dial(b, Config{Servers: []string{sinkServer(b, qos > 0)}})
			ctx := context.Background()
			msg := Message{Topic: "bench/x", Payload: payload, QoS: qos}
			msgs := make([]Message, 512)
			toks := make([]*Token, len(msgs))
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			for i := 0; b.Loop(); i++ {
				if qos == 0 {
					if err := c.PublishAsync(ctx, &msg).Err(); err != nil {
						b.Fatal(err)
					}
					continue
				}
				j := i % len(msgs)
				if toks[j] != nil {
					if err := toks[j].Wait(ctx); err != nil {
						b.Fatal(err)
					}
				}
				msgs[j] = msg
				toks[j] = c.PublishAsync(ctx, &msgs[j])
			}
		})
	}
}
