package broker

// Interoperability with the Eclipse Paho Go clients: paho.golang (MQTT 5)
// and paho.mqtt.golang (MQTT 3.1.1). They are test-only dependencies.

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/moatmq/moat/internal/testutil"
)

type paho5 struct {
	*paho.Client
	msgs chan *paho.Publish
	disc chan *paho.Disconnect
}

func dialPaho5(t *testing.T, addr string, cp *paho.Connect) (*paho5, *paho.Connack) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &paho5{msgs: make(chan *paho.Publish, 100), disc: make(chan *paho.Disconnect, 1)}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn: nc,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { c.disc <- d },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("paho.golang connect: %v", err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c, ack
}

func (c *paho5) next(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
		return nil
	}
}

func TestPahoV5Interop(t *testing.T) {
	_, addr := testServer(t, Config{MaxKeepAlive: 60})
	ctx := context.Background()

	sub, ack := dialPaho5(t, addr, &paho.Connect{ClientID: "", CleanStart: true, KeepAlive: 120})
	if ack.Properties.AssignedClientID == "" {
		t.Error("MQTT-3.2.2-16: no assigned client identifier")
	}
	if ack.Properties.ServerKeepAlive == nil || *ack.Properties.ServerKeepAlive != 60 {
		t.Error("MQTT-3.2.2-21: server keep alive not announced")
	}
	if _, err := sub.Subscribe(ctx, &paho.Subscribe{
		Properties:    &paho.SubscribeProperties{SubscriptionIdentifier: ptr(7)},
		Subscriptions: []paho.SubscribeOptions{{Topic: "sensors/+/temp", QoS: 2}},
	}); err != nil {
		t.Fatal(err)
	}
	pub, _ := dialPaho5(t, addr, &paho.Connect{ClientID: "paho-pub", CleanStart: true, KeepAlive: 30})
	for qos := byte(0); qos <= 2; qos++ {
		t.Run(fmt.Sprintf("QoS %d with properties", qos), func(t *testing.T) {
			_, err := pub.Publish(ctx, &paho.Publish{
				Topic: "sensors/s1/temp", QoS: qos, Payload: []byte("21.5"),
				Properties: &paho.PublishProperties{
					ContentType:     "text/plain",
					ResponseTopic:   "replies/s1",
					CorrelationData: []byte{1, 2, 3},
					User:            paho.UserProperties{{Key: "unit", Value: "C"}, {Key: "unit", Value: "K"}},
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			m := sub.next(t)
			if string(m.Payload) != "21.5" || m.QoS != qos {
				t.Fatalf("got %q QoS %d", m.Payload, m.QoS)
			}
			p := m.Properties
			if p.ContentType != "text/plain" || p.ResponseTopic != "replies/s1" || string(p.CorrelationData) != "\x01\x02\x03" {
				t.Errorf("MQTT-3.3.2-20 properties not forwarded: %+v", p)
			}
			if len(p.User) != 2 || p.User[0].Value != "C" || p.User[1].Value != "K" {
				t.Errorf("MQTT-3.3.2-18 user properties: %+v", p.User)
			}
			if p.SubscriptionIdentifier == nil || *p.SubscriptionIdentifier != 7 {
				t.Errorf("subscription identifier missing")
			}
		})
	}
	t.Run("takeover sends DISCONNECT 0x8E", func(t *testing.T) {
		old, _ := dialPaho5(t, addr, &paho.Connect{ClientID: "same", CleanStart: true, KeepAlive: 30})
		dialPaho5(t, addr, &paho.Connect{ClientID: "same", CleanStart: true, KeepAlive: 30})
		select {
		case d := <-old.disc:
			if d.ReasonCode != 0x8E {
				t.Fatalf("reason %#x", d.ReasonCode)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no DISCONNECT")
		}
	})
}

func ptr[T any](v T) *T { return &v }

func TestPahoV311Interop(t *testing.T) {
	_, addr := testServer(t, Config{})
	opts := func(id string, clean bool) *paho3.ClientOptions {
		o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
			SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4)
		return o
	}
	connect := func(t *testing.T, o *paho3.ClientOptions) paho3.Client {
		t.Helper()
		c := paho3.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(100) })
		return c
	}
	var mu sync.Mutex
	got := map[string][]string{}
	recv := func(_ paho3.Client, m paho3.Message) {
		mu.Lock()
		got[m.Topic()] = append(got[m.Topic()], string(m.Payload()))
		mu.Unlock()
	}
	sub := connect(t, opts("v3-sub", false))
	if tok := sub.Subscribe("plant/#", 2, recv); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	pub := connect(t, opts("v3-pub", true))
	for qos := byte(0); qos <= 2; qos++ {
		tok := pub.Publish(fmt.Sprintf("plant/q%d", qos), qos, false, fmt.Sprintf("m%d", qos))
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for q := range 3 {
			if len(got[fmt.Sprintf("plant/q%d", q)]) != 1 {
				return fmt.Errorf("have %v", got)
			}
		}
		return nil
	})

	t.Run("offline queue for persistent session", func(t *testing.T) {
		sub.Disconnect(100)
		pub.Publish("plant/offline", 1, false, "while away").WaitTimeout(5 * time.Second)
		connect(t, opts("v3-sub", false).SetDefaultPublishHandler(recv))
		testutil.CheckFor(t, 5*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(got["plant/offline"]) != 1 {
				return fmt.Errorf("have %v", got)
			}
			return nil
		})
	})
	t.Run("will on lost connection", func(t *testing.T) {
		watcher := connect(t, opts("v3-watch", true))
		wills := make(chan string, 1)
		watcher.Subscribe("status/#", 1, func(_ paho3.Client, m paho3.Message) { wills <- string(m.Payload()) }).WaitTimeout(5 * time.Second)
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		// CONNECT v3.1.1 with will "status/dev" = "offline", then drop.
		nc.Write([]byte{0x10, 0x24, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x06, 0, 30, 0, 3, 'd', 'e', 'v',
			0, 10, 's', 't', 'a', 't', 'u', 's', '/', 'd', 'e', 'v', 0, 7, 'o', 'f', 'f', 'l', 'i', 'n', 'e'})
		buf := make([]byte, 4)
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := nc.Read(buf); err != nil {
			t.Fatal(err)
		}
		nc.Close()
		select {
		case w := <-wills:
			if w != "offline" {
				t.Fatalf("will %q", w)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no will")
		}
	})
}
