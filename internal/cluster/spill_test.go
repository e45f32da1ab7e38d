package cluster

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/packet"
	"github.com/moatmq/moat/internal/testutil"
)

func spillMsg(topic, payload string, now time.Time, expiry uint32) *broker.Message {
	p := &packet.Publish{Topic: topic, Payload: []byte(payload), QoS: 1, Retain: true}
	if expiry > 0 {
		p.Properties.SetMessageExpiry(expiry)
	}
	return broker.NewMessage(p, "c", now)
}

func queueOf(ws ...kvWrite) *pendingQueue[string, kvWrite] {
	q := newPendingQueue[string, kvWrite](maxPendingWrites, true)
	for _, w := range ws {
		q.pushEvict(w.kvKey(), w)
	}
	return q
}

// spillTopics reads the spill file at path back with key, as a new run.
func spillTopics(t *testing.T, path string, key []byte, now time.Time) (map[string]kvWrite, int) {
	t.Helper()
	sp, err := openSpill(path, key)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	ws, bad, err := sp.load(now)
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]kvWrite)
	for _, w := range ws {
		got[w.retained.Topic] = w
	}
	return got, bad
}

// spilled is the payload of topic's change in got, "" without one.
func spilled(got map[string]kvWrite, topic string) string {
	if w := got[topic]; w.retained != nil {
		return string(w.retained.Payload)
	}
	return ""
}

// awaitSpilled waits until the spill at path, which a running node holds,
// has each topic with its payload (pairs): a copy of the file is read as
// the node's next run would.
func awaitSpilled(t *testing.T, path string, pairs ...string) {
	t.Helper()
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	testutil.WaitFor(t, fmt.Sprintf("%v on disk", pairs), 30*time.Second, func() bool {
		raw, err := os.ReadFile(path)
		if err != nil || os.WriteFile(copyPath, raw, 0o600) != nil {
			return false
		}
		got, _ := spillTopics(t, copyPath, testSpillKey, time.Now())
		for i := 0; i < len(pairs); i += 2 {
			if spilled(got, pairs[i]) != pairs[i+1] {
				return false
			}
		}
		return true
	})
}

// publishRetained publishes a retained QoS 1 message through c.
func publishRetained(t *testing.T, c *client.Client, topic, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Publish(ctx, &client.Message{Topic: topic, QoS: 1, Retain: true, Payload: []byte(payload)}); err != nil {
		t.Fatal(err)
	}
}

// retainedHere is the payload of topic's retained message on tn, "" for
// none.
func retainedHere(tn *testNode, topic string) string {
	m, _ := tn.srv.RetainedMatch(topic, 1)
	if len(m) != 1 {
		return ""
	}
	return string(m[0].Preview)
}

// TestSpillKeepsQueue: the spill holds what the queue holds, changes and
// clears alike, with the publisher, creation time and expiry; written
// changes leave it, and an empty queue empties it.
func TestSpillKeepsQueue(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "spill.db")
	key := bytes.Repeat([]byte{7}, 32)
	now := time.Now().Truncate(time.Second)
	sp, err := openSpill(path, key)
	if err != nil {
		t.Fatal(err)
	}
	a := kvWrite{retained: spillMsg("s/a", "A", now.Add(-time.Minute), 0), pub: &broker.StoredPublisher{ClientID: "c", Username: "u"}}
	b := kvWrite{retained: spillMsg("s/b", "", now.Add(-30*time.Second), 0)}
	c := kvWrite{retained: spillMsg("s/c", "C", now, 60)}
	q := queueOf(a, b, c)
	if err := sp.sync(q, now); err != nil {
		t.Fatal(err)
	}
	// Written: a; replaced: c by a newer change.
	c2 := kvWrite{retained: spillMsg("s/c", "C2", now.Add(time.Second), 0)}
	q.pushEvict(c2.kvKey(), c2)
	if f, _ := q.front(); f.val.retained != a.retained {
		t.Fatal("a is not first")
	} else {
		q.done(f)
		sp.written(a.retained)
	}
	if err := sp.sync(q, now); err != nil {
		t.Fatal(err)
	}
	if err := sp.close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("spill file mode: %v %v", fi.Mode(), err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, clear := range []string{"s/b", "s/c", "C2"} {
		if bytes.Contains(raw, []byte(clear)) {
			t.Fatalf("the spill file holds %q in the clear", clear)
		}
	}

	got, bad := spillTopics(t, path, key, now.Add(2*time.Second))
	if bad != 0 || len(got) != 2 {
		t.Fatalf("read back %d records (%d bad), want s/b and s/c", len(got), bad)
	}
	if w := got["s/b"]; len(w.retained.Payload) != 0 || !w.retained.Created.Equal(b.retained.Created) || !w.restored {
		t.Fatalf("s/b read back as %+v", w.retained)
	}
	if w := got["s/c"]; string(w.retained.Payload) != "C2" || !w.retained.Created.Equal(c2.retained.Created) {
		t.Fatalf("s/c read back as %q", w.retained.Payload)
	}

	// The expiry counts from the copy: 60 s after it, c's first change
	// would be gone; an expired record is dropped, not counted bad.
	sp, err = openSpill(path, key)
	if err != nil {
		t.Fatal(err)
	}
	q = queueOf(c)
	sp.seq = 0
	if err := sp.sync(q, now); err != nil {
		t.Fatal(err)
	}
	sp.close()
	if got, _ := spillTopics(t, path, key, now.Add(30*time.Second)); got["s/c"].retained == nil ||
		got["s/c"].retained.Expires.Sub(now) != 60*time.Second {
		t.Fatalf("s/c's expiry read back as %v", got["s/c"].retained)
	}
	if got, bad := spillTopics(t, path, key, now.Add(61*time.Second)); got["s/c"].retained != nil || bad != 0 {
		t.Fatalf("an expired record read back (%d bad)", bad)
	}

	// An empty queue empties the file.
	sp, err = openSpill(path, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := sp.load(now); err != nil {
		t.Fatal(err)
	}
	if err := sp.sync(queueOf(), now); err != nil {
		t.Fatal(err)
	}
	sp.close()
	if got, _ := spillTopics(t, path, key, now); len(got) != 0 {
		t.Fatalf("%d records left after the queue emptied", len(got))
	}
}

// TestSpillRefusesOtherKeyAndMovedRecords: a record sealed under another
// key, or moved to another topic's key, is not read back but removed.
func TestSpillRefusesOtherKeyAndMovedRecords(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "spill.db")
	key := bytes.Repeat([]byte{7}, 32)
	now := time.Now()
	sp, err := openSpill(path, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.sync(queueOf(kvWrite{retained: spillMsg("s/a", "A", now, 0)}, kvWrite{retained: spillMsg("s/b", "B", now, 0)}), now); err != nil {
		t.Fatal(err)
	}
	// Swap the two records' values.
	if err := sp.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(spillBucket)
		ka, kb := sp.key("s/a"), sp.key("s/b")
		va, vb := bytes.Clone(bk.Get(ka)), bytes.Clone(bk.Get(kb))
		if err := bk.Put(ka, vb); err != nil {
			return err
		}
		return bk.Put(kb, va)
	}); err != nil {
		t.Fatal(err)
	}
	sp.close()
	if got, bad := spillTopics(t, filepath.Clean(path), bytes.Repeat([]byte{8}, 32), now); len(got) != 0 || bad != 2 {
		t.Fatalf("under another key: %d read, %d bad", len(got), bad)
	}
	// The other key's reading removed them.
	if got, bad := spillTopics(t, path, key, now); len(got) != 0 || bad != 0 {
		t.Fatalf("after removal: %d read, %d bad", len(got), bad)
	}
	if _, err := openSpill(path, key[:16]); err == nil {
		t.Fatal("a 16-byte key was accepted")
	}
}

func FuzzDecodeSpilled(f *testing.F) {
	now := time.Unix(1e9, 0)
	key := bytes.Repeat([]byte{7}, 32)
	sp, err := openSpill(filepath.Join(f.TempDir(), "spill.db"), key)
	if err != nil {
		f.Fatal(err)
	}
	defer sp.close()
	for _, m := range []*broker.Message{spillMsg("a/b", "x", now, 0), spillMsg("a/c", "", now, 0), spillMsg("a/d", "y", now, 30)} {
		sealed, err := sp.seal(sp.key(m.Topic), kvWrite{retained: m, pub: &broker.StoredPublisher{ClientID: "c"}}, now)
		if err != nil {
			f.Fatal(err)
		}
		ns := sp.aead.NonceSize()
		plain, err := sp.aead.Open(nil, sealed[:ns], sealed[ns:], sp.key(m.Topic))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(plain)
	}
	f.Add([]byte{spillVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := decodeSpilled(b, now)
		if err != nil {
			return
		}
		if w.retained == nil || !w.restored {
			t.Fatal("a decoded record without its change")
		}
	})
}

// TestRetainedSpill: retained changes of a node that wait for the bucket
// are kept on disk while its writes fail, and written when the node runs
// again: a topic no other node changed meanwhile gets this node's value,
// one another node changed after it keeps the other's, on every node.
// Before, both changes were lost with the stop: the bucket's older value
// (none, or the other's) replaced them everywhere.
func TestRetainedSpill(t *testing.T) {
	t.Parallel()
	nodes, dir, routes := startOwn(t, 3)
	n1, n2 := nodes[0], nodes[1]
	kv1 := n1.node.kvs()
	var unreachable atomic.Bool
	unreachable.Store(true)
	f := func(topic string) error {
		if unreachable.Load() {
			return jetstream.ErrNoStreamResponse
		}
		return nil
	}
	kv1.failRetained.Store(&f)
	pub1 := dial(t, n1.addr, "spill-pub1", client.V5)
	publishRetained(t, pub1, "spill/a", "kept")
	publishRetained(t, pub1, "spill/b", "old")
	// On disk while the node runs (a kill loses nothing): a copy of the
	// file read as the next run would.
	spillPath := testSpill(dir, "n1")
	awaitSpilled(t, spillPath, "spill/a", "kept", "spill/b", "old")
	_ = pub1.Close()
	stopNode(t, n1)

	pub2 := dial(t, n2.addr, "spill-pub2", client.V5)
	publishRetained(t, pub2, "spill/b", "new")
	testutil.WaitFor(t, "n2's change on n3", 30*time.Second, func() bool { return retainedHere(nodes[2], "spill/b") == "new" })
	if got := retainedHere(n2, "spill/a"); got != "" {
		t.Fatalf("n2 holds %q for spill/a before n1 is back", got)
	}

	back := restartWithListener(t, dir, routes, 0, nil)
	for _, tn := range []*testNode{back, n2, nodes[2]} {
		testutil.WaitFor(t, tn.node.cfg.Node+"'s retained messages", 30*time.Second, func() bool {
			return retainedHere(tn, "spill/a") == "kept" && retainedHere(tn, "spill/b") == "new"
		})
	}
	// Done, the file is emptied.
	testutil.WaitFor(t, "n1's queue to empty", 30*time.Second, func() bool { return back.node.kvs().ret.writes.len() == 0 })
	stopNode(t, back)
	if got, _ := spillTopics(t, spillPath, testSpillKey, time.Now()); len(got) != 0 {
		t.Fatalf("%d records left in the spill", len(got))
	}
}

// TestRetainedSpillBeforeBuckets: a node that starts without a quorum
// (the others down) keeps the retained changes made before it can reach
// the buckets on disk as they come, and writes them once the others are
// back. Before, they waited in memory only until then.
func TestRetainedSpillBeforeBuckets(t *testing.T) {
	t.Parallel()
	nodes, dir, routes := startOwn(t, 3)
	for _, tn := range []*testNode{nodes[1], nodes[2], nodes[0]} {
		stopNode(t, tn)
	}
	n1 := restartWithListener(t, dir, routes, 0, nil)
	pub := dial(t, n1.addr, "early-pub", client.V5)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, &client.Message{Topic: "early/a", Retain: true, Payload: []byte("early")}); err != nil {
		t.Fatal(err)
	}
	awaitSpilled(t, testSpill(dir, "n1"), "early/a", "early")
	back := []*testNode{restartWithListener(t, dir, routes, 1, nil), restartWithListener(t, dir, routes, 2, nil)}
	for _, tn := range back {
		testutil.WaitFor(t, tn.node.cfg.Node+"'s early/a", 60*time.Second, func() bool {
			m, _ := tn.srv.RetainedMatch("early/a", 1)
			return len(m) == 1 && string(m[0].Preview) == "early"
		})
	}
}

// TestSpillDamagedSetAside: a spill file that is not a readable database
// is renamed aside and a new one started, so that the node starts; a
// file another process holds is an error.
func TestSpillDamagedSetAside(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "spill.db")
	if err := os.WriteFile(path, bytes.Repeat([]byte("not a database "), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	key := bytes.Repeat([]byte{7}, 32)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	sp, err := openSpillOrSetAside(path, key, log)
	if err != nil {
		t.Fatal(err)
	}
	ws, bad, err := sp.loadOrSetAside(path, key, time.Now(), log)
	if err != nil || len(ws) != 0 || bad != 0 {
		t.Fatalf("a new spill read back %d records, %d bad, %v", len(ws), bad, err)
	}
	aside, _ := filepath.Glob(path + ".damaged-*")
	if len(aside) != 1 || !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "set aside") {
		t.Fatalf("set aside: %v; log:\n%s", aside, logs.String())
	}
	if err := sp.sync(queueOf(kvWrite{retained: spillMsg("s/a", "A", time.Now(), 0)}), time.Now()); err != nil {
		t.Fatal(err)
	}
	// Held by this process: another open waits for the lock and fails.
	if _, err := openSpillOrSetAside(path, key, log); !errors.Is(err, berrors.ErrTimeout) {
		t.Fatalf("a second open of a held file: %v", err)
	}
	sp.close()
	if got, _ := spillTopics(t, path, key, time.Now()); spilled(got, "s/a") != "A" {
		t.Fatal("the new spill lost its record")
	}
}

// TestSpillShrinks: emptied after holding more than a mebibyte, the file
// starts anew and gives the space back.
func TestSpillShrinks(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "spill.db")
	key := bytes.Repeat([]byte{7}, 32)
	now := time.Now()
	sp, err := openSpill(path, key)
	if err != nil {
		t.Fatal(err)
	}
	var ws []kvWrite
	for i := range 64 {
		ws = append(ws, kvWrite{retained: spillMsg(fmt.Sprintf("big/%d", i), strings.Repeat("x", 64<<10), now, 0)})
	}
	q := queueOf(ws...)
	if err := sp.sync(q, now); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() < 4<<20 {
		t.Fatalf("spill of 4 MiB: %v %v", fi.Size(), err)
	}
	for {
		c, ok := q.front()
		if !ok {
			break
		}
		q.done(c)
		sp.written(c.val.retained)
	}
	if err := sp.sync(q, now); err != nil {
		t.Fatal(err)
	}
	if err := sp.shrink(path, key); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() > 1<<20 {
		t.Fatalf("emptied spill: %v %v", fi.Size(), err)
	}
	// Still in use: the queue's next change goes to the new file.
	w := kvWrite{retained: spillMsg("s/a", "A", now, 0)}
	q.pushEvict(w.kvKey(), w)
	if err := sp.sync(q, now); err != nil {
		t.Fatal(err)
	}
	sp.close()
	if got, _ := spillTopics(t, path, key, now); len(got) != 1 || spilled(got, "s/a") != "A" {
		t.Fatalf("after the shrink the file holds %d records", len(got))
	}
}

// TestRetainedReconcile: at start a node compares its retained store with
// the bucket. A topic it holds that the bucket has nothing of (no value,
// no marker) is, on its first start in the cluster with a new JetStream
// store, one it held as a single broker: written to the cluster; on a
// later start, one cleared while it was away longer than the marker
// lived: removed here (before, it was served until the topic changed
// again). A node that was a member before it kept a record of it (an
// upgrade) leaves such topics alone that once.
func TestRetainedReconcile(t *testing.T) {
	t.Parallel()
	nodes, dir, routes := startOwn(t, 3)
	n2 := nodes[1]
	// seedAt seeds the restarted node's store as its last run left it:
	// the messages created at created (zero: now).
	seedAt := func(created time.Time, pairs ...string) func(*broker.Server) {
		return func(srv *broker.Server) {
			for i := 0; i < len(pairs); i += 2 {
				m := broker.NewMessage(&packet.Publish{Topic: pairs[i], Payload: []byte(pairs[i+1]), Retain: true}, "old-client", cmp.Or(created, time.Now()))
				srv.RetainRemote(m, &broker.StoredPublisher{ClientID: "old-client"})
			}
		}
	}
	seed := func(pairs ...string) func(*broker.Server) { return seedAt(time.Time{}, pairs...) }
	ready := func(tn *testNode) {
		t.Helper()
		select {
		case <-tn.node.Ready():
		case <-time.After(60 * time.Second):
			t.Fatal("the restarted node did not get ready")
		}
	}
	restart := func(tn *testNode, before func(*Node), s func(*broker.Server)) *testNode {
		t.Helper()
		stopNode(t, tn)
		if err := os.Remove(testSpill(dir, "n1")); before != nil && err != nil {
			t.Fatal(err)
		}
		back := restartSeeded(t, dir, routes, 0, before, s)
		ready(back)
		return back
	}

	// An upgrade: a member, no record yet. Its stray topic stays here
	// and goes nowhere.
	n1 := restart(nodes[0], func(*Node) {}, seed("rec/stray", "stray"))
	if got := retainedHere(n1, "rec/stray"); got != "stray" {
		t.Fatalf("after an upgrade n1 holds %q for its stray topic", got)
	}

	// A single broker's first start as a node (its JetStream store
	// taken for new): its topic reaches every node.
	n1 = restart(n1, func(nd *Node) { nd.hadStore = false }, seed("rec/local", "local"))
	for _, tn := range []*testNode{n1, n2, nodes[2]} {
		testutil.WaitFor(t, tn.node.cfg.Node+"'s rec/local", 30*time.Second, func() bool { return retainedHere(tn, "rec/local") == "local" })
	}

	pub := dial(t, n2.addr, "rec-pub", client.V5)
	markerGone := func(topic string) {
		t.Helper()
		testutil.WaitFor(t, topic+"'s marker to expire", 60*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := n2.node.leaderLast(ctx, "KV_"+bucketRetained, "$KV."+bucketRetained+"."+topicTokens(topic))
			return errors.Is(err, jetstream.ErrMsgNotFound)
		})
	}
	// A later start after a clear whose marker expired while n1 was
	// away: the topic goes from n1's store too.
	// Seeded as older than the markers live (their expiry is counted in
	// whole seconds), as after a long absence.
	awayAt := time.Now().Add(-testMarkerTTL)
	publishRetained(t, pub, "rec/away", "y")
	testutil.WaitFor(t, "n1's rec/away", 30*time.Second, func() bool { return retainedHere(n1, "rec/away") == "y" })
	stopNode(t, n1)
	publishRetained(t, pub, "rec/away", "")
	markerGone("rec/away")
	n1 = restartSeeded(t, dir, routes, 0, nil, seedAt(awayAt, "rec/away", "y", "rec/local", "local"))
	testutil.WaitFor(t, "rec/away to leave n1", 30*time.Second, func() bool { return retainedHere(n1, "rec/away") == "" })
	if got := retainedHere(n1, "rec/local"); got != "local" {
		t.Fatalf("n1 lost rec/local (%q), which the bucket holds", got)
	}
}

// TestRetainedUnsentChangeKept: n1's last run changed retained topics and
// stopped before it wrote them (no spill: the changes were made in the
// seconds before a first failed write). At its next start its store holds
// them: a topic the bucket holds an older value of, and a new topic the
// bucket has nothing of, reach every node; a topic whose value in the
// bucket is newer than n1's takes the bucket's; a topic whose record
// is the message n1 holds, properties and all (dated by when n1 applied
// it, as earlier builds did), is not written again, and one whose
// message n1 changed in its properties only is. Before, the bucket's
// older value replaced n1's, and the new topic was removed.
func TestRetainedUnsentChangeKept(t *testing.T) {
	t.Parallel()
	// Markers that live a minute: a message made at n1's restart is
	// young at the comparison however long the start takes.
	longMarkers := func(nd *Node) { nd.cfg.MarkerTTL = time.Minute }
	nodes, dir, routes := startOwn(t, 3, func(_ int, nd *Node) { longMarkers(nd) })
	n2 := nodes[1]
	pub := dial(t, n2.addr, "unsent-pub", client.V5)
	staleAt := time.Now()
	publishRetained(t, pub, "uns/changed", "old")
	publishRetained(t, pub, "uns/newer", "cluster")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// props gives a message a content type and a user property.
	props := func(contentType string) *packet.Properties {
		p := &packet.Properties{}
		p.SetContentType(contentType)
		p.User = []packet.UserProperty{{Key: "k", Value: "v"}}
		return p
	}
	for topic, ct := range map[string]string{"uns/same": "json", "uns/props": "json"} {
		if err := pub.Publish(ctx, &client.Message{Topic: topic, QoS: 1, Retain: true, Payload: []byte("same"), Properties: *props(ct)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tn := range nodes {
		for _, topic := range []string{"uns/changed", "uns/newer", "uns/same", "uns/props"} {
			testutil.WaitFor(t, tn.node.cfg.Node+"'s "+topic, 30*time.Second, func() bool { return retainedHere(tn, topic) != "" })
		}
	}
	// Another node's message is dated by its record's write, not by
	// when it was applied here.
	e, err := nodes[2].node.kvs().retained.Get(ctx, topicTokens("uns/same"))
	if err != nil {
		t.Fatal(err)
	}
	if m := nodes[2].srv.RetainedMessage("uns/same"); m == nil || !m.Created.Equal(e.Created()) {
		t.Fatalf("n3's uns/same created %v, want the record's %v", m, e.Created())
	}
	stopNode(t, nodes[0])
	// What n1's last run left in its store: its own changes of three
	// topics (one of its content type only), made now, and the value of
	// uns/newer it held before the cluster's.
	n1 := restartSeeded(t, dir, routes, 0, longMarkers, func(srv *broker.Server) {
		for _, m := range []*broker.Message{
			broker.NewMessage(&packet.Publish{Topic: "uns/changed", Payload: []byte("n1"), Retain: true}, "n1-client", time.Now()),
			broker.NewMessage(&packet.Publish{Topic: "uns/fresh", Payload: []byte("n1"), Retain: true}, "n1-client", time.Now()),
			broker.NewMessage(&packet.Publish{Topic: "uns/newer", Payload: []byte("stale"), Retain: true}, "n1-client", staleAt.Add(-time.Second)),
			// The bucket's record, dated by its application here (as
			// an earlier build did): not a change of n1's.
			broker.NewMessage(&packet.Publish{Topic: "uns/same", Payload: []byte("same"), QoS: 1, Retain: true, Properties: *props("json")},
				"unsent-pub", time.Now()),
			broker.NewMessage(&packet.Publish{Topic: "uns/props", Payload: []byte("same"), QoS: 1, Retain: true, Properties: *props("text")},
				"n1-client", time.Now()),
		} {
			srv.RetainRemote(m, &broker.StoredPublisher{ClientID: "n1-client"})
		}
	})
	select {
	case <-n1.node.Ready(): // the bucket read, and n1's store compared with it
	case <-time.After(60 * time.Second):
		t.Fatal("the restarted node did not get ready")
	}
	for _, tn := range []*testNode{n1, n2, nodes[2]} {
		for topic, want := range map[string]string{"uns/changed": "n1", "uns/fresh": "n1", "uns/newer": "cluster", "uns/same": "same"} {
			testutil.WaitFor(t, fmt.Sprintf("%s's %s = %q", tn.node.cfg.Node, topic, want), 30*time.Second, func() bool {
				return retainedHere(tn, topic) == want
			})
		}
	}
	for _, tn := range []*testNode{n1, n2, nodes[2]} {
		testutil.WaitFor(t, tn.node.cfg.Node+"'s uns/props of content type text", 30*time.Second, func() bool {
			m := tn.srv.RetainedMessage("uns/props")
			return m != nil && m.Props != nil && m.Props.ContentType == "text"
		})
	}
	// n1 wrote its three changes and nothing else: not uns/same again.
	testutil.WaitFor(t, "n1's writes", 30*time.Second, func() bool { return n1.node.Status().PendingWrites == 0 })
	if st := n1.node.Status(); st.RetainedOut != 3 {
		t.Fatalf("n1 wrote %d retained changes, want 3 (uns/changed, uns/fresh, uns/props)", st.RetainedOut)
	}
}
