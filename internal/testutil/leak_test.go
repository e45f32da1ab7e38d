package testutil

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
)

// TestNATSStoreRaceNamesMatch: the two goroutines natsStoreRace ignores
// are named as goleak sees them. A JetStream server with one file
// stream runs both; a check that ignores only what ran before the server
// names them, and the same check with natsStoreRace does not.
func TestNATSStoreRaceNamesMatch(t *testing.T) {
	before := goleak.IgnoreCurrent()
	srv, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoSigs:    true,
		NoLog:     true,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: "S", Subjects: []string{"s"}, Storage: nats.FileStorage}); err != nil {
		t.Fatal(err)
	}

	names := []string{"(*fileStore).flushStreamStateLoop", "ats.Register.func1"}
	all := goleak.Find(before)
	if all == nil {
		t.Fatal("no goroutines of the server found")
	}
	for _, n := range names {
		if !strings.Contains(all.Error(), n) {
			t.Fatalf("the running server has no goroutine %s", n)
		}
	}
	rest := goleak.Find(append(natsStoreRace(), before)...)
	if rest == nil {
		t.Fatal("ignoring the store goroutines hid every server goroutine")
	}
	for _, n := range names {
		if strings.Contains(rest.Error(), n) {
			t.Errorf("goroutine %s is not ignored", n)
		}
	}
}
