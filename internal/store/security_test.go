package store

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// populated returns a closed store holding one record of every kind.
func populated(t *testing.T) Config {
	t.Helper()
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	sess, msg, d, ret, will := sample(s)
	other := &Session{ClientID: "other-client", Owner: "user:bob"}
	mustCommit(t, s, PutSession{sess}, PutSession{other}, PutMessage{msg}, PutDelivery{d},
		PutInbound{secretClient, 9}, PutRetained{ret}, PutWill{will})
	mustClose(t, s)
	return cfg
}

// editDB changes the store file directly, as somebody with access to the
// disk would, bypassing the store.
func editDB(t *testing.T, cfg Config, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(cfg.Dir, DBFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	db.Close()
}

func firstKey(tx *bolt.Tx, bucket []byte) []byte {
	k, _ := tx.Bucket(bucket).Cursor().First()
	return bytes.Clone(k)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// wantOpenErr checks that Open fails with target, and that Verify (when
// the key is right) reports the problem.
func wantOpenErr(t *testing.T, cfg Config, target error) {
	t.Helper()
	_, err := Open(cfg)
	if !errors.Is(err, target) {
		t.Fatalf("Open: %v, want %v", err, target)
	}
	t.Logf("detected: %v", err)
	if target == ErrCorrupt || target == ErrRollback {
		rep, err := Verify(cfg)
		if err == nil && len(rep.Problems) == 0 {
			t.Fatalf("Verify did not report the problem")
		}
	}
}

// TestSecurityTamperFlippedByte: an attacker with write access to the
// disk flips one byte of a sealed value (here a retained message, hoping
// to change what subscribers receive). AES-GCM authentication fails.
func TestSecurityTamperFlippedByte(t *testing.T) {
	cfg := populated(t)
	editDB(t, cfg, func(tx *bolt.Tx) error {
		b := tx.Bucket(bktRetained)
		k := firstKey(tx, bktRetained)
		v := bytes.Clone(b.Get(k))
		v[len(v)/2] ^= 0x01
		return b.Put(k, v)
	})
	wantOpenErr(t, cfg, ErrCorrupt)
}

// TestSecurityTamperFlippedVersion: the attacker changes the unencrypted
// version prefix of a record; it is authenticated as associated data.
func TestSecurityTamperFlippedVersion(t *testing.T) {
	cfg := populated(t)
	editDB(t, cfg, func(tx *bolt.Tx) error {
		b := tx.Bucket(bktSession)
		k := firstKey(tx, bktSession)
		v := bytes.Clone(b.Get(k))
		v[7] ^= 0x01
		return b.Put(k, v)
	})
	wantOpenErr(t, cfg, ErrCorrupt)
}

// TestSecurityTamperMovedValue: the attacker copies one session's sealed
// value under another session's key (to give client B the subscriptions
// or owner of client A). The key is part of the associated data.
func TestSecurityTamperMovedValue(t *testing.T) {
	cfg := populated(t)
	editDB(t, cfg, func(tx *bolt.Tx) error {
		b := tx.Bucket(bktSession)
		c := b.Cursor()
		_, v1 := c.First()
		v1 = bytes.Clone(v1)
		k2, _ := c.Next()
		return b.Put(bytes.Clone(k2), v1)
	})
	wantOpenErr(t, cfg, ErrCorrupt)
}

// TestSecurityTamperMovedBucket: a sealed value moved to another bucket
// under the same key bytes does not open either.
func TestSecurityTamperMovedBucket(t *testing.T) {
	cfg := populated(t)
	editDB(t, cfg, func(tx *bolt.Tx) error {
		k := firstKey(tx, bktWill)
		v := bytes.Clone(tx.Bucket(bktWill).Get(k))
		return tx.Bucket(bktSession).Put(k, v)
	})
	wantOpenErr(t, cfg, ErrCorrupt)
}

// TestSecurityTamperRecordFromOlderCopy: the attacker keeps a copy of the
// file, waits until a message was acknowledged (its delivery deleted) or
// a retained value replaced, then copies the old sealed record back into
// the current file: a replay of a valid, correctly keyed record. The
// sealed digest of all (bucket, key, version) triples catches it.
func TestSecurityTamperRecordFromOlderCopy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bucket []byte
		change func(s *Store) []Op
	}{
		{"replaced retained value", bktRetained, func(s *Store) []Op {
			return []Op{PutRetained{&Retained{Topic: secretTopic + "/status", Payload: []byte("new")}}}
		}},
		{"resurrected delivery", bktDelivery, func(s *Store) []Op {
			st := s.Recovered()
			return []Op{DeleteDelivery{secretClient, st.Sessions[secretClient].Deliveries[0].Seq}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := populated(t)
			old := filepath.Join(t.TempDir(), "old.db")
			copyFile(t, filepath.Join(cfg.Dir, DBFile), old)
			s := mustOpen(t, cfg)
			mustCommit(t, s, tc.change(s)...)
			mustClose(t, s)

			odb, err := bolt.Open(old, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			var k, v []byte
			odb.View(func(tx *bolt.Tx) error {
				k = firstKey(tx, tc.bucket)
				v = bytes.Clone(tx.Bucket(tc.bucket).Get(k))
				return nil
			})
			odb.Close()
			editDB(t, cfg, func(tx *bolt.Tx) error { return tx.Bucket(tc.bucket).Put(k, v) })
			wantOpenErr(t, cfg, ErrCorrupt)
		})
	}
}

// TestSecurityTamperDeletedRecord: the attacker deletes a record (a
// queued message, to make it silently disappear).
func TestSecurityTamperDeletedRecord(t *testing.T) {
	cfg := populated(t)
	editDB(t, cfg, func(tx *bolt.Tx) error {
		return tx.Bucket(bktInbound).Delete(firstKey(tx, bktInbound))
	})
	wantOpenErr(t, cfg, ErrCorrupt)
}

// TestSecurityTamperTruncatedFile: the file is cut short (a torn copy, a
// full disk, an attacker). Open refuses it before mapping it.
func TestSecurityTamperTruncatedFile(t *testing.T) {
	cfg := populated(t)
	// Grow the file past its first pages so truncation hits data.
	s := mustOpen(t, cfg)
	for i := range 200 {
		mustCommit(t, s, PutRetained{&Retained{Topic: strings.Repeat("x", i+1), Payload: bytes.Repeat([]byte{1}, 500)}})
	}
	mustClose(t, s)
	path := filepath.Join(cfg.Dir, DBFile)
	used, _, err := usedSize(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{used - 4096, used / 2, 3 * 4096, 4096 + 100, 10, 0} {
		t.Run("", func(t *testing.T) {
			c := cfg
			c.Dir = t.TempDir()
			copyFile(t, path, filepath.Join(c.Dir, DBFile))
			copyFile(t, filepath.Join(cfg.Dir, CounterFile), filepath.Join(c.Dir, CounterFile))
			if err := os.Truncate(filepath.Join(c.Dir, DBFile), size); err != nil {
				t.Fatal(err)
			}
			wantOpenErr(t, c, ErrCorrupt)
		})
	}
}

// TestSecurityRollbackWholeFile: the attacker replaces the whole store
// file with an older copy (to bring back messages already delivered, or a
// revoked retained value). The counter file, wrapped by the KEK, is
// ahead of the copy.
func TestSecurityRollbackWholeFile(t *testing.T) {
	cfg := populated(t)
	old := filepath.Join(t.TempDir(), "old.db")
	copyFile(t, filepath.Join(cfg.Dir, DBFile), old)
	s := mustOpen(t, cfg)
	mustCommit(t, s, DeleteRetained{secretTopic + "/status"})
	mustClose(t, s)
	copyFile(t, old, filepath.Join(cfg.Dir, DBFile))
	wantOpenErr(t, cfg, ErrRollback)

	// Removing the counter file does not help.
	os.Remove(filepath.Join(cfg.Dir, CounterFile))
	wantOpenErr(t, cfg, ErrRollback)
}

// TestSecurityWrongKey: a store opened with another KEK is a clear error
// (and is not quarantined: the operator fixes the key).
func TestSecurityWrongKey(t *testing.T) {
	cfg := populated(t)
	bad := cfg
	bad.KEK = testKEK(t, bytes.Repeat([]byte{7}, 32))
	wantOpenErr(t, bad, ErrWrongKey)
	if _, q, err := OpenOrQuarantine(bad); !errors.Is(err, ErrWrongKey) || q != nil {
		t.Fatalf("OpenOrQuarantine with the wrong key: %v %v", q, err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, DBFile)); err != nil {
		t.Fatal("the store was moved for a wrong key")
	}
	if _, err := Verify(bad); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Verify with the wrong key: %v", err)
	}
}

// TestSecurityNoPlaintextOnDisk: no client ID, username, topic, payload
// or will appears in any file of the store directory, also after rekey
// and compaction.
func TestSecurityNoPlaintextOnDisk(t *testing.T) {
	cfg := populated(t)
	check := func(when string) {
		t.Helper()
		filepath.WalkDir(cfg.Dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{secretClient, secretOwner, "PLAINTEXT", "alice", secretTopic, "factory/", secretPayload, secretRetained, secretWill, secretCert, "publisher-1", "other-client", "device-17"} {
				if bytes.Contains(b, []byte(p)) {
					t.Errorf("%s: %s holds %q in plaintext", when, filepath.Base(path), p)
				}
			}
			return nil
		})
	}
	check("after commit")
	if err := Rekey(cfg, NewKey{}); err != nil {
		t.Fatal(err)
	}
	check("after rekey")
	if _, _, err := Compact(cfg); err != nil {
		t.Fatal(err)
	}
	check("after compact")
}

func TestOpenOrQuarantine(t *testing.T) {
	cfg := populated(t)
	editDB(t, cfg, func(tx *bolt.Tx) error { return tx.Bucket(bktSession).Delete(firstKey(tx, bktSession)) })
	s, q, err := OpenOrQuarantine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer mustClose(t, s)
	if q == nil || !errors.Is(q, ErrCorrupt) {
		t.Fatalf("quarantine report: %v", q)
	}
	t.Logf("%v", q)
	if _, err := os.Stat(q.Path); err != nil {
		t.Fatalf("quarantined file: %v", err)
	}
	if st := s.Recovered(); len(st.Sessions)+len(st.Retained) != 0 {
		t.Fatal("the fresh store is not empty")
	}
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("x")}})
	// The quarantined file is kept as it was.
	db, err := bolt.Open(q.Path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
}

func TestRekey(t *testing.T) {
	cfg := populated(t)
	// Rotate the data key only.
	if err := Rekey(cfg, NewKey{}); err != nil {
		t.Fatal(err)
	}
	// Rotate and change the KEK.
	newKEK := testKEK(t, bytes.Repeat([]byte{9}, 32))
	if err := Rekey(cfg, NewKey{KEK: newKEK}); err != nil {
		t.Fatal(err)
	}
	wantOpenErr(t, cfg, ErrWrongKey)
	ncfg := cfg
	ncfg.KEK = newKEK
	s := mustOpen(t, ncfg)
	st := s.Recovered()
	if ss := st.Sessions[secretClient]; ss == nil || len(ss.Deliveries) != 1 || len(ss.Inbound) != 1 || len(st.Retained) != 1 || len(st.Wills) != 1 {
		t.Fatalf("rekeyed store lost records: %+v", st)
	}
	mustCommit(t, s, DeleteSession{secretClient})
	mustClose(t, s)
	if rep, err := Verify(ncfg); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify after rekey: %v %v", err, rep.Problems)
	}
}

// TestRekeyCrashBeforeSwap: a rekey that stopped after writing the next
// counter but before replacing the store leaves a store that opens.
func TestRekeyInterrupted(t *testing.T) {
	cfg := populated(t)
	old := filepath.Join(t.TempDir(), "old.db")
	copyFile(t, filepath.Join(cfg.Dir, DBFile), old)
	oldCtr, _ := os.ReadFile(filepath.Join(cfg.Dir, CounterFile))
	if err := Rekey(cfg, NewKey{}); err != nil {
		t.Fatal(err)
	}
	newCtr, _ := os.ReadFile(filepath.Join(cfg.Dir, CounterFile))
	// Crash after the swap, before the counter was rewritten: the
	// new store, the old counter file, the next counter.
	os.WriteFile(filepath.Join(cfg.Dir, CounterFile), oldCtr, 0o600)
	s := mustOpen(t, cfg)
	mustClose(t, s)
	// The old store and a leftover next counter of a rekey that never
	// swapped: the next counter is bound to the other data key and is
	// ignored.
	// Rekey removes the (empty) log before the swap, so no log is left
	// beside the old store.
	copyFile(t, old, filepath.Join(cfg.Dir, DBFile))
	os.Remove(filepath.Join(cfg.Dir, LogFile))
	os.WriteFile(filepath.Join(cfg.Dir, CounterFile), oldCtr, 0o600)
	os.WriteFile(filepath.Join(cfg.Dir, CounterFile+".next"), newCtr, 0o600)
	s = mustOpen(t, cfg)
	mustClose(t, s)
}

func TestCompactAndExport(t *testing.T) {
	cfg := populated(t)
	s := mustOpen(t, cfg)
	for i := range 300 {
		mustCommit(t, s, PutRetained{&Retained{Topic: "x", Payload: bytes.Repeat([]byte{byte(i)}, 4000)}})
	}
	mustClose(t, s)
	before, after, err := Compact(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("compacted %d → %d bytes", before, after)
	if after > before {
		t.Errorf("compaction grew the file: %d → %d", before, after)
	}
	var out bytes.Buffer
	if err := Export(cfg, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"kind":"session"`, `"kind":"delivery"`, `"kind":"message"`, `"kind":"retained"`,
		`"kind":"will"`, `"kind":"inbound_qos2"`, secretClient, "UExBSU5URVhULVBBWUxPQUQtdGVtcGVyYXR1cmU9MjEuNQ=="} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("export lacks %s:\n%s", want, out.String())
		}
	}
	if err := Export(Config{Dir: cfg.Dir, KEK: testKEK(t, bytes.Repeat([]byte{3}, 32))}, io.Discard); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Export with the wrong key: %v", err)
	}
}

// TestSecurityTamperRawBytes: single bytes flipped anywhere in the file
// (not through the engine): Open either detects it with a clear error or,
// when the byte was in free space, opens a store that verifies. It never
// crashes the process.
func TestSecurityTamperRawBytes(t *testing.T) {
	cfg := populated(t)
	path := filepath.Join(cfg.Dir, DBFile)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	detected := 0
	for off := 0; off < len(orig); off += 1021 {
		b := bytes.Clone(orig)
		b[off] ^= 0x20
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(cfg)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrWrongKey) {
				t.Fatalf("offset %d: %v", off, err)
			}
			detected++
			continue
		}
		st := s.Recovered()
		if ss := st.Sessions[secretClient]; ss == nil || len(ss.Deliveries) != 1 || len(st.Retained) != 1 {
			t.Fatalf("offset %d: opened, but records changed", off)
		}
		s.Close()
		os.WriteFile(path, orig, 0o600) // Close rewrote the counter; keep the file as it was
	}
	t.Logf("%d of %d flips detected, the rest hit unused space", detected, len(orig)/1021+1)
}

// An empty store rekeys and opens afterwards (the rewrite writes its
// state even with no record to copy).
func TestRekeyEmpty(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	mustCommit(t, s, PutRetained{&Retained{Topic: "a", Payload: []byte("x")}})
	mustCommit(t, s, DeleteRetained{"a"})
	mustClose(t, s)
	if err := Rekey(cfg, NewKey{}); err != nil {
		t.Fatal(err)
	}
	mustClose(t, mustOpen(t, cfg))
}
