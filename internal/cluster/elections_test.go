package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// TestElectionWatchEndsAttempts: an election of a stream ends the
// attempts under way of requests to it, not those to another stream nor
// those already done, and not the next ones.
func TestElectionWatchEndsAttempts(t *testing.T) {
	t.Parallel()
	var w electionWatch
	ctx := context.Background()
	a, doneA := w.attempt(ctx, streamSessions, time.Minute)
	defer doneA()
	b, doneB := w.attempt(ctx, streamMsgs, time.Minute)
	defer doneB()
	c, doneC := w.attempt(ctx, streamSessions, time.Minute)
	doneC() // over before the election
	if c.Err() == nil {
		t.Fatal("a finished attempt's context is not released")
	}
	w.elected(streamSessions)
	if a.Err() == nil {
		t.Fatal("the election did not end the attempt under way")
	}
	if b.Err() != nil {
		t.Fatal("another stream's election ended an attempt")
	}
	if got := w.endedAttempts(); got != 1 {
		t.Fatalf("%d attempts ended, want 1", got)
	}
	d, doneD := w.attempt(ctx, streamSessions, time.Minute)
	defer doneD()
	if d.Err() != nil {
		t.Fatal("an attempt after the election was ended by it")
	}
}

// TestElectionAdvisoryEndsAttempts: the advisory of a leader election of
// moat_sessions, as JetStream publishes it, ends a node's attempts under
// way of requests to that stream (a claim's reading of a session record
// that went to a leader as it died is made again at once).
func TestElectionAdvisoryEndsAttempts(t *testing.T) {
	nodes := commonCluster(t)
	n := nodes[0].node
	ctx, done := n.elections.attempt(context.Background(), streamSessions, time.Minute)
	defer done()
	// Another node's connection publishes it as the server would (a
	// node's own does not echo); the stream's publishers then send what
	// they wait for again, in order.
	if err := nodes[1].node.nc.Publish("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED."+streamSessions, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the attempt to end", 10*time.Second, func() bool { return ctx.Err() != nil })
}
