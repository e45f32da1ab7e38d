package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

// TestSecurityWriterFollowsBundles performs the attack of a removed member
// on a writer that has not fetched since the removal: intruder, a reader
// of temps, is removed (epoch 2), but sensor-1's key directory still holds
// the epoch-1 bundle, which intruder also holds. moat pub --encrypt
// subscribes to the member's bundle topic before sealing, applies the
// epoch-2 bundle the key service published, and seals with epoch 2: the
// intruder's epoch-1 key no longer opens what the writer sends.
func TestSecurityWriterFollowsBundles(t *testing.T) {
	t.Parallel()
	port := psStartMoat(t, broker.Config{})
	mqttURL := "mqtt://127.0.0.1:" + port
	conn := []string{"-h", "127.0.0.1", "-p", port}
	ctx := psTestCtx(t)
	dir := t.TempDir()
	keysWriteTestPKI(t, dir, "sensor-1", "platform", "intruder")
	pem := func(name string) string { return filepath.Join(dir, name) }
	store := []string{"--data", pem("keys"), "--kek-file", pem("kek")}
	keys := func(args ...string) string {
		t.Helper()
		r := psRun(ctx, "", append(append([]string{"keys"}, args...), store...)...)
		if r.code != 0 {
			t.Fatalf("moat keys %v: exit %d: %s", args, r.code, r.err)
		}
		return r.out
	}
	if r := psRun(ctx, "", "keys", "genkek", pem("kek")); r.code != 0 {
		t.Fatal(r.err)
	}
	keys("group", "create", "temps", "--filter", "factory/+/temp")
	keys("member", "add", "temps", "sensor-1", "--role", "writer")
	keys("member", "add", "temps", "platform", "--role", "reader")
	keys("member", "add", "temps", "intruder", "--role", "reader")
	serve := func() (func(), string, *testutil.Buffer) {
		t.Helper()
		sctx, cancel := context.WithCancel(ctx)
		errb, done := e2eRunAsync(sctx, append([]string{"keys", "serve", "--listen", "127.0.0.1:0", "--cert", pem("server.pem"), "--key", pem("server.key"),
			"--client-ca", pem("ca.pem"), "--mqtt", mqttURL}, store...)...)
		m := regexp.MustCompile(`serving on (https://127\.0\.0\.1:\d+)`).FindStringSubmatch(e2eWaitFor(t, errb, "serving on"))
		return func() {
			cancel()
			if r := <-done; r.code != 0 {
				t.Fatalf("keys serve: exit %d: %s", r.code, r.err)
			}
		}, m[1], errb
	}
	stop, url, _ := serve()
	for _, id := range []string{"sensor-1", "platform", "intruder"} {
		r := psRun(ctx, "", "keys", "fetch", "--server", url, "--dir", pem(id+".d"), "--cert", pem(id+".pem"), "--key", pem(id+".key"), "--ca", pem("ca.pem"))
		if r.code != 0 {
			t.Fatalf("fetch %s: %s", id, r.err)
		}
	}
	stop()
	if out := keys("remove", "temps", "intruder"); !strings.Contains(out, "new epoch 2") {
		t.Fatalf("remove: %s", out)
	}
	stop, _, serveLog := serve()
	defer stop()
	e2eWaitFor(t, serveLog, "bundles published over MQTT")

	var pubErr string
	pub := func() error {
		r := psRun(ctx, "", append([]string{"pub", "--encrypt", "--keys", pem("sensor-1.d"), "-t", "factory/l1/temp", "-m", "21.5"}, conn...)...)
		if r.code != 0 {
			return fmt.Errorf("moat pub exit %d: %s", r.code, r.err)
		}
		pubErr += r.err
		return nil
	}
	sub := psRunAsync(ctx, append([]string{"sub", "--decrypt", "--keys", pem("platform.d"), "-t", "factory/+/temp", "-C", "1", "--json"}, conn...)...)
	r := psPubUntil(t, sub, pub)
	var j struct {
		Payload string
		E2E     jsonE2E
	}
	if r.code != 0 || json.Unmarshal([]byte(r.out), &j) != nil || j.Payload != "21.5" {
		t.Fatalf("sub: %d %q %s", r.code, r.out, r.err)
	}
	if j.E2E.Epoch != 2 {
		t.Fatalf("the writer sealed with epoch %d after the removal; the removed member can read it", j.E2E.Epoch)
	}
	if !strings.Contains(pubErr, "key bundle") || !strings.Contains(pubErr, "applied") {
		t.Fatalf("the writer did not report applying its bundle: %q", pubErr)
	}
}

// TestSecurityRetainFlagReplay performs the retain-flag attack through
// the real commands: an attacker without any key republishes, with the
// MQTT retain flag set, an encrypted command it captured ten minutes ago
// ("unlock-door", sealed without the retained marker). moat sub --decrypt
// used to open every message carrying the retain flag under the retained
// rules (24 h, no replay window); it must refuse this one as too old, and
// still print the fresh message published after it.
func TestSecurityRetainFlagReplay(t *testing.T) {
	port := psStartMoat(t, broker.Config{})
	ctx := psTestCtx(t)
	root := t.TempDir()
	dirs := e2eMemberDirs(t, root, "doors", "doors/#",
		e2eMember{"door-ctl", keyservice.Writer}, e2eMember{"door", keyservice.Reader})
	conn := []string{"-h", "127.0.0.1", "-p", port}
	const topic = "doors/front/cmd"

	m, err := loadMemberKeys(dirs["door-ctl"])
	if err != nil {
		t.Fatal(err)
	}
	past := func() time.Time { return time.Now().Add(-10 * time.Minute) }
	sealer, err := e2e.NewGroupSealer(e2e.SealerConfig{Sender: m.id, Keys: m.ring, Sequence: &e2e.MemorySequenceStore{}, Now: past})
	if err != nil {
		t.Fatal(err)
	}
	captured, err := sealer.Seal(topic, []byte("unlock-door"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(ctx, client.Config{Servers: []string{"mqtt://127.0.0.1:" + port}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Publish(ctx, &client.Message{Topic: topic, Payload: captured, QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}

	sub := psRunAsync(ctx, append([]string{"sub", "--decrypt", "--keys", dirs["door"], "-t", topic, "-C", "1"}, conn...)...)
	pub := psMoatPub(ctx, append([]string{"--encrypt", "--keys", dirs["door-ctl"], "-t", topic, "-m", "status"}, conn...)...)
	r := psPubUntil(t, sub, pub)
	if r.code != 0 || strings.Contains(r.out, "unlock-door") || !strings.Contains(r.out, "status") {
		t.Fatalf("sub opened the replayed command: %d %q %s", r.code, r.out, r.err)
	}
	if !strings.Contains(r.err, "refused") || !strings.Contains(r.err, "too old") {
		t.Fatalf("the replayed command is not reported as too old: %s", r.err)
	}
}
