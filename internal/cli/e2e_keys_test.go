package cli

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/moatmq/moat/internal/broker"
	"github.com/moatmq/moat/internal/testutil"
)

// e2eRunAsync runs the moat command line in a goroutine; the returned
// buffer shows its stderr while it runs.
func e2eRunAsync(ctx context.Context, args ...string) (*testutil.Buffer, <-chan psResult) {
	var out, errb testutil.Buffer
	ch := make(chan psResult, 1)
	go func() {
		code := Main(ctx, args, Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
		ch <- psResult{code, out.String(), errb.String()}
	}()
	return &errb, ch
}

// e2eWaitFor polls buf until it contains want.
func e2eWaitFor(t *testing.T, buf *testutil.Buffer, want string) string {
	t.Helper()
	var s string
	testutil.CheckFor(t, 15*time.Second, func() error {
		if s = buf.String(); !strings.Contains(s, want) {
			return fmt.Errorf("waited in vain for %q in:\n%s", want, s)
		}
		return nil
	})
	return s
}

// TestE2EKeyFlowOverMQTT walks the documented flow with the real commands:
// create a group, add members, serve keys over HTTPS and MQTT, members
// fetch their bundles, publish encrypted, subscribe decrypting; then rotate
// the epoch: the key service republishes the bundles on start, the running
// subscriber applies its new bundle live, the sensor fetches its own over
// MQTT, and messages of the new epoch flow.
func TestE2EKeyFlowOverMQTT(t *testing.T) {
	t.Parallel()
	port := psStartMoat(t, broker.Config{})
	mqttURL := "mqtt://127.0.0.1:" + port
	conn := []string{"-h", "127.0.0.1", "-p", port}
	ctx := psTestCtx(t)
	dir := t.TempDir()
	keysWriteTestPKI(t, dir, "sensor-1", "platform")
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
	// The first fetch prints the key ID it pins, for comparing with what
	// status prints on the service (docs/e2e.md); later ones confirm it.
	svcID := regexp.MustCompile(`service key ID: ([0-9a-f]+)`).FindStringSubmatch(keys("status"))
	if svcID == nil {
		t.Fatal("keys status prints no service key ID")
	}

	serve := func() (func(), string, *testutil.Buffer) {
		t.Helper()
		sctx, cancel := context.WithCancel(ctx)
		errb, done := e2eRunAsync(sctx, append([]string{"keys", "serve", "--listen", "127.0.0.1:0", "--cert", pem("server.pem"), "--key", pem("server.key"),
			"--client-ca", pem("ca.pem"), "--mqtt", mqttURL}, store...)...)
		m := regexp.MustCompile(`serving on (https://127\.0\.0\.1:\d+)`).FindStringSubmatch(e2eWaitFor(t, errb, "serving on"))
		stop := func() {
			cancel()
			if r := <-done; r.code != 0 {
				t.Fatalf("keys serve: exit %d: %s", r.code, r.err)
			}
		}
		return stop, m[1], errb
	}
	stop, url, _ := serve()
	fetch := func(id string, args ...string) string {
		t.Helper()
		r := psRun(ctx, "", append([]string{"keys", "fetch", "--dir", pem(id + ".d"), "--cert", pem(id + ".pem"), "--key", pem(id + ".key"), "--ca", pem("ca.pem")}, args...)...)
		if r.code != 0 {
			t.Fatalf("keys fetch %s %v: exit %d: %s", id, args, r.code, r.err)
		}
		return r.out
	}
	if out := fetch("sensor-1", "--server", url); !strings.Contains(out, "service key ID "+svcID[1]+" pinned in") {
		t.Fatalf("first fetch does not print the pinned key ID %s: %s", svcID[1], out)
	}
	fetch("platform", "--server", url, "--kem", "x25519")
	// Registration makes the service publish the member's bundle.
	if out := fetch("platform", "--mqtt", mqttURL); !strings.Contains(out, "member platform: bundle") || !strings.Contains(out, "service key ID "+svcID[1]+" matches the pin") {
		t.Fatalf("fetch --mqtt: %s", out)
	}

	received := func(r psResult) jsonE2E {
		t.Helper()
		var j struct {
			Payload string
			E2E     jsonE2E
		}
		if r.code != 0 || json.Unmarshal([]byte(r.out), &j) != nil || j.Payload != "21.5" {
			t.Fatalf("sub: %d %q %s", r.code, r.out, r.err)
		}
		return j.E2E
	}
	subArgs := append([]string{"sub", "--decrypt", "--keys", pem("platform.d"), "-t", "factory/+/temp", "-C", "1", "--json"}, conn...)
	pub := psMoatPub(ctx, append([]string{"--encrypt", "--keys", pem("sensor-1.d"), "-t", "factory/l1/temp", "-m", "21.5"}, conn...)...)
	if e := received(psPubUntil(t, psRunAsync(ctx, subArgs...), pub)); e.Epoch != 1 || e.Sender != "sensor-1" {
		t.Fatalf("epoch 1 message: %+v", e)
	}

	// Rotate while a subscriber runs; the restarted service republishes.
	subErr, sub := e2eRunAsync(ctx, subArgs...)
	stop()
	if out := keys("rotate", "temps"); !strings.Contains(out, "epoch 2") {
		t.Fatalf("rotate: %s", out)
	}
	stop, _, serveLog := serve()
	defer stop()
	e2eWaitFor(t, serveLog, "bundles published over MQTT")
	e2eWaitFor(t, subErr, "key bundle")
	if s := subErr.String(); !strings.Contains(s, "applied") {
		t.Fatalf("subscriber did not apply its new bundle: %s", s)
	}
	if out := fetch("sensor-1", "--mqtt", mqttURL); !strings.Contains(out, "written") {
		t.Fatalf("fetch --mqtt after rotation: %s", out)
	}
	if e := received(psPubUntil(t, sub, pub)); e.Epoch != 2 {
		t.Fatalf("message after rotation: %+v", e)
	}
}

// flakyPublisher fails its first failures publications, then records
// topics.
type flakyPublisher struct {
	mu       sync.Mutex
	failures int
	topics   []string
}

func (p *flakyPublisher) Publish(_ context.Context, topic string, _ []byte, retain bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !retain {
		return errors.New("bundle not retained")
	}
	if p.failures > 0 {
		p.failures--
		return errors.New("broker unavailable")
	}
	p.topics = append(p.topics, topic)
	return nil
}

func (p *flakyPublisher) published() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.topics)
}

func TestPublishBundlesLoop(t *testing.T) {
	kek := make([]byte, 32)
	rand.Read(kek)
	lk, _ := keyservice.NewLocalKEK(kek)
	ch := newBundleChanges()
	s, err := keyservice.Open(keyservice.Config{Path: filepath.Join(t.TempDir(), "keys.db"), KEK: lk,
		Logger: slog.New(slog.DiscardHandler), OnChange: ch.add})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.CreateGroup("g", "a/#", 0)
	for _, id := range []string{"m1", "m2", "unregistered"} {
		s.AddMember("g", id, keyservice.Reader)
	}
	for _, id := range []string{"m1", "m2"} {
		mk, _ := e2e.GenerateMemberKey(e2e.KEMX25519)
		if err := s.Register(id, mk.Public()); err != nil {
			t.Fatal(err)
		}
	}
	ch.take() // the changes made above; the loop starts with "all"
	ch.requeue(true, nil)
	p := &flakyPublisher{failures: 1}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		publishBundlesLoop(ctx, s, p, ch, slog.New(slog.DiscardHandler), 10*time.Millisecond)
		close(done)
	}()
	defer func() { cancel(); <-done }()
	// waitCounts waits until each member's bundle was published at least
	// the given number of times.
	waitCounts := func(m1, m2 int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			n := map[string]int{}
			for _, topic := range p.published() {
				n[topic]++
			}
			if n["$moat/keys/m1"] >= m1 && n["$moat/keys/m2"] >= m2 {
				if n["$moat/keys/unregistered"] > 0 {
					t.Fatal("bundle published for a member without a registered key")
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("published %v, want m1 %d and m2 %d times", p.published(), m1, m2)
			}
		}
	}
	// The first attempt fails for m1; the retry publishes both again.
	waitCounts(1, 1)
	// A rotation changes every member's bundle.
	if _, err := s.Rotate("g"); err != nil {
		t.Fatal(err)
	}
	waitCounts(2, 2)
	// A registration changes one.
	mk, _ := e2e.GenerateMemberKey(e2e.KEMX25519)
	s.Register("m2", mk.Public())
	waitCounts(2, 3)
}
