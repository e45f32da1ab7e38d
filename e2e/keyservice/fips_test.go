package keyservice_test

import (
	"crypto/fips140"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/keyservice"
)

// TestFIPSKeyService checks the key service in FIPS 140-3 mode
// (GODEBUG=fips140=on, make fips-test): a passphrase KEK (argon2id) is
// refused, a member key using X25519 cannot be registered, and a member
// with the default (ML-KEM-768 + P-256) key receives and opens its bundle.
func TestFIPSKeyService(t *testing.T) {
	if !fips140.Enabled() {
		t.Skip("not in FIPS 140-3 mode; run with GODEBUG=fips140=on (make fips-test)")
	}
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, err := keyservice.Open(keyservice.Config{Path: filepath.Join(dir, "pass.db"), Passphrase: []byte("correct horse"), Logger: quiet})
	if err == nil || !strings.Contains(err.Error(), "argon2id, which is not approved in FIPS 140-3 mode") {
		t.Fatalf("passphrase KEK in FIPS mode: %v", err)
	}
	kekBytes := make([]byte, 32)
	rand.Read(kekBytes)
	kek, err := keyservice.NewLocalKEK(kekBytes)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := keyservice.Open(keyservice.Config{Path: filepath.Join(dir, "keys.db"), KEK: kek, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if err := svc.CreateGroup("temps", "factory/+/temp", 0); err != nil {
		t.Fatal(err)
	}
	if err := svc.AddMember("temps", "platform", keyservice.Reader); err != nil {
		t.Fatal(err)
	}
	x := e2e.MemberPublicKey{KEM: e2e.KEMX25519, Key: make([]byte, 32)}
	if err := svc.Register("platform", x); !errors.Is(err, e2e.ErrNotApproved) {
		t.Fatalf("registering an x25519 key in FIPS mode: %v, want ErrNotApproved", err)
	}
	mk, err := e2e.GenerateMemberKey(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Register("platform", mk.Public()); err != nil {
		t.Fatal(err)
	}
	raw, err := svc.Bundle("platform")
	if err != nil {
		t.Fatal(err)
	}
	b, err := e2e.OpenBundle(raw, mk, "platform", svc.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if len(b.EpochKeys) != 1 || b.EpochKeys[0].Group() != "temps" {
		t.Fatalf("bundle %+v", b)
	}
}
