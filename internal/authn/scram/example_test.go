package scram_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/moatmq/moat/internal/authn"
	"github.com/moatmq/moat/internal/authn/scram"
)

// users is a CredentialLookup over a map.
type users map[string]scram.Credential

func (u users) LookupCredential(_ context.Context, user string, m scram.Mechanism) (scram.Credential, error) {
	c, ok := u[user]
	if !ok || c.Mechanism != m {
		return scram.Credential{}, scram.ErrUnknownUser
	}
	return c, nil
}

// The broker's side of one exchange: each message from the client goes
// to Step, and its answer goes back in AUTH 0x18 until done, then in
// CONNACK. Here the client side runs in the same process.
func ExampleConversation_Step() {
	cred, err := scram.NewCredential(scram.SHA256, []byte("pencil"), 4096, nil)
	if err != nil {
		log.Fatal(err)
	}
	srv, err := scram.NewServer(scram.ServerConfig{Lookup: users{"user": cred}})
	if err != nil {
		log.Fatal(err)
	}
	cl, err := scram.NewClient(scram.SHA256, "user", []byte("pencil"), scram.ClientConfig{})
	if err != nil {
		log.Fatal(err)
	}

	conv, err := srv.Begin("SCRAM-SHA-256") // CONNECT's Authentication Method
	if errors.Is(err, scram.ErrUnknownMechanism) {
		log.Fatal("CONNACK 0x8C Bad authentication method")
	}
	in, _ := cl.First() // CONNECT's Authentication Data
	for {
		out, done, res, err := conv.Step(context.Background(), in)
		switch {
		case errors.Is(err, authn.ErrUnavailable):
			log.Fatal("CONNACK 0x88 Server unavailable: ", res.Reason)
		case err != nil:
			log.Fatal("CONNACK 0x87 Not authorized: ", res.Reason)
		case done:
			// CONNACK 0x00 with out as Authentication Data.
			fmt.Println(res.Verdict, res.Username, cl.Verify(out))
			return
		}
		// AUTH 0x18 with out; the client's AUTH 0x18 carries the next in.
		if in, err = cl.Final(out); err != nil {
			log.Fatal(err)
		}
	}
	// Output: allow user <nil>
}
