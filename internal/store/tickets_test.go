package store

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// sampleTicketKeys returns a listener's keys with distinctive key bytes.
func sampleTicketKeys(listener string) *TicketKeys {
	tk := &TicketKeys{Listener: listener}
	for i := range 3 {
		var k TicketKey
		for j := range k.Key {
			k.Key[j] = byte(0xA0 + i*7 + j)
		}
		k.Created = t0.Add(-time.Duration(i) * time.Hour)
		tk.Keys = append(tk.Keys, k)
	}
	return tk
}

func TestTicketKeysRoundTrip(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	a, b := sampleTicketKeys("mqtts/0.0.0.0:8883"), sampleTicketKeys("wss/0.0.0.0:8884")
	b.Keys = b.Keys[:1]
	mustCommit(t, s, PutTicketKeys{a}, PutTicketKeys{b})
	mustClose(t, s)

	s = mustOpen(t, cfg)
	got := s.Recovered().TicketKeys
	if !reflect.DeepEqual(got, map[string]*TicketKeys{a.Listener: a, b.Listener: b}) {
		t.Fatalf("recovered %v", got)
	}
	if tk, err := s.TicketKeys(a.Listener); err != nil || !reflect.DeepEqual(tk, a) {
		t.Fatalf("TicketKeys(%q) = %v, %v", a.Listener, tk, err)
	}
	if tk, err := s.TicketKeys("none"); err != nil || tk != nil {
		t.Fatalf("TicketKeys of a listener without keys = %v, %v", tk, err)
	}
	// Replace one listener's keys, delete the other's.
	a2 := sampleTicketKeys(a.Listener)
	a2.Keys = a2.Keys[1:]
	mustCommit(t, s, PutTicketKeys{a2}, DeleteTicketKeys{b.Listener}, DeleteTicketKeys{"never stored"})
	mustClose(t, s)

	rep, err := Verify(cfg)
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("Verify: %v %v", err, rep.Problems)
	}
	if rep.Counts["ticket_keys"] != 1 {
		t.Errorf("Verify counts %v, want 1 ticket_keys", rep.Counts)
	}
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if got := s.Recovered().TicketKeys; !reflect.DeepEqual(got, map[string]*TicketKeys{a.Listener: a2}) {
		t.Fatalf("after replace and delete: %v", got)
	}
	// TicketKeys reads what was committed last.
	mustCommit(t, s, PutTicketKeys{a})
	if tk, err := s.TicketKeys(a.Listener); err != nil || !reflect.DeepEqual(tk, a) {
		t.Fatalf("TicketKeys after a commit = %v, %v", tk, err)
	}
}

// TestTicketKeysInOlderStore: a store made before ticket keys existed has
// no bucket for them; it opens and verifies, and takes them once written.
func TestTicketKeysInOlderStore(t *testing.T) {
	cfg := populated(t)
	editDB(t, cfg, func(tx *bolt.Tx) error { return tx.DeleteBucket(bktTicketKeys) })
	s := mustOpen(t, cfg)
	if tk := s.Recovered().TicketKeys; tk != nil {
		t.Fatalf("ticket keys in a store without them: %v", tk)
	}
	if tk, err := s.TicketKeys("l"); err != nil || tk != nil {
		t.Fatalf("TicketKeys without the bucket = %v, %v", tk, err)
	}
	mustCommit(t, s, DeleteTicketKeys{"l"}) // nothing to delete, no bucket: fine
	mustCommit(t, s, PutTicketKeys{sampleTicketKeys("l")})
	mustClose(t, s)
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if len(s.Recovered().TicketKeys["l"].Keys) != 3 {
		t.Fatalf("recovered %v", s.Recovered().TicketKeys)
	}
}

func TestPutTicketKeysRefusesTooMany(t *testing.T) {
	s := mustOpen(t, testConfig(t))
	defer mustClose(t, s)
	tk := &TicketKeys{Listener: "l", Keys: make([]TicketKey, maxTicketKeys+1)}
	if err := s.Commit(t.Context(), PutTicketKeys{tk}); err == nil {
		t.Fatal("a record of more keys than the decoder accepts was committed")
	}
}

// TestSecurityTicketKeysStaySecret: the key bytes appear nowhere in the
// store's files (sealed like every record), nor in Export's output, nor
// when printed; a rekey drops them.
func TestSecurityTicketKeysStaySecret(t *testing.T) {
	cfg := testConfig(t)
	s := mustOpen(t, cfg)
	tk := sampleTicketKeys("PLAINTEXT-LISTENER")
	mustCommit(t, s, PutTicketKeys{tk})
	mustClose(t, s)
	var needles [][]byte
	for _, k := range tk.Keys {
		needles = append(needles, k.Key[:16], []byte(hex.EncodeToString(k.Key[:])),
			[]byte(base64.StdEncoding.EncodeToString(k.Key[:])), []byte(fmt.Sprint(k.Key[0], " ", k.Key[1], " ", k.Key[2])))
	}
	needles = append(needles, []byte("PLAINTEXT-LISTENER"))
	filepath.WalkDir(cfg.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range needles {
			if bytes.Contains(b, n) {
				t.Errorf("%s holds %q in plaintext", filepath.Base(path), n)
			}
		}
		return nil
	})
	var out bytes.Buffer
	if err := Export(cfg, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"kind":"ticket_keys"`) {
		t.Errorf("export lists no ticket keys:\n%s", out.String())
	}
	printed := fmt.Sprintf("%v %+v %#v %s", tk, tk, tk.Keys[0], tk.Keys)
	for _, n := range needles[:len(needles)-1] {
		if bytes.Contains(out.Bytes(), n) {
			t.Errorf("export holds key bytes %q:\n%s", n, out.String())
		}
		if strings.Contains(printed, string(n)) {
			t.Errorf("printing the keys shows %q: %s", n, printed)
		}
	}
	if err := Rekey(cfg, NewKey{}); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, cfg)
	defer mustClose(t, s)
	if got := s.Recovered().TicketKeys; got != nil {
		t.Errorf("ticket keys survived a rekey: %v", got)
	}
}
