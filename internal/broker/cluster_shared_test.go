package broker

import (
	"testing"

	"github.com/moatmq/moat/internal/packet"
)

// TestSecurityRetainRemoteReplayChecksPublisher replays a retained message another
// node set, with check_retain_source on and an Authorizer that looks at
// the publisher's memo and grants (as moat serve's does): the publisher
// rebuilt from the cluster's record must carry a complete authorization
// state. It used to have none, and the replay panicked, closing every
// connection that subscribed to the topic.
func TestSecurityRetainRemoteReplayChecksPublisher(t *testing.T) {
	az := AuthorizerFunc(func(r *AuthzRequest) Decision {
		memo := r.Client.Memo(func(c *Client) any { return c.Username })
		g := r.Client.Grants()
		return Decision{Allow: memo == "writer" || g.Backend == "" && r.Action != ActionPublish, Reason: "test"}
	})
	srv, addr := testServer(t, Config{CheckRetainSource: true, Authorizer: az})
	msg := NewMessage(&packet.Publish{Topic: "state/line1", Payload: []byte("running"), QoS: 1}, "w1", srv.cfg.Now())
	srv.RetainRemote(msg, &StoredPublisher{ClientID: "w1", Username: "writer"})
	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("reader"))
	subscribe(t, c, 1, packet.Subscription{Filter: "state/#", QoS: 1})
	if p := recvPublish(t, c); p.Topic != "state/line1" || string(p.Payload) != "running" || !p.Retain {
		t.Fatalf("replay: %+v", p)
	}
	if n := srv.stats.panics.Load(); n != 0 {
		t.Fatalf("%d panics", n)
	}
}
