package broker

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/moatmq/moat/internal/testutil"
)

// TestOverloadBlockCycleBroken: under queue_full_policy block, two Paho
// clients publish to each other faster than they read. Each one's queue
// fills, and each publisher is held for the other's full queue; held, its
// reader no longer reads the acknowledgements that would make room in its
// own queue, so neither can go on. Once a subscriber's queue made no
// progress for PushbackWait (the fake clock) while its own client waits,
// through the chain of held publishers, for one of those it holds, the
// publishers are let go and that queue drops until it has room: both
// clients complete every publication, every message is either received or
// counted as dropped, the cycle is counted, and no queue passed its limit
// by more than the one packet a held publisher had read.
func TestOverloadBlockCycleBroken(t *testing.T) {
	const n, maxQueued = 300, 10
	clk := newFakeClock()
	srv, addr := testServer(t, Config{Clock: clk, QueueFullPolicy: QueueBlock, MaxQueued: maxQueued, MaxInflight: 5})
	var received [2]atomic.Int64
	clients := make([]paho3.Client, 2)
	for i := range clients {
		o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(fmt.Sprintf("peer%d", i)).
			SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4).
			SetKeepAlive(time.Minute)
		c := paho3.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		defer c.Disconnect(100)
		tok := c.Subscribe(fmt.Sprintf("inbox/%d", i), 1, func(paho3.Client, paho3.Message) { received[i].Add(1) })
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		clients[i] = c
	}
	// Each PUBLISH is larger than the broker's read buffer, so that a
	// held publisher has read at most one packet past a full queue.
	payload := strings.Repeat("x", bigPacket)
	tokens := make([][]paho3.Token, 2)
	for i, c := range clients {
		for range n {
			tokens[i] = append(tokens[i], c.Publish(fmt.Sprintf("inbox/%d", 1-i), 1, false, payload))
		}
	}
	allDone := func() bool {
		for _, ts := range tokens {
			for _, tok := range ts {
				select {
				case <-tok.Done():
				default:
					return false
				}
			}
		}
		return true
	}
	maxQ := 0
	testutil.CheckFor(t, 30*time.Second, func() error {
		for _, id := range []string{"peer0", "peer1"} {
			q, _, _ := backlog(srv, id)
			maxQ = max(maxQ, q)
		}
		if !allDone() {
			clk.advance(DefaultPushbackWait)
			st := srv.Stats()
			return fmt.Errorf("publications not all acknowledged: %d routed, %d held, %d cycles", st.MessagesReceived, st.PublishersHeld, st.HoldCycles)
		}
		st := srv.Stats()
		if got := received[0].Load() + received[1].Load() + st.DroppedQueueFull; got != 2*n {
			return fmt.Errorf("received %d and %d, dropped %d: %d of %d", received[0].Load(), received[1].Load(), st.DroppedQueueFull, got, 2*n)
		}
		return nil
	})
	for i := range tokens {
		for _, tok := range tokens[i] {
			if err := tok.Error(); err != nil {
				t.Fatalf("publication: %v", err)
			}
		}
	}
	st := srv.Stats()
	if st.HoldCycles == 0 || st.DroppedQueueFull == 0 {
		t.Fatalf("%d cycles, %d dropped: the clients did not hold each other", st.HoldCycles, st.DroppedQueueFull)
	}
	if maxQ > maxQueued+1 {
		t.Fatalf("a queue reached %d, limit %d", maxQ, maxQueued)
	}
	t.Logf("received %d and %d, dropped %d, %d cycles broken", received[0].Load(), received[1].Load(), st.DroppedQueueFull, st.HoldCycles)
}
