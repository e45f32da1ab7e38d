package cluster

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/testutil"
)

// TestSessionMoveOwnMessagesFarBehind: QoS 1 messages published on n2
// just before its session moves there from n1, while n2's reading of the
// stream is 8,192 records of other nodes behind them (twice the bound of
// the build that read one record per request), still reach the session:
// the claim reads that far past its routing position for them. Both
// nodes' readings are held back, so the distance is counted, not timed.
func TestSessionMoveOwnMessagesFarBehind(t *testing.T) {
	t.Parallel()
	const behind = 2 * 4096
	nodes := startCluster(t, 3, slowClaims)
	sub, _ := dialSession(t, nodes[0].addr, "farmover", client.V5)
	subscribe(t, sub, 1, "far/#")
	pub := dial(t, nodes[1].addr, "farpub", client.V5)
	awaitRoute(t, pub, sub, "far/probe")
	disconnect(t, sub)

	n1, n2 := nodes[0].node, nodes[1].node
	n1.pauseRouting()
	n2.pauseRouting()
	t.Cleanup(n1.resumeRouting)
	t.Cleanup(n2.resumeRouting)
	// Direct gets in batches, as a cluster of this build reads once a
	// replay found them allowed.
	n2.allowDirect()
	testutil.WaitFor(t, "direct gets to be answered", 30*time.Second, func() bool {
		_, err := n2.nc.Request("$JS.API.DIRECT.GET."+streamMsgs, nil, time.Second)
		return err == nil
	})
	writeOthers(t, nodes[2], behind)
	publishQoS1(t, pub, "far/x", 0, 3)
	read := n2.Status().ReplayRecords
	moved, present := dialSession(t, nodes[1].addr, "farmover", client.V5)
	if !present {
		t.Fatal("Session Present 0")
	}
	if got := n2.Status().ReplayRecords - read; got <= behind {
		t.Errorf("the claim read %d records; want more than the %d between its position and its own", got, behind)
	}
	n1.resumeRouting()
	n2.resumeRouting()
	receiveAtLeastOnce(t, moved, 0, 3)
}

// writeOthers writes count batch records of one message each to
// moat_msgs through tn, as a node that is none of the test's would, on
// topics of other/#.
func writeOthers(t *testing.T, tn *testNode, count int) {
	t.Helper()
	js, err := jetstream.New(tn.node.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range count {
		m := batchRecord(replayOrigin, []*fwdMsg{fwdOf(t, uint64(i+1), "other/"+strconv.Itoa(i), "p", "pub")})
		if _, err := js.PublishMsgAsync(m); err != nil {
			t.Fatal(err)
		}
		if (i+1)%1024 == 0 || i == count-1 {
			// A window of outstanding writes, below the client's limit.
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				t.Fatal("records not acknowledged within 60 s")
			}
		}
	}
}

// TestAdoptionOwnMessagesDuringImport: QoS 1 messages published on the
// node adopting a session of a dead node, after it read the stream for
// the session and before it imported it (its own reading of the stream
// held back, so that the import's last reading does not find them
// either), reach the session: the adoption holds back and delivers the
// node's own messages since it began, as a claim does.
func TestAdoptionOwnMessagesDuringImport(t *testing.T) {
	t.Parallel()
	clk := newTestClock()
	nodes, _, _ := startOwn(t, 3, func(i int, nd *Node) {
		// Only n2 adopts.
		nd.cfg.AdoptAfter = -1
		if i == 1 {
			clk.set(nd)
			nd.cfg.AdoptAfter = time.Minute
		}
	})
	sub, _ := dialSession(t, nodes[2].addr, "adoptown", client.V5)
	subscribe(t, sub, 1, "ado/#")
	pub := dial(t, nodes[1].addr, "adoptpub", client.V5)
	awaitRoute(t, pub, sub, "ado/probe")
	disconnect(t, sub)

	n2 := nodes[1].node
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	published := make(chan error, 1)
	var once sync.Once
	hook := func(id string) {
		if id != "adoptown" {
			return
		}
		once.Do(func() {
			n2.pauseRouting()
			var err error
			for i := range 3 {
				if err = pub.Publish(ctx, &client.Message{Topic: "ado/x", QoS: 1, Payload: []byte(strconv.Itoa(i))}); err != nil {
					break
				}
			}
			published <- err
		})
	}
	n2.sess.afterReplayRead.Store(&hook)
	t.Cleanup(n2.resumeRouting)

	crashNode(t, nodes[2])
	testutil.WaitFor(t, "the session adopted by n2", 60*time.Second, func() bool {
		sinceHeard(clk, "n3", 2*time.Minute, nodes[1])
		n2.adoptDue()
		return n2.Status().SessionsAdopted == 1
	})
	select {
	case err := <-published:
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("the adoption did not read a replay")
	}
	n2.resumeRouting()
	c, present := dialSession(t, nodes[1].addr, "adoptown", client.V5)
	if !present {
		t.Fatal("Session Present 0 for an adopted session")
	}
	receiveAtLeastOnce(t, c, 0, 3)
}

// TestOwnWait: a claim waits for its node's commits and the stream's
// length as long as its client still waits for CONNACK less a second,
// never less than requestAttempt (an old home that took long, an
// adoption) nor more than ownWaitMax (a long connect timeout).
func TestOwnWait(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		left  time.Duration
		known bool
		want  time.Duration
	}{
		{0, false, requestAttempt},
		{10 * time.Second, true, 9 * time.Second}, // the default connect timeout, an old home answering at once
		{8 * time.Second, true, 7 * time.Second},
		{5 * time.Second, true, requestAttempt}, // an old home that took half of it
		{-time.Second, true, requestAttempt},    // past the deadline
		{3 * time.Minute, true, ownWaitMax},
	} {
		if got := ownWait(tc.left, tc.known); got != tc.want {
			t.Errorf("ownWait(%v, %v) = %v, want %v", tc.left, tc.known, got, tc.want)
		}
	}
}
