package store_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/moatmq/moat/internal/store"
)

// A message queued for an offline persistent session: the publisher's
// PUBACK is sent only once Commit has returned.
func Example() {
	dir, _ := os.MkdirTemp("", "store-example")
	defer os.RemoveAll(dir)

	s, quarantined, err := store.OpenOrQuarantine(store.Config{Dir: dir}) // key file created in dir
	if err != nil {
		log.Fatal(err) // wrong key, store in use: the operator must act
	}
	if quarantined != nil {
		log.Print(quarantined) // loud, counted; s is a fresh store
	}
	_ = s.Recovered() // rebuild sessions, queues, retained messages, wills

	msg := &store.Message{ID: s.NextID(), Topic: "plant/line-1/temp", Payload: []byte("21.5"), QoS: 1}
	err = s.Commit(context.Background(),
		store.PutSession{Session: &store.Session{ClientID: "dashboard", ExpiryInterval: store.NeverExpires}},
		store.PutMessage{Message: msg},
		store.PutDelivery{Delivery: &store.Delivery{ClientID: "dashboard", Seq: s.NextID(), MsgID: msg.ID, QoS: 1}},
	)
	fmt.Println("durable:", err == nil) // now send PUBACK
	if err := s.Close(); err != nil {
		log.Fatal(err)
	}
	// Output: durable: true
}
