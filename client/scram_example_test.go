package client_test

import (
	"bytes"
	"context"
	"log"
	"os"

	"github.com/moatmq/moat/client"
)

// Authenticate with SCRAM-SHA-256 (MQTT 5 enhanced authentication): the
// password never crosses the network, and the broker must prove it knows
// the user's credential. Re-authenticate later on the same connection.
func ExampleSCRAM() {
	pw, err := os.ReadFile("/run/secrets/mqtt-password")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Config{
		Servers: []string{"mqtts://broker.example:8883"},
		Auth:    client.SCRAM("SCRAM-SHA-256", "sensor-17", client.NewSecret(pw)),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Disconnect(ctx)
	if err := c.Reauthenticate(ctx); err != nil {
		log.Fatal(err)
	}
}

// Authenticate with a JWT sent as Authentication Data (Moat's "moat-jwt"
// method), and renew it on the open connection before it expires: the
// broker ends a connection whose token expired and was not renewed.
func ExampleJWT() {
	token := func(ctx context.Context) (client.Secret, error) {
		b, err := os.ReadFile("/run/secrets/mqtt-token") // refreshed by an agent
		return client.NewSecret(bytes.TrimSpace(b)), err
	}
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Config{
		Servers: []string{"mqtts://broker.example:8883"},
		Auth:    client.JWT(token),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Disconnect(ctx)
	// Later, before the token's exp:
	if err := c.Reauthenticate(ctx); err != nil {
		log.Fatal(err)
	}
}
