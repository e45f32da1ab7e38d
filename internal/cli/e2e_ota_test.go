package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/moatmq/moat/e2e/ota"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

// otaStartReceive runs moat ota receive and waits until it has subscribed.
func otaStartReceive(t *testing.T, ctx context.Context, args ...string) <-chan psResult {
	t.Helper()
	var out, errb testutil.Buffer
	ch := make(chan psResult, 1)
	go func() {
		code := Main(ctx, append([]string{"ota", "receive"}, args...), Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
		ch <- psResult{code, out.String(), errb.String()}
	}()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(errb.String(), "waiting for an update"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("ota receive did not subscribe: %s", errb.String())
		}
	}
	return ch
}

func otaWait(t *testing.T, ch <-chan psResult) psResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("ota receive did not finish")
		return psResult{}
	}
}

func TestOTAPublishReceive(t *testing.T) {
	t.Parallel()
	port := psStartMoat(t, broker.Config{})
	ctx := psTestCtx(t)
	root := t.TempDir()
	keysWriteTestPKI(t, root, "release", "intruder")
	dirs := e2eMemberDirs(t, root, "fw", "ota/line1/#",
		e2eMember{"release", keyservice.Writer}, e2eMember{"dev-1", keyservice.Reader})
	conn := []string{"-h", "127.0.0.1", "-p", port}
	fw := make([]byte, 100_000)
	rand.Read(fw)
	fwFile := filepath.Join(root, "sensor-fw.bin")
	if err := os.WriteFile(fwFile, fw, 0o644); err != nil {
		t.Fatal(err)
	}
	pem := func(name string) string { return filepath.Join(root, name) }
	publish := func(version, signer string, extra ...string) psResult {
		args := append([]string{"ota", "publish", fwFile, "--group", "line1", "--version", version, "--keys", dirs["release"],
			"--sign-cert", pem(signer + ".pem"), "--sign-key", pem(signer + ".key"), "--chunk-size", "16384"}, conn...)
		return psRun(ctx, "", append(args, extra...)...)
	}
	receive := func(out string, extra ...string) <-chan psResult {
		args := append([]string{"--group", "line1", "--name", "sensor-fw", "--keys", dirs["dev-1"], "--trust", pem("release.pem"),
			"--out", out, "--timeout", "10s"}, conn...)
		return otaStartReceive(t, ctx, append(args, extra...)...)
	}
	noFile := func(t *testing.T, path string) {
		t.Helper()
		if _, err := os.Stat(path); err == nil {
			t.Fatalf("%s was written for a refused update", path)
		}
	}

	t.Run("update", func(t *testing.T) {
		out := filepath.Join(root, "ok.bin")
		ch := receive(out, "--installed", "1.0.0")
		if r := publish("1.2.0", "release"); r.code != 0 || !strings.Contains(r.out, "7 chunks") || !strings.Contains(r.out, "ota/line1/sensor-fw, encrypted with fw") {
			t.Fatalf("publish: %d %q %s", r.code, r.out, r.err)
		}
		r := otaWait(t, ch)
		if r.code != 0 || !strings.Contains(r.out, "received sensor-fw 1.2.0") || !strings.Contains(r.err, "signed by release") {
			t.Fatalf("receive: %d %q %s", r.code, r.out, r.err)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, fw) {
			t.Fatal("received image differs from the published one")
		}
	})
	t.Run("downgrade refused", func(t *testing.T) {
		out := filepath.Join(root, "old.bin")
		ch := receive(out, "--installed", "2.0.0")
		if r := publish("1.9.9", "release"); r.code != 0 {
			t.Fatalf("publish: %d %s", r.code, r.err)
		}
		r := otaWait(t, ch)
		if r.code != 1 || !strings.Contains(r.err, "not newer than the installed one") {
			t.Fatalf("receive: %d %q %s", r.code, r.out, r.err)
		}
		noFile(t, out)
	})
	t.Run("untrusted signer refused", func(t *testing.T) {
		out := filepath.Join(root, "forged.bin")
		ch := receive(out)
		if r := publish("3.0.0", "intruder"); r.code != 0 {
			t.Fatalf("publish: %d %s", r.code, r.err)
		}
		r := otaWait(t, ch)
		if r.code != 1 || !strings.Contains(r.err, "does not verify") {
			t.Fatalf("receive: %d %q %s", r.code, r.out, r.err)
		}
		noFile(t, out)
	})

	// The next cases publish crafted updates from Go: a chunk altered in
	// transit, and an update cut short.
	m, err := loadMemberKeys(dirs["release"])
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := m.sealer(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := loadSigner(pem("release.pem"), pem("release.key"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(ctx, client.Config{Servers: []string{"mqtt://127.0.0.1:" + port}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	send := func(msgs []ota.Message) {
		t.Helper()
		for _, om := range msgs {
			if err := c.Publish(ctx, &client.Message{Topic: om.Topic, Payload: om.Payload, QoS: 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	update := func(version string) []ota.Message {
		t.Helper()
		msgs, err := ota.Publish(ota.PublishConfig{Topic: "ota/line1/sensor-fw", Name: "sensor-fw", Version: version, ChunkSize: 16384, Signer: signer, Sealer: sealer}, fw)
		if err != nil {
			t.Fatal(err)
		}
		return msgs
	}
	t.Run("tampered chunk refused", func(t *testing.T) {
		out := filepath.Join(root, "tampered.bin")
		ch := receive(out)
		msgs := update("4.0.0")
		msgs[3].Payload[len(msgs[3].Payload)-20] ^= 1
		send(msgs)
		r := otaWait(t, ch)
		if r.code != 1 || !strings.Contains(r.err, "update refused") || !strings.Contains(r.err, "authentication failed") {
			t.Fatalf("receive: %d %q %s", r.code, r.out, r.err)
		}
		noFile(t, out)
	})
	t.Run("truncated update refused", func(t *testing.T) {
		out := filepath.Join(root, "truncated.bin")
		ch := receive(out, "--timeout", "1s")
		msgs := update("5.0.0")
		send(msgs[:len(msgs)-1])
		r := otaWait(t, ch)
		if r.code != 1 || !strings.Contains(r.err, "image incomplete") || !strings.Contains(r.err, "missing 6") {
			t.Fatalf("receive: %d %q %s", r.code, r.out, r.err)
		}
		noFile(t, out)
	})
	t.Run("nothing arrives", func(t *testing.T) {
		r := otaWait(t, receive(filepath.Join(root, "none.bin"), "--timeout", "200ms"))
		if r.code != exitTimedOut || !strings.Contains(r.err, "no update") {
			t.Fatalf("receive: %d %q %s", r.code, r.out, r.err)
		}
	})
	t.Run("a key group must cover the topic", func(t *testing.T) {
		r := psRun(ctx, "", append([]string{"ota", "publish", fwFile, "--group", "line2", "--version", "1.0", "--keys", dirs["release"],
			"--sign-cert", pem("release.pem"), "--sign-key", pem("release.key")}, conn...)...)
		if r.code == 0 || !strings.Contains(r.err, `create a key group covering "ota/line2/sensor-fw"`) {
			t.Fatalf("publish: %d %s", r.code, r.err)
		}
		r = psRun(ctx, "", append([]string{"ota", "publish", fwFile, "--group", "line1", "--version", "1.0", "--sign-cert", pem("release.pem"), "--sign-key", pem("release.key")}, conn...)...)
		if r.code == 0 || !strings.Contains(r.err, "always encrypted") {
			t.Fatalf("unencrypted publish: %d %s", r.code, r.err)
		}
	})
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Disconnect(dctx)
}

// TestSecurityOTADowngradeRefusedByDefault performs a downgrade attack on
// a device that runs moat ota receive without --installed: after it
// received 1.2.0, an older, genuinely signed release (1.1.0, with a known
// vulnerability) is published to it again. The receiver keeps the version
// it last received in its state directory (mode 0600) and refuses the
// older one; nothing is written.
func TestSecurityOTADowngradeRefusedByDefault(t *testing.T) {
	port := psStartMoat(t, broker.Config{})
	ctx := psTestCtx(t)
	root := t.TempDir()
	keysWriteTestPKI(t, root, "release")
	dirs := e2eMemberDirs(t, root, "fw", "ota/line1/#",
		e2eMember{"release", keyservice.Writer}, e2eMember{"dev-1", keyservice.Reader})
	conn := []string{"-h", "127.0.0.1", "-p", port}
	fwFile := filepath.Join(root, "sensor-fw.bin")
	if err := os.WriteFile(fwFile, []byte("firmware image"), 0o644); err != nil {
		t.Fatal(err)
	}
	pem := func(name string) string { return filepath.Join(root, name) }
	publish := func(version string) {
		t.Helper()
		r := psRun(ctx, "", append([]string{"ota", "publish", fwFile, "--group", "line1", "--version", version, "--keys", dirs["release"],
			"--sign-cert", pem("release.pem"), "--sign-key", pem("release.key")}, conn...)...)
		if r.code != 0 {
			t.Fatalf("publish %s: %s", version, r.err)
		}
	}
	receive := func(out string) <-chan psResult {
		return otaStartReceive(t, ctx, append([]string{"--group", "line1", "--name", "sensor-fw", "--keys", dirs["dev-1"],
			"--trust", pem("release.pem"), "--out", out, "--timeout", "10s"}, conn...)...)
	}
	ch := receive(pem("new.bin"))
	publish("1.2.0")
	if r := otaWait(t, ch); r.code != 0 {
		t.Fatalf("receive 1.2.0: %d %s", r.code, r.err)
	}
	st, err := os.Stat(filepath.Join(dirs["dev-1"], otaStateFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", st, err)
	}
	ch = receive(pem("old.bin"))
	publish("1.1.0")
	r := otaWait(t, ch)
	if r.code != 1 || !strings.Contains(r.err, "not newer than the installed one") || !strings.Contains(r.err, "installed 1.2.0") {
		t.Fatalf("a downgrade to 1.1.0 was not refused: %d %q %s", r.code, r.out, r.err)
	}
	if _, err := os.Stat(pem("old.bin")); err == nil {
		t.Fatal("the downgraded image was written")
	}
}
