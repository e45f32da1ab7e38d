package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// inspect is an op that runs f on the committer, inside the transaction
// of its batch: for looking at the engine's transaction and the overlay.
type inspect func(t *txn) error

func (f inspect) apply(t *txn) error { return f(t) }

// where reports, on the committer, where the records of a message and
// its delivery are: "engine", "overlay" or "" for each.
func where(t *testing.T, s *Store, client string, msgID, seq uint64) (msg, dlv string) {
	t.Helper()
	mustCommit(t, s, inspect(func(tx *txn) error {
		side := func(bucket, key []byte) string {
			inEngine := tx.tx.Bucket(bucket).Get(key) != nil
			var inOverlay bool
			if tx.ovl != nil {
				_, inOverlay, _ = tx.ovl.get(bucket, key)
			}
			switch {
			case inEngine && inOverlay:
				return "both"
			case inEngine:
				return "engine"
			case inOverlay:
				return "overlay"
			}
			return ""
		}
		msg = side(bktMessage, messageKey(msgID))
		dlv = side(bktDelivery, s.keys.deliveryKey(client, seq))
		return nil
	}))
	return msg, dlv
}

// queue commits a message and its delivery to client, one commit.
func queue(t *testing.T, s *Store, client, payload string) (msgID, seq uint64) {
	t.Helper()
	m := &Message{ID: s.NextID(), Topic: "o/" + payload, Payload: []byte(payload), QoS: 1}
	d := &Delivery{ClientID: client, Seq: s.NextID(), MsgID: m.ID, QoS: 1}
	mustCommit(t, s, PutMessage{m}, PutDelivery{d})
	return m.ID, d.Seq
}

func payloads(st *State, client string) map[string]bool {
	out := map[string]bool{}
	if ss := st.Sessions[client]; ss != nil {
		for _, d := range ss.Deliveries {
			out[string(st.Messages[d.MsgID].Payload)] = true
		}
	}
	return out
}

// TestOverlayPutDeleteBetweenCheckpoints: with the commit log, a message
// and delivery put since the last checkpoint are held beside the
// engine's transaction, not in it; deleted before the next checkpoint
// (the subscriber's acknowledgement in a later batch), they never reach
// the engine; still stored at a checkpoint, they are written to it. A
// crash at any point recovers exactly what was reported (the log's put
// and delete pairs replayed in order), and the store verifies (digest,
// record count).
func TestOverlayPutDeleteBetweenCheckpoints(t *testing.T) {
	cfg := logConfig(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	mustCommit(t, s, PutSession{&Session{ClientID: "c", Owner: "user:c", ExpiryInterval: NeverExpires}})

	aMsg, aSeq := queue(t, s, "c", "acked")
	bMsg, bSeq := queue(t, s, "c", "queued")
	if m, d := where(t, s, "c", aMsg, aSeq); m != "overlay" || d != "overlay" {
		t.Fatalf("a new message and delivery are in %q and %q, want the overlay", m, d)
	}
	mustCommit(t, s, DeleteDelivery{"c", aSeq})
	if m, d := where(t, s, "c", aMsg, aSeq); m != "" || d != "" {
		t.Fatalf("an acknowledged message and delivery are in %q and %q, want gone", m, d)
	}

	// A crash now: the log alone holds both pairs.
	img := crashImage(t, cfg)
	r := mustOpen(t, img)
	if got := payloads(r.Recovered(), "c"); len(got) != 1 || !got["queued"] {
		t.Fatalf("recovered %v after a crash, want only the queued message", got)
	}
	mustClose(t, r)
	if rep, err := Verify(img); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify of the crash image: %v %v", err, rep.Problems)
	}

	// A checkpoint writes what is still stored into the engine.
	if err := s.syncView(func(tx *bolt.Tx) error {
		if tx.Bucket(bktMessage).Get(messageKey(aMsg)) != nil || tx.Bucket(bktMessage).Get(messageKey(bMsg)) == nil ||
			tx.Bucket(bktDelivery).Get(s.keys.deliveryKey("c", bSeq)) == nil {
			return errors.New("after a checkpoint the store file does not hold exactly the queued message and delivery")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if m, d := where(t, s, "c", bMsg, bSeq); m != "engine" || d != "engine" {
		t.Fatalf("after a checkpoint the queued records are in %q and %q, want the engine", m, d)
	}
	// The delivery sent, then acknowledged: replaced, then deleted, in
	// the engine.
	mustCommit(t, s, PutDelivery{&Delivery{ClientID: "c", Seq: bSeq, MsgID: bMsg, QoS: 1, State: Sent, PacketID: 7}})
	if m, d := where(t, s, "c", bMsg, bSeq); m != "engine" || d != "engine" {
		t.Fatalf("a replaced delivery of the engine is in %q and %q, want the engine", m, d)
	}
	cMsg, cSeq := queue(t, s, "c", "later")
	mustCommit(t, s, DeleteDelivery{"c", bSeq})
	if m, d := where(t, s, "c", bMsg, bSeq); m != "" || d != "" {
		t.Fatalf("an acknowledged record of the engine is in %q and %q, want gone", m, d)
	}
	img = crashImage(t, cfg)
	r = mustOpen(t, img)
	if got := payloads(r.Recovered(), "c"); len(got) != 1 || !got["later"] {
		t.Fatalf("recovered %v after the second crash, want only the later message", got)
	}
	mustClose(t, r)

	// A failing request rolls the engine's transaction back and
	// replays the log: the overlay goes with it, and what it held is in
	// the engine again.
	if err := s.Commit(t.Context(), PutDelivery{&Delivery{ClientID: "nobody", Seq: s.NextID(), MsgID: cMsg}}); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("a delivery of no session: %v, want ErrUnknownSession", err)
	}
	if m, d := where(t, s, "c", cMsg, cSeq); m != "engine" || d != "engine" {
		t.Fatalf("after the log was replayed the records are in %q and %q, want the engine", m, d)
	}

	// DeleteSession removes the session's deliveries on both sides.
	queue(t, s, "c", "gone")
	mustCommit(t, s, DeleteSession{"c"})
	if err := s.syncView(func(tx *bolt.Tx) error {
		if n := tx.Bucket(bktDelivery).Stats().KeyN; n != 0 {
			return fmt.Errorf("%d deliveries left after DeleteSession", n)
		}
		if n := tx.Bucket(bktMessage).Stats().KeyN; n != 0 {
			return fmt.Errorf("%d messages left after DeleteSession", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	if rep, err := Verify(cfg); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify after Close: %v %v", err, rep.Problems)
	}
}

// TestOverlayCoalesceSeesEarlierBatches: a delivery put by an earlier
// batch (held in the overlay) and put again and deleted within one batch
// is not coalesced away: it was stored before that batch.
func TestOverlayCoalesceSeesEarlierBatches(t *testing.T) {
	cfg := logConfig(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	mustCommit(t, s, PutSession{&Session{ClientID: "c", Owner: "user:c", ExpiryInterval: NeverExpires}})
	msg, seq := queue(t, s, "c", "x")
	mustCommit(t, s, PutDelivery{&Delivery{ClientID: "c", Seq: seq, MsgID: msg, QoS: 1, State: Sent}}, DeleteDelivery{"c", seq})
	if m, d := where(t, s, "c", msg, seq); m != "" || d != "" {
		t.Fatalf("records in %q and %q, want gone", m, d)
	}
	r := mustOpen(t, crashImage(t, cfg))
	defer mustClose(t, r)
	if got := payloads(r.Recovered(), "c"); len(got) != 0 {
		t.Fatalf("recovered %v, want nothing", got)
	}
}

// TestSecurityOverlayNoPlaintextInLog: messages and deliveries held in
// the overlay are not sealed on their own; the commit log, which alone
// holds them until a checkpoint, shows none of their payload, topic or
// client ID (it encrypts every record), and neither does any other file
// of a crash image or the store file after the checkpoint that seals
// them. The log record's authentication covers them: a flipped byte in
// it is detected (the record is then the torn end, or damage when a
// later record states it durable, see TestSecurityLogTampered).
func TestSecurityOverlayNoPlaintextInLog(t *testing.T) {
	const client, topic, payload = "overlay-client-4711", "overlay/topic/secret", "overlay-payload-secret"
	cfg := logConfig(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	mustCommit(t, s, PutSession{&Session{ClientID: client, Owner: "user:x", ExpiryInterval: NeverExpires}})
	var seqs []uint64
	for i := range 20 {
		m := &Message{ID: s.NextID(), Topic: topic, Payload: []byte(fmt.Sprintf("%s-%d", payload, i)), QoS: 1}
		d := &Delivery{ClientID: client, Seq: s.NextID(), MsgID: m.ID, QoS: 1}
		mustCommit(t, s, PutMessage{m}, PutDelivery{d})
		seqs = append(seqs, d.Seq)
	}
	for _, seq := range seqs[:10] {
		mustCommit(t, s, DeleteDelivery{client, seq})
	}
	noPlaintext := func(when string, dir string) {
		t.Helper()
		for _, f := range []string{DBFile, LogFile, CounterFile} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{client, topic, payload} {
				if bytes.Contains(b, []byte(p)) {
					t.Errorf("%s: %s holds %q in plaintext", when, f, p)
				}
			}
		}
	}
	img := crashImage(t, cfg)
	if fi, err := os.Stat(filepath.Join(img.Dir, LogFile)); err != nil || fi.Size() < 20*int64(len(payload)) {
		t.Fatalf("the log of the crash image: %v, %d bytes, want the 30 commits", err, fi.Size())
	}
	noPlaintext("log before a checkpoint", img.Dir)
	// The messages and deliveries are in the log as records that only
	// the log encrypts (not sealed on their own).
	lc, err := readLog(filepath.Join(img.Dir, LogFile), openKeys(t, img))
	if err != nil {
		t.Fatal(err)
	}
	unsealed := 0
	for _, r := range lc.records {
		for _, o := range r.ops {
			if o.kind == logOpPutRecord {
				unsealed++
			}
		}
	}
	if unsealed != 40 {
		t.Fatalf("%d records logged unsealed, want the 20 messages and 20 deliveries", unsealed)
	}
	// verify (read-only) applies the log as Open does.
	if rep, err := Verify(crashImage(t, img)); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify of a crash image with unsealed records in its log: %v %v", err, rep.Problems)
	}
	r := mustOpen(t, img) // replays the log: seals the records into the store file
	if got := payloads(r.Recovered(), client); len(got) != 10 {
		t.Fatalf("recovered %d messages, want 10", len(got))
	}
	mustClose(t, r)
	noPlaintext("store file after the log was replayed", img.Dir)
	if err := s.syncView(func(*bolt.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	noPlaintext("store file after a checkpoint", cfg.Dir)

	// A byte of the last log record flipped: the record does not open,
	// and its batch (never reported, as far as the log can tell) is
	// dropped, not read.
	mustCommit(t, s, DeleteDelivery{client, seqs[10]})
	img = crashImage(t, cfg)
	path := filepath.Join(img.Dir, LogFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-20] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	lc, err = readLog(path, openKeys(t, img))
	if err != nil || !lc.torn || len(lc.records) != 0 {
		t.Fatalf("a log whose only record was altered: %v, torn %v, %d records; want the record dropped", err, lc != nil && lc.torn, len(lc.records))
	}
}

// TestOverlayDigestAcrossRedo: the unsealed records of the overlay are
// counted in the digest only once sealed into the engine. A failed
// request makes the committer apply the log again (redoLog), which puts
// them into the engine and counts them there, and checkpoints; records
// then replaced and deleted in the engine, and new ones in the overlay,
// leave a store whose crash image and whose clean close both verify.
func TestOverlayDigestAcrossRedo(t *testing.T) {
	cfg := logConfig(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	mustCommit(t, s, PutSession{&Session{ClientID: "c", Owner: "user:c", ExpiryInterval: NeverExpires}})
	aMsg, aSeq := queue(t, s, "c", "a")
	bMsg, bSeq := queue(t, s, "c", "b")
	queue(t, s, "c", "c")
	ckpts := s.Stats().Checkpoints
	if err := s.Commit(t.Context(), PutDelivery{&Delivery{ClientID: "nobody", Seq: s.NextID(), MsgID: aMsg}}); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("a delivery of an unknown session: %v", err)
	}
	if n := s.Stats().Checkpoints; n != ckpts+1 {
		t.Fatalf("%d checkpoints after a failed request, want %d (the redo ends the log)", n, ckpts+1)
	}
	if m, d := where(t, s, "c", aMsg, aSeq); m != "engine" || d != "engine" {
		t.Fatalf("after the redo the records are in %q and %q, want the engine", m, d)
	}
	mustCommit(t, s, DeleteDelivery{"c", aSeq})
	mustCommit(t, s, PutDelivery{&Delivery{ClientID: "c", Seq: bSeq, MsgID: bMsg, QoS: 1, State: Sent, PacketID: 3}})
	dMsg, dSeq := queue(t, s, "c", "d")
	queue(t, s, "c", "e")
	mustCommit(t, s, DeleteDelivery{"c", dSeq})
	if m, _ := where(t, s, "c", dMsg, dSeq); m != "" {
		t.Fatalf("an acknowledged message is in %q", m)
	}
	want := map[string]bool{"b": true, "c": true, "e": true}
	check := func(what string, img Config) {
		t.Helper()
		r := mustOpen(t, img)
		got := payloads(r.Recovered(), "c")
		mustClose(t, r)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s: recovered %v, want %v", what, got, want)
		}
		if rep, err := Verify(img); err != nil || len(rep.Problems) > 0 {
			t.Fatalf("Verify of %s: %v %v", what, err, rep.Problems)
		}
	}
	check("the crash image", crashImage(t, cfg))
	mustClose(t, s)
	check("the store after Close", cfg)
}

// toLogV1 rewrites the log of the store in dir as the previous log
// format held it (logMagicV1): each state record's digest counts the
// put-records of the log still stored when it was written.
func toLogV1(t *testing.T, dir string, keys *recordKeys) {
	t.Helper()
	path := filepath.Join(dir, LogFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lc, err := parseLog(b, keys)
	if err != nil || lc.torn || !lc.uncounted {
		t.Fatalf("parseLog: %v %+v", err, lc)
	}
	a, err := keys.logAEAD(lc.logID)
	if err != nil {
		t.Fatal(err)
	}
	pending := map[string][32]byte{}
	var fix [32]byte
	out := append([]byte(logMagicV1), b[8:48]...)
	out = a.Seal(out, logHeaderNonce, nil, out)
	for i, r := range lc.records {
		for j, o := range r.ops {
			k := string(o.bucket) + "\x00" + string(o.key)
			if e, ok := pending[k]; ok {
				xorInto(&fix, e)
				delete(pending, k)
			}
			switch {
			case o.kind == logOpPutRecord:
				e := keys.element(o.bucket, o.key, beUint64(o.val))
				pending[k] = e
				xorInto(&fix, e)
			case o.kind == logOpPut && bytes.Equal(o.bucket, bktMeta) && bytes.Equal(o.key, keyState):
				ver, pt, err := keys.open(bktMeta, keyState, o.val)
				if err != nil {
					t.Fatal(err)
				}
				rec, _ := decodeRecord(pt)
				st := rec.(*state)
				xorInto(&st.Digest, fix)
				if r.ops[j].val, err = keys.seal(bktMeta, keyState, ver, encodeRecord(st)); err != nil {
					t.Fatal(err)
				}
			}
		}
		pt := encodeLogBatch(&r)
		n := len(pt) + gcmTagLen
		out = binary.BigEndian.AppendUint32(out, uint32(n))
		out = binary.BigEndian.AppendUint64(out, uint64(i))
		out = binary.BigEndian.AppendUint32(out, crc32.Checksum(out[len(out)-12:], castagnoli))
		out = a.Seal(out, logNonce(uint64(i)), pt, logRecordAAD(keys.storeID, lc.logID, uint64(i)))
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLogV1Replay: a log left by a crash of the previous version, whose
// state records counted the put-records in the digest when they were
// logged, is applied without counting them again: the store opens with
// everything reported and verifies. The same log read as the current
// format would not (its digest then counts the surviving records twice).
func TestLogV1Replay(t *testing.T) {
	cfg := logConfig(t)
	s := mustOpen(t, cfg)
	defer s.Close()
	mustCommit(t, s, PutSession{&Session{ClientID: "c", Owner: "user:c", ExpiryInterval: NeverExpires}})
	_, aSeq := queue(t, s, "c", "a")
	bMsg, bSeq := queue(t, s, "c", "b")
	queue(t, s, "c", "c")
	mustCommit(t, s, DeleteDelivery{"c", aSeq})
	mustCommit(t, s, PutDelivery{&Delivery{ClientID: "c", Seq: bSeq, MsgID: bMsg, QoS: 1, State: Sent, PacketID: 3}})
	img := crashImage(t, cfg)
	toLogV1(t, img.Dir, s.keys)
	r := mustOpen(t, img)
	got := payloads(r.Recovered(), "c")
	mustClose(t, r)
	if len(got) != 2 || !got["b"] || !got["c"] {
		t.Fatalf("recovered %v from a log of the previous format, want b and c", got)
	}
	if rep, err := Verify(img); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify: %v %v", err, rep.Problems)
	}

	// Read as the current format, the same log fails the digest.
	img = crashImage(t, cfg)
	toLogV1(t, img.Dir, s.keys)
	path := filepath.Join(img.Dir, LogFile)
	b, _ := os.ReadFile(path)
	lc, err := parseLog(b, s.keys)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.keys.logAEAD(lc.logID)
	hdr := append([]byte(logMagic), b[8:48]...)
	copy(b, a.Seal(hdr, logHeaderNonce, nil, hdr))
	os.WriteFile(path, b, 0o600)
	if _, err := Open(img); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a counted log read as uncounted: %v, want ErrCorrupt (the check this test relies on)", err)
	}
}
