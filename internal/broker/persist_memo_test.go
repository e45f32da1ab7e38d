package broker

import (
	"context"
	"testing"

	"github.com/moatmq/moat/internal/packet"
)

// TestRecoveredPublisherMemo: a retained message recovered from the store
// is replayed through an Authorizer that keeps a memo per client (as the
// access policy of moat serve does) with check_retain_source on: its
// publisher, rebuilt from the store without a connection, has an identity
// for the memo (it crashed the subscriber's connection when it had none).
func TestRecoveredPublisherMemo(t *testing.T) {
	model := newModel()
	srv1, addr := testServer(t, Config{Persistence: model, Authorizer: AllowAll, CheckRetainSource: true})
	p := dialRaw(t, addr, packet.V5)
	p.connect(v5connect("writer"))
	publishAcked(t, p, 1, &packet.Publish{Topic: "r/w", Retain: true, Payload: []byte("w")})
	closeAndWait(t, p, &packet.Disconnect{})
	if err := srv1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	memo := AuthorizerFunc(func(req *AuthzRequest) Decision {
		req.Client.Memo(func(c *Client) any { return c.ClientID })
		return Decision{Allow: true}
	})
	_, addr = testServer(t, Config{Persistence: model, Authorizer: memo, CheckRetainSource: true})
	s := dialRaw(t, addr, packet.V5)
	s.connect(v5connect("reader"))
	subscribe(t, s, 1, packet.Subscription{Filter: "r/#", QoS: 1})
	if m := recvPublish(t, s); m.Topic != "r/w" || !m.Retain {
		t.Fatalf("got %+v", m)
	}
}
