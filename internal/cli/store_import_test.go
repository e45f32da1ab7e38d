package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/store/mosquittodb"
)

// mosquittoDB is a file Debian's mosquitto 2.0.11 wrote (see
// internal/store/mosquittodb, TestGolden).
const mosquittoDB = "../store/mosquittodb/testdata/mosquitto-2.0.db"

func TestStoreImportMosquitto(t *testing.T) {
	t.Setenv(envStoreKey, "")
	t.Setenv(envStorePassphrase, "")
	dir := filepath.Join(t.TempDir(), "store")
	// The fixture holds a retained message with a one-day expiry: import
	// at the hour the file was written, or the test fails a day later.
	fixture, err := os.ReadFile(mosquittoDB)
	if err != nil {
		t.Fatal(err)
	}
	fdb, err := mosquittodb.Parse(fixture)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range fdb.Clients {
		if c.ID == "dev-v5" {
			written := time.Unix(c.SessionExpiryTime-3600, 0)
			importNow = func() time.Time { return written }
		}
	}
	t.Cleanup(func() { importNow = time.Now })

	// A damaged file is refused before any store is created.
	b := fixture
	cut := filepath.Join(t.TempDir(), "cut.db")
	os.WriteFile(cut, b[:300], 0o600)
	code, _, errs := runStore(t, "", "import-mosquitto", "--data", dir, cut)
	if code == 0 || !strings.Contains(errs, "mosquittodb: byte ") {
		t.Fatalf("truncated file: %d %s", code, errs)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("a store was created for a refused file: %v", err)
	}

	// Into a new store: created with its key file, everything counted.
	code, out, errs := runStore(t, "", "import-mosquitto", "--data", dir, mosquittoDB)
	if code != 0 {
		t.Fatalf("import: %d\n%s%s", code, out, errs)
	}
	for _, want := range []string{"sessions       2", "subscriptions  4", "retained       3", "messages       5", "skipped        1", "$SYS message", "note: byte 1078",
		"3  with an unknown publisher: not replayed while check_retain_source is on (give -c"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errs, "created the store") {
		t.Errorf("no word of the new store: %s", errs)
	}
	if fi, err := os.Stat(filepath.Join(dir, store.KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	code, out, _ = runStore(t, "", "export", "--data", dir)
	if code != 0 || !strings.Contains(out, `"Topic":"plant/1/config"`) || !strings.Contains(out, `"ClientID":"dev-v5"`) {
		t.Fatalf("export after import: %d\n%s", code, out)
	}

	// Again: refused, the store holds sessions.
	code, _, errs = runStore(t, "", "import-mosquitto", "--data", dir, mosquittoDB)
	if code == 0 || !strings.Contains(errs, "already holds 2 sessions") || !strings.Contains(errs, "--merge") {
		t.Fatalf("second import: %d %s", code, errs)
	}
	// With --merge: nothing is duplicated or replaced.
	code, out, errs = runStore(t, "", "import-mosquitto", "--merge", "--data", dir, mosquittoDB)
	if code != 0 || !strings.Contains(out, "sessions       0") || !strings.Contains(out, "retained       0") ||
		!strings.Contains(out, "session already in the store") || !strings.Contains(out, "retained topic already in the store") {
		t.Fatalf("merge: %d\n%s%s", code, out, errs)
	}
	code, out, _ = runStore(t, "", "verify", "--data", dir)
	if code != 0 || !strings.Contains(out, "sessions      2") || !strings.Contains(out, "retained      3") || !strings.Contains(out, "deliveries    5") {
		t.Fatalf("verify: %d\n%s", code, out)
	}

	// A size limit below the file's size.
	if code, _, errs = runStore(t, "", "import-mosquitto", "--max-size", "100", "--data", dir, mosquittoDB); code == 0 || !strings.Contains(errs, "limit") {
		t.Fatalf("max-size: %d %s", code, errs)
	}

	// With the broker's mosquitto.conf, the retained messages keep their
	// publisher on the listener of the port Mosquitto saved (the file was
	// written by a broker listening on 33315).
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	os.WriteFile(conf, []byte("listener 1883 127.0.0.1\nlistener 33315 127.0.0.1\nallow_anonymous true\n"), 0o600)
	dir2 := filepath.Join(t.TempDir(), "store")
	code, out, errs = runStore(t, "", "import-mosquitto", "-c", conf, "--data", dir2, mosquittoDB)
	if code != 0 || strings.Contains(out, "unknown publisher") {
		t.Fatalf("import with -c: %d\n%s%s", code, out, errs)
	}
	code, out, _ = runStore(t, "", "export", "--data", dir2)
	if code != 0 || strings.Count(out, `"Listener":"tcp-33315"`) != 3 {
		t.Fatalf("export after import with -c: %d\n%s", code, out)
	}
}
