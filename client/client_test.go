package client

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
)

// TestMosquittoTransports connects over every transport and both main
// protocol versions to Debian's mosquitto and exchanges messages at each
// QoS.
func TestMosquittoTransports(t *testing.T) {
	m := startMosquitto(t, "")
	tlsCfg := &tls.Config{RootCAs: m.pki.pool}
	mtlsCfg := &tls.Config{RootCAs: m.pki.pool, Certificates: []tls.Certificate{m.pki.client}}
	cases := []struct {
		name string
		url  string
		tls  *tls.Config
	}{
		{"tcp", "mqtt://" + m.tcp, nil},
		{"tls", "mqtts://" + m.tls, tlsCfg},
		{"mtls", "mqtts://" + m.mtls, mtlsCfg},
		{"ws", "ws://" + m.ws + "/mqtt", nil},
	}
	for _, tc := range cases {
		for _, v := range []Version{V311, V5, V31} {
			t.Run(fmt.Sprintf("%s/%s", tc.name, v), func(t *testing.T) {
				t.Parallel()
				exchange(t, Config{Servers: []string{tc.url}, TLSConfig: tc.tls, Version: v}, tc.name+"/"+v.String())
			})
		}
	}
	t.Run("mtls-without-certificate-refused", func(t *testing.T) {
		_, err := Dial(ctxT(t), Config{Servers: []string{"mqtts://" + m.mtls}, TLSConfig: tlsCfg})
		if err == nil {
			t.Fatal("connected to a require_certificate listener without a certificate")
		}
	})
	t.Run("tls-unknown-ca-refused", func(t *testing.T) {
		_, err := Dial(ctxT(t), Config{Servers: []string{"mqtts://" + m.tls}})
		var uerr x509.UnknownAuthorityError
		if err == nil || !errors.As(err, &uerr) {
			t.Fatalf("want unknown authority error, got %v", err)
		}
	})
}

// exchange subscribes and publishes at QoS 0, 1 and 2 with one client.
func exchange(t *testing.T, cfg Config, topic string) {
	t.Helper()
	c := dial(t, cfg)
	ctx := ctxT(t)
	topic = "test/" + topic
	codes, err := c.Subscribe(ctx, Subscription{Filter: topic + "/#", QoS: 2})
	if err != nil || len(codes) != 1 || codes[0] != packet.GrantedQoS2 {
		t.Fatalf("Subscribe: %v %v", codes, err)
	}
	for qos := byte(0); qos <= 2; qos++ {
		want := fmt.Sprintf("hello qos %d", qos)
		if err := c.Publish(ctx, &Message{Topic: topic + "/q", Payload: []byte(want), QoS: qos}); err != nil {
			t.Fatalf("Publish QoS %d: %v", qos, err)
		}
		got := recv(t, c)
		if string(got.Payload) != want || got.QoS != qos || got.Topic != topic+"/q" {
			t.Fatalf("got %q QoS %d on %q, want %q QoS %d", got.Payload, got.QoS, got.Topic, want, qos)
		}
	}
	if _, err := c.Unsubscribe(ctx, topic+"/#"); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	if err := c.Publish(ctx, &Message{Topic: topic + "/q", Payload: []byte("after"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	noMessage(t, c, 100e6)
	if err := c.Disconnect(ctx); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	if !errors.Is(c.Err(), ErrClosed) {
		t.Fatalf("Err after Disconnect = %v", c.Err())
	}
	if err := c.Publish(ctx, &Message{Topic: topic, QoS: 1}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Disconnect = %v, want ErrClosed", err)
	}
}

// TestMoatBroker runs the same exchange against Moat's own broker.
func TestMoatBroker(t *testing.T) {
	addr := startMoat(t, broker.Config{})
	for _, v := range []Version{V311, V5, V31} {
		t.Run(v.String(), func(t *testing.T) {
			exchange(t, Config{Servers: []string{addr}, Version: v}, "moat/"+v.String())
		})
	}
}

// TestPropertiesRoundTrip sends MQTT 5 properties through both brokers.
func TestPropertiesRoundTrip(t *testing.T) {
	m := startMosquitto(t, "")
	brokers := map[string]string{"mosquitto": m.tcp, "moat": startMoat(t, broker.Config{})}
	for name, addr := range brokers {
		t.Run(name, func(t *testing.T) {
			c := dial(t, Config{Servers: []string{addr}})
			ctx := ctxT(t)
			props := Properties{SubscriptionIDs: []uint32{7}}
			if _, err := c.SubscribeWith(ctx, props, Subscription{Filter: "props/#", QoS: 1}); err != nil {
				t.Fatal(err)
			}
			var p Properties
			p.PayloadFormat = 1
			p.Mark(PropPayloadFormat)
			p.SetMessageExpiry(3600)
			p.ContentType = "application/json"
			p.Mark(PropContentType)
			p.ResponseTopic = "props/reply"
			p.Mark(PropResponseTopic)
			p.CorrelationData = []byte{1, 2, 3}
			p.Mark(PropCorrelationData)
			p.User = []UserProperty{{Key: "a", Value: "1"}, {Key: "b", Value: "2"}, {Key: "a", Value: "3"}}
			if err := c.Publish(ctx, &Message{Topic: "props/x", Payload: []byte(`{"t":21}`), QoS: 1, Properties: p}); err != nil {
				t.Fatal(err)
			}
			got := recv(t, c).Properties
			if got.PayloadFormat != 1 || got.ContentType != "application/json" || got.ResponseTopic != "props/reply" ||
				!bytes.Equal(got.CorrelationData, []byte{1, 2, 3}) || !got.Has(PropMessageExpiry) || got.MessageExpiry > 3600 {
				t.Errorf("properties changed: %+v", got)
			}
			if fmt.Sprint(got.User) != fmt.Sprint(p.User) {
				t.Errorf("user properties %v, want %v", got.User, p.User)
			}
			if fmt.Sprint(got.SubscriptionIDs) != "[7]" {
				t.Errorf("subscription identifiers %v, want [7]", got.SubscriptionIDs)
			}
		})
	}
}

// TestTopicAliasInbound lets Moat's broker replace topics by aliases and
// checks that the client resolves them.
func TestTopicAliasInbound(t *testing.T) {
	addr := startMoat(t, broker.Config{})
	d := &ctlDialer{}
	c := dial(t, Config{Servers: []string{addr}, TopicAliasMaximum: 4, Dialer: d})
	ctx := ctxT(t)
	if _, err := c.Subscribe(ctx, Subscription{Filter: "alias/#"}); err != nil {
		t.Fatal(err)
	}
	topics := []string{"alias/a", "alias/b", "alias/a", "alias/c", "alias/d", "alias/e", "alias/a", "alias/e"}
	for i, tp := range topics {
		if err := c.Publish(ctx, &Message{Topic: tp, Payload: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	for i, tp := range topics {
		m := recv(t, c)
		if m.Topic != tp || m.Payload[0] != byte(i) || m.Properties.Has(packet.PropTopicAlias) {
			t.Fatalf("message %d: topic %q payload %v, want %q", i, m.Topic, m.Payload, tp)
		}
	}
	aliased := 0
	for _, p := range d.last().received(t, V5) {
		if p, ok := p.(*packet.Publish); ok && p.Topic == "" && p.Properties.Has(packet.PropTopicAlias) {
			aliased++
		}
	}
	if aliased == 0 {
		t.Fatal("the broker sent no aliased PUBLISH; the test proves nothing")
	}
}

// TestPublishRefused checks that a v5 PUBACK failure comes back as a
// *ReasonError with the code, and a SUBACK failure likewise.
func TestPublishRefused(t *testing.T) {
	addr := startMoat(t, broker.Config{Authorizer: denyTopic("secret")})
	c := dial(t, Config{Servers: []string{addr}})
	ctx := ctxT(t)
	err := c.Publish(ctx, &Message{Topic: "secret/x", Payload: []byte("no"), QoS: 1})
	var re *ReasonError
	if !errors.As(err, &re) || re.Code != packet.NotAuthorized || re.Topic != "secret/x" || !errors.Is(err, ErrRejected) {
		t.Fatalf("Publish QoS 1 = %v, want NotAuthorized", err)
	}
	err = c.Publish(ctx, &Message{Topic: "secret/x", Payload: []byte("no"), QoS: 2})
	if !errors.As(err, &re) || re.Code != packet.NotAuthorized {
		t.Fatalf("Publish QoS 2 = %v, want NotAuthorized", err)
	}
	codes, err := c.Subscribe(ctx, Subscription{Filter: "ok/#"}, Subscription{Filter: "secret/#"})
	if !errors.As(err, &re) || re.Topic != "secret/#" || len(codes) != 2 || codes[0] != 0 || !codes[1].IsError() {
		t.Fatalf("Subscribe = %v %v", codes, err)
	}
	if err := c.Publish(ctx, &Message{Topic: "ok/x", QoS: 1}); err != nil {
		t.Fatalf("allowed publish: %v", err)
	}
}

type denyTopic string

func (d denyTopic) Authorize(r *broker.AuthzRequest) broker.Decision {
	if strings.HasPrefix(r.Topic, string(d)) {
		return broker.Decision{Reason: "test denies " + string(d)}
	}
	return broker.Decision{Allow: true}
}

// TestReceiveMaximum publishes many QoS 1 and 2 messages asynchronously
// to a broker with a small Receive Maximum: the broker disconnects
// clients that exceed it, so success shows the window is respected.
func TestReceiveMaximum(t *testing.T) {
	addr := startMoat(t, broker.Config{ReceiveMaximum: 3})
	c := dial(t, Config{Servers: []string{addr}})
	ctx := ctxT(t)
	if got := c.ConnectInfo().Properties.ReceiveMaximum; got != 3 {
		t.Fatalf("server Receive Maximum %d, want 3", got)
	}
	var toks []*Token
	for i := range 200 {
		toks = append(toks, c.PublishAsync(ctx, &Message{Topic: "rm/x", Payload: []byte{byte(i)}, QoS: byte(1 + i%2)}))
		if n := c.Inflight(); n > 3 {
			t.Fatalf("%d messages in flight, server allows 3", n)
		}
	}
	for i, tk := range toks {
		if err := tk.Wait(ctx); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

func TestSecretRedacted(t *testing.T) {
	s := NewSecret([]byte("hunter2"))
	cfg := Config{Password: s}
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %s %+v %#v", s, s, cfg, cfg)} {
		if strings.Contains(out, "hunter2") {
			t.Fatalf("secret printed: %s", out)
		}
	}
	if !s.Equal(NewSecret([]byte("hunter2"))) || s.Equal(NewSecret([]byte("hunter3"))) {
		t.Fatal("Equal")
	}
}

func TestConfigValidation(t *testing.T) {
	cfg := Config{
		Servers: []string{"http://x", "mqtt://user:pw@host"},
		Version: 9,
		Proxy:   "http://proxy",
		Will:    &Will{Topic: "a/+", QoS: 3},
	}
	_, err := Dial(ctxT(t), cfg)
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"unknown scheme", "credentials in the URL", "protocol version 9", "socks5", "will topic", "will QoS"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), ":pw@") {
		t.Errorf("password leaked: %v", err)
	}
}

// TestTopicAliasOutbound publishes with Config.TopicAliases to both
// brokers: repeated topics go out as aliases and arrive with their names.
func TestTopicAliasOutbound(t *testing.T) {
	for name, addr := range resendBrokers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := ctxT(t)
			sub := dial(t, Config{Servers: []string{addr}})
			if _, err := sub.Subscribe(ctx, Subscription{Filter: "aout/#", QoS: 1}); err != nil {
				t.Fatal(err)
			}
			d := &ctlDialer{}
			pub := dial(t, Config{Servers: []string{addr}, TopicAliases: true, Dialer: d})
			var want []string
			for round := range 2 {
				for i := range 15 {
					topic := fmt.Sprintf("aout/%d", i)
					want = append(want, topic)
					if err := pub.Publish(ctx, &Message{Topic: topic, Payload: []byte{byte(round)}, QoS: byte(i % 2)}); err != nil {
						t.Fatal(err)
					}
				}
			}
			for i, w := range want {
				if m := recv(t, sub); m.Topic != w {
					t.Fatalf("message %d on %q, want %q", i, m.Topic, w)
				}
			}
			aliased := 0
			for _, p := range d.last().written(t, V5) {
				if p, ok := p.(*packet.Publish); ok && p.Topic == "" {
					aliased++
				}
			}
			if max := pub.ConnectInfo().Properties.TopicAliasMaximum; aliased != int(max) || max == 0 {
				t.Fatalf("%d publishes sent as alias only, server allows %d aliases", aliased, max)
			}
		})
	}
}

// TestDrainHandsOnEarlierMessages checks Drain's promise: every message
// that arrived before a SUBACK the caller has seen is given to fn before
// Drain returns. With a Messages() buffer of one and nobody reading,
// the retained messages of a wildcard subscription pile up between the
// connection's reader and Messages(); a read of Messages() without
// waiting would find one of them, Drain must find them all.
func TestDrainHandsOnEarlierMessages(t *testing.T) {
	addr := startMoat(t, broker.Config{})
	ctx := ctxT(t)
	const n = 20
	pub := dial(t, Config{Servers: []string{addr}})
	for i := range n {
		if err := pub.Publish(ctx, &Message{Topic: fmt.Sprintf("drain/%d", i), Payload: []byte("r"), QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	c := dial(t, Config{Servers: []string{addr}, MessageBuffer: 1})
	sub := Subscription{Filter: "drain/#", QoS: 1}
	if _, err := c.Subscribe(ctx, sub); err != nil {
		t.Fatal(err)
	}
	// The second SUBACK comes after every retained message of the first.
	sub.RetainHandling = 2
	if _, err := c.Subscribe(ctx, sub); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	if err := c.Drain(ctx, func(m *Message) { seen[m.Topic] = true }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != n {
		t.Fatalf("Drain handed on %d of the %d retained messages", len(seen), n)
	}
	c.Close()
	if err := c.Drain(ctx, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Drain after Close = %v, want ErrClosed", err)
	}
}
