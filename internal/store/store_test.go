package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/moatmq/moat/e2e/keyservice"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func testKEK(t testing.TB, key []byte) keyservice.KEKBackend {
	t.Helper()
	k, err := keyservice.NewLocalKEK(key)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testConfig(t testing.TB) Config {
	return Config{Dir: t.TempDir(), KEK: testKEK(t, testKey)}
}

func mustOpen(t testing.TB, cfg Config) *Store {
	t.Helper()
	s, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func mustCommit(t testing.TB, s *Store, ops ...Op) {
	t.Helper()
	if err := s.Commit(context.Background(), ops...); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func mustClose(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// Distinctive plaintexts: none may appear in the store's files.
const (
	secretClient   = "client-PLAINTEXT-ID-4711"
	secretOwner    = "user:PLAINTEXT-USERNAME-alice"
	secretTopic    = "factory/PLAINTEXT-TOPIC/line-7"
	secretPayload  = "PLAINTEXT-PAYLOAD-temperature=21.5"
	secretRetained = "PLAINTEXT-RETAINED-VALUE"
	secretWill     = "PLAINTEXT-WILL-GOODBYE"
	secretCert     = "PLAINTEXT-CERTIFICATE-CN=device-17"
)

var t0 = time.Unix(1_800_000_000, 0)

// sample returns one record of every kind, linked as the broker would
// link them.
func sample(s *Store) (*Session, *Message, *Delivery, *Retained, *Will) {
	sess := &Session{
		ClientID: secretClient, Owner: secretOwner, OwnerVerified: true, ProtocolVersion: 5,
		ExpiryInterval: time.Hour, ExpiresAt: t0.Add(time.Hour), Created: t0,
		Subscriptions: []Subscription{
			{Filter: secretTopic, QoS: 1, ID: 7},
			{Filter: "$share/g/" + secretTopic, QoS: 2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2},
		},
	}
	msg := &Message{
		ID: s.NextID(), Topic: secretTopic, Payload: []byte(secretPayload), QoS: 2, Retain: true,
		Props: &Properties{HasPayloadFormat: true, PayloadFormat: 1, ContentType: "text/plain",
			ResponseTopic: "reply/x", CorrelationData: []byte{1, 2, 3},
			User: []UserProperty{{"k", "v"}, {"k", "w"}}},
		Expires: t0.Add(time.Minute), From: "publisher-1", Created: t0,
	}
	d := &Delivery{ClientID: secretClient, Seq: s.NextID(), MsgID: msg.ID, QoS: 2, Retain: true,
		SubIDs: []uint32{7, 9}, State: Released, PacketID: 42, Dup: true, ShareGroup: "g", ShareFilter: secretTopic}
	pub := samplePublisher()
	ret := &Retained{Topic: secretTopic + "/status", Payload: []byte(secretRetained), QoS: 1,
		Props: &Properties{ContentType: "a"}, Expires: t0.Add(time.Hour), Owner: secretOwner, Created: t0, Publisher: pub}
	will := &Will{ClientID: secretClient, FireAt: t0.Add(30 * time.Second), Owner: secretOwner,
		Topic: secretTopic + "/will", Payload: []byte(secretWill), QoS: 1, Retain: true, ExpiryInterval: time.Minute,
		Publisher: pub}
	return sess, msg, d, ret, will
}

// samplePublisher is a publisher with every field set.
func samplePublisher() *Publisher {
	return &Publisher{Listener: "tls-8883", Addr: "192.0.2.7", ProtocolVersion: 5, ClientID: secretClient,
		Username: "PLAINTEXT-USERNAME-alice", Groups: []string{"g1", "g2"}, Publish: []string{secretTopic + "/#"},
		Subscribe: []string{"s/#"}, Attributes: map[string]string{"cn": "device-17", "ou": "line-7"},
		AuthBackend: "ldap", AuthExpires: t0.Add(time.Hour), Certs: [][]byte{[]byte(secretCert), []byte("issuer")}}
}

func TestRoundTripEveryRecordType(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	if st := s.Recovered(); len(st.Sessions) != 0 || len(st.Retained) != 0 {
		t.Fatalf("a new store recovered %+v", st)
	}
	sess, msg, d, ret, will := sample(s)
	mustCommit(t, s, PutSession{sess}, PutMessage{msg}, PutDelivery{d},
		PutInbound{secretClient, 5}, PutInbound{secretClient, 3}, PutRetained{ret}, PutWill{will})
	mustClose(t, s)

	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	st := s.Recovered()
	ss := st.Sessions[secretClient]
	if ss == nil {
		t.Fatal("session not recovered")
	}
	if !sameRecord(ss.Session, sess) {
		t.Errorf("session:\n got %+v\nwant %+v", ss.Session, sess)
	}
	if len(ss.Deliveries) != 1 || !sameRecord(ss.Deliveries[0], d) {
		t.Errorf("deliveries: %+v", ss.Deliveries)
	}
	if !reflect.DeepEqual(ss.Inbound, []uint16{3, 5}) {
		t.Errorf("inbound: %v", ss.Inbound)
	}
	if !sameRecord(st.Messages[msg.ID], msg) {
		t.Errorf("message:\n got %+v\nwant %+v", st.Messages[msg.ID], msg)
	}
	if len(st.Retained) != 1 || !sameRecord(st.Retained[0], ret) {
		t.Errorf("retained: %+v", st.Retained)
	}
	if len(st.Wills) != 1 || !sameRecord(st.Wills[0], will) {
		t.Errorf("wills: %+v", st.Wills)
	}
	if s.Recovered() != nil {
		t.Error("Recovered returned the state twice")
	}
	if id := s.NextID(); id <= d.Seq {
		t.Errorf("NextID after reopen = %d, not above the stored %d", id, d.Seq)
	}
}

// sameRecord compares records by their encoding (times compare by
// instant, not by location), retained messages and wills with their
// publishers.
func sameRecord(a, b any) bool {
	pubOf := func(r any) (any, *Publisher) {
		switch v := r.(type) {
		case *Retained:
			c := *v
			c.pubKey, c.Publisher = nil, nil
			return &c, v.Publisher
		case *Will:
			c := *v
			c.pubKey, c.Publisher = nil, nil
			return &c, v.Publisher
		}
		return r, nil
	}
	a, pa := pubOf(a)
	b, pb := pubOf(b)
	if (pa == nil) != (pb == nil) || pa != nil && !reflect.DeepEqual(encodeRecord(pa), encodeRecord(pb)) {
		return false
	}
	return reflect.DeepEqual(encodeRecord(a), encodeRecord(b))
}

// TestMessageStoredOnce: fan-out to several sessions writes the payload
// once, and the message goes with its last delivery.
func TestMessageStoredOnce(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	msg := &Message{ID: s.NextID(), Topic: "t", Payload: []byte("p"), QoS: 1}
	ops := []Op{PutMessage{msg}}
	var ds []*Delivery
	for _, c := range []string{"a", "b", "c"} {
		ops = append(ops, PutSession{&Session{ClientID: c}})
		d := &Delivery{ClientID: c, Seq: s.NextID(), MsgID: msg.ID, QoS: 1}
		ds = append(ds, d)
		ops = append(ops, PutDelivery{d})
	}
	mustCommit(t, s, ops...)
	count := func() int {
		n := 0
		s.syncView(func(tx *bolt.Tx) error { n = tx.Bucket(bktMessage).Stats().KeyN; return nil })
		return n
	}
	if n := count(); n != 1 {
		t.Fatalf("%d message records after fan-out to 3 sessions, want 1", n)
	}
	mustCommit(t, s, DeleteDelivery{"a", ds[0].Seq}, DeleteSession{"b"})
	if n := count(); n != 1 {
		t.Fatalf("message removed while session c still owes it (%d records)", n)
	}
	// A state change rewrites the delivery, not the message.
	ds[2].State, ds[2].PacketID = Sent, 1
	mustCommit(t, s, PutDelivery{ds[2]})
	mustClose(t, s)

	s = mustOpen(t, cfg) // the reference counts are rebuilt at Open
	if st := s.Recovered(); st.Sessions["c"].Deliveries[0].State != Sent {
		t.Fatalf("state change lost: %+v", st.Sessions["c"].Deliveries[0])
	}
	mustCommit(t, s, DeleteDelivery{"c", ds[2].Seq})
	if n := count(); n != 0 {
		t.Fatalf("message kept after its last delivery (%d records)", n)
	}
	// A message committed without deliveries is not kept; a delivery
	// without its message is refused.
	mustCommit(t, s, PutMessage{&Message{ID: s.NextID(), Topic: "t"}})
	if n := count(); n != 0 {
		t.Fatalf("orphan message kept")
	}
	err := s.Commit(context.Background(), PutDelivery{&Delivery{ClientID: "a", Seq: s.NextID(), MsgID: 999999}})
	if !errors.Is(err, ErrUnknownMessage) {
		t.Fatalf("delivery without message: %v, want ErrUnknownMessage", err)
	}
	m := &Message{ID: s.NextID(), Topic: "t"}
	err = s.Commit(context.Background(), PutMessage{m}, PutDelivery{&Delivery{ClientID: "clean-client", Seq: s.NextID(), MsgID: m.ID}})
	if !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("delivery for a session that is not stored: %v, want ErrUnknownSession", err)
	}
	if err := s.Commit(context.Background(), PutInbound{"clean-client", 1}); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("inbound ID for a session that is not stored: %v, want ErrUnknownSession", err)
	}
	mustClose(t, s)
	rep, err := Verify(cfg)
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify: %v %v", err, rep.Problems)
	}
}

func TestDeleteSessionRemovesWhatItHolds(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	sess, msg, d, ret, will := sample(s)
	mustCommit(t, s, PutSession{sess}, PutMessage{msg}, PutDelivery{d}, PutInbound{secretClient, 1}, PutRetained{ret}, PutWill{will})
	mustCommit(t, s, DeleteSession{secretClient})
	mustClose(t, s)
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	st := s.Recovered()
	if len(st.Sessions) != 0 || len(st.Messages) != 0 || len(st.Wills) != 0 || len(st.Retained) != 1 {
		t.Fatalf("after DeleteSession: %d sessions, %d messages, %d wills, %d retained",
			len(st.Sessions), len(st.Messages), len(st.Wills), len(st.Retained))
	}
}

func TestSyncModes(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncBatch, SyncOff} {
		t.Run(mode.String(), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Sync = mode
			s := mustOpen(t, cfg)
			mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("x")}})
			mustClose(t, s)
			s = mustOpen(t, cfg)
			defer mustClose(t, s)
			if st := s.Recovered(); len(st.Retained) != 1 {
				t.Fatal("retained message lost")
			}
		})
	}
	if _, err := ParseSyncMode("sometimes"); err == nil {
		t.Error("ParseSyncMode accepted an unknown mode")
	}
}

func TestKeyFileCreatedOnFirstStart(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, Config{Dir: dir})
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("x")}})
	mustClose(t, s)
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	s = mustOpen(t, Config{Dir: dir})
	mustClose(t, s)
	// A missing key for an existing store is an error, not a new key.
	os.Rename(filepath.Join(dir, KeyFile), filepath.Join(dir, "elsewhere"))
	if _, err := Open(Config{Dir: dir}); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Open without its key file: %v, want ErrNoKey", err)
	}
	if _, err := os.Stat(filepath.Join(dir, KeyFile)); err == nil {
		t.Fatal("a new key file was created for an existing store")
	}
}

func TestPassphrase(t *testing.T) {
	dir := t.TempDir()
	fast := keyservice.Argon2Params{Time: 1, Memory: 1024, Threads: 1}
	s := mustOpen(t, Config{Dir: dir, Passphrase: []byte("correct horse"), Argon2: fast})
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("x")}})
	mustClose(t, s)
	if _, err := Open(Config{Dir: dir, Passphrase: []byte("wrong horse")}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong passphrase: %v, want ErrWrongKey", err)
	}
	if _, err := Open(Config{Dir: dir, KEK: testKEK(t, testKey)}); !errors.Is(err, ErrNoKey) {
		t.Fatalf("KEK for a passphrase store: %v, want ErrNoKey", err)
	}
	s = mustOpen(t, Config{Dir: dir, Passphrase: []byte("correct horse")})
	mustClose(t, s)
}

func TestCommitAfterClose(t *testing.T) {
	s := mustOpen(t, testConfig(t))
	mustClose(t, s)
	if err := s.Commit(context.Background(), DeleteWill{"x"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Commit after Close: %v", err)
	}
	var got error
	s.CommitAsync(func(err error) { got = err }, DeleteWill{"x"})
	if !errors.Is(got, ErrClosed) {
		t.Fatalf("CommitAsync after Close: %v", got)
	}
}

// TestInUse: a second opener (the tools while the broker runs) is told the
// store is in use, instead of waiting or writing beside the broker.
func TestInUse(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	defer mustClose(t, s)
	if _, err := Open(cfg); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open: %v, want ErrInUse", err)
	}
	if _, err := Verify(cfg); !errors.Is(err, ErrInUse) {
		t.Fatalf("Verify of an open store: %v, want ErrInUse", err)
	}
}

// TestInterruptedCreation: a crash after the engine created its file but
// before the store's first transaction leaves a file that opens as a new
// store, not a quarantine.
func TestInterruptedCreation(t *testing.T) {
	cfg := testConfig(t)
	db, err := bolt.Open(filepath.Join(cfg.Dir, DBFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, q, err := OpenOrQuarantine(cfg)
	if err != nil || q != nil {
		t.Fatalf("OpenOrQuarantine: %v %v", q, err)
	}
	mustClose(t, s)
}

// TestSecurityStoreRemoved: the attacker deletes the store file, or puts
// an empty one in its place, so that the broker starts empty and forgets
// queued messages and sessions silently. The counter file outlives it:
// the start is loud (ErrRollback, then quarantine of what is left).
func TestSecurityStoreRemoved(t *testing.T) {
	for _, replace := range []bool{false, true} {
		cfg := populated(t)
		db := filepath.Join(cfg.Dir, DBFile)
		os.Remove(db)
		if replace {
			b, err := bolt.Open(db, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			b.Close()
		}
		wantOpenErr(t, cfg, ErrRollback)
		s, q, err := OpenOrQuarantine(cfg)
		if err != nil || q == nil || !errors.Is(q, ErrRollback) {
			t.Fatalf("OpenOrQuarantine: %v %v", q, err)
		}
		mustClose(t, s)
	}
}

// TestUnreadableIsNotCorrupt: a store the process may not read (wrong
// owner, permissions) is an error for the operator, never quarantined.
func TestUnreadableIsNotCorrupt(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads any file")
	}
	cfg := populated(t)
	os.Chmod(filepath.Join(cfg.Dir, DBFile), 0)
	defer os.Chmod(filepath.Join(cfg.Dir, DBFile), 0o600)
	if _, q, err := OpenOrQuarantine(cfg); err == nil || q != nil || errors.Is(err, ErrCorrupt) {
		t.Fatalf("unreadable store: %v %v", q, err)
	}
}

func TestConfigErrors(t *testing.T) {
	_, err := Open(Config{KEK: testKEK(t, testKey), Passphrase: []byte("x"), Sync: 7, BatchInterval: -1,
		Argon2: keyservice.Argon2Params{Time: 1000, Memory: 1, Threads: 1}})
	for _, want := range []string{"Dir is required", "at most one of", "unknown sync mode", "must not be negative", "Config.Argon2"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open with a bad config: %v; want it to mention %q", err, want)
		}
	}
}
