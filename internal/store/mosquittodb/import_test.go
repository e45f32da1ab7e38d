package mosquittodb

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/moatmq/moat/internal/store"
)

var update = flag.Bool("update", false, "regenerate testdata/mosquitto-2.0.db with the installed mosquitto, and the golden file")

const (
	goldenDB   = "testdata/mosquitto-2.0.db"
	goldenJSON = "testdata/mosquitto-2.0.golden.json"
)

// openStore opens a store in a new directory under a random key.
func openStore(t *testing.T) (*store.Store, store.Config) {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	kek, err := keyservice.NewLocalKEK(k)
	if err != nil {
		t.Fatal(err)
	}
	cfg := store.Config{Dir: filepath.Join(t.TempDir(), "store"), KEK: kek}
	s, err := store.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, cfg
}

// importInto converts db into a new store, closes it and returns what a
// fresh Open recovers.
func importInto(t *testing.T, db *DB, now time.Time) (*store.State, *Summary) {
	t.Helper()
	s, cfg := openStore(t)
	ops, sum := Convert(db, ImportOptions{Now: now, NextID: s.NextID})
	if err := s.Commit(context.Background(), ops...); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return s.Recovered(), sum
}

func client(t *testing.T, db *DB, id string) *Client {
	t.Helper()
	for _, c := range db.Clients {
		if c.ID == id {
			return c
		}
	}
	t.Fatalf("client %s not in the file", id)
	return nil
}

// TestImportFromMosquitto runs Debian's mosquitto, fills it (see
// generate), stops it so that it saves its database, and imports the
// file: sessions, subscriptions with their options, queued and in-flight
// messages and retained messages with their properties must all be in the
// store afterwards.
func TestImportFromMosquitto(t *testing.T) {
	b := generate(t)
	now := time.Now()
	db, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if !db.Shutdown {
		t.Error("the file does not say it was written at shutdown")
	}
	if c := client(t, db, "dev-v5"); c.Username != "operator" || c.SessionExpiryInterval != 3600 {
		t.Errorf("dev-v5: %+v", c)
	}
	if c := client(t, db, "dev-v311"); c.Username != "" || c.SessionExpiryInterval != neverExpires {
		t.Errorf("dev-v311: %+v", c)
	}
	st, sum := importInto(t, db, now)
	checkImported(t, st, sum, now)
}

// checkImported checks the store against what generate left in
// mosquitto.
func checkImported(t *testing.T, st *store.State, sum *Summary, now time.Time) {
	t.Helper()
	// The retained $SYS message dev-v311 receives on subscribing is still
	// in flight when it disconnects, unless it was quick: skipped if
	// present.
	if sum.Sessions != 2 || sum.Subscriptions != 4 || sum.Retained != 3 || sum.Messages != 5 ||
		sum.SkippedTotal() != sum.Skipped[skipSys] || sum.Skipped[skipSys] > 1 {
		t.Errorf("summary: %v %v", sum, sum.Skipped)
	}
	v5 := st.Sessions["dev-v5"]
	if v5 == nil {
		t.Fatal("dev-v5 not imported")
	}
	s := v5.Session
	if s.Owner != "user:operator" || !s.OwnerVerified || s.ExpiryInterval != time.Hour || s.ProtocolVersion != 5 ||
		s.ExpiresAt.Before(now.Add(59*time.Minute)) || s.ExpiresAt.After(now.Add(time.Hour+time.Second)) {
		t.Errorf("dev-v5 session: %+v", s)
	}
	wantSubs := []store.Subscription{
		{Filter: "plant/+/temp", QoS: 1, NoLocal: true, RetainAsPublished: true, ID: 7},
		{Filter: "plant/alarm", QoS: 2, ID: 7},
	}
	if !reflect.DeepEqual(s.Subscriptions, wantSubs) {
		t.Errorf("dev-v5 subscriptions: %+v", s.Subscriptions)
	}
	type dl struct {
		topic, payload string
		qos            byte
		state          store.DeliveryState
		pid            uint16
	}
	deliveries := func(ss *store.SessionState) []dl {
		var out []dl
		for _, d := range ss.Deliveries {
			m := st.Messages[d.MsgID]
			out = append(out, dl{m.Topic, string(m.Payload), d.QoS, d.State, d.PacketID})
		}
		return out
	}
	if got, want := deliveries(v5), []dl{
		{"plant/1/temp", "in flight", 1, store.Sent, 1},
		{"plant/2/temp", "21.5", 1, store.Queued, 0},
		{"plant/alarm", "overheat", 1, store.Queued, 0},
	}; !reflect.DeepEqual(got, want) {
		t.Errorf("dev-v5 deliveries:\n got %+v\nwant %+v", got, want)
	}
	for _, d := range v5.Deliveries {
		if !reflect.DeepEqual(d.SubIDs, []uint32{7}) || d.Dup != (d.State == store.Sent) {
			t.Errorf("dev-v5 delivery: %+v", d)
		}
	}
	v311 := st.Sessions["dev-v311"]
	if v311 == nil {
		t.Fatal("dev-v311 not imported")
	}
	if s := v311.Session; s.Owner != "" || s.OwnerVerified || s.ExpiryInterval != store.NeverExpires || s.ProtocolVersion != 4 ||
		!reflect.DeepEqual(s.Subscriptions, []store.Subscription{{Filter: "fleet/#", QoS: 2}, {Filter: "$SYS/broker/uptime", QoS: 2}}) {
		t.Errorf("dev-v311 session: %+v", s)
	}
	// The $SYS message in flight is not carried over.
	if got, want := deliveries(v311), []dl{
		{"fleet/config", "v2", 2, store.Queued, 0},
		{"fleet/truck/7", "queued qos 2", 2, store.Queued, 0},
	}; !reflect.DeepEqual(got, want) {
		t.Errorf("dev-v311 deliveries:\n got %+v\nwant %+v", got, want)
	}

	ret := map[string]*store.Retained{}
	for _, r := range st.Retained {
		ret[r.Topic] = r
	}
	if r := ret["plant/status"]; r == nil || string(r.Payload) != "up" || r.QoS != 0 || r.Props != nil || !r.Expires.IsZero() {
		t.Errorf("plant/status: %+v", r)
	}
	if r := ret["fleet/config"]; r == nil || string(r.Payload) != "v2" || r.QoS != 2 {
		t.Errorf("fleet/config: %+v", r)
	}
	r := ret["plant/1/config"]
	if r == nil {
		t.Fatal("plant/1/config not imported")
	}
	wantProps := &store.Properties{HasPayloadFormat: true, PayloadFormat: 1, ContentType: "application/json",
		ResponseTopic: "plant/1/reply", CorrelationData: []byte("req-42"),
		User: []store.UserProperty{{Key: "site", Value: "north"}, {Key: "site", Value: "south"}}}
	if string(r.Payload) != `{"interval":5}` || r.QoS != 1 || !reflect.DeepEqual(r.Props, wantProps) ||
		r.Expires.Before(now.Add(86400*time.Second-time.Minute)) || r.Expires.After(now.Add(86400*time.Second)) {
		t.Errorf("plant/1/config: %+v %+v", r, r.Props)
	}
}

// TestGolden parses the file Debian's mosquitto 2.0.11 wrote (kept in
// testdata; -update regenerates it) and compares the parse and the import
// with the golden file.
func TestGolden(t *testing.T) {
	if *update {
		if err := os.WriteFile(goldenDB, generate(t), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(goldenDB)
	if err != nil {
		t.Fatal(err)
	}
	db, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	// The import time: when dev-v5 disconnected (its deadline less its
	// interval), so that the messages are as fresh as when the file was
	// written.
	now := time.Unix(client(t, db, "dev-v5").SessionExpiryTime-3600, 0).UTC()
	next := uint64(0)
	ops, sum := Convert(db, ImportOptions{Now: now, NextID: func() uint64 { next++; return next },
		Listeners: map[uint16]string{33315: "tcp-33315"}})
	type opJSON struct {
		Op   string
		Data store.Op
	}
	var conv []opJSON
	for _, op := range ops {
		conv = append(conv, opJSON{strings.TrimPrefix(reflect.TypeOf(op).String(), "store."), op})
	}
	got, err := json.MarshalIndent(struct {
		Parsed  *DB
		Ops     []opJSON
		Summary *Summary
	}{db, conv, sum}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	if *update {
		if err := os.WriteFile(goldenJSON, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(goldenJSON)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("parse of %s differs from %s (run go test -run TestGolden -update after checking why)", goldenDB, goldenJSON)
	}
	st, sum2 := importInto(t, db, now)
	checkImported(t, st, sum2, now)
}

// A retained message keeps its publisher as Mosquitto saved it (client
// ID, username or anonymous, and the listener of the port it came in on)
// when that port's listener is named; otherwise its publisher is unknown
// and counted.
func TestImportRetainedPublisher(t *testing.T) {
	b, err := os.ReadFile(goldenDB)
	if err != nil {
		t.Fatal(err)
	}
	db, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(client(t, db, "dev-v5").SessionExpiryTime-3600, 0).UTC()
	next := uint64(0)
	for _, ln := range []map[uint16]string{nil, {1883: "tcp-1883"}, {33315: "tcp-33315"}} {
		ops, sum := Convert(db, ImportOptions{Now: now, NextID: func() uint64 { next++; return next }, Listeners: ln})
		known := 0
		for _, op := range ops {
			r, ok := op.(store.PutRetained)
			if !ok || r.Retained.Publisher == nil {
				continue
			}
			known++
			if p := r.Retained.Publisher; p.Listener != "tcp-33315" || !strings.HasPrefix(p.ClientID, "auto-") || !p.Anonymous || p.Username != "" {
				t.Errorf("publisher of %s: %+v", r.Retained.Topic, p)
			}
		}
		want := 0
		if ln[33315] != "" {
			want = 3
		}
		if known != want || sum.RetainedUnknownPublisher != 3-want {
			t.Errorf("listeners %v: %d retained messages with a publisher, %d unknown; want %d, %d", ln, known, sum.RetainedUnknownPublisher, want, 3-want)
		}
	}
}

// TestImportSkips covers what is not carried over.
func TestImportSkips(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	expiredMsg := msgBody(5, "old", []byte("x"), 1, 1, nil)
	copy(expiredMsg[8:], []byte{1}) // expiry time 1 (1970)
	b := newFile().cfg(9).
		chunk(chunkMsgStore, msgBody(1, "a/b", []byte("v"), 1, 1, nil)).
		chunk(chunkMsgStore, msgBody(2, "q", []byte("q0"), 0, 0, nil)).
		chunk(chunkMsgStore, expiredMsg).
		chunk(chunkClient, clientBody("keep", "", 0xFFFFFFFF)).
		chunk(chunkClient, clientBody("ends", "", 0)).
		chunk(chunkClient, clientBody("exists", "", 60)).
		chunk(chunkClientMsg, clientMsgBody("keep", 2, 0, 0, byte(StatePublishQoS0), 0, 1, nil)).    // QoS 0
		chunk(chunkClientMsg, clientMsgBody("keep", 1, 4, 2, byte(StateWaitForPubrel), 0, 0, nil)).  // inbound
		chunk(chunkClientMsg, clientMsgBody("keep", 5, 5, 1, byte(StateQueued), 0, 1, nil)).         // expired
		chunk(chunkClientMsg, clientMsgBody("keep", 8, 6, 1, byte(StateQueued), 0, 1, nil)).         // no message
		chunk(chunkClientMsg, clientMsgBody("keep", 1, 7, 2, byte(StateWaitForPubcomp), 0, 1, nil)). // released
		chunk(chunkClientMsg, clientMsgBody("keep", 1, 7, 1, byte(StateWaitForPuback), 0, 1, nil)).  // packet ID 7 again
		chunk(chunkSub, subBody("keep", "x", 0, 0, 0)).
		chunk(chunkSub, subBody("keep", "x", 2, 0, 3)). // the same filter again: replaces
		chunk(chunkClientMsg, clientMsgBody("ghost", 1, 1, 1, byte(StateQueued), 0, 1, nil)).
		chunk(chunkSub, subBody("ghost", "x", 0, 0, 0)).
		chunk(chunkSub, subBody("exists", "x", 0, 0, 0)).
		chunk(chunkRetain, retainBody(1)).
		chunk(chunkRetain, retainBody(5)).
		chunk(chunkRetain, retainBody(7)).b
	db, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	ops, sum := Convert(db, ImportOptions{Now: now, NextID: func() uint64 { return 1 },
		HaveSession: func(id string) bool { return id == "exists" }})
	want := map[string]int{skipQoS0: 1, skipInbound: 1, skipExpired: 2, skipNoMessage: 2, skipNoClient: 2,
		skipSessionEnds: 1, skipSessionExists: 2, skipPacketID: 1}
	if !reflect.DeepEqual(sum.Skipped, want) || sum.Sessions != 1 || sum.Messages != 1 || sum.Retained != 1 {
		t.Fatalf("summary %v: %v", sum, sum.Skipped)
	}
	if len(ops) != 4 { // session, message, delivery, retained
		t.Fatalf("ops: %d", len(ops))
	}
	if subs := ops[0].(store.PutSession).Session.Subscriptions; !reflect.DeepEqual(subs, []store.Subscription{{Filter: "x", QoS: 2, ID: 3}}) {
		t.Fatalf("subscriptions: %+v", subs)
	}
	d := ops[2].(store.PutDelivery).Delivery
	if d.State != store.Released || d.PacketID != 7 || !d.Dup {
		t.Fatalf("released delivery: %+v", d)
	}
	_, sum = Convert(db, ImportOptions{Now: now, NextID: func() uint64 { return 1 },
		HaveRetained: func(topic string) bool { return topic == "a/b" }})
	if sum.Skipped[skipRetainedExists] != 1 || sum.Retained != 0 {
		t.Fatalf("existing retained topic: %v", sum.Skipped)
	}
	if !errors.Is(&FormatError{}, ErrFormat) {
		t.Fatal("FormatError does not wrap ErrFormat")
	}
}
