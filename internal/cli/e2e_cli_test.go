package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/moatmq/moat/internal/broker"
)

// e2eMember is one member of the test key group.
type e2eMember struct {
	id   string
	role keyservice.Role
}

// e2eMemberDirs creates a key service store with one key group "temps"
// covering filter, registers the members (X25519 member keys, for speed)
// and writes a member key directory for each, as `moat keys fetch --dir`
// would, under root/<id>. It returns root/<id> by member ID.
func e2eMemberDirs(t *testing.T, root, group, filter string, members ...e2eMember) map[string]string {
	t.Helper()
	kek := make([]byte, 32)
	rand.Read(kek)
	lk, err := keyservice.NewLocalKEK(kek)
	if err != nil {
		t.Fatal(err)
	}
	s, err := keyservice.Open(keyservice.Config{Path: filepath.Join(root, "keys.db"), KEK: lk, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateGroup(group, filter, 0); err != nil {
		t.Fatal(err)
	}
	dirs := map[string]string{}
	for _, m := range members {
		if err := s.AddMember(group, m.id, m.role); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range members {
		mk, err := e2e.GenerateMemberKey(e2e.KEMX25519)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Register(m.id, mk.Public()); err != nil {
			t.Fatal(err)
		}
		bundle, err := s.Bundle(m.id)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(root, m.id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		kp, _ := mk.MarshalPEM()
		for name, data := range map[string][]byte{memberIDFile: []byte(m.id + "\n"), memberKeyName: kp, memberBundle: bundle} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := keysCheckPin(filepath.Join(dir, memberPinFile), s.PublicKey()); err != nil {
			t.Fatal(err)
		}
		dirs[m.id] = dir
	}
	return dirs
}

// e2eRawKeyFile writes a random raw key as hex (mode 0600).
func e2eRawKeyFile(t *testing.T, path string) []byte {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	if err := os.WriteFile(path, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestE2EPubSub(t *testing.T) {
	t.Parallel()
	port := psStartMoat(t, broker.Config{})
	ctx := psTestCtx(t)
	conn := []string{"-h", "127.0.0.1", "-p", port}
	root := t.TempDir()
	keysWriteTestPKI(t, root, "sensor-1", "intruder")
	dirs := e2eMemberDirs(t, root, "temps", "factory/+/temp",
		e2eMember{"sensor-1", keyservice.Writer}, e2eMember{"sensor-2", keyservice.Writer}, e2eMember{"platform", keyservice.Reader})
	rawKey := filepath.Join(root, "raw.key")
	e2eRawKeyFile(t, rawKey)
	otherRaw := filepath.Join(root, "other.key")
	e2eRawKeyFile(t, otherRaw)
	sub := func(args ...string) <-chan psResult {
		return psRunAsync(ctx, append(append([]string{"sub"}, conn...), args...)...)
	}
	pub := func(args ...string) func() error {
		return psMoatPub(ctx, append(conn, args...)...)
	}
	pem := func(name string) string { return filepath.Join(root, name) }

	t.Run("group mode", func(t *testing.T) {
		r := psPubUntil(t, sub("--decrypt", "--keys", dirs["platform"], "-t", "factory/+/temp", "-C", "1", "-v"),
			pub("--encrypt", "--keys", dirs["sensor-1"], "-t", "factory/l1/temp", "-m", "21.5 C"))
		if r.code != 0 || r.out != "factory/l1/temp 21.5 C\n" {
			t.Fatalf("sub: %d %q %s", r.code, r.out, r.err)
		}
	})
	t.Run("raw mode", func(t *testing.T) {
		r := psPubUntil(t, sub("--raw-key", rawKey, "-t", "raw/dev", "-C", "1"),
			pub("--raw-key", rawKey, "-t", "raw/dev", "-m", "raw hello"))
		if r.code != 0 || r.out != "raw hello\n" {
			t.Fatalf("sub: %d %q %s", r.code, r.out, r.err)
		}
	})
	t.Run("what does not open is reported, never printed", func(t *testing.T) {
		// A plaintext impostor retained on the topic, then a real message.
		if err := pub("-t", "factory/l2/temp", "-m", "FORGED 99 C", "-r", "-q", "1")(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pub("-t", "factory/l2/temp", "-n", "-r", "-q", "1")() })
		r := psPubUntil(t, sub("--decrypt", "--keys", dirs["platform"], "-t", "factory/l2/temp", "-C", "1"),
			pub("--encrypt", "--keys", dirs["sensor-1"], "-t", "factory/l2/temp", "-m", "20.0 C"))
		if r.code != 0 || r.out != "20.0 C\n" || strings.Contains(r.out, "FORGED") {
			t.Fatalf("sub: %d %q %s", r.code, r.out, r.err)
		}
		if !strings.Contains(r.err, `message on "factory/l2/temp" refused: e2e: malformed`) {
			t.Fatalf("refusal not reported: %s", r.err)
		}
		// The wrong raw key: refused on stderr, nothing on stdout.
		r = psPubUntil(t, sub("--raw-key", otherRaw, "-t", "raw/wrong", "-W", "1"),
			pub("--raw-key", rawKey, "-t", "raw/wrong", "-m", "secret"))
		if r.code != exitTimedOut || r.out != "" || !strings.Contains(r.err, "refused: e2e: message authentication failed") {
			t.Fatalf("wrong key: %d %q %s", r.code, r.out, r.err)
		}
	})
	t.Run("signatures", func(t *testing.T) {
		r := psPubUntil(t, sub("--decrypt", "--keys", dirs["platform"], "--trust", pem("sensor-1.pem"), "--require-signature", "-t", "factory/l3/temp", "-C", "1", "--json"),
			pub("--encrypt", "--keys", dirs["sensor-1"], "--sign-cert", pem("sensor-1.pem"), "--sign-key", pem("sensor-1.key"), "-t", "factory/l3/temp", "-m", "19.0 C"))
		var j struct {
			Topic, Payload string
			E2E            jsonE2E
		}
		if r.code != 0 || json.Unmarshal([]byte(r.out), &j) != nil {
			t.Fatalf("sub: %d %q %s", r.code, r.out, r.err)
		}
		if j.Payload != "19.0 C" || j.E2E.Mode != "group" || j.E2E.Group != "temps" || j.E2E.Sender != "sensor-1" || j.E2E.Signer != "sensor-1" || j.E2E.Epoch != 1 {
			t.Fatalf("json: %+v", j)
		}
		// A signed message reaching a subscriber without --trust is
		// refused with a hint saying what to pass.
		r = psPubUntil(t, sub("--decrypt", "--keys", dirs["platform"], "-t", "factory/l6/temp", "-W", "1"),
			pub("--encrypt", "--keys", dirs["sensor-1"], "--sign-cert", pem("sensor-1.pem"), "--sign-key", pem("sensor-1.key"), "-t", "factory/l6/temp", "-m", "signed"))
		if r.code != exitTimedOut || r.out != "" || !strings.Contains(r.err, "no trust store") || !strings.Contains(r.err, "hint: the message is signed: pass --trust FILE") {
			t.Fatalf("signed without --trust: %d %q %s", r.code, r.out, r.err)
		}
		// Unsigned messages are refused when a signature is required.
		r = psPubUntil(t, sub("--decrypt", "--keys", dirs["platform"], "--trust", pem("sensor-1.pem"), "--require-signature", "-t", "factory/l4/temp", "-W", "1"),
			pub("--encrypt", "--keys", dirs["sensor-1"], "-t", "factory/l4/temp", "-m", "unsigned"))
		if r.code != exitTimedOut || r.out != "" || !strings.Contains(r.err, "not signed") {
			t.Fatalf("unsigned: %d %q %s", r.code, r.out, r.err)
		}
		// A signing certificate that is not the member's is refused by pub.
		if r := psRun(ctx, "", append(append([]string{"pub"}, conn...), "--encrypt", "--keys", dirs["sensor-1"], "--sign-cert", pem("intruder.pem"),
			"--sign-key", pem("intruder.key"), "-t", "factory/l4/temp", "-m", "x")...); r.code == 0 || !strings.Contains(r.err, "not the member ID") {
			t.Fatalf("foreign signing certificate: %d %s", r.code, r.err)
		}
	})
	t.Run("a reader cannot publish, a writer cannot read", func(t *testing.T) {
		r := psRun(ctx, "", append(append([]string{"pub"}, conn...), "--encrypt", "--keys", dirs["sensor-1"], "-t", "office/co2", "-m", "x")...)
		if r.code == 0 || !strings.Contains(r.err, "no key") {
			t.Fatalf("uncovered topic: %d %s", r.code, r.err)
		}
		// sensor-1 holds only its own sender key: sensor-2's messages do
		// not open for it.
		r = psPubUntil(t, sub("--decrypt", "--keys", dirs["sensor-1"], "-t", "factory/l5/temp", "-W", "1"),
			pub("--encrypt", "--keys", dirs["sensor-2"], "-t", "factory/l5/temp", "-m", "other writer"))
		if r.code != exitTimedOut || r.out != "" || !strings.Contains(r.err, "refused") {
			t.Fatalf("writer-only member read a message: %d %q %s", r.code, r.out, r.err)
		}
	})

	loose := filepath.Join(root, "loose.key")
	e2eRawKeyFile(t, loose)
	os.Chmod(loose, 0o644)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"encrypt without keys", []string{"pub", "--encrypt", "-t", "a", "-m", "x"}, "--encrypt needs --keys DIR"},
		{"keys without encrypt", []string{"pub", "--keys", dirs["sensor-1"], "-t", "a", "-m", "x"}, "add --encrypt"},
		{"raw and group", []string{"sub", "--decrypt", "--keys", dirs["platform"], "--raw-key", rawKey, "-t", "a"}, "not both"},
		{"raw key readable by others", []string{"pub", "--raw-key", loose, "-t", "a", "-m", "x"}, "chmod 600"},
		{"require signature without trust", []string{"sub", "--decrypt", "--keys", dirs["platform"], "--require-signature", "-t", "a"}, "needs --trust"},
		{"signing in raw mode", []string{"pub", "--raw-key", rawKey, "--sign-cert", pem("sensor-1.pem"), "--sign-key", pem("sensor-1.key"), "-t", "a", "-m", "x"}, "raw format cannot carry"},
		{"not a key directory", []string{"sub", "--decrypt", "--keys", root + "/nowhere", "-t", "a"}, "moat keys fetch --server URL --dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := psRun(context.Background(), "", append(tc.args, conn...)...)
			if r.code == 0 || !strings.Contains(r.err, tc.want) {
				t.Fatalf("exit %d, stderr %q, want %q", r.code, r.err, tc.want)
			}
		})
	}
}
