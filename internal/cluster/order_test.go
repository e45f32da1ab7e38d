package cluster

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
)

// TestSessionMoveOwnMessagesKeepOrder: a persistent session moves from
// n1 to n2 while n2's own client publishes at QoS 1. Messages 0..4 are
// acknowledged after n1 gave the session up (n2 reads them back from the
// stream before the import: its consumer skips them), 5..9 while n2
// imports it (found in its record of recent messages). The session gets
// them in their publisher's order [MQTT-4.6.0-6]. Before, the messages
// read from the stream were held back with what routing delivered
// during the import and released after 5..9.
func TestSessionMoveOwnMessagesKeepOrder(t *testing.T) {
	nodes := startCluster(t, 3)
	sub, _ := dialSession(t, nodes[0].addr, "kmover", client.V5)
	subscribe(t, sub, 1, "keep/#")
	pub := dial(t, nodes[1].addr, "kpub", client.V5)
	awaitRoute(t, pub, sub, "keep/probe")
	disconnect(t, sub)

	n2 := nodes[1].node
	publish := func(from, to int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i := from; i < to; i++ {
			if err := pub.Publish(ctx, &client.Message{Topic: "keep/x", QoS: 1, Payload: []byte(strconv.Itoa(i))}); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make(chan error, 2)
	var once1, once2 sync.Once
	released := func(string) error {
		once1.Do(func() { errs <- publish(0, 5) })
		return nil
	}
	importing := func(string) { once2.Do(func() { errs <- publish(5, 10) }) }
	n2.sess.afterRelease.Store(&released)
	n2.sess.beforeImport.Store(&importing)
	moved, present := dialSession(t, nodes[1].addr, "kmover", client.V5)
	n2.sess.afterRelease.Store(nil)
	n2.sess.beforeImport.Store(nil)
	if !present {
		t.Fatal("Session Present 0 on n2")
	}
	for range 2 {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatal("a hook did not run")
		}
	}
	receiveInOrder(t, moved, 0, 10)
	expectNone(t, moved, time.Second)
}
