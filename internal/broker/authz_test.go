package broker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/moatmq/moat/internal/packet"
)

// switchAuthz is a test Authorizer whose refusals can be changed while the
// broker runs: deny[action] lists topic prefixes refused for that action,
// to every client whose ID starts with who (all clients when who is "").
// It counts its calls, to show the per-connection cache at work.
type switchAuthz struct {
	mu    sync.Mutex
	deny  map[Action][]string
	who   string
	calls atomic.Int64
}

func (a *switchAuthz) set(who string, act Action, prefixes ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.deny == nil {
		a.deny = map[Action][]string{}
	}
	a.who = who
	a.deny[act] = prefixes
}

func (a *switchAuthz) Authorize(r *AuthzRequest) Decision {
	a.calls.Add(1)
	a.mu.Lock()
	defer a.mu.Unlock()
	if strings.HasPrefix(r.Client.ClientID, a.who) {
		for _, p := range a.deny[r.Action] {
			if strings.HasPrefix(r.Topic, p) {
				return Decision{Reason: "test policy denies " + p, Rule: "test"}
			}
		}
	}
	return Decision{Allow: true, Rule: "test"}
}

func persistent(id string) *packet.Connect {
	return connectV5(id, false, withExpiry(300))
}

// TestSecurityReevaluateRemovesSubscriptionsAndQueued: a subscriber whose
// right to read a/ is revoked keeps receiving through the subscription it
// made before, and its offline session still holds messages queued under
// the old policy (the attack on brokers that only check at SUBSCRIBE).
// After Reevaluate the subscriptions are gone, the queued message is
// dropped and counted, and the other subscription keeps working.
func TestSecurityReevaluateRemovesSubscriptionsAndQueued(t *testing.T) {
	az := &switchAuthz{}
	srv, addr := testServer(t, Config{Authorizer: az})

	live := dialRaw(t, addr, packet.V5)
	live.connect(persistent("live"))
	subscribe(t, live, 1, packet.Subscription{Filter: "a/#", QoS: 1}, packet.Subscription{Filter: "b/#", QoS: 1})
	off := dialRaw(t, addr, packet.V5)
	off.connect(persistent("off"))
	subscribe(t, off, 1, packet.Subscription{Filter: "a/#", QoS: 1})
	closeAndWait(t, off, &packet.Disconnect{})
	waitOffline(t, srv, "off")

	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))
	publishAcked(t, pub, 1, &packet.Publish{Topic: "a/1", Payload: []byte("x")})
	if p := recvPublish(t, live); p.Topic != "a/1" {
		t.Fatalf("got %s", p.Topic)
	}
	live.send(&packet.Puback{PacketID: 1})

	az.set("", ActionReceive, "a/")
	az.set("", ActionSubscribe, "a/")
	res := srv.Reevaluate(Reevaluation{Reason: "test policy changed"})
	if res.Unsubscribed != 2 || res.Dropped != 1 || res.Disconnected != 0 {
		t.Fatalf("Reevaluate: %+v, want 2 subscriptions removed and 1 message dropped", res)
	}
	if ack := publishAcked(t, pub, 2, &packet.Publish{Topic: "a/2"}); ack.ReasonCode != packet.NoMatchingSubscribers {
		t.Errorf("a/2 still matched a subscription: %v", ack.ReasonCode)
	}
	publishAcked(t, pub, 3, &packet.Publish{Topic: "b/1"})
	if p := recvPublish(t, live); p.Topic != "b/1" {
		t.Fatalf("got %s, want b/1 (a permitted subscription must keep working)", p.Topic)
	}
	off, ack := reconnect(t, addr, packet.V5, persistent("off"))
	if !ack.SessionPresent {
		t.Fatal("session lost")
	}
	expectNone(t, off)
	st := srv.Stats()
	if st.SubscriptionsRevoked != 2 || st.DroppedUnauthorized != 1 {
		t.Errorf("stats: revoked %d dropped %d", st.SubscriptionsRevoked, st.DroppedUnauthorized)
	}
}

// TestSecurityDecisionCacheNoStaleAllow: decisions are cached per
// connection; once the policy changes and Reevaluate runs, a cached allow
// must not let the next publish through.
func TestSecurityDecisionCacheNoStaleAllow(t *testing.T) {
	az := &switchAuthz{}
	srv, addr := testServer(t, Config{Authorizer: az})
	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("cached"))
	for i := range uint16(5) {
		if ack := publishAcked(t, c, i+1, &packet.Publish{Topic: "x/1"}); ack.ReasonCode == packet.NotAuthorized {
			t.Fatal("denied before the change")
		}
	}
	if n := az.calls.Load(); n != 1 {
		t.Errorf("the Authorizer was asked %d times for one topic, want 1 (cached)", n)
	}
	az.set("", ActionPublish, "x/")
	srv.Reevaluate(Reevaluation{Reason: "test policy changed"})
	if ack := publishAcked(t, c, 9, &packet.Publish{Topic: "x/1"}); ack.ReasonCode != packet.NotAuthorized {
		t.Fatalf("stale allow: PUBACK %v, want 0x87", ack.ReasonCode)
	}
}

// TestSecurityReevaluateDisconnect: when a client's authentication no
// longer holds (password removed, ban, token expired), its connection is
// closed at once: an MQTT 5 client is told with DISCONNECT 0x87 and a
// reason, an MQTT 3.1.1 client is closed. Others stay.
func TestSecurityReevaluateDisconnect(t *testing.T) {
	srv, addr := testServer(t, Config{Authorizer: AllowAll})
	v5 := dialRaw(t, addr, packet.V5)
	v5.connect(v5connect("gone-5"))
	v3 := dialRaw(t, addr, packet.V311)
	v3.connect(&packet.Connect{ClientID: "gone-3", CleanStart: true, KeepAlive: 30})
	stay := dialRaw(t, addr, packet.V5)
	stay.connect(v5connect("stay"))
	res := srv.Reevaluate(Reevaluation{
		Match:      func(c *Client) bool { return strings.HasPrefix(c.ClientID, "gone-") },
		Disconnect: true,
		Reason:     "banned by test",
	})
	if res.Disconnected != 2 {
		t.Errorf("disconnected %d, want 2", res.Disconnected)
	}
	if d := expectDisconnect(t, v5, packet.NotAuthorized); d.Properties.ReasonString != "banned by test" {
		t.Errorf("reason %q", d.Properties.ReasonString)
	}
	if d := v3.expectClosed(quiet * 20); d != nil {
		t.Errorf("MQTT 3.1.1 client was sent %+v", d)
	}
	publishAcked(t, stay, 1, &packet.Publish{Topic: "still/here"})
}

// TestSecurityRetainSourceChecked: a publisher that lost its right to
// write r/ must not keep feeding new subscribers through the retained
// message it left behind (check_retain_source). Without the check the
// message is replayed, as in Mosquitto by default.
func TestSecurityRetainSourceChecked(t *testing.T) {
	for _, check := range []bool{true, false} {
		az := &switchAuthz{}
		srv, addr := testServer(t, Config{Authorizer: az, CheckRetainSource: check})
		p := dialRaw(t, addr, packet.V5)
		p.connect(v5connect("writer"))
		publishAcked(t, p, 1, &packet.Publish{Topic: "r/1", Retain: true, Payload: []byte("old")})
		closeAndWait(t, p, &packet.Disconnect{})
		az.set("writer", ActionPublish, "r/")
		srv.Reevaluate(Reevaluation{Reason: "writer lost r/"})
		s := dialRaw(t, addr, packet.V5)
		s.connect(v5connect("reader"))
		subscribe(t, s, 1, packet.Subscription{Filter: "r/#", QoS: 1})
		if check {
			expectNone(t, s)
		} else if m := recvPublish(t, s); m.Topic != "r/1" || !m.Retain {
			t.Errorf("without the check: got %+v", m)
		}
	}
}

// TestSecurityRetainedReplayChecksReader: a subscriber may subscribe to a
// wildcard that is partly readable, but is replayed only the retained
// messages it may read.
func TestSecurityRetainedReplayChecksReader(t *testing.T) {
	az := &switchAuthz{}
	_, addr := testServer(t, Config{Authorizer: az})
	az.set("reader", ActionReceive, "r/secret")
	p := dialRaw(t, addr, packet.V5)
	p.connect(v5connect("writer"))
	publishAcked(t, p, 1, &packet.Publish{Topic: "r/secret", Retain: true, Payload: []byte("s")})
	publishAcked(t, p, 2, &packet.Publish{Topic: "r/open", Retain: true, Payload: []byte("o")})
	s := dialRaw(t, addr, packet.V5)
	s.connect(v5connect("reader"))
	subscribe(t, s, 1, packet.Subscription{Filter: "r/#", QoS: 1})
	if m := recvPublish(t, s); m.Topic != "r/open" {
		t.Fatalf("got %s", m.Topic)
	}
	expectNone(t, s)
}

// TestSecurityQueuedAndInflightCheckedOnReconnect: messages queued or in
// flight for an offline session are checked again when the client comes
// back: a right lost meanwhile (even without Reevaluate, e.g. a decision
// that depends on the new connection) keeps them from being sent.
func TestSecurityQueuedAndInflightCheckedOnReconnect(t *testing.T) {
	az := &switchAuthz{}
	srv, addr := testServer(t, Config{Authorizer: az, MaxInflight: 1})
	s := dialRaw(t, addr, packet.V5)
	s.connect(persistent("away"))
	subscribe(t, s, 1, packet.Subscription{Filter: "q/#", QoS: 1})
	p := dialRaw(t, addr, packet.V5)
	p.connect(v5connect("src"))
	publishAcked(t, p, 1, &packet.Publish{Topic: "q/inflight"})
	if m := recvPublish(t, s); m.Topic != "q/inflight" {
		t.Fatal(m.Topic)
	}
	// Not acknowledged: it stays in flight. The next one is queued
	// behind it (in-flight window of 1).
	publishAcked(t, p, 2, &packet.Publish{Topic: "q/queued"})
	closeAndWait(t, s, &packet.Disconnect{})
	waitOffline(t, srv, "away")
	az.set("away", ActionReceive, "q/")
	s, _ = reconnect(t, addr, packet.V5, persistent("away"))
	expectNone(t, s)
	if st := srv.Stats(); st.DroppedUnauthorized != 2 {
		t.Errorf("DroppedUnauthorized %d, want 2", st.DroppedUnauthorized)
	}
}

// TestSecurityDeniedPublishV3Disconnect: with DisconnectDeniedPublishV3 an
// MQTT 3.1.1 client that publishes where it may not is disconnected
// instead of having its message dropped silently.
func TestSecurityDeniedPublishV3Disconnect(t *testing.T) {
	_, addr := testServer(t, Config{Authorizer: denyAuthorizer{}, DisconnectDeniedPublishV3: true})
	c := dialRaw(t, addr, packet.V311)
	c.connect(&packet.Connect{ClientID: "v3", CleanStart: true, KeepAlive: 30})
	c.send(&packet.Publish{Topic: "deny/x", QoS: 1, PacketID: 1})
	c.expectClosed(quiet * 20)
}

// TestSecurityWillChecked: a will on a topic its client may not publish to
// is discarded when it would be published.
func TestSecurityWillChecked(t *testing.T) {
	_, addr := testServer(t, Config{Authorizer: denyAuthorizer{}})
	s := dialRaw(t, addr, packet.V5)
	s.connect(v5connect("watch"))
	subscribe(t, s, 1, packet.Subscription{Filter: "#"})
	w := dialRaw(t, addr, packet.V5)
	cp := v5connect("dies")
	cp.Will = &packet.Will{Topic: "deny/will", Payload: []byte("x")}
	w.connect(cp)
	w.nc.Close()
	expectNone(t, s)
}

// BenchmarkAuthorizeCached is the per-message cost of a decision on the
// publish path once the connection's cache holds it (every message after
// the first on a topic).
func BenchmarkAuthorizeCached(b *testing.B) {
	s, err := New(Config{Authorizer: AllowAll, SysInterval: -1, Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	c := &Client{ClientID: "bench", az: newAuthzState()}
	b.ReportAllocs()
	for b.Loop() {
		if !s.authorize(c, ActionPublish, "devices/dev1/data", 1, false, "").Allow {
			b.Fatal("denied")
		}
	}
}

// BenchmarkAuthorizeCachedParallel is the same with every CPU deciding
// for one connection, as the publishers of a fan-in do for its collector:
// the cache takes no lock, so they do not queue behind each other.
func BenchmarkAuthorizeCachedParallel(b *testing.B) {
	s, err := New(Config{Authorizer: AllowAll, SysInterval: -1, Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	c := &Client{ClientID: "bench", az: newAuthzState()}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !s.authorize(c, ActionReceive, "devices/dev1/data", 1, false, "").Allow {
				b.Error("denied")
				return
			}
		}
	})
}

// TestAuthorizeCache: the connection's cache answers repeated questions
// without the Authorizer, grows instead of forgetting when topics
// collide, keeps at most authzCacheSize slots, and serves nothing taken
// under an older generation or an older identity.
func TestAuthorizeCache(t *testing.T) {
	az := &switchAuthz{}
	s, err := New(Config{Authorizer: az, SysInterval: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{ClientID: "c", az: newAuthzState()}
	ask := func(topic string) bool { return s.authorize(c, ActionPublish, topic, 1, false, "").Allow }
	topics := make([]string, 64)
	for i := range topics {
		topics[i] = fmt.Sprintf("t/%d", i)
		ask(topics[i])
	}
	before := az.calls.Load()
	for _, tp := range topics {
		ask(tp)
	}
	// 64 topics in a table that grows to 256 slots: a few may still
	// share a slot, most must be answered from the cache.
	if n := az.calls.Load() - before; n > 8 {
		t.Errorf("%d of 64 repeated decisions asked the Authorizer again", n)
	}
	for i := range 10 * authzCacheSize {
		ask(fmt.Sprintf("u/%d", i))
	}
	if n := len(c.az.tab.Load().slots); n != authzCacheSize {
		t.Errorf("table has %d slots, want %d", n, authzCacheSize)
	}
	// A new generation: nothing cached may answer.
	ask("x/1")
	az.set("", ActionPublish, "x/")
	s.authzGen.Add(1)
	if ask("x/1") {
		t.Fatal("stale allow after a generation change")
	}
	// A new identity (re-authentication with new grants): the same.
	az.set("", ActionPublish)
	c.az.id.Store(&authzIdentity{grants: &Grants{Groups: []string{"g"}}})
	if !ask("x/1") {
		t.Fatal("the denial was cached across a new identity")
	}
	az.set("", ActionPublish, "x/")
	c.az.id.Store(&authzIdentity{grants: &Grants{Groups: []string{"h"}}})
	if ask("x/1") {
		t.Fatal("stale allow after an identity change")
	}
	if g := c.Grants(); len(g.Groups) != 1 || g.Groups[0] != "h" {
		t.Errorf("Grants = %+v", g)
	}
}

// TestSecuritySharedMemberRefused: a shared subscription is judged on its
// filter, and each message on the member that would get it. A member the
// policy refuses for a topic is passed over: the group's other member gets
// every message instead of half of them being dropped.
func TestSecuritySharedMemberRefused(t *testing.T) {
	az := &switchAuthz{}
	_, addr := testServer(t, Config{Authorizer: az})
	az.set("m-no", ActionReceive, "s/secret")
	no := dialRaw(t, addr, packet.V5)
	no.connect(v5connect("m-no"))
	subscribe(t, no, 1, packet.Subscription{Filter: "$share/g/s/#", QoS: 1})
	yes := dialRaw(t, addr, packet.V5)
	yes.connect(v5connect("m-yes"))
	subscribe(t, yes, 1, packet.Subscription{Filter: "$share/g/s/#", QoS: 1})
	p := dialRaw(t, addr, packet.V5)
	p.connect(v5connect("p"))
	for i := range uint16(4) {
		publishAcked(t, p, i+1, &packet.Publish{Topic: "s/secret"})
	}
	for range 4 {
		m := recvPublish(t, yes)
		yes.send(&packet.Puback{PacketID: m.PacketID})
	}
	expectNone(t, no)
}

// TestSecurityReevaluateRegrant: a directory re-check finds that a
// connected client left the group "ops" (the attack: keep reading through
// the subscription made while a member). Reevaluate with Regrant gives the
// session its new groups: the subscription is removed, an ops/ message is
// no longer delivered, the decision cached for the old groups is not used,
// and the connection stays.
func TestSecurityReevaluateRegrant(t *testing.T) {
	authn := AuthenticatorFunc(func(_ context.Context, r *ConnectRequest) AuthResult {
		return AuthResult{Allow: true, Username: r.Connect.ClientID, Groups: []string{"ops"}, Backend: "dir"}
	})
	authz := AuthorizerFunc(func(r *AuthzRequest) Decision {
		if r.Client.ClientID == "member" && strings.HasPrefix(r.Topic, "ops/") && !slices.Contains(r.Client.Grants().Groups, "ops") {
			return Decision{Reason: "test: ops only"}
		}
		return Decision{Allow: true}
	})
	srv, addr := testServer(t, Config{Authenticator: authn, Authorizer: authz})
	m := dialRaw(t, addr, packet.V5)
	m.connect(v5connect("member"))
	subscribe(t, m, 1, packet.Subscription{Filter: "ops/#", QoS: 1}, packet.Subscription{Filter: "pub/#", QoS: 1})
	p := dialRaw(t, addr, packet.V5)
	p.connect(v5connect("publisher"))

	res := srv.Reevaluate(Reevaluation{
		Match:   func(c *Client) bool { return c.Grants().Backend == "dir" && c.Username == "member" },
		Regrant: func(g Grants) Grants { g.Groups = nil; return g },
		Reason:  "directory groups changed",
	})
	if res.Unsubscribed != 1 || res.Disconnected != 0 || len(res.Clients) != 1 || res.Clients[0].Client.ClientID != "member" {
		t.Fatalf("Reevaluate: %+v, want one subscription removed from member", res)
	}
	publishAcked(t, p, 1, &packet.Publish{Topic: "ops/secret", QoS: 1})
	publishAcked(t, p, 2, &packet.Publish{Topic: "pub/news", QoS: 1})
	if got := recvPublish(t, m); got.Topic != "pub/news" {
		t.Fatalf("after leaving ops: received %q", got.Topic)
	}
	if ack := subscribe(t, m, 3, packet.Subscription{Filter: "ops/#", QoS: 1}); ack.ReasonCodes[0] != packet.NotAuthorized {
		t.Fatalf("SUBACK %v: a decision cached for the old groups was used", ack.ReasonCodes[0])
	}
	for _, c := range srv.Clients() {
		if c.Client.ClientID == "member" && len(c.Client.Grants().Groups) != 0 {
			t.Errorf("Grants after the change: %+v", c.Client.Grants())
		}
	}
}

// uniformAuthz is a test UniformAuthorizer: while uniform is set, every
// request gets allow (Uniform says so); otherwise it decides per topic
// like switchAuthz.
type uniformAuthz struct {
	switchAuthz
	uniform  atomic.Bool
	uniCalls atomic.Int64
}

func (a *uniformAuthz) Uniform(*Client, Action) (Decision, bool) {
	a.uniCalls.Add(1)
	if a.uniform.Load() {
		return Decision{Allow: true, Rule: "uniform"}, true
	}
	return Decision{}, false
}

// TestSecurityAuthorizeUniform: a client receiving far more topics than
// its decision cache holds asks a UniformAuthorizer once per action, not
// once per topic; and a uniform decision is never used once the policy
// generation or the client's identity changed (a policy that starts
// denying is obeyed at once).
func TestSecurityAuthorizeUniform(t *testing.T) {
	az := &uniformAuthz{}
	az.uniform.Store(true)
	s, err := New(Config{Authorizer: az, SysInterval: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{ClientID: "c", az: newAuthzState()}
	ask := func(a Action, topic string) bool { return s.authorize(c, a, topic, 1, false, "").Allow }
	for i := range 4 * authzCacheSize {
		if !ask(ActionReceive, fmt.Sprintf("in/%d", i)) {
			t.Fatal("denied under a uniform allow")
		}
	}
	ask(ActionPublish, "out/1")
	if n := az.calls.Load(); n != 0 {
		t.Errorf("Authorize asked %d times under a uniform policy", n)
	}
	if n := az.uniCalls.Load(); n != 2 {
		t.Errorf("Uniform asked %d times for two actions, want 2", n)
	}
	if got := s.Stats().AuthzDecisions; len(got) == 0 {
		t.Error("uniform decisions not counted in AuthzDecisions")
	}
	// Every decision so far was uniform: the per-topic table, made on
	// first use, does not exist yet.
	if c.az.tab.Load() != nil {
		t.Error("decision table made although no decision was looked up in it")
	}
	// A new policy that decides per topic and denies in/: a new
	// generation must not be answered by the old uniform decision.
	az.uniform.Store(false)
	az.set("", ActionReceive, "in/")
	s.authzGen.Add(1)
	if ask(ActionReceive, "in/1") {
		t.Fatal("stale uniform allow after a generation change")
	}
	if !ask(ActionReceive, "other/1") {
		t.Fatal("per-topic decision wrong after leaving the uniform policy")
	}
	if c.az.tab.Load() == nil {
		t.Error("per-topic decisions not cached")
	}
	// Uniform again, then a new identity under a per-topic policy.
	az.uniform.Store(true)
	s.authzGen.Add(1)
	if !ask(ActionReceive, "in/1") {
		t.Fatal("uniform allow not used")
	}
	az.uniform.Store(false)
	c.az.id.Store(&authzIdentity{grants: &Grants{Groups: []string{"g"}}})
	if ask(ActionReceive, "in/1") {
		t.Fatal("stale uniform allow after an identity change")
	}
}
