package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/moatmq/moat/client"
)

// Connect with mutual TLS, subscribe and publish at QoS 1.
func Example() {
	ca, err := os.ReadFile("ca.pem")
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair("device.pem", "device.key")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{
		Servers:       []string{"mqtts://broker.example:8883"},
		ClientID:      "sensor-17",
		TLSConfig:     &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}},
		SessionExpiry: 3600,
		Reconnect:     client.ReconnectPolicy{Enabled: true},
		OnMessage: func(m *client.Message) {
			fmt.Printf("%s: %s\n", m.Topic, m.Payload)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Disconnect(context.Background())

	if _, err := c.Subscribe(ctx, client.Subscription{Filter: "factory/line1/#", QoS: 1}); err != nil {
		log.Fatal(err)
	}
	err = c.Publish(ctx, &client.Message{Topic: "factory/line1/temp", Payload: []byte("21.5"), QoS: 1})
	var re *client.ReasonError
	if errors.As(err, &re) {
		log.Fatalf("refused by the broker: %s (%s)", re.Code, re.Reason)
	}
}

// Publish a stream of messages without waiting for each acknowledgement,
// as a load generator does.
func ExampleClient_PublishAsync() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Config{Servers: []string{"mqtt://127.0.0.1:1883"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	msgs := make([]client.Message, 1000)
	toks := make([]*client.Token, len(msgs))
	for i := range msgs {
		msgs[i] = client.Message{Topic: "bench/x", Payload: []byte("hello"), QoS: 1}
		toks[i] = c.PublishAsync(ctx, &msgs[i]) // waits only when the server's Receive Maximum is reached
	}
	for _, t := range toks {
		if err := t.Wait(ctx); err != nil {
			log.Print(err)
		}
	}
}

// Receive messages from a channel instead of a callback.
func ExampleClient_Messages() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Config{Servers: []string{"ws://127.0.0.1:8080/mqtt"}, Version: client.V311})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Subscribe(ctx, client.Subscription{Filter: "alerts/#", QoS: 2}); err != nil {
		log.Fatal(err)
	}
	for m := range c.Messages() {
		fmt.Printf("%s %s\n", m.Topic, m.Payload)
	}
}
