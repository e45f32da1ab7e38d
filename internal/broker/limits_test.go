package broker

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// TestSecurityRetainedFlood: one client publishes retained messages of
// 64 KiB on ever new topics, QoS 1, hoping the broker keeps them all (a
// review measured 400 × 1 MB kept after the client left). The broker must
// refuse them past the per-identity limits (PUBACK 0x97 for v5), keep
// its store within the overall limits, log and count every refusal, and
// still let other identities, replacements and clearing through.
func TestSecurityRetainedFlood(t *testing.T) {
	s, addr := testServer(t, Config{
		MaxRetained:                 6,
		MaxRetainedBytes:            1 << 20,
		MaxRetainedPerIdentity:      4,
		MaxRetainedBytesPerIdentity: 200 << 10,
		AllowAnonymous:              true,
		// Usernames are verified: quotas belong to verified identities
		// (anonymous clients are charged by source address).
		Authenticator: AuthenticatorFunc(func(_ context.Context, req *ConnectRequest) AuthResult {
			if req.Connect.Username != "" {
				return AuthResult{Allow: true, Username: req.Connect.Username}
			}
			return AuthResult{NoOpinion: true}
		}),
	})
	payload := bytes.Repeat([]byte{'x'}, 64<<10)
	cp := v5connect("flooder")
	cp.Username, cp.UsernameFlag = "mallory", true
	c := dialRaw(t, addr, packet.V5)
	if ack := c.connect(cp); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %v", ack.ReasonCode)
	}
	var stored, refused int
	for i := range 50 {
		ack := publishAcked(t, c, uint16(i+1), &packet.Publish{Topic: fmt.Sprintf("flood/%d", i), Payload: payload, Retain: true})
		switch ack.ReasonCode {
		case packet.Success, packet.NoMatchingSubscribers:
			stored++
		case packet.QuotaExceeded:
			refused++
		default:
			t.Fatalf("PUBACK %v", ack.ReasonCode)
		}
	}
	// 3 × (64 KiB + overhead) fit in 200 KiB.
	if stored != 3 || refused != 47 {
		t.Fatalf("stored %d, refused %d; want 3 and 47", stored, refused)
	}
	st := s.Stats()
	if st.Retained != 3 || st.RetainedRefused != 47 || st.RetainedBytes > 200<<10 {
		t.Fatalf("store holds %d messages, %d bytes, %d refused", st.Retained, st.RetainedBytes, st.RetainedRefused)
	}

	// A refused v5 QoS 1 publication is not delivered either.
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(v5connect("watcher"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "live/#", QoS: 1, RetainHandling: 2})
	if ack := publishAcked(t, c, 100, &packet.Publish{Topic: "live/a", Payload: payload, Retain: true}); ack.ReasonCode != packet.QuotaExceeded {
		t.Fatalf("PUBACK %v, want quota exceeded", ack.ReasonCode)
	}
	expectNone(t, sub)

	// Replacing one's own retained message is allowed at the limit, and
	// clearing one frees room.
	if ack := publishAcked(t, c, 101, &packet.Publish{Topic: "flood/0", Payload: []byte("small"), Retain: true}); ack.ReasonCode.IsError() {
		t.Fatalf("replacing: PUBACK %v", ack.ReasonCode)
	}
	publishAcked(t, c, 102, &packet.Publish{Topic: "flood/1", Retain: true})
	if ack := publishAcked(t, c, 103, &packet.Publish{Topic: "flood/new", Payload: payload, Retain: true}); ack.ReasonCode.IsError() {
		t.Fatalf("after clearing: PUBACK %v", ack.ReasonCode)
	}

	// Another identity has its own quota, within the overall count.
	other := dialRaw(t, addr, packet.V5)
	op := v5connect("other")
	op.Username, op.UsernameFlag = "other", true
	other.connect(op)
	for i := range 4 {
		ack := publishAcked(t, other, uint16(i+1), &packet.Publish{Topic: fmt.Sprintf("other/%d", i), Payload: []byte("v"), Retain: true})
		want := !ack.ReasonCode.IsError()
		if got := i < 3; got != want { // 3 + 3 = MaxRetained 6
			t.Fatalf("other identity, message %d: PUBACK %v", i, ack.ReasonCode)
		}
	}

	// A v3 client cannot be told: its message is delivered, not retained.
	v3sub := dialRaw(t, addr, packet.V311)
	v3sub.connect(connectV3("v3sub", true))
	subscribe(t, v3sub, 1, packet.Subscription{Filter: "v3/#", QoS: 1})
	v3 := dialRaw(t, addr, packet.V311)
	v3.connect(connectV3("v3pub", true))
	publishAcked(t, v3, 1, &packet.Publish{Topic: "v3/t", Payload: []byte("hello"), Retain: true})
	if p, ok := v3sub.recv().(*packet.Publish); !ok || p.Topic != "v3/t" {
		t.Fatalf("v3 subscriber got %#v", p)
	}
	late := dialRaw(t, addr, packet.V311)
	late.connect(connectV3("late", true))
	subscribe(t, late, 1, packet.Subscription{Filter: "v3/#", QoS: 1})
	expectNone(t, late)
	if st := s.Stats(); st.Retained > 6 || st.RetainedBytes > 1<<20 {
		t.Fatalf("store holds %d messages, %d bytes", st.Retained, st.RetainedBytes)
	}
}

// TestSecurityRetainedWillOverQuota: a client at its retained limit sets
// a retained will and leaves, to get one more message stored. The will is
// delivered but not retained.
func TestSecurityRetainedWillOverQuota(t *testing.T) {
	s, addr := testServer(t, Config{MaxRetainedPerIdentity: 1})
	c := dialRaw(t, addr, packet.V5)
	cp := v5connect("willer")
	cp.Will = &packet.Will{Topic: "w/2", Payload: []byte("gone"), Retain: true}
	c.connect(cp)
	publishAcked(t, c, 1, &packet.Publish{Topic: "w/1", Payload: []byte("one"), Retain: true})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(v5connect("sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "w/2", QoS: 0})
	c.nc.Close()
	if p, ok := sub.recv().(*packet.Publish); !ok || string(p.Payload) != "gone" {
		t.Fatalf("will not delivered: %#v", p)
	}
	if st := s.Stats(); st.Retained != 1 || st.RetainedRefused != 1 {
		t.Fatalf("retained %d, refused %d; want 1 and 1", st.Retained, st.RetainedRefused)
	}
}

// TestSecuritySubscriptionBytes: one client subscribes with 60 KB filters
// and then with thousands of long filters, to make the broker's index
// grow without bound (the review measured 2,000 × 60 KB filters). Filters
// over MaxTopicLength are refused (0x8F), and subscriptions past
// MaxSubscriptionBytes get 0x97; unsubscribing gives the bytes back.
func TestSecuritySubscriptionBytes(t *testing.T) {
	s, addr := testServer(t, Config{MaxSubscriptionBytes: 64 << 10})
	c := dialRaw(t, addr, packet.V5)
	c.connect(v5connect("subber"))

	huge := "a/" + strings.Repeat("x", 60_000)
	if ack := subscribe(t, c, 1, packet.Subscription{Filter: huge}); ack.ReasonCodes[0] != packet.TopicFilterInvalid {
		t.Fatalf("60 KB filter: SUBACK %v, want topic filter invalid", ack.ReasonCodes)
	}
	edge := strings.Repeat("y", DefaultMaxTopicLength)
	if ack := subscribe(t, c, 2, packet.Subscription{Filter: edge}); ack.ReasonCodes[0].IsError() {
		t.Fatalf("filter of MaxTopicLength bytes: SUBACK %v", ack.ReasonCodes)
	}
	unsub(t, c, 3, edge)

	filter := func(i int) string { return fmt.Sprintf("%04d/%s", i, strings.Repeat("f", 995)) } // 1000 bytes
	var granted, quota int
	for i := range 100 {
		ack := subscribe(t, c, uint16(10+i), packet.Subscription{Filter: filter(i)})
		switch ack.ReasonCodes[0] {
		case 0:
			granted++
		case packet.QuotaExceeded:
			quota++
		default:
			t.Fatalf("SUBACK %v", ack.ReasonCodes)
		}
	}
	if granted != 65 || quota != 35 {
		t.Fatalf("granted %d, refused %d; want 65 and 35", granted, quota)
	}
	if st := s.Stats(); st.Subscriptions != 65 || st.SubscriptionsRefused != 35 {
		t.Fatalf("index holds %d subscriptions, %d refused", st.Subscriptions, st.SubscriptionsRefused)
	}
	// Subscribing again to a held filter costs nothing more.
	if ack := subscribe(t, c, 200, packet.Subscription{Filter: filter(0), QoS: 1}); ack.ReasonCodes[0] != 1 {
		t.Fatalf("resubscribe: SUBACK %v", ack.ReasonCodes)
	}
	unsub(t, c, 201, filter(0))
	if ack := subscribe(t, c, 202, packet.Subscription{Filter: filter(99)}); ack.ReasonCodes[0] != 0 {
		t.Fatalf("after unsubscribing: SUBACK %v", ack.ReasonCodes)
	}

	// v3: the failure code; a topic name over the limit ends the
	// connection (DISCONNECT 0x90 for v5).
	v3 := dialRaw(t, addr, packet.V311)
	v3.connect(connectV3("v3", true))
	if ack := subscribe(t, v3, 1, packet.Subscription{Filter: huge}); ack.ReasonCodes[0] != packet.V3SubackFailure {
		t.Fatalf("v3 SUBACK %v", ack.ReasonCodes)
	}
	c.send(&packet.Publish{Topic: huge, Payload: []byte("x")})
	expectDisconnect(t, c, packet.TopicNameInvalid)
}

func unsub(t *testing.T, c *rawClient, pid uint16, filter string) {
	t.Helper()
	c.send(&packet.Unsubscribe{PacketID: pid, Filters: []string{filter}})
	if ack, ok := c.recv().(*packet.Unsuback); !ok || ack.PacketID != pid {
		t.Fatalf("expected UNSUBACK %d, got %#v", pid, ack)
	}
}

// connectHeader is the fixed header of a CONNECT announcing size bytes.
func connectHeader(size int) []byte {
	b := []byte{0x10}
	for {
		d := byte(size % 128)
		size /= 128
		if size > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if size == 0 {
			return b
		}
	}
}

// TestSecurityPreAuthConnectSize: many unauthenticated connections each
// announce a 1 MB CONNECT and send half of it, holding the broker's
// memory for as long as the connect timeout (the review measured 300 of
// them taking 212 MiB). A CONNECT over PreAuthMaxPacketSize is refused
// from its fixed header, before anything is allocated or reserved.
func TestSecurityPreAuthConnectSize(t *testing.T) {
	s, addr := testServer(t, Config{ConnectTimeout: 30 * time.Second})
	const n = 40
	half := make([]byte, 500_000)
	for range n {
		c := dialRaw(t, addr, packet.V5)
		c.write(connectHeader(1_000_000)) // under MaxPacketSize (1 MiB)
		// The broker may close before all of it is written.
		c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.nc.Write(half)
		c.expectClosed(5 * time.Second)
	}
	st := s.Stats()
	if st.PreAuthTooLarge != n || st.ReadBudgetPeak != 0 {
		t.Fatalf("pre-auth refusals %d (want %d), read budget peak %d (want 0)", st.PreAuthTooLarge, n, st.ReadBudgetPeak)
	}
	// Just over the limit is refused; a large but allowed CONNECT passes.
	c := dialRaw(t, addr, packet.V5)
	c.write(connectHeader(DefaultPreAuthMaxPacketSize))
	c.expectClosed(5 * time.Second)
	ok := dialRaw(t, addr, packet.V5)
	cp := v5connect("bigpass")
	cp.Username, cp.UsernameFlag = "u", true
	cp.Password, cp.PasswordFlag = bytes.Repeat([]byte{'p'}, 60_000), true
	if ack := ok.connect(cp); ack.ReasonCode != 0 {
		t.Fatalf("CONNECT of 60 KB: %v", ack.ReasonCode)
	}
	// After CONNECT, the full MaxPacketSize applies.
	publishAcked(t, ok, 1, &packet.Publish{Topic: "t", Payload: make([]byte, 512<<10)})
}

// TestSecurityReadBudget: authenticated clients each announce a 256 KiB
// PUBLISH and send half of it, so that together they would hold far more
// than the broker's read budget. Only as many as fit in the budget get
// their bodies allocated; the others wait without allocating, and proceed
// once room is made. Unauthenticated connections waiting for budget are
// still closed at the connect timeout.
func TestSecurityReadBudget(t *testing.T) {
	const budget = 1 << 20
	s, addr := testServer(t, Config{ReadBudget: budget, ConnectTimeout: time.Second})
	const n = 10
	payload := make([]byte, budget/4-64) // 4 such packets fit

	clients := make([]*rawClient, n)
	rest := make([][]byte, n)
	for i := range clients {
		c := dialRaw(t, addr, packet.V5)
		c.connect(v5connect(fmt.Sprintf("slow-%d", i)))
		b, err := packet.Append(nil, &packet.Publish{Topic: "t", QoS: 1, PacketID: 1, Payload: payload}, packet.V5)
		if err != nil {
			t.Fatal(err)
		}
		c.write(b[:len(b)/2])
		clients[i], rest[i] = c, b[len(b)/2:]
	}
	// 4 × 256 KiB fit; 6 wait.
	testutil.CheckFor(t, 5*time.Second, func() error {
		if st := s.Stats(); st.ReadBudgetInUse < budget-256 || st.ReadBudgetInUse > budget || st.ReadBudgetWaiting != n-4 {
			return fmt.Errorf("budget in use %d, waiting %d", st.ReadBudgetInUse, st.ReadBudgetWaiting)
		}
		return nil
	})

	// Unauthenticated: a 40 KB CONNECT sent in part waits for the spent
	// budget and is closed at the connect timeout, reserving nothing.
	pre := dialRaw(t, addr, packet.V5)
	pre.write(connectHeader(40_000))
	pre.write(make([]byte, 100))
	testutil.CheckFor(t, 5*time.Second, func() error {
		if w := s.Stats().ReadBudgetWaiting; w != n-4+1 {
			return fmt.Errorf("waiting %d", w)
		}
		return nil
	})
	pre.expectClosed(5 * time.Second)

	for i, c := range clients {
		c.write(rest[i])
		if ack, ok := c.recv().(*packet.Puback); !ok || ack.PacketID != 1 {
			t.Fatalf("client %d: expected PUBACK, got %#v", i, ack)
		}
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		st := s.Stats()
		if st.ReadBudgetInUse != 0 || st.ReadBudgetWaiting != 0 {
			return fmt.Errorf("budget in use %d, waiting %d", st.ReadBudgetInUse, st.ReadBudgetWaiting)
		}
		if st.ReadBudgetPeak > budget || st.ReadBudgetWaits < n-4 {
			return fmt.Errorf("peak %d, waits %d", st.ReadBudgetPeak, st.ReadBudgetWaits)
		}
		return nil
	})
}

func TestByteBudgetOrder(t *testing.T) {
	b := &byteBudget{size: 10}
	if n, err := b.acquire(8, time.Time{}, nil, nil); n != 8 || err != nil {
		t.Fatalf("acquire 8: %d %v", n, err)
	}
	bigDone := make(chan int64)
	go func() {
		n, _ := b.acquire(100, time.Time{}, nil, nil) // clamped to the budget
		bigDone <- n
	}()
	testutil.CheckFor(t, 5*time.Second, func() error {
		if b.waiting() != 1 {
			return fmt.Errorf("waiting %d", b.waiting())
		}
		return nil
	})
	// A small request does not overtake the waiting large one.
	stop := make(chan struct{})
	close(stop)
	if _, err := b.acquire(1, time.Time{}, stop, nil); err == nil {
		t.Fatal("small request overtook a waiting one")
	}
	if _, err := b.acquire(1, time.Now().Add(10*time.Millisecond), nil, nil); err == nil {
		t.Fatal("acquire past its deadline succeeded")
	}
	b.release(8)
	if n := <-bigDone; n != 10 {
		t.Fatalf("large request got %d, want the whole budget", n)
	}
	b.release(10)
	if b.inUse.Load() != 0 || b.maxUsed.Load() != 10 {
		t.Fatalf("in use %d, peak %d", b.inUse.Load(), b.maxUsed.Load())
	}
}

func TestDefaultMaxConnections(t *testing.T) {
	if n := DefaultMaxConnections(); n < fdReserve {
		t.Fatalf("DefaultMaxConnections %d", n)
	}
	s, err := New(Config{SysInterval: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.MaxConnections != DefaultMaxConnections() {
		t.Fatalf("MaxConnections %d, want %d", s.cfg.MaxConnections, DefaultMaxConnections())
	}
}
