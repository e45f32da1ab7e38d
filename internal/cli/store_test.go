package cli

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/moatmq/moat/internal/store"
)

func runStore(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), append([]string{"store"}, args...), Stdio{In: strings.NewReader(stdin), Out: &out, Err: &errb})
	return code, out.String(), errb.String()
}

func TestStoreCommands(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, 32)
	t.Setenv(envStoreKey, hex.EncodeToString(key))
	t.Setenv(envStorePassphrase, "")
	dir := filepath.Join(t.TempDir(), "store")
	kek, _ := keyservice.NewLocalKEK(key)
	s, err := store.Open(store.Config{Dir: dir, KEK: kek})
	if err != nil {
		t.Fatal(err)
	}
	m := &store.Message{ID: s.NextID(), Topic: "plant/secret-topic", Payload: []byte("secret payload"), QoS: 1}
	err = s.Commit(context.Background(), store.PutSession{Session: &store.Session{ClientID: "dev-1"}}, store.PutMessage{Message: m},
		store.PutDelivery{Delivery: &store.Delivery{ClientID: "dev-1", Seq: s.NextID(), MsgID: m.ID, QoS: 1}},
		store.PutRetained{Retained: &store.Retained{Topic: "plant/status", Payload: []byte("up")}})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	code, out, errs := runStore(t, "", "verify", "--data", dir)
	if code != 0 || !strings.Contains(out, "deliveries    1") || !strings.Contains(out, "ok") {
		t.Fatalf("verify: %d\n%s%s", code, out, errs)
	}
	code, out, errs = runStore(t, "", "export", "--data", dir)
	if code != 0 || !strings.Contains(out, `"Topic":"plant/secret-topic"`) || !strings.Contains(out, `"Payload":"c2VjcmV0IHBheWxvYWQ="`) {
		t.Fatalf("export: %d\n%s%s", code, out, errs)
	}
	if code, out, errs = runStore(t, "", "compact", "--data", dir); code != 0 {
		t.Fatalf("compact: %d\n%s%s", code, out, errs)
	}

	// Rekey to a passphrase read from standard input, then verify with it.
	newPass := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(newPass, []byte("a new store passphrase\n"), 0o600)
	if code, out, errs = runStore(t, "", "rekey", "--data", dir, "--new-passphrase-file", newPass); code != 0 {
		t.Fatalf("rekey: %d\n%s%s", code, out, errs)
	}
	// Old and new passphrase both on standard input, one per line.
	t.Setenv(envStoreKey, "")
	if code, out, errs = runStore(t, "a new store passphrase\nanother passphrase\n", "rekey", "--data", dir, "--passphrase", "--new-passphrase"); code != 0 {
		t.Fatalf("rekey with passphrases on stdin: %d\n%s%s", code, out, errs)
	}
	if code, out, errs = runStore(t, "another passphrase\n", "rekey", "--data", dir, "--passphrase", "--new-passphrase-file", newPass); code != 0 {
		t.Fatalf("rekey back: %d\n%s%s", code, out, errs)
	}
	t.Setenv(envStoreKey, hex.EncodeToString(key))
	if code, _, errs = runStore(t, "", "verify", "--data", dir); code == 0 || !strings.Contains(errs, "created with a passphrase") {
		t.Fatalf("verify with the old key after rekey: %d %s", code, errs)
	}
	t.Setenv(envStoreKey, "")
	if code, out, errs = runStore(t, "a new store passphrase\n", "verify", "--data", dir, "--passphrase"); code != 0 {
		t.Fatalf("verify with the passphrase on stdin: %d\n%s%s", code, out, errs)
	}

	// Two key sources are refused rather than guessed between.
	t.Setenv(envStorePassphrase, "x")
	if code, _, errs = runStore(t, "", "verify", "--data", dir, "--passphrase-file", newPass); code == 0 || !strings.Contains(errs, "one key source") {
		t.Fatalf("two key sources: %d %s", code, errs)
	}
	t.Setenv(envStorePassphrase, "")

	// A damaged store: verify reports it and exits non-zero.
	db := filepath.Join(dir, store.DBFile)
	os.WriteFile(db, make([]byte, 16384), 0o600)
	code, out, _ = runStore(t, "a new store passphrase\n", "verify", "--data", dir, "--passphrase")
	if code != 1 || !strings.Contains(out, "problem:") {
		t.Fatalf("verify of a damaged store: %d\n%s", code, out)
	}
}
