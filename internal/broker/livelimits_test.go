package broker

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
)

// TestSetLimits: limits changed on a running server apply to what comes
// next; invalid limits change nothing.
func TestSetLimits(t *testing.T) {
	s, addr := testServer(t, Config{})
	before := s.Limits()
	if before.MaxInflight != DefaultMaxInflight || before.MaxQueued != DefaultMaxQueued || before.MessageSizeLimit != 0 {
		t.Fatalf("defaults: %+v", before)
	}
	if _, err := s.SetLimits(Limits{MaxInflight: 70000, MaxQueued: -1}); err == nil ||
		!strings.Contains(err.Error(), "MaxInflight") || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("invalid limits: %v; want both problems", err)
	}
	if s.Limits() != before {
		t.Fatalf("invalid limits changed %+v into %+v", before, s.Limits())
	}

	// A subscriber connected before the change.
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(&packet.Connect{ClientID: "sub", CleanStart: true})
	subscribe(t, sub, 1, packet.Subscription{Filter: "a/#"})

	got, err := s.SetLimits(Limits{MessageSizeLimit: 8, MaxSubscriptions: 1, MaxKeepAlive: 30})
	if err != nil {
		t.Fatal(err)
	}
	if got.MaxInflight != DefaultMaxInflight || got.MessageSizeLimit != 8 || s.Limits() != got {
		t.Fatalf("SetLimits returned %+v, Limits %+v", got, s.Limits())
	}

	// The subscription limit applies to the next SUBSCRIBE.
	sub.send(&packet.Subscribe{PacketID: 2, Subscriptions: []packet.Subscription{{Filter: "b/#"}}})
	if ack, ok := sub.recv().(*packet.Suback); !ok || len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] != packet.QuotaExceeded {
		t.Fatalf("SUBACK over the new limit: %+v", ack)
	}

	// The message size limit applies to the next PUBLISH: 3.1.1 drops,
	// 5.0 disconnects with 0x95.
	pub3 := dialRaw(t, addr, packet.V311)
	pub3.connect(&packet.Connect{ClientID: "pub3", CleanStart: true})
	pub3.send(&packet.Publish{Topic: "a/big", QoS: 1, PacketID: 1, Payload: []byte("more than eight")})
	if _, ok := pub3.recv().(*packet.Puback); !ok {
		t.Fatal("expected PUBACK")
	}
	pub3.send(&packet.Publish{Topic: "a/small", QoS: 1, PacketID: 2, Payload: []byte("tiny")})
	if _, ok := pub3.recv().(*packet.Puback); !ok {
		t.Fatal("expected PUBACK")
	}
	if p := recvPublish(t, sub); p.Topic != "a/small" {
		t.Fatalf("delivered %q; the large message should have been dropped", p.Topic)
	}
	pub5 := dialRaw(t, addr, packet.V5)
	pub5.connect(&packet.Connect{ClientID: "pub5", CleanStart: true})
	pub5.send(&packet.Publish{Topic: "a/big", Payload: []byte("more than eight")})
	if d := pub5.expectClosed(5 * time.Second); d == nil || d.ReasonCode != packet.PacketTooLarge {
		t.Fatalf("DISCONNECT %+v; want 0x95", d)
	}

	// The keep-alive bound applies to the next CONNECT (MQTT 5: Server
	// Keep Alive).
	c := dialRaw(t, addr, packet.V5)
	ack := c.connect(&packet.Connect{ClientID: "ka", CleanStart: true, KeepAlive: 600})
	if !ack.Properties.Has(packet.PropServerKeepAlive) || ack.Properties.ServerKeepAlive != 30 {
		t.Fatalf("CONNACK Server Keep Alive %v; want 30", ack.Properties.ServerKeepAlive)
	}
}

// TestSetLimitsQueue: a lower queue limit (in messages, then in bytes)
// refuses the next queued message and keeps those already queued.
func TestSetLimitsQueue(t *testing.T) {
	s, addr := testServer(t, Config{})
	sub := dialRaw(t, addr, packet.V5)
	cp := &packet.Connect{ClientID: "sub"}
	cp.Properties.SetSessionExpiry(3600)
	sub.connect(cp)
	subscribe(t, sub, 1, packet.Subscription{Filter: "q", QoS: 1})
	sub.nc.Close()
	waitOffline(t, s, "sub")
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(&packet.Connect{ClientID: "pub", CleanStart: true})
	send := func(id uint16) {
		pub.send(&packet.Publish{Topic: "q", QoS: 1, PacketID: id, Payload: []byte("m")})
		if _, ok := pub.recv().(*packet.Puback); !ok {
			t.Fatal("expected PUBACK")
		}
	}
	send(1)
	send(2)
	if _, err := s.SetLimits(Limits{MaxQueued: 1}); err != nil {
		t.Fatal(err)
	}
	send(3)
	if st := s.Stats(); st.Queued != 2 || st.DroppedQueueFull != 1 {
		t.Fatalf("queued %d, dropped %d; want 2 kept and 1 dropped", st.Queued, st.DroppedQueueFull)
	}
	// The byte bound applies live too: with room for messages again but
	// the queue's 4 bytes ("q" and "m", twice) at a bound of 4, the next
	// message is dropped; at 6 it is queued.
	if _, err := s.SetLimits(Limits{MaxQueued: 100, MaxQueuedBytes: 4}); err != nil {
		t.Fatal(err)
	}
	send(4)
	if st := s.Stats(); st.Queued != 2 || st.DroppedQueueFull != 2 {
		t.Fatalf("queued %d, dropped %d at MaxQueuedBytes 4; want 2 kept and 2 dropped", st.Queued, st.DroppedQueueFull)
	}
	if _, err := s.SetLimits(Limits{MaxQueued: 100, MaxQueuedBytes: 6}); err != nil {
		t.Fatal(err)
	}
	send(5)
	if st := s.Stats(); st.Queued != 3 || st.DroppedQueueFull != 2 {
		t.Fatalf("queued %d, dropped %d at MaxQueuedBytes 6; want 3 queued", st.Queued, st.DroppedQueueFull)
	}
	if _, err := s.SetLimits(Limits{MaxQueuedBytes: -1}); err == nil {
		t.Fatal("a negative MaxQueuedBytes was accepted")
	}
}

// TestSetLimitsConnectTimeout: a lower connect timeout applies to the
// next connection accepted, which is closed when it sends no CONNECT in
// time; invalid durations change nothing.
func TestSetLimitsConnectTimeout(t *testing.T) {
	s, addr := testServer(t, Config{})
	if got := s.Limits(); got.ConnectTimeout != DefaultConnectTimeout || got.ReauthGrace != DefaultReauthGrace {
		t.Fatalf("defaults: %+v", got)
	}
	before := s.Limits()
	if _, err := s.SetLimits(Limits{ConnectTimeout: -time.Second}); err == nil || !strings.Contains(err.Error(), "ConnectTimeout") {
		t.Fatalf("negative ConnectTimeout: %v", err)
	}
	if s.Limits() != before {
		t.Fatalf("an invalid timeout changed the limits: %+v", s.Limits())
	}
	if _, err := s.SetLimits(Limits{ConnectTimeout: 200 * time.Millisecond, ReauthGrace: time.Second}); err != nil {
		t.Fatal(err)
	}
	if got := s.Limits(); got.ConnectTimeout != 200*time.Millisecond || got.ReauthGrace != time.Second {
		t.Fatalf("limits in force: %+v", got)
	}
	start := time.Now()
	silent := dialRaw(t, addr, packet.V5)
	// The default timeout (10 s) would keep it open past this wait.
	silent.expectClosed(5 * time.Second)
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("closed after %v, before the timeout", d)
	}
}

// TestSetLimitsRetained: lowered retained limits refuse the next retained
// message and keep those stored; raised ones take it again.
func TestSetLimitsRetained(t *testing.T) {
	s, addr := testServer(t, Config{})
	c := dialRaw(t, addr, packet.V5)
	c.connect(&packet.Connect{ClientID: "retainer", CleanStart: true})
	publishAcked(t, c, 1, &packet.Publish{Topic: "r/1", Payload: []byte("one"), Retain: true})
	publishAcked(t, c, 2, &packet.Publish{Topic: "r/2", Payload: []byte("two"), Retain: true})
	if _, err := s.SetLimits(Limits{MaxRetainedPerIdentity: -1}); err == nil || !strings.Contains(err.Error(), "MaxRetained") {
		t.Fatalf("negative MaxRetainedPerIdentity: %v", err)
	}
	if _, err := s.SetLimits(Limits{MaxRetained: 2, SysInterval: -1}); err != nil {
		t.Fatal(err)
	}
	if ack := publishAcked(t, c, 3, &packet.Publish{Topic: "r/3", Payload: []byte("three"), Retain: true}); ack.ReasonCode != packet.QuotaExceeded {
		t.Fatalf("a third retained message under MaxRetained 2: PUBACK %v, want quota exceeded", ack.ReasonCode)
	}
	// Replacing a stored one stays within the limit.
	if ack := publishAcked(t, c, 4, &packet.Publish{Topic: "r/2", Payload: []byte("TWO"), Retain: true}); ack.ReasonCode.IsError() {
		t.Fatalf("replacing r/2: PUBACK %v", ack.ReasonCode)
	}
	if _, err := s.SetLimits(Limits{MaxRetained: 2, MaxRetainedBytesPerIdentity: 10, SysInterval: -1}); err != nil {
		t.Fatal(err)
	}
	if ack := publishAcked(t, c, 5, &packet.Publish{Topic: "r/1", Payload: []byte("x"), Retain: true}); ack.ReasonCode != packet.QuotaExceeded {
		t.Fatalf("replacing r/1 over MaxRetainedBytesPerIdentity: PUBACK %v, want quota exceeded", ack.ReasonCode)
	}
	if st := s.Stats(); st.Retained != 2 || st.RetainedRefused != 2 {
		t.Fatalf("retained %d, refused %d; want 2 kept and 2 refused", st.Retained, st.RetainedRefused)
	}
	if _, err := s.SetLimits(Limits{SysInterval: -1}); err != nil { // $SYS stays off: its topics are retained
		t.Fatal(err)
	}
	publishAcked(t, c, 6, &packet.Publish{Topic: "r/3", Payload: []byte("three"), Retain: true})
	if st := s.Stats(); st.Retained != 3 {
		t.Fatalf("retained %d after the limits were raised, want 3", st.Retained)
	}
}

// TestSetLimitsTopics: lowered topic bounds apply to the next PUBLISH,
// SUBSCRIBE and will; a subscription made before stays.
func TestSetLimitsTopics(t *testing.T) {
	s, addr := testServer(t, Config{})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(&packet.Connect{ClientID: "sub", CleanStart: true})
	subscribe(t, sub, 1, packet.Subscription{Filter: "a/b/c/#"})
	if _, err := s.SetLimits(Limits{MaxTopicLength: -1, SysInterval: -1}); err == nil || !strings.Contains(err.Error(), "MaxTopicLength") {
		t.Fatalf("negative MaxTopicLength: %v", err)
	}
	if _, err := s.SetLimits(Limits{MaxTopicLength: 12, MaxTopicLevels: 3, SysInterval: -1}); err != nil {
		t.Fatal(err)
	}
	sub.send(&packet.Subscribe{PacketID: 2, Subscriptions: []packet.Subscription{{Filter: "x/y/z/w"}, {Filter: "much/too/long"}, {Filter: "ok/#"}}})
	ack, ok := sub.recv().(*packet.Suback)
	if !ok || len(ack.ReasonCodes) != 3 || ack.ReasonCodes[0] != packet.TopicFilterInvalid || ack.ReasonCodes[1] != packet.TopicFilterInvalid || ack.ReasonCodes[2].IsError() {
		t.Fatalf("SUBACK under the new bounds: %+v", ack)
	}
	w := dialRaw(t, addr, packet.V5)
	if ca := w.connect(&packet.Connect{ClientID: "will", CleanStart: true, Will: &packet.Will{Topic: "w/x/y/z", Payload: []byte("bye")}}); ca.ReasonCode != packet.TopicNameInvalid {
		t.Fatalf("CONNACK of a will over the level bound: %v", ca.ReasonCode)
	}
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(&packet.Connect{ClientID: "pub", CleanStart: true})
	publishAcked(t, pub, 1, &packet.Publish{Topic: "a/b/c", QoS: 1, Payload: []byte("fits")})
	if p := recvPublish(t, sub); p.Topic != "a/b/c" {
		t.Fatalf("delivered %q", p.Topic)
	}
	pub.send(&packet.Publish{Topic: "a/b/c/d", Payload: []byte("deep")})
	if d := pub.expectClosed(5 * time.Second); d == nil || d.ReasonCode != packet.TopicNameInvalid {
		t.Fatalf("DISCONNECT after a topic over the level bound: %+v", d)
	}
}

// TestSetLimitsPreAuthAndSys: a lowered pre-authentication packet bound
// refuses the next connection's large CONNECT; $SYS updates start, change
// their period and stop with SysInterval.
func TestSetLimitsPreAuthAndSys(t *testing.T) {
	s, addr := testServer(t, Config{})
	if _, err := s.SetLimits(Limits{PreAuthMaxPacketSize: 32, SysInterval: -1}); err == nil || !strings.Contains(err.Error(), "PreAuthMaxPacketSize") {
		t.Fatalf("PreAuthMaxPacketSize 32: %v", err)
	}
	got, err := s.SetLimits(Limits{PreAuthMaxPacketSize: 128, SysInterval: -1})
	if err != nil || got.PreAuthMaxPacketSize != 128 {
		t.Fatalf("SetLimits: %+v, %v", got, err)
	}
	big := dialRaw(t, addr, packet.V311)
	big.send(&packet.Connect{ClientID: "big", CleanStart: true, UsernameFlag: true, PasswordFlag: true, Username: "u", Password: bytes.Repeat([]byte("p"), 200)})
	if d := big.expectClosed(5 * time.Second); d != nil {
		t.Fatalf("a CONNECT over the lowered bound got %+v; want the connection closed", d)
	}
	if st := s.Stats(); st.PreAuthTooLarge != 1 {
		t.Fatalf("PreAuthTooLarge %d, want 1", st.PreAuthTooLarge)
	}

	sub := dialRaw(t, addr, packet.V311)
	sub.connect(&packet.Connect{ClientID: "sys", CleanStart: true})
	subscribe(t, sub, 1, packet.Subscription{Filter: "$SYS/broker/uptime"})
	if _, err := s.SetLimits(Limits{SysInterval: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for range 3 { // retained, then two updates
		if p := recvPublish(t, sub); p.Topic != "$SYS/broker/uptime" {
			t.Fatalf("delivered %q", p.Topic)
		}
	}
	if _, err := s.SetLimits(Limits{SysInterval: -1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.goroutines.byKind[goSys].Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the $SYS publisher still runs after SysInterval -1")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := s.SetLimits(Limits{SysInterval: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		recvPublish(t, sub)
	}
}
