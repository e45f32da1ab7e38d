package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// TestSharedSubscribeThenPublishRace: a shared subscription's group is
// made on n2 and, the moment n1's server has its queue subscription, a
// QoS 1 message is published on n1. NATS then chooses the group for it,
// and n1 must wait for the group's confirmation (at least once), though
// n2 never announces its groups on the directory subject here: n1 learns
// of the group with n2's group version, and until it has, it settles the
// message's groups later instead of leaving the group out. Each round's
// topic had its answer ("no group") cached on n1 before, which the group
// version must invalidate. Without the versions n1 does not know the
// group when it publishes and does not wait for it.
func TestSharedSubscribeThenPublishRace(t *testing.T) {
	nodes := startCluster(t, 3)
	n1, n2 := nodes[0].node, nodes[1].node
	n2.share.ack.quiet.Store(true)
	pub := dial(t, nodes[0].addr, "srpub", client.V5)
	member := dial(t, nodes[1].addr, "srmember", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	testutil.WaitFor(t, "n1's peers and their versions known", 30*time.Second, func() bool {
		s := n1.ic.snap.Load()
		if s == nil || len(s.versions) != 2 || s.peers != n1.dur.peers.Load() {
			return false
		}
		for i, v := range s.versions {
			if v == "" || s.gversions[i] == "" {
				return false
			}
		}
		return true
	})
	acc := n1.srv.GlobalAccount()
	hits := 0
	for round := range 8 {
		topic := fmt.Sprintf("srace/%d/x", round)
		if err := pub.Publish(ctx, &client.Message{Topic: topic, QoS: 1, Payload: []byte("before")}); err != nil {
			t.Fatal(err)
		}
		if s := n1.ic.snap.Load(); s != nil {
			if a, ok := n1.ic.cache.get(topic, s.epoch, n1.share.ownGen.Load()); ok && a.groupsKnown && len(a.groups) == 0 {
				hits++
			}
		}
		subscribe(t, member, 1, fmt.Sprintf("$share/g%d/srace/%d/#", round, round))
		subj := sharedPrefix + topicTokens(topic)
		for acc.Interest(subj) == 0 {
			if ctx.Err() != nil {
				t.Fatalf("round %d: n1 never saw the group", round)
			}
			time.Sleep(time.Millisecond)
		}
		confirmed := n1.share.ack.confirmed.Load()
		if err := pub.Publish(ctx, &client.Message{Topic: topic, QoS: 1, Payload: []byte("after")}); err != nil {
			t.Fatal(err)
		}
		if n1.share.ack.confirmed.Load() == confirmed {
			t.Fatalf("round %d: PUBACK without the group's confirmation: the group got the message at most once", round)
		}
		select {
		case m := <-member.Messages():
			if m.Topic != topic || string(m.Payload) != "after" {
				t.Fatalf("round %d: got %q on %q", round, m.Payload, m.Topic)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: the group did not receive the message", round)
		}
	}
	if hits == 0 {
		t.Error("no round had its topic's answer cached before the group: the cache was not tested")
	}
	expectNone(t, member, 200*time.Millisecond)
}
