package broker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

// modelPersistence is a Persistence in memory that applies changes the
// way the store does (a session's records go with it, a message with its
// last delivery) and can hold commits back or fail them. It stands in for
// the store in the broker's own tests; internal/store/brokerstore tests
// the real one.
type modelPersistence struct {
	mu       sync.Mutex
	id       uint64
	sessions map[string]*StoredSession
	dlv      map[string]map[uint64]*StoredDelivery
	in       map[string]map[uint16]bool
	msgs     map[uint64]*Message
	retained map[string]RecoveredRetained
	wills    map[string]*StoredWill
	hold     bool           // hold commits back until release
	held     []func()       // held commits, in order
	fail     error          // fail the next commits with this error
	log      [][]ChangeKind // kinds of every commit, in order
}

func newModel() *modelPersistence {
	return &modelPersistence{sessions: map[string]*StoredSession{}, dlv: map[string]map[uint64]*StoredDelivery{},
		in: map[string]map[uint16]bool{}, msgs: map[uint64]*Message{}, retained: map[string]RecoveredRetained{},
		wills: map[string]*StoredWill{}}
}

func (m *modelPersistence) NewID() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.id++
	return m.id
}

func (m *modelPersistence) Persist(changes []Change, done func(error)) {
	m.mu.Lock()
	if m.fail != nil {
		err := m.fail
		m.mu.Unlock()
		done(err)
		return
	}
	var kinds []ChangeKind
	for _, c := range changes {
		kinds = append(kinds, c.Kind)
	}
	m.log = append(m.log, kinds)
	commit := func() {
		m.mu.Lock()
		for _, c := range changes {
			m.apply(c)
		}
		m.mu.Unlock()
		done(nil)
	}
	if m.hold {
		m.held = append(m.held, commit)
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	commit()
}

func (m *modelPersistence) apply(c Change) {
	switch c.Kind {
	case ChangePutSession:
		s := *c.Session
		m.sessions[s.ClientID] = &s
	case ChangeDeleteSession:
		delete(m.sessions, c.ClientID)
		delete(m.dlv, c.ClientID)
		delete(m.in, c.ClientID)
		delete(m.wills, c.ClientID)
	case ChangePutMessage:
		m.msgs[c.MsgID] = c.Message
	case ChangePutDelivery:
		d := *c.Delivery
		if m.sessions[d.ClientID] == nil {
			return
		}
		if m.dlv[d.ClientID] == nil {
			m.dlv[d.ClientID] = map[uint64]*StoredDelivery{}
		}
		m.dlv[d.ClientID][d.Seq] = &d
	case ChangeDeleteDelivery:
		delete(m.dlv[c.ClientID], c.Seq)
	case ChangePutInbound:
		if m.in[c.ClientID] == nil {
			m.in[c.ClientID] = map[uint16]bool{}
		}
		m.in[c.ClientID][c.PacketID] = true
	case ChangeDeleteInbound:
		delete(m.in[c.ClientID], c.PacketID)
	case ChangePutRetained:
		m.retained[c.Message.Topic] = RecoveredRetained{Message: c.Message, Owner: c.Owner, Publisher: c.Publisher}
	case ChangeDeleteRetained:
		delete(m.retained, c.Topic)
	case ChangePutWill:
		w := *c.Will
		m.wills[w.ClientID] = &w
	case ChangeDeleteWill:
		delete(m.wills, c.ClientID)
	}
}

// Recover returns copies of the model's state, as a restarted broker
// would read it.
func (m *modelPersistence) Recover() (*Recovered, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := &Recovered{Messages: map[uint64]*Message{}}
	for id, msg := range m.msgs {
		c := *msg
		r.Messages[id] = &c
	}
	for id, s := range m.sessions {
		c := *s
		rs := RecoveredSession{Session: &c}
		for _, d := range m.dlv[id] {
			dc := *d
			rs.Deliveries = append(rs.Deliveries, &dc)
		}
		slices.SortFunc(rs.Deliveries, func(a, b *StoredDelivery) int { return int(a.Seq) - int(b.Seq) })
		for pid := range m.in[id] {
			rs.Inbound = append(rs.Inbound, pid)
		}
		r.Sessions = append(r.Sessions, rs)
	}
	// The store keeps the publisher apart from the message (Publisher),
	// not the live snapshot.
	for _, rr := range m.retained {
		c := *rr.Message
		c.Publisher = nil
		r.Retained = append(r.Retained, RecoveredRetained{Message: &c, Owner: rr.Owner, Publisher: rr.Publisher})
	}
	for _, w := range m.wills {
		c := *w
		mc := *w.Message
		mc.Publisher = nil
		c.Message = &mc
		r.Wills = append(r.Wills, &c)
	}
	return r, nil
}

func (m *modelPersistence) setHold(h bool) {
	m.mu.Lock()
	m.hold = h
	m.mu.Unlock()
}

// release runs the held commits in order, and those submitted meanwhile
// after them (a done function may let a reader submit the next), as the
// store applies them: in the order of submission.
func (m *modelPersistence) release() {
	m.mu.Lock()
	for len(m.held) > 0 {
		f := m.held[0]
		m.held = m.held[1:]
		m.mu.Unlock()
		f()
		m.mu.Lock()
	}
	m.held, m.hold = nil, false
	m.mu.Unlock()
}

func persistentConnect(id string) *packet.Connect {
	c := &packet.Connect{ClientID: id, CleanStart: false, KeepAlive: 30}
	c.Properties.SetSessionExpiry(300)
	return c
}

// A PUBACK is never sent before the commit of the message and the
// delivery it owes an offline persistent session: with the commit held,
// the publisher gets no PUBACK, while its connection keeps being served
// (PINGRESP); the PUBACK follows the release.
func TestPersistPubackAfterCommit(t *testing.T) {
	model := newModel()
	srv, addr := testServer(t, Config{Persistence: model})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(persistentConnect("durable-sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t/#", QoS: 1})
	sub.nc.Close()
	waitOffline(t, srv, "durable-sub")

	model.setHold(true)
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))
	pub.send(&packet.Publish{Topic: "t/1", QoS: 1, PacketID: 1, Payload: []byte("m1")})
	pub.send(&packet.Publish{Topic: "t/2", QoS: 1, PacketID: 2, Payload: []byte("m2")})
	pub.send(&packet.Pingreq{})
	if p := pub.recv(); p.Type() != packet.PINGRESP {
		t.Fatalf("got %s before the commit was released, want PINGRESP only", p.Type())
	}
	if p, err := pub.recvErr(200 * time.Millisecond); err == nil {
		t.Fatalf("got %s while the commit is held", p.Type())
	}
	model.release()
	for want := uint16(1); want <= 2; want++ {
		ack, ok := pub.recv().(*packet.Puback)
		if !ok || ack.PacketID != want {
			t.Fatalf("want PUBACK %d in order, got %#v", want, ack)
		}
	}
	model.mu.Lock()
	n := len(model.dlv["durable-sub"])
	model.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d deliveries stored, want 2", n)
	}

	// A commit error: no PUBACK with success, the connection is closed.
	model.mu.Lock()
	model.fail = errors.New("disk full")
	model.mu.Unlock()
	pub.send(&packet.Publish{Topic: "t/3", QoS: 1, PacketID: 3, Payload: []byte("m3")})
	if ack, ok := pub.recv().(*packet.Puback); !ok || ack.ReasonCode != packet.UnspecifiedError {
		t.Fatalf("want PUBACK 0x80, got %#v", ack)
	}
	pub.expectClosed(5 * time.Second)
	if n := srv.Stats().PersistFailures; n == 0 {
		t.Fatal("failure not counted")
	}
}

// Clean sessions and QoS 0 never reach the Persistence.
func TestPersistCleanAndQoS0NotStored(t *testing.T) {
	model := newModel()
	_, addr := testServer(t, Config{Persistence: model})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(v5connect("clean-sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t/#", QoS: 1})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))
	pub.send(&packet.Publish{Topic: "t/0", Payload: []byte("q0")})
	pub.send(&packet.Publish{Topic: "t/1", QoS: 1, PacketID: 1, Payload: []byte("q1")})
	pub.recv()
	recvPublish(t, sub)
	recvPublish(t, sub)
	model.mu.Lock()
	defer model.mu.Unlock()
	if len(model.log) != 0 {
		t.Fatalf("commits for clean sessions and QoS 0: %v", model.log)
	}
}

// After a restart on the same Persistence: the session is present, the
// in-flight message is resent with DUP and its packet identifier, the
// queued one follows, the retained message is back, an inbound QoS 2
// identifier still suppresses the duplicate, and a pending will fires at
// its time on the injected clock.
func TestPersistRecovery(t *testing.T) {
	model := newModel()
	clock := newFakeClock()
	srv1, addr := testServer(t, Config{Persistence: model, Clock: clock})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(persistentConnect("sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t/#", QoS: 2})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(persistentConnect("pub"))
	pub.send(&packet.Publish{Topic: "t/1", QoS: 1, PacketID: 1, Payload: []byte("inflight")})
	pub.recv()
	first := recvPublish(t, sub) // not acknowledged
	sub.nc.Close()
	waitOffline(t, srv1, "sub")
	pub.send(&packet.Publish{Topic: "t/2", QoS: 2, PacketID: 2, Payload: []byte("queued"), Retain: true})
	if ack, ok := pub.recv().(*packet.Pubrec); !ok || ack.PacketID != 2 {
		t.Fatalf("want PUBREC 2, got %#v", ack)
	}
	// No PUBREL: the identifier stays in the publisher's session.
	w := dialRaw(t, addr, packet.V5)
	wc := persistentConnect("willer")
	wc.Will = &packet.Will{Topic: "t/will", Payload: []byte("gone"), QoS: 1}
	wc.Will.Properties.SetWillDelay(60)
	w.connect(wc)
	w.nc.Close()
	waitOffline(t, srv1, "willer")
	pub.nc.Close()
	waitOffline(t, srv1, "pub")
	if err := srv1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	srv2, addr2 := testServer(t, Config{Persistence: model, Clock: clock})
	if n := srv2.Stats().Retained; n != 1 {
		t.Fatalf("%d retained messages after restart, want 1", n)
	}
	sub2 := dialRaw(t, addr2, packet.V5)
	if ack := sub2.connect(persistentConnect("sub")); !ack.SessionPresent {
		t.Fatal("session not present after restart")
	}
	re := recvPublish(t, sub2)
	if !re.Dup || re.PacketID != first.PacketID || string(re.Payload) != "inflight" {
		t.Fatalf("resend: %+v", re)
	}
	sub2.send(&packet.Puback{PacketID: re.PacketID})
	q := recvPublish(t, sub2)
	if string(q.Payload) != "queued" || q.QoS != 2 {
		t.Fatalf("queued: %+v", q)
	}
	sub2.send(&packet.Pubrec{PacketID: q.PacketID})
	sub2.recv() // PUBREL
	sub2.send(&packet.Pubcomp{PacketID: q.PacketID})

	pub2 := dialRaw(t, addr2, packet.V5)
	if ack := pub2.connect(persistentConnect("pub")); !ack.SessionPresent {
		t.Fatal("publisher session not present")
	}
	pub2.send(&packet.Publish{Topic: "t/2", QoS: 2, PacketID: 2, Dup: true, Payload: []byte("queued")})
	if ack, ok := pub2.recv().(*packet.Pubrec); !ok || ack.PacketID != 2 {
		t.Fatalf("want PUBREC 2, got %#v", ack)
	}
	pub2.send(&packet.Pubrel{PacketID: 2})
	if ack, ok := pub2.recv().(*packet.Pubcomp); !ok || ack.ReasonCode != packet.Success {
		t.Fatalf("want PUBCOMP, got %#v", ack)
	}

	clock.advance(61 * time.Second)
	p := recvPublish(t, sub2)
	if p.Topic != "t/will" {
		t.Fatalf("got %q, want the will (no duplicate of t/2)", p.Topic)
	}
	model.mu.Lock()
	defer model.mu.Unlock()
	if len(model.wills) != 0 || len(model.in["pub"]) != 0 {
		t.Fatalf("will or inbound identifier left in the store: %v %v", model.wills, model.in)
	}
}

// A session whose expiry passed while the broker was down is removed at
// start.
func TestPersistExpiredAtStart(t *testing.T) {
	model := newModel()
	clock := newFakeClock()
	srv1, addr := testServer(t, Config{Persistence: model, Clock: clock})
	c := dialRaw(t, addr, packet.V5)
	cc := persistentConnect("short")
	cc.Properties.SetSessionExpiry(10)
	c.connect(cc)
	c.nc.Close()
	waitOffline(t, srv1, "short")
	srv1.Shutdown(context.Background())
	clock.advance(11 * time.Second)
	srv2, _ := testServer(t, Config{Persistence: model, Clock: clock})
	if srv2.lookup("short") != nil {
		t.Fatal("expired session restored")
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		model.mu.Lock()
		defer model.mu.Unlock()
		if model.sessions["short"] != nil {
			return errString("expired session still stored")
		}
		return nil
	})
}

// A QoS 2 PUBLISH to an online persistent subscriber waits for the commit
// of its delivery with its packet identifier: were it sent first, a crash
// before the commit would make the publisher resend it and the subscriber
// receive it again under a new identifier. QoS 1 is sent at once (a
// duplicate is allowed).
func TestPersistQoS2SentAfterCommit(t *testing.T) {
	model := newModel()
	_, addr := testServer(t, Config{Persistence: model})
	sub := dialRaw(t, addr, packet.V5)
	sub.connect(persistentConnect("online-sub"))
	subscribe(t, sub, 1, packet.Subscription{Filter: "t/#", QoS: 2})
	pub := dialRaw(t, addr, packet.V5)
	pub.connect(v5connect("pub"))

	model.setHold(true)
	pub.send(&packet.Publish{Topic: "t/1", QoS: 1, PacketID: 1, Payload: []byte("one")})
	if p := recvPublish(t, sub); p.QoS != 1 {
		t.Fatalf("QoS 1 delivery: %+v", p)
	}
	pub.send(&packet.Publish{Topic: "t/2", QoS: 2, PacketID: 2, Payload: []byte("two")})
	if p, err := sub.recvErr(200 * time.Millisecond); err == nil {
		t.Fatalf("QoS 2 PUBLISH %s sent before its commit", p.Type())
	}
	model.release()
	if p := recvPublish(t, sub); p.QoS != 2 || string(p.Payload) != "two" {
		t.Fatalf("QoS 2 delivery: %+v", p)
	}
	for range 2 {
		pub.recv() // PUBACK, PUBREC
	}
}

// CONNACK of a persistent session waits for the commit of its record.
func TestPersistConnackAfterCommit(t *testing.T) {
	model := newModel()
	_, addr := testServer(t, Config{Persistence: model})
	model.setHold(true)
	c := dialRaw(t, addr, packet.V5)
	c.send(&packet.Connect{ProtocolName: "MQTT", Version: packet.V5, ClientID: "held", KeepAlive: 30,
		Properties: persistentConnect("held").Properties})
	if p, err := c.recvErr(200 * time.Millisecond); err == nil {
		t.Fatalf("%s before the session was stored", p.Type())
	}
	model.release()
	if _, ok := c.recv().(*packet.Connack); !ok {
		t.Fatal("want CONNACK after the commit")
	}
}

// listenerPolicy is an Authorizer with a policy per listener, as the
// command line wires them: a listener without a policy allows
// everything. On "test", client IDs starting with "intruder" may not
// publish below alarm/.
func listenerPolicy() Authorizer {
	return AuthorizerFunc(func(r *AuthzRequest) Decision {
		if r.Client.Listener != "test" {
			return Decision{Allow: true, Reason: "no policy for this listener"}
		}
		if r.Action == ActionPublish && strings.HasPrefix(r.Client.ClientID, "intruder") && strings.HasPrefix(r.Topic, "alarm/") {
			return Decision{Reason: "intruders may not raise alarms"}
		}
		return Decision{Allow: true}
	})
}

// TestSecurityRetainSourceAfterRestart: check_retain_source still applies
// to a retained message recovered after a restart, because its publisher
// was stored with it. A writer that lost its right to r/ while the broker
// was down does not feed new subscribers through the message it left; a
// writer that kept it does.
func TestSecurityRetainSourceAfterRestart(t *testing.T) {
	model := newModel()
	srv1, addr := testServer(t, Config{Persistence: model, Authorizer: AllowAll, CheckRetainSource: true})
	for _, w := range []string{"writer", "keeper"} {
		p := dialRaw(t, addr, packet.V5)
		p.connect(v5connect(w))
		publishAcked(t, p, 1, &packet.Publish{Topic: "r/" + w, Retain: true, Payload: []byte(w)})
		closeAndWait(t, p, &packet.Disconnect{})
	}
	if err := srv1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	az := &switchAuthz{}
	az.set("writer", ActionPublish, "r/")
	_, addr = testServer(t, Config{Persistence: model, Authorizer: az, CheckRetainSource: true})
	s := dialRaw(t, addr, packet.V5)
	s.connect(v5connect("reader"))
	subscribe(t, s, 1, packet.Subscription{Filter: "r/#", QoS: 1})
	if m := recvPublish(t, s); m.Topic != "r/keeper" || !m.Retain {
		t.Fatalf("got %+v, want only r/keeper", m)
	}
	expectNone(t, s)
}

// TestSecurityRecoveredWillAuthorizedAsItsClient: a will recovered after
// a restart is authorized as the client that set it, on its listener.
// Were it judged as a bare client ID (no listener), a listener-based
// policy would not apply, and a client denied alarm/ on its listener
// could raise a false alarm by disconnecting before a restart.
func TestSecurityRecoveredWillAuthorizedAsItsClient(t *testing.T) {
	model := newModel()
	clock := newFakeClock()
	cfg := Config{Persistence: model, Clock: clock, Authorizer: listenerPolicy()}
	srv1, addr := testServer(t, cfg)
	for _, id := range []string{"intruder", "sensor"} {
		c := dialRaw(t, addr, packet.V5)
		cc := persistentConnect(id)
		cc.Will = &packet.Will{Topic: "alarm/" + id, Payload: []byte("fire"), QoS: 1}
		cc.Will.Properties.SetWillDelay(30)
		c.connect(cc)
		c.nc.Close()
		waitOffline(t, srv1, id)
	}
	if err := srv1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, addr = testServer(t, cfg)
	s := dialRaw(t, addr, packet.V5)
	s.connect(v5connect("watch"))
	subscribe(t, s, 1, packet.Subscription{Filter: "alarm/#", QoS: 1})
	clock.advance(31 * time.Second)
	if m := recvPublish(t, s); m.Topic != "alarm/sensor" {
		t.Fatalf("got %s, want alarm/sensor only", m.Topic)
	}
	expectNone(t, s)
}

// Records of an earlier version name no publisher: a retained message
// without one is not replayed while check_retain_source is on (it is
// with the check off), and a will without one is not published and is
// removed. Fail closed: their rights cannot be checked.
func TestPersistUnknownPublisherFailsClosed(t *testing.T) {
	for _, check := range []bool{true, false} {
		model := newModel()
		clock := newFakeClock()
		model.retained["old/r"] = RecoveredRetained{Owner: "user:a",
			Message: &Message{Topic: "old/r", Payload: []byte("v"), QoS: 1, Retain: true, Created: clock.Now()}}
		model.sessions["old-willer"] = &StoredSession{ClientID: "old-willer", Expiry: time.Hour, ExpiresAt: clock.Now().Add(time.Hour)}
		model.wills["old-willer"] = &StoredWill{ClientID: "old-willer", FireAt: clock.Now().Add(10 * time.Second), Owner: "user:a",
			Message: &Message{Topic: "old/will", Payload: []byte("w"), QoS: 1, From: "old-willer", Created: clock.Now()}}
		_, addr := testServer(t, Config{Persistence: model, Clock: clock, Authorizer: AllowAll, CheckRetainSource: check})
		s := dialRaw(t, addr, packet.V5)
		s.connect(v5connect("reader"))
		subscribe(t, s, 1, packet.Subscription{Filter: "old/#", QoS: 1})
		if check {
			expectNone(t, s)
		} else if m := recvPublish(t, s); m.Topic != "old/r" {
			t.Fatalf("check off: got %s, want the retained message", m.Topic)
		}
		clock.advance(11 * time.Second)
		expectNone(t, s)
		testutil.CheckFor(t, 5*time.Second, func() error {
			model.mu.Lock()
			defer model.mu.Unlock()
			if len(model.wills) != 0 {
				return errString("will without publisher still stored")
			}
			return nil
		})
	}
}

// A clean shutdown keeps pending wills: one whose delay was running (its
// client gone before the shutdown) and one of a client the shutdown
// disconnected (its delay starts then). After the restart each fires at
// its time on the clock, unless its client came back first; a client
// with a clean session leaves nothing behind.
func TestPersistWillsAcrossShutdown(t *testing.T) {
	model := newModel()
	clock := newFakeClock()
	cfg := Config{Persistence: model, Clock: clock, Authorizer: AllowAll}
	srv1, addr := testServer(t, cfg)
	w := dialRaw(t, addr, packet.V5)
	w.connect(persistentConnect("watch"))
	subscribe(t, w, 1, packet.Subscription{Filter: "status/#", QoS: 1})
	dialWill := func(id string, delay uint32, persistentSession bool) *rawClient {
		c := dialRaw(t, addr, packet.V5)
		cc := v5connect(id)
		if persistentSession {
			cc = persistentConnect(id)
		}
		cc.Will = &packet.Will{Topic: "status/" + id, Payload: []byte("offline"), QoS: 1}
		cc.Will.Properties.SetWillDelay(delay)
		c.connect(cc)
		return c
	}
	gone := dialWill("gone", 60, true)
	gone.nc.Close()
	waitOffline(t, srv1, "gone")
	clock.advance(10 * time.Second) // 50 s left of gone's delay
	dialWill("online", 30, true)
	dialWill("returns", 30, true)
	dialWill("immediate", 0, true)
	dialWill("clean", 0, false)
	if err := srv1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	model.mu.Lock()
	n := len(model.wills)
	model.mu.Unlock()
	if n != 4 {
		t.Fatalf("%d wills stored at shutdown, want 4 (gone, online, returns, immediate)", n)
	}

	clock.advance(5 * time.Second) // the broker is down for 5 s
	_, addr = testServer(t, cfg)
	// The will without delay was published during the recovery, into
	// the watcher's stored session.
	w = dialRaw(t, addr, packet.V5)
	w.connect(persistentConnect("watch"))
	m := recvPublish(t, w)
	if m.Topic != "status/immediate" {
		t.Fatalf("got %s, want the will without delay first", m.Topic)
	}
	w.send(&packet.Puback{PacketID: m.PacketID})
	r := dialRaw(t, addr, packet.V5)
	if ack := r.connect(persistentConnect("returns")); !ack.SessionPresent {
		t.Fatal("session not present")
	}
	clock.advance(24 * time.Second) // 29 s after the shutdown
	expectNone(t, w)
	clock.advance(2 * time.Second)
	if m = recvPublish(t, w); m.Topic != "status/online" {
		t.Fatalf("got %s, want status/online 30 s after the shutdown", m.Topic)
	}
	w.send(&packet.Puback{PacketID: m.PacketID})
	clock.advance(18 * time.Second) // 59 s after gone's disconnection
	expectNone(t, w)
	clock.advance(2 * time.Second)
	if m = recvPublish(t, w); m.Topic != "status/gone" {
		t.Fatalf("got %s, want status/gone", m.Topic)
	}
	w.send(&packet.Puback{PacketID: m.PacketID})
	clock.advance(time.Hour)
	expectNone(t, w) // neither "returns" (its client came back) nor "clean"
}

// Stored retained messages over the retained limits are not loaded at
// start, and stay in the store for a start with higher limits.
func TestPersistRetainedOverLimits(t *testing.T) {
	model := newModel()
	for _, tp := range []string{"r/1", "r/2", "r/3"} {
		model.retained[tp] = RecoveredRetained{Owner: "user:a", Publisher: &StoredPublisher{ClientID: "a"},
			Message: &Message{Topic: tp, Payload: []byte("v"), Retain: true}}
	}
	srv, _ := testServer(t, Config{Persistence: model, MaxRetained: 2})
	if n := srv.Stats().Retained; n != 2 {
		t.Fatalf("%d retained messages loaded, want the limit of 2", n)
	}
	model.mu.Lock()
	n := len(model.retained)
	model.mu.Unlock()
	if n != 3 {
		t.Fatalf("%d retained messages left in the store, want 3", n)
	}
}
