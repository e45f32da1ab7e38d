package broker

import (
	"context"
	"slices"
	"testing"

	"github.com/moatmq/moat/internal/packet"
)

// TestRetainedPublisherMemo: a retained message whose publisher was
// rebuilt from its stored form (recovered after a restart, or set by
// another node of a cluster) is replayed under check_retain_source to an
// Authorizer that keeps a memo per client, as moat serve's does; the
// rebuilt publisher once lacked the memo's identity and every such replay
// panicked.
func TestRetainedPublisherMemo(t *testing.T) {
	az := AuthorizerFunc(func(req *AuthzRequest) Decision {
		if req.Client.Memo(func(c *Client) any { return "subject of " + c.ClientID }) == nil {
			return Decision{Reason: "no memo"}
		}
		return Decision{Allow: true}
	})
	model := newModel()
	srv1, addr := testServer(t, Config{Persistence: model, Authorizer: az, CheckRetainSource: true})
	p := dialRaw(t, addr, packet.V5)
	p.connect(v5connect("writer"))
	publishAcked(t, p, 1, &packet.Publish{Topic: "r/stored", Retain: true, Payload: []byte("x")})
	closeAndWait(t, p, &packet.Disconnect{})
	if err := srv1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv2, addr := testServer(t, Config{Persistence: model, Authorizer: az, CheckRetainSource: true})
	srv2.RetainRemote(NewMessage(&packet.Publish{Topic: "r/remote", Retain: true, Payload: []byte("y")}, "other", srv2.cfg.Now()),
		&StoredPublisher{ClientID: "other", Username: "u"})
	s := dialRaw(t, addr, packet.V5)
	s.connect(v5connect("reader"))
	subscribe(t, s, 1, packet.Subscription{Filter: "r/#", QoS: 1})
	got := map[string]bool{}
	for range 2 {
		got[recvPublish(t, s).Topic] = true
	}
	if !got["r/stored"] || !got["r/remote"] {
		t.Fatalf("replayed %v", got)
	}
	if n := srv2.Stats().Panics; n != 0 {
		t.Fatalf("%d connection handlers panicked", n)
	}
}

// TestRetainedMessages: the cluster's look at the store lists the retained
// messages a "#" subscription sees, not those under '$', and a cleared
// topic no more.
func TestRetainedMessages(t *testing.T) {
	srv, _ := testServer(t, Config{})
	now := srv.cfg.Now()
	for _, tp := range []string{"a/b", "c", "$SYS/x", "gone"} {
		srv.RetainRemote(NewMessage(&packet.Publish{Topic: tp, Retain: true, Payload: []byte("v")}, "other", now), nil)
	}
	srv.RetainRemote(&Message{Topic: "gone", Retain: true}, nil)
	var got []string
	for _, m := range srv.RetainedMessages() {
		got = append(got, m.Topic)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"a/b", "c"}) {
		t.Fatalf("RetainedMessages listed %v, want [a/b c]", got)
	}
}

// TestRetainedMessage finds one topic's retained message, '$' topics
// included, and nothing for a topic without one or a cleared one.
func TestRetainedMessage(t *testing.T) {
	srv, _ := testServer(t, Config{})
	now := srv.cfg.Now()
	for _, tp := range []string{"a/b", "a/b/c", "$SYS/x", "gone"} {
		srv.RetainRemote(NewMessage(&packet.Publish{Topic: tp, Retain: true, Payload: []byte("v " + tp)}, "other", now), nil)
	}
	srv.RetainRemote(&Message{Topic: "gone", Retain: true}, nil)
	for tp, want := range map[string]string{"a/b": "v a/b", "a/b/c": "v a/b/c", "$SYS/x": "v $SYS/x", "gone": "", "a": "", "a/b/c/d": ""} {
		m := srv.RetainedMessage(tp)
		switch {
		case want == "" && m != nil:
			t.Errorf("RetainedMessage(%q) = %q, want none", tp, m.Payload)
		case want != "" && (m == nil || string(m.Payload) != want):
			t.Errorf("RetainedMessage(%q) = %v, want %q", tp, m, want)
		}
	}
}
