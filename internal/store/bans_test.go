package store

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// sampleBan returns a ban with distinctive field values.
func sampleBan(id string) *Ban {
	return &Ban{ID: id, Kind: "username", Value: "mallory-" + id, Reason: "password guessing", Source: "auth_failures",
		Created: t0, Expires: t0.Add(5 * time.Minute)}
}

func sortedBans(b []*Ban) []*Ban {
	b = slices.Clone(b)
	slices.SortFunc(b, func(x, y *Ban) int { return strings.Compare(x.ID, y.ID) })
	return b
}

// TestBansRoundTrip: bans are stored, replaced, deleted and recovered;
// Bans reads what was committed last; Verify counts them; a rekey keeps
// them (they are not secrets, unlike ticket keys).
func TestBansRoundTrip(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	a, b, c := sampleBan("0a"), sampleBan("0b"), sampleBan("0c")
	c.Expires = time.Time{}
	mustCommit(t, s, PutBan{a}, PutBan{b}, PutBan{c})
	if got, err := s.Bans(); err != nil || !reflect.DeepEqual(sortedBans(got), []*Ban{a, b, c}) {
		t.Fatalf("Bans = %v, %v", got, err)
	}
	a2 := *a
	a2.Reason = "changed"
	mustCommit(t, s, PutBan{&a2}, DeleteBan{b.ID}, DeleteBan{"never stored"})
	mustClose(t, s)

	rep, err := Verify(cfg)
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify: %v %v", err, rep.Problems)
	}
	if rep.Counts["bans"] != 2 {
		t.Errorf("Verify counts %v, want 2 bans", rep.Counts)
	}
	var out bytes.Buffer
	if err := Export(cfg, &out); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), `"kind":"ban"`) != 2 || !strings.Contains(out.String(), "mallory-0c") {
		t.Errorf("export:\n%s", out.String())
	}
	if err := Rekey(cfg, NewKey{}); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if got := sortedBans(s.Recovered().Bans); !reflect.DeepEqual(got, []*Ban{&a2, c}) {
		t.Fatalf("recovered after rekey: %v", got)
	}
	if got, err := s.Bans(); err != nil || len(got) != 2 {
		t.Fatalf("Bans after rekey = %v, %v", got, err)
	}
}

// TestBansInOlderStore: a store made before bans were kept has no bucket
// for them; it opens and verifies with no bans, and takes them once
// written.
func TestBansInOlderStore(t *testing.T) {
	cfg := populated(t)
	editDB(t, cfg, func(tx *bolt.Tx) error {
		if tx.Bucket(bktBans) == nil {
			return nil
		}
		return tx.DeleteBucket(bktBans)
	})
	s := mustOpen(t, cfg)
	if b := s.Recovered().Bans; b != nil {
		t.Fatalf("bans in a store without them: %v", b)
	}
	if b, err := s.Bans(); err != nil || b != nil {
		t.Fatalf("Bans without the bucket = %v, %v", b, err)
	}
	mustCommit(t, s, DeleteBan{"0a"}) // no bucket: nothing to delete
	mustCommit(t, s, PutBan{sampleBan("0a")})
	mustClose(t, s)
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if len(s.Recovered().Bans) != 1 {
		t.Fatalf("recovered %v", s.Recovered().Bans)
	}
}

func TestPutBanRefusesBadFields(t *testing.T) {
	s := mustOpen(t, testConfig(t))
	defer mustClose(t, s)
	for name, b := range map[string]*Ban{
		"no ID":     {Kind: "ip", Value: "1.2.3.4/32"},
		"long ID":   {ID: strings.Repeat("a", maxBanID+1), Kind: "ip"},
		"no kind":   {ID: "0a"},
		"long text": {ID: "0a", Kind: "ip", Reason: strings.Repeat("r", maxBanReason+1)},
		"nil":       nil,
	} {
		if err := s.Commit(t.Context(), PutBan{b}); err == nil {
			t.Errorf("%s: committed", name)
		}
	}
}

// TestSecurityBansSealed: a banned username appears nowhere in the
// store's files; a ban record removed or replayed under another key is
// detected as any record is.
func TestSecurityBansSealed(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	mustCommit(t, s, PutBan{sampleBan("0a")}, PutBan{sampleBan("0b")})
	mustClose(t, s)
	filepath.WalkDir(cfg.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"mallory-0a", "password guessing"} {
			if bytes.Contains(b, []byte(n)) {
				t.Errorf("%s holds %q in plaintext", filepath.Base(path), n)
			}
		}
		return nil
	})
	// One ban record deleted behind the store's back.
	editDB(t, cfg, func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bktBans).Cursor().First()
		return tx.Bucket(bktBans).Delete(k)
	})
	if _, err := Open(cfg); err == nil {
		t.Fatal("a store with a ban record removed opened")
	} else {
		t.Log(err)
	}
}

func TestDecodeBanRejects(t *testing.T) {
	good := encodeRecord(sampleBan("0a"))
	if r, err := decodeRecord(good); err != nil || !reflect.DeepEqual(r, sampleBan("0a")) {
		t.Fatalf("round trip: %v %v", r, err)
	}
	for name, b := range map[string][]byte{
		"truncated": good[:len(good)-1],
		"trailing":  append(bytes.Clone(good), 0),
		"empty ID":  encodeRecord(&Ban{Kind: "ip"}),
		"long kind": encodeRecord(&Ban{ID: "0a", Kind: strings.Repeat("k", maxBanKind+1)}),
	} {
		if _, err := decodeRecord(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
