package keyservice_test

import (
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/keyservice"
)

// A key service creates a group, adds members, and issues a member its
// bundle; the member opens it with its HPKE key and the pinned service key.
func Example() {
	dir, _ := os.MkdirTemp("", "keys")
	defer os.RemoveAll(dir)
	kekBytes := make([]byte, 32)
	rand.Read(kekBytes)
	kek, _ := keyservice.NewLocalKEK(kekBytes)
	svc, err := keyservice.Open(keyservice.Config{
		Path:   filepath.Join(dir, "keys.db"),
		KEK:    kek,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer svc.Close()
	svc.CreateGroup("temps", "factory/+/temp", 0)
	svc.AddMember("temps", "platform", keyservice.Reader)

	// On the member: generate a key and register it (over mutual TLS in
	// practice: keyservice.Client.Register).
	mk, _ := e2e.GenerateMemberKey(e2e.DefaultKEM)
	if err := svc.Register("platform", mk.Public()); err != nil {
		log.Fatal(err)
	}
	raw, _ := svc.Bundle("platform")
	b, err := e2e.OpenBundle(raw, mk, "platform", svc.PublicKey())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(b.EpochKeys[0].Group(), b.EpochKeys[0].Epoch())

	svc.RemoveMember("temps", "platform")
	_, err = svc.Bundle("platform")
	fmt.Println(err != nil)
	// Output:
	// temps 1
	// true
}
