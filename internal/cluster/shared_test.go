package cluster

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// member is one client of a shared subscription and what it received.
type member struct {
	name string
	c    *client.Client
	got  []string // payloads of the data topic, in arrival order
}

// awaitGroupRoutes publishes probes on topic from pub until every member
// received at least one: NATS on the publishing node knows each member's
// node in the group. Later probes are drained.
func awaitGroupRoutes(t *testing.T, pub *client.Client, topic string, members ...*member) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	seen := make([]bool, len(members))
	for {
		if err := pub.Publish(ctx, &client.Message{Topic: topic, Payload: []byte("probe")}); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(20 * time.Millisecond)
	collect:
		for {
			for i, m := range members {
				select {
				case <-m.c.Messages():
					seen[i] = true
					continue collect
				default:
				}
			}
			select {
			case <-deadline:
				break collect
			case <-ctx.Done():
				t.Fatalf("probes reached members %v only", seen)
			case <-time.After(time.Millisecond):
			}
		}
		all := true
		for _, s := range seen {
			all = all && s
		}
		if all {
			break
		}
	}
	drain(members...)
}

// drain empties the members' message channels for a moment.
func drain(members ...*member) {
	quiet := time.After(300 * time.Millisecond)
	for {
		for _, m := range members {
			select {
			case <-m.c.Messages():
				quiet = time.After(300 * time.Millisecond)
				continue
			default:
			}
		}
		select {
		case <-quiet:
			return
		case <-time.After(time.Millisecond):
		}
	}
}

// collect reads the data topic's messages from the members until n
// arrived in all, then waits a moment for duplicates.
func collect(t *testing.T, n int, dataTopic string, members ...*member) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	total := 0
	extra := time.After(time.Hour)
	for {
		progress := false
		for _, m := range members {
			select {
			case msg := <-m.c.Messages():
				progress = true
				if msg.Topic != dataTopic {
					continue // a late probe
				}
				m.got = append(m.got, string(msg.Payload))
				if total++; total == n {
					extra = time.After(500 * time.Millisecond)
				}
			default:
			}
		}
		if progress {
			continue
		}
		select {
		case <-extra:
			return
		case <-ctx.Done():
			t.Fatalf("received %d of %d messages", total, n)
		case <-time.After(time.Millisecond):
		}
	}
}

// checkOnce fails unless the members together received each of the n
// payloads exactly once.
func checkOnce(t *testing.T, n int, members ...*member) {
	t.Helper()
	seen := map[string]string{}
	for _, m := range members {
		for _, p := range m.got {
			if other, dup := seen[p]; dup {
				t.Fatalf("message %s delivered to %s and %s", p, other, m.name)
			}
			seen[p] = m.name
		}
	}
	if len(seen) != n {
		t.Fatalf("the group received %d distinct messages, want %d", len(seen), n)
	}
	for i := range n {
		if _, ok := seen[strconv.Itoa(i)]; !ok {
			t.Fatalf("message %d not delivered", i)
		}
	}
}

func publishN(t *testing.T, pub *client.Client, topic string, qos byte, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range n {
		if err := pub.Publish(ctx, &client.Message{Topic: topic, QoS: qos, Payload: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSharedAcrossNodes checks a group with members on two nodes: each
// message reaches the group exactly once, and both nodes' members get a
// share, whether the publisher is on a third node or on one of the
// members' nodes (NATS must be able to choose the publishing node too).
func TestSharedAcrossNodes(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	m1 := &member{name: "m1@n1", c: dial(t, nodes[0].addr, "m1", client.V5)}
	m2 := &member{name: "m2@n2", c: dial(t, nodes[1].addr, "m2", client.V311)}
	subscribe(t, m1.c, 1, "$share/workers/jobs/#")
	subscribe(t, m2.c, 1, "$share/workers/jobs/#")
	for _, tc := range []struct {
		name string
		from int
		qos  byte
	}{{"from-third-node", 2, 1}, {"from-a-members-node", 0, 1}, {"qos0", 2, 0}, {"qos2", 1, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			m1.got, m2.got = nil, nil
			pub := dial(t, nodes[tc.from].addr, "pub-"+tc.name, client.V5)
			awaitGroupRoutes(t, pub, "jobs/probe", m1, m2)
			const n = 200
			publishN(t, pub, "jobs/data", tc.qos, n)
			collect(t, n, "jobs/data", m1, m2)
			checkOnce(t, n, m1, m2)
			if len(m1.got) == 0 || len(m2.got) == 0 {
				t.Fatalf("not split across the nodes: n1 got %d, n2 got %d", len(m1.got), len(m2.got))
			}
			t.Logf("n1 got %d, n2 got %d", len(m1.got), len(m2.got))
		})
	}
}

// TestSharedOnOneNode checks a group whose members are all on one node,
// with a plain subscriber of the same filter on another: the publishing
// node forwards each message once, the group receives it once, the plain
// subscriber once.
func TestSharedOnOneNode(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	a := &member{name: "a@n2", c: dial(t, nodes[1].addr, "a", client.V5)}
	b := &member{name: "b@n2", c: dial(t, nodes[1].addr, "b", client.V5)}
	subscribe(t, a.c, 1, "$share/g/tele/+")
	subscribe(t, b.c, 1, "$share/g/tele/+")
	plain := &member{name: "plain@n3", c: dial(t, nodes[2].addr, "plain", client.V5)}
	subscribe(t, plain.c, 1, "tele/+")
	pub := dial(t, nodes[0].addr, "pub", client.V5)
	awaitGroupRoutes(t, pub, "tele/probe", a, b)
	awaitRoute(t, pub, plain.c, "tele/probe")
	drain(a, b, plain)
	before := nodes[0].node.Status()
	const n = 100
	publishN(t, pub, "tele/data", 1, n)
	collect(t, 2*n, "tele/data", a, b, plain)
	checkOnce(t, n, a, b)
	checkOnce(t, n, plain)
	if len(a.got) == 0 || len(b.got) == 0 {
		t.Errorf("the node's members did not take turns: a %d, b %d", len(a.got), len(b.got))
	}
	// QoS 1: one copy for the group on core NATS, one in the durable
	// stream for the plain subscription.
	after := nodes[0].node.Status()
	if d := after.Forwarded - before.Forwarded; d != n {
		t.Errorf("the publishing node forwarded %d messages to the group for %d publications", d, n)
	}
	if d := after.StreamOut - before.StreamOut; d != n {
		t.Errorf("the publishing node put %d messages into the stream for %d publications", d, n)
	}
}

// TestSharedLocalOnly checks a group whose members and publisher are on
// one node of a cluster: the messages go round through NATS and reach the
// group once each.
func TestSharedLocalOnly(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	a := &member{name: "a", c: dial(t, nodes[0].addr, "la", client.V5)}
	b := &member{name: "b", c: dial(t, nodes[0].addr, "lb", client.V5)}
	subscribe(t, a.c, 2, "$share/local/l/#")
	subscribe(t, b.c, 2, "$share/local/l/#")
	pub := dial(t, nodes[0].addr, "lpub", client.V5)
	awaitGroupRoutes(t, pub, "l/probe", a, b)
	const n = 100
	publishN(t, pub, "l/data", 2, n)
	collect(t, n, "l/data", a, b)
	checkOnce(t, n, a, b)
	if st := nodes[0].node.ShareStats(); st.Groups != 1 || st.Received < n {
		t.Errorf("share stats %+v", st)
	}
}

// TestSharedMemberLeaves checks that a node whose last member left stops
// receiving the group's messages: the other node's member gets them all.
func TestSharedMemberLeaves(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	m1 := &member{name: "m1@n1", c: dial(t, nodes[0].addr, "m1", client.V5)}
	m2 := &member{name: "m2@n2", c: dial(t, nodes[1].addr, "m2", client.V5)}
	subscribe(t, m1.c, 1, "$share/w/leave/#")
	subscribe(t, m2.c, 1, "$share/w/leave/#")
	pub := dial(t, nodes[2].addr, "pub", client.V5)
	awaitGroupRoutes(t, pub, "leave/probe", m1, m2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m1.c.Unsubscribe(ctx, "$share/w/leave/#"); err != nil {
		t.Fatal(err)
	}
	// The queue subscription's removal reaches n3 through the routes.
	testutil.WaitFor(t, "n1 out of the group", 30*time.Second, func() bool {
		return nodes[0].node.ShareStats().Groups == 0
	})
	const n = 100
	publishN(t, pub, "leave/data", 1, n)
	collect(t, n, "leave/data", m1, m2)
	checkOnce(t, n, m2)
	if len(m1.got) != 0 {
		t.Fatalf("a client that left the group got %d messages", len(m1.got))
	}
}

func TestSubjectLen(t *testing.T) {
	t.Parallel()
	for _, topic := range []string{"", "a", "a/b", "/", "a//b/", "ünï/cødé", strings.Repeat("x", 1000), "$SYS/x"} {
		if got, want := subjectLen(topic), len(topicSubject(topic)); got != want {
			t.Errorf("subjectLen(%q) = %d, want %d", topic, got, want)
		}
	}
}

func TestQueueName(t *testing.T) {
	t.Parallel()
	a, b := queueName("g", "a/b"), queueName("g/a", "b")
	if a == b {
		t.Fatal("queue names collide across group and filter")
	}
	if a != queueName("g", "a/b") || len(a) != len("moat_")+32 || strings.ContainsAny(a, " .*>") {
		t.Fatalf("queue name %q", a)
	}
}

// rawMember is a member that never acknowledges: a raw MQTT 5 connection
// with Session Expiry 0.
type rawMember struct {
	nc net.Conn
	r  *packet.Reader
}

func dialRawMember(t *testing.T, addr, id, filter string) *rawMember {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	m := &rawMember{nc: nc, r: packet.NewReader(nc, 0)}
	m.r.SetVersion(packet.V5)
	m.send(t, &packet.Connect{ProtocolName: "MQTT", Version: packet.V5, CleanStart: true, ClientID: id})
	if p := m.read(t); p.Type() != packet.CONNACK {
		t.Fatalf("got %v, want CONNACK", p.Type())
	}
	m.send(t, &packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: filter, QoS: 1}}})
	if p := m.read(t); p.Type() != packet.SUBACK {
		t.Fatalf("got %v, want SUBACK", p.Type())
	}
	return m
}

func (m *rawMember) send(t *testing.T, p packet.Packet) {
	t.Helper()
	b, err := packet.Append(nil, p, packet.V5)
	if err == nil {
		_, err = m.nc.Write(b)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func (m *rawMember) read(t *testing.T) packet.Packet {
	t.Helper()
	_ = m.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	p, err := m.r.ReadPacket()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSharedRedistributedAcrossNodes checks MQTT 5.0 §4.8.2 across nodes:
// when a member's session ends with messages it did not acknowledge and
// no other member is on its node, they go to a member on another node.
func TestSharedRedistributedAcrossNodes(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	const filter = "$share/r/redis/#"
	raw := dialRawMember(t, nodes[0].addr, "raw", filter)
	other := &member{name: "m2@n2", c: dial(t, nodes[1].addr, "m2", client.V5)}
	subscribe(t, other.c, 1, filter)
	pub := dial(t, nodes[2].addr, "pub", client.V5)
	// Probes until one reaches the raw member, unacknowledged.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got := make(chan *packet.Publish, 1)
	go func() {
		p, err := raw.r.ReadPacket()
		if err == nil {
			if pp, ok := p.(*packet.Publish); ok {
				got <- pp
			}
		}
		close(got)
	}()
	var held *packet.Publish
	for i := 0; held == nil; i++ {
		if err := pub.Publish(ctx, &client.Message{Topic: "redis/" + strconv.Itoa(i), QoS: 1, Payload: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
		select {
		case held = <-got:
			if held == nil {
				t.Fatal("the raw member's connection failed")
			}
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no message reached the member on n1")
		}
	}
	drain(other)
	raw.nc.Close() // Session Expiry 0: its session ends with the message unacknowledged
	for {
		select {
		case m := <-other.c.Messages():
			if m.Topic == held.Topic && string(m.Payload) == string(held.Payload) {
				if st := nodes[0].node.ShareStats(); st.HandedOn == 0 {
					t.Errorf("n1 handed nothing on: %+v", st)
				}
				return
			}
		case <-ctx.Done():
			t.Fatalf("the unacknowledged %s did not reach the member on n2", held.Topic)
		}
	}
}

// weightOf returns n's queue weight in (group, filter), 0 when it is not
// in the group.
func weightOf(n *Node, group, filter string) int {
	n.share.mu.Lock()
	defer n.share.mu.Unlock()
	if g := n.share.groups[shareKey{group, filter}]; g != nil && g.leaving.IsZero() {
		return g.weight
	}
	return 0
}

// TestShareWeightFollowsMembers checks that a node's weight in a group is
// its number of members that can take messages: a member that goes
// offline (its session kept) counts no more, a node keeps weight 1 while
// it has members at all, and NATS then splits the messages in proportion.
func TestShareWeightFollowsMembers(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	const filter = "$share/wg/wt/#"
	var n1 []*member
	for i := range 3 {
		m := &member{name: fmt.Sprintf("a%d@n1", i), c: dial(t, nodes[0].addr, fmt.Sprintf("a%d", i), client.V5)}
		subscribe(t, m.c, 1, filter)
		n1 = append(n1, m)
	}
	b := &member{name: "b@n2", c: dial(t, nodes[1].addr, "b", client.V5)}
	subscribe(t, b.c, 1, filter)
	testutil.WaitFor(t, "n1's weight 3", 30*time.Second, func() bool { return weightOf(nodes[0].node, "wg", "wt/#") == 3 })
	testutil.WaitFor(t, "n2's weight 1", 30*time.Second, func() bool { return weightOf(nodes[1].node, "wg", "wt/#") == 1 })

	pub := dial(t, nodes[2].addr, "pub", client.V5)
	all := append(slices.Clone(n1), b)
	awaitGroupRoutes(t, pub, "wt/probe", all...)
	const n = 400
	publishN(t, pub, "wt/data", 0, n)
	collect(t, n, "wt/data", all...)
	checkOnce(t, n, all...)
	onN1 := 0
	for _, m := range n1 {
		onN1 += len(m.got)
	}
	// Three quarters expected; NATS chooses at random.
	if onN1 < n/2 || onN1 > n*19/20 {
		t.Errorf("n1 with three members got %d of %d messages, n2 with one got %d", onN1, n, len(b.got))
	}
	t.Logf("n1 (3 members) got %d, n2 (1 member) got %d", onN1, len(b.got))

	// A persistent member going offline no longer counts; the last one
	// leaves weight 1 while sessions remain.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := client.Dial(ctx, client.Config{Servers: []string{"tcp://" + nodes[1].addr}, ClientID: "p", Version: client.V5,
		CleanStart: true, SessionExpiry: 300})
	if err != nil {
		t.Fatal(err)
	}
	subscribe(t, p, 1, filter)
	testutil.WaitFor(t, "n2's weight 2", 30*time.Second, func() bool { return weightOf(nodes[1].node, "wg", "wt/#") == 2 })
	p.Close()
	testutil.WaitFor(t, "n2's weight back to 1", 30*time.Second, func() bool { return weightOf(nodes[1].node, "wg", "wt/#") == 1 })
	b.c.Close()
	testutil.WaitFor(t, "b's session gone", 30*time.Second, func() bool {
		members, _ := nodes[1].srv.SharedMembers("wg", "wt/#")
		return members == 1
	})
	nodes[1].node.weigh(nodes[1].srv)
	if w := weightOf(nodes[1].node, "wg", "wt/#"); w != 1 {
		t.Fatalf("n2 with an offline session in the group has weight %d, want 1", w)
	}
}

// TestSharedQoS1NodeLoss: a group with members on n1 (a persistent
// session) and n2 takes QoS 1 messages published on n3 by four
// publishers; n1 then takes messages without ever committing them (as a
// node that dies between receiving and committing) and dies: its NATS
// server goes away under it. Every message whose publisher got its PUBACK
// reaches the group, from n2's member or from n1's member's session
// resumed on n2; the messages n1 swallowed were sent again.
func TestSharedQoS1NodeLoss(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	const filter = "$share/loss/ld/#"
	m1c, _ := dialSession(t, nodes[0].addr, "lm1", client.V5)
	subscribe(t, m1c, 1, filter)
	m1 := &member{name: "m1@n1", c: m1c}
	m2 := &member{name: "m2@n2", c: dial(t, nodes[1].addr, "lm2", client.V5)}
	subscribe(t, m2.c, 1, filter)
	probe := dial(t, nodes[2].addr, "lprobe", client.V5)
	awaitGroupRoutes(t, probe, "ld/probe", m1, m2)
	testutil.WaitFor(t, "n3 to know the group", 30*time.Second, func() bool {
		return len(nodes[2].node.expectedGroups("ld/x")) == 1
	})

	const pubs, perPub = 4, 150
	var acked sync.Map // payload → true once PUBACKed
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	progress := make([]atomic.Int64, pubs)
	for p := range pubs {
		c := dial(t, nodes[2].addr, fmt.Sprintf("lpub%d", p), client.V5)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perPub {
				payload := fmt.Sprintf("%d-%d", p, i)
				if err := c.Publish(ctx, &client.Message{Topic: fmt.Sprintf("ld/%d", p), QoS: 1, Payload: []byte(payload)}); err != nil {
					t.Logf("publisher %d: %v (not acknowledged, so not owed)", p, err)
					return
				}
				acked.Store(payload, true)
				progress[p].Add(1)
			}
		}()
	}
	t.Cleanup(wg.Wait)
	testutil.WaitFor(t, "load under way", 60*time.Second, func() bool { return progress[0].Load() >= 30 })
	nodes[0].node.share.ack.swallow.Store(true)
	testutil.WaitFor(t, "n1 to swallow messages", 60*time.Second, func() bool {
		return nodes[0].node.share.ack.swallowed.Load() >= 1
	})
	// n1 dies: its NATS server first (its routes close under it), then
	// its broker, which drops what it held in memory.
	nodes[0].node.srv.Shutdown()
	m1c.Close()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	_ = nodes[0].srv.Shutdown(sctx)
	scancel()
	wg.Wait()

	m1b, present := dialSession(t, nodes[1].addr, "lm1", client.V5)
	if !present {
		t.Fatal("n1's member resumed without its session")
	}
	received := map[string]int{}
	deadline := time.After(60 * time.Second)
	missing := func() []string {
		var out []string
		acked.Range(func(k, _ any) bool {
			if received[k.(string)] == 0 {
				out = append(out, k.(string))
			}
			return true
		})
		return out
	}
	old := m1c.Messages() // closed, with what n1 sent before it died
	for len(missing()) > 0 {
		select {
		case m, ok := <-old:
			if !ok {
				old = nil
				continue
			}
			received[string(m.Payload)]++
		case m := <-m1b.Messages():
			received[string(m.Payload)]++
		case m := <-m2.c.Messages():
			received[string(m.Payload)]++
		case <-deadline:
			t.Fatalf("acknowledged messages lost: %v", missing())
		}
	}
	n := 0
	acked.Range(func(_, _ any) bool { n++; return true })
	st := nodes[2].node.ShareStats()
	t.Logf("%d messages acknowledged, all received; n3: %+v; n1 swallowed %d", n, st, nodes[0].node.share.ack.swallowed.Load())
	if st.Retried == 0 {
		t.Error("n3 sent nothing again")
	}
}

// TestSharedSoleMemberMoves: the only member of a group, a persistent
// session, moves from n1 to n2 (its client connects there and takes the
// session over) while QoS 1 messages for the group are published on n3.
// For an instant no node has a member of the group; the messages
// published then wait for the member to join on n2 and are sent to it
// there. Every message whose publisher got its PUBACK reaches the
// member, on its old connection or on its new one.
func TestSharedSoleMemberMoves(t *testing.T) {
	t.Parallel()
	nodes := startCluster(t, 3)
	const filter = "$share/solo/sm/#"
	old, _ := dialSession(t, nodes[0].addr, "smove", client.V5)
	subscribe(t, old, 1, filter)
	probe := dial(t, nodes[2].addr, "smprobe", client.V5)
	awaitGroupRoutes(t, probe, "sm/probe", &member{name: "old", c: old})
	testutil.WaitFor(t, "n3 to know the group", 30*time.Second, func() bool {
		return len(nodes[2].node.expectedGroups("sm/x")) == 1
	})

	const n = 300
	var acked sync.Map
	var progress atomic.Int64
	pub := dial(t, nodes[2].addr, "smpub", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			if err := pub.Publish(ctx, &client.Message{Topic: "sm/x", QoS: 1, Payload: []byte(strconv.Itoa(i))}); err != nil {
				t.Logf("publish %d: %v (not acknowledged, so not owed)", i, err)
				return
			}
			acked.Store(strconv.Itoa(i), true)
			progress.Add(1)
		}
	}()
	t.Cleanup(wg.Wait)
	testutil.WaitFor(t, "load under way", 60*time.Second, func() bool { return progress.Load() >= 50 })
	moved, present := dialSession(t, nodes[1].addr, "smove", client.V5)
	if !present {
		t.Fatal("the member's session was not present on n2")
	}
	wg.Wait()

	received := map[string]int{}
	oldCh := old.Messages()
	missing := func() (out []string) {
		acked.Range(func(k, _ any) bool {
			if received[k.(string)] == 0 {
				out = append(out, k.(string))
			}
			return true
		})
		return out
	}
	deadline := time.After(60 * time.Second)
	for len(missing()) > 0 {
		select {
		case m, ok := <-oldCh:
			if !ok {
				oldCh = nil
				continue
			}
			received[string(m.Payload)]++
		case m := <-moved.Messages():
			received[string(m.Payload)]++
		case <-deadline:
			t.Fatalf("acknowledged messages lost in the move: %v", missing())
		}
	}
	dups := 0
	for _, c := range received {
		dups += max(c-1, 0)
	}
	t.Logf("%d acknowledged, all received (%d again); n3: %+v", progress.Load(), dups, nodes[2].node.ShareStats())
}
